"""predict says what it decided: the share of files labelled fake at the applied threshold and at 0.5, in the
summary and the CSV's sidecar, with a warning when nearly all or nearly none are fake."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dftune.cli import main


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("share")
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i:02d}.png")
    return d


def _predict(images, model, out, *extra) -> dict:
    rc = main(["predict", str(images), "--model", model, "--csv", str(out), "--detector", "none", "--tta", "none",
               "--no-progress", *extra])
    assert rc == 0
    return json.loads((out.parent / (out.name + ".json")).read_text())


def test_share_fake_in_summary_and_sidecar(images, tiny_vit, tmp_path, capsys):
    vit = tiny_vit()
    side = _predict(images, vit, tmp_path / "p.csv", "--threshold", "0")
    said = capsys.readouterr()
    err = said.err  # warnings on stderr, the summary on stdout
    probs = np.array([float(line.split(",")[2]) for line in (tmp_path / "p.csv").read_text().splitlines()[1:]])
    assert side["share_fake"] == 1.0 and side["files"] == 20
    assert side["share_fake_at_05"] == pytest.approx(float(np.mean(probs >= 0.5)))
    assert side["decided"].startswith("20 of 20 files labelled fake (100.0%) at threshold 0; at 0.5:")
    assert "100.0% of the 20 files are labelled fake at threshold 0" in side["share_warning"]
    assert "share labelled fake" in said.out and "warning" in err and "100.0% of the 20 files" in err

    side = _predict(images, vit, tmp_path / "q.csv", "--threshold", "1.01")
    assert side["share_fake"] == 0.0 and "0.0% of the 20 files" in side["share_warning"]
    capsys.readouterr()
    mid = float(np.median(probs))
    side = _predict(images, vit, tmp_path / "r.csv", "--threshold", f"{mid}")
    assert 0.05 <= side["share_fake"] <= 0.95 and side["share_warning"] is None
    assert "warning" not in capsys.readouterr().err
