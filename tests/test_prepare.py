"""End-to-end tests of `dftune prepare` on small H.264 trees the tests build."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from dftune.cli import main
from dftune.prepared import read_manifest


def _prepare(root, out, *extra):
    return main(["prepare", str(root), "--out", str(out), "--split-files", str(Path(root) / "splits"),
                 "--frames", "3", "--detector", "retinaface", "--workers", "1", "--no-progress", *extra])


def _rows(out):
    return (Path(out) / "manifest.csv").read_text()


@pytest.fixture(scope="module")
def prepared(ffpp_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    assert _prepare(ffpp_tree, out, "--workers", "2") == 0
    return out


def test_prepare_writes_crops_manifest_and_summary(prepared, ffpp_tree):
    rows = read_manifest(prepared)
    # 30 videos x 3 frames, every face found on this data
    assert len(rows) == 90
    summary = json.loads((prepared / "summary.json").read_text())
    assert summary["videos"]["done"] == 30 and summary["videos"]["failed"] == 0
    assert summary["crops"]["total"] == 90
    for r in rows:
        img = cv2.imread(str(prepared / r.path))
        assert img is not None and img.shape == (224, 224, 3)
        assert r.path.startswith(f"{r.split}/{'fake' if r.label else 'real'}/")
        assert r.detector == "retinaface"
        assert r.box_size > 0 and r.box_x + r.box_size <= r.frame_width and r.box_y + r.box_size <= r.frame_height
    # names unique across methods: the four fakes of 000_001 all survive
    assert len({r.path for r in rows}) == len(rows)
    assert {r.method for r in rows if r.video_id == "000_001"} == {"Deepfakes", "Face2Face", "FaceSwap",
                                                                   "NeuralTextures"}
    # the guide's frame indices: linspace(0, 11, 3) -> 0, 5, 11
    assert {r.frame_index for r in rows} == {0, 5, 11}
    settings = json.loads((prepared / "settings.json").read_text())
    assert settings["detector"] == "retinaface" and settings["margin"] == 1.3 and settings["size"] == 224


def test_splits_follow_the_split_files(prepared, ffpp_tree):
    id_split = {}
    for split in ("train", "val", "test"):
        for pair in json.loads((ffpp_tree / "splits" / f"{split}.json").read_text()):
            for i in pair:
                id_split[i] = split
    rows = read_manifest(prepared)
    for r in rows:
        assert r.split == id_split[r.target_id]
        if r.source_id:
            assert r.split == id_split[r.source_id]
    assert {r.split for r in rows} == {"train", "val", "test"}


def test_crop_matches_the_guide_geometry_on_the_frame(prepared, ffpp_tree):
    """Re-derive one crop by hand from the decoded frame and the detector's box."""
    from dftune.portable import get_detector, guide_square, largest, sample_frames

    r = next(r for r in read_manifest(prepared) if r.video == "original/002" and r.frame_index == 5)
    video = ffpp_tree / "original_sequences/youtube/c23/videos/002.mp4"
    frame = dict(sample_frames(video, 3))[5]
    f = largest(get_detector("retinaface").detect(frame))
    assert (r.box_x, r.box_y, r.box_size) == guide_square(f.x1, f.y1, f.x2, f.y2, 320, 240, 1.3)
    expected = cv2.resize(frame[r.box_y:r.box_y + r.box_size, r.box_x:r.box_x + r.box_size], (224, 224),
                          interpolation=cv2.INTER_CUBIC)
    saved = cv2.cvtColor(cv2.imread(str(prepared / r.path)), cv2.COLOR_BGR2RGB)
    assert np.abs(saved.astype(int) - expected.astype(int)).mean() < 3  # JPEG q95 only


def test_dlib_detector_is_the_default_and_recorded(ffpp_tree, tmp_path):
    out = tmp_path / "dlib"
    code = main(["prepare", str(ffpp_tree), "--out", str(out), "--split-files", str(ffpp_tree / "splits"),
                 "--frames", "2", "--workers", "1", "--no-progress", "--methods", "FaceSwap"])
    assert code == 0
    rows = read_manifest(out)
    assert rows and {r.detector for r in rows} == {"dlib"}
    assert {r.method for r in rows} <= {"original", "FaceSwap"}


