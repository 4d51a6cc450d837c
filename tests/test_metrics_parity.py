"""Numbers others can compare: with ``--tta none`` evaluate's frame AUC is scikit-learn's ``roc_auc_score`` on one
view of each crop, scored by transformers' own processor and model (what the field's tables score); the default
flip TTA averages two views, so its scores are others."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

sk = pytest.importorskip("sklearn.metrics")


def test_evaluate_tta_none_frame_auc_is_sklearns_on_one_view_scored_by_transformers(make_crops, tiny_vit, tmp_path):
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from dftune.cli import main

    data = make_crops("parity", n_videos=4, frames=3, size=32)
    vit = tiny_vit(image_size=32, hidden_size=32)
    got = {}
    for tta in ("none", "flip"):
        out = tmp_path / tta
        assert main(["evaluate", "--model", vit, "--data", str(data), "--tta", tta, "--out", str(out),
                     "--no-plots", "--no-progress"]) == 0
        with open(out / "predictions.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        col = next(c for c in rows[0] if c.startswith("prob_fake_"))
        auc = next(iter(json.loads((out / "metrics.json").read_text())["models"].values()))["frame"]["at_0.5"]["auc"]
        got[tta] = (rows, np.array([float(r[col]) for r in rows]), auc)
    rows, p, auc = got["none"]
    y = np.array([int(r["label"]) for r in rows])
    # one view per crop, through transformers alone
    proc = AutoImageProcessor.from_pretrained(vit)
    model = AutoModelForImageClassification.from_pretrained(vit).eval()
    fake = next(i for i, n in model.config.id2label.items() if n.lower() in ("deepfake", "fake"))
    images = [Image.open(data / r["path"]).convert("RGB") for r in rows]
    with torch.no_grad():
        ref = model(**proc(images=images, return_tensors="pt")).logits.softmax(-1)[:, int(fake)].numpy()
    assert np.abs(p - ref).max() < 1e-5  # predictions.csv keeps 6 decimals
    # equal, but for fake/real pairs whose two scores are within float32 noise of each other (ranked either way)
    near = (np.abs(ref[y == 1][:, None] - ref[y == 0][None, :]) < 2e-6).sum() / ((y == 1).sum() * (y == 0).sum())
    assert abs(auc - sk.roc_auc_score(y, ref)) <= near + 1e-12
    # the default (flip TTA) scores each crop as the mean of two views: other scores, so compare with --tta none
    assert np.abs(got["flip"][1] - p).max() > 1e-4
