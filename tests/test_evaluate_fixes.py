"""evaluate's fixes: --labels conflicts are errors (exact duplicates counted), BOM and ';' files, absolute
paths in --labels, report.html for --files, the cross-dataset warning, one-class datasets and vals said
out loud, a moved ensemble named, the histogram's colours, one gallery frame per video, the shift drawn
on the cross-dataset page, and one writer under torchrun."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from dftune.cli import main  # noqa: E402
from dftune.model.load import build_tiny_vit  # noqa: E402
from dftune.prepared import read_manifest, write_manifest  # noqa: E402
from dftune.stages import evaluate  # noqa: E402
from dftune.stages.evaluate_files import evaluate_files  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from dftune.synthetic import make_crops

    root = tmp_path_factory.mktemp("fixes")
    a = make_crops(root / "a", n_videos=4, frames=3, size=32).parent
    b = make_crops(root / "b", n_videos=4, frames=3, size=32, seed=5, methods=("Face2Face",)).parent
    reals = _only_reals_in(a, root / "reals", "test")  # a dataset of one class: its test split holds reals only
    m = build_tiny_vit(root / "m", image_size=32, seed=0)
    m2 = build_tiny_vit(root / "m2", {0: "Deepfake", 1: "Real"}, image_size=32, seed=3)
    return {"root": root, "a": a, "b": b, "reals": reals, "m": m, "m2": m2}


def _only_reals_in(data: Path, dest: Path, split: str) -> Path:
    """A copy of a prepared folder whose ``split`` keeps its reals only."""
    shutil.copytree(data, dest)
    rows = read_manifest(dest)
    write_manifest(dest / "manifest.csv", [r for r in rows if r.label == 0 or r.split != split])
    return dest


# ---------------------------------------------------------------- --labels


def _csv(path: Path, text: str, encoding="utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def test_conflicting_labels_are_an_error_naming_the_file_and_its_lines(tmp_path):
    labels = _csv(tmp_path / "l.csv", "filename,label\na.jpg,fake\nb.jpg,0\na.jpg,real\n")
    with pytest.raises(ValueError, match=r"'a\.jpg' on lines 2 \(fake\), 4 \(real\)"):
        evaluate.read_labels(labels)


def test_the_command_refuses_conflicting_labels(env, tmp_path, capsys):
    labels = _csv(tmp_path / "l.csv", "filename,label\nx.jpg,1\nx.jpg,0\n")
    assert main(["evaluate", "--model", str(env["m"]), "--files", str(tmp_path), "--labels", str(labels)]) == 2
    err = capsys.readouterr().err
    assert "x.jpg" in err and "lines 2 (1), 3 (0)" in err and str(labels) in err


def test_a_byte_order_mark_is_read_past_and_semicolons_are_named(tmp_path):
    bom = _csv(tmp_path / "bom.csv", "filename,label\na.jpg,1\n", encoding="utf-8-sig")
    assert evaluate.read_labels(bom) == {"a.jpg": 1}
    semi = _csv(tmp_path / "semi.csv", "filename;label\na.jpg;1\n")
    with pytest.raises(ValueError, match=r"separated by ';'\? use commas"):
        evaluate.read_labels(semi)
    rows = _csv(tmp_path / "rows.csv", "filename,label\na.jpg,1\nb.jpg;0\n")
    with pytest.raises(ValueError, match=r"line 3: .*separated by ';'\? use commas"):
        evaluate.read_labels(rows)


def _fake_scoring(monkeypatch):
    """predict's scoring replaced by known scores: 'fake' in the name scores high."""
    from dftune.portable import FileResult
    from dftune.stages import predict

    def score_files(ens, items, ps, threshold=None):
        return [FileResult(f.name, str(f.path), f.kind, prob_fake=0.8 if "fake" in f.name else 0.2,
                           faces_found=1, frames=1) for f in items]

    monkeypatch.setattr(predict, "score_files", score_files)


