"""Nothing silent, round two: merges of broken or non-finite weights, a merge onto its own input, a greedy
soup judged on one class, sources that would drop or flip data without a word, and splits left with one
class. Each case is refused with a message naming the file, or counted and said."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dftune.cli import main
from dftune.model.load import build_tiny_vit
from dftune.sources import SourceError, dfdc, listfile
from dftune.stages import merge
from dftune.stages.merge import MergeError


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("nothing_silent")
    return build_tiny_vit(root / "a", image_size=32, seed=0), build_tiny_vit(root / "b", image_size=32, seed=1)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- merge


def test_merge_refuses_non_finite_weights_naming_the_folder_and_tensor(models, tmp_path):
    from safetensors.torch import load_file, save_file

    a, b = models
    bad = _copy(b, tmp_path / "diverged")
    state = load_file(bad / "model.safetensors")
    name = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    t = state[name].clone()
    t.view(-1)[0], t.view(-1)[-1] = float("nan"), float("inf")
    state[name] = t
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MergeError, match=re.escape(str(bad)) + r": tensor .* holds NaN or Inf values"):
        merge.run([str(a), str(bad)], tmp_path / "out", alpha=0.5)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncated", "random bytes"])
def test_merge_of_an_unreadable_weights_file_is_one_line_naming_it(models, tmp_path, damage, capsys):
    import os

    a, b = models
    bad = _copy(b, tmp_path / "bad")
    f = bad / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(4096))
    with pytest.raises(MergeError, match=re.escape(str(f)) + r": cannot read the model's weights"):
        merge.run([str(a), str(bad)], tmp_path / "out", alpha=0.5)
    assert main(["merge", "--model", str(a), "--model", str(bad), "--alpha", "0.5", "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and "Traceback" not in err


def test_merge_never_replaces_one_of_its_inputs(models, tmp_path):
    a, b = models
    a2, b2 = _copy(a, tmp_path / "a"), _copy(b, tmp_path / "b")
    before = (b2 / "model.safetensors").read_bytes()
    with pytest.raises(MergeError, match="is one of the models to merge"):
        merge.run([str(a2), str(b2)], b2, alpha=0.5, force=True)
    with pytest.raises(MergeError, match="is one of the models to merge"):
        merge.run([str(a2), str(b2)], str(tmp_path / "b" / ".." / "b"), force=True)  # the same folder, spelt otherwise
    assert (b2 / "model.safetensors").read_bytes() == before


def test_unequal_weights_are_a_weighted_soup_not_a_uniform_one(models, tmp_path):
    a, b = models
    assert merge.run([str(a), str(b)], tmp_path / "u")["kind"] == "uniform soup"
    assert merge.run([str(a), str(b)], tmp_path / "w", weights=[1, 3])["kind"] == "weighted soup"
    assert json.loads((tmp_path / "w" / "dftune.json").read_text())["extra"]["merge"]["kind"] == "weighted soup"


def _one_class_data(root: Path, label: int) -> Path:
    from dftune.synthetic import make_crops

    data = make_crops(root / "data", n_videos=4, frames=2, size=32).parent
    lines = (data / "manifest.csv").read_text().splitlines()
    head = lines[0].split(",")
    li, si = head.index("label"), head.index("split")
    keep = [ln for ln in lines[1:] if ln.split(",")[si] != "val" or ln.split(",")[li] == str(label)]
    (data / "manifest.csv").write_text("\n".join([lines[0], *keep]) + "\n")
    return data


def test_greedy_soup_refuses_a_metric_one_class_cannot_compute(models, tmp_path):
    a, b = models
    data = _one_class_data(tmp_path, 0)
    with pytest.raises(MergeError, match=r"one class only \(\d+ real, 0 fake\): auc cannot rank"):
        merge.greedy_soup([str(a), str(b)], tmp_path / "g", data)
    assert not (tmp_path / "g").exists()


def test_greedy_soup_reports_each_step_and_the_loss_as_a_loss(models, tmp_path, capsys):
    from dftune.synthetic import make_crops

    a, b = models
    data = make_crops(tmp_path / "data", n_videos=4, frames=2, size=32).parent
    r = merge.greedy_soup([str(a), str(b)], tmp_path / "g", data, metric="loss")
    assert all(v > 0 for v in r["val"].values()) and r["soup_val"] > 0  # a loss, not a negated one
    assert r["soup_val"] <= min(r["val"].values()) + 1e-12
    assert [s["added"] for s in r["steps"]][0] is True and len(r["steps"]) == 2
    assert main(["merge", "--model", str(a), "--model", str(b), "--greedy", "--data", str(data), "--out",
                 str(tmp_path / "g2")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert re.search(r"start .*: own val frame auc [0-9.]+; soup with it [0-9.]+", out)
    assert re.search(r"(added|left out) .*: own val frame auc [0-9.]+; soup with it [0-9.]+", out)


# ---------------------------------------------------------------- sources


def _touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")
    return p


def _dfdc(root: Path, labels_csv: str = "filename,label\nt1.mp4,0\nt2.mp4,1\n") -> Path:
    meta = {"r1.mp4": {"label": "REAL", "original": None}, "f1.mp4": {"label": "FAKE", "original": "r1.mp4"},
            "r2.mp4": {"label": "REAL", "original": None}, "f2.mp4": {"label": "FAKE", "original": "r2.mp4"}}
    for n in meta:
        _touch(root / "dfdc_train_part_0" / n)
    (root / "dfdc_train_part_0" / "metadata.json").write_text(json.dumps(meta))
    for n in ("t1.mp4", "t2.mp4"):
        _touch(root / "test" / n)
    (root / "test" / "labels.csv").write_text(labels_csv)
    return root


def test_dfdc_metadata_of_the_wrong_shape_is_an_error_naming_it(tmp_path):
    root = _dfdc(tmp_path / "dfdc")
    (root / "dfdc_train_part_0" / "metadata.json").write_text(json.dumps([{"r1.mp4": "REAL"}]))
    with pytest.raises(SourceError, match=re.escape(str(root / "dfdc_train_part_0" / "metadata.json"))
                       + r": not DFDC's metadata.json"):
        dfdc.index(root)


def test_dfdc_labels_csv_conflicts_are_errors_and_repeats_are_counted(tmp_path):
    root = _dfdc(tmp_path / "a", "filename,label\nt1.mp4,0\nt2.mp4,1\nt1.mp4,1\n")
    with pytest.raises(SourceError, match=r"labels.csv: lines 2 and 4 give t1.mp4 two labels"):
        dfdc.index(root)
    root = _dfdc(tmp_path / "b", "filename,label\nt1.mp4,0\nt2.mp4,1\nt1.mp4,0\n")
    warnings = []
    items = dfdc.index(root, warnings=warnings)
    assert sum(it.video_id == "t1" for it in items) == 1
    assert any("1 rows repeat an earlier row" in w["error"] for w in warnings)


def test_dfdc_names_the_videos_that_are_not_on_disk(tmp_path):
    root = _dfdc(tmp_path / "dfdc")
    (root / "dfdc_train_part_0" / "f2.mp4").unlink()
    warnings = []
    dfdc.index(root, warnings=warnings)
    msg = next(w for w in warnings if "not on disk" in w["error"])
    assert "f2.mp4" in msg["error"] and msg["missing"] == [str(root / "dfdc_train_part_0" / "f2.mp4")]


def _list(root: Path, body: str) -> Path:
    for n in ("a", "b", "c", "d"):
        _touch(root / "videos" / f"{n}.mp4")
    (root / "list.csv").write_text("path,label,split\n" + body)
    return root


@pytest.mark.parametrize("body, differ", [
    ("videos/a.mp4,real,train\nvideos/b.mp4,fake,\nvideos/a.mp4,fake,train\n", "label"),
    ("videos/a.mp4,real,train\nvideos/b.mp4,fake,\nvideos/a.mp4,real,test\n", "split"),
])
def test_a_list_naming_one_file_twice_differently_is_an_error_naming_the_rows(tmp_path, body, differ):
    root = _list(tmp_path / "l", body)
    with pytest.raises(SourceError, match=rf"lines 2, 4 name the same file 'videos/a.mp4' with different {differ}"):
        listfile.index(root)


def test_a_list_row_repeated_exactly_is_one_video(tmp_path):
    root = _list(tmp_path / "l", "videos/a.mp4,real,train\nvideos/b.mp4,fake,test\nvideos/c.mp4,0,\n"
                                 "videos/d.mp4,1,\n./videos/a.mp4,real,train\n")
    warnings = []
    items = listfile.index(root, warnings=warnings)
    assert sorted(it.path.name for it in items) == ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]
    assert any("1 rows repeat an earlier row exactly" in w["error"] for w in warnings)


def test_prepare_warns_when_a_split_ends_with_one_class(tmp_path, face_photo, capsys):
    import shutil

    root = tmp_path / "photos"
    for i in range(3):
        for lab in ("real", "fake"):
            d = root / lab
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(face_photo, d / f"{lab}{i}.jpg")
    (tmp_path / "list.csv").write_text(
        "path,label,split\n" + "".join(f"photos/real/real{i}.jpg,real,{s}\n" for i, s in enumerate(
            ("train", "val", "test")))
        + "".join(f"photos/fake/fake{i}.jpg,fake,{s}\n" for i, s in enumerate(("train", "test", "test"))))
    out = tmp_path / "out"
    assert main(["prepare", str(tmp_path / "list.csv"), "--source", "list", "--detector", "none", "--size", "32",
                 "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    text = " ".join(capsys.readouterr().err.split())  # a warning: stderr
    assert "the val split holds real crops only (1 real, 0 fake): train cannot select a model on it" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["one_class_splits"] and "val split" in summary["one_class_splits"][0]


def test_dfdc_preview_says_when_a_label_disagrees_with_its_folder(tmp_path):
    root = tmp_path / "dfdcp"
    meta = {"original_videos/1/a.mp4": {"label": "real", "set": "train", "target_id": "1"},
            "method_A/1/a.mp4": {"label": "real", "set": "train", "target_id": "1"},  # a method folder, labelled real
            "original_videos/2/b.mp4": {"label": "real", "set": "test", "target_id": "2"},
            "method_B/2/b.mp4": {"label": "fake", "set": "test", "target_id": "2"}}
    for rel in meta:
        _touch(root / rel)
    (root / "dataset.json").write_text(json.dumps(meta))
    warnings = []
    dfdc.index_preview(root, warnings=warnings)
    said = [w for w in warnings if "labels it real but it is in method_A/" in w["error"]]
    assert len(said) == 1 and said[0]["file"] == str(root / "method_A/1/a.mp4")


# ---------------------------------------------------------------- ensembles edited by hand, the script's errors


@pytest.mark.parametrize("edit, field", [
    ({"weights": [1, -1]}, r"members\[1\]\.weight is -1"),
    ({"weights": [0, 0]}, "every member's weight is 0"),
    ({"weights": [float("nan"), 1]}, r"members\[0\]\.weight is nan"),
    ({"threshold": 1.7}, "threshold is 1.7"),
])
def test_a_hand_edited_ensemble_file_is_refused_naming_the_field(models, tmp_path, edit, field):
    from dftune import scoring

    a, b = models
    path = tmp_path / "ensemble.json"
    scoring.write_ensemble(path, [(a, 1.0), (b, 1.0)], 0.5, {"by": "default"})
    d = json.loads(path.read_text())
    for i, w in enumerate(edit.get("weights", [])):
        d["members"][i]["weight"] = w
    if "threshold" in edit:
        d["threshold"] = edit["threshold"]
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": " + field):
        scoring.read_ensemble(path)
    with pytest.raises(ValueError, match=field):  # predict, evaluate and export read it the same way
        scoring.load_ensemble([str(path)], device="cpu")


def test_the_script_with_a_missing_onnx_model_says_so_in_one_line(models, tmp_path, without_dftune):
    import subprocess

    from dftune.stages import export

    sub = tmp_path / "sub"
    export.run(models[0], sub, export.ExportSettings(bench_seconds=0))
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 40), (120, 110, 100)).save(img)
    r = subprocess.run([*without_dftune, str(sub / "predict_submission.py"), str(img), "--backend", "onnx",
                        "--out", str(tmp_path / "o.csv"), "--workers", "0"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "model.onnx: no ONNX model here" in r.stderr
