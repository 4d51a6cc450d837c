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
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _json_default(obj: Any) -> Any:
    # numpy scalars / arrays and paths appear in settings and metrics
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class FolderBusy(RuntimeError):
    """Another dftune process is writing the same folder."""


@contextmanager
def folder_lock(folder: str | os.PathLike, name: str = "lock", what: str = "dftune"):
    """Hold ``folder/.NAME`` (an advisory ``flock``) while writing ``folder``; a second process
    asking for the same lock gets :class:`FolderBusy` naming the holder, instead of redoing its work.
    The lock goes with the process, so a killed run never leaves the folder locked."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f".{name}"
    f = open(p, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise FolderBusy(f"{folder}: {holder} is writing this folder; wait for it to finish (a re-run then "
                             f"skips what it did), or split the work with --shard K/N") from None
        f.seek(0)
        f.truncate()
        f.write(f"{what} (pid {os.getpid()})")
        f.flush()
        yield
    finally:
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
