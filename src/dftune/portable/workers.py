"""Framing files in worker processes: decode + detect + crop ahead of the model, results in input order.

One implementation for ``dftune predict`` (:func:`dftune.scoring.score_items`' loader side) and the
exported submission script. It imports only the standard library at import time (numpy, the
detectors, PyAV and OpenCV are imported in the workers), and nothing from dftune, so it runs
from a submission folder as ``dftune_portable.workers``.

- :class:`FrameSpec`: what framing needs (detector name, margin, size, frames, every, the
  already-cropped ratio); :func:`frame_one` frames one file with it and never raises: an
  unreadable file comes back as an error (its ``info['error']`` names the file), so one bad file
  never stops the batch.
- :func:`frame_files`: ``(crops, info)`` for every ``(path, kind)``, in input order. ``workers``
  0 or 1 frames in this process (``ahead``: in a background thread, one file ahead of the
  consumer, as predict always did); ``workers >= 2`` uses a pool of processes, started with
  ``spawn`` (works from a script, ``python -m`` and a notebook; a plain ``fork`` inherits
  OpenCV's and onnxruntime's thread pools in whatever state the parent left them). Each worker
  builds its detector once (dlib's takes ~0.4 s), limits OpenCV, FFmpeg, onnxruntime and BLAS
  to one thread, and at most ``2 x workers + 2`` files are framed ahead of the consumer, so
  memory stays bounded however many files there are.
- A worker process that dies (a crash inside a decoder) costs only its file: the pool is
  restarted, the files that were in flight are re-framed one at a time, and the one that kills
  a worker again gets an error row.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

PREFETCH_DEPTH = 4  # files framed ahead by predict's in-process thread (dftune.scoring.prefetch)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS")


@dataclass(frozen=True)
class FrameSpec:
    """What framing a file needs; plain values, so it travels to worker processes."""

    detector: str = "dlib"  # a name from DETECTORS, or "none"
    margin: float = 1.3
    size: int = 224
    frames: int = 10
    every: int = 0
    already_cropped: float = 0.0
    threads: int = 0  # FFmpeg decoding threads (0: FFmpeg's choice); workers use 1
    detector_kwargs: tuple = ()  # (name, value) pairs for get_detector: the widths the training data used
    faces: str = "all"  # which faces of a video (faces.FACE_RULES); faces.FACES (not imported: stdlib only here)
    clipped: str = "whole"  # a still image whose guide square would leave it (faces.CLIPPED_RULES)
    detect_every: int = 1  # the detector on every K-th sampled frame, boxes interpolated (faces.DETECT_EVERY)


def default_workers() -> int:
    """The machine's cores this process may use (``os.sched_getaffinity`` where there is one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int | None) -> int:
    """``None`` or negative: :func:`default_workers`; otherwise as given (0 and 1 mean in-process)."""
    return default_workers() if workers is None or workers < 0 else int(workers)


def error_text(path, e: BaseException) -> str:
    """An error message that names the file (once)."""
    return str(e) if str(path) in str(e) else f"{path}: {type(e).__name__}: {e}"


def frame_one(detector, spec: FrameSpec, path, kind: str) -> tuple[list, dict]:
    """``(crops, info)`` of one file; ``info``: faces_found, frames, framing, error (no crops then)."""
    from .faces import frame_file

    try:
        ff = frame_file(path, kind, detector, spec.margin, spec.size, spec.frames, spec.every,
                        spec.already_cropped, spec.threads, clipped=spec.clipped, faces=spec.faces,
                        detect_every=spec.detect_every)
        info = {"faces_found": ff.faces_found, "frames": ff.frames, "framing": ff.framing, "error": ""}
        if ff.groups:  # --faces all: each person pooled apart
            info["groups"] = ff.groups
        return ff.crops, info
    except Exception as e:  # one bad file never stops the batch
        return [], {"faces_found": 0, "frames": 0, "framing": "", "error": error_text(path, e)}


class Framer:
    """:func:`frame_one` with the detector built once: ``framer(path, kind) -> (crops, info)``."""

    def __init__(self, spec: FrameSpec, detector=False):
        """``detector``: one already built for ``spec.detector`` (default: build it now)."""
        from .faces import get_detector

        self.spec = spec
        self.detector = get_detector(spec.detector, **dict(spec.detector_kwargs)) if detector is False else detector

    def __call__(self, path, kind: str) -> tuple[list, dict]:
        return frame_one(self.detector, self.spec, path, kind)


