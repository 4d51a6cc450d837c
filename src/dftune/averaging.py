"""Weight averaging of model folders, the one implementation: WiSE-FT (``merge --alpha``, ``train --wise``) and
the uniform / weighted soup (``merge``), the alpha chosen on check sets (``--alpha auto`` / ``--wise auto``).
``stages.merge`` (the command's recipe, and the greedy soup) and ``training.starting`` (``train --wise``) both
call :func:`merge`.

- two models and ``alpha``: ``(1 - alpha) * A + alpha * B`` — WiSE-FT (Wortsman et al., 2022)
  with A the pre-trained baseline and B its fine-tuned copy: the fine-tuned gain in
  distribution, much of the baseline's robustness out of it;
- several models: the uniform soup, their mean.

Models must share an architecture (the same parameter names and shapes) and the same kind of head: a
normalised head (``model.normalised``) and a plain linear one are refused, naming both (their classifiers
read features of other scales). Labels are
reconciled by name: a model whose head lists real/fake in the other order has its head
rows swapped before averaging, so ``Realism/Deepfake`` and ``Deepfake/Real`` models mix
correctly; a model whose classes are not the same two (real and fake) is refused. The
output is a Hugging Face folder (config and processor of the first model; a normalised head's folder
carries its modeling file) with its
``dftune.json`` (labels, the first model's crop settings, threshold 0.5 until evaluate
tunes one — or, with ``--threshold-on check``, the check sets' pooled optimum — and the recipe in
``extra.merge``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dftune.model import card
from dftune.model import meta as modelmeta

log = logging.getLogger(__name__)


class MergeError(ValueError):
    """Models that cannot be averaged; the message names them and says why."""


@dataclass
class _Loaded:
    path: str
    state: dict
    fake: int
    real: int
    head: list  # parameter names of the classification head (rows indexed by class)
    kind: str = "linear"  # the head: "normalised" (model.normalised) or "linear" (a stock class's)


def _head_names(model, state: dict) -> list[str]:
    """Parameters whose first dimension is the number of labels and that belong to the classifier."""
    n = model.config.num_labels
    return [k for k, v in state.items() if v.ndim >= 1 and v.shape[0] == n
            and any(w in k for w in ("classifier", "head", "fc.", "score"))]


def load_for_merge(path: str | os.PathLike) -> tuple[object, _Loaded]:
    from transformers import AutoModelForImageClassification

    from dftune.model.load import as_float32, register_families
    from dftune.portable import fake_index_of

    p = str(path)
    register_families()
    if not (Path(p) / "config.json").exists():
        raise MergeError(f"{p}: not a model folder (no config.json)")
    try:
        model = as_float32(AutoModelForImageClassification.from_pretrained(p))  # averaged and saved in float32
    except Exception as e:  # a truncated or foreign weights file: name it, in one line
        weights = next((str(f) for f in sorted(Path(p).glob("*.safetensors")) + sorted(Path(p).glob("*.bin"))), p)
        raise MergeError(f"{weights}: cannot read the model's weights ({type(e).__name__}: {e}); "
                         f"re-save or re-download the model") from None
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    if len(id2label) != 2:
        raise MergeError(f"{p}: {len(id2label)} labels {sorted(id2label.values())}; merge needs real/fake models")
    meta_file = modelmeta.meta_path(p)
    raw = __import__("json").loads(meta_file.read_text()) if meta_file.exists() else None
    fake = fake_index_of(id2label, raw, None, p)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise MergeError(f"{p}: tensor {bad[0]} holds NaN or Inf values" + (f" (and {len(bad) - 1} more tensors)"
                         if len(bad) > 1 else "") + "; a diverged run cannot be merged")
    return model, _Loaded(p, state, fake, 1 - fake, _head_names(model, state), head_kind(model.config))


def head_kind(config) -> str:
    """``"normalised"`` for dftune's normalised head (``model.normalised``), else ``"linear"``."""
    from dftune.model.normalised import MODEL_TYPE

    return "normalised" if getattr(config, "model_type", None) == MODEL_TYPE else "linear"


def refuse_overwriting_an_input(paths: Sequence[str], out) -> None:
    same = [p for p in paths if Path(p).resolve() == Path(out).resolve()]
    if same:
        raise MergeError(f"--out {out} is one of the models to merge; choose another folder (the input would be "
                         f"replaced)")


