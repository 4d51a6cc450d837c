"""--detect-every K: the detector on every K-th sampled frame (and the last), a person's box interpolated between;
one implementation (portable.video_people) that prepare, predict and the script apply through the crop settings."""

from __future__ import annotations

import csv
import runpy
from pathlib import Path

import numpy as np
import pytest

from dftune import portable
from dftune.portable import Face

torch = pytest.importorskip("torch")
pytest.importorskip("dlib")


class Counting:
    """A detector whose faces are given per frame (the frame's first pixel names it); it counts its calls."""

    def __init__(self, boxes):
        self.boxes, self.calls = boxes, []

    def detect(self, rgb):
        t = int(np.asarray(rgb)[0, 0, 0])
        self.calls.append(t)
        return [Face(*b) for b in self.boxes[t]]


def frames_named(n):
    out = []
    for t in range(n):
        a = np.zeros((200, 300, 3), np.uint8)
        a[0, 0, 0] = t
        out.append(a)
    return out


def test_positions_and_interpolation():
    assert portable.detected_positions(10, 1) == list(range(10))
    assert portable.detected_positions(10, 3) == [0, 3, 6, 9]
    assert portable.detected_positions(10, 4) == [0, 4, 8, 9]
    assert portable.detected_positions(1, 5) == [0]
    with pytest.raises(ValueError, match="detect-every"):
        portable.detected_positions(10, 0)
    with pytest.raises(ValueError, match="detect-every"):
        portable.crop_settings({}, {"detect_every": 0})
    # one face moving right 10 px a frame; a second one only in frame 0 (a stray box: no person)
    boxes = [[(10 + 10 * t, 20, 90 + 10 * t, 100)] + ([(200, 100, 240, 140)] if t == 0 else []) for t in range(7)]
    det = Counting(boxes)
    people = portable.video_people(frames_named(7), det, "all", 3)
    assert det.calls == [0, 3, 6]  # the others never reach the detector
    assert len(people) == 1
    assert [(f.x1, f.x2) for f in people[0]] == [(10 + 10 * t, 90 + 10 * t) for t in range(7)]  # linear motion back
    # 1: every frame detected, the same people as before the option (persons over every frame's faces)
    det1 = Counting(boxes)
    assert portable.video_people(frames_named(7), det1, "all", 1) == portable.persons(
        [[Face(*b) for b in bs] for bs in boxes])
    assert det1.calls == list(range(7))


def test_a_face_missed_on_one_side_is_not_carried():
    boxes = [[(10, 20, 90, 100)], [], [], [], [], [(12, 20, 92, 100)], [(14, 20, 94, 100)]]
    follow = portable.video_people(frames_named(7), Counting(boxes), "follow", 2)[0]  # looks at 0, 2, 4, 6
    assert follow[1] is None and follow[3] is None and follow[5] is None  # 2 and 4 found nobody
    assert follow[0] is not None and follow[6] is not None
    # largest: carried only between boxes one track could join (never from one person to another far away)
    jump = [[(10, 20, 90, 100)], [], [(200, 20, 280, 100)]]
    largest = portable.video_people(frames_named(3), Counting(jump), "largest", 2)[0]
    assert largest[1] is None


def moving_video(path: Path, seed: int = 0, n: int = 14):
    from dftune import synthetic

    ph, bg = synthetic.identity(seed), synthetic._background(seed, 320, 240)
    synthetic.write_video(path, [synthetic.render_frame(ph.rgb, ph.face, bg, k / (n - 1), motion_seed=seed)[0]
                                 for k in range(n)])
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from dftune.model import meta as modelmeta
    from dftune.model.load import build_tiny_vit
    from dftune.stages import export

    root = tmp_path_factory.mktemp("every")
    inputs = root / "in"
    inputs.mkdir()
    for s in (0, 1):
        moving_video(inputs / f"v{s}.mp4", s)
    model = build_tiny_vit(root / "model", {0: "real", 1: "fake"}, image_size=32, seed=3)
    meta = modelmeta.load(model, {0: "real", 1: "fake"})
    meta.crop.detector, meta.crop.frames, meta.crop.size, meta.crop.detect_every = "dlib", 7, 48, 3
    modelmeta.save(model, meta)
    submit = root / "submit"
    export.run(model, submit, export.ExportSettings(bench_seconds=0, n_samples=2))
    return {"model": model, "submit": submit, "inputs": inputs}


