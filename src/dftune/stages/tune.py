"""Stage ``tune``: a hyper-parameter search, many real ``train`` runs chosen by Optuna. Read it top to bottom:
settings -> study -> data -> trials -> outputs -> summary; the parts live in :mod:`dftune.search`.

Each trial is ``dftune.stages.train.run`` on the same data with a TrainConfig built from the
defaults, the user's ``--set`` values and the trial's sampled values; its objective is one val
metric read from the run's ``history.json`` records (at the epoch the run keeps as ``best/``).
With ``--check PATH`` (repeatable) the objective is that metric's mean over the check sets
(``record["check"]["mean"]``): every trial gets the check sets and, unless ``--set select_on=val``,
selects its ``best/`` epoch on them too (the trial is judged on them, so its kept epoch is the one they
like); the val metric is still recorded per trial (``val_value``). A check set sharing an identity, a
video or a crop with the tuning data is refused before any trial runs, and a continued study with other
check sets is refused.
Every epoch reports that metric to Optuna, and a pruner may stop the run there (the
``TrialPruned`` raised from ``on_epoch_end`` leaves ``train`` after that epoch's checkpoint and
history were written).

STUDY_DIR after a study::

    study.journal        Optuna's journal (unless --storage): re-run or run in parallel to continue
    study.json           the study this folder holds (its name and uid): a moved folder continues it
    trials/trial_NNNN/   each trial's run folder (weights kept for the best trial only, unless keep_all)
    data/                the train-subset manifest when fraction < 1 (paths point at the original crops)
    trials.csv  best.yaml  report.md  history.png  intermediate.png  importance.png
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dftune.atomic import file_sha256, read_json, write_json
from dftune.search.metric import Metric, parse_metric
from dftune.search.outputs import TuneSummary, clean_weights, fmt, trial_dir, write_outputs
from dftune.search.space import SpaceError, check_space, keep_effective_batch, load_space, sample, trial_seed
from dftune.search.study import (
    COUNTED,
    Heartbeat,
    claim,
    clear_stale_lock,
    fail_stale,
    journal_study_names,
    make_pruner,
    make_sampler,
    open_storage,
    repair_journal,
    seed_sampler,
    set_attr,
    tally,
)
from dftune.search.subset import subset_data
from dftune.training.config import TrainConfig, build, recipe_layer, with_recipe

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
    checks: tuple = ()  # --check: prepared folders from outside --data; their mean metric is the objective
    sets: dict = field(default_factory=dict)  # --set values: fixed, and taken out of the search


def run(data_dir: str | os.PathLike, model_source: str, study_dir: str | os.PathLike, s: TuneSettings,
        progress: bool = False, say: Callable[[str], None] = print, stale_after: float = 300.0) -> TuneSummary:
    """Run trials until the study holds ``s.trials`` finished ones (or ``s.timeout`` passes); write outputs."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_dir = Path(study_dir)
    metric = parse_metric(s.metric, s.checks)
    if s.trials < 1:
        raise ValueError(f"--trials must be at least 1; got {s.trials}")
    if not 0 < s.fraction <= 1:
        raise ValueError(f"--fraction must be in (0, 1]; got {s.fraction}")
    _check_data(data_dir)  # before any trial: a bad --data or --model fails every trial alike
    _check_model(model_source)
    journal = _journal(study_dir, s)
    if journal is not None:  # a lock left by a process killed while writing the journal: taken over now
        clear_stale_lock(journal, say)
    _check_checks(s.checks, data_dir, study_dir)  # a check set from the tuning data would reward memory: refused now
    study_dir.mkdir(parents=True, exist_ok=True)
    _save_settings(study_dir, data_dir, model_source, s)  # what `tune --resume STUDY_DIR` continues with

    # ---- settings: the base config (defaults + --recipe's + --set + --epochs) and the space
    base, searched, fixed = _base_and_space(s, metric)

    # ---- study (created, or continued)
    study, sampler, uid = _open_study(study_dir, s, metric, base, data_dir, model_source, say)

    # ---- data: whole, or a fraction of the train videos (the same subset in every process: it depends on --seed)
    data = Path(data_dir)
    if s.fraction < 1:
        data = subset_data(data_dir, study_dir / "data", s.fraction, s.seed)

    where_db = _redact(s.storage) if s.storage else study_dir / "study.journal"
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
        for number, value in fail_stale(study, stale_after, _recover(study_dir, metric, uid)):
            say(f"trial {number:>3} COMPLETE {metric.name} {value:.4f} | recovered from "
                f"{trial_dir(study_dir, number)}: its process was killed after its run finished")
        done, running = tally(study)
        if done + running >= s.trials:
            if ran == 0:
                failed = sum(t.state.name == "FAIL" and COUNTED in t.user_attrs
                             for t in study.get_trials(deepcopy=False))
                more = (f" ({failed} of them failed, and count: --trials {max(s.trials, done) + failed} runs "
                        f"{failed} more)") if failed else ""
                say(f"the study already holds {done} finished trial(s)"
                    f"{f' and {running} running elsewhere' if running else ''} of {s.trials}; nothing to run{more}")
            break
        trial = claim(study, s.trials)
        if trial is None:  # another process took the last slot
            break
        seed_sampler(sampler, trial_seed(s.seed, trial.number))
        ran += 1
        try:
            _run_trial(study, trial, data, model_source, study_dir, base, searched, metric, s, progress, say, uid)
        except KeyboardInterrupt:
            say(f"trial {trial.number:>3} INTERRUPTED (Ctrl-C); writing the study's outputs")
            write_outputs(study, study_dir, metric, data, model_source, s.keep_all, s.fraction, source_data=data_dir)
            raise

    # ---- outputs and the summary
    summary = write_outputs(study, study_dir, metric, data, model_source, s.keep_all, s.fraction,
                            source_data=data_dir)
    summary.ran_here = ran
    summary.wanted = s.trials
    return summary


