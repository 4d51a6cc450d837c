"""evaluate --check PATH (repeatable): the threshold tuned on check sets (their scores pooled) instead of the data's
own val split, written with a provenance naming them; a check set sharing identities with the data the model's
dftune.json names is refused, naming it."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from dftune import checks  # noqa: E402
from dftune.cli import main  # noqa: E402
from dftune.model import meta as modelmeta  # noqa: E402


@pytest.fixture(scope="module")
def env(make_crops, tiny_vit):
    data = make_crops("data", n_videos=4, frames=2, size=32)
    one = make_crops("check1", n_videos=4, frames=2, size=32, seed=3, look="warm-jpeg", first_id=40,
                     methods=("FaceSwap", "NeuralTextures"))
    two = make_crops("check2", n_videos=4, frames=2, size=32, seed=5, first_id=80)
    model = tiny_vit(image_size=32, seed=1)
    meta = modelmeta.load(model, {0: "Realism", 1: "Deepfake"})
    meta.extra = {"data": str(data)}  # as train writes: the data the model was fine-tuned on
    modelmeta.save(model, meta)
    return {"data": data, "one": one, "two": two, "model": model}


def _pooled_optimum(model, specs, tta=("flip",)) -> float:
    """The macro-F1 threshold of all the check sets' crops scored together, computed apart from evaluate."""
    from dftune import metrics, scoring

    lm = scoring.load_model(model, device="cpu")
    ys, ps = [], []
    for spec in specs:
        cs = checks.load(spec)
        ps.append(scoring.model_prob_fake(lm, checks.images_of(cs), tta))
        ys.append(np.array([r.label for r in cs.rows]))
    return metrics.best_threshold(np.concatenate(ys), np.concatenate(ps))[0]


def test_write_threshold_tunes_on_the_pooled_check_sets_and_says_so(env, tmp_path, capsys):
    specs = [str(env["one"]), f"{env['two']}:test"]
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", env["model"], "--data", str(env["data"]), "--check", specs[0],
                 "--check", specs[1], "--write-threshold", "--out", str(out), "--no-plots", "--no-progress"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    meta = modelmeta.load(env["model"])
    assert meta.threshold == pytest.approx(_pooled_optimum(env["model"], specs), abs=1e-6)
    src = meta.threshold_source
    assert src["by"] == "evaluate" and src["checks"] == [f"{specs[0]} (val+test)", f"{specs[1]} (test)"]
    assert src["level"] == "frame" and src["tta"] == ["flip"] and "split" not in src  # not the data's val split
    said = f"check sets {specs[0]} (val+test), {specs[1]} (test) (rows pooled)"
    assert src["data"] == said and said in meta.threshold_text()
    m = json.loads((out / "metrics.json").read_text())
    assert m["threshold_split"].startswith("check sets ")
    entry = m["models"][next(iter(m["models"]))]
    assert entry["threshold_written"] == pytest.approx(meta.threshold)
    assert entry["val_threshold"]["n_check_crops"] == sum(len(checks.load(s).rows) for s in specs)
    assert "tuned on check sets" in printed
    assert "tuned for macro F1 on: check sets" in (out / "report.md").read_text()


def test_a_check_set_sharing_identities_with_the_models_training_data_is_refused(env, tmp_path, capsys):
    before = (modelmeta.meta_path(env["model"])).read_text()
    leaked = str(env["data"])  # its val split is training data of the model (dftune.json's extra.data)
    assert main(["evaluate", "--model", env["model"], "--data", str(env["data"]), "--check", str(env["one"]),
                 "--check", leaked, "--write-threshold", "--no-plots", "--no-progress"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--check {leaked}: shares" in err and "with the training data" in err
    assert modelmeta.meta_path(env["model"]).read_text() == before  # nothing written


def test_check_is_refused_where_it_cannot_apply(env, tmp_path, capsys):
    assert main(["evaluate", "--model", env["model"], "--data", str(env["data"]), "--data", str(env["two"]),
                 "--check", str(env["one"]), "--no-plots", "--no-progress"]) == 2
    assert "--check tunes the threshold for one --data" in capsys.readouterr().err


def test_an_ensembles_threshold_is_tuned_on_the_check_sets_too(env, tiny_vit, tmp_path, caplog):
    other = tiny_vit({0: "Deepfake", 1: "Real"}, image_size=32, seed=4)  # no training data named: said, not refused
    out = tmp_path / "ens"
    assert main(["evaluate", "--model", env["model"], "--model", other, "--data", str(env["data"]), "--ensemble",
                 "--check", str(env["two"]), "--write-threshold", "--out", str(out), "--no-plots",
                 "--no-progress"]) == 0
    ens = json.loads((out / "ensemble.json").read_text())
    assert ens["threshold_source"]["checks"] == [f"{env['two']} (val+test)"]
    m = json.loads((out / "metrics.json").read_text())
    assert ens["threshold"] == pytest.approx(m["models"]["ensemble"]["val_threshold"]["frame"])
    assert m["models"]["ensemble"]["val_threshold"]["from"] == f"check sets {env['two']} (val+test), pooled"
    assert f"{other}: its dftune.json names no prepared training data" in caplog.text


def test_a_merged_model_keeps_the_training_data_it_has_seen_so_leaks_are_still_refused(env, tiny_vit, tmp_path,
                                                                                        capsys):
    """WiSE-FT of a baseline (no data) and the fine-tuned model: the merged folder's dftune.json names the fine-tuned
    model's data, so evaluate --check refuses a leaked check set for it as it does for the fine-tuned model."""
    base = tiny_vit(image_size=32, seed=7)
    wise = tmp_path / "wise"
    assert main(["merge", "--model", base, "--model", env["model"], "--alpha", "0.5", "--out", str(wise)]) == 0
    assert modelmeta.load(wise).extra["data"] == str(env["data"])
    capsys.readouterr()
    assert main(["evaluate", "--model", str(wise), "--data", str(env["data"]), "--check", str(env["data"]),
                 "--write-threshold", "--no-plots", "--no-progress"]) == 2
    assert f"--check {env['data']}: shares" in " ".join(capsys.readouterr().err.split())
