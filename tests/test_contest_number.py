"""The number the contest scores: evaluate's first row is macro F1 at the model's stored threshold, applied as
predict applies it; it equals what `dftune predict` labels on the same crops, and the report's gallery shows
every video misclassified at that threshold with its worst crops."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from dftune import metrics, prepared  # noqa: E402
from dftune.cli import main  # noqa: E402
from dftune.model import meta as modelmeta  # noqa: E402
from dftune.model.load import build_tiny_vit  # noqa: E402
from dftune.stages import evaluate  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from dftune.synthetic import make_crops

    root = tmp_path_factory.mktemp("contest")
    data = make_crops(root / "data", n_videos=4, frames=3, size=32).parent
    model = build_tiny_vit(root / "m", {0: "Realism", 1: "Deepfake"}, image_size=32, seed=0)
    # a stored threshold inside the test split's scores, so that both classes have errors at it, and neither
    # the val optimum nor 0.5
    p = np.array([float(r[-1]) for r in _scores(model, data)])
    meta = modelmeta.load(model, {0: "Realism", 1: "Deepfake"})
    meta.threshold = float(np.quantile(p, 0.6))
    meta.threshold_source = {"by": "test"}
    modelmeta.save(model, meta)
    return root, data, model, meta.threshold


def _scores(model, data):
    """(path, label, prob) of the test crops as evaluate scores them."""
    rows = [r for r in prepared.read_manifest(data) if r.split == "test"]
    from dftune import scoring
    from dftune.portable import load_image

    m = scoring.load_ensemble([str(model)], device="cpu")
    paths = prepared.image_paths(data, rows)
    probs = {}
    for i, _good, e, _ in scoring.score_items(m.models, range(len(rows)), lambda i: ([load_image(paths[i])], True),
                                             ("flip",), 8, False, "t", "crop"):
        probs[i] = e[0]
    return [(paths[i], rows[i].label, probs[i]) for i in range(len(rows))]


def test_first_row_is_macro_f1_at_the_stored_threshold_as_predict_labels_the_crops(setup, tmp_path, capsys):
    root, data, model, thr = setup
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "ev"),
                 "--no-progress", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    res = evaluate.run([str(model)], data, None, evaluate.EvalSettings(progress=False, plots=False))
    e = res.models["m"]
    st = e["at_stored_threshold"]
    assert st["threshold"] == pytest.approx(thr)
    # the first row the command prints and report.md shows is this one
    from dftune import report

    first = report.threshold_rows(res)[0]
    assert first[1].startswith("stored") and first[3] == report.fmt(st["frame"]["macro_f1"])
    assert first[4] == report.fmt(st["video"]["macro_f1"])
    assert printed.index("stored, as predict") < printed.index("tuned on val") < printed.index("dftune evaluate:")
    md = (tmp_path / "ev" / "report.md").read_text()
    assert md.index("stored, as predict") < md.index("## Summary")

    # predict the same crops with the model: each crop is an image, labelled at the stored threshold
    rows = [r for r in prepared.read_manifest(data) if r.split == "test"]
    files = [str(p) for p in prepared.image_paths(data, rows)]
    out = tmp_path / "pred.csv"
    assert main(["predict", *files, "--model", str(model), "--out", str(out), "--detector", "none",
                 "--workers", "0", "--no-progress"]) == 0
    label_of = {Path(f).name: r.label for f, r in zip(files, rows, strict=True)}
    got = list(csv.DictReader(out.open()))
    assert len(got) == len(rows)
    y = np.array([label_of[Path(g["filename"]).name] for g in got])
    pred = np.array([int(g["label"]) for g in got])
    f1_predict = metrics.binary_metrics(y, pred.astype(float), 0.5)["macro_f1"]
    assert st["frame"]["macro_f1"] == pytest.approx(f1_predict, abs=1e-12)
    # not one of the other thresholds' numbers by chance: the stored threshold is neither 0.5 nor val's
    assert thr != pytest.approx(0.5) and thr != pytest.approx(e["val_threshold"]["frame"])


def test_the_gallery_shows_every_video_wrong_at_the_stored_threshold_with_its_worst_crops(setup, tmp_path):
    root, data, model, thr = setup
    res = evaluate.run([str(model)], data, tmp_path / "ev", evaluate.EvalSettings(progress=False))
    st = res.models["m"]["at_stored_threshold"]
    text = (tmp_path / "ev" / "report.html").read_text()
    # the misclassified videos, recomputed here from the crops' scores pooled by the model's mean
    scores = _scores(model, data)
    rows = [r for r in prepared.read_manifest(data) if r.split == "test"]
    by_video: dict = {}
    for r, (_, label, p) in zip(rows, scores, strict=True):
        by_video.setdefault(r.video, (label, []))[1].append(p)
    wrong = sorted(v for v, (label, ps) in by_video.items() if int(np.mean(ps) >= thr) != label)
    assert wrong and sorted(e["video"] for e in st["errors"]) == wrong
    assert f"{len(wrong)} misclassified video(s) at threshold {thr:.4f}" in text
    gallery = text.split("The errors at the stored threshold")[1]
    for v in wrong:  # every one, each with its crops (3 frames a video here: all of them)
        assert f"<p>{v}:" in gallery
        assert len(re.findall(rf"<div>{re.escape(v)} frame \d+<br>", gallery)) == min(3, len(by_video[v][1]))
    # a video labelled right shows no crop
    for v in set(by_video) - set(wrong):
        assert f"<div>{v} frame" not in gallery