def _save_settings(study_dir: Path, data_dir, model_source: str, s: TuneSettings) -> None:
    """``STUDY_DIR/settings.yaml``: the command's settings, its data and model. A storage URL holding a password
    is not written (``storage_redacted``: a resume asks for --storage again)."""
    from dataclasses import asdict

    from dftune import runs

    d = asdict(s)
    d["pruner"] = s.pruner if isinstance(s.pruner, str) else type(s.pruner).__name__
    d["checks"] = list(s.checks)
    if s.storage and _redact(s.storage) != s.storage:
        d["storage"], d["storage_redacted"] = None, True
    runs.write_command_settings(study_dir, data_dir, model_source, d)


def _base_and_space(s: TuneSettings, metric: Metric) -> tuple[TrainConfig, dict, dict]:
    """(the config every trial starts from, the searched space, the fixed settings as shown to the user).

    Layers, later wins: the defaults, the recipe's (``--set recipe=NAME``, as ``train --recipe`` expands it),
    ``--set`` and ``--epochs``, the space file's fixed values, then each trial's sampled ones."""
    fixed_user = dict(s.sets)
    if s.epochs is not None:
        fixed_user["epochs"] = s.epochs
    space = s.space if isinstance(s.space, dict) else load_space(s.space)
    where = str(s.space) if s.space is not None and not isinstance(s.space, dict) else "search space"
    recipe_spec = space.get("recipe")
    if isinstance(recipe_spec, dict):
        raise SpaceError(f"{where}: 'recipe': cannot be searched (a recipe is a set of defaults: fix it with "
                         f"--set recipe=NAME, and search its settings, e.g. ema or wise_alpha, instead)")
    if "recipe" not in fixed_user and recipe_spec is not None:
        fixed_user["recipe"] = recipe_spec  # a plain value in the space file: fixed, like --set
    space = {k: v for k, v in space.items() if k != "recipe"}
    base = with_recipe(None, fixed_user, space)  # defaults < the recipe's < --set (train's own order)
    recipe = recipe_layer(base.recipe, (*fixed_user, *space))  # a searched ema replaces the recipe's, as --set
    align = {}  # keep as best/ the epoch the objective likes, unless the user chose the monitor
    if "monitor" not in fixed_user:
        align["monitor"] = metric.monitor
    if "monitor_level" not in fixed_user:
        align["monitor_level"] = metric.level
    if metric.on == "check":  # every trial scores the check sets; judged on them, it selects its epoch on them
        base = build(base, {"checks": metric.checks})
        if "select_on" not in fixed_user:
            align["select_on"] = "check"
    base = build(base, align)
    space = {k: v for k, v in space.items() if k.replace("-", "_") not in fixed_user}  # --set wins
    searched, fixed_space = check_space(space, base, where)
    base = build(base, fixed_space)
    from_recipe = {k: v for k, v in recipe.items() if k not in fixed_user and k not in space}
    return base, searched, {**fixed_user, **from_recipe, **align, **fixed_space}