def _aligned(ref: _Loaded, other: _Loaded) -> dict:
    """``other``'s state with its head rows in ``ref``'s label order; refuses other architectures."""
    a, b = ref.state, other.state
    if ref.kind != other.kind:
        raise MergeError(f"{other.path} has a {other.kind} head and {ref.path} a {ref.kind} one: their classifiers "
                         f"read features of other scales (a normalised head sees unit-length features), so their "
                         f"average means nothing; merge models with the same head (a run trained with --head "
                         f"normalised merges with RUN_DIR/start, its starting model under the new head)")
    if set(a) != set(b):
        missing = sorted(set(a) ^ set(b))[:4]
        raise MergeError(f"{other.path}: another architecture than {ref.path} (parameters differ, e.g. {missing})")
    bad = [k for k in a if tuple(a[k].shape) != tuple(b[k].shape)]
    if bad:
        raise MergeError(f"{other.path}: shapes differ from {ref.path} (e.g. {bad[0]}: {tuple(b[bad[0]].shape)} vs "
                         f"{tuple(a[bad[0]].shape)})")
    if other.fake == ref.fake:
        return b
    out = dict(b)
    for k in ref.head:
        out[k] = b[k].flip(0)  # two classes: swap the rows so index i means the same class in both
    return out


def average(states: Sequence[dict], weights: Sequence[float]) -> dict:
    """Weighted mean of floating-point tensors; integer buffers (e.g. position ids) from the first."""
    import torch

    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    out = {}
    for k, v0 in states[0].items():
        if not torch.is_floating_point(v0):
            out[k] = v0.clone()
            continue
        acc = torch.zeros_like(v0, dtype=torch.float64)
        for s, wi in zip(states, w, strict=True):
            acc += float(wi) * s[k].double()
        out[k] = acc.to(v0.dtype)
    return out


def save_merged(model, state: dict, src: str, out: Path, recipe: dict, force: bool) -> Path:
    """Write the merged folder: ``src``'s config, processor and label map (the state is aligned to it); the crop
    settings of the last model in the recipe that has a ``dftune.json`` (WiSE-FT's fine-tuned model, whose
    settings come from its prepared data, rather than a hub baseline's assumed defaults)."""
    from transformers import AutoImageProcessor

    from dftune.atomic import staged_folder

    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out}: folder exists and is not empty; pass --force to replace it")
    with staged_folder(out) as tmp:  # replaces out only once complete
        model.load_state_dict(state)
        model.save_pretrained(tmp)
        AutoImageProcessor.from_pretrained(src).save_pretrained(tmp)
        base = modelmeta.load(src, {int(k): v for k, v in model.config.id2label.items()})
        crop = crop_of(recipe["models"]) or base.crop
        meta = modelmeta.ModelMeta(fake_index=base.fake_index, real_index=base.real_index, crop=crop,
                                   extra={"merge": recipe, **data_of(recipe["models"]),
                                          **card.provenance_of(recipe["models"])})
        modelmeta.save(tmp, meta)
    return out


def data_of(paths: Sequence[str]) -> dict:
    """The training data a merged model has seen, as its inputs' ``dftune.json`` name it: ``data`` (the last
    model's that names one: export checks on its val crops) and ``datasets`` (every input's data and datasets, by
    name), so a check set sharing identities with any of them is refused for the merged model too."""
    out: dict = {}
    seen: dict = {}
    for m in paths:
        if not modelmeta.meta_path(m).exists():
            continue
        extra = modelmeta.load(m).extra or {}
        if extra.get("data"):
            out["data"] = extra["data"]
            seen.setdefault(Path(str(extra["data"])).name or str(extra["data"]), extra["data"])
        for name, folder in (extra.get("datasets") or {}).items():
            seen.setdefault(name, folder)
    if len(seen) > 1:
        out["datasets"] = seen
    return out


def crop_of(paths: Sequence[str]) -> modelmeta.CropSettings | None:
    """The crop settings a merge keeps: those of the last model with a ``dftune.json`` (None: none has one)."""
    with_meta = [m for m in paths if modelmeta.meta_path(m).exists()]
    return modelmeta.load(with_meta[-1]).crop if with_meta else None


DTYPES = ("float32", "bfloat16", "float16")


def cast_state(state: dict, start: dict, dtype: str) -> tuple[dict, dict]:
    """``state``'s floating tensors cast to ``dtype``, and how much of the update from ``start`` survives:
    ``moved_kept`` = the share of the weights that differ from ``start`` which still differ after the cast,
    ``rounding_of_update`` = ||cast - state|| / ||state - start|| (0 when nothing moved)."""
    import torch

    if dtype not in DTYPES:
        raise MergeError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if dtype == "float32":
        return state, {"dtype": dtype, "moved_kept": 1.0, "rounding_of_update": 0.0}
    to = getattr(torch, dtype)
    out, moved, kept, err2, upd2 = {}, 0, 0, 0.0, 0.0
    for k, v in state.items():
        if not torch.is_floating_point(v):
            out[k] = v
            continue
        c = v.to(to)
        out[k] = c
        w, w0, cw = v.double(), start[k].double(), c.double()
        m = w != w0
        moved += int(m.sum())
        kept += int((m & (cw != w0)).sum())
        err2 += float(((cw - w) ** 2).sum())
        upd2 += float(((w - w0) ** 2).sum())
    return out, {"dtype": dtype, "moved_kept": kept / moved if moved else 1.0,
                 "rounding_of_update": (err2 ** 0.5) / (upd2 ** 0.5) if upd2 else 0.0}


