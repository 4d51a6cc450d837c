"""Models and ensembles ready to score, and the one batching loop evaluate and predict share.

- :func:`load_model`: a model folder (HF format) with its ``dftune.json`` for a backend
  (``torch``, ``int8``, ``onnx``); its preprocessing is :class:`dftune.portable.Preprocess`
  read from its image processor, the same spec training used.
- :class:`Ensemble`: members with weights and the ensemble's *own* decision threshold,
  stored in an ``ensemble.json`` (written by ``evaluate --ensemble --write-threshold``
  and by ``export``); ``--model`` accepts such a file or a folder holding one.
- :func:`score_items`: crops of any number of items (rows, files) batched across items,
  scored by every model (TTA views averaged), computed ahead of the model (a background thread,
  or worker processes: ``loaded``), with a progress bar; yields each item's scores in order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dftune import portable
from dftune.atomic import read_json, write_json
from dftune.model import formats
from dftune.model import meta as modelmeta
from dftune.model.load import register_families
from dftune.portable import BACKENDS, INT8_NAME, ONNX_NAME, Preprocess, parse_tta, quantize_int8  # noqa: F401
from dftune.portable.workers import PREFETCH_DEPTH

log = logging.getLogger(__name__)

ENSEMBLE_NAME = "ensemble.json"


@dataclass
class LoadedModel:
    """A classifier ready for ``prob_fake``: its runner, preprocessing and dftune metadata."""

    path: str
    meta: modelmeta.ModelMeta
    pre: Preprocess
    id2label: dict
    backend: str = "torch"
    run: Callable = field(repr=False, default=None)  # normalised (N,3,H,W) tensor -> logits tensor
    device: str = "cpu"
    weight: float = 1.0
    module: object = field(repr=False, default=None)

    @property
    def name(self) -> str:
        return Path(self.path).name or str(self.path)

    @property
    def fake_index(self) -> int:
        return self.meta.fake_index


def pick_device(device: str | None = "auto") -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    return device


def _quiet_transformers():
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - old transformers
        pass


def load_int8(model_dir: str | os.PathLike):
    """The dynamic-int8 model ``dftune export --int8`` saved, rebuilt from its config."""
    return portable.load_runner(model_dir, "int8", "cpu")[1]


def load_model(path: str | os.PathLike, fake_label: str | None = None, device: str = "auto",
               backend: str = "torch", weight: float = 1.0, threads: int = 0) -> LoadedModel:
    """Load a model folder (HF format) with its ``dftune.json`` for the chosen backend."""
    from transformers import AutoConfig, AutoImageProcessor

    _quiet_transformers()
    path = formats.resolve(path)  # GenD / timm checkpoints: their converted folder
    if not (Path(path) / "config.json").exists():
        raise FileNotFoundError(f"{path}: not a model folder (no config.json)")
    device = pick_device(device)
    register_families()
    cfg = AutoConfig.from_pretrained(path)
    id2label = {int(k): v for k, v in cfg.id2label.items()}
    if len(id2label) != 2:
        raise ValueError(f"{path}: dftune needs a two-class (real/fake) model, this one has {len(id2label)} labels")
    meta = modelmeta.load(path, id2label, fake_label)
    pre = Preprocess.from_processor(AutoImageProcessor.from_pretrained(path))
    run, module, device = portable.load_runner(path, backend, device, threads)
    return LoadedModel(path=path, meta=meta, pre=pre, id2label=id2label, backend=backend, run=run,
                       device=device, weight=float(weight), module=module)


# ---------------------------------------------------------------- ensembles


@dataclass
class Ensemble:
    """Models scored together: ``prob_fake`` is the weighted mean of theirs (label orders never
    clash), judged against the ensemble's own threshold."""

    models: list
    threshold: float = 0.5
    threshold_source: dict = field(default_factory=lambda: dict(modelmeta.DEFAULT_SOURCE))
    path: str | None = None  # the ensemble.json it came from, if any

    @property
    def single(self) -> bool:
        return len(self.models) == 1

    def threshold_text(self) -> str:
        return portable.describe_threshold(self.threshold, self.threshold_source)


def ensemble_file(p: str | os.PathLike) -> Path | None:
    """``p`` itself if it is an ensemble JSON, ``p/ensemble.json`` for an ensemble folder, else None."""
    p = Path(p)
    if p.is_file() and p.suffix == ".json":
        return p
    if p.is_dir() and (p / ENSEMBLE_NAME).exists() and not (p / "config.json").exists():
        return p / ENSEMBLE_NAME
    return None


def read_ensemble(path: str | os.PathLike) -> dict:
    """An ``ensemble.json``: members (paths relative to the file) with weights, threshold, its source."""
    path = Path(path)
    try:
        d = read_json(path)
        members = [(str(Path(p).resolve()), w) for p, w in portable.ensemble_members(d, path.parent)]
    except ValueError as e:
        if "members[" in str(e) or "threshold is" in str(e) or "every member's weight" in str(e):
            raise ValueError(f"{path}: {e}") from None  # a number that would make every score inf or empty
        raise ValueError(f"{path}: not a dftune ensemble file (ValueError: {e}); it needs "
                         '{"members": [{"path": ..., "weight": ...}], "threshold": ...}') from None
    except (OSError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a dftune ensemble file ({type(e).__name__}: {e}); it needs "
                         '{"members": [{"path": ..., "weight": ...}], "threshold": ...}') from None
    if not members:
        raise ValueError(f"{path}: the ensemble has no members")
    return {"members": members, "threshold": float(d.get("threshold", 0.5)),
            "threshold_source": modelmeta._source(d.get("threshold_source")),
            "stored": [str(m["path"]) for m in d["members"]]}  # the member paths as the file writes them


