"""The licence of what is shipped: the starting model's licence carried in dftune.json through train and merge,
printed by export, and the exported folder's README.md a Hugging Face model card that huggingface_hub parses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from conftest import hub_cache_entry
from dftune.cli import main
from dftune.model import card
from dftune.model import meta as modelmeta

torch.set_num_threads(1)

MIT_CARD = "---\nlicense: mit\nlibrary_name: transformers\n---\n\n# a starting model\n"
TRAIN = ["--no-progress", "--epochs", "1", "--batch-size", "8", "--no-aug", "--no-tensorboard",
         "--set", "num_workers=0", "--set", "max_train_batches=2"]


@pytest.fixture(scope="module")
def crops(make_crops) -> Path:
    return make_crops(n_videos=4, frames=3, size=32, methods=("Deepfakes",))


def test_licence_travels_from_the_start_through_train_merge_and_export(crops, tiny_vit, tmp_path, capsys):
    start = Path(tiny_vit({0: "real", 1: "fake"}, image_size=32))
    (start / "README.md").write_text(MIT_CARD)
    run = tmp_path / "run"
    assert main(["train", "--data", str(crops), "--model", str(start), "--out", str(run), *TRAIN]) == 0
    extra = modelmeta.load(run / "best").extra
    assert extra["licence"] == {"license": "mit", "from": str(start)}
    assert "base_model" not in extra  # a local folder names no hub model

    assert main(["merge", str(start), str(run / "best"), "--alpha", "0.5",
                 "--out", str(tmp_path / "wise")]) == 0
    assert modelmeta.load(tmp_path / "wise").extra["licence"]["license"] == "mit"

    capsys.readouterr()
    sub = tmp_path / "submit"
    assert main(["export", str(run / "best"), "--out", str(sub), "--bench-seconds", "0"]) == 0
    assert "licence: mit, as stated by " + str(start) in capsys.readouterr().out
    c = ModelCard.load(sub / "README.md")
    assert c.data.license == "mit" and c.data.pipeline_tag == "image-classification"
    assert c.data.datasets == [Path(crops).name]
    measured = {(r.dataset_split, r.metric_type): r.metric_value for r in c.data.eval_results}
    val = extra["metrics"]
    assert measured[("val (frame)", "f1")] == pytest.approx(val["frame"]["macro_f1"], abs=1e-6)
    assert measured[("val (video)", "roc_auc")] == pytest.approx(val["video"]["auc"], abs=1e-6)
    assert "predict_submission.py" in c.text  # the submission instructions follow the card's header
    assert json.loads((sub / "export_report.json").read_text())["licence"]["license"] == "mit"


def test_unknown_licence_is_said_and_a_hub_start_is_the_base_model(tmp_path, tiny_vit, capsys, monkeypatch):
    vit = Path(tiny_vit({0: "real", 1: "fake"}, image_size=32))
    assert card.provenance(vit, str(vit)) == {}
    (vit / "README.md").write_text(MIT_CARD)
    assert card.provenance(vit, "yermandy/GenD_CLIP_L_14") == {
        "licence": {"license": "mit", "from": "yermandy/GenD_CLIP_L_14"}, "base_model": "yermandy/GenD_CLIP_L_14"}
    (vit / "README.md").unlink()
    # a hub model loaded by from_pretrained has no README.md in its folder: its card is read from the cache
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    hub_cache_entry(tmp_path / "hf", "org/baseline", {"README.md": "---\nlicense: apache-2.0\n---\n"})
    assert card.provenance(vit, "org/baseline")["licence"]["license"] == "apache-2.0"
    meta = modelmeta.load(vit, {0: "real", 1: "fake"})
    text = card.model_card(meta)
    c = ModelCard(text)
    assert c.data.license is None and c.data.pipeline_tag == "image-classification"
    assert "licence: unknown" in text
    capsys.readouterr()
    assert main(["export", str(vit), "--out", str(tmp_path / "s"), "--bench-seconds", "0"]) == 0
    assert "licence: unknown" in capsys.readouterr().out