ALPHA_GRID = tuple(round(0.1 * i, 1) for i in range(11))


def merge(paths: Sequence[str], out: str | os.PathLike, alpha: float | str | None = None,
        weights: Sequence[float] | None = None, force: bool = False, dtype: str = "float32",
        checks: Sequence[str] = (), grid: Sequence[float] = ALPHA_GRID, metric: str = "auc",
        level: str = "frame", say=None, threshold_on: str = "val", threshold_level: str | None = None,
        aggregate: str = "mean", progress: bool = True) -> dict:
    """WiSE-FT (two models and ``alpha``) or a (weighted) uniform soup; writes ``out`` in ``dtype``
    (float32 by default: a fine-tune's update is smaller than bf16's resolution, so a cast rounds much of it
    away; the returned ``cast`` says how much survives, measured from the first model).

    ``alpha="auto"``: each alpha of ``grid`` is scored on the check sets ``checks`` (``dftune.checks``: data from
    outside the fine-tune's) by ``metric`` at ``level``, and the best is kept; the curve (alpha -> check metric,
    and the fine-tuned data's val metric where its ``dftune.json`` names that data) is returned, kept in
    ``dftune.json`` and drawn in ``OUT/alpha_curve.png``. A check set given as a labels CSV is framed with the
    merged model's crop settings into ``checks/`` beside ``out`` (train's ``RUN_DIR/checks`` for ``--wise``).

    ``threshold_on="check"``: the merged model's threshold is the macro-F1-optimal one on every row of the check
    sets pooled (``dftune.checks.pooled_threshold``) at ``threshold_level`` (default ``level``), no TTA, videos
    pooled by ``aggregate``; ``"val"`` leaves 0.5 (untuned) for ``evaluate --write-threshold``. The returned
    ``threshold`` says which was stored."""
    if len(paths) < 2:
        raise MergeError("merge needs at least two model folders")
    from dftune.model import formats

    paths = [formats.resolve(p) for p in paths]  # GenD / timm checkpoints: their converted folder
    refuse_overwriting_an_input(paths, out)
    if threshold_on not in ("val", "check"):
        raise MergeError(f"--threshold-on {threshold_on}: choose val or check")
    if threshold_on == "check" and not checks:
        raise MergeError("--threshold-on check tunes the merged model's threshold on check sets: give --check PATH "
                         "(a prepared folder from outside the merged models' data); without them the threshold "
                         "stays 0.5 until `dftune evaluate --write-threshold` tunes it")
    curve = None
    if alpha == "auto":
        if len(paths) != 2:
            raise MergeError("--alpha auto interpolates two models: the starting one and the fine-tuned one")
        alpha, curve = choose_alpha(paths, checks, grid, metric, level, cache=Path(out).parent / "checks",
                                     say=say, progress=progress)
    if alpha is not None:
        if len(paths) != 2:
            raise MergeError("--alpha interpolates two models: (1 - alpha) * A + alpha * B")
        if not 0.0 <= alpha <= 1.0:
            raise MergeError(f"--alpha {alpha}: must be between 0 and 1")
        weights = [1.0 - alpha, alpha]
    weights = list(weights) if weights is not None else [1.0] * len(paths)
    if len(weights) != len(paths) or min(weights) < 0 or sum(weights) <= 0:
        raise MergeError("one non-negative weight per model, not all zero")
    model, ref = load_for_merge(paths[0])
    states = [ref.state]
    for p in paths[1:]:
        states.append(_aligned(ref, load_for_merge(p)[1]))
    kind = "wise-ft" if alpha is not None else "uniform soup" if len(set(weights)) == 1 else "weighted soup"
    recipe = {"kind": kind, "models": [str(p) for p in paths],
              "weights": weights, **({"alpha": alpha} if alpha is not None else {})}
    # alpha 0 or 1 returns that model exactly (no rounding through float64)
    if alpha in (0.0, 1.0):
        state = states[int(alpha)]
    else:
        state = average(states, weights)
    state, cast = cast_state(state, states[0], dtype)
    if dtype != "float32":
        model = model.to(state[next(k for k, v in state.items() if v.is_floating_point())].dtype)
        recipe["cast"] = cast
    if curve is not None:
        recipe["alpha_auto"] = curve
    save_merged(model, state, str(paths[0]), Path(out), recipe, force)
    if curve is not None:
        from dftune.plots import alpha_curve_figure

        alpha_curve_figure(curve, Path(out) / "alpha_curve.png")
    stored = {"value": 0.5, "source": dict(modelmeta.DEFAULT_SOURCE)}
    if threshold_on == "check":
        stored = _check_threshold(paths, out, checks, threshold_level or level, aggregate, progress)
    return {"out": str(out), **recipe, "threshold": stored}


