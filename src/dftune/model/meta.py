"""dftune's small JSON beside a model's ``config.json``: ``dftune.json``.

It holds what dftune needs to use the model again exactly as it was trained and
evaluated: the label map, the decision threshold, the crop settings of its data.
A model folder without it (a hub model such as the baseline) gets defaults: labels
resolved by name from ``config.id2label``, threshold 0.5, the guide's crop.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dftune.model import labels as _labels
from dftune.atomic import read_json, write_json

META_NAME = "dftune.json"
FORMAT = 1


@dataclass
class CropSettings:
    """How faces were found and cropped (``prepare``'s settings); ``predict`` reuses them."""

    detector: str = "dlib"
    margin: float = 1.3
    size: int = 224
    frames: int = 10
    every: int = 0  # >0: every k-th frame instead of ``frames`` evenly spaced
    aggregate: str = "mean"

    @classmethod
    def from_dict(cls, d: dict | None) -> "CropSettings":
        """From prepare's ``settings.json`` or a ``dftune.json``; keys it does not know are ignored."""
        return cls(**{k: v for k, v in (d or {}).items() if k in cls.__dataclass_fields__})


@dataclass
class ModelMeta:
    fake_index: int
    real_index: int
    threshold: float = 0.5
    threshold_source: str = "default"  # "default", "val" (evaluate --write-threshold), "train-val"
    crop: CropSettings = field(default_factory=CropSettings)
    extra: dict = field(default_factory=dict)  # training summary, provenance

    def to_dict(self) -> dict:
        d = asdict(self)
        d["format"] = FORMAT
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelMeta":
        crop = CropSettings.from_dict(d.get("crop"))
        return cls(
            fake_index=int(d["fake_index"]),
            real_index=int(d["real_index"]),
            threshold=float(d.get("threshold", 0.5)),
            threshold_source=str(d.get("threshold_source", "default")),
            crop=crop,
            extra=dict(d.get("extra") or {}),
        )


def meta_path(model_dir: str | os.PathLike) -> Path:
    return Path(model_dir) / META_NAME


def load(model_dir: str | os.PathLike, id2label: dict | None = None, fake_label: str | None = None) -> ModelMeta:
    """Read ``dftune.json``; without one, build defaults from ``id2label``.

    ``fake_label`` overrides the saved/derived label map (``--fake-label``).
    """
    p = meta_path(model_dir)
    if p.exists():
        meta = ModelMeta.from_dict(read_json(p))
        if fake_label is not None and id2label is not None:
            lm = _labels.resolve(id2label, fake_label, where=str(model_dir))
            meta.fake_index, meta.real_index = lm.fake_index, lm.real_index
        return meta
    if id2label is None:
        raise _labels.LabelMappingError(f"{model_dir}: no {META_NAME} and no id2label to derive labels from")
    lm = _labels.resolve(id2label, fake_label, where=str(model_dir))
    return ModelMeta(fake_index=lm.fake_index, real_index=lm.real_index)


def save(model_dir: str | os.PathLike, meta: ModelMeta) -> Path:
    p = meta_path(model_dir)
    write_json(p, meta.to_dict())
    return p
