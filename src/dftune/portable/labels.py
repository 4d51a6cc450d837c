"""Which output is fake: label words and a model's labels resolved by name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

FAKE_WORDS = frozenset({
    "fake", "deepfake", "deep_fake", "deepfakes", "manipulated", "forged", "forgery", "synthetic",
    "spoof", "spoofed", "generated", "ai", "aigenerated", "ai_generated", "altered", "swapped", "df",
})


REAL_WORDS = frozenset({
    "real", "realism", "original", "authentic", "genuine", "pristine", "bonafide", "bona_fide", "live",
    "human", "natural", "true",
})


def label_from_word(value) -> int | None:
    """A label as people write it — 0/1 or a real/fake word (REAL, fake, deepfake, original…) — as
    dftune's 0 real / 1 fake; None when it is neither."""
    try:
        number = float(str(value).strip())
        return int(number) if number in (0.0, 1.0) else None
    except ValueError:
        pass
    s = _norm_label(value)
    return 0 if s in REAL_WORDS else 1 if s in FAKE_WORDS else None


class LabelMappingError(ValueError):
    """The model's labels do not say which class is fake."""


def _norm_label(name) -> str:
    s = str(name).strip().lower().replace(" ", "_").replace("-", "_")
    return "".join(c for c in s if c.isalnum() or c == "_")


@dataclass(frozen=True)
class LabelMap:
    """Indices of the model's outputs for the fake and the real class."""

    fake_index: int
    real_index: int
    num_labels: int = 2

    def to_dict(self) -> dict:
        return {"fake_index": self.fake_index, "real_index": self.real_index, "num_labels": self.num_labels}


def resolve_labels(id2label: Mapping, fake_label=None, where: str = "model") -> LabelMap:
    """The fake and real output indices from ``id2label`` names (or ``fake_label``, a name or index).

    Raises :class:`LabelMappingError` saying what to do when the names are not enough.
    """
    ids = {int(k): str(v) for k, v in id2label.items()}
    if len(ids) != 2:
        raise LabelMappingError(
            f"{where}: dftune needs a two-class (real/fake) classifier, this one has {len(ids)} labels "
            f"{sorted(ids.values())}; load it with a new 2-class head (--reinit-head) instead")
    if fake_label is not None:
        if isinstance(fake_label, int) or str(fake_label).isdigit():
            fake = int(fake_label)
            if fake not in ids:
                raise LabelMappingError(f"{where}: --fake-label {fake_label} is not an output index {sorted(ids)}")
        else:
            matches = [i for i, n in ids.items() if _norm_label(n) == _norm_label(fake_label)]
            if not matches:
                raise LabelMappingError(f"{where}: --fake-label {fake_label!r} is not one of its labels "
                                        f"{sorted(ids.values())}")
            fake = matches[0]
        return LabelMap(fake, next(i for i in ids if i != fake))
    fakes = [i for i, n in ids.items() if _norm_label(n) in FAKE_WORDS]
    reals = [i for i, n in ids.items() if _norm_label(n) in REAL_WORDS]
    if len(fakes) == 1 and len(reals) == 1 and fakes[0] != reals[0]:
        return LabelMap(fakes[0], reals[0])
    if len(fakes) == 1 and not reals:  # one side named, the other anything else
        return LabelMap(fakes[0], next(i for i in ids if i != fakes[0]))
    if len(reals) == 1 and not fakes:
        return LabelMap(next(i for i in ids if i != reals[0]), reals[0])
    raise LabelMappingError(
        f"{where}: cannot tell which class is fake from its labels {ids}; "
        f"pass --fake-label NAME (one of {sorted(ids.values())}) to say which one means fake")
