"""dftune predict and the shared inference component: one CSV row per input, errors as rows,
face crop / fallback, TTA, label-order-aware ensemble, parity with transformers' pipeline."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dftune import scoring  # noqa: E402
from dftune.cli import main  # noqa: E402
from dftune.model import meta as modelmeta  # noqa: E402
from dftune.model.load import build_tiny_vit  # noqa: E402
from dftune.stages import predict  # noqa: E402


def swapped_copy(src: Path, dst: Path) -> Path:
    """The same network with its two outputs (and label names) in the other order."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    m = AutoModelForImageClassification.from_pretrained(src)
    with torch.no_grad():
        m.classifier.weight.copy_(m.classifier.weight.flip(0))
        m.classifier.bias.copy_(m.classifier.bias.flip(0))
    m.config.id2label = {0: m.config.id2label[1], 1: m.config.id2label[0]}
    m.config.label2id = {v: k for k, v in m.config.id2label.items()}
    m.save_pretrained(dst)
    AutoImageProcessor.from_pretrained(src).save_pretrained(dst)
    return dst


def make_inputs(root: Path) -> Path:
    """Face photo variants (RGB, grayscale, CMYK, RGBA), a no-face image, a corrupt file,
    a short video, and a file predict must ignore."""
    from PIL import Image
    from skimage import data

    from dftune import synthetic

    a = data.astronaut()[:320, 60:380]  # the face with some background
    (root / "sub").mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(root / "face.png")
    Image.fromarray(a).convert("L").save(root / "sub" / "gray.jpg")
    Image.fromarray(a).convert("CMYK").save(root / "sub" / "cmyk.jpg")
    Image.fromarray(a).convert("RGBA").save(root / "sub" / "alpha.png")
    Image.fromarray(np.full((90, 120, 3), 128, np.uint8)).save(root / "noface.bmp")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (root / "notes.txt").write_text("not an input")
    ph, bg = synthetic.identity(0), synthetic._background(0, 160, 120)
    frames = [synthetic.render_frame(ph.rgb, ph.face, bg, k / 11, motion_seed=0)[0] for k in range(12)]
    synthetic.write_video(root / "sub" / "clip.mp4", frames)
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    a = build_tiny_vit(root / "model_a", {0: "Realism", 1: "Deepfake"}, image_size=32, seed=0)
    # dftune.json with a fast detector and few frames (the face crop settings predict reuses)
    meta = modelmeta.load(a, {0: "Realism", 1: "Deepfake"})
    meta.crop.detector, meta.crop.frames, meta.crop.size = "retinaface", 4, 64
    modelmeta.save(a, meta)
    b = build_tiny_vit(root / "model_b", {0: "Deepfake", 1: "Real"}, image_size=32, seed=3)
    a_swapped = swapped_copy(a, root / "model_a_swapped")
    modelmeta.save(a_swapped, modelmeta.ModelMeta(fake_index=0, real_index=1, crop=meta.crop))
    inputs = make_inputs(root / "inputs")
    return {"root": root, "a": a, "b": b, "a_swapped": a_swapped, "inputs": inputs}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_collect_inputs_stable_order_and_only_media(env):
    items = predict.collect_inputs([env["inputs"], env["inputs"] / "missing.png"])
    names = [i.name for i in items]
    assert names == ["corrupt.jpg", "face.png", "noface.bmp", "sub/alpha.png", "sub/clip.mp4", "sub/cmyk.jpg",
                     "sub/gray.jpg", "missing.png"]
    assert [i.kind for i in items if i.name == "sub/clip.mp4"] == ["video"]


def test_cli_one_row_per_input_errors_and_faces(env, capsys):
    out = env["root"] / "pred.csv"
    rc = main(["predict", str(env["inputs"]), str(env["inputs"] / "missing.png"), "--model", str(env["a"]),
               "--csv", str(out), "--no-progress"])
    assert rc == 0
    rows = read_csv(out)
    assert list(rows[0]) == ["filename", "label", "prob_fake", "faces_found", "frames", "framing", "error"]
    by = {r["filename"]: r for r in rows}
    assert len(rows) == 8 and len(by) == 8  # exactly one row per input, none for notes.txt
    for bad in ("corrupt.jpg", "missing.png"):
        assert by[bad]["error"] and by[bad]["label"] == "0"
        assert by[bad]["prob_fake"] == "0.000000"  # never a label beside an empty prob
    for name in ("face.png", "sub/gray.jpg", "sub/cmyk.jpg", "sub/alpha.png"):
        assert by[name]["faces_found"] == "1" and not by[name]["error"], name
        assert 0.0 <= float(by[name]["prob_fake"]) <= 1.0
    assert by["noface.bmp"]["faces_found"] == "0" and not by["noface.bmp"]["error"]  # whole image fallback
    assert by["sub/clip.mp4"]["frames"] == "4" and int(by["sub/clip.mp4"]["faces_found"]) >= 1
    captured = capsys.readouterr()
    err = captured.err
    assert "errors" in captured.out and "missing.png" in err  # the table to stdout, the error line to stderr
    assert "all: each person pooled apart, the highest" in " ".join((captured.out + err).split())  # --faces said


