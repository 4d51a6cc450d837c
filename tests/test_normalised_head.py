"""The normalised head (model/normalised.py, issue 29 item 1): GenD's LinearNorm head on any encoder, its
folder loadable inside dftune (registered) and outside it (the modeling file the folder carries)."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.filterwarnings("ignore")


def test_from_classifier_keeps_the_encoder_and_the_logits_at_the_feature_norm(tiny_vit):
    from transformers import AutoModelForImageClassification

    from dftune.model import normalised

    plain = AutoModelForImageClassification.from_pretrained(tiny_vit()).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        feats = plain.vit(pixel_values=x).last_hidden_state[:, 0]
        norm = float(feats.norm(dim=-1)[0])
        m = normalised.from_classifier(plain, feature_norm=norm).eval()
        assert m.config.pooling == "cls" and m.config.feature_size == 32
        out = m(pixel_values=x)
    # unit-norm features; the first image's logits equal the plain head's (its feature has exactly that norm)
    assert torch.allclose(out.features.norm(dim=-1), torch.ones(4), atol=1e-6)
    assert torch.allclose(out.features, torch.nn.functional.normalize(feats, dim=-1), atol=1e-6)
    with torch.no_grad():
        ref = plain(pixel_values=x).logits
    assert torch.allclose(out.logits[0], ref[0], atol=1e-5)
    assert set(m.state_dict()) == {f"encoder.{k}" for k in plain.vit.state_dict()} | {"classifier.weight",
                                                                                     "classifier.bias"}


def test_saved_folder_loads_in_dftune_and_in_plain_transformers(tiny_vit, tmp_path, without_dftune):
    from transformers import AutoModelForImageClassification

    from dftune.model.load import build_tiny_vit, load_classifier

    d = build_tiny_vit(tmp_path / "norm", head="normalised")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "dftune_normalised" and (d / "normalised.py").exists()
    assert cfg["auto_map"]["AutoModelForImageClassification"] == "normalised.NormalisedForImageClassification"
    model, _ = load_classifier(d)
    assert type(model).__module__ == "dftune.model.normalised"  # the registered class, not the folder's copy
    x = torch.randn(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        ref = model.eval()(pixel_values=x).logits
    assert torch.equal(ref, AutoModelForImageClassification.from_pretrained(d).eval()(pixel_values=x).logits)
    script = tmp_path / "load.py"
    script.write_text(
        "import sys, torch\n"
        "from transformers import AutoModelForImageClassification\n"
        f"m = AutoModelForImageClassification.from_pretrained({str(d)!r}, trust_remote_code=True).eval()\n"
        "assert 'dftune' not in type(m).__module__, type(m).__module__\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        "with torch.no_grad():\n"
        f"    torch.save(m(pixel_values=x).logits, {str(tmp_path / 'y.pt')!r})\n")
    r = subprocess.run([*without_dftune, str(script)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert torch.allclose(torch.load(tmp_path / "y.pt"), ref, atol=1e-6)


def test_unknown_pooling_is_refused():
    from transformers import ViTConfig

    from dftune.model.normalised import NormalisedConfig

    with pytest.raises(ValueError, match="pooling 'max'"):
        NormalisedConfig(encoder=ViTConfig(hidden_size=32), pooling="max")



# ------------------------------------------------------------------ GenD's losses


def test_uniformity_and_alignment_as_written_out():
    from dftune.training.losses import FeatureLoss, alignment, uniformity

    f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    f = f / f.norm(dim=1, keepdim=True)
    y = torch.tensor([0, 0, 0, 1, 1])
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    d2 = {(i, j): float(((f[i] - f[j]) ** 2).sum()) for i, j in pairs}
    want_u = math.log(sum(math.exp(-2 * d2[p]) for p in pairs) / len(pairs))
    same = [p for p in pairs if y[p[0]] == y[p[1]]]
    want_a = sum(d2[p] for p in same) / len(same)  # ||.||^2, alpha = 2
    assert float(uniformity(f)) == pytest.approx(want_u, abs=1e-6)
    assert float(alignment(f, y)) == pytest.approx(want_a, abs=1e-6)
    loss = FeatureLoss(0.5, 0.1)
    w = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])  # the last image unreadable: left out
    keep = w > 0
    want = 0.5 * float(uniformity(f[keep])) + 0.1 * float(alignment(f[keep], y[keep]))
    assert float(loss(f, y, w)) == pytest.approx(want, abs=1e-6)
    assert float(alignment(f[:1], y[:1])) == 0.0 and float(uniformity(f[:1])) == 0.0  # no pair: adds nothing


# ------------------------------------------------------------------ train --recipe gend, then everywhere


@pytest.fixture(scope="module")
def gend_run(tmp_path_factory, make_crops, tiny_vit):
    from dftune.cli import main

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gend")
    crops = make_crops(n_videos=4, frames=4, size=32, methods=("Deepfakes", "FaceSwap"))
    vit = tiny_vit({0: "Realism", 1: "Deepfake"}, image_size=32, hidden_size=64)
    run = root / "run"
    assert main(["train", "--data", str(crops), "--model", vit, "--out", str(run), "--recipe", "gend", "--epochs", "2",
                 "--batch-size", "8", "--workers", "0", "--no-tensorboard", "--wise", "0.5", "--no-progress"]) == 0
    return {"root": root, "crops": crops, "vit": vit, "run": run}


def test_gend_recipe_trains_layernorms_and_the_normalised_head(gend_run):
    from transformers import AutoModelForImageClassification

    from dftune.model.load import register_families

    run = gend_run["run"]
    settings = yaml.safe_load((run / "settings.yaml").read_text())
    assert settings["head"] == "normalised" and settings["tune"] == "layernorm" and settings["paired"]
    assert (settings["uniformity"], settings["alignment"], settings["lr"], settings["schedule"]) == (0.5, 0.1, 3e-4,
                                                                                                  "cosine")
    for d in ("start", "best", "wise"):
        cfg = json.loads((run / d / "config.json").read_text())
        assert cfg["model_type"] == "dftune_normalised" and (run / d / "normalised.py").exists(), d
    register_families()
    start = AutoModelForImageClassification.from_pretrained(run / "start").state_dict()
    best = AutoModelForImageClassification.from_pretrained(run / "best").state_dict()
    moved = {k for k in best if not torch.equal(best[k], start[k])}
    assert moved and all("layernorm" in k or k.startswith("classifier.") for k in moved), moved
    assert any(k.startswith("classifier.") for k in moved)
    # the start keeps the baseline's head, scaled by the crops' mean feature length
    plain = AutoModelForImageClassification.from_pretrained(gend_run["vit"]).state_dict()
    norm = json.loads((run / "start" / "dftune.json").read_text())["extra"]["feature_norm"]
    assert torch.allclose(start["classifier.weight"], plain["classifier.weight"] * norm, atol=1e-6)


def test_one_probability_everywhere(gend_run, tmp_path, without_dftune):
    """best/'s prob_fake of the val crops: train's validation, predict, export's script without dftune (torch and
    int8), a plain transformers load of the exported folder; equal to 1e-6 (int8: its own tolerance)."""
    from accelerate import Accelerator

    from dftune.cli import main
    from dftune.portable import Preprocess
    from dftune.prepared import image_paths, read_manifest
    from dftune.training import data, validate
    from dftune.training.config import TrainConfig
    from dftune.training.starting import load_model

    run, crops = gend_run["run"], gend_run["crops"]
    rows = read_manifest(crops, ("val",))
    paths = [str(p) for p in image_paths(crops, rows)]
    # train's validation, as train runs it
    model, proc, lm = load_model(str(run / "best"), TrainConfig())
    spec = Preprocess.from_processor(proc)
    ds = data.CropDataset(crops, rows, data.make_transform(spec, None))
    scores: list = []
    validate.validate(Accelerator(cpu=True), model, data.make_loader(ds, 16), data.Normalize(spec), ds, rows,
                      lm.fake_index, "mean", set(), scores=scores)
    val = dict(zip(paths, scores[0][1].tolist(), strict=True))
    # predict on the crop files (used whole: --detector none)
    src = tmp_path / "in"
    src.mkdir()
    for p in paths:
        (src / Path(p).name).write_bytes(Path(p).read_bytes())
    ours = tmp_path / "ours.csv"
    assert main(["predict", str(src), "--model", str(run / "best"), "--out", str(ours), "--tta", "none",
                 "--detector", "none", "--no-progress"]) == 0
    pred = _probs(ours)
    assert set(pred) == {Path(p).name for p in paths}
    for p in paths:
        assert pred[Path(p).name] == pytest.approx(val[p], abs=1e-6)
    # export (plain, int8, ONNX: export checks each against best/), then its script where dftune cannot load
    sub = tmp_path / "submit"
    assert main(["export", str(run / "best"), "--out", str(sub), "--int8", "--onnx"]) == 0
    assert (sub / "normalised.py").exists()
    # the CSVs round to 6 decimals: probabilities 1e-7 apart may print 1e-6 apart (a stock ViT's predict and
    # script CSVs differ so on these crops too, one row in 24), hence 2e-6 between two CSVs
    one = {**os.environ, "OMP_NUM_THREADS": "1"}
    for backend in ("torch", "int8"):
        theirs = tmp_path / f"script_{backend}.csv"
        r = subprocess.run([*without_dftune, str(sub / "predict_submission.py"), str(src), "--out", str(theirs),
                            "--tta", "none", "--detector", "none", "--backend", backend],
                           capture_output=True, text=True, timeout=300, env=one)
        assert r.returncode == 0, r.stderr[-3000:]
        got = _probs(theirs)
        for name, p in pred.items():
            assert got[name] == pytest.approx(p, abs=0.1 if backend == "int8" else 2e-6), (backend, name)
        if backend == "torch":  # the same model, views and threads: the same CSV, byte for byte
            assert theirs.read_bytes() == ours.read_bytes()
    # a plain transformers load of the exported folder (its carried modeling file), its own processor
    code = (f"import json, sys, torch\nfrom PIL import Image\n"
            f"from transformers import AutoImageProcessor, AutoModelForImageClassification as A\n"
            f"m = A.from_pretrained({str(sub)!r}, trust_remote_code=True).eval()\n"
            f"proc = AutoImageProcessor.from_pretrained({str(sub)!r})\n"
            f"names = {sorted(pred)!r}\n"
            f"x = proc(images=[Image.open({str(src)!r} + '/' + n).convert('RGB') for n in names],"
            f" return_tensors='pt')['pixel_values']\n"
            f"with torch.no_grad():\n    p = m(pixel_values=x).logits.softmax(-1)[:, {lm.fake_index}]\n"
            f"print(json.dumps(dict(zip(names, p.tolist()))))\n")
    script = tmp_path / "plain.py"
    script.write_text(code)
    r = subprocess.run([*without_dftune, str(script)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    plain = json.loads(r.stdout.strip().splitlines()[-1])
    for name, p in pred.items():
        assert plain[name] == pytest.approx(p, abs=1.5e-6), name  # 1e-6 + predict's CSV rounding


def _probs(csv_path) -> dict:
    import csv

    with open(csv_path, newline="") as f:
        return {r["filename"]: float(r["prob_fake"]) for r in csv.DictReader(f)}


def test_evaluate_and_merge_with_its_start(gend_run, tmp_path, capsys):
    from dftune.cli import main

    run = gend_run["run"]
    assert main(["evaluate", "--model", str(run / "best"), "--data", str(gend_run["crops"]), "--out",
                 str(tmp_path / "ev"), "--no-progress"]) == 0
    assert main(["merge", str(run / "start"), str(run / "best"), "--alpha", "0.5",
                 "--out", str(tmp_path / "m")]) == 0
    a = json.loads((tmp_path / "m" / "config.json").read_text())
    assert a["model_type"] == "dftune_normalised" and (tmp_path / "m" / "normalised.py").exists()
    # WiSE-FT written by train itself is the same average
    from safetensors.torch import load_file

    x, y = load_file(tmp_path / "m" / "model.safetensors"), load_file(run / "wise" / "model.safetensors")
    assert all(torch.equal(x[k], y[k]) for k in x)


# ------------------------------------------------------------------ bad input


def test_uniformity_with_a_batch_of_one_is_refused(gend_run, tmp_path, capsys):
    from dftune.cli import main

    rc = main(["train", "--data", str(gend_run["crops"]), "--model", gend_run["vit"], "--out", str(tmp_path / "r"),
               "--head", "normalised", "--uniformity", "0.5", "--batch-size", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc != 0 and "--uniformity 0.5" in err and "--batch-size 1" in err and "no pairs" in err
    assert not (tmp_path / "r" / "best").exists()


def test_feature_losses_on_a_plain_head_are_refused(gend_run, tmp_path, capsys):
    from dftune.cli import main

    rc = main(["train", "--data", str(gend_run["crops"]), "--model", gend_run["vit"], "--out", str(tmp_path / "r"),
               "--alignment", "0.1", "--batch-size", "8", "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert rc != 0 and "--head normalised" in err and gend_run["vit"] in err


def test_merge_refuses_a_normalised_head_with_a_plain_one_naming_both(gend_run, tmp_path, capsys):
    from dftune.cli import main

    best = str(gend_run["run"] / "best")
    rc = main(["merge", gend_run["vit"], best, "--alpha", "0.5", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc != 0 and best in err and gend_run["vit"] in err and "normalised head" in err and "linear" in err
    assert not (tmp_path / "m").exists()


def test_gend_resume_gives_the_same_result(gend_run, tmp_path):
    from safetensors.torch import load_file

    from conftest import train_killed_after
    from dftune.stages import train
    from dftune.training.config import with_recipe

    cfg = with_recipe(None, {"recipe": "gend", "epochs": 3, "batch_size": 8, "num_workers": 0, "patience": 0,
                             "tensorboard": False, "max_train_batches": 3})
    crops, vit = gend_run["crops"], gend_run["vit"]
    train.run(crops, vit, tmp_path / "a", cfg, progress=False)
    train_killed_after(2, crops, vit, tmp_path / "b", cfg)
    assert train.run(crops, vit, tmp_path / "b", cfg, progress=False, resume=True).epochs_run == 3
    a, b = (load_file(str(tmp_path / r / "last" / "model.safetensors")) for r in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = (json.loads((tmp_path / r / "history.json").read_text()) for r in ("a", "b"))
    assert [h["train"]["loss"] for h in ha] == [h["train"]["loss"] for h in hb]


def test_clip_classifier_gets_gend_pooling_and_a_new_head():
    """CLIP's classifier reads the patch tokens' mean; under the normalised head the feature is GenD's (the
    post-layernorm CLS, ``pooler_output``), so the old head is not carried over."""
    from transformers import CLIPConfig, CLIPForImageClassification

    from dftune.model import normalised

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    cfg = CLIPConfig(vision_config={**small, "image_size": 32, "patch_size": 8}, text_config=small,
                     id2label={0: "real", 1: "fake"}, label2id={"real": 0, "fake": 1})
    torch.manual_seed(0)
    clip = CLIPForImageClassification(cfg).eval()
    m = normalised.from_classifier(clip).eval()
    assert m.config.pooling == "pooler" and type(m.encoder).__name__ == "CLIPVisionModel"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = torch.nn.functional.normalize(clip.vision_model(pixel_values=x).pooler_output, dim=-1)
        assert torch.allclose(m(pixel_values=x).features, want, atol=1e-6)
    assert not normalised.reads_pooled(clip, m)


def test_the_script_runs_no_code_but_dftune_own(tmp_path, tiny_vit):
    """portable.code_kwargs trusts only the normalised head's own carried file; a folder carrying other code (a
    GenD snapshot's modeling_gend.py, say) is not run; in dftune the registered class is used instead."""
    from dftune.model.load import build_tiny_vit, register_families
    from dftune.portable import code_kwargs

    register_families()
    d = build_tiny_vit(tmp_path / "norm", head="normalised")
    assert code_kwargs(d) == {}  # registered here: transformers takes the registered class
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "modeling_gend.py").write_text("raise SystemExit('ran')\n")
    (foreign / "config.json").write_text(json.dumps({"model_type": "GenD", "auto_map": {
        "AutoConfig": "modeling_gend.GenDConfig", "AutoModel": "modeling_gend.GenD"}}))
    assert code_kwargs(foreign) == {}
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"]["AutoModel"] = "other.Model"
    (d / "config.json").write_text(json.dumps(cfg))
    assert code_kwargs(d) == {}
