"""dftune synth: self-blended pseudo-fakes written as a prepared dataset."""

import filecmp
from pathlib import Path

import cv2
import numpy as np
import pytest

from dftune.cli import main
from dftune.prepared import counts, image_path, read_manifest
from dftune.stages.synth import SynthConfig, run


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    from dftune.synthetic import make_crops

    out = tmp_path_factory.mktemp("crops")
    make_crops(out, n_videos=3, frames=2, size=48)
    return out


def _counts(location):
    return counts(read_manifest(location))


def test_label_counts_and_untouched_eval(prepared, tmp_path):
    before = _counts(prepared)
    out = tmp_path / "sbi"
    s = run(SynthConfig(prepared, out, per_real=2, progress=False))
    after = _counts(out)
    n_real = before["train"]["real"]
    assert s["pseudo_fakes"] == 2 * n_real
    assert after["train"]["real"] == n_real
    assert after["train"]["fake"] == before["train"]["fake"] + 2 * n_real
    assert after["train"]["methods"]["SBI"] == 2 * n_real
    for split in ("val", "test"):
        assert after[split] == before[split]
    rows = read_manifest(out)
    sbi_rows = [r for r in rows if r.method == "SBI"]
    assert all(r.label == 1 and r.split == "train" for r in sbi_rows)
    assert all(image_path(out, r).exists() for r in rows)
    # kept crops are the input's bytes, under the same relative path
    for r in rows:
        if r.method != "SBI":
            assert filecmp.cmp(image_path(out, r), prepared / r.path, shallow=False)
    assert (out / "settings.json").exists() and (out / "synth.json").exists()


def test_reals_plus_sbi_only(prepared, tmp_path):
    out = tmp_path / "only"
    run(SynthConfig(prepared, out, keep_fakes=False, progress=False))
    c = _counts(out)
    assert set(c["train"]["methods"]) == {"original", "SBI"}
    assert c["train"]["fake"] == c["train"]["real"]
    assert c["val"] == _counts(prepared)["val"]


def test_pseudo_fake_changes_the_face_not_the_border(prepared, tmp_path):
    out = tmp_path / "sbi"
    run(SynthConfig(prepared, out, progress=False))
    rows = read_manifest(out)
    reals = {(r.video_id, r.frame_index): r for r in rows if r.method == "original" and r.split == "train"}
    centre, border = [], []
    for r in (r for r in rows if r.method == "SBI"):
        a = cv2.imread(str(image_path(out, r))).astype(np.float32)
        b = cv2.imread(str(image_path(out, reals[(r.video_id, r.frame_index)]))).astype(np.float32)
        d = np.abs(a - b).mean(2)
        centre.append(d[16:32, 16:32].mean())
        border.append(np.concatenate([d[:3].ravel(), d[-3:].ravel(), d[:, :3].ravel(), d[:, -3:].ravel()]).mean())
    assert np.mean(centre) > 4 * np.mean(border) and np.mean(centre) > 3


def test_deterministic_under_a_seed(prepared, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run(SynthConfig(prepared, a, seed=3, progress=False))
    run(SynthConfig(prepared, b, seed=3, progress=False, workers=2))
    run(SynthConfig(prepared, c, seed=4, progress=False))
    sbi = [r.path for r in read_manifest(a) if r.method == "SBI"]
    assert sbi
    assert all(filecmp.cmp(a / p, b / p, shallow=False) for p in sbi)
    assert not all(filecmp.cmp(a / p, c / p, shallow=False) for p in sbi)


def test_rerun_with_other_settings_is_refused(prepared, tmp_path):
    out = tmp_path / "sbi"
    run(SynthConfig(prepared, out, progress=False))
    run(SynthConfig(prepared, out, progress=False))  # same settings: resumes, fine
    with pytest.raises(ValueError, match="other settings"):
        run(SynthConfig(prepared, out, per_real=3, progress=False))


def test_one_bad_crop_does_not_stop_the_batch(prepared, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(prepared, src)
    bad = next(r for r in read_manifest(src) if r.label == 0 and r.split == "train")
    (src / bad.path).write_bytes(b"not a jpeg")
    s = run(SynthConfig(src, tmp_path / "out", progress=False))
    assert s["n_problems"] == 1 and bad.path in s["problems"][0]
    assert s["pseudo_fakes"] == s["from_reals"] - 1


def test_cli(prepared, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["synth", "--data", str(prepared), "--out", str(out), "--no-progress", "--set", "blend_ratios=1",
               "--split", "train", "--split", "val"])
    assert rc == 0
    c = _counts(out)
    assert c["val"]["methods"]["SBI"] == c["val"]["real"]
    assert "pseudo-fakes" in capsys.readouterr().out
    assert main(["synth", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert main(["synth", "--data", str(prepared), "--out", str(tmp_path / "y"), "--set", "nope=1"]) == 2
