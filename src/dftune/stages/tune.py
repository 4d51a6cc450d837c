"""Stage ``tune``: a hyper-parameter search, many real ``train`` runs chosen by Optuna. Read it top to bottom:
settings -> study -> data -> trials -> outputs -> summary; the parts live in :mod:`dftune.search`.

Each trial is ``dftune.stages.train.run`` on the same data with a TrainConfig built from the
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

import gc
import logging
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dftune.atomic import read_json
from dftune.search.metric import Metric, parse_metric
from dftune.search.outputs import TuneSummary, clean_weights, fmt, trial_dir, write_outputs
from dftune.search.space import check_space, keep_effective_batch, load_space, sample, trial_seed
from dftune.search.study import (
    COUNTED,
    Heartbeat,
    claim,
    fail_stale,
    make_pruner,
    make_sampler,
    open_storage,
    seed_sampler,
    set_attr,
    tally,
)
from dftune.search.subset import subset_data
from dftune.training.config import TrainConfig, build

log = logging.getLogger(__name__)

__all__ = ["TuneSettings", "TuneSummary", "run"]


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


def run(data_dir: str | os.PathLike, model_source: str, study_dir: str | os.PathLike, s: TuneSettings,
        progress: bool = False, say: Callable[[str], None] = print, stale_after: float = 300.0) -> TuneSummary:
    """Run trials until the study holds ``s.trials`` finished ones (or ``s.timeout`` passes); write outputs."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    metric = parse_metric(s.metric)
    if s.trials < 1:
        raise ValueError(f"--trials must be at least 1; got {s.trials}")
    if not 0 < s.fraction <= 1:
        raise ValueError(f"--fraction must be in (0, 1]; got {s.fraction}")

    # ---- settings: the base config (defaults + --set + --epochs) and the space
    base, searched, fixed = _base_and_space(s, metric)

    # ---- study (created, or continued)
    study, sampler = _open_study(study_dir, s, metric, base.epochs, data_dir, model_source)

    # ---- data: whole, or a fraction of the train videos (the same subset in every process: it depends on --seed)
    data = Path(data_dir)
    if s.fraction < 1:
        data = subset_data(data_dir, study_dir / "data", s.fraction, s.seed)

    where_db = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", s.storage) if s.storage else study_dir / "study.journal"
    say(f"study {study.study_name!r} in {where_db}: {metric.name} = {metric.describe}")
    say(f"searching {', '.join(searched) or 'nothing'}; fixed: "
        f"{', '.join(f'{k}={v}' for k, v in fixed.items()) or 'defaults'}")

    # ---- trials, until the study holds s.trials finished ones (counted across processes)
    t_start = time.time()
    ran = 0
    while True:
        if s.timeout is not None and time.time() - t_start >= s.timeout:
            say(f"--timeout {s.timeout:g} s reached; no new trial started")
            break
        fail_stale(study, stale_after)
        done, running = tally(study)
        if done + running >= s.trials:
            if ran == 0:
                say(f"the study already holds {done} finished trial(s)"
                    f"{f' and {running} running elsewhere' if running else ''} of {s.trials}; nothing to run")
            break
        trial = claim(study, s.trials)
        if trial is None:  # another process took the last slot
            break
        seed_sampler(sampler, trial_seed(s.seed, trial.number))
        ran += 1
        try:
            _run_trial(study, trial, data, model_source, study_dir, base, searched, metric, s, progress, say)
        except KeyboardInterrupt:
            say(f"trial {trial.number:>3} INTERRUPTED (Ctrl-C); writing the study's outputs")
            write_outputs(study, study_dir, metric, data, model_source, s.keep_all, s.fraction)
            raise

    # ---- outputs and the summary
    summary = write_outputs(study, study_dir, metric, data, model_source, s.keep_all, s.fraction)
    summary.ran_here = ran
    return summary


def _base_and_space(s: TuneSettings, metric: Metric) -> tuple[TrainConfig, dict, dict]:
    """(the config every trial starts from, the searched space, the fixed settings as shown to the user)."""
    fixed_user = dict(s.sets)
    if s.epochs is not None:
        fixed_user["epochs"] = s.epochs
    base = build(None, fixed_user)
    align = {}  # keep as best/ the epoch the objective likes, unless the user chose the monitor
    if "monitor" not in fixed_user:
        align["monitor"] = metric.monitor
    if "monitor_level" not in fixed_user:
        align["monitor_level"] = metric.level
    base = build(base, align)
    space = s.space if isinstance(s.space, dict) else load_space(s.space)
    where = str(s.space) if s.space is not None and not isinstance(s.space, dict) else "search space"
    space = {k: v for k, v in space.items() if k.replace("-", "_") not in fixed_user}  # --set wins
    searched, fixed_space = check_space(space, base, where)
    base = build(base, fixed_space)
    return base, searched, {**fixed_user, **align, **fixed_space}


