"""Machine facts for a training process: cores, torch threads, loader workers, mixed precision.

``threads`` (0) and ``num_workers`` (-1) in :class:`~dftune.training.config.TrainConfig` mean "from the machine":
:func:`resolve_threads` and :func:`resolve_workers` decide, :func:`settle` applies them to this process, and
the run records what they chose and why.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dftune.training.config import TrainConfig


@dataclass(frozen=True)
class Machine:
    """What this process trains with: torch threads and loader workers, each with why."""

    threads: int
    threads_from: str
    workers: int
    workers_from: str


def settle(cfg: TrainConfig, accelerator) -> Machine:
    """Set torch's thread count for this process (``cfg.threads``, see :func:`resolve_threads`) and choose
    its loader workers (:func:`resolve_workers`), counting the processes on this machine."""
    import torch

    gpu = accelerator.device.type != "cpu"
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE") or 0) or accelerator.num_processes
    cores = available_cores()
    n_threads, threads_why = resolve_threads(cfg.threads, cores=cores, processes=local_processes, gpu=gpu,
                                             current=torch.get_num_threads())
    if n_threads is not None:
        torch.set_num_threads(n_threads)
    n_workers, workers_why = resolve_workers(cfg.num_workers, cores=cores, processes=local_processes, gpu=gpu)
    return Machine(torch.get_num_threads(), threads_why, n_workers, workers_why)


def pick_precision(cfg: TrainConfig) -> str:
    """Accelerate's ``mixed_precision``: ``cfg.precision``, or for auto bf16 on GPUs that have it, else fp16
    (scaled) on a GPU, fp32 (``"no"``) on CPU."""
    import torch

    if cfg.precision != "auto":
        return cfg.precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota:
        n = min(n, max(1, int(quota)))
    return max(1, n)


def _cgroup_cpu_quota() -> float | None:
    try:  # cgroup v2: "max 100000" or "200000 100000"
        q, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if q != "max":
            return int(q) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return q / period if q > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def resolve_threads(setting: int, *, cores: int, processes: int = 1, gpu: bool = False,
                    env: Mapping[str, str] | None = None, current: int | None = None) -> tuple[int | None, str]:
    """Torch threads for one training process: ``(n, why)``; ``n`` None = leave torch's default.

    ``setting`` > 0 (``--threads N``) wins. Auto (0): on a GPU torch's default (the CPU only feeds the GPU);
    on CPU ``OMP_NUM_THREADS`` when set, else ``max(1, cores // processes)`` so that several processes on one
    machine do not each start a thread per core (oversubscribed, torch's spinning threads slowed training
    13-27x). Auto never raises the count above ``current`` (what the process already has: torch's default
    or a caller's ``torch.set_num_threads``).
    """
    if int(setting) > 0:
        return int(setting), "--threads"
    if gpu:
        return None, "auto: torch's default on a GPU"
    env = os.environ if env is None else env
    omp = str(env.get("OMP_NUM_THREADS", "")).strip()
    if omp.isdigit() and int(omp) > 0:
        n, why = int(omp), "auto: OMP_NUM_THREADS"
    else:
        processes = max(1, int(processes))
        n = max(1, int(cores) // processes)
        why = f"auto: {cores} core{'s' if cores != 1 else ''} / {processes} process{'es' if processes != 1 else ''}"
    if current is not None and 0 < int(current) < n:
        n, why = int(current), f"{why}, kept at the {current} already set"
    return n, why


def resolve_workers(setting: int, *, cores: int, processes: int = 1, gpu: bool = False) -> tuple[int, str]:
    """Loader worker processes per training process: ``(n, why)``.

    ``setting`` >= 0 (``--workers N``) wins. Auto (-1): 0 on CPU, where decoding in the training process
    leaves every core to the model (workers would compete with its threads); on a GPU
    ``min(8, cores // processes)`` so decoding keeps the GPU fed.
    """
    if int(setting) >= 0:
        return int(setting), "--workers"
    if not gpu:
        return 0, "auto: 0 on CPU"
    return min(8, max(1, int(cores) // max(1, int(processes)))), "auto: min(8, cores) on a GPU"
