"""The normalised head (model/normalised.py, issue 29 item 1): GenD's LinearNorm head on any encoder, its
folder loadable inside dftune (registered) and outside it (the modeling file the folder carries)."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore")


def test_from_classifier_keeps_the_encoder_and_the_logits_at_the_feature_norm(tiny_vit):
    from transformers import AutoModelForImageClassification

    from dftune.model import normalised

    plain = AutoModelForImageClassification.from_pretrained(tiny_vit()).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        feats = plain.vit(pixel_values=x).last_hidden_state[:, 0]
        norm = float(feats.norm(dim=-1)[0])
        m = normalised.from_classifier(plain, feature_norm=norm).eval()
        assert m.config.pooling == "cls" and m.config.feature_size == 32
        out = m(pixel_values=x)
    # unit-norm features; the first image's logits equal the plain head's (its feature has exactly that norm)
    assert torch.allclose(out.features.norm(dim=-1), torch.ones(4), atol=1e-6)
    assert torch.allclose(out.features, torch.nn.functional.normalize(feats, dim=-1), atol=1e-6)
    with torch.no_grad():
        ref = plain(pixel_values=x).logits
    assert torch.allclose(out.logits[0], ref[0], atol=1e-5)
    assert set(m.state_dict()) == {f"encoder.{k}" for k in plain.vit.state_dict()} | {"classifier.weight",
                                                                                     "classifier.bias"}


def test_saved_folder_loads_in_dftune_and_in_plain_transformers(tiny_vit, tmp_path, without_dftune):
    from transformers import AutoModelForImageClassification

    from dftune.model.load import build_tiny_vit, load_classifier

    d = build_tiny_vit(tmp_path / "norm", head="normalised")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "dftune_normalised" and (d / "normalised.py").exists()
    assert cfg["auto_map"]["AutoModelForImageClassification"] == "normalised.NormalisedForImageClassification"
    model, _ = load_classifier(d)
    assert type(model).__module__ == "dftune.model.normalised"  # the registered class, not the folder's copy
    x = torch.randn(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        ref = model.eval()(pixel_values=x).logits
    assert torch.equal(ref, AutoModelForImageClassification.from_pretrained(d).eval()(pixel_values=x).logits)
    script = tmp_path / "load.py"
    script.write_text(
        "import sys, torch\n"
        "from transformers import AutoModelForImageClassification\n"
        f"m = AutoModelForImageClassification.from_pretrained({str(d)!r}, trust_remote_code=True).eval()\n"
        "assert 'dftune' not in type(m).__module__, type(m).__module__\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        "with torch.no_grad():\n"
        f"    torch.save(m(pixel_values=x).logits, {str(tmp_path / 'y.pt')!r})\n")
    r = subprocess.run([*without_dftune, str(script)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert torch.allclose(torch.load(tmp_path / "y.pt"), ref, atol=1e-6)


def test_unknown_pooling_is_refused():
    from transformers import ViTConfig

    from dftune.model.normalised import NormalisedConfig

    with pytest.raises(ValueError, match="pooling 'max'"):
        NormalisedConfig(encoder=ViTConfig(hidden_size=32), pooling="max")

