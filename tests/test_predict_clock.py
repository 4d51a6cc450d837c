"""predict and the submission script on a competition's clock: files framed in worker processes give the
same CSV bytes as one worker, the contest's two-column CSV, requirements.txt and the one-line install
check, and a rehearsal of the whole path where dftune cannot be imported (workers included)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("dlib")

from dftune.cli import main  # noqa: E402
from dftune.model import meta as modelmeta  # noqa: E402
from dftune.model.load import build_tiny_vit  # noqa: E402
from dftune.portable import kind_of, workers  # noqa: E402
from dftune.stages import export  # noqa: E402

NO_DFTUNE = "import sys, runpy; sys.modules['dftune'] = None; sys.argv = sys.argv[1:]; " \
            "runpy.run_path(sys.argv[0], run_name='__main__')"
FILES = ["broken.jpg", "broken.mp4", "clip.mp4", "face.jpg", "face.png", "noface.png", "still.mp4"]


def make_flat(root: Path) -> Path:
    """A flat folder of jpg/png/mp4 as contests give them, with a corrupt image and video."""
    from PIL import Image
    from skimage import data

    from dftune import synthetic

    a = data.astronaut()[:320, 60:380]
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(root / "face.png")
    Image.fromarray(a).save(root / "face.jpg", quality=90)
    Image.fromarray(np.full((90, 120, 3), 128, np.uint8)).save(root / "noface.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00 not a video")
    for name, seed in (("clip.mp4", 0), ("still.mp4", 1)):
        ph, bg = synthetic.identity(seed), synthetic._background(seed, 160, 120)
        frames = [synthetic.render_frame(ph.rgb, ph.face, bg, k / 9, motion_seed=seed)[0] for k in range(10)]
        synthetic.write_video(root / name, frames)
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("clock")
    model = build_tiny_vit(root / "model", {0: "Realism", 1: "Deepfake"}, image_size=32, seed=3)
    meta = modelmeta.load(model, {0: "Realism", 1: "Deepfake"})
    meta.crop.detector, meta.crop.frames, meta.crop.size = "dlib", 3, 48
    modelmeta.save(model, meta)
    submit = root / "submit"
    export.run(model, submit, export.ExportSettings(bench_seconds=0, n_samples=2))
    return {"model": model, "submit": submit, "inputs": make_flat(root / "test")}


def predict(env, out: Path, *args) -> bytes:
    assert main(["predict", str(env["inputs"]), "--model", str(env["submit"]), "--csv", str(out), "--no-progress",
                 *args]) == 0
    return out.read_bytes()


def test_predict_csv_bytes_do_not_depend_on_workers(env, tmp_path):
    one = predict(env, tmp_path / "w1.csv", "--workers", "1")
    two = predict(env, tmp_path / "w2.csv", "--workers", "2")
    assert one == two
    rows = list(csv.DictReader(one.decode().splitlines()))
    assert [r["filename"] for r in rows] == FILES
    assert rows[0]["error"] and rows[1]["error"] and not rows[2]["error"]


def test_script_csv_bytes_do_not_depend_on_workers(env, tmp_path):
    import runpy

    mod = runpy.run_path(str(env["submit"] / "predict_submission.py"))
    for n in (1, 2):
        assert mod["main"]([str(env["inputs"]), "--out", str(tmp_path / f"s{n}.csv"), "--workers", str(n)]) == 0
    assert (tmp_path / "s1.csv").read_bytes() == (tmp_path / "s2.csv").read_bytes()
    rows = list(csv.DictReader((tmp_path / "s1.csv").read_text().splitlines()))
    assert [r["filename"] for r in rows] == FILES and rows[1]["error"]


def test_the_model_leaves_the_framing_its_cores(env, monkeypatch):
    """While the model waits for files framed beside it (a thread, or N worker processes), it runs on the cores
    left, max(1, cores - N); when the next file is ready it gets torch's count back, and that count is restored
    after: torch's default, every core, made framing and model threads outnumber the cores (and its OpenMP
    threads spin between operations)."""
    from dftune import scoring
    from dftune.stages import predict as P

    before = torch.get_num_threads()
    monkeypatch.setattr(workers, "default_workers", lambda: 4)
    torch.set_num_threads(4)
    try:
        with workers.ModelThreads(3, patience=2) as t:
            assert torch.get_num_threads() == 1  # framing beside: its cores
            t.waited(0.0)
            assert torch.get_num_threads() == 1  # one file ready is no full read-ahead yet
            t.waited(0.0)
            assert torch.get_num_threads() == 4  # two in a row: the model is the slow side, the framing idle
            t.waited(0.5)
            assert torch.get_num_threads() == 1  # it waited: the framing is the slow side again
        assert torch.get_num_threads() == 4
        with workers.ModelThreads(0) as t:  # nothing frames beside the model
            t.waited(1.0)
            assert torch.get_num_threads() == 4
        monkeypatch.undo()
        seen, real = [], scoring.ensemble_prob_fake

        def watched(*args, **kwargs):
            seen.append(torch.get_num_threads())
            return real(*args, **kwargs)

        models = scoring.load_models([str(env["submit"])], device="cpu")
        items = P.collect_inputs([env["inputs"]])
        cores = workers.default_workers()
        monkeypatch.setattr(scoring, "ensemble_prob_fake", watched)
        for w in (0, 2):  # a 32 px model waits for every file: framing is the slow side
            seen.clear()
            torch.set_num_threads(cores)
            P.score_files(models, items, P.PredictSettings(workers=w, progress=False, tta=()))
            assert max(1, cores - max(1, w)) in seen, (w, seen)
            assert torch.get_num_threads() == cores
    finally:
        torch.set_num_threads(before)


def test_frame_files_in_order_with_errors(env):
    jobs = [(env["inputs"] / f, kind_of(f)) for f in FILES] * 2
    spec = workers.FrameSpec("dlib", 1.3, 48, 3, 0, 0.5)
    a = list(workers.frame_files(spec, jobs, 0))
    b = list(workers.frame_files(spec, jobs, 2))
    assert [i for _, i in a] == [i for _, i in b]
    for (ca, _), (cb, _) in zip(a, b, strict=True):
        assert len(ca) == len(cb) and all(np.array_equal(x, y) for x, y in zip(ca, cb, strict=True))
    assert "broken.jpg" in a[0][1]["error"] and a[0][0] == []


def check_contest_csv(text: str, error_label: str = "0") -> dict:
    lines = text.splitlines()
    assert lines[0] == "filename,label"
    rows = dict(line.split(",") for line in lines[1:])
    assert list(rows) == FILES and set(rows.values()) <= {"0", "1"}
    assert rows["broken.jpg"] == rows["broken.mp4"] == error_label
    return rows


def test_contest_format_predict_and_script(env, tmp_path):
    import runpy

    ours = predict(env, tmp_path / "p.csv", "--format", "filename,label", "--error-label", "fake",
                   "--label-words", "real,fake", "--workers", "0").decode()
    check_contest_csv(ours, "1")
    mod = runpy.run_path(str(env["submit"] / "predict_submission.py"))
    assert mod["main"]([str(env["inputs"]), "--out", str(tmp_path / "s.csv"), "--format", "filename,label",
                        "--error-label", "fake", "--workers", "0"]) == 0
    assert (tmp_path / "s.csv").read_text() == ours


def test_requirements_and_install_check(env, tmp_path):
    req = (env["submit"] / "requirements.txt").read_text()
    names = [line.split("#")[0].strip() for line in req.splitlines() if line.split("#")[0].strip()]
    assert [n.split(">")[0] for n in names] == ["numpy", "Pillow", "av", "opencv-python-headless", "transformers",
                                                "dlib-bin"]
    assert "torch" not in req.split("#", 2)[-1].split() and "retinaface" not in req
    hide = "import sys, runpy; sys.modules['av'] = None; sys.modules['dlib'] = None; sys.argv = sys.argv[1:]; " \
           "runpy.run_path(sys.argv[0], run_name='__main__')"
    r = subprocess.run([sys.executable, "-c", hide, str(env["submit"] / "predict_submission.py"), str(env["inputs"]),
                        "--out", str(tmp_path / "x.csv")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "av (pip install 'av>=10')" in lines[0] and "dlib (pip install 'dlib-bin" in lines[0]
    assert not (tmp_path / "x.csv").exists()
    assert "retinaface" in export.requirements_text(["retinaface"]) and "onnxruntime" in \
        export.requirements_text(["retinaface"])


@pytest.mark.slow
def test_rehearsal_fresh_environment_two_workers(env, tmp_path):
    """Export, then the script where `import dftune` fails in it and in its worker processes, on the flat
    folder with --workers 2 --format filename,label: a row per file, the CSV equal to predict's."""
    fake = tmp_path / "nodftune" / "dftune"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('dftune is not installed here')\n")
    import os

    env_vars = {**os.environ, "PYTHONPATH": str(fake.parent)}
    out = tmp_path / "submission.csv"
    r = subprocess.run([sys.executable, "-c", NO_DFTUNE, str(env["submit"] / "predict_submission.py"),
                        str(env["inputs"]), "--out", str(out), "--workers", "2", "--format", "filename,label"],
                       capture_output=True, text=True, timeout=300, env=env_vars, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ours = predict(env, tmp_path / "ours.csv", "--workers", "2", "--format", "filename,label").decode()
    check_contest_csv(out.read_text())
    assert out.read_text() == ours


def test_no_face_rule_predict_and_script_agree(env, tmp_path):
    """--no-face real/fake: a file with no face found (the flat grey image) gets that label and its value as
    prob_fake, decided once (portable.no_face_decision) for predict and the script alike; other rows unchanged."""
    import runpy

    from dftune.portable import FRAMED_NO_FACE
    from dftune.stages import predict as stage

    mod = runpy.run_path(str(env["submit"] / "predict_submission.py"))
    contest = ("--format", "filename,label", "--workers", "0")
    for rule, word in (("real", "0"), ("fake", "1")):
        ours = predict(env, tmp_path / f"p_{rule}.csv", "--no-face", rule, *contest).decode()
        assert check_contest_csv(ours)["noface.png"] == word
        assert mod["main"]([str(env["inputs"]), "--out", str(tmp_path / f"s_{rule}.csv"), "--no-face", rule,
                            *contest]) == 0
        assert (tmp_path / f"s_{rule}.csv").read_text() == ours
    full = {r["filename"]: r for r in csv.DictReader(
        predict(env, tmp_path / "fake.csv", "--no-face", "fake", "--workers", "0").decode().splitlines())}
    scored = {r["filename"]: r for r in csv.DictReader(
        predict(env, tmp_path / "score.csv", "--workers", "0").decode().splitlines())}
    assert full["noface.png"]["framing"] == FRAMED_NO_FACE and full["noface.png"]["prob_fake"] == "1.000000"
    assert scored["noface.png"]["prob_fake"] != "1.000000"  # the default still scores the centred square
    assert {n: r for n, r in full.items() if n != "noface.png"} == {n: r for n, r in scored.items()
                                                                    if n != "noface.png"}
    rows = mod["Predictor"](env["submit"], no_face="fake").predict_paths([env["inputs"] / "noface.png"], workers=0)
    assert (rows[0].prob_fake, rows[0].label, rows[0].framing) == (1.0, 1, FRAMED_NO_FACE)
    one = mod["Predictor"](env["submit"], no_face="real").predict_file(env["inputs"] / "noface.png")
    assert (one["prob_fake"], one["label"], one["framing"]) == (0.0, 0, FRAMED_NO_FACE)
    sm = stage.run([str(env["inputs"])], [str(env["submit"])], stage.PredictSettings(no_face="real", progress=False,
                                                                                      workers=0),
                   tmp_path / "x.csv", stage.CsvFormat())
    assert sm.decided_no_face == 1 and sm.no_face == 1 and sm.no_face_rule == "real"


def test_no_face_decision_is_one_rule():
    from dftune import portable

    assert portable.no_face_decision(0.7, 1, portable.FRAMED_NO_FACE, "score") == (0.7, 1)
    assert portable.no_face_decision(0.7, 1, portable.FRAMED_NO_FACE, "real") == (0.0, 0)
    assert portable.no_face_decision(0.2, 0, portable.FRAMED_NO_FACE, "fake") == (1.0, 1)
    for framing in (portable.FRAMED_FACE, portable.FRAMED_AS_IS, portable.FRAMED_CROPPED):  # a face, or no detector
        assert portable.no_face_decision(0.7, 1, framing, "real") == (0.7, 1)
    with pytest.raises(ValueError, match="unknown no-face rule 'maybe'"):
        portable.no_face_decision(0.7, 1, portable.FRAMED_NO_FACE, "maybe")