def test_rerun_skips_complete_and_redoes_partial(prepared, tmp_path, ffpp_tree):
    out = tmp_path / "resume"
    shutil.copytree(prepared, out)
    full = _rows(out)
    # simulate a run killed mid-way: two videos lost their part file, one of them left a torn crop
    parts = sorted((out / ".parts").rglob("*.json"))[:2]
    lost = [json.loads(p.read_text()) for p in parts]
    for p in parts:
        p.unlink()
    (out / lost[0]["rows"][0]["path"]).write_bytes(b"torn")
    (out / "manifest.csv").unlink()
    assert _prepare(ffpp_tree, out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["this_run"]["todo"] == 2 and summary["this_run"]["skipped_complete"] == 28
    assert _rows(out) == full
    assert cv2.imread(str(out / lost[0]["rows"][0]["path"])) is not None


def test_resume_out_needs_no_root_or_settings(prepared, tmp_path, capsys):
    """`prepare --resume OUT` re-runs from OUT/settings.json (root, splits, frames, detector...): only the videos
    without a part file are done, to the same manifest; a folder from before settings.json named its root takes
    it from summary.json."""
    full = _rows(prepared)
    for old in (False, True):
        out = tmp_path / f"resume{int(old)}"
        shutil.copytree(prepared, out)
        for p in sorted((out / ".parts").rglob("*.json"))[:2]:
            p.unlink()
        (out / "manifest.csv").unlink()
        if old:
            s = json.loads((out / "settings.json").read_text())
            del s["command"]
            (out / "settings.json").write_text(json.dumps(s))
        assert main(["prepare", "--resume", str(out), "--workers", "1", "--no-progress"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["this_run"]["todo"] == 2 and summary["this_run"]["skipped_complete"] == 28
        assert _rows(out) == full
    assert main(["prepare", "--resume", str(tmp_path / "nothing"), "--no-progress"]) == 2
    assert "no settings.json" in capsys.readouterr().err


def test_resume_out_with_default_workers_and_held_out_generators(ffpp_tree, tmp_path):
    """`prepare --resume OUT` with nothing else: --workers left at auto (it was passed on as the word 'auto'
    and failed), and a folder prepared with --holdout-generators resumes with them (they were not restored,
    so the settings check refused the folder it had made)."""
    out = tmp_path / "held"
    assert _prepare(ffpp_tree, out, "--holdout-generators", "NeuralTextures") == 0
    full = _rows(out)
    next(iter(sorted((out / ".parts").rglob("*.json")))).unlink()
    assert main(["prepare", "--resume", str(out), "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["this_run"]["todo"] == 1
    assert _rows(out) == full


def test_killed_run_resumes_to_the_same_manifest(prepared, ffpp_tree, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dftune", "prepare", str(ffpp_tree), "--out", str(out), "--split-files",
           str(ffpp_tree / "splits"), "--frames", "3", "--detector", "retinaface", "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if (out / ".parts").exists() and len(list((out / ".parts").rglob("*.json"))) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _prepare(ffpp_tree, out) == 0
    assert _rows(out) == _rows(prepared)
    assert not list(out.rglob(".*.tmp-*"))  # the killed run's temporary files are cleaned up


def test_shards_merge_to_the_same_manifest(prepared, ffpp_tree, tmp_path):
    out = tmp_path / "sharded"
    assert _prepare(ffpp_tree, out, "--shard", "1/2") == 0
    first = json.loads((out / "summary.json").read_text())
    assert 0 < first["videos"]["pending"] < 30  # the other shard's share
    assert _prepare(ffpp_tree, out, "--shard", "2/2") == 0
    assert _prepare(ffpp_tree, out, "--merge") == 0
    assert _rows(out) == _rows(prepared)
    assert json.loads((out / "summary.json").read_text())["complete"] is True


def test_corrupt_empty_and_faceless_videos_are_recorded_not_fatal(ffpp_copy, tmp_path, capsys):
    vids = ffpp_copy / "manipulated_sequences"
    bad = vids / "Deepfakes/c23/videos/000_001.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 20)
    empty = vids / "FaceSwap/c23/videos/001_000.mp4"
    empty.write_bytes(b"")
    # a video with no face: the background only
    from dftune.synthetic import _background, write_video

    faceless = vids / "Face2Face/c23/videos/000_001.mp4"
    faceless.unlink()
    write_video(faceless, [_background(0, 320, 240).astype(np.uint8)] * 6)
    out = tmp_path / "out"
    assert _prepare(ffpp_copy, out) == 0
    s = json.loads((out / "summary.json").read_text())
    failed = {f["file"]: f["error"] for f in s["failures"]}
    assert str(bad) in failed and str(bad) in failed[str(bad)]
    assert str(empty) in failed
    assert str(faceless) in s["no_face_videos"]
    assert s["videos"]["done"] == 28 and s["videos"]["failed"] == 2
    assert s["frames"]["no_face"] >= 3
    assert "failed" in capsys.readouterr().out


def test_empty_or_wrong_input_exits_nonzero_with_a_message(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["prepare", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "not a FaceForensics++ root" in capsys.readouterr().err
    assert main(["prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "missing: not a folder" in capsys.readouterr().err
    (tmp_path / "ff" / "original_sequences" / "youtube" / "c23" / "videos").mkdir(parents=True)
    assert main(["prepare", str(tmp_path / "ff"), "--out", str(tmp_path / "o")]) == 2
    assert "no videos found" in capsys.readouterr().err


def test_settings_mismatch_is_refused(prepared, ffpp_tree, tmp_path, capsys):
    out = tmp_path / "m"
    shutil.copytree(prepared, out)
    assert _prepare(ffpp_tree, out, "--margin", "1.5") == 2
    assert "margin" in capsys.readouterr().err


def test_folders_source_with_images_and_videos(ffpp_tree, face_photo, tmp_path):
    root = tmp_path / "mine"
    (root / "real").mkdir(parents=True)
    (root / "fake" / "gan").mkdir(parents=True)
    shutil.copy(ffpp_tree / "original_sequences/youtube/c23/videos/000.mp4", root / "real" / "a.mp4")
    shutil.copy(face_photo, root / "real" / "photo.jpg")
    img = cv2.imread(str(face_photo))
    cv2.imwrite(str(root / "real" / "gray.png"), cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
    shutil.copy(ffpp_tree / "manipulated_sequences/FaceSwap/c23/videos/000_001.mp4", root / "fake" / "gan" / "b.mp4")
    (root / "fake" / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    code = main(["prepare", str(root), "--source", "folders", "--split-by", "random", "--out", str(out),
                 "--frames", "3", "--detector", "retinaface", "--workers", "1", "--no-progress"])
    assert code == 0
    rows = read_manifest(out)
    assert {r.video for r in rows} == {"real/a", "real/photo", "real/gray", "gan/b"}
    assert {r.label for r in rows if r.method == "gan"} == {1}
    s = json.loads((out / "summary.json").read_text())
    assert [f["file"] for f in s["failures"]] == [str(root / "fake" / "broken.jpg")]
    # official split needs FF++ ids: refused with a message
    assert main(["prepare", str(root), "--source", "folders", "--out", str(tmp_path / "o2")]) == 2


def test_landmarks_are_recorded_in_crop_pixels(ffpp_tree, tmp_path):
    out = tmp_path / "lm"
    assert _prepare(ffpp_tree, out, "--landmarks", "--methods", "Deepfakes") == 0
    rows = read_manifest(out)
    pts = rows[0].landmark_points()
    assert len(pts) == 5
    assert all(0 <= x <= 224 and 0 <= y <= 224 for x, y in pts)


def test_help_lists_every_option_with_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    out = capsys.readouterr().out
    assert "{dlib,retinaface,none}" in out
    for opt in ("--frames", "--margin", "--size", "--workers", "--shard", "--merge", "--split-by", "--split-files"):
        assert opt in out
    assert "(default: 10)" in out and "(default: 1.3)" in out


def test_deepfakedetection_is_split_by_actor(ffpp_copy, tmp_path):
    src = ffpp_copy / "original_sequences/youtube/c23/videos/000.mp4"
    act = ffpp_copy / "original_sequences/actors/c23/videos"
    dfd = ffpp_copy / "manipulated_sequences/DeepFakeDetection/c23/videos"
    act.mkdir(parents=True)
    dfd.mkdir(parents=True)
    actors = ("01", "02", "03", "04", "05", "06")  # dealt 4/1/1 by the default ratios
    for a in actors:
        shutil.copy(src, act / f"{a}__walking.mp4")
    fakes = [f"{a}_{b}__walking__ABC" for a, b in zip(actors, actors[1:] + actors[:1], strict=False)]
    for name in fakes:
        shutil.copy(src, dfd / f"{name}.mp4")
    out = tmp_path / "dfd"
    assert _prepare(ffpp_copy, out, "--methods", "DeepFakeDetection", "--actors") == 0
    rows = read_manifest(out)
    by_actor = {}
    for r in rows:
        if r.method == "actors":
            assert by_actor.setdefault(r.target_id, r.split) == r.split
    assert len(by_actor) == 6 and set(by_actor.values()) == {"train", "val", "test"}
    kept = {r.video_id for r in rows if r.method == "DeepFakeDetection"}
    for r in rows:
        if r.method == "DeepFakeDetection":
            assert by_actor[r.target_id] == by_actor[r.source_id] == r.split
    summary = json.loads((out / "summary.json").read_text())
    dropped = {Path(e["file"]).stem for e in summary["excluded"] if "different splits" in e["error"]}
    assert kept and dropped and kept | dropped == set(fakes) and not kept & dropped
    assert any(f"{len(dropped)} fakes dropped" in w["error"] for w in summary["warnings"])
