"""dftune demo: a reduced run of the whole chain, checked against its own files."""

import csv
import json

import pytest

from dftune.stages.demo import DemoConfig, run


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(out=out, n_ids=10, video_frames=12, frames=12, epochs=40, image_size=32, patch_size=4,
                     hidden_size=48, layers=2, heads=4, lr=1e-3, workers=2, int8=True, progress=False)
    return out, run(cfg)


def test_every_stage_left_its_output(demo):
    out, r = demo
    for p in ("FaceForensics++/splits/test.json", "prepared/manifest.csv", "untrained/config.json",
              "run/best/config.json", "run/history.json", "eval/test/metrics.json", "eval/val/metrics.json",
              "predictions.csv", "submission/config.json", "submission/export_report.json", "demo.json"):
        assert (out / p).exists(), p
    assert json.loads((out / "demo.json").read_text())["crops"] == r["crops"]
    assert set(r["crops"]) == {"train", "val", "test"}
    assert all(v["real"] > 0 and v["fake"] == 4 * v["real"] for v in r["crops"].values())


def test_the_table_numbers_are_real(demo, capsys):
    out, r = demo
    # the numbers come from evaluate's metrics.json of the two models, not from training
    m = json.loads((out / "eval" / "test" / "metrics.json").read_text())
    untrained, trained = list(m["models"].values())
    assert r["eval"]["test"]["untrained"]["frame"]["macro_f1"] == untrained["frame"]["at_0.5"]["macro_f1"]
    assert r["eval"]["test"]["trained"]["video"]["auc"] == trained["video"]["at_0.5"]["auc"]
    # and the trained model beats the untrained one on held-out identities, and calling
    # everything fake (macro F1 0.444 at 1 real : 4 fake)
    u, t = r["eval"]["test"]["untrained"]["frame"], r["eval"]["test"]["trained"]["frame"]
    assert t["macro_f1"] > u["macro_f1"] + 0.1 and t["macro_f1"] > 0.55
    assert t["auc"] > u["auc"] + 0.1 and t["auc"] > 0.7
    assert len(r["curve"]) == 40 and r["curve"][-1]["train_loss"] < r["curve"][0]["train_loss"]


def test_predictions_and_export(demo):
    out, r = demo
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == r["predict"]["videos"] == 10  # 2 test ids: 2 real + 2 x 4 fake videos
    assert all(row["label"] in ("0", "1") for row in rows)
    assert r["predict"]["correct"] > 5
    par = r["export"]["parity"]
    assert par["plain"]["label_agreement"] == 1.0 and par["plain"]["max_prob_diff"] < 1e-4
    assert "int8" in par


def test_cli_help_lists_demo():
    from dftune.cli import build_parser

    assert "demo" in build_parser().format_help()
