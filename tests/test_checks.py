"""Check sets: choices made on data from outside the training data. A check set sharing identities with the
training data is refused; `merge --alpha auto --check` scores every alpha of the grid on the check sets,
keeps the best, and keeps the curve (dftune.json, alpha_curve.png); without a check set `auto` is refused."""

from __future__ import annotations

import json
import re

import pytest
import torch

from dftune import checks
from dftune.cli import main
from dftune.model.load import build_tiny_vit


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from transformers import AutoModelForImageClassification

    from dftune.model import meta as modelmeta
    from dftune.synthetic import make_crops

    root = tmp_path_factory.mktemp("checks")
    data = make_crops(root / "data", n_videos=4, frames=2, size=32).parent
    check = make_crops(root / "check", n_videos=4, frames=2, size=32, seed=3, look="warm-jpeg", first_id=40,
                       methods=("FaceSwap", "NeuralTextures")).parent
    base = build_tiny_vit(root / "base", image_size=32, seed=0)
    tuned = AutoModelForImageClassification.from_pretrained(base)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tuned.save_pretrained(root / "tuned")
    (root / "tuned" / "preprocessor_config.json").write_bytes((base / "preprocessor_config.json").read_bytes())
    meta = modelmeta.load(base, {0: "Realism", 1: "Deepfake"})
    meta.extra = {"data": str(data)}  # as train writes: the data the model was fine-tuned on
    modelmeta.save(root / "tuned", meta)
    return {"root": root, "data": data, "check": check, "base": base, "tuned": root / "tuned"}


def test_a_check_set_sharing_identities_with_the_training_data_is_refused(env):
    from dftune.prepared import read_manifest

    cs = checks.load(env["data"])  # its val+test identities are not its train identities...
    train = read_manifest(env["data"], ("train", "val"))
    with pytest.raises(checks.CheckError, match=r"shares .*identities.* with the training data"):
        checks.refuse_leaks([cs], train, env["data"])  # ...but val is training data here
    checks.refuse_leaks([checks.load(env["check"])], train, env["data"])  # another dataset: accepted


def test_a_one_class_check_set_is_refused(env, tmp_path):
    from dftune.synthetic import make_crops

    d = make_crops(tmp_path / "one", n_videos=4, frames=2, size=32, first_id=60).parent
    lines = (d / "manifest.csv").read_text().splitlines()
    label = lines[0].split(",").index("label")
    (d / "manifest.csv").write_text("\n".join([lines[0]] + [ln for ln in lines[1:] if ln.split(",")[label] == "1"])
                                    + "\n")
    with pytest.raises(checks.CheckError, match="one class only"):
        checks.load(d)


def test_merge_alpha_auto_picks_the_best_alpha_on_the_check_sets_and_keeps_the_curve(env, capsys):
    out = env["root"] / "wise_auto"
    assert main(["merge", "--model", str(env["base"]), "--model", str(env["tuned"]),
                 "--alpha", "auto", "--check", str(env["check"]),
                 "--out", str(out)]) == 0
    meta = json.loads((out / "dftune.json").read_text())["extra"]["merge"]
    curve = meta["alpha_auto"]
    pts = curve["points"]
    assert [p["alpha"] for p in pts] == [round(0.1 * i, 1) for i in range(11)]
    assert meta["alpha"] == curve["chosen"] == max(pts, key=lambda p: p["check"])["alpha"]
    assert all("val" in p for p in pts)  # the fine-tuned data's val, found through its dftune.json
    assert (out / "alpha_curve.png").stat().st_size > 1000
    text = " ".join(capsys.readouterr().out.split())
    assert re.search(r"--alpha auto: [0-9.]+, best on ", text)
    # the chosen model is that alpha's merge, exactly
    from dftune.stages import merge

    merge.run([str(env["base"]), str(env["tuned"])], env["root"] / "fixed", alpha=curve["chosen"], force=True)
    from safetensors.torch import load_file

    a, b = load_file(out / "model.safetensors"), load_file(env["root"] / "fixed" / "model.safetensors")
    assert all(bool((a[k] == b[k]).all()) for k in a)


def test_alpha_auto_without_a_check_set_is_refused_with_the_reason(env, tmp_path, capsys):
    assert main(["merge", "--model", str(env["base"]), "--model", str(env["tuned"]),
                 "--alpha", "auto", "--out", str(tmp_path / "x")]) == 2
    assert "on that data's own val it picks 1.0" in capsys.readouterr().err


def test_a_relative_check_path_is_recorded_absolute(tmp_path, monkeypatch):
    """What dftune.json, history.json and tune's best.yaml name (and a printed retrain command) works from any
    folder: --check values are made absolute as they are parsed, their split kept."""
    from dftune.commands import check_path

    monkeypatch.chdir(tmp_path)
    assert check_path("data/celebdf") == str(tmp_path / "data" / "celebdf")
    assert check_path("data/dfdc:val+test") == f"{tmp_path / 'data' / 'dfdc'}:val+test"
    assert check_path("/abs/labels.csv") == "/abs/labels.csv"
