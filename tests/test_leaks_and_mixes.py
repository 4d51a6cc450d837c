"""Nothing silent about what a run is measured and trained on: a labels-CSV check set made of the training crops or
frames (or copies of them) is refused; a dataset given both inside a mix and on its own is refused; --data-weight
with --sbi weights the loss by the epoch as drawn and turned; an unknown --check split is named; mixes of two kinds
of framing, datasets without val and --data-weight 0 are said."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from dftune import checks
from dftune.cli import main
from dftune.model.meta import CropSettings
from dftune.prepared import read_manifest, write_manifest

CROP = CropSettings(detector="dlib", margin=1.3, size=32, frames=2)
ARGS = ["--epochs", "1", "--batch-size", "8", "--no-progress", "--no-tensorboard", "--set", "num_workers=0",
        "--set", "max_train_batches=1"]


@pytest.fixture(scope="module")
def env(make_crops, tiny_vit):
    return {"a": make_crops("a", n_videos=4, frames=2, size=32, methods=("Deepfakes",)),
            "b": make_crops("b", n_videos=4, frames=2, size=32, methods=("Face2Face",), first_id=100,
                            look="cool-soft"),
            "vit": tiny_vit(image_size=32, hidden_size=32)}


def _labels(folder: Path, rows: list[tuple[Path, int]], name: str) -> Path:
    p = folder / name
    p.write_text("filename,label\n" + "".join(f"{os.path.relpath(f, folder)},{y}\n" for f, y in rows))
    return p


def _load(csv: Path, cache: Path) -> checks.CheckSet:
    return checks.load(csv, cache=cache, crop=CROP, workers=0, progress=False)


# ---------------------------------------------------------------- item 3: check sets of training crops and frames


def test_a_labels_csv_of_training_crops_or_copies_of_them_is_refused(env, tmp_path):
    data = env["a"]
    train = read_manifest(data, ("train", "val"))
    real = next(data / r.path for r in train if r.split == "train" and r.label == 0)
    fake = next(data / r.path for r in train if r.split == "train" and r.label == 1)
    # the training crops themselves
    cs = _load(_labels(tmp_path, [(real, 0), (fake, 1)], "crops.csv"), tmp_path / "c")
    with pytest.raises(checks.CheckError, match=r"shares 2 training crops \(.*Deepfakes_.*\.jpg"):
        checks.refuse_leaks([cs], train, data)
    # copies of them under other names
    (tmp_path / "mine").mkdir()
    shutil.copy(real, tmp_path / "mine" / "person.jpg")
    shutil.copy(fake, tmp_path / "mine" / "other.jpg")
    cs = _load(_labels(tmp_path, [(tmp_path / "mine" / "person.jpg", 0), (tmp_path / "mine" / "other.jpg", 1)],
                       "copies.csv"), tmp_path / "c")
    with pytest.raises(checks.CheckError, match=r"2 copies of source files or training crops under other names "
                                                r"\(.*mine/other\.jpg"):
        checks.refuse_leaks([cs], train, data)
    # crops of another dataset's test split pass (nothing of the training data)
    other = read_manifest(env["b"], ("test",))
    outside = [(env["b"] / next(r.path for r in other if r.label == y), y) for y in (0, 1)]
    checks.refuse_leaks([_load(_labels(tmp_path, outside, "outside.csv"), tmp_path / "c")], train, data)


def test_a_labels_csv_of_a_frame_folder_sources_training_frames_is_refused(env, tmp_path):
    """``frames`` and ``deepfakebench`` record a video's folder of frames as its source: the frames in it are
    what the training crops were made from."""
    from PIL import Image

    from dftune import synthetic

    root = tmp_path / "frames"
    for cls, seed in (("real", 1), ("fake", 2)):
        (root / cls / "v").mkdir(parents=True)
        for k in range(3):
            Image.fromarray(np.ascontiguousarray(synthetic.identity(seed + k).rgb)).resize((48, 48)).save(
                root / cls / "v" / f"{k}.png")
    data = tmp_path / "data"
    data.mkdir()
    for f in ("manifest.csv", "settings.json"):
        (data / f).write_bytes((env["a"] / f).read_bytes())
    (data / ".parts").mkdir()  # what prepare records for a frames source: the folder
    for cls, y in (("real", 0), ("fake", 1)):
        (data / ".parts" / f"{cls}.json").write_text(json.dumps(
            {"key": f"{cls}/v", "file": str(root / cls / "v"), "split": "train", "label": y, "method": cls,
             "rows": []}))
    train = read_manifest(data, ("train", "val"))
    cs = _load(_labels(tmp_path, [(root / "real" / "v" / "1.png", 0), (root / "fake" / "v" / "2.png", 1)],
                       "frames.csv"), tmp_path / "c")
    with pytest.raises(checks.CheckError, match=r"shares 2 source files \(.*frames/fake/v/2\.png"):
        checks.refuse_leaks([cs], train, data)
    shutil.copy(root / "fake" / "v" / "0.png", tmp_path / "renamed.png")
    cs = _load(_labels(tmp_path, [(env["b"] / read_manifest(env["b"], ("test",))[0].path, 0),
                                  (tmp_path / "renamed.png", 1)], "copy.csv"), tmp_path / "c")
    with pytest.raises(checks.CheckError, match=r"1 copies of source files or training crops .*renamed\.png"):
        checks.refuse_leaks([cs], train, data)


# ---------------------------------------------------------------- item 4: --data-weight with --sbi


def test_epoch_counts_count_sbis_pseudo_fakes_among_the_rows_drawn():
    from dftune.training.data import epoch_counts

    labels = np.array([0, 1] * 50 + [0, 1] * 5)  # two 1:1 datasets, 100 and 10 rows
    w = np.array([0.5 / 100] * 100 + [0.5 / 10] * 10)
    assert np.allclose(epoch_counts(labels, 0.5, w), [27.5, 82.5])  # reals 1/2 of the draws, half of them turned
    assert np.allclose(epoch_counts(labels, 0.0, w), [55, 55])
    assert np.allclose(epoch_counts(labels, 0.5), [27.5, 82.5])  # without weights: the same for 1:1 data


def test_data_weight_with_sbi_weights_the_loss_by_the_epoch_as_drawn_and_turned(env, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(env["a"]), "--data", str(env["b"]), "--data-weight", "1", "--data-weight",
                 "1", "--sbi", "0.5", "--model", env["vit"], "--out", str(run), *ARGS]) == 0
    meta = yaml.safe_load((run / "settings.yaml").read_text())
    n = meta["_train_counts"]["real"] + meta["_train_counts"]["fake"]
    assert meta["_train_counts"] == {"real": round(n / 4), "fake": round(3 * n / 4)}  # 25 % real, as drawn
    assert meta["_class_weights"]["real"] == pytest.approx(2.0) and \
        meta["_class_weights"]["fake"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------- item 5: a dataset inside a mix and on its own


def test_a_dataset_given_inside_a_mix_and_on_its_own_is_refused_naming_the_mix(env, tmp_path, capsys):
    mix = tmp_path / "mix"
    assert main(["prepare", str(env["a"]), str(env["b"]), "--merge-into", str(mix)]) == 0
    capsys.readouterr()
    rc = main(["train", "--data", str(mix), "--data", str(env["b"]), "--model", env["vit"], "--out",
               str(tmp_path / "r"), *ARGS])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and f"{env['b'].resolve()} is given twice: on its own and inside the mix {mix.resolve()}" in err
    # two mixes holding one folder
    mix2 = tmp_path / "mix2"
    assert main(["prepare", str(env["b"]), str(env["a"]), "--merge-into", str(mix2)]) == 0
    rc = main(["prepare", str(mix), str(mix2), "--merge-into", str(tmp_path / "mm")])
    assert rc == 2 and "is given twice: inside the mix" in capsys.readouterr().err


def test_a_mix_of_face_crops_and_whole_frames_says_what_differs(env, tmp_path, caplog):
    from dftune.mix import write_mix

    whole = tmp_path / "whole"
    shutil.copytree(env["b"], whole)
    s = json.loads((whole / "settings.json").read_text())
    (whole / "settings.json").write_text(json.dumps({**s, "no_detect": True, "detector": "dlib"}))
    with caplog.at_level(logging.WARNING):
        write_mix([env["a"], whole], tmp_path / "mix")
    text = " ".join(caplog.text.split())
    assert (f"framed differently ({env['a'].name}: face crops (retinaface, margin 1.3); whole: frames used whole "
            f"(no detector") in text


def test_a_dataset_without_val_and_a_zero_data_weight_are_said(env, tmp_path, caplog):
    noval = tmp_path / "noval"
    shutil.copytree(env["b"], noval)
    rows = [r for r in read_manifest(noval) if r.split != "val"]
    write_manifest(noval / "manifest.csv", rows)
    with caplog.at_level(logging.WARNING):
        assert main(["train", "--data", str(env["a"]), "--data", str(noval), "--data-weight", "1", "--data-weight",
                     "0", "--model", env["vit"], "--out", str(tmp_path / "r"), *ARGS]) == 0
    text = " ".join(caplog.text.split())
    assert (f"noval: no val rows in the mix: val (best/, early stopping, the stored numbers) measures "
            f"{env['a'].name} only") in text
    assert "noval: --data-weight 0: none of its train rows is drawn" in text


# ---------------------------------------------------------------- item 11 and a path that is not there


def test_an_unknown_check_split_is_named_with_the_splits_there_are(env, tmp_path, capsys):
    with pytest.raises(checks.CheckError, match=r"unknown split 'bogus'; .*manifest\.csv holds train \(16 crops\), "
                                                r"val \(8 crops\), test \(8 crops\)"):
        checks.load(f"{env['a']}:bogus")
    with pytest.raises(SystemExit):
        main(["merge", env["vit"], env["vit"], "--alpha", "auto", "--check", f"{env['a']}:val+bogus", "--out",
              str(tmp_path / "m")])
    assert "unknown split 'bogus'" in capsys.readouterr().err
    with pytest.raises(checks.CheckError, match=r"nope: does not exist"):
        checks.load(tmp_path / "nope")


def test_an_empty_labels_csv_says_it_is_empty(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(checks.CheckError, match=r"empty\.csv: is empty \(no header line\)"):
        checks.load(tmp_path / "empty.csv")