def _open_study(study_dir: Path, s: TuneSettings, metric: Metric, epochs: int, data_dir, model_source: str):
    """(the study, created or loaded, its sampler); a study made for another metric or data is refused."""
    import optuna

    name = s.study_name or study_dir.resolve().name
    sampler = make_sampler(s.seed, s.trials)
    study = optuna.create_study(study_name=name, storage=open_storage(study_dir, s.storage),
                                direction=metric.direction, sampler=sampler, pruner=make_pruner(s.pruner, epochs),
                                load_if_exists=True)
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
    return study, sampler


def _trial_config(trial, base: TrainConfig, searched: dict, study_seed: int) -> TrainConfig:
    """The trial's TrainConfig: its sampled values over the base, its own seed; recorded on the trial."""
    values = sample(trial, searched)
    values = keep_effective_batch(base, values, searched)
    values["seed"] = trial_seed(study_seed, trial.number)
    trial.set_user_attr("seed", values["seed"])
    cfg = build(base, values)
    trial.set_user_attr("epochs_planned", cfg.epochs)
    trial.set_user_attr("config", cfg.to_dict())  # best.yaml comes from this, on any machine
    return cfg


def _run_trial(study, trial, data, model_source, study_dir, base, searched, metric, s, progress, say):
    """One train run, told to Optuna as COMPLETE, PRUNED or FAIL (with its reason); Ctrl-C propagates."""
    import optuna
    from optuna.trial import TrialState

    from dftune.stages import train  # train.run is looked up now: tests replace it

    t0 = time.time()
    run_dir = trial_dir(study_dir, trial.number)
    curve: list = []
    epochs_run = 0
    try:
        cfg = _trial_config(trial, base, searched, s.seed)
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
                Heartbeat(study._storage, trial._trial_id):
            summary = train.run(data, model_source, run_dir, cfg, progress=progress, on_epoch_end=on_epoch_end,
                                say=lambda line: print(line, file=log_file))
        hist = {h["epoch"]: h for h in read_json(run_dir / "history.json")}
        best = hist.get(summary.best_epoch)
        value = metric.of(best) if best else None
        trial.set_user_attr("epochs_run", summary.epochs_run)
        trial.set_user_attr("best_epoch", summary.best_epoch)
        trial.set_user_attr("duration_s", round(time.time() - t0, 2))
        if value is None:
            raise FloatingPointError(f"{metric.name} is undefined for this run (NaN or missing: one class in val, "
                                     f"or a diverged model)")
        study.tell(trial, value)
        state, extra = TrialState.COMPLETE, f"{metric.name} {value:.4f}"
    except optuna.TrialPruned as e:
        set_attr(trial, "epochs_run", epochs_run)
        set_attr(trial, "duration_s", round(time.time() - t0, 2))
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        state, extra = TrialState.PRUNED, str(e)
    except KeyboardInterrupt:
        set_attr(trial, "interrupted", "Ctrl-C")
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    except Exception as e:  # OOM, NaN, bad settings: recorded, and the study goes on
        reason = f"{type(e).__name__}: {e}".strip()[:500]
        log.debug("trial %d failed", trial.number, exc_info=True)
        set_attr(trial, "epochs_run", epochs_run)
        set_attr(trial, "duration_s", round(time.time() - t0, 2))
        set_attr(trial, COUNTED, reason)
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        state, extra = TrialState.FAIL, reason
    finally:
        gc.collect()
        _empty_cuda_cache()
    params = ", ".join(f"{k}={fmt(v)}" for k, v in trial.params.items())
    try:
        best = study.best_trial
        best_s = f"best #{best.number} {best.value:.4f}"
    except ValueError:
        best_s = "no complete trial yet"
    say(f"trial {trial.number:>3} {state.name:<8} {extra} | {epochs_run} ep {time.time() - t0:.1f}s | {params} | "
        f"{best_s}")
    clean_weights(study, study_dir, s.keep_all)


def _empty_cuda_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
