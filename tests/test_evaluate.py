"""dftune evaluate: metrics equal scikit-learn's on the same predictions, per-method breakdown,
val threshold with a known optimum, --write-threshold feeding predict, outputs on disk."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytest.importorskip("torch")
sk = pytest.importorskip("sklearn.metrics")

from dftune import metrics, pooling  # noqa: E402
from dftune.cli import main  # noqa: E402
from dftune.model import meta as modelmeta  # noqa: E402
from dftune.model.load import build_tiny_vit  # noqa: E402
from dftune.prepared import read_manifest  # noqa: E402
from dftune.stages import evaluate  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from dftune.synthetic import make_crops

    root = tmp_path_factory.mktemp("evaluate")
    data = make_crops(root / "data", n_videos=4, frames=3, size=32).parent
    a = build_tiny_vit(root / "model_a", {0: "Realism", 1: "Deepfake"}, image_size=32, seed=0)
    b = build_tiny_vit(root / "model_b", {0: "Deepfake", 1: "Real"}, image_size=32, seed=5)
    return {"root": root, "data": data, "a": a, "b": b}


def test_extra_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(y * 0.3 + rng.normal(0.35, 0.25, 300), 0, 1).round(2)  # ties on purpose
    for thr in (0.5, 0.37):
        pred = (p >= thr).astype(int)
        m = metrics.full_metrics(y, p, thr)
        assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
        assert m["macro_f1"] == pytest.approx(sk.f1_score(y, pred, average="macro"))
        assert m["auc"] == pytest.approx(sk.roc_auc_score(y, p))
        assert m["average_precision"] == pytest.approx(sk.average_precision_score(y, p))
        assert m["confusion_matrix"] == sk.confusion_matrix(y, pred, labels=[0, 1]).tolist()
        pr, rc, f1, sup = sk.precision_recall_fscore_support(y, pred, labels=[0, 1], zero_division=0)
        for i, c in enumerate(("real", "fake")):
            assert m["per_class"][c]["precision"] == pytest.approx(pr[i])
            assert m["per_class"][c]["recall"] == pytest.approx(rc[i])
            assert m["per_class"][c]["f1"] == pytest.approx(f1[i])
            assert m["per_class"][c]["support"] == sup[i]
    # EER: where the false-positive rate equals the miss rate
    fpr, tpr, _ = sk.roc_curve(y, p)
    e, t = metrics.eer(y, p)
    i = np.argmin(np.abs(fpr - (1 - tpr)))
    assert abs(e - (fpr[i] + 1 - tpr[i]) / 2) <= abs(fpr[i] - (1 - tpr[i])) / 2 + 1e-9
    pred = (p >= t).astype(int)
    far, frr = np.mean(pred[y == 0] == 1), np.mean(pred[y == 1] == 0)
    assert abs(far - frr) < 0.1  # at the EER threshold the two error rates are close
    assert metrics.eer([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])[0] == pytest.approx(0.0)
    assert metrics.eer([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1])[0] == pytest.approx(1.0)


def test_aggregate_specs():
    assert pooling.parse_aggregate("topk:2") == ("topk", 2) and pooling.parse_aggregate("TOPK", 5) == ("topk", 5)
    assert pooling.pool([0.1, 0.9, 0.8, 0.2], "topk", 2) == pytest.approx(0.85)
    assert pooling.pool([0.1, 0.9, 0.8], "median") == pytest.approx(0.8)
    with pytest.raises(ValueError):
        pooling.parse_aggregate("mode")


def constructed_scores(rows):
    """Known scores: reals low, fakes high, NeuralTextures fakes lower than the rest."""
    out = []
    for r in rows:
        base = {"original": 0.30, "Deepfakes": 0.80, "Face2Face": 0.75, "FaceSwap": 0.70, "NeuralTextures": 0.42}
        k = (r.frame_index // 7) * 0.01 + (int(r.target_id) % 3) * 0.002
        out.append(base[r.method] + k)
    return np.array(out)


def test_threshold_and_breakdown_on_constructed_scores(env, monkeypatch, tmp_path):
    import shutil

    model = shutil.copytree(env["a"], tmp_path / "m")

    def fake_score(models, data, rows, s):
        p = constructed_scores(rows)
        return np.ones(len(rows), bool), p, p[None].repeat(len(models), 0)

    monkeypatch.setattr(evaluate, "score_rows", fake_score)
    res = evaluate.run([str(model)], env["data"], tmp_path / "out",
                     evaluate.EvalSettings(write_threshold=True, progress=False, plots=False))
    e = res.models["m"]
    val = [r for r in read_manifest(env["data"], ["val"])]
    pv = constructed_scores(val)
    yv = np.array([r.label for r in val])
    # known optimum: every threshold between the highest real and the lowest fake score separates val
    hi_real, lo_fake = pv[yv == 0].max(), pv[yv == 1].min()
    assert hi_real < e["val_threshold"]["frame"] < lo_fake
    assert e["val_threshold"]["frame_val_macro_f1"] == pytest.approx(1.0)
    # test split numbers at both thresholds against sklearn
    test = read_manifest(env["data"], ["test"])
    y, p = np.array([r.label for r in test]), constructed_scores(test)
    for key, thr in (("at_0.5", 0.5), ("at_val_threshold", e["val_threshold"]["frame"])):
        got = e["frame"][key]
        assert got["macro_f1"] == pytest.approx(sk.f1_score(y, (p >= thr).astype(int), average="macro"))
        assert got["auc"] == pytest.approx(sk.roc_auc_score(y, p))
    # at 0.5 the NeuralTextures fakes (0.42..) are missed; the tuned threshold catches them
    nt = e["frame"]["per_method_at_0.5"]["NeuralTextures"]
    assert nt["tpr"] == 0.0 and e["frame"]["per_method_at_val_threshold"]["NeuralTextures"]["tpr"] == 1.0
    assert set(e["frame"]["per_method_at_0.5"]) == {"Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"}
    n_real = int((y == 0).sum())
    for meth, m in e["frame"]["per_method_at_0.5"].items():
        sel = np.array([r.method in ("original", meth) for r in test])
        assert m["n"] == sel.sum() and m["n_real"] == n_real  # that method's fakes against ALL reals
        assert m["auc"] == pytest.approx(sk.roc_auc_score(y[sel], p[sel]))
    # the threshold is written for predict
    meta = modelmeta.load(model)
    assert meta.threshold == pytest.approx(e["val_threshold"]["frame"])
    assert meta.threshold_source["by"] == "evaluate" and meta.threshold_source["level"] == "frame"
    assert meta.threshold_source["split"] == "val" and meta.threshold_source["tta"] == ["flip"]


def test_cli_two_models_outputs_agree_with_sklearn(env, tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["evaluate", "--model", str(env["a"]), "--model", str(env["b"]), "--data", str(env["data"]),
               "--out", str(out), "--ensemble", "--no-progress", "--aggregate", "median"])
    assert rc == 0
    for f in ("metrics.json", "report.md", "predictions.csv", "roc_frame.png", "roc_video.png",
              "confusion_model_a_frame.png", "confusion_ensemble_video.png"):
        assert (out / f).stat().st_size > 0, f
    res = json.loads((out / "metrics.json").read_text())
    assert set(res["models"]) == {"model_a", "model_b", "ensemble"}
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(read_manifest(env["data"], ["test"]))
    y = np.array([int(r["label"]) for r in rows])
    pa, pb = (np.array([float(r[f"prob_fake_{n}"]) for r in rows]) for n in ("model_a", "model_b"))
    assert np.allclose(np.array([float(r["prob_fake_ensemble"]) for r in rows]), (pa + pb) / 2, atol=2e-6)
    fa = res["models"]["model_a"]["frame"]["at_0.5"]
    assert fa["macro_f1"] == pytest.approx(sk.f1_score(y, (pa >= 0.5).astype(int), average="macro"), abs=1e-5)
    assert fa["auc"] == pytest.approx(sk.roc_auc_score(y, pa), abs=1e-4)
    # video level: median of each video's crops
    vids = sorted({r["video"] for r in rows})
    vp = np.array([np.median([pa[i] for i, r in enumerate(rows) if r["video"] == v]) for v in vids])
    vy = np.array([next(int(r["label"]) for r in rows if r["video"] == v) for v in vids])
    va = res["models"]["model_a"]["video"]["at_0.5"]
    assert va["n"] == len(vids)
    assert va["accuracy"] == pytest.approx(sk.accuracy_score(vy, (vp >= 0.5).astype(int)))
    assert va["average_precision"] == pytest.approx(sk.average_precision_score(vy, vp), abs=1e-4)
    report = (out / "report.md").read_text()
    assert "model_b" in report and "NeuralTextures" in report
    assert "model_b" in capsys.readouterr().out


def test_missing_split_is_a_clear_error(env, tmp_path):
    from dftune.prepared import write_manifest

    only_train = tmp_path / "train_only" / "manifest.csv"
    write_manifest(only_train, read_manifest(env["data"], ["train"]))
    with pytest.raises(ValueError, match="no rows in split 'test'"):
        evaluate.run([str(env["a"])], only_train.parent, None, evaluate.EvalSettings(progress=False))
