"""Progress for long steps: a tqdm bar on a terminal; off a terminal (a log file, CI), one
line at the start and one at the end instead of hundreds of redraws."""

from __future__ import annotations

import os
import sys
import time


def interactive() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")


class _Lines:
    """The bar's interface (update/close/set_postfix/write), printing a line at the start and the end."""

    def __init__(self, total: int | None, desc: str, unit: str):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.t0 = time.perf_counter()
        print(f"{desc}: {total if total is not None else '?'} {_plural(unit)}", file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict=None, refresh=True, **kw) -> None:
        self.postfix = {**(ordered_dict or {}), **kw}

    def close(self) -> None:
        if self.t0 is None:
            return
        dt = time.perf_counter() - self.t0
        rate = f", {self.n / dt:.1f} {_plural(self.unit)}/s" if dt > 0 else ""
        extra = "".join(f", {k} {v}" for k, v in (getattr(self, "postfix", None) or {}).items())
        print(f"{self.desc}: done, {self.n} {_plural(self.unit)} in {dt:.1f} s{rate}{extra}", file=sys.stderr,
              flush=True)
        self.t0 = None

    @staticmethod
    def write(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)


class _Off(_Lines):
    def __init__(self, *a, **k):
        self.n, self.t0 = 0, None


def quiet_third_party() -> None:
    """No progress bars from inside other libraries' steps (transformers' "Writing model shards",
    the hub's downloads): dftune's own bar or line says what is going on."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers missing or old
        pass


def bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True, leave: bool = True):
    """A progress bar when stderr is a terminal, start/end lines when it is not, nothing when disabled."""
    if not enabled:
        return _Off()
    if not interactive():
        return _Lines(total, desc, unit)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=leave)


def console(stderr: bool = False):
    """A rich console for end-of-command tables: the terminal's width on a terminal; off one (a log,
    CI, a pipe) wide enough that no column is cut ("untr…", "acc@…")."""
    from rich.console import Console

    tty = (sys.stderr if stderr else sys.stdout).isatty() if hasattr(sys.stdout, "isatty") else False
    return Console(stderr=stderr, width=None if tty else 200)