def _check_threshold(paths: Sequence[str], out, checks: Sequence[str], level: str, aggregate: str,
                     progress: bool = True) -> dict:
    """Store in ``out``'s dftune.json the threshold that is macro-F1-optimal on the check sets' rows pooled
    (refused when a check set shares an identity with a merged model's training data); ``{"value", "source"}``."""
    from dftune import checks as C
    from dftune import scoring
    from dftune.prepared import read_manifest

    sets = [C.load(c, cache=Path(out).parent / "checks", crop=crop_of(paths), progress=progress) for c in checks]
    for p in paths:
        data = _trained_on(str(p))
        if data:
            C.refuse_leaks(sets, read_manifest(data, ("train", "val")), data)
    t = C.model_threshold(scoring.load_model(str(out), device="cpu"), sets, aggregate)[level]
    meta = modelmeta.load(out)
    meta.threshold = t["threshold"]
    meta.threshold_source = C.threshold_source([c.name for c in sets], level, aggregate, "merge",
                                               macro_f1=t["macro_f1"])
    modelmeta.save(out, meta)
    return {"value": meta.threshold, "source": meta.threshold_source}


def _trained_on(path: str) -> str | None:
    """The prepared data a fine-tuned model folder says it was trained on (``dftune.json``), if it exists."""
    meta = modelmeta.meta_path(path)
    if not meta.exists():
        return None
    import json

    data = (json.loads(meta.read_text()).get("extra") or {}).get("data")
    return data if data and (Path(data) / "manifest.csv").exists() else None


def choose_alpha(paths: Sequence[str], checks: Sequence[str], grid: Sequence[float], metric: str = "auc",
                 level: str = "frame", cache: str | os.PathLike | None = None, say=None,
                 progress: bool = True) -> tuple[float, dict]:
    """The WiSE-FT alpha that scores best on the check sets, and the curve it was chosen from. A labels CSV's
    files are framed once (into ``cache``) with the crop settings the merged model keeps (:func:`crop_of`); ``say``
    gets the line saying what such a check set holds (default: the log)."""
    from dftune import checks as C
    from dftune import scoring
    from dftune.prepared import read_manifest

    if not checks:
        raise MergeError("--alpha auto chooses alpha on check sets: give --check PATH (a prepared folder or a "
                         "labels CSV from outside the fine-tuned model's data); on that data's own val it picks 1.0, "
                         "the fine-tuned model itself, whatever the starting model knew")
    grid = sorted({float(a) for a in grid})
    if not grid or grid[0] < 0 or grid[-1] > 1:
        raise MergeError(f"--alpha-grid {grid}: alphas between 0 and 1")
    sets = [C.load(c, cache=cache, crop=crop_of(paths), say=say, progress=progress) for c in checks]
    data = _trained_on(str(paths[1]))
    val = None
    if data:
        C.refuse_leaks(sets, read_manifest(data, ("train", "val")), data)
        vrows = read_manifest(data, ("val",))
        if vrows and len({r.label for r in vrows}) == 2:
            val = C.CheckSet("val", Path(data), ("val",), vrows)
    _, ref = load_for_merge(paths[0])
    other = _aligned(ref, load_for_merge(paths[1])[1])
    lm = scoring.load_model(paths[0], device="cpu")
    target = lm.module
    points = []
    for a in grid:
        state = ref.state if a == 0.0 else other if a == 1.0 else average([ref.state, other], [1.0 - a, a])
        target.load_state_dict(state)
        res = C.score_all(lm, sets)
        pt = {"alpha": a, "check": C.value(res, metric, level), "check_sets": {
            n: m[level].get(C.METRIC_KEYS[metric]) for n, m in res["sets"].items()}}
        if val is not None:
            pt["val"] = C.value(C.score_all(lm, [val]), metric, level)
        points.append(pt)
        log.info("alpha %.2f: check %s %.4f", a, metric, pt["check"])
    defined = [p for p in points if p["check"] == p["check"]]
    if not defined:
        raise MergeError(f"the check sets' {level} {metric} is undefined at every alpha; cannot choose")
    best = max(defined, key=lambda p: p["check"])  # the first (smallest) alpha among equals
    sign = -1.0 if metric == "loss" else 1.0
    for p in points:
        for k in ("check", "val"):
            if k in p and p[k] == p[k]:
                p[k] = sign * p[k]
    curve = {"chosen": best["alpha"], "metric": f"{level} {metric}", "checks": [c.name for c in sets],
             "val_data": data, "points": points, "selected_on": "check"}
    return best["alpha"], curve