def test_files_duplicates_collapse_absolute_paths_match_and_report_html_is_written(env, tmp_path, monkeypatch):
    from PIL import Image

    _fake_scoring(monkeypatch)
    d = tmp_path / "check"
    d.mkdir()
    for n in ("real_1.png", "real_2.png", "fake_1.png", "fake_2.png"):
        Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(d / n)
    labels = _csv(tmp_path / "l.csv", "filename,label\nreal_1.png,0\nreal_1.png,0\n"
                  f"{(d / 'real_2.png').resolve()},0\nfake_1.png,1\n{(d / 'fake_2.png').resolve()},fake\n")
    res = evaluate_files([str(env["m"])], [str(d)], labels, tmp_path / "ev",
                                  evaluate.EvalSettings(progress=False))
    assert res.files == 4 and res.missing == [] and res.unlabelled == []  # absolute paths matched
    assert res.duplicate_label_rows == 1
    assert res.at_05["auc"] == pytest.approx(1.0)
    page = (tmp_path / "ev" / "report.html").read_text()
    assert "ROC" in page and page.count("<img ") == 2 and "<table>" in page
    assert "repeat an earlier row" in (tmp_path / "ev" / "report.md").read_text()
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["duplicate_label_rows"] == 1


# ---------------------------------------------------------------- a moved ensemble


def test_a_moved_ensemble_names_its_member_relative_to_the_file(env, tmp_path):
    from dftune import scoring

    home = tmp_path / "home"
    home.mkdir()
    shutil.copytree(env["m"], home / "a")
    f = scoring.write_ensemble(home / "ens" / "ensemble.json", [(str(home / "a"), 1.0)], 0.5, {"by": "default"})
    moved = tmp_path / "elsewhere" / "deeper"
    moved.mkdir(parents=True)
    shutil.move(str(f), moved / "ensemble.json")
    with pytest.raises(FileNotFoundError, match=r"member '\.\./a' \(a path relative to ensemble\.json\)"):
        scoring.load_ensemble([str(moved / "ensemble.json")], device="cpu")


# ---------------------------------------------------------------- the report


def test_real_gets_a_colour_no_method_gets():
    from matplotlib.colors import to_rgb

    from dftune.plots import _plt, draw_histogram

    fig, ax = _plt().subplots()
    methods = ["original"] * 4 + ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"] * 2
    y = np.array([0] * 4 + [1] * 8)
    draw_histogram(ax, y, np.linspace(0, 1, 12), methods, 0.4, "t")
    colours = {}
    for patch in ax.patches:
        colours.setdefault(patch.get_label(), to_rgb(patch.get_facecolor()))
    real = [c for lab, c in colours.items() if lab.startswith("real")]
    others = [c for lab, c in colours.items() if lab and not lab.startswith("real") and not lab.startswith("_")]
    _plt().close(fig)
    assert len(real) == 1 and len(others) == 4 and real[0] not in others


@pytest.fixture(scope="module")
def single(env):
    out = env["root"] / "ev"
    evaluate.run([str(env["m"])], env["a"], out, evaluate.EvalSettings(progress=False))
    return out / "report.html"


def test_the_gallery_groups_each_misclassified_videos_worst_crops_under_it(single):
    """Issue 28: every video wrong at the stored threshold, once, with up to three of its own crops (it was one
    crop per video, so a video's other frames never showed)."""
    text = single.read_text()
    gallery = text.split("The errors at the stored threshold")[1]
    blocks = re.split(r"<p>", gallery)[1:]
    assert blocks
    heads = [b.split(":")[0] for b in blocks]
    assert len(heads) == len(set(heads))
    for head, block in zip(heads, blocks, strict=True):
        videos = re.findall(r"<div>([^<]+) frame \d+<br>", block)
        assert videos and set(videos) == {head} and len(videos) <= 3, (head, videos)


@pytest.fixture(scope="module")
def cross(env):
    out = env["root"] / "cross"
    logs = []
    handler = logging.Handler()
    handler.emit = logs.append
    logging.getLogger("dftune").addHandler(handler)
    try:
        res = evaluate.cross_dataset([str(env["m"]), str(env["m2"])], [str(env["a"]), str(env["b"]),
                                     str(env["reals"])], out, evaluate.EvalSettings(progress=False))
    finally:
        logging.getLogger("dftune").removeHandler(handler)
    return res, out, [r.getMessage() for r in logs]


