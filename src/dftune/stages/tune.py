"""Hyper-parameter search: many real ``train`` runs chosen by Optuna. Read it top to bottom.

Each trial is ``dftune.stages.train.train`` on the same data with a TrainConfig built from the
defaults, the user's ``--set`` values and the trial's sampled values; its objective is one val
metric read from the run's ``history.json`` records (at the epoch the run keeps as ``best/``).
Every epoch reports that metric to Optuna, and a pruner may stop the run there (the
``TrialPruned`` raised from ``on_epoch_end`` leaves ``train`` after that epoch's checkpoint and
history were written).

STUDY_DIR after a study::

    study.journal        Optuna's journal (unless --storage): re-run or run in parallel to continue
    trials/trial_NNNN/   each trial's run folder (weights kept for the best trial only, unless keep_all)
    data/                the train-subset manifest when fraction < 1 (paths point at the original crops)
    trials.csv  best.yaml  report.md  history.png  intermediate.png  importance.png
"""

from __future__ import annotations

import csv
import gc
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import shutil
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dftune.atomic import read_json, write_text
from dftune.training.config import FIELDS, TrainConfig, build, save_yaml

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- metric

# metric name suffix -> key in history's record["val"][level]
METRIC_KEYS = {
    "f1": "best_threshold_f1",  # macro F1 at the val-optimal threshold (the default)
    "f1_05": "macro_f1",  # macro F1 at threshold 0.5
    "auc": "auc",
    "loss": "loss",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced_accuracy",
}
METRICS = tuple(f"{lv}_{k}" for lv in ("frame", "video") for k in METRIC_KEYS)
_MONITOR = {"auc": "auc", "loss": "loss"}  # the rest monitor f1


@dataclass(frozen=True)
class Metric:
    name: str
    level: str
    key: str

    @property
    def direction(self) -> str:
        return "minimize" if self.key == "loss" else "maximize"

    @property
    def describe(self) -> str:
        what = {"best_threshold_f1": "macro F1 at the val-optimal threshold", "macro_f1": "macro F1 at 0.5",
                "auc": "ROC AUC", "loss": "cross-entropy loss", "accuracy": "accuracy at 0.5",
                "balanced_accuracy": "balanced accuracy at 0.5"}[self.key]
        return f"val {self.level}-level {what} ({self.direction}d)"

    def of(self, record: dict) -> float | None:
        if record["val"] is None:  # an epoch --val-every skipped
            return None
        v = record["val"][self.level].get(self.key)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def parse_metric(name: str) -> Metric:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    level, suffix = name.split("_", 1)
    return Metric(name, level, METRIC_KEYS[suffix])


# ---------------------------------------------------------------- search space

# Settings TrainConfig really has. lr spans the guide's 1e-5 both ways; the rest brackets each default.
DEFAULT_SPACE: dict[str, dict] = {
    "lr": {"type": "float", "low": 1e-6, "high": 1e-3, "log": True},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
    "schedule": {"type": "categorical", "choices": ["constant", "cosine"]},
    "balance": {"type": "categorical", "choices": ["loss", "sampler", "none"]},
    "aug": {"type": "categorical", "choices": [True, False]},
    "sbi": {"type": "float", "low": 0.0, "high": 0.4},
}
# never searched: the trial seed comes from the study seed; these do not change what is learned
_NOT_SEARCHABLE = {"seed", "num_workers", "tensorboard", "max_train_batches", "fake_label", "reinit_head",
                   "precision", "micro_batch", "threads"}
_TYPES = ("float", "int", "categorical")


class SpaceError(ValueError):
    """A search-space entry that cannot be used; the message names the key."""


def load_space(path: str | os.PathLike | None) -> dict:
    """The default space with a YAML file's entries replacing or adding to it.

    An entry is ``{type: float|int|categorical, low, high, log, choices}`` or a plain value (fixed,
    taken out of the search).
    """
    space = {k: dict(v) for k, v in DEFAULT_SPACE.items()}
    if path is None:
        return space
    from dftune.training.config import read_yaml_mapping

    data = read_yaml_mapping(path, "search-space file", "setting: {type, low, high, log, choices} or setting: value",
                             SpaceError)
    for k, v in data.items():
        space[str(k).replace("-", "_")] = v
    return space