def _open_study(study_dir: Path, s: TuneSettings, metric: Metric, base: TrainConfig, data_dir, model_source: str,
                say: Callable[[str], None] = print):
    """(the study, created or loaded, its sampler, its uid); a study made for another metric, data, model,
    --epochs or --set is refused."""
    import optuna

    journal = _journal(study_dir, s)
    if journal is not None:
        repair_journal(journal, say)
    name = _study_name(study_dir, s, journal, say)
    sampler = make_sampler(s.seed, s.trials)
    study = optuna.create_study(study_name=name, storage=open_storage(study_dir, s.storage),
                                direction=metric.direction, sampler=sampler, pruner=make_pruner(s.pruner, base.epochs),
                                load_if_exists=True)
    if study.direction.name.lower() != metric.direction:
        raise ValueError(f"study {name!r} in this storage was made to {study.direction.name.lower()}; "
                         f"--metric {metric.name} is {metric.direction}d (use another --study-name or STUDY_DIR)")
    meta = study.user_attrs
    setup = _setup(s, base, data_dir, model_source)
    if "metric" not in meta:
        for k, v in (("metric", metric.name), ("fraction", s.fraction), ("fraction_seed", s.seed),
                     ("data", str(Path(data_dir).resolve())), ("model", str(model_source))):
            study.set_user_attr(k, v)
        for k, v in setup.items():
            study.set_user_attr(k, v)
    else:  # the objective must stay comparable across the study's trials
        if meta["metric"] != metric.name:
            raise ValueError(f"study {name!r} optimises {meta['metric']}; this command asks for {metric.name} "
                             f"(use another --study-name or STUDY_DIR)")
        if meta.get("fraction", 1.0) != s.fraction or (s.fraction < 1 and meta.get("fraction_seed") != s.seed):
            raise ValueError(f"study {name!r} trains on --fraction {meta.get('fraction')} (--seed "
                             f"{meta.get('fraction_seed')}); this command asks for --fraction {s.fraction} --seed "
                             f"{s.seed} (use another --study-name or STUDY_DIR)")
        _refuse_other_setup(name, meta, setup, data_dir, model_source)
    uid = meta.get("uid")
    if not uid:  # a new study (or one made before uids): a fresh one, never a deleted study's
        study.set_user_attr("uid", uuid.uuid4().hex)
        uid = study.user_attrs["uid"]  # the storage's: another process may have set it first
    marker = study_dir / STUDY_FILE
    if not marker.exists() or read_json(marker).get("uid") != uid:
        write_json(marker, {"study_name": name, "uid": uid,
                            "storage": "study.journal" if s.storage is None else _redact(s.storage)})
    return study, sampler, uid


def _journal(study_dir: Path, s: TuneSettings) -> Path | None:
    """The study's journal file (None with a database --storage)."""
    return study_dir / "study.journal" if s.storage is None else None if "://" in s.storage else Path(s.storage)


