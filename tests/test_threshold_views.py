"""A threshold and the views it was tuned on (issue 27 item 8): predict and the exported script apply the TTA the
threshold was tuned with unless told otherwise, and both warn, in the same words, when told otherwise. The script
without torch says where torch comes from (requirements.txt leaves it out)."""

from __future__ import annotations

import csv
import logging
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")

from dftune import portable  # noqa: E402
from dftune.cli import main  # noqa: E402
from dftune.model import meta as modelmeta  # noqa: E402
from dftune.model.load import build_tiny_vit  # noqa: E402
from dftune.stages import export, predict  # noqa: E402

TUNED = {"by": "train", "checks": ["check"], "level": "frame", "tta": []}  # --threshold-on check: no TTA


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("views")
    model = build_tiny_vit(root / "model", {0: "Realism", 1: "Deepfake"}, image_size=32, seed=5)
    meta = modelmeta.load(model, {0: "Realism", 1: "Deepfake"})
    meta.crop.detector, meta.crop.size = "none", 32
    meta.threshold, meta.threshold_source = 0.5, dict(TUNED)
    modelmeta.save(model, meta)
    submit = root / "submit"
    export.run(model, submit, export.ExportSettings(bench_seconds=0, n_samples=2))
    inputs = root / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # asymmetric images: a flip changes the score
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(inputs / f"{i}.png")
    return {"model": model, "submit": submit, "inputs": inputs}


def test_the_rule_lives_once():
    assert portable.decide_tta(None, TUNED) == ((), None)
    assert portable.decide_tta("auto", {"by": "evaluate", "tta": ["flip"]}) == (("flip",), None)
    assert portable.decide_tta(None, {"by": "default"}) == (portable.DEFAULT_TTA, None)  # not recorded: flip
    assert portable.decide_tta(None, "--threshold") == (("flip",), None)
    views, warning = portable.decide_tta("flip", TUNED, "predict")
    assert views == ("flip",) and "tuned with TTA none but predict runs with TTA flip" in warning
    assert portable.decide_tta("none", TUNED) == ((), None)


def _probs(path):
    return [float(r["prob_fake"]) for r in csv.DictReader(open(path))]


def test_predict_applies_the_thresholds_views_and_warns_when_told_otherwise(env, tmp_path, caplog):
    s = predict.PredictSettings(progress=False, workers=0)
    sm = predict.run([str(env["inputs"])], [str(env["model"])], s, tmp_path / "auto.csv", predict.CsvFormat())
    assert sm.tta == ()  # was ("flip",): the threshold tuned on one view applied to the flip average
    with caplog.at_level(logging.WARNING):
        sm = predict.run([str(env["inputs"])], [str(env["model"])], predict.PredictSettings(
            tta=("flip",), progress=False, workers=0), tmp_path / "flip.csv", predict.CsvFormat())
    assert sm.tta == ("flip",) and "tuned with TTA none but predict runs with TTA flip" in caplog.text
    assert _probs(tmp_path / "auto.csv") != _probs(tmp_path / "flip.csv")


def test_the_script_applies_the_same_views_and_says_the_same(env, tmp_path, capsys):
    import runpy

    mod = runpy.run_path(str(env["submit"] / "predict_submission.py"))
    pr = mod["Predictor"](env["submit"])
    assert pr.tta == () and pr.tta_warning is None
    capsys.readouterr()
    pr = mod["Predictor"](env["submit"], tta="flip")
    err = capsys.readouterr().err
    assert pr.tta == ("flip",) and "tuned with TTA none but predict_submission.py runs with TTA flip" in err
    # the default CSV is dftune predict's default CSV
    assert mod["main"]([str(env["inputs"]), "--out", str(tmp_path / "s.csv"), "--workers", "0"]) == 0
    assert main(["predict", str(env["inputs"]), "--model", str(env["submit"]), "--out", str(tmp_path / "p.csv"),
                 "--no-progress", "--workers", "0"]) == 0
    assert (tmp_path / "s.csv").read_text() == (tmp_path / "p.csv").read_text()


def test_the_script_without_torch_says_requirements_txt_leaves_it_out(env, tmp_path):
    hide = "import sys, runpy; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; " \
           "runpy.run_path(sys.argv[0], run_name='__main__')"
    r = subprocess.run([sys.executable, "-c", hide, str(env["submit"] / "predict_submission.py"), str(env["inputs"]),
                        "--out", str(tmp_path / "x.csv")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip()
    assert "torch" in line and "pip install -r" not in line  # requirements.txt would not install it
    assert "not in requirements.txt" in line and "pytorch.org" in line
