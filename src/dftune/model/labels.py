"""Which output of a classifier means "fake": found by name, never assumed.

The baseline (prithivMLmods/Deep-Fake-Detector-v2-Model) says 0 = "Realism",
1 = "Deepfake"; other public detectors say 0 = "Deepfake", 1 = "Real". dftune's own
files always use 0 = real, 1 = fake, and map to a model's indices through here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

FAKE_WORDS = {
    "fake", "deepfake", "deep_fake", "deepfakes", "manipulated", "forged", "forgery", "synthetic",
    "spoof", "spoofed", "generated", "ai", "aigenerated", "ai_generated", "altered", "swapped", "df",
}
REAL_WORDS = {
    "real", "realism", "original", "authentic", "genuine", "pristine", "bonafide", "bona_fide", "live",
    "human", "natural", "true", "pristine",
}


class LabelMappingError(ValueError):
    """The model's labels do not say which class is fake."""


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9_]", "", str(name).strip().lower().replace(" ", "_").replace("-", "_"))


@dataclass(frozen=True)
class LabelMap:
    """Indices of the model's outputs for the fake and the real class."""

    fake_index: int
    real_index: int
    num_labels: int

    def to_dict(self) -> dict:
        return {"fake_index": self.fake_index, "real_index": self.real_index, "num_labels": self.num_labels}


def _ids(id2label: Mapping) -> dict[int, str]:
    return {int(k): str(v) for k, v in id2label.items()}


def resolve(id2label: Mapping, fake_label: str | int | None = None, where: str = "model") -> LabelMap:
    """Find the fake and real output indices from ``id2label``.

    ``fake_label`` (a label name or an index) overrides the name search; it is what
    the user passes as ``--fake-label`` for a model whose labels say neither.
    Raises :class:`LabelMappingError` with a message telling the user what to do.
    """
    ids = _ids(id2label)
    if len(ids) != 2:
        raise LabelMappingError(
            f"{where}: dftune needs a two-class (real/fake) classifier, this one has {len(ids)} labels "
            f"{sorted(ids.values())}; load it with a new 2-class head (--reinit-head) instead"
        )
    if fake_label is not None:
        fake = None
        if isinstance(fake_label, int) or str(fake_label).isdigit():
            fake = int(fake_label)
            if fake not in ids:
                raise LabelMappingError(f"{where}: --fake-label {fake_label} is not an output index {sorted(ids)}")
        else:
            matches = [i for i, n in ids.items() if _norm(n) == _norm(str(fake_label))]
            if not matches:
                raise LabelMappingError(
                    f"{where}: --fake-label {fake_label!r} is not one of its labels {sorted(ids.values())}"
                )
            fake = matches[0]
        real = next(i for i in ids if i != fake)
        return LabelMap(fake, real, 2)

    fakes = [i for i, n in ids.items() if _norm(n) in FAKE_WORDS]
    reals = [i for i, n in ids.items() if _norm(n) in REAL_WORDS]
    if len(fakes) == 1 and len(reals) == 1 and fakes[0] != reals[0]:
        return LabelMap(fakes[0], reals[0], 2)
    # one side named, the other anything else: still unambiguous for two classes
    if len(fakes) == 1 and not reals:
        return LabelMap(fakes[0], next(i for i in ids if i != fakes[0]), 2)
    if len(reals) == 1 and not fakes:
        return LabelMap(next(i for i in ids if i != reals[0]), reals[0], 2)
    raise LabelMappingError(
        f"{where}: cannot tell which class is fake from its labels {ids}; "
        f"pass --fake-label NAME (one of {sorted(ids.values())}) to say which one means fake"
    )


def dftune_id2label() -> dict[int, str]:
    """The label names dftune gives a new two-class head."""
    return {0: "Realism", 1: "Deepfake"}