STUDY_FILE = "study.json"  # the study this folder holds: its name is kept here, not taken from the folder's


def _study_name(study_dir: Path, s: TuneSettings, journal: Path | None, say: Callable[[str], None]) -> str:
    """The study this folder holds (``study.json``), so a renamed or moved folder continues its own study; a new
    folder's is ``--study-name`` or the folder's name."""
    marker = study_dir / STUDY_FILE
    if marker.exists():
        try:
            name = read_json(marker)["study_name"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{marker}: unreadable ({type(e).__name__}: {e}); it names the study this folder holds: "
                             f'write {{"study_name": "NAME"}} into it, or delete it and pass --study-name NAME') \
                from None
        if s.study_name and s.study_name != name:
            raise ValueError(f"{study_dir} holds study {name!r} ({marker}); --study-name {s.study_name} asks for "
                             f"another: leave --study-name out to continue {name!r}, or use another STUDY_DIR")
        return name
    if s.study_name:
        return s.study_name
    name = study_dir.resolve().name
    if journal is not None and journal == study_dir / "study.journal":  # the folder's own journal
        names = journal_study_names(journal)
        if names and name not in names:  # made before study.json, under another folder name
            if len(names) > 1:
                raise ValueError(f"{journal} holds the studies {', '.join(map(repr, names))}, none named after this "
                                 f"folder ({name!r}): pass --study-name NAME to continue one")
            say(f"{journal} holds study {names[0]!r} (made under another folder name); continuing it")
            name = names[0]
    return name


# --set keys that do not change what a trial learns: a continued study may change them
_SETUP_FREE = ("num_workers", "tensorboard", "threads", "micro_batch")


def _setup(s: TuneSettings, base: TrainConfig, data_dir, model_source: str) -> dict:
    """What a study's trials train on besides their sampled settings, as study attributes."""
    from dftune.prepared import manifest_file

    sets = {k: v for k, v in build(None, s.sets).to_dict().items() if k in s.sets and k not in _SETUP_FREE}
    return {"epochs": base.epochs, "sets": json.loads(json.dumps(sets, default=str)),
            "data_manifest_sha256": file_sha256(manifest_file(data_dir)),
            "model_resolved": _model_key(model_source), "model_fingerprint": _model_fingerprint(model_source),
            "checks": _check_keys(s.checks)}


def _check_keys(specs) -> list[str]:
    """Check sets as a study records them: each folder's absolute path and its splits (``PATH:val+test``); a labels
    CSV, which has no splits, by its path alone."""
    from dftune.checks import CheckError, is_labels, parse_spec

    out = []
    for spec in specs or ():
        folder, splits = parse_spec(str(spec))
        try:
            labels = is_labels(spec)
        except CheckError:  # refused with its reason where the check sets are loaded
            labels = False
        out.append(str(folder.resolve()) if labels else f"{folder.resolve()}:{'+'.join(splits)}")
    return out


def _same_checks(had: list, now: list) -> bool:
    """A study's recorded check sets against this run's; a labels CSV recorded with the splits it never had
    (``labels.csv:val+test``, before they were dropped) is the same set."""
    def plain(k: str) -> str:
        return k[:-len(":val+test")] if k.lower().endswith(".csv:val+test") else k

    return [plain(k) for k in had] == [plain(k) for k in now]


def _check_checks(specs, data_dir, study_dir) -> None:
    """Load the check sets and refuse one of one class, or sharing an identity, a video or a crop with ``data_dir``'s
    train and val rows (what the trials train and validate on), before any trial runs. A labels CSV is framed
    here with the data's crop settings into ``STUDY_DIR/checks`` (each trial frames it again into its own run)."""
    if not specs:
        return
    from dftune import checks
    from dftune.prepared import read_manifest
    from dftune.training import starting

    try:
        crop = starting.crop_settings(data_dir) if any(checks.is_labels(c) for c in specs) else None
        sets = [checks.load(c, cache=Path(study_dir) / "checks", crop=crop) for c in specs]
        checks.refuse_leaks(sets, read_manifest(data_dir, ("train", "val")), data_dir)
    except checks.CheckError as e:
        raise ValueError(str(e)) from None


