"""dftune's small JSON beside a model's ``config.json``: ``dftune.json``.

It holds what dftune needs to use the model again exactly as it was trained and
evaluated: the label map, the decision threshold and where it came from, the crop
settings of its data. ``config.json``'s label names stay the truth for which output
is fake (:func:`dftune.portable.fake_index_of`). A model folder without ``dftune.json``
(a hub model such as the baseline) gets defaults: labels by name, threshold 0.5, the
guide's crop — and a warning saying so, since those may not be what it was trained on.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dftune.atomic import read_json, write_json
from dftune.portable import DEFAULT_CROP, DETECT_DEFAULTS, META_NAME, describe_threshold, fake_index_of, resolve_detect

log = logging.getLogger(__name__)

FORMAT = 1
DEFAULT_SOURCE = {"by": "default"}


@dataclass
class CropSettings:
    """How faces were found and cropped (``prepare``'s settings); ``predict`` reuses them."""

    detector: str = DEFAULT_CROP["detector"]
    margin: float = DEFAULT_CROP["margin"]
    size: int = DEFAULT_CROP["size"]
    frames: int = DEFAULT_CROP["frames"]
    every: int = DEFAULT_CROP["every"]  # >0: every k-th frame instead of ``frames`` evenly spaced
    aggregate: str = DEFAULT_CROP["aggregate"]
    detect_every: int = DEFAULT_CROP["detect_every"]  # the detector on every K-th sampled frame (boxes interpolated)
    # how the detector looked at a frame (prepare's --detect-width, resolved): every box depends on it
    detect_width: int = DETECT_DEFAULTS["detect_width"]
    first_width: int = DETECT_DEFAULTS["first_width"]  # RetinaFace's first pass (0: none)
    first_min_face: int = DETECT_DEFAULTS["first_min_face"]

    @classmethod
    def from_dict(cls, d: dict | None) -> CropSettings:
        """From prepare's ``settings.json`` or a ``dftune.json``; keys it does not know are ignored.
        ``detect_width: auto`` (settings.json) becomes the widths it means for the detector; none at
        all: one pass at 640, what every earlier version ran."""
        d = dict(d or {})
        if not d.get("no_detect"):
            d.update(resolve_detect(d.get("detector", DEFAULT_CROP["detector"]), d.get("detect_width", 640),
                                    d.get("first_width"), d.get("first_min_face")))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _source(v) -> dict:
    """Threshold provenance as a dict (older files stored a word)."""
    if isinstance(v, dict):
        return dict(v)
    if v in (None, "", "default"):
        return dict(DEFAULT_SOURCE)
    return {"by": str(v)}


@dataclass
class ModelMeta:
    fake_index: int
    real_index: int
    threshold: float = 0.5
    # where the threshold came from: {"by": "default"} or {"by": "evaluate", "data", "split", "level", "tta",
    # "aggregate"}: predict applies it as it was tuned
    threshold_source: dict = field(default_factory=lambda: dict(DEFAULT_SOURCE))
    crop: CropSettings = field(default_factory=CropSettings)
    extra: dict = field(default_factory=dict)  # training summary, provenance
    found: bool = True  # False: no dftune.json, everything above is assumed

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("found")
        d["format"] = FORMAT
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelMeta:
        return cls(
            fake_index=int(d["fake_index"]),
            real_index=int(d["real_index"]),
            threshold=float(d.get("threshold", 0.5)),
            threshold_source=_source(d.get("threshold_source")),
            crop=CropSettings.from_dict(d.get("crop")),
            extra=dict(d.get("extra") or {}),
        )

    def threshold_text(self) -> str:
        return describe_threshold(self.threshold, self.threshold_source)


def meta_path(model_dir: str | os.PathLike) -> Path:
    return Path(model_dir) / META_NAME


_warned: set = set()


def load(model_dir: str | os.PathLike, id2label: dict | None = None, fake_label: str | None = None) -> ModelMeta:
    """Read ``dftune.json`` and check it against ``config.json``'s labels; without one, defaults
    (and one warning per folder naming the settings assumed).

    ``fake_label`` overrides the label map (``--fake-label``).
    """
    p = meta_path(model_dir)
    where = str(model_dir)
    if p.exists():
        raw = read_json(p)
        if id2label is None:
            return ModelMeta.from_dict(raw)
        fake = fake_index_of(id2label, raw, fake_label, where)
        meta = ModelMeta.from_dict({**raw, "fake_index": fake,
                                    "real_index": next(int(k) for k in id2label if int(k) != fake)})
        return meta
    if id2label is None:
        from dftune.portable import LabelMappingError

        raise LabelMappingError(f"{model_dir}: no {META_NAME} and no id2label to derive labels from")
    fake = fake_index_of(id2label, None, fake_label, where)
    meta = ModelMeta(fake_index=fake, real_index=next(int(k) for k in id2label if int(k) != fake), found=False)
    key = os.path.abspath(where)
    if key not in _warned:
        _warned.add(key)
        c = meta.crop
        log.warning("%s: no %s, so assuming the guide's settings: detector %s, margin %s, size %s, %s frames "
                    "per video, %s pooling, threshold 0.5 — if the model was trained otherwise, pass --detector/"
                    "--margin/--size/--frames/--threshold", where, META_NAME, c.detector, c.margin, c.size,
                    c.frames, c.aggregate)
    return meta


def save(model_dir: str | os.PathLike, meta: ModelMeta) -> Path:
    p = meta_path(model_dir)
    write_json(p, meta.to_dict())
    return p