def test_several_datasets_raise_no_warning_about_tuning_on_the_measured_split(cross):
    assert not [m for m in cross[2] if "tuned on the split being measured" in m], cross[2]


def test_a_one_class_dataset_is_left_out_of_every_mean_and_that_is_said(cross):
    res, out, _ = cross
    for model in ("m", "m2"):
        mine = {r["dataset"]: r for r in res.table if r["model"] == model}
        assert mine["mean"]["left_out"] == ["reals"]
        for k in ("f1_0.5", "video_auc"):
            assert mine["mean"][k] == pytest.approx(np.mean([mine["a"][k], mine["b"][k]]))
    assert "left out of every mean" in (out / "report.md").read_text()
    assert "left out of every mean" in (out / "report.html").read_text()
    page = (out / "reals" / "report.html").read_text()
    assert "AUC undefined: one class" in page and "none: this split has no fake crops" in page


def test_the_cross_page_draws_the_shift_for_each_dataset(cross):
    res, out, _ = cross
    text = (out / "report.html").read_text()
    assert "The shift, per dataset" in text
    for ds in ("a", "b", "reals"):
        sec = text.split(f"<h3 id='shift-{ds}'>")[1].split("</div>")[0]
        assert f"alt='histogram {ds} m'" in sec and f"alt='histogram {ds} m2'" in sec
        assert (f"alt='roc {ds}'" in sec) != ("AUC undefined: one class" in sec)
    assert "alt='roc a'" in text and "alt='roc b'" in text
    assert all(s.startswith("data:image/png;base64,") for s in re.findall(r"<img[^>]*src='([^']*)'", text))


def test_the_histogram_draws_the_transferred_threshold(env):
    """histogram_figure's line is the threshold it is given, labelled as the transferred one."""
    from dftune.plots import _plt, draw_histogram

    fig, ax = _plt().subplots()
    draw_histogram(ax, np.array([0, 1]), np.array([0.2, 0.7]), ["original", "Deepfakes"], 0.31, "t",
                   "transferred threshold")
    labels = [ln.get_label() for ln in ax.get_lines()]
    xs = [ln.get_xdata()[0] for ln in ax.get_lines()]
    _plt().close(fig)
    assert "transferred threshold = 0.310" in labels and 0.31 in xs


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed: the page is not opened")
def test_the_cross_page_renders_in_chromium(cross, tmp_path):
    path = cross[1] / "report.html"
    n_imgs = path.read_text().count("<img ")
    r = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                        "--v=0", "--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'profile'}",
                        "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f'data-images="ok {n_imgs}"' in r.stdout, re.findall(r'data-images="[^"]*"', r.stdout)
    assert not [ln for ln in r.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert "The shift, per dataset" in r.stdout


def test_a_one_class_val_says_it_tuned_nothing(env, tmp_path):
    reals_val = _only_reals_in(env["a"], tmp_path / "rv", "val")
    res = evaluate.cross_dataset([str(env["m"])], [str(reals_val), str(env["b"])], None,
                                 evaluate.EvalSettings(progress=False, plots=False))
    assert res.thresholds["m"]["frame"] == 0.5
    from dftune import report

    notes = report.cross_notes(res)
    assert any("no threshold can be tuned on it, 0.5 is used" in n for n in notes), notes


# ---------------------------------------------------------------- several processes


@pytest.mark.slow
def test_torchrun_writes_one_metrics_file_equal_to_a_single_process_run(env, tmp_path):
    environ = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    environ.pop("ACCELERATE_USE_CPU", None)
    args = ["evaluate", "--model", str(env["m"]), "--data", str(env["a"]), "--no-progress", "--no-plots",
            "--device", "cpu"]
    one = subprocess.run([sys.executable, "-m", "dftune", *args, "--out", str(tmp_path / "one")], env=environ,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "dftune", *args, "--out", str(tmp_path / "two")], env=environ,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    said = two.stdout + two.stderr
    assert said.count("metrics:") == 1 and said.count("dftune evaluate: test split") == 1  # one wrote, one printed
    a = json.loads((tmp_path / "one" / "metrics.json").read_text())
    b = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert a == b
