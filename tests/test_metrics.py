"""dftune.metrics: pure functions checked against sklearn and by hand."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

from dftune import metrics, pooling


def _data(seed=0, n=200):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.7).astype(int)
    p = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)
    return y, p


def test_binary_metrics_match_sklearn():
    y, p = _data()
    m = metrics.binary_metrics(y, p, threshold=0.5)
    pred = (p >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["loss"] == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)), rel=1e-6)
    assert m["tp"] + m["fn"] == y.sum() and m["tn"] + m["fp"] == (y == 0).sum()
    assert metrics.binary_metrics(y, p, loss=0.25)["loss"] == 0.25


def test_auc_with_ties_matches_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) * 0.5 + 0.3 * y, 1)  # many ties
    assert metrics.roc_auc(y, p) == pytest.approx(roc_auc_score(y, p))
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == 0.5


def test_threshold_changes_predictions():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.45, 0.9])
    assert metrics.binary_metrics(y, p, 0.5)["accuracy"] == 0.75
    assert metrics.binary_metrics(y, p, 0.42)["accuracy"] == 1.0


def test_one_class_auc_nan_not_crash():
    m = metrics.binary_metrics([1, 1, 1], [0.2, 0.8, 0.9])
    assert np.isnan(m["auc"]) and m["accuracy"] == pytest.approx(2 / 3)


def test_bad_input_is_an_error():
    with pytest.raises(ValueError):
        metrics.binary_metrics([0, 1], [0.5])
    with pytest.raises(ValueError):
        metrics.binary_metrics([0, 2], [0.5, 0.5])


def test_video_aggregate_all_modes():
    keys = ["b", "a", "a", "b", "a"]
    probs = [0.9, 0.1, 0.3, 0.5, 0.8]
    labels = [1, 0, 0, 1, 0]
    k, p, y = pooling.video_aggregate(keys, probs, labels, "mean")
    assert list(k) == ["a", "b"] and list(y) == [0, 1]
    assert p == pytest.approx([0.4, 0.7])
    assert pooling.video_aggregate(keys, probs, labels, "median")[1] == pytest.approx([0.3, 0.7])
    assert pooling.video_aggregate(keys, probs, labels, "max")[1] == pytest.approx([0.8, 0.9])
    assert pooling.video_aggregate(keys, probs, labels, "topk", k=2)[1] == pytest.approx([0.55, 0.7])
    with pytest.raises(ValueError, match="both real and fake"):
        pooling.video_aggregate(["a", "a"], [0.1, 0.2], [0, 1])
    with pytest.raises(ValueError):
        pooling.video_aggregate(keys, probs, labels, "mode")


def test_best_threshold_is_optimal_over_a_grid():
    y, p = _data(1)
    t, f1 = metrics.best_threshold(y, p)
    assert f1 == pytest.approx(f1_score(y, (p >= t).astype(int), average="macro"))
    grid = max(f1_score(y, (p >= g).astype(int), average="macro") for g in np.linspace(0, 1, 1001))
    assert f1 >= grid - 1e-12
    # separable: any threshold between the classes gives F1 = 1
    t, f1 = metrics.best_threshold([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.8])
    assert f1 == 1.0 and 0.2 < t < 0.7


def test_best_threshold_one_class():
    assert metrics.best_threshold([1, 1], [0.3, 0.9])[0] == 0.5


def test_summarize_frame_and_video():
    s = metrics.summarize([0, 0, 1, 1], [0.2, 0.4, 0.6, 0.9], video_keys=["r", "r", "f", "f"])
    assert s["frame"]["n"] == 4 and s["video"]["n"] == 2 and s["video"]["accuracy"] == 1.0