def predict(env, out: Path, *args) -> bytes:
    from dftune.cli import main

    assert main(["predict", str(env["inputs"]), "--model", str(env["submit"]), "--out", str(out), "--no-progress",
                 "--tta", "none", *args]) == 0
    return out.read_bytes()


def test_every_frame_gives_the_crops_of_before(env):
    """--detect-every 1: each frame detected and framed exactly as frame_file did before the option."""
    det = portable.get_detector("dlib")
    path = env["inputs"] / "v0.mp4"
    rgbs = [rgb for _, rgb in portable.sample_frames(path, 7)]
    before = []
    for person in portable.persons([portable.detect_faces(r, det) for r in rgbs]):  # the rule before the option
        before += [portable.frame_face(r, f, 1.3, 48)[0] for r, f in zip(rgbs, person, strict=True) if f is not None]
    now = portable.frame_file(path, "video", det, 1.3, 48, 7, detect_every=1).crops
    assert len(now) == len(before) == 7 and all(np.array_equal(a, b) for a, b in zip(now, before, strict=True))
    three = portable.frame_file(path, "video", det, 1.3, 48, 7, detect_every=3).crops
    assert len(three) == 7
    for t in (0, 3, 6):  # the detected frames are framed as before
        assert np.array_equal(three[t], before[t])


def test_predict_workers_and_script_agree_with_the_models_detect_every(env, tmp_path):
    """dftune.json's detect_every 3 is applied by predict in process, by its workers and by the script, alike;
    --detect-every 1 on the command line overrides it."""
    a = predict(env, tmp_path / "a.csv", "--workers", "0")
    b = predict(env, tmp_path / "b.csv", "--workers", "2")
    assert a == b
    mod = runpy.run_path(str(env["submit"] / "predict_submission.py"))
    for n in (0, 2):
        assert mod["main"]([str(env["inputs"]), "--out", str(tmp_path / f"s{n}.csv"), "--workers", str(n),
                            "--tta", "none"]) == 0
        assert (tmp_path / f"s{n}.csv").read_bytes() == a
    one = predict(env, tmp_path / "one.csv", "--workers", "0", "--detect-every", "1")
    assert mod["main"]([str(env["inputs"]), "--out", str(tmp_path / "s1.csv"), "--workers", "0", "--tta", "none",
                        "--detect-every", "1"]) == 0
    assert (tmp_path / "s1.csv").read_bytes() == one
    rows = {r["filename"]: r for r in csv.DictReader(a.decode().splitlines())}
    assert rows["v0.mp4"]["frames"] == "7" and rows["v0.mp4"]["faces_found"] == "7"


def test_prepare_records_and_applies_detect_every(ffpp_copy, tmp_path):
    from dftune.model.meta import CropSettings
    from dftune.stages import prepare

    out = tmp_path / "p"
    cfg = prepare.PrepareConfig(root=ffpp_copy, out=out, methods=(), frames=7, size=48,
                                detect_every=3, workers=1, progress=False)
    prepare.run(cfg)
    settings = portable_json(out / "settings.json")
    assert settings["detect_every"] == 3 and CropSettings.from_dict(settings).detect_every == 3  # -> dftune.json
    assert "detect_every" not in prepare.PrepareConfig(root=ffpp_copy, out=out).crop_settings()  # old folders resume
    rows = list(csv.DictReader((out / "manifest.csv").read_text().splitlines()))
    first = rows[0]
    mine = [r for r in rows if r["video"] == first["video"]]
    src = next(ffpp_copy.rglob(f"{first['video_id']}.mp4"))
    rgbs = [rgb for _, rgb in portable.sample_frames(src, 7)]
    faces = portable.video_people(rgbs, portable.get_detector("dlib"), "follow", 3)[0]
    want = [portable.frame_face(r, f, 1.3, 48)[2] for r, f in zip(rgbs, faces, strict=True) if f is not None]
    assert [(int(r["box_x"]), int(r["box_y"]), int(r["box_size"])) for r in mine] == [tuple(b) for b in want]


def portable_json(path):
    import json

    return json.loads(Path(path).read_text())