# ---------------------------------------------------------------- in the worker processes

_FRAMER: Framer | None = None


def limit_threads() -> None:
    """One thread for each library a worker uses, so N workers use N cores."""
    for v in THREAD_VARS:
        os.environ[v] = "1"
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # OpenCV is optional here
        pass


def _init(spec: dict) -> None:
    global _FRAMER
    limit_threads()
    _FRAMER = Framer(FrameSpec(**{**spec, "threads": 1}))


def _frame(path, kind: str) -> tuple[list, dict]:
    return _FRAMER(path, kind)


def _bootstrap_code() -> str:
    """What a fresh worker runs first: make this package importable (a submission folder's
    ``dftune_portable`` is not on the path of a new interpreter), then build the framer."""
    pkg = __name__.rsplit(".", 1)[0]  # dftune.portable, or dftune_portable in a submission folder
    root = os.path.dirname(os.path.abspath(__file__))
    for _ in pkg.split("."):
        root = os.path.dirname(root)
    return (f"import sys\nif {root!r} not in sys.path:\n    sys.path.append({root!r})\n"
            f"from {pkg}.workers import _init\n_init(SPEC)\n")


def _context():
    import multiprocessing as mp

    return mp.get_context("spawn")


class FramePool:
    """Worker processes framing files for :func:`frame_files`; close it (or use ``with``)."""

    def __init__(self, spec: FrameSpec, workers: int):
        self.spec, self.workers = spec, max(1, int(workers))
        self._ex = None
        self._start()

    def _start(self) -> None:
        from concurrent.futures import ProcessPoolExecutor

        # builtins.exec travels by reference: the worker needs nothing importable to run it
        self._ex = ProcessPoolExecutor(self.workers, mp_context=_context(), initializer=exec,
                                       initargs=(_bootstrap_code(), {"SPEC": asdict(self.spec)}))

    def _restart(self) -> None:
        self._ex.shutdown(wait=False, cancel_futures=True)
        self._start()

    def imap(self, jobs: Iterable, ahead: int | None = None) -> Iterator[tuple[list, dict]]:
        """``(crops, info)`` for each ``(path, kind)``, in order, at most ``ahead`` files in flight."""
        from concurrent.futures.process import BrokenProcessPool

        ahead = max(1, ahead or 2 * self.workers + 2)
        todo = iter(jobs)
        window: deque = deque()  # [job, future or None (not submitted yet)]
        careful = 0  # files to frame one at a time, after a worker died with several in flight

        while True:
            while len(window) < (1 if careful else ahead):
                job = next(todo, None)
                if job is None:
                    break
                job = tuple(job)
                window.append([job, self._ex.submit(_frame, *job)])
            if not window:
                return
            entry = window[0]
            if entry[1] is None:
                entry[1] = self._ex.submit(_frame, *entry[0])
            try:
                res = entry[1].result()
            except BrokenProcessPool:
                self._restart()
                if careful:  # it was alone in flight: it killed the worker
                    window.popleft()
                    careful -= 1
                    yield [], {"faces_found": 0, "frames": 0, "framing": "",
                               "error": f"{entry[0][0]}: the worker process framing it died (a crash while "
                                        "decoding or detecting)"}
                    continue
                careful = len(window)  # one of these did it: frame them again one at a time
                for e in window:
                    e[1] = None
                continue
            window.popleft()
            careful = max(0, careful - 1)
            yield res

    def close(self) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)
            self._ex = None

    def __enter__(self) -> FramePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- either way


def ahead(fn, items: Sequence, depth: int = 2, name: str = "dftune-ahead") -> Iterator:
    """``map(fn, items)`` computed up to ``depth`` items ahead in a background thread (decoding and detection
    overlap the model's forward pass); an exception in ``fn`` is raised in the consumer; stopping early stops
    the thread."""
    import queue

    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop, done = threading.Event(), object()

    def work():
        try:
            for it in items:
                if stop.is_set():
                    return
                q.put(fn(it))
        except BaseException as e:  # raised in the consumer
            q.put(_Raised(e))
        finally:
            q.put(done)

    t = threading.Thread(target=work, daemon=True, name=name)
    t.start()
    try:
        while True:
            r = q.get()
            if r is done:
                return
            if isinstance(r, _Raised):
                raise r.error
            yield r
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.05)