def write_ensemble(path: str | os.PathLike, members: Sequence[tuple[str, float]], threshold: float,
                   threshold_source: dict) -> Path:
    """Write an ``ensemble.json``; member paths are stored relative to it so the folder can move."""
    path = Path(path)
    rel = [{"path": os.path.relpath(os.path.abspath(p), os.path.abspath(path.parent)), "weight": float(w)}
           for p, w in members]
    write_json(path, {"format": 1, "members": rel, "threshold": float(threshold),
                      "threshold_source": threshold_source})
    return path


def load_models(paths: Sequence[str], fake_label: str | None = None, device: str = "auto",
                backend: str = "torch", weights: Sequence[float] | None = None) -> list[LoadedModel]:
    """Model folders (an ensemble file or folder expands into its members, with their weights)."""
    return load_ensemble(paths, fake_label, device, backend, weights).models


def load_ensemble(paths: Sequence[str], fake_label: str | None = None, device: str = "auto",
                  backend: str = "torch", weights: Sequence[float] | None = None) -> Ensemble:
    """What ``--model`` names, ready to score: one model (its own threshold), several (the
    weighted mean of their thresholds, with a warning: untuned), or an ensemble file (its own)."""
    if not paths:
        raise ValueError("no model given (--model DIR)")
    if weights is not None and len(weights) != len(paths):
        raise ValueError(f"{len(weights)} weight(s) for {len(paths)} model(s); give one weight per --model")
    ws = list(weights) if weights is not None else [1.0] * len(paths)
    if any(w < 0 for w in ws) or sum(ws) <= 0:
        raise ValueError("model weights must be non-negative and not all zero")
    ens_files = [ensemble_file(p) for p in paths]
    if any(ens_files):
        if len(paths) > 1:
            raise ValueError("an ensemble file is a whole model set: give it alone to --model")
        e = read_ensemble(ens_files[0])
        for (p, _), stored in zip(e["members"], e["stored"], strict=True):
            if not (Path(p) / "config.json").exists():
                raise FileNotFoundError(
                    f"{ens_files[0]}: member {stored!r} (a path relative to {ENSEMBLE_NAME}) is not a model folder "
                    f"there ({p}); an ensemble moves with its members: move them together, or write the ensemble "
                    "again (evaluate --ensemble --write-threshold)")
        models = [load_model(p, fake_label, device, backend, w) for p, w in e["members"]]
        t, source = portable.decide_threshold(ensemble=(e["threshold"], e["threshold_source"]))
        return Ensemble(models, t, source, str(ens_files[0]))
    return ensemble_of([load_model(p, fake_label, device, backend, w) for p, w in zip(paths, ws, strict=True)])


def ensemble_of(models: Sequence[LoadedModel]) -> Ensemble:
    """Loaded models as an ensemble: one model keeps its own threshold; several get the weighted
    mean of theirs, marked untuned."""
    models = list(models)
    t, source = portable.decide_threshold(models=[(m.meta.threshold, m.meta.threshold_source) for m in models],
                                          weights=[m.weight for m in models])
    return Ensemble(models, t, source)


# ---------------------------------------------------------------- scoring


def model_prob_fake(model: LoadedModel, images: Sequence[np.ndarray], tta: Sequence[str] = ()) -> np.ndarray:
    """``prob_fake`` of one model for a batch of RGB uint8 images (any sizes)."""
    return portable.prob_fake(model.run, model.pre, model.fake_index, images, tta, model.device)


def ensemble_prob_fake(models: Sequence[LoadedModel], images: Sequence[np.ndarray],
                       tta: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean of the models' ``prob_fake``; returns ``(ensemble, per_model)`` (M, N)."""
    per = np.stack([model_prob_fake(m, images, tta) for m in models]) if models else np.zeros((0, len(images)))
    return portable.weighted_mean([m.weight for m in models], per), per


def batched(items: Sequence, size: int):
    for i in range(0, len(items), max(1, size)):
        yield items[i:i + size]


def prefetch(fn, items: Sequence, depth: int = PREFETCH_DEPTH) -> Iterator:
    """``map(fn, items)`` computed ahead in a background thread (decode/detect overlaps the
    model's forward pass); an exception in ``fn`` is raised in the consumer (``portable.workers.ahead``)."""
    from dftune.portable.workers import ahead

    return ahead(fn, items, depth, "dftune-prefetch")


def score_items(models: Sequence[LoadedModel], items: Sequence, load: Callable | None, tta: Sequence[str] = (),
                batch_size: int = 32, progress: bool = True, desc: str = "score", unit: str = "item",
                loaded: Iterable | None = None) -> Iterator:
    """Score every item's crops; yield ``(item, info, ens (n,), per_model (M, n))`` in item order.

    ``load(item) -> (crops, info)``: the RGB uint8 crops of one item (possibly none) and
    whatever the caller wants back with them, computed one item ahead in a background thread.
    ``loaded``: those ``(crops, info)`` already coming, one per item in item order (e.g.
    :func:`dftune.portable.workers.frame_files`, worker processes framing files ahead), used
    instead of ``load``. Crops are batched across items, so one file's ten frames and the next
    file's one image share a batch; the batches do not depend on where the crops came from.
    """
    from dftune.progress import bar as make_bar

    def score(chunk):
        ens, per = ensemble_prob_fake(models, chunk, tta)
        return np.vstack([ens[None], per])

    bar = make_bar(len(items), desc, unit, progress)

    def fed():  # (item, crops, info), the bar counting the items framed
        for item, (crops, info) in zip(items, prefetch(load, items) if loaded is None else loaded, strict=True):
            yield item, crops, info
            bar.update(1)

    try:
        for item, info, sc in portable.score_across(fed(), score, batch_size, rows=len(models) + 1):
            yield item, info, sc[0], sc[1:]
    finally:
        bar.close()
