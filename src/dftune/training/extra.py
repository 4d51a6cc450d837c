"""Sets validated beside the run's own val split: check sets from outside the training data (``--check``), and
each dataset's share of a mixed val split (``--data A --data B``: one row per dataset in history.json).

Every validation scores them with the same :func:`dftune.training.validate.validate` as val (gathered over
processes, the EMA weights with ``--ema``), so their numbers mean what val's mean. ``--select-on check`` makes
the check sets' mean (``dftune.checks.mean_of``) decide ``best/`` and early stopping; each validation also records
the threshold that is macro-F1-optimal on every check row pooled (``record["check"]["threshold"]``), which
``--threshold-on check`` stores in the model folders (:func:`stored_threshold`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dftune import checks
from dftune.atomic import read_json
from dftune.training import TrainError, data, validate
from dftune.training.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class ExtraSet:
    """One set validated beside val: its rows, dataset and loader (prepared by Accelerate with the model)."""

    name: str
    folder: Path
    rows: list
    ds: data.CropDataset
    dl: object = None


@dataclass
class Extras:
    checks: list[ExtraSet] = field(default_factory=list)
    datasets: list[ExtraSet] = field(default_factory=list)  # a mix's val, dataset by dataset

    def loaders(self) -> list:
        return [s.dl for s in (*self.checks, *self.datasets)]

    def set_loaders(self, prepared: list) -> None:
        for s, dl in zip((*self.checks, *self.datasets), prepared, strict=True):
            s.dl = dl


def build(cfg: TrainConfig, data_dir: Path, run_dir: Path, train_rows: list, val_rows: list, spec, workers: int,
          pin: bool, say=print, progress: bool = True) -> Extras:
    """The check sets ``cfg.checks`` names (refused when one-class or sharing an identity, a video, a crop or a
    source file with the training data) and, when the val rows come from several datasets (a mix), one set per
    dataset. A labels CSV's files are framed with the data's crop settings into ``RUN_DIR/checks`` (kept for a
    resume; the main process frames, the others then read its folder); ``workers`` framing processes."""
    from accelerate import PartialState

    from dftune.training import starting

    out = Extras()
    seed, batch = cfg.seed, cfg.batch_size * 2
    state = PartialState()
    try:
        crop = starting.crop_settings(data_dir) if any(checks.is_labels(c) for c in cfg.checks) else None
        with state.main_process_first():
            sets = [checks.load(c, cache=run_dir / "checks", crop=crop, workers=workers, say=say,
                                progress=progress and state.is_main_process) for c in cfg.checks]
        checks.refuse_leaks(sets, train_rows + val_rows, data_dir)
    except checks.CheckError as e:
        raise TrainError(str(e)) from None
    transform = data.make_transform(spec, None)
    for cs in sets:
        rows, _bad = data.check_files(cs.folder, cs.rows)
        ds = data.CropDataset(cs.folder, rows, transform, seed)
        out.checks.append(ExtraSet(cs.name, cs.folder, rows, ds, data.make_loader(ds, batch, None, workers, pin)))
    names = sorted({r.dataset for r in val_rows if r.dataset})
    if len(names) > 1:
        for nm in names:
            rows = [r for r in val_rows if r.dataset == nm]
            ds = data.CropDataset(data_dir, rows, transform, seed)
            out.datasets.append(ExtraSet(nm, data_dir, rows, ds, data.make_loader(ds, batch, None, workers, pin)))
    return out


def run_all(extras: Extras, accelerator, model, normalize, fake_index: int, aggregate: str, skipped: set,
            ema=None) -> dict:
    """``{"check": {"sets": {name: val-like}, "mean": ...}, "datasets": {name: val-like}}`` (keys only for what
    the run has)."""
    out: dict = {}
    if extras.checks:
        per, scored = {}, []
        for s in extras.checks:
            got: list = []
            per[s.name] = validate.validate(accelerator, model, s.dl, normalize, s.ds, s.rows, fake_index, aggregate,
                                            skipped, ema, scores=got)
            scored.append((s.name, *got[0]))
        # the macro-F1-optimal threshold on every check row pooled (train --threshold-on check stores it)
        out["check"] = {"sets": per, "mean": checks.mean_of(per), "threshold": checks.pooled_threshold(scored,
                                                                                                      aggregate)}
    if extras.datasets:
        out["datasets"] = {s.name: validate.validate(accelerator, model, s.dl, normalize, s.ds, s.rows, fake_index,
                                                     aggregate, skipped, ema) for s in extras.datasets}
    return out


def stored_threshold(record: dict, cfg: TrainConfig) -> dict | None:
    """The threshold a validated epoch's model folders store, as history.json records it: ``{"value", "source"}``,
    0.5 untuned (``{"by": "default"}``), or with ``--threshold-on check`` the check sets' pooled optimum at
    ``--level`` (no TTA, the run's video pooling) and its provenance naming them. None: not validated."""
    if record.get("val") is None:
        return None
    if cfg.threshold_on != "check" or not (record.get("check") or {}).get("threshold"):
        return {"value": 0.5, "source": {"by": "default"}}
    t = record["check"]["threshold"][cfg.monitor_level]
    return {"value": t["threshold"], "source": checks.threshold_source(
        list(record["check"]["sets"]), cfg.monitor_level, cfg.video_aggregate, "train", epoch=record["epoch"],
        macro_f1=t["macro_f1"])}


# ---------------------------------------------------------------- several --data


def mixed_data(data_dir, run_dir: Path, cfg: TrainConfig) -> Path:
    """``--data A --data B ...``: one manifest over them in ``RUN_DIR/data`` (:mod:`dftune.mix`: links, a dataset
    column, cross-folder identity leaks dropped), written once and reused by --resume; one folder as it is."""
    if isinstance(data_dir, (str, os.PathLike)):
        if cfg.data_weights and len(cfg.data_weights) != 1:
            raise TrainError(f"--data-weight: {len(cfg.data_weights)} weights for 1 --data")
        return Path(data_dir)
    folders = [Path(d) for d in data_dir]
    if len(folders) == 1:
        return mixed_data(folders[0], run_dir, cfg)
    if cfg.data_weights and len(cfg.data_weights) != len(folders):
        raise TrainError(f"--data-weight: {len(cfg.data_weights)} weights for {len(folders)} --data; give one per "
                         f"--data, in the same order")
    from dftune import mix

    out = run_dir / "data"
    if (out / "settings.json").exists():
        had = list((read_json(out / "settings.json").get("mix") or {}).get("folders", {}).values())
        if had == [str(f.resolve()) for f in folders]:
            return out
        raise TrainError(f"{out}: this run mixed {', '.join(had)}; --data names {', '.join(map(str, folders))}. "
                         f"Resume with the same --data, or start a new run (another --out)")
    try:
        mix.write_mix(folders, out)
    except mix.MixError as e:
        raise TrainError(str(e)) from None
    return out


def _mix_names(data_dir: Path) -> list[str]:
    return list((read_json(data_dir / "settings.json").get("mix") or {}).get("folders", {})) \
        if (data_dir / "settings.json").exists() else []


def warn_mix(data_dir: Path, train_rows: list, val_rows: list, cfg: TrainConfig) -> list[str]:
    """The warnings (also logged) about a mix's datasets that take no part in a side of the run: one without val
    rows (val, best/ and early stopping measure the others only), one without train rows, one whose
    ``--data-weight`` is 0 (never drawn, still validated)."""
    names = _mix_names(data_dir)
    if len(names) < 2:
        return []
    of = [{r.dataset.split("/")[0] for r in rows} for rows in (train_rows, val_rows)]
    out = [f"{nm}: no val rows in the mix: val (best/, early stopping, the stored numbers) measures "
           f"{', '.join(n for n in names if n in of[1])} only" for nm in names if nm not in of[1]]
    out += [f"{nm}: no train rows in the mix: the run learns nothing from it (its val is still measured)"
            for nm in names if nm not in of[0] and nm in of[1]]
    if len(cfg.data_weights) == len(names):
        out += [f"{nm}: --data-weight 0: none of its train rows is drawn, so the run learns nothing from it"
                + ("; its val rows are still validated and pooled into val" if nm in of[1] else "")
                for nm, w in zip(names, cfg.data_weights, strict=True) if w == 0]
    for line in out:
        log.warning("%s", line)
    return out


def sample_weights(data_dir: Path, train_rows: list, cfg: TrainConfig):
    """Per-row draw weights giving each dataset of a mix its ``--data-weight`` share of an epoch, or None."""
    if not cfg.data_weights:
        return None
    names = _mix_names(data_dir)
    if len(names) != len(cfg.data_weights):
        return None  # one dataset: its weight says nothing
    share = dict(zip(names, cfg.data_weights, strict=True))
    n = {nm: sum(1 for r in train_rows if r.dataset.split("/")[0] == nm) for nm in names}
    return np.array([share[r.dataset.split("/")[0]] / max(1, n[r.dataset.split("/")[0]]) for r in train_rows])