def _refuse_other_setup(name: str, meta: dict, setup: dict, data_dir, model_source: str) -> None:
    """A continued study on other data, another model, --epochs or --set is refused, naming each (old -> new);
    studies made before these were recorded are checked on what they recorded."""
    diffs = []
    data = str(Path(data_dir).resolve())
    if meta.get("data") not in (None, data) and meta.get("data_manifest_sha256") != setup["data_manifest_sha256"]:
        diffs.append(f"--data {meta['data']} -> {data}")  # the same manifest elsewhere (another machine) is the same
    if "model_resolved" in meta:  # the same folder, or a copy of it elsewhere (another machine)
        if meta["model_resolved"] != setup["model_resolved"] and \
                (meta.get("model_fingerprint") is None or meta.get("model_fingerprint") != setup["model_fingerprint"]):
            diffs.append(f"--model {meta.get('model')} -> {model_source}")
    elif meta.get("model") not in (None, str(model_source)):
        diffs.append(f"--model {meta.get('model')} -> {model_source}")
    if not _same_checks(meta.get("checks", []), setup["checks"]):  # a study made before --check optimised val
        diffs.append(f"--check {', '.join(meta.get('checks') or []) or '(none: val)'} -> "
                     f"{', '.join(setup['checks']) or '(none: val)'}")
    if "epochs" in meta and meta["epochs"] != setup["epochs"]:
        diffs.append(f"--epochs {meta['epochs']} -> {setup['epochs']}")
    if "sets" in meta and meta["sets"] != setup["sets"]:
        old, new = meta["sets"], setup["sets"]
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                diffs.append(f"--set {k}: {old.get(k, '(not set)')} -> {new.get(k, '(not set)')}")
    if diffs:
        raise ValueError(f"study {name!r} was made with other settings: {'; '.join(diffs)} (its trials would not be "
                         f"comparable: run it with the settings it was made with, or use another --study-name or "
                         f"STUDY_DIR)")


def _model_key(model_source: str) -> str:
    """A model folder's absolute path (the same folder from any working directory), or the hub id."""
    p = Path(model_source).expanduser()
    return str(p.resolve()) if p.exists() else str(model_source)


def _model_fingerprint(model_source: str) -> str | None:
    """A local model folder's config.json and its files' names and sizes, hashed (None for a hub id)."""
    p = Path(model_source).expanduser()
    if not p.is_dir():
        return None
    h = hashlib.sha256()
    if (p / "config.json").is_file():
        h.update((p / "config.json").read_bytes())
    for f in sorted(q for q in p.iterdir() if q.is_file()):
        h.update(f"{f.name}:{f.stat().st_size}\n".encode())
    return h.hexdigest()


def _redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


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


def _run_trial(study, trial, data, model_source, study_dir, base, searched, metric, s, progress, say, uid=None):
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
        if run_dir.exists():  # a number is never reused in a study: another study's folder, or leftovers
            _clear_trial_dir(run_dir, uid, say)

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
        write_json(run_dir / TRIAL_FILE, {"study_name": study.study_name, "uid": uid, "number": trial.number})
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
        if metric.on == "check" and best:  # the objective is the check sets': the val metric is kept beside it
            trial.set_user_attr("val_value", metric.val_of(best))
        if value is None:
            where = "the check sets" if metric.on == "check" else "val"
            raise FloatingPointError(f"{metric.name} is undefined for this run (NaN or missing: one class in "
                                     f"{where}, or a diverged model)")
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


TRIAL_FILE = "trial.json"  # which study's trial a trials/trial_NNNN folder is