def _ahead(fn, jobs: Sequence) -> Iterator:
    """``fn(*job)`` for each job computed one step ahead in a background thread."""
    return ahead(lambda job: fn(*job), jobs, 2, "dftune-frames")


@dataclass
class _Raised:
    error: BaseException


def frame_files(spec: FrameSpec, jobs: Sequence, workers: int | None = 0, *, ahead: bool = True,
                framer: Framer | None = None) -> Iterator[tuple[list, dict]]:
    """``(crops, info)`` for every ``(path, kind)`` of ``jobs``, in order (see the module's notes).

    ``workers`` 0/1 (or a single file): in this process (``framer``: one already built), in a
    background thread when ``ahead``; ``None``: one worker process per core.
    """
    jobs = [tuple(j) for j in jobs]
    n = resolve_workers(workers)
    if n <= 1 or len(jobs) < 2:
        f = framer or Framer(spec)
        yield from (_ahead(f, jobs) if ahead else (f(*j) for j in jobs))
        return
    with FramePool(spec, min(n, len(jobs))) as pool:
        yield from pool.imap(jobs)


class ModelThreads:
    """The model's torch threads (in this process, when the caller imported torch) beside files framed ahead of it
    by ``framing`` processes or a thread, decided file by file: while the model has to wait for the files it
    scores, the framing is the slower side, and the model runs on the cores the framing leaves, ``max(1, cores -
    framing)``; once ``patience`` files in a row were ready when asked for (the framing's read-ahead full, its
    workers idle: a model dearer than the framing) it gets torch's own count back, until it waits again.
    Torch's default of every core beside busy framing made more busy threads than cores, and its OpenMP threads
    spin while they wait between operations: a tiny ViT's crop cost 0.16-0.24 CPU-s on 2 threads against 0.06
    on 1 (docs/benchmarks.md, "Every core, measured"). Use as a context manager (restores torch's count);
    :meth:`paced` wraps the ``(crops, info)`` iterator."""

    WAITED = 0.005  # seconds: a file that took longer to arrive was not ready

    def __init__(self, framing: int, patience: int = 4):
        self.torch = sys.modules.get("torch") if framing >= 1 else None
        self.patience, self.ready = max(1, patience), 0
        if self.torch is not None:
            self.full = self.torch.get_num_threads()
            self.lean = max(1, min(self.full, default_workers() - framing))
            self.torch.set_num_threads(self.lean)

    def waited(self, seconds: float) -> None:
        if self.torch is not None:
            self.ready = 0 if seconds > self.WAITED else self.ready + 1
            want = self.full if self.ready >= self.patience else self.lean
            if self.torch.get_num_threads() != want:
                self.torch.set_num_threads(want)

    def paced(self, framed: Iterable) -> Iterator:
        """``framed``'s items, the model's threads set by how long each took to arrive."""
        import time

        it = iter(framed)
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            self.waited(time.perf_counter() - t)
            yield item

    def __enter__(self) -> ModelThreads:
        return self

    def __exit__(self, *exc) -> None:
        if self.torch is not None:
            self.torch.set_num_threads(self.full)


def framing_beside(workers: int | None, jobs: int, ahead: bool = True) -> tuple[int, int]:
    """``(cores, read-ahead)`` :func:`frame_files` keeps busy beside the caller's model: its worker processes and
    their window of files, 1 for the framing thread (``ahead``; ``prefetch_depth`` files), 0 when it frames in the
    caller's own thread."""
    n = resolve_workers(workers)
    if n <= 1 or jobs < 2:
        return (1, PREFETCH_DEPTH) if ahead and jobs > 1 else (0, 1)
    n = min(n, jobs)
    return n, 2 * n + 2


# ---------------------------------------------------------------- the CSV a contest wants

FORMATS = {
    "full": {},  # the columns the other options choose (filename, label, prob_fake, faces_found, ...)
    # what contests read: two columns, labels 0 (real) / 1 (fake), one row per file (errors too)
    "filename,label": {"filename_column": "filename", "label_column": "label", "prob_column": "",
                       "label_words": ("0", "1"), "extra_columns": False, "per_model": False},
}


def csv_format_fields(name: str, fields: dict) -> dict:
    """``fields`` (CsvFormat's) with the named format's fixed ones laid over them."""
    if name not in FORMATS:
        raise ValueError(f"unknown CSV format {name!r}; choose one of {', '.join(FORMATS)}")
    return {**fields, **FORMATS[name]}
