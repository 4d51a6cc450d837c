"""Which output of a classifier means "fake": found by name, never assumed.

The baseline (prithivMLmods/Deep-Fake-Detector-v2-Model) says 0 = "Realism",
1 = "Deepfake"; other public detectors say 0 = "Deepfake", 1 = "Real". dftune's own
files always use 0 = real, 1 = fake. The words and the rule live in
:mod:`dftune.portable` (the submission script resolves labels the same way); this
module names them for the package and gives a new head its labels.
"""

from __future__ import annotations

from dftune.portable import FAKE_WORDS, REAL_WORDS, LabelMap, LabelMappingError
from dftune.portable import resolve_labels as resolve

__all__ = ["FAKE_WORDS", "REAL_WORDS", "LabelMap", "LabelMappingError", "resolve", "dftune_id2label"]


def dftune_id2label() -> dict[int, str]:
    """The label names dftune gives a new two-class head."""
    return {0: "Realism", 1: "Deepfake"}