def _recover(study_dir: Path, metric: Metric, uid: str | None) -> Callable:
    """``recover(trial)`` for ``fail_stale``: a dead trial whose folder here (this study's: ``trial.json``'s uid
    and number) shows its run finished (every planned epoch in history.json, or early stopping's patience spent,
    and ``best/`` written) gives its objective as ``_run_trial`` reads it, and its attributes; else None."""

    def recover(t) -> tuple[float, dict] | None:
        run_dir = trial_dir(study_dir, t.number)
        if uid is None or not (run_dir / TRIAL_FILE).is_file() or not (run_dir / "history.json").is_file():
            return None
        mark = read_json(run_dir / TRIAL_FILE)
        if mark.get("uid") != uid or mark.get("number") != t.number or "config" not in t.user_attrs:
            return None
        cfg = build(None, t.user_attrs["config"])
        hist = read_json(run_dir / "history.json")
        if not hist or not (run_dir / "best").is_dir() or not _finished(hist, cfg):
            return None
        best = [h for h in hist if h.get("best")]
        value = metric.of(best[-1]) if best else None
        if value is None:
            return None
        attrs = {"epochs_run": hist[-1]["epoch"], "best_epoch": best[-1]["epoch"],
                 "curve": [metric.of(h) for h in hist],
                 "recovered": "its process was killed after its run finished: told COMPLETE from its folder"}
        if metric.on == "check":
            attrs["val_value"] = metric.val_of(best[-1])
        return value, attrs

    return recover


def _finished(hist: list[dict], cfg: TrainConfig) -> bool:
    """Whether a run's history shows it ended: its last planned epoch, or early stopping (``patience``
    validations in a row without a new best, as ``train`` counts them)."""
    if hist[-1]["epoch"] >= cfg.epochs:
        return True
    validated = [h for h in hist if h.get("val") is not None]
    trailing = 0
    for h in reversed(validated):
        if h.get("best"):
            break
        trailing += 1
    return cfg.patience > 0 and trailing >= cfg.patience


def _clear_trial_dir(run_dir: Path, uid: str | None, say: Callable[[str], None]) -> None:
    """Delete a trial folder this study left (a trial the storage lost); move any other aside, never delete it
    (another study's trial, say the best weights of a study made before this folder was renamed)."""
    mark = run_dir / TRIAL_FILE
    try:
        ours = uid is not None and mark.is_file() and read_json(mark).get("uid") == uid
    except (ValueError, OSError, AttributeError):
        ours = False
    if ours:
        shutil.rmtree(run_dir)
        return
    aside = run_dir.with_name(f"{run_dir.name}.other-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while aside.exists():
        aside, n = aside.with_name(f"{run_dir.name}.other-{time.strftime('%Y%m%d-%H%M%S')}-{n}"), n + 1
    run_dir.rename(aside)
    say(f"{run_dir} held a trial of another study (or of one made before {STUDY_FILE}); moved it to {aside.name}")


def _check_data(data_dir) -> None:
    from dftune.prepared import manifest_file, read_manifest

    try:
        read_manifest(manifest_file(data_dir))
    except (ValueError, OSError) as e:
        raise ValueError(f"--data {data_dir}: {e}") from None


def _check_model(model_source: str) -> None:
    """A model folder that exists and holds config.json, or a hub id this machine can fetch config.json for."""
    src = str(model_source)
    p = Path(src).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"--model {src}: not a Hugging Face model folder (no config.json in {p.resolve()})")
        return
    if src.startswith((".", "/", "~", "\\")) or src.count("/") > 1 or "\\" in src or not src.strip():
        raise FileNotFoundError(f"--model {src}: no such model folder ({p.resolve()})")
    try:  # a hub id (NAME or OWNER/NAME): train would fetch this first anyway
        from huggingface_hub import hf_hub_download

        hf_hub_download(src, "config.json")
    except Exception as e:
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"--model {src}: no model folder of that name here ({p.resolve()}), and not a "
                                f"Hugging Face hub model this machine can fetch ({type(e).__name__}: {why})") from None


def _empty_cuda_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
