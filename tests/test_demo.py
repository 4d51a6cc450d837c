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


def test_the_demo_ends_with_its_commands_as_the_four_steps_and_runs_lists_its_run(demo, tmp_path, capsys):
    from dftune.cli import main
    from dftune.stages.demo import print_steps

    out, r = demo
    steps = r["commands"]
    assert [s["step"].split(".")[0] for s in steps] == ["1", "2", "3", "4"]
    (prep,), (train,), (thr,), (pred, export) = (s["commands"] for s in steps)
    assert prep[:3] == ["dftune", "prepare", str(out / "FaceForensics++")] and str(out / "prepared") in prep
    assert train[:2] == ["dftune", "train"] and str(out / "run") in train
    assert thr[:2] == ["dftune", "evaluate"] and "--write-threshold" in thr and thr[thr.index("--split") + 1] == "val"
    assert pred[:2] == ["dftune", "predict"] and str(out / "predictions.csv") in pred
    assert export[:4] == ["dftune", "export", "--model", str(out / "run" / "best")]
    script = (out / "commands.sh").read_text()
    assert all(" ".join(c[:2]) in script for s in steps for c in s["commands"])
    print_steps(steps, out / "commands.sh")
    printed = capsys.readouterr().out
    assert printed.index("1. prepare") < printed.index("2. train") < printed.index("3. the threshold") \
        < printed.index("4. the contest CSV")
    # dftune runs lists the demo's run, with its best epoch and the contest number
    assert main(["runs", str(out), "--csv", str(tmp_path / "runs.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "runs.csv").open()))
    assert [row["run"] for row in rows] == ["run"]
    hist = json.loads((out / "run" / "history.json").read_text())
    assert int(rows[0]["best epoch"]) == [h for h in hist if h["best"]][-1]["epoch"]
    assert rows[0]["threshold by"] == "evaluate" and rows[0]["contest frame F1"]


def test_the_readme_first_screen_is_the_demos_four_steps(demo):
    """The README opens with the path to a submission: the same four steps the demo runs and prints, in order,
    with ./baseline defined and the threshold step in it."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    first = text[:text.index("\n## ", text.index("## The path to a submission"))]
    assert "hf download prithivMLmods/Deep-Fake-Detector-v2-Model --local-dir baseline" in first
    block = re.search(r"```bash\n(.*?)```", first, re.S).group(1)
    readme = [shlex.split(line) for line in block.splitlines() if line.startswith("dftune ")]
    _, r = demo
    ran = [c for s in r["commands"] for c in s["commands"]]
    assert [c[1] for c in readme] == [c[1] for c in ran] == ["prepare", "train", "evaluate", "predict", "export"]
    thr = readme[2]
    assert "--write-threshold" in thr and thr[thr.index("--split") + 1] == "val"
    assert "--model" in readme[1] and "./baseline" in readme[1]


def test_cli_help_lists_demo():
    from dftune.cli import build_parser

    assert "demo" in build_parser().format_help()
