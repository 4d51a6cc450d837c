"""One image path across stages: evaluate scores videos through predict's path and agrees with its
crops; an ensemble is a first-class model set with its own tuned threshold (evaluate writes it,
predict and export load it, the standalone script gives the same CSV); predict says where its
threshold came from; export checks on the model's own val crops and through transformers.pipeline,
and ships dftune's portable module byte for byte."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from conftest import NO_DFTUNE  # noqa: E402  (runs a script with `import dftune` made impossible)
from dftune.cli import main  # noqa: E402
from dftune.model import meta as modelmeta  # noqa: E402
from dftune.model.load import build_tiny_vit  # noqa: E402


@pytest.fixture(scope="module")
def env(ffpp_tree, tmp_path_factory):
    root = tmp_path_factory.mktemp("onepath")
    data = root / "data"
    assert main(["prepare", str(ffpp_tree), "--out", str(data), "--split-files", str(ffpp_tree / "splits"),
                 "--detector", "retinaface", "--size", "48",
                 "--frames", "4", "--workers", "1", "--no-progress"]) == 0
    settings = json.loads((data / "settings.json").read_text())
    models = {}
    for name, labels, seed in (("a", {0: "Realism", 1: "Deepfake"}, 0), ("b", {0: "Deepfake", 1: "Real"}, 3)):
        d = build_tiny_vit(root / name, labels, image_size=32, seed=seed)
        meta = modelmeta.load(d, labels)
        meta.crop = modelmeta.CropSettings.from_dict(settings)
        meta.extra["data"] = str(data.resolve())
        modelmeta.save(d, meta)
        models[name] = d
    return {"root": root, "data": data, "tree": ffpp_tree, **models}


def test_from_videos_scores_through_predicts_path_and_agrees_with_the_crops(env, tmp_path):
    from dftune.stages import evaluate

    res = evaluate.run([str(env["a"])], env["data"], tmp_path / "ev",
                       evaluate.EvalSettings(from_videos=True, progress=False, plots=False))
    fv = res.from_videos["models"]["a"]
    assert res.from_videos["videos"] >= 5 and res.from_videos["errors"] == 0
    assert fv["compared_with_crops"] == res.models["a"]["video"]["n_videos"]
    # same frames, same crop; only the JPEG round trip of the crops on disk differs
    assert fv["mean_abs_diff"] < 0.02 and fv["label_agreement_at_0.5"] >= 0.8
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "## evaluate and predict" in report and "mean |Δp|" in report


def _predict(args, capsys):
    rc = main(["predict", *args, "--no-progress"])
    return rc, capsys.readouterr().out  # the summary table: stdout


def test_ensemble_is_written_loaded_exported_and_scripted(env, tmp_path, capsys):
    ev = tmp_path / "ev"
    assert main(["evaluate", "--model", str(env["a"]), "--model", str(env["b"]), "--data", str(env["data"]),
                 "--ensemble", "--write-threshold", "--out", str(ev), "--no-plots", "--no-progress"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    ens = json.loads((ev / "ensemble.json").read_text())
    t = metrics["models"]["ensemble"]["val_threshold"]["frame"]
    assert ens["threshold"] == pytest.approx(t) and ens["threshold_source"]["by"] == "evaluate"
    assert [m["weight"] for m in ens["members"]] == [1.0, 1.0]
    capsys.readouterr()
    videos = env["tree"] / "manipulated_sequences" / "Deepfakes" / "c23" / "videos"
    out = tmp_path / "p.csv"
    rc, err = _predict([str(videos), "--model", str(ev / "ensemble.json"), "--csv", str(out)], capsys)
    assert rc == 0 and f"{t:.4f} (tuned for macro F1 by evaluate" in err
    rows = list(csv.DictReader(open(out)))
    assert rows and all(r["label"] == str(int(float(r["prob_fake"]) >= t)) for r in rows)
    # export the ensemble: members checked and copied, ensemble.json and the script at the top
    sub = tmp_path / "submit"
    assert main(["export", "--model", str(ev), "--out", str(sub), "--bench-seconds", "0"]) == 0
    assert (sub / "ensemble.json").exists() and len(list((sub / "members").iterdir())) == 2
    theirs = tmp_path / "theirs.csv"
    r = subprocess.run([sys.executable, "-c", NO_DFTUNE, str(sub / "predict_submission.py"), str(videos),
                        "--out", str(theirs)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tuned for macro F1 by evaluate" in r.stderr
    mine = {row["filename"]: row for row in rows}
    for row in csv.DictReader(open(theirs)):
        assert row["label"] == mine[row["filename"]]["label"]
        assert float(row["prob_fake"]) == pytest.approx(float(mine[row["filename"]]["prob_fake"]), abs=2e-6)


def test_predict_says_where_the_threshold_came_from(env, tmp_path, capsys):
    import shutil

    img_dir = env["data"] / "test" / "real"
    model = shutil.copytree(env["b"], tmp_path / "b")  # another test writes thresholds into env's models
    meta = modelmeta.load(model, {0: "Deepfake", 1: "Real"})
    meta.threshold, meta.threshold_source = 0.5, {"by": "default"}
    modelmeta.save(model, meta)
    rc, err = _predict([str(img_dir), "--model", str(model), "--csv", str(tmp_path / "x.csv")], capsys)
    assert rc == 0 and "0.5000 (default: not tuned" in err
    rc, err = _predict([str(img_dir), "--model", str(model), "--csv", str(tmp_path / "x.csv"),
                        "--threshold", "0.3"], capsys)
    assert "0.3000 (--threshold)" in err


def test_export_checks_on_val_crops_and_through_transformers_pipeline(env, tmp_path):
    from importlib import resources

    from dftune.stages import export

    rep = export.run(env["a"], tmp_path / "sub", export.ExportSettings(int8=True, bench_seconds=0))
    assert rep["sample_source"].startswith("val crops of") and rep["samples"] > 4
    assert rep["pipeline"]["label_agreement"] == 1.0 and rep["pipeline"]["max_prob_diff"] < 1e-5
    shipped = tmp_path / "sub" / export.PORTABLE_NAME
    pkg = resources.files("dftune") / "portable"
    assert sorted(f.name for f in shipped.iterdir()) == export.portable_files()
    assert all((shipped / f).read_bytes() == (pkg / f).read_bytes() for f in export.portable_files())
    meta = json.loads((tmp_path / "sub" / "dftune.json").read_text())
    assert meta["crop"]["detector"] == "retinaface"


def test_cross_dataset_table_uses_the_training_datas_threshold(env, tmp_path):
    import shutil

    from dftune.stages import evaluate

    other = shutil.copytree(env["data"], tmp_path / "other")  # a "second dataset" (the same crops: same numbers)
    s = evaluate.EvalSettings(progress=False, plots=False)
    r = evaluate.cross_dataset([str(env["a"])], [str(env["data"]), str(other)], tmp_path / "x", s)
    rows = [(row["dataset"], row["video_auc"]) for row in r.table]
    assert [d for d, _ in rows] == ["data", "other", "mean"]
    assert rows[0][1] == pytest.approx(rows[1][1]) == pytest.approx(rows[2][1])
    thr = r.thresholds["a"]
    for res in r.per_dataset.values():  # both measured at the threshold tuned on the training data's val
        assert res.models["a"]["val_threshold"]["frame"] == thr["frame"]
    assert (tmp_path / "x" / "report.md").read_text().count("| a |") == 3


def _check_folder(env, tmp_path):
    """2 fake and 2 real videos, 2 real face crops, a blank image (no face), a broken video, and their labels."""
    import shutil

    import numpy as np
    from PIL import Image

    d = tmp_path / "check"
    d.mkdir()
    vids = sorted((env["tree"] / "manipulated_sequences" / "Deepfakes" / "c23" / "videos").glob("*.mp4"))[:2]
    reals = sorted((env["tree"] / "original_sequences" / "youtube" / "c23" / "videos").glob("*.mp4"))[:2]
    for v in vids + reals:
        shutil.copy(v, d / (("fake_" if v in vids else "real_") + v.name))
    crops = sorted((env["data"] / "test" / "real").glob("*.jpg"))[:2]
    for c in crops:
        shutil.copy(c, d / c.name)
    Image.fromarray(np.full((60, 80, 3), 128, np.uint8)).save(d / "blank.png")
    (d / "broken.mp4").write_bytes(b"not a video")
    labels = tmp_path / "labels.csv"
    rows = [f"{f.name},{'fake' if f.name.startswith('fake_') else 'real'}" for f in sorted(d.iterdir())]
    labels.write_text("filename,label\n" + "\n".join(rows) + "\n")
    return d, labels


def test_a_labels_csv_inside_the_folder_serves_evaluate_files_and_check_alike(env, tmp_path, capsys):
    """Names relative to the CSV's folder (as --check reads them), the CSV itself not an input; a CSV that names
    none of the files found is an error, not an empty report with exit 0."""
    from dftune import checks

    d, labels = _check_folder(env, tmp_path)
    inside = d / "labels.csv"
    inside.write_text(labels.read_text())
    assert main(["evaluate", "--model", str(env["a"]), "--files", str(d), "--labels", str(inside),
                 "--out", str(tmp_path / "ev"), "--no-progress"]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["files"] == 8 and m["unlabelled"] == [] and "labels.csv" not in json.dumps(m["skipped"])
    assert checks.is_labels(inside)  # the same file is a check set
    far = tmp_path / "elsewhere" / "labels.csv"
    far.parent.mkdir()
    far.write_text("filename,label\nclips/fake_1.mp4,fake\nclips/real_1.mp4,real\n")  # none of them found
    capsys.readouterr()
    assert main(["evaluate", "--model", str(env["a"]), "--files", str(d), "--labels", str(far),
                 "--no-progress"]) == 2
    assert "none of the 8 files found" in capsys.readouterr().err


def test_evaluate_files_scores_a_labelled_folder_as_predict_does(env, tmp_path, capsys):
    d, labels = _check_folder(env, tmp_path)
    assert main(["evaluate", "--model", str(env["a"]), "--files", str(d), "--labels", str(labels),
                 "--out", str(tmp_path / "ev"), "--no-progress"]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["files"] == 8 and m["scored"] == 7 and [e["file"] for e in m["errors"]] == ["broken.mp4"]
    assert m["no_face"] == ["blank.png"] and set(m["per_kind"]) == {"image", "video"}
    # the same probabilities predict writes for those files
    out = tmp_path / "p.csv"
    assert main(["predict", str(d), "--model", str(env["a"]), "--csv", str(out), "--no-progress"]) == 0
    ours = {r["filename"]: r["prob_fake"] for r in csv.DictReader(open(tmp_path / "ev" / "predictions.csv"))}
    theirs = {r["filename"]: r["prob_fake"] for r in csv.DictReader(open(out))}
    assert ours == theirs


def test_evaluate_files_takes_predicts_options_and_reports_each_framing(env, tmp_path, capsys):
    """--tta, --frames, --no-face, --faces and --clipped reach the files path (the probabilities predict writes with
    the same options),
    and each framing kind is measured apart: a kind of one class gets its counts and accuracy, no AUC."""
    from dftune import portable

    d, labels = _check_folder(env, tmp_path)
    opts = ["--tta", "none", "--frames", "2", "--no-face", "real", "--faces", "follow"]
    capsys.readouterr()
    assert main(["evaluate", "--model", str(env["a"]), "--files", str(d), "--labels", str(labels), *opts,
                 "--out", str(tmp_path / "ev"), "--no-progress", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "p.csv"
    assert main(["predict", str(d), "--model", str(env["a"]), "--csv", str(out), "--no-progress", *opts]) == 0
    ours = {r["filename"]: r for r in csv.DictReader(open(tmp_path / "ev" / "predictions.csv"))}
    theirs = {r["filename"]: r for r in csv.DictReader(open(out))}
    assert {n: r["prob_fake"] for n, r in ours.items()} == {n: r["prob_fake"] for n, r in theirs.items()}
    assert ours["blank.png"]["prob_fake"] == "0.000000" and ours["blank.png"]["label"] == "0"
    assert {r["frames"] for n, r in ours.items() if n.endswith(".mp4") and not r["error"]} == {"2"}
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["tta"] == [] and m["frames"] == 2 and m["no_face_rule"] == "real" and m["decided_no_face"] == 1
    fr = m["per_framing"]
    assert list(fr) == [portable.FRAMED_FACE, portable.FRAMED_CROPPED, portable.FRAMED_NO_FACE]
    assert fr[portable.FRAMED_FACE]["n"] == 4 and fr[portable.FRAMED_FACE]["auc"] is not None  # both classes
    no_face = fr[portable.FRAMED_NO_FACE]
    assert no_face == {"n": 1, "n_real": 1, "n_fake": 0, "threshold": m["threshold"], "accuracy": 1.0,
                       "one_class": "real"}
    assert "auc" not in fr[portable.FRAMED_CROPPED] and fr[portable.FRAMED_CROPPED]["n_real"] == 2
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "## Per framing" in report and "| whole:no-face | 1 | 1 | 0 | 1.000 | - | - | - |" in report
    assert "--no-face real): labelled real (1 files)" in report and "2 frames per video" in report
    assert "per framing" in printed and "whole:no-face" in printed
    assert main(["evaluate", "--model", str(env["a"]), "--files", str(d), "--labels", str(labels), *opts,
                 "--clipped", "pad", "--out", str(tmp_path / "ev2"), "--no-progress", "--no-plots"]) == 0
    padded = json.loads((tmp_path / "ev2" / "metrics.json").read_text())["per_framing"]
    assert padded[portable.FRAMED_PADDED]["n"] == 2 and portable.FRAMED_CROPPED not in padded  # as predict pads
    assert main(["evaluate", "--model", str(env["a"]), "--data", str(env["data"]), "--no-face", "real"]) == 2
    assert "--frames, --no-face, --faces and --clipped choose how --files are scored" in capsys.readouterr().err


def test_a_crop_from_prepare_scores_the_same_in_predict_as_in_evaluate(env, tmp_path):
    """An image that already is a face crop is not cropped a second time: predict gives the crop
    the probability evaluate gave it (before: 0.183 in evaluate, 0.744 in predict)."""
    import shutil

    from dftune.stages import evaluate

    res = evaluate.run([str(env["a"])], env["data"], tmp_path / "ev",
                       evaluate.EvalSettings(progress=False, plots=False))
    ev = {Path(r["path"]).name: float(r["prob_fake_a"])
          for r in csv.DictReader(open(tmp_path / "ev" / "predictions.csv"))}
    assert res.models["a"]["frame"]["at_0.5"]["n"] == len(ev)
    crops = tmp_path / "crops"
    crops.mkdir()
    for rel in list((env["data"] / "test").rglob("*.jpg"))[:6]:
        shutil.copy(rel, crops / rel.name)
    out = tmp_path / "p.csv"
    assert main(["predict", str(crops), "--model", str(env["a"]), "--csv", str(out), "--no-progress"]) == 0
    for r in csv.DictReader(open(out)):
        assert r["framing"].startswith("whole:"), r  # used whole, never re-cropped
        assert float(r["prob_fake"]) == pytest.approx(ev[r["filename"]], abs=1e-6), r["filename"]