def test_csv_format_options(env):
    out = env["root"] / "sub.csv"
    rc = main(["predict", str(env["inputs"] / "face.png"), str(env["inputs"] / "corrupt.jpg"), "--model",
               str(env["a"]), "--csv", str(out), "--no-progress", "--filename-column", "id",
               "--label-column", "class", "--prob-column", "", "--label-words", "REAL,FAKE", "--no-extra-columns",
               "--threshold", "0", "--error-label", "fake", "--filename-style", "stem"])
    assert rc == 0
    rows = read_csv(out)
    assert list(rows[0]) == ["id", "class"]
    assert rows == [{"id": "face", "class": "FAKE"}, {"id": "corrupt", "class": "FAKE"}]


def test_threshold_from_dftune_json(env, tmp_path):
    import shutil

    m = shutil.copytree(env["a"], tmp_path / "m")
    img = env["inputs"] / "face.png"
    models = scoring.load_models([str(m)], device="cpu")
    s = predict.PredictSettings(tta=(), progress=False)
    p = predict.score_files(models, predict.collect_inputs([img]), s)[0].prob_fake
    for thr, label in ((p - 1e-3, 1), (p + 1e-3, 0)):
        meta = modelmeta.load(m)
        meta.threshold = thr
        modelmeta.save(m, meta)
        models = scoring.load_models([str(m)], device="cpu")
        assert predict.score_files(models, predict.collect_inputs([img]), s)[0].label == label


def test_parity_with_transformers_pipeline(env):
    """No TTA, no face crop: prob_fake is exactly what pipeline('image-classification') says."""
    from PIL import Image
    from transformers import pipeline

    img = env["inputs"] / "face.png"
    clf = pipeline("image-classification", model=str(env["a"]), device="cpu")
    scores = {d["label"]: d["score"] for d in clf(Image.open(img).convert("RGB"), top_k=2)}
    models = scoring.load_models([str(env["a"])], device="cpu")
    r = predict.score_files(models, predict.collect_inputs([img]),
                            predict.PredictSettings(tta=(), detector="none", progress=False))
    assert r[0].prob_fake == pytest.approx(scores["Deepfake"], abs=1e-6)


def test_flip_tta_is_mean_of_image_and_mirror(env):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    m = scoring.load_model(env["a"], device="cpu")
    plain = scoring.model_prob_fake(m, imgs)
    flipped = scoring.model_prob_fake(m, [np.ascontiguousarray(i[:, ::-1]) for i in imgs])
    tta = scoring.model_prob_fake(m, imgs, ("flip",))
    # the mirror is taken after resizing; PIL's bilinear resize is mirror-symmetric
    assert np.allclose(tta, (plain + flipped) / 2, atol=1e-4)
    assert not np.allclose(plain, flipped, atol=1e-6)  # the test can fail: views really differ
    assert scoring.parse_tta("flip, crop0.9,none") == ("flip", "crop0.9")
    with pytest.raises(ValueError):
        scoring.parse_tta("rotate")


def test_ensemble_respects_label_order(env):
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(5)]
    a, a_sw, b = (scoring.load_model(env[k], device="cpu") for k in ("a", "a_swapped", "b"))
    assert a.fake_index == 1 and a_sw.fake_index == 0 and b.fake_index == 0
    pa = scoring.model_prob_fake(a, imgs, ("flip",))
    assert np.allclose(pa, scoring.model_prob_fake(a_sw, imgs, ("flip",)), atol=1e-6)
    pb = scoring.model_prob_fake(b, imgs, ("flip",))
    a.weight, b.weight = 3.0, 1.0
    ens, per = scoring.ensemble_prob_fake([a, b], imgs, ("flip",))
    assert np.allclose(ens, (3 * pa + pb) / 4) and np.allclose(per, [pa, pb])
    a.weight = 1.0
    ens2, _ = scoring.ensemble_prob_fake([a, a_sw], imgs, ("flip",))
    assert np.allclose(ens2, pa, atol=1e-6)


def test_results_do_not_depend_on_batching(env):
    models = scoring.load_models([str(env["a"]), str(env["b"])], device="cpu")
    items = predict.collect_inputs([env["inputs"]])
    r1 = predict.score_files(models, items, predict.PredictSettings(batch_size=1, progress=False))
    r7 = predict.score_files(models, items, predict.PredictSettings(batch_size=7, progress=False))
    assert [r.name for r in r1] == [r.name for r in r7] == [i.name for i in items]
    for x, y in zip(r1, r7, strict=False):
        assert (np.isnan(x.prob_fake) and np.isnan(y.prob_fake)) or abs(x.prob_fake - y.prob_fake) < 1e-5
        assert len(x.per_model) == (0 if x.error else 2)