def check_space(space: dict, base: TrainConfig, where: str = "search space") -> tuple[dict, dict]:
    """Validate; return (searched, fixed). Errors name the key."""
    searched, fixed = {}, {}
    for key, spec in space.items():
        def bad(msg: str) -> SpaceError:
            return SpaceError(f"{where}: {key!r}: {msg}")

        if key not in FIELDS:
            close = [k for k in FIELDS if key in k or k in key]
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
            raise bad(f"not a training setting{hint}; settings are: {', '.join(FIELDS)}")
        if key in _NOT_SEARCHABLE:
            raise bad(f"cannot be searched (fix it with --set {key}=VALUE instead)")
        if not isinstance(spec, dict):
            fixed[key] = spec
            _try(base, {key: spec}, bad)
            continue
        unknown = set(spec) - {"type", "low", "high", "log", "choices", "step"}
        if unknown:
            raise bad(f"unknown field(s) {', '.join(sorted(map(str, unknown)))}; use type, low, high, log, step, choices")
        typ = spec.get("type")
        if typ not in _TYPES:
            raise bad(f"type must be one of {', '.join(_TYPES)}; got {typ!r}")
        if typ == "categorical":
            ch = spec.get("choices")
            if not isinstance(ch, list) or not ch:
                raise bad("categorical needs a non-empty list of choices")
            for c in ch:
                _try(base, {key: c}, bad)
            searched[key] = {"type": typ, "choices": ch}
            continue
        lo, hi = spec.get("low"), spec.get("high")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (lo, hi)):
            raise bad(f"{typ} needs numeric low and high; got low={lo!r} high={hi!r}")
        if typ == "int" and not all(float(x).is_integer() for x in (lo, hi)):
            raise bad(f"int needs whole-number low and high; got low={lo!r} high={hi!r}")
        if not lo < hi:
            raise bad(f"low must be below high; got low={lo} high={hi}")
        log_ = bool(spec.get("log", False))
        if log_ and lo <= 0:
            raise bad(f"log scale needs low > 0; got low={lo}")
        for x in (lo, hi):
            _try(base, {key: int(x) if typ == "int" else float(x)}, bad)
        out = {"type": typ, "low": lo, "high": hi, "log": log_}
        if spec.get("step") is not None:
            out["step"] = spec["step"]
        searched[key] = out
    return searched, fixed


def _try(base: TrainConfig, values: dict, bad: Callable[[str], Exception]) -> None:
    try:
        build(base, values)
    except ValueError as e:
        raise bad(str(e)) from None


def sample(trial, searched: dict) -> dict:
    out = {}
    for key, s in searched.items():
        if s["type"] == "categorical":
            out[key] = trial.suggest_categorical(key, s["choices"])
        elif s["type"] == "int":
            out[key] = trial.suggest_int(key, int(s["low"]), int(s["high"]), log=s["log"], step=int(s.get("step") or 1))
        else:
            out[key] = trial.suggest_float(key, float(s["low"]), float(s["high"]), log=s["log"], step=s.get("step"))
    return out


def keep_effective_batch(base: TrainConfig, values: dict, searched: dict) -> dict:
    """When batch_size is searched (and grad_accum is not), scale grad_accum so the effective batch stays."""
    if "batch_size" not in values or "grad_accum" in values:
        return values
    effective = base.batch_size * base.grad_accum
    return {**values, "grad_accum": max(1, round(effective / int(values["batch_size"])))}


