"""Atomic file writes: write to a temporary name in the same folder, then rename.

A run killed half way leaves either the old file or the new one, never a torn one. The
file gets the mode the umask gives (a temporary file is private until renamed), and a
write that fails (a full disk, a read-only folder) raises an error naming the file, the
reason and the free space, and leaves the old file in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _read_umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


UMASK = _read_umask()  # read once: os.umask is process-wide and not thread-safe to probe later
FILE_MODE = 0o666 & ~UMASK
DIR_MODE = 0o777 & ~UMASK


class WriteError(OSError):
    """A file dftune could not write; the message names it, says why and how much space is left."""


def free_space(folder: str | os.PathLike) -> str:
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
        return f"{st.f_bavail * st.f_frsize / 1e9:.2f} GB free on {p}"
    except OSError:
        return f"free space on {p} unknown"


def write_error(path: str | os.PathLike, e: OSError) -> WriteError:
    """An OSError from writing ``path`` as a message a user can act on."""
    why = e.strerror or str(e)
    return WriteError(e.errno, f"{path}: cannot write ({why}); {free_space(Path(path).parent)}")


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    ``suffix`` defaults to the target's own suffix so writers that pick a format
    from the extension (OpenCV, PIL) keep working.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.tmp-", suffix=suffix if suffix is not None else path.suffix, dir=path.parent
        )
        os.close(fd)
    except OSError as e:
        raise write_error(path, e) from e
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, path)
    except WriteError:
        tmp_path.unlink(missing_ok=True)
        raise
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        raise write_error(path, e) from e
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; a file that is not JSON raises the same ``JSONDecodeError``, its message naming
    the file (a torn settings.json or dftune.json says which one)."""
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise json.JSONDecodeError(f"{path}: not valid JSON: {e.msg}", e.doc, e.pos) from None


def _json_default(obj: Any) -> Any:
    # numpy scalars / arrays and paths appear in settings and metrics
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class FolderBusy(RuntimeError):
    """Another dftune process is writing the same folder."""


PREPARE_BUSY_HINT = "wait for it to finish (a re-run then skips what it did), or split the work with --shard K/N"


def _lock_holder(text: str) -> dict:
    """The holder a lock file names: ``{"what", "pid", "host", "since"}`` (a file written before holders were
    recorded as JSON says ``"WHAT (pid N)"``: what there is of it)."""
    text = text.strip()
    if not text:
        return {}
    try:
        d = json.loads(text)
        if isinstance(d, dict):
            return d
    except ValueError:
        pass
    import re

    m = re.fullmatch(r"(.*) \(pid (\d+)\)", text)
    return {"what": m.group(1), "pid": int(m.group(2))} if m else {"what": text}


def _describe(holder: dict) -> str:
    """``WHAT (pid N)``, as the busy message names the holder."""
    what = holder.get("what") or "another process"
    return f"{what} (pid {holder['pid']})" if holder.get("pid") is not None else what


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process (or not a pid): not known to be gone
    return True


@contextmanager
def folder_lock(folder: str | os.PathLike, name: str = "lock", what: str = "dftune", hint: str | None = None,
                on_stale=None):
    """Hold ``folder/.NAME`` (an advisory ``flock``) while writing ``folder``; a second process
    asking for the same lock gets :class:`FolderBusy` naming the holder (what, pid, host), instead of redoing
    its work; ``hint`` says what to do then (prepare's by default).

    The lock goes with the process, so a killed run never leaves the folder locked; the file names its holder
    while it is held and is emptied when the lock is given back. A file that still names a holder when the
    lock is taken was left by a process that was killed: one on this host whose pid is gone is taken over,
    and ``on_stale(line)`` (if given) is told; one left by another host (whose pid cannot be checked from
    here, and whose lock may not reach this host) is refused with a :class:`FolderBusy` saying to delete
    the file if that process is gone."""
    import fcntl
    import socket
    import time

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f".{name}"
    host = socket.gethostname()
    hint = PREPARE_BUSY_HINT if hint is None else hint
    f = open(p, "a+", encoding="utf-8")
    held = False
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _lock_holder(f.read())
            at = f" (host {holder['host']}, since {holder.get('since', '?')})" if holder.get("host") else ""
            raise FolderBusy(f"{folder}: {_describe(holder)} is writing this folder{at}; {hint}") from None
        f.seek(0)
        left = _lock_holder(f.read())
        if left:
            other_host = left.get("host") not in (None, host)
            if other_host:
                raise FolderBusy(f"{folder}: {p} names {_describe(left)} on host {left['host']} (since "
                                 f"{left.get('since', '?')}), which cannot be checked from {host}; if that process "
                                 f"is gone, delete {p} and run again; otherwise {hint}")
            if left.get("pid") is not None and _pid_alive(left["pid"]) and int(left["pid"]) != os.getpid():
                state = f"pid {left['pid']} no longer holds it"
            else:
                state = f"pid {left.get('pid', '?')} is gone"
            if on_stale is not None:
                on_stale(f"{folder}: took over the lock {p.name} left by {_describe(left)} on {host} ({state}: "
                         f"it was killed before it could give the lock back)")
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"what": what, "pid": os.getpid(), "host": host,
                            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
        f.flush()
        held = True
        yield
    finally:
        if held:
            try:
                f.seek(0)
                f.truncate()  # given back: the file names no holder
                f.flush()
                # released outright: processes forked meanwhile (loader workers) share the lock and would hold it
                fcntl.flock(f, fcntl.LOCK_UN)
            except OSError:
                pass
        f.close()


def share_tree(folder: str | os.PathLike) -> None:
    """Give ``folder``, and every folder and file under it, the mode the umask gives: libraries write some files
    private (transformers 5's ``save_pretrained`` writes ``model.safetensors`` with mode 0600, ``mkdtemp`` makes
    a 0700 folder), which others sharing a machine or a submission could not read."""
    for d, _dirs, files in os.walk(folder):
        os.chmod(d, DIR_MODE)
        for f in files:
            p = os.path.join(d, f)
            if not os.path.islink(p):
                os.chmod(p, FILE_MODE)


def replace_folder(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Put the complete folder ``tmp`` at ``final``, replacing what is there, so that a kill at any moment
    leaves one complete folder: ``final``, or (between the two renames) ``final.old`` beside it. Everything
    in it gets the umask's mode first (:func:`share_tree`)."""
    tmp, final = Path(tmp), Path(final)
    share_tree(tmp)
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_folder(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty folder beside ``final``; when the block ends without an error it replaces ``final``
    (:func:`replace_folder`, with the umask's mode), otherwise it is removed and ``final`` is left as it was."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        replace_folder(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def file_sha256(path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
