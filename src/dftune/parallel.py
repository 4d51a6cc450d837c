"""Run a function over many items in worker processes, with a progress bar.

One helper for every stage that fans work out (``prepare`` over videos, ``synth``
over crops), so they share the same choices:

- workers start from ``forkserver`` (``spawn`` where there is none), never a plain
  ``fork``: a forked child inherits OpenCV's thread pool in whatever state the parent
  left it and can deadlock in cv2 calls (seen when the parent had made videos);
- ``preload`` names modules the fork server imports once, before it forks the workers:
  each worker then starts with them loaded instead of importing them itself (numpy, cv2,
  PyAV, onnxruntime: ~0.4 s of CPU per worker). Importing runs no OpenCV code, so no
  thread pool exists yet to be inherited. It applies when this process starts its fork
  server (the first pool it makes);
- :class:`Workers` starts the processes ahead of the work (``background``: from a
  thread, the caller not waiting even for the fork server), so that they import and run
  ``initializer(*initargs)`` (a detector, settings) while the caller is still finding
  the work (reading what an earlier run left, say);
- few items, or ``workers <= 1``, run in this process (no start-up cost, easy to debug);
- results arrive as they finish; on any exit the pool is terminated.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence


def _context(preload: Sequence[str] = ()):
    methods = mp.get_all_start_methods()
    if "forkserver" not in methods:
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    if preload:
        ctx.set_forkserver_preload(["__main__", *preload])  # no effect on a fork server already running
    return ctx


class Workers:
    """Worker processes started now, for an :func:`imap_progress` call to come (``pool=``).

    Close it (or use it as a context manager) when done; :func:`imap_progress` does not.
    """

    def __init__(self, workers: int, *, initializer: Callable, initargs: tuple = (), preload: Sequence[str] = (),
                 background: bool = False):
        self.workers, self._pool, self._error = workers, None, None
        self._closed = False
        ctx = _context(preload)

        def start():
            try:
                pool = ctx.Pool(workers, initializer=initializer, initargs=initargs)
            except BaseException as e:  # handed to whoever asks for the pool
                self._error = e
                return
            if self._closed:  # closed while starting
                pool.terminate()
                pool.join()
            else:
                self._pool = pool

        # a first pool waits for the fork server to import ``preload``: in the background, the
        # caller goes on meanwhile
        self._starter = threading.Thread(target=start, name="dftune-workers", daemon=True) if background else None
        if self._starter is not None:
            self._starter.start()
        else:
            start()

    @property
    def pool(self):
        """The ``multiprocessing`` pool (waits for a background start); None once closed."""
        if self._starter is not None:
            self._starter.join()
        if self._error is not None:
            raise self._error
        return None if self._closed else self._pool

    def close(self) -> None:
        self._closed = True
        if self._starter is not None:
            self._starter.join()
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def imap_progress(fn: Callable, items: Sequence, *, initializer: Callable, initargs: tuple = (), workers: int = 1,
                  desc: str = "", unit: str = "it", progress: bool = True, chunksize: int = 1,
                  serial_below: int = 2, postfix: Callable[[object, float], dict] | None = None,
                  preload: Sequence[str] = (), pool: Workers | None = None) -> Iterator:
    """Yield ``fn(item)`` for every item, in completion order.

    ``postfix(result, elapsed_s)`` may return a dict shown beside the bar (e.g. frames/s).
    ``fn`` and ``initializer`` must be module-level functions and ``initargs``/items
    picklable when ``workers > 1``. ``pool``: :class:`Workers` already started with the
    same initializer (used when the work goes to processes; the caller closes it).
    """
    from dftune.progress import bar as make_bar

    bar = make_bar(len(items), desc, unit, progress and bool(items))
    own = None
    t0 = time.perf_counter()
    try:
        if workers <= 1 or len(items) < serial_below:
            initializer(*initargs)
            results: Iterable = map(fn, items)
        else:
            started = pool.pool if pool is not None else None
            if started is None:
                own = Workers(min(workers, len(items)), initializer=initializer, initargs=initargs, preload=preload)
                started = own.pool
            results = started.imap_unordered(fn, items, chunksize=chunksize)
        for res in results:
            bar.update(1)
            if postfix is not None:
                bar.set_postfix(**postfix(res, time.perf_counter() - t0), refresh=False)
            yield res
    finally:
        if own is not None:
            own.close()
        bar.close()
