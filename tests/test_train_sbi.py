"""`dftune train --sbi P`: real training crops become self-blended pseudo-fakes on the fly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dftune.portable import Preprocess
from dftune.prepared import read_manifest
from dftune.stages import train
from dftune.training import data
from dftune.training.config import TrainConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def crops(make_crops):
    return make_crops("sbi_crops", n_videos=6, frames=4, size=32, methods=("Deepfakes",))


def _ds(crops, sbi, seed=0, split="train"):
    spec = Preprocess(out_height=32, out_width=32, resize_height=32, resize_width=32)
    rows = read_manifest(crops, splits=[split])
    return data.CropDataset(crops, rows, data.make_transform(spec, None), seed=seed, sbi=sbi), rows


def test_sbi_turns_the_expected_share_of_reals_into_fakes(crops):
    ds, rows = _ds(crops, sbi=0.5)
    reals = [i for i, r in enumerate(rows) if r.label == 0]
    fakes = [i for i, r in enumerate(rows) if r.label == 1]
    flipped = []
    for epoch in range(10):
        for i in reals:
            s = ds[(i, epoch)]
            if s["label"] == 1:
                flipped.append(i)
                plain = data.read_rgb(ds.paths[i])
                assert not np.array_equal(s["image"], plain)  # really blended
            else:
                assert np.array_equal(s["image"], data.read_rgb(ds.paths[i]))
        for i in fakes[:5]:
            assert ds[(i, epoch)]["label"] == 1  # fakes stay fakes
    share = len(flipped) / (10 * len(reals))
    assert 0.35 < share < 0.65
    # expected counts: pseudo-fakes count as fake for the class balance
    n_real, n_fake = len(reals), len(fakes)
    assert ds.class_counts() == pytest.approx([n_real * 0.5, n_fake + n_real * 0.5])


def test_sbi_is_deterministic_under_a_seed_and_off_outside_training(crops):
    a, rows = _ds(crops, sbi=0.9, seed=1)
    b, _ = _ds(crops, sbi=0.9, seed=1)
    c, _ = _ds(crops, sbi=0.9, seed=2)
    i = next(i for i, r in enumerate(rows) if r.label == 0)
    sa, sb = a[(i, 3)], b[(i, 3)]
    assert sa["label"] == sb["label"] and np.array_equal(sa["image"], sb["image"])
    assert any(not np.array_equal(a[(i, e)]["image"], c[(i, e)]["image"]) for e in range(5))
    # without an epoch (evaluation-style access) nothing is altered
    assert a[i]["label"] == 0 and np.array_equal(a[i]["image"], data.read_rgb(a.paths[i]))


def test_balanced_sampler_accounts_for_pseudo_fakes():
    y = np.array([0] * 20 + [1] * 80)
    s = data.EpochSampler(y, seed=0, balanced=True, sbi=0.3)
    reals = fakes = 0.0
    for epoch in range(20):
        s.set_epoch(epoch)
        drawn = y[[i for i, _ in s]]
        reals += (drawn == 0).sum() * 0.7
        fakes += (drawn == 1).sum() + (drawn == 0).sum() * 0.3
    assert 0.45 < reals / (reals + fakes) < 0.55
    with pytest.raises(ValueError, match="sbi"):
        TrainConfig(balance="sampler", sbi=0.6)
    with pytest.raises(ValueError, match="sbi"):
        TrainConfig(sbi=1.0)


def test_train_with_sbi_on_reals_only(crops, tmp_path):
    """SBI's own use: a detector trained from real faces alone (pseudo-fakes are the only fakes)."""

    from dftune.model.load import build_tiny_vit

    only_real = tmp_path / "reals"
    only_real.mkdir()
    lines = (crops / "manifest.csv").read_text().splitlines()
    header, body = lines[0], lines[1:]
    keep = [line for line in body if ",train," not in line or line.split(",")[1] == "0"]
    (only_real / "manifest.csv").write_text("\n".join([header] + keep) + "\n")
    for split in ("train", "val", "test"):
        (only_real / split).symlink_to(crops / split)
    model = build_tiny_vit(tmp_path / "vit", image_size=32, hidden_size=64)
    out = tmp_path / "run"
    summary = train.run(only_real, str(model), out, TrainConfig(epochs=1, batch_size=8, num_workers=0, aug=False,
                                                             tensorboard=False, sbi=0.5, lr=1e-3), progress=False)
    import yaml

    settings = yaml.safe_load((out / "settings.yaml").read_text())
    assert settings["sbi"] == 0.5
    n_real = sum(1 for line in keep if ",train," in line)
    # pseudo-fakes count as fake for the class weights: expected counts n_real * (1 - p) and n_real * p
    assert settings["_train_counts"] == {"real": n_real // 2, "fake": n_real // 2}
    assert summary.epochs_run == 1 and (out / "best" / "dftune.json").exists()