def trial_seed(study_seed: int, number: int) -> int:
    h = hashlib.sha256(f"dftune-tune:{study_seed}:{number}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


# ---------------------------------------------------------------- train on a fraction of the videos


def subset_data(data_dir: str | os.PathLike, out_dir: str | os.PathLike, fraction: float, seed: int) -> Path:
    """A prepared folder whose manifest keeps ``fraction`` of the train videos (per method, whole videos)
    and every val/test row; its paths point at the original crops (relative to the new folder)."""
    from dftune.prepared import manifest_file, read_manifest, write_manifest

    src = manifest_file(data_dir).parent.resolve()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_manifest(src)
    by_method: dict[str, list[str]] = {}
    for r in rows:
        if r.split == "train":
            by_method.setdefault(r.method, [])
            if r.video not in by_method[r.method]:
                by_method[r.method].append(r.video)
    rng = random.Random(seed)
    keep: set[str] = set()
    chosen = {}
    for method in sorted(by_method):
        vids = sorted(by_method[method])
        k = max(1, round(fraction * len(vids)))
        pick = rng.sample(vids, k)
        keep.update(pick)
        chosen[method] = {"kept": k, "of": len(vids)}
    new_rows = []
    rel = Path(os.path.relpath(src, out.resolve()))
    for r in rows:
        if r.split == "train" and r.video not in keep:
            continue
        r.path = (rel / r.path).as_posix()
        new_rows.append(r)
    write_manifest(out / "manifest.csv", new_rows)
    if (src / "settings.json").exists():
        shutil.copyfile(src / "settings.json", out / "settings.json")
    write_text(out / "subset.json", json.dumps({"source": str(src), "fraction": fraction, "seed": seed,
                                                "train_videos": chosen}, indent=1) + "\n")
    return out


# ---------------------------------------------------------------- settings and study


@dataclass
class TuneSettings:
    trials: int = 20
    timeout: float | None = None  # seconds; no new trial starts after it
    metric: str = "frame_f1"
    space: str | os.PathLike | dict | None = None  # YAML path, a space dict, or None = DEFAULT_SPACE
    pruner: Any = "median"  # median | hyperband | none | an optuna pruner object
    epochs: int | None = None
    fraction: float = 1.0
    seed: int = 0
    storage: str | None = None  # RDB URL; None = journal file in STUDY_DIR
    study_name: str | None = None
    keep_all: bool = False
    sets: dict = field(default_factory=dict)  # --set values: fixed, and taken out of the search


_COUNTED = "fail_reason"  # a FAIL trial with this attr failed on its own and counts as finished


def make_pruner(name, epochs: int):
    import optuna

    if not isinstance(name, str):
        return name
    if name == "median":  # prune below the median of earlier trials at the same epoch, from epoch 2 on
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; choose median, hyperband or none")


def open_storage(study_dir: Path, url: str | None):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url is None:
        return optuna.storages.JournalStorage(JournalFileBackend(str(study_dir / "study.journal")))
    if "://" not in url:  # a path: a journal file there
        return optuna.storages.JournalStorage(JournalFileBackend(str(Path(url))))
    try:
        return optuna.storages.RDBStorage(url)
    except ImportError as e:
        raise ValueError(f"--storage {url}: needs a database driver ({e})") from None


def counts_as_finished(t) -> bool:
    from optuna.trial import TrialState

    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and _COUNTED in t.user_attrs


def _alive(t, stale_after: float) -> bool:
    """A RUNNING trial whose process still works on it (same host: the pid lives; else a recent heartbeat)."""
    a = t.user_attrs
    if a.get("host") == socket.gethostname() and a.get("pid"):
        try:
            os.kill(int(a["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return int(a["pid"]) != os.getpid()  # this process runs one trial at a time, and not now
    # no pid to check (another host, or attributes not written yet): the latest sign of life
    start = t.datetime_start.timestamp() if t.datetime_start else 0.0
    return time.time() - max(float(a.get("heartbeat", 0) or 0), start) < stale_after


def fail_stale(study, stale_after: float) -> None:
    """Mark RUNNING trials whose process is gone (killed, crashed machine) as FAIL, not counted."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _alive(t, stale_after):
            try:
                study._storage.set_trial_user_attr(t._trial_id, "interrupted", "its process is gone")
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            except Exception as e:  # another process did it first
                log.debug("stale trial %s: %s", t.number, e)


class _Heartbeat:
    """Refreshes the trial's ``heartbeat`` user attr so other machines can tell a live trial from a dead one."""

    def __init__(self, storage, trial_id: int, every: float = 30.0):
        self.storage, self.trial_id, self.every = storage, trial_id, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.wait(self.every):
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
            except Exception:
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()


# ---------------------------------------------------------------- the study


def run(data_dir: str | os.PathLike, model_source: str, study_dir: str | os.PathLike, s: TuneSettings,
         progress: bool = False, say: Callable[[str], None] = print, stale_after: float = 300.0) -> dict:
    """Run trials until the study holds ``s.trials`` finished ones (or ``s.timeout`` passes); write outputs."""
    import optuna
    from optuna.trial import TrialState

    from dftune.stages import train

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    metric = parse_metric(s.metric)
    if s.trials < 1:
        raise ValueError(f"--trials must be at least 1; got {s.trials}")
    if not 0 < s.fraction <= 1:
        raise ValueError(f"--fraction must be in (0, 1]; got {s.fraction}")

    # ---- the base config (defaults + --set + --epochs) and the space
    fixed_user = dict(s.sets)
    if s.epochs is not None:
        fixed_user["epochs"] = s.epochs
    base = build(None, fixed_user)
    align = {}  # keep as best/ the epoch the objective likes, unless the user chose the monitor
    if "monitor" not in fixed_user:
        align["monitor"] = _MONITOR.get(metric.key, "f1")
    if "monitor_level" not in fixed_user:
        align["monitor_level"] = metric.level
    base = build(base, align)
    space = s.space if isinstance(s.space, dict) else load_space(s.space)
    where = str(s.space) if s.space is not None and not isinstance(s.space, dict) else "search space"
    space = {k: v for k, v in space.items() if k.replace("-", "_") not in fixed_user}  # --set wins
    searched, fixed_space = check_space(space, base, where)
    base = build(base, fixed_space)

    # ---- study (created, or continued)
    name = s.study_name or study_dir.resolve().name
    storage = open_storage(study_dir, s.storage)
    sampler = optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=max(3, min(10, s.trials // 3)),
                                         constant_liar=True)
    study = optuna.create_study(study_name=name, storage=storage, direction=metric.direction,
                                sampler=sampler, pruner=make_pruner(s.pruner, base.epochs), load_if_exists=True)
    if study.direction.name.lower() != metric.direction:
        raise ValueError(f"study {name!r} in this storage was made to {study.direction.name.lower()}; "
                         f"--metric {metric.name} is {metric.direction}d (use another --study-name or STUDY_DIR)")
    meta = study.user_attrs
    if "metric" not in meta:
        for k, v in (("metric", metric.name), ("fraction", s.fraction), ("fraction_seed", s.seed),
                     ("data", str(Path(data_dir).resolve())), ("model", str(model_source))):
            study.set_user_attr(k, v)
    else:  # the objective must stay comparable across the study's trials
        if meta["metric"] != metric.name:
            raise ValueError(f"study {name!r} optimises {meta['metric']}; this command asks for {metric.name} "
                             f"(use another --study-name or STUDY_DIR)")
        if meta.get("fraction", 1.0) != s.fraction or (s.fraction < 1 and meta.get("fraction_seed") != s.seed):
            raise ValueError(f"study {name!r} trains on --fraction {meta.get('fraction')} (--seed "
                             f"{meta.get('fraction_seed')}); this command asks for --fraction {s.fraction} --seed "
                             f"{s.seed} (use another --study-name or STUDY_DIR)")

    # ---- data: whole, or a fraction of the train videos (the same subset in every process: it depends on --seed)
    data = Path(data_dir)
    if s.fraction < 1:
        data = subset_data(data_dir, study_dir / "data", s.fraction, s.seed)

    where_db = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", s.storage) if s.storage else study_dir / "study.journal"
    say(f"study {name!r} in {where_db}: {metric.name} = {metric.describe}")
    say(f"searching {', '.join(searched) or 'nothing'}; fixed: "
        f"{', '.join(f'{k}={v}' for k, v in {**fixed_user, **align, **fixed_space}.items()) or 'defaults'}")
    t_start = time.time()
    ran = 0
    while True:
        if s.timeout is not None and time.time() - t_start >= s.timeout:
            say(f"--timeout {s.timeout:g} s reached; no new trial started")
            break
        fail_stale(study, stale_after)
        trials = study.get_trials(deepcopy=False)
        done = sum(counts_as_finished(t) for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if done + running >= s.trials:
            if ran == 0:
                say(f"the study already holds {done} finished trial(s)"
                    f"{f' and {running} running elsewhere' if running else ''} of {s.trials}; nothing to run")
            break
        trial = study.ask()
        for k, v in (("host", socket.gethostname()), ("pid", os.getpid()), ("heartbeat", time.time())):
            trial.set_user_attr(k, v)
        # numbers are handed out by the storage in order: if another process took the last slots between the
        # count and the ask, the later numbers step back (marked "surplus", not counted, not reported)
        live = sorted(t.number for t in study.get_trials(deepcopy=False)
                      if counts_as_finished(t) or t.state == TrialState.RUNNING)
        if trial.number in live and live.index(trial.number) >= s.trials:
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            break
        _seed_sampler(sampler, trial_seed(s.seed, trial.number))
        ran += 1
        try:
            _run_trial(study, trial, train, data, model_source, study_dir, base, searched, metric, s, progress, say)
        except KeyboardInterrupt:
            say(f"trial {trial.number:>3} INTERRUPTED (Ctrl-C); writing the study's outputs")
            write_outputs(study, study_dir, metric, s, data, model_source, say)
            raise
    summary = write_outputs(study, study_dir, metric, s, data, model_source, say)
    summary["ran_here"] = ran
    return summary


def _seed_sampler(sampler, seed: int) -> None:
    """Trial N's proposals come from seed hash(study seed, N): a single process repeats its study exactly, and
    parallel processes (different trial numbers) never propose the same random settings."""
    try:
        sampler._rng.rng.seed(seed)
        sampler._random_sampler._rng.rng.seed(seed)
    except AttributeError:  # another Optuna's internals: proposals stay random, which is still correct
        log.debug("could not seed the sampler per trial")


def _run_trial(study, trial, train, data, model_source, study_dir, base, searched, metric, s, progress, say):
    import optuna
    from optuna.trial import TrialState

    t0 = time.time()
    run_dir = study_dir / "trials" / f"trial_{trial.number:04d}"
    curve: list = []
    epochs_run = 0
    cfg = None
    try:
        values = sample(trial, searched)
        values = keep_effective_batch(base, values, searched)
        values["seed"] = trial_seed(s.seed, trial.number)
        trial.set_user_attr("seed", values["seed"])
        cfg = build(base, values)
        trial.set_user_attr("epochs_planned", cfg.epochs)
        trial.set_user_attr("config", cfg.to_dict())  # best.yaml comes from this, on any machine
        if run_dir.exists():  # a number is never reused in a study; leftovers of a deleted one
            shutil.rmtree(run_dir)

        def on_epoch_end(epoch: int, record: dict) -> None:
            nonlocal epochs_run
            epochs_run = epoch
            v = metric.of(record)
            curve.append(v)
            trial.set_user_attr("curve", curve)
            trial.set_user_attr("heartbeat", time.time())
            if v is not None:
                trial.report(v, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {epoch}: {metric.name} {v:.4f}")

        run_dir.mkdir(parents=True)
        # train's own lines go to the trial's train.log (tail -f it); the terminal gets one line a trial
        with open(run_dir / "train.log", "w", buffering=1, encoding="utf-8") as log_file, \
                _Heartbeat(study._storage, trial._trial_id):
            summary = train.run(data, model_source, run_dir, cfg, progress=progress, on_epoch_end=on_epoch_end,
                                say=lambda line: print(line, file=log_file))
        hist = {h["epoch"]: h for h in read_json(run_dir / "history.json")}
        best = hist.get(summary["best_epoch"])
        value = metric.of(best) if best else None
        trial.set_user_attr("epochs_run", summary["epochs_run"])
        trial.set_user_attr("best_epoch", summary["best_epoch"])
        trial.set_user_attr("duration_s", round(time.time() - t0, 2))
        if value is None:
            raise FloatingPointError(f"{metric.name} is undefined for this run (NaN or missing: one class in val, "
                                     f"or a diverged model)")
        study.tell(trial, value)
        state, extra = TrialState.COMPLETE, f"{metric.name} {value:.4f}"
    except optuna.TrialPruned as e:
        _attr(trial, "epochs_run", epochs_run)
        _attr(trial, "duration_s", round(time.time() - t0, 2))
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        state, extra = TrialState.PRUNED, str(e)
    except KeyboardInterrupt:
        _attr(trial, "interrupted", "Ctrl-C")
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    except Exception as e:  # OOM, NaN, bad settings: recorded, and the study goes on
        reason = f"{type(e).__name__}: {e}".strip()[:500]
        log.debug("trial %d failed", trial.number, exc_info=True)
        _attr(trial, "epochs_run", epochs_run)
        _attr(trial, "duration_s", round(time.time() - t0, 2))
        _attr(trial, _COUNTED, reason)
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        state, extra = TrialState.FAIL, reason
    finally:
        gc.collect()
        _empty_cuda_cache()
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
    try:
        best = study.best_trial
        best_s = f"best #{best.number} {best.value:.4f}"
    except ValueError:
        best_s = "no complete trial yet"
    say(f"trial {trial.number:>3} {state.name:<8} {extra} | {epochs_run} ep {time.time() - t0:.1f}s | {params} | {best_s}")
    _clean_weights(study, study_dir, s.keep_all)


def _attr(trial, key: str, value) -> None:
    """Set a user attribute unless the trial was finished elsewhere (e.g. judged stale by another process)."""
    try:
        trial.set_user_attr(key, value)
    except Exception as e:
        log.warning("trial %d: could not record %s (%s)", trial.number, key, e)


def _empty_cuda_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _clean_weights(study, study_dir: Path, keep_all: bool) -> None:
    """Delete best/ and last/ of every finished trial but the study's best (history.json etc. stay)."""
    from optuna.trial import TrialState

    if keep_all:
        return
    try:
        best = study.best_trial.number
    except ValueError:
        best = None
    for t in study.get_trials(deepcopy=False):
        if t.number == best or t.state == TrialState.RUNNING:
            continue
        d = study_dir / "trials" / f"trial_{t.number:04d}"
        for sub in ("best", "last"):
            if (d / sub).is_dir():
                shutil.rmtree(d / sub, ignore_errors=True)


# ---------------------------------------------------------------- outputs


def reported(study) -> list:
    """The trials the outputs show: all but surplus ones and the ASK/WAITING kind."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False)
            if not t.user_attrs.get("surplus") and t.state != TrialState.WAITING]


def _state(t) -> str:
    if t.state.name == "FAIL" and _COUNTED not in t.user_attrs:
        return "INTERRUPTED"
    return t.state.name


def write_outputs(study, study_dir: Path, metric: Metric, s: TuneSettings, data: Path, model_source: str,
                  say: Callable[[str], None] = print) -> dict:
    from optuna.trial import TrialState

    trials = reported(study)
    params = sorted({k for t in trials for k in t.params})
    # trials.csv
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["number", "state", "value", f"{metric.name}_per_epoch", "epochs_run", "duration_s", "seed",
                "fail_reason", "params"] + params)
    for t in trials:
        dur = t.user_attrs.get("duration_s")
        if dur is None and t.datetime_start and t.datetime_complete:
            dur = round((t.datetime_complete - t.datetime_start).total_seconds(), 2)
        reason = t.user_attrs.get(_COUNTED) or t.user_attrs.get("interrupted") or ""
        value = t.value if t.state == TrialState.COMPLETE else None  # a pruned trial's is its last epoch's
        w.writerow([t.number, _state(t), "" if value is None else value, json.dumps(t.user_attrs.get("curve", [])),
                    t.user_attrs.get("epochs_run", ""), "" if dur is None else dur, t.user_attrs.get("seed", ""),
                    reason, json.dumps(t.params, default=str)] + [t.params.get(p, "") for p in params])
    write_text(study_dir / "trials.csv", buf.getvalue())

    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = None
    if complete:
        best = study.best_trial
        _clean_weights(study, study_dir, s.keep_all)
    best_dir = study_dir / "trials" / f"trial_{best.number:04d}" if best else None
    cmd = None
    if best is not None and best.user_attrs.get("config"):
        cfg = build(None, best.user_attrs["config"])
        save_yaml(study_dir / "best.yaml", cfg, {
            "tune": {"study": study.study_name, "trial": best.number, "metric": metric.name,
                     "value": best.value, "params": best.params, "data": str(Path(data).resolve()),
                     "model": str(model_source), "run_dir": str(best_dir), "host": best.user_attrs.get("host")}})
        cmd = (f"dftune train --data {data} --model {model_source} --config {study_dir / 'best.yaml'} "
               f"--out runs/best")

    # pruning: epochs that pruned trials did not run
    planned = sum(int(t.user_attrs.get("epochs_planned", 0) or 0) for t in trials if t.state == TrialState.PRUNED)
    run_pruned = sum(int(t.user_attrs.get("epochs_run", 0) or 0) for t in trials if t.state == TrialState.PRUNED)
    all_run = sum(int(t.user_attrs.get("epochs_run", 0) or 0) for t in trials)
    saved = planned - run_pruned
    plots = _plots(study, trials, study_dir, metric, params)
    by_state: dict[str, int] = {}
    for t in trials:
        by_state[_state(t)] = by_state.get(_state(t), 0) + 1
    summary = {
        "study": study.study_name, "metric": metric.name, "metric_description": metric.describe,
        "direction": metric.direction, "trials": len(trials), "by_state": by_state,
        "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params,
                                           "run_dir": str(best_dir)},
        "best_yaml": str(study_dir / "best.yaml") if cmd else None, "retrain": cmd,
        "epochs_run": all_run, "epochs_saved_by_pruning": saved, "plots": plots,
        "rows": [{"number": t.number, "state": _state(t),
                  "value": t.value if t.state == TrialState.COMPLETE else None, "params": t.params,
                  "epochs_run": t.user_attrs.get("epochs_run"), "reason": t.user_attrs.get(_COUNTED, "")}
                 for t in trials],
    }
    _report(study_dir, summary, metric, s, data, model_source)
    return summary


def _plots(study, trials, study_dir: Path, metric: Metric, params: list) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState

    out = []
    maximize = metric.direction == "maximize"
    # optimisation history
    fig, ax = plt.subplots(figsize=(7, 4))
    comp = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    if comp:
        ax.scatter([t.number for t in comp], [t.value for t in comp], label="complete", color="C0")
        run, best_line = None, []
        for t in comp:
            run = t.value if run is None else (max(run, t.value) if maximize else min(run, t.value))
            best_line.append(run)
        ax.step([t.number for t in comp], best_line, where="post", color="C1", label="best so far")
    pr = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    if pr:
        ax.scatter([t.number for t in pr], [t.intermediate_values[max(t.intermediate_values)] for t in pr],
                   marker="x", color="C3", label="pruned (last epoch)")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric.name)
    ax.set_title(f"optimisation history: {metric.describe}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(study_dir / "history.png", dpi=100)
    plt.close(fig)
    out.append("history.png")
    # per-epoch curves
    fig, ax = plt.subplots(figsize=(7, 4))
    for t in trials:
        iv = t.intermediate_values
        if iv:
            ax.plot(sorted(iv), [iv[k] for k in sorted(iv)], marker=".", alpha=0.7,
                    linestyle="--" if t.state == TrialState.PRUNED else "-", label=f"#{t.number}" if len(trials) <= 10 else None)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric.name)
    ax.set_title("per-epoch metric (dashed: pruned)", fontsize=9)
    if len(trials) <= 10:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(study_dir / "intermediate.png", dpi=100)
    plt.close(fig)
    out.append("intermediate.png")
    # parameter importances (fANOVA)
    if len(comp) >= 2 and len(params) >= 2:
        try:
            import optuna

            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
            if imp:
                fig, ax = plt.subplots(figsize=(6, 0.4 * len(imp) + 1.2))
                names = list(imp)[::-1]
                ax.barh(names, [imp[n] for n in names], color="C0")
                ax.set_xlabel("importance (fANOVA)")
                ax.set_title(f"parameter importances for {metric.name} ({len(comp)} complete trials)", fontsize=9)
                fig.tight_layout()
                fig.savefig(study_dir / "importance.png", dpi=100)
                plt.close(fig)
                out.append("importance.png")
                (study_dir / "importance.txt").unlink(missing_ok=True)
        except Exception as e:  # e.g. every complete trial has the same value
            log.info("parameter importances skipped: %s", e)
            write_text(study_dir / "importance.txt", f"parameter importances not computed: {e}\n")
    return out


def _report(study_dir: Path, sm: dict, metric: Metric, s: TuneSettings, data: Path, model_source: str) -> None:
    L = [f"# dftune tune: {sm['study']}", "",
         f"- objective: **{metric.name}** = {metric.describe}, read at the epoch each run keeps as `best/`",
         f"- data: `{data}`{f' (train fraction {s.fraction} of the videos, per method; val full)' if s.fraction < 1 else ''}",
         f"- model: `{model_source}`",
         f"- trials: {sm['trials']} ({', '.join(f'{v} {k.lower()}' for k, v in sorted(sm['by_state'].items()))})",
         f"- epochs run in all: {sm['epochs_run']}; saved by pruning: {sm['epochs_saved_by_pruning']}", ""]
    if sm["best"]:
        b = sm["best"]
        L += ["## Best trial", "", f"trial {b['number']}: {metric.name} = {b['value']:.4f}", "",
              "| setting | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in b["params"].items()]
        L += ["", f"Run folder (model kept): `{b['run_dir']}`", "", "Retrain with these settings:", "", "```",
              sm["retrain"] or "", "```", ""]
    else:
        L += ["No trial completed yet.", ""]
    rows = sm["rows"]
    comp = sorted((r for r in rows if r["value"] is not None), key=lambda r: r["value"],
                  reverse=metric.direction == "maximize")
    L += ["## Trials (complete ones best first, then the rest)", "", "| # | state | value | epochs | params | note |",
          "|---|---|---|---|---|---|"]
    for r in comp + [r for r in rows if r["value"] is None]:
        val = "" if r["value"] is None else f"{r['value']:.4f}"
        L.append(f"| {r['number']} | {r['state']} | {val} | "
                 f"{r['epochs_run'] or ''} | {', '.join(f'{k}={_fmt(v)}' for k, v in r['params'].items())} | "
                 f"{(r['reason'] or '').replace('|', '/')[:120]} |")
    L.append("")
    for p in sm["plots"]:
        L += [f"![{p}]({p})", ""]
    if "importance.png" not in sm["plots"]:
        why = study_dir / "importance.txt"
        L += [why.read_text().strip() if why.exists() else
              "parameter importances: need at least 2 complete trials and 2 searched settings", ""]
    write_text(study_dir / "report.md", "\n".join(L))
