"""dftune export: the submission folder loads without dftune, int8 and ONNX exports reload and
agree with the source, a failed check writes nothing, and the standalone script — run where
dftune cannot be imported — gives the same CSV as `dftune predict`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from conftest import NO_DFTUNE, encode_h264, trim_mp4  # noqa: E402  (NO_DFTUNE: runs a script where `import dftune` fails)
from dftune import scoring  # noqa: E402
from dftune.cli import main  # noqa: E402
from dftune.model import meta as modelmeta  # noqa: E402
from dftune.model.load import build_tiny_vit  # noqa: E402
from dftune.stages import export  # noqa: E402


def make_inputs(root: Path) -> Path:
    from PIL import Image
    from skimage import data

    from dftune import synthetic

    a = data.astronaut()[:320, 60:380]
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(root / "face.png")
    Image.fromarray(a).convert("CMYK").save(root / "face_cmyk.jpg")
    Image.fromarray(np.full((90, 120, 3), 128, np.uint8)).save(root / "noface.png")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00 not a video")
    ph, bg = synthetic.identity(1), synthetic._background(1, 160, 120)
    frames = [synthetic.render_frame(ph.rgb, ph.face, bg, k / 9, motion_seed=1)[0] for k in range(10)]
    synthetic.write_video(root / "clip.mp4", frames)
    synthetic.write_video(root / "phone.mp4", frames, rotate=-90)  # a portrait phone clip: stored sideways, tagged
    # frame numbers as a sequential decode's: an mp4 trimmed by an edit list, H.264 with B-frames in AVI
    more = [synthetic.render_frame(ph.rgb, ph.face, bg, k / 14, motion_seed=2)[0] for k in range(15)]
    trim_mp4(encode_h264(root / "untrimmed.mp4.src", more, fmt="mp4"), root / "trimmed.mp4", 5)
    (root / "untrimmed.mp4.src").unlink()
    encode_h264(root / "bframes.avi", more, fmt="avi")
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    model = build_tiny_vit(root / "model", {0: "Deepfake", 1: "Realism"}, image_size=32, seed=2)
    meta = modelmeta.load(model, {0: "Deepfake", 1: "Realism"})
    meta.crop.detector, meta.crop.frames, meta.crop.size = "retinaface", 3, 48
    meta.threshold, meta.threshold_source = 0.4987, "val"
    modelmeta.save(model, meta)
    submit = root / "submit"
    rep = export.run(model, submit, export.ExportSettings(int8=True, onnx=True, bench_seconds=0.05))
    return {"root": root, "model": model, "submit": submit, "report": rep, "inputs": make_inputs(root / "inputs")}


def test_folder_contents_and_report(env):
    sub = env["submit"]
    for f in ("config.json", "model.safetensors", "preprocessor_config.json", "dftune.json", "predict_submission.py",
              "README.md", "model_int8.pt", "model.onnx", "export_report.json"):
        assert (sub / f).is_file(), f
    rep = json.loads((sub / "export_report.json").read_text())
    assert set(rep["exports"]) == {"plain", "int8", "onnx"}
    assert rep["exports"]["plain"]["max_prob_diff"] <= 1e-6
    assert rep["exports"]["onnx"]["max_prob_diff"] <= 1e-4
    assert rep["exports"]["int8"]["label_agreement"] >= 0.5
    assert rep["exports"]["int8"]["size_bytes"] < rep["exports"]["plain"]["size_bytes"]
    assert modelmeta.load(sub).threshold == pytest.approx(0.4987)  # dftune.json travels with the model


def test_plain_folder_loads_without_dftune(env, tmp_path):
    x = torch.rand(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch; sys.modules['dftune'] = None\n"
        "from transformers import AutoModelForImageClassification as A\n"
        f"m = A.from_pretrained({str(env['submit'])!r}).eval()\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        "print(repr(m(pixel_values=x).logits.tolist()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    src = scoring.load_model(env["model"], device="cpu").module
    ref = src(pixel_values=x).logits.detach().numpy()
    assert np.allclose(np.array(eval(out.stdout.strip().splitlines()[-1])), ref, atol=1e-6)


def test_int8_and_onnx_reload_and_agree(env):
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    ref = scoring.model_prob_fake(scoring.load_model(env["model"], device="cpu"), imgs)
    q = scoring.load_model(env["submit"], device="cpu", backend="int8")
    assert any("quantized" in type(m).__module__ for m in q.module.modules())
    assert np.abs(scoring.model_prob_fake(q, imgs) - ref).max() < 0.05
    o = scoring.load_model(env["submit"], device="cpu", backend="onnx")
    assert np.abs(scoring.model_prob_fake(o, imgs) - ref).max() < 1e-4


def test_failed_check_fails_loudly_and_writes_nothing(env, tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(export.ExportError, match="int8 export differs"):
        export.run(env["model"], out, export.ExportSettings(int8=True, int8_tolerance=1e-12, bench_seconds=0))
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad")]  # no temp folder left
    with pytest.raises(FileExistsError):
        export.run(env["model"], env["submit"], export.ExportSettings(bench_seconds=0))


def read_probs(path):
    with open(path, newline="") as f:
        return {r["filename"]: r for r in csv.DictReader(f)}


def compare_csv(a, b):
    assert list(a) == list(b) == ["bframes.avi", "broken.mp4", "clip.mp4", "face.png", "face_cmyk.jpg", "noface.png",
                                  "phone.mp4", "trimmed.mp4"]
    for name in a:
        assert a[name]["label"] == b[name]["label"], name
        assert a[name]["faces_found"] == b[name]["faces_found"] and a[name]["frames"] == b[name]["frames"], name
        assert bool(a[name]["error"]) == bool(b[name]["error"]), name
        if a[name]["prob_fake"]:
            assert float(a[name]["prob_fake"]) == pytest.approx(float(b[name]["prob_fake"]), abs=2e-6), name
    assert a["face.png"]["faces_found"] == "1" and a["noface.png"]["faces_found"] == "0"
    assert a["clip.mp4"]["frames"] == "3" and a["broken.mp4"]["error"]
    # the rotated clip is read upright by both: the same faces as its upright twin
    assert a["phone.mp4"]["faces_found"] == a["clip.mp4"]["faces_found"] != "0"
    assert float(a["phone.mp4"]["prob_fake"]) == pytest.approx(float(a["clip.mp4"]["prob_fake"]), abs=0.05)
    assert a["trimmed.mp4"]["frames"] == a["bframes.avi"]["frames"] == "3" and not a["bframes.avi"]["error"]


def test_standalone_script_matches_predict_without_dftune(env, tmp_path):
    ours, theirs = tmp_path / "ours.csv", tmp_path / "theirs.csv"
    tta = "flip,crop0.8"
    assert main(["predict", str(env["inputs"]), "--model", str(env["submit"]), "--csv", str(ours),
                 "--tta", tta, "--no-progress"]) == 0
    script = env["submit"] / "predict_submission.py"
    r = subprocess.run([sys.executable, "-c", NO_DFTUNE, str(script), str(env["inputs"]), "--out", str(theirs),
                        "--tta", tta], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    compare_csv(read_probs(ours), read_probs(theirs))


def test_standalone_script_int8_matches_predict(env, tmp_path):
    """The script's int8 path (in this process; the test above shows it needs no dftune)."""
    import runpy

    ours, theirs = tmp_path / "ours.csv", tmp_path / "theirs.csv"
    assert main(["predict", str(env["inputs"]), "--model", str(env["submit"]), "--csv", str(ours),
                 "--backend", "int8", "--no-progress"]) == 0
    mod = runpy.run_path(str(env["submit"] / "predict_submission.py"))
    assert mod["main"]([str(env["inputs"]), "--out", str(theirs), "--backend", "int8",
                        "--model", str(env["submit"])]) == 0
    compare_csv(read_probs(ours), read_probs(theirs))
