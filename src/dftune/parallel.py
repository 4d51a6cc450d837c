"""Run a function over many items in worker processes, with a progress bar.

One helper for every stage that fans work out (``prepare`` over videos, ``synth``
over crops), so they share the same choices:

- workers start from ``forkserver`` (``spawn`` where there is none), never a plain
  ``fork``: a forked child inherits OpenCV's thread pool in whatever state the parent
  left it and can deadlock in cv2 calls (seen when the parent had made videos);
- ``initializer(*initargs)`` builds per-worker state once (a detector, settings);
- few items, or ``workers <= 1``, run in this process (no start-up cost, easy to debug);
- results arrive as they finish; on any exit the pool is terminated.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Callable, Iterable, Iterator, Sequence


def imap_progress(fn: Callable, items: Sequence, *, initializer: Callable, initargs: tuple = (), workers: int = 1,
                  desc: str = "", unit: str = "it", progress: bool = True, chunksize: int = 1,
                  serial_below: int = 2, postfix: Callable[[object, float], dict] | None = None) -> Iterator:
    """Yield ``fn(item)`` for every item, in completion order.

    ``postfix(result, elapsed_s)`` may return a dict shown beside the bar (e.g. frames/s).
    ``fn`` and ``initializer`` must be module-level functions and ``initargs``/items
    picklable when ``workers > 1``.
    """
    from dftune.progress import bar as make_bar

    bar = make_bar(len(items), desc, unit, progress and bool(items))
    pool = None
    t0 = time.perf_counter()
    try:
        if workers <= 1 or len(items) < serial_below:
            initializer(*initargs)
            results: Iterable = map(fn, items)
        else:
            methods = mp.get_all_start_methods()
            ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
            pool = ctx.Pool(min(workers, len(items)), initializer=initializer, initargs=initargs)
            results = pool.imap_unordered(fn, items, chunksize=chunksize)
        for res in results:
            bar.update(1)
            if postfix is not None:
                bar.set_postfix(**postfix(res, time.perf_counter() - t0), refresh=False)
            yield res
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        bar.close()
