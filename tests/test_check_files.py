"""A check set of raw files: ``--check labels.csv`` (filename,label, paths relative to the CSV) frames its images and
videos once exactly as predict frames them, with the training data's (train) or the model's (merge) crop settings,
caches the crops as a small prepared folder (RUN_DIR/checks, or checks/ beside merge's --out) that a resume or a
second load reuses, and is scored at every validation like a prepared check set. A file the CSV names that is not
there is an error naming it; an unreadable one is skipped and named."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from dftune import checks
from dftune.cli import main
from dftune.model.meta import CropSettings

CROP = CropSettings(detector="dlib", margin=1.3, size=32, frames=3)
ARGS = ["--epochs", "1", "--batch-size", "8", "--no-progress", "--no-tensorboard", "--set", "num_workers=0"]


def _write_labels(folder: Path, rows: list[tuple[str, int]], name: str = "labels.csv") -> Path:
    p = folder / name
    p.write_text("filename,label\n" + "".join(f"{f},{y}\n" for f, y in rows))
    return p


@pytest.fixture(scope="module")
def env(tmp_path_factory, make_crops, tiny_vit, face_photo):
    from PIL import Image
    from skimage import data

    from dftune import synthetic

    root = tmp_path_factory.mktemp("checkfiles")
    files = root / "contest"
    (files / "vids").mkdir(parents=True)
    Image.fromarray(data.astronaut()[:320, 60:380]).save(files / "face.png")
    Image.open(face_photo).save(files / "hopper.jpg")
    Image.fromarray(np.full((90, 120, 3), 128, np.uint8)).save(files / "noface.png")
    ph, bg = synthetic.identity(1), synthetic._background(1, 160, 120)
    synthetic.write_video(files / "vids" / "clip.mp4",
                          [synthetic.render_frame(ph.rgb, ph.face, bg, k / 9, motion_seed=1)[0] for k in range(10)])
    (files / "broken.mp4").write_bytes(b"\x00\x00\x00 not a video")
    labels = _write_labels(files, [("face.png", 0), ("hopper.jpg", 1), ("noface.png", 0), ("vids/clip.mp4", 1),
                                   ("broken.mp4", 0)])
    train_data = make_crops("data", n_videos=4, frames=2, size=32, methods=("Deepfakes",))
    settings = json.loads((train_data / "settings.json").read_text())
    settings.update(detector="dlib", size=32, frames=3, detect_width=640)  # the crop settings the check set gets
    (train_data / "settings.json").write_text(json.dumps(settings))
    return {"root": root, "files": files, "labels": labels, "data": train_data,
            "vit": tiny_vit(image_size=32, hidden_size=32)}


def test_a_labels_csv_is_framed_as_predict_frames_it_and_cached(env, tmp_path, monkeypatch, caplog):
    from dftune import portable
    from dftune.portable import workers

    lines: list[str] = []
    cs = checks.load(env["labels"], cache=tmp_path, crop=CROP, workers=0, progress=False, say=lines.append)
    videos = {r.video for r in cs.rows}
    assert videos == {"face.png", "hopper.jpg", "noface.png", "vids/clip.mp4"}  # broken.mp4: skipped, named
    assert "broken.mp4" in caplog.text and "broken.mp4" in lines[0]
    assert sum(r.video == "vids/clip.mp4" for r in cs.rows) == 3  # the data's 3 frames a video
    assert {r.split for r in cs.rows} == {"test"} and cs.n_real and cs.n_fake
    assert "5 files (3 images, 1 video; 2 real, 2 fake) -> 6 crops" in lines[0] and "no face in 1" in lines[0]
    # the crops are predict's, pixel for pixel: frame_file with the same settings
    det = portable.get_detector("dlib", **portable.detector_kwargs({"detector": "dlib"}))
    for name in ("face.png", "vids/clip.mp4"):
        want = portable.frame_file(env["files"] / name, portable.kind_of_file(env["files"] / name), det,
                                   CROP.margin, CROP.size, CROP.frames).crops
        got = [np.asarray(portable.load_image(cs.folder / r.path))
               for r in sorted((r for r in cs.rows if r.video == name), key=lambda r: r.frame_index)]
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    assert {np.asarray(portable.load_image(cs.folder / r.path)).shape for r in cs.rows} == {(32, 32, 3)}
    # a second load reads the cache: nothing is decoded again
    mtimes = {r.path: os.stat(cs.folder / r.path).st_mtime_ns for r in cs.rows}
    monkeypatch.setattr(workers, "frame_files", lambda *a, **k: pytest.fail("decoded again"))
    again = checks.load(env["labels"], cache=tmp_path, crop=CROP, progress=False, say=lines.append)
    assert "from its cache" in lines[-1] and [r.path for r in again.rows] == [r.path for r in cs.rows]
    assert {r.path: os.stat(cs.folder / r.path).st_mtime_ns for r in again.rows} == mtimes
    monkeypatch.undo()
    # other crop settings rebuild it
    bigger = checks.load(env["labels"], cache=tmp_path, crop=CropSettings(detector="dlib", size=48, frames=2),
                         workers=0, progress=False, say=lines.append)
    assert bigger.folder == cs.folder and "framed as predict frames them" in lines[-1]
    assert {np.asarray(portable.load_image(bigger.folder / r.path)).shape for r in bigger.rows} == {(48, 48, 3)}


def test_a_changed_labels_file_rebuilds_the_cache(env, tmp_path):
    files = env["files"]
    lines: list[str] = []
    labels = _write_labels(files, [("face.png", 0), ("hopper.jpg", 1)], "two.csv")
    assert len(checks.load(labels, cache=tmp_path, crop=CROP, workers=0, progress=False, say=lines.append).rows) == 2
    _write_labels(files, [("face.png", 0), ("hopper.jpg", 1), ("vids/clip.mp4", 1)], "two.csv")
    cs = checks.load(labels, cache=tmp_path, crop=CROP, workers=0, progress=False, say=lines.append)
    assert "framed as predict" in lines[-1] and len({r.video for r in cs.rows}) == 3


def test_a_missing_file_is_an_error_naming_it(env, tmp_path, capsys):
    labels = _write_labels(env["files"], [("face.png", 0), ("hopper.jpg", 1), ("gone/fake9.mp4", 1)], "typo.csv")
    with pytest.raises(checks.CheckError, match=r"1 of the 3 files it labels are not there .*gone/fake9\.mp4"):
        checks.load(labels, cache=tmp_path, crop=CROP, workers=0, progress=False)
    rc = main(["merge", "--model", str(env["vit"]), "--model", str(env["vit"]),
               "--alpha", "auto", "--check", str(labels), "--out",
               str(tmp_path / "m")])
    assert rc == 2 and "gone/fake9.mp4" in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_ambiguous_specs_are_refused_saying_what_to_give(env, tmp_path):
    with pytest.raises(checks.CheckError, match=r"is a labels CSV .* no splits; give --check .*labels\.csv$"):
        checks.load(f"{env['labels']}:test")
    with pytest.raises(checks.CheckError, match=r"no manifest here.*holds the labels CSV.*--check .*"):
        checks.load(env["files"])  # a folder of raw files: name its labels CSV
    both = tmp_path / "both.csv"
    both.write_text("filename,label,path,video,split\nface.png,0,a.png,v,test\n")
    with pytest.raises(checks.CheckError, match="both a labels CSV's columns"):
        checks.load(both)


def test_a_check_file_that_the_training_data_was_made_from_is_refused(env, tmp_path):
    from dftune.prepared import read_manifest

    data = tmp_path / "data"
    data.mkdir()
    for f in ("manifest.csv", "settings.json"):
        (data / f).write_bytes((env["data"] / f).read_bytes())
    (data / ".parts").mkdir()  # prepare's record of the source files it read
    (data / ".parts" / "a.json").write_text(json.dumps({"key": "a", "file": str(env["files"] / "hopper.jpg"),
                                                        "split": "train", "label": 1, "method": "x", "rows": []}))
    cs = checks.load(env["labels"], cache=tmp_path / "c", crop=CROP, workers=0, progress=False)
    with pytest.raises(checks.CheckError, match=r"shares 1 source files \(.*hopper\.jpg\)"):
        checks.refuse_leaks([cs], read_manifest(data, ("train", "val")), data)
    checks.refuse_leaks([cs], read_manifest(env["data"], ("train", "val")), env["data"])  # no parts: nothing shared
    # a copy of a training source under another name is the same file
    (data / ".parts" / "a.json").write_text(json.dumps({"key": "a", "file": str(tmp_path / "renamed.jpg"),
                                                        "split": "train", "label": 1, "method": "x", "rows": []}))
    (tmp_path / "renamed.jpg").write_bytes((env["files"] / "hopper.jpg").read_bytes())
    with pytest.raises(checks.CheckError,
                       match=r"1 copies of source files or training crops under other names \(.*hopper\.jpg\)"):
        checks.refuse_leaks([cs], read_manifest(data, ("train", "val")), data)


def test_train_validates_on_a_labels_csv_every_epoch_and_a_resume_reuses_its_crops(env, tmp_path, capsys, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="dftune.checkfiles")
    run = tmp_path / "run"
    assert main(["train", "--data", str(env["data"]), "--model", env["vit"], "--out", str(run), "--check",
                 str(env["labels"]), "--wise", "auto", *ARGS]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"check set {env['labels']}: 5 files" in out and "framed as predict frames them" in out
    # --wise auto chose its alpha on the same crops: RUN_DIR/checks, read from the cache, not framed again
    assert "from its cache" in caplog.text and len(list((run / "checks").iterdir())) == 1
    curve = json.loads((run / "wise" / "dftune.json").read_text())["extra"]["merge"]["alpha_auto"]
    assert curve["checks"] == [str(env["labels"])]
    hist = json.loads((run / "history.json").read_text())
    got = hist[0]["check"]["sets"][str(env["labels"])]
    assert got["frame"]["n"] == 6 and got["video"]["n"] == 4  # a video's frames pooled: one number per file
    assert got["frame"]["auc"] is not None and hist[0]["check"]["mean"]["frame"]["auc"] == got["frame"]["auc"]
    cache = next((run / "checks").iterdir())
    assert (cache / "manifest.csv").exists() and json.loads((cache / "check.json").read_text())["framing"]["size"] == 32
    assert main(["train", "--data", str(env["data"]), "--model", env["vit"], "--out", str(run), "--check",
                 str(env["labels"]), "--resume", *ARGS[:1], "2", *ARGS[2:]]) == 0
    again = " ".join(capsys.readouterr().out.split())
    assert f"check set {env['labels']}: 5 files" in again and "from its cache" in again  # nothing decoded again
    hist = json.loads((run / "history.json").read_text())
    assert len(hist) == 2 and str(env["labels"]) in hist[1]["check"]["sets"]


def test_merge_alpha_auto_chooses_on_a_labels_csv(env, tmp_path, capsys):
    import torch
    from transformers import AutoModelForImageClassification

    from dftune.model import meta as modelmeta

    tuned = tmp_path / "tuned"
    m = AutoModelForImageClassification.from_pretrained(env["vit"])
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.save_pretrained(tuned)
    (tuned / "preprocessor_config.json").write_bytes((Path(env["vit"]) / "preprocessor_config.json").read_bytes())
    meta = modelmeta.load(env["vit"], {0: "Realism", 1: "Deepfake"})
    meta.crop = CROP  # the fine-tuned model's crop settings: what the check files are framed with
    modelmeta.save(tuned, meta)
    out = tmp_path / "models" / "wise"
    assert main(["merge", "--model", env["vit"], "--model", str(tuned),
                 "--alpha", "auto", "--alpha-grid", "0,0.5,1", "--check",
                 str(env["labels"]), "--out", str(out)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"check set {env['labels']}: 5 files" in text and "--alpha auto:" in text
    curve = json.loads((out / "dftune.json").read_text())["extra"]["merge"]["alpha_auto"]
    assert curve["checks"] == [str(env["labels"])] and [p["alpha"] for p in curve["points"]] == [0, 0.5, 1]
    assert all(p["check"] == p["check"] for p in curve["points"])  # defined: both classes were framed
    cache = next((tmp_path / "models" / "checks").iterdir())  # beside --out
    assert json.loads((cache / "check.json").read_text())["framing"]["size"] == 32


def test_a_check_csv_that_is_not_a_labels_file_says_what_is_wrong_with_it(tmp_path):
    """A semicolon CSV, a wrong header or a mistyped path: the labels reader's own message (not "no manifest
    here")."""
    from dftune import checks

    (tmp_path / "semi.csv").write_text("filename;label\na.mp4;0\n")
    (tmp_path / "wrong.csv").write_text("name,y\na.mp4,0\n")
    for name, said in (("semi.csv", "separated by ';'"), ("wrong.csv", "needs a header with 'filename' and 'label'"),
                       ("typo.csv", "typo.csv not found")):
        with pytest.raises(checks.CheckError, match=said):
            checks.load(tmp_path / name)
