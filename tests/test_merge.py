"""dftune merge: WiSE-FT and soups — alpha 0/1 return the inputs exactly, labels are reconciled by
name, other architectures or label sets are refused, the greedy soup keeps what helps on val."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dftune.cli import main  # noqa: E402
from dftune.model.load import build_tiny_vit  # noqa: E402
from dftune.stages import merge  # noqa: E402


def _state(d):
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification.from_pretrained(d).state_dict()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    a = build_tiny_vit(root / "a", image_size=32, seed=0)
    b = build_tiny_vit(root / "b", image_size=32, seed=1)
    return root, a, b


def test_alpha_0_and_1_return_the_inputs_exactly(models, tmp_path):
    root, a, b = models
    for alpha, src in ((0.0, a), (1.0, b)):
        out = tmp_path / f"m{alpha}"
        assert main(["merge", "--model", str(a), "--model", str(b), "--alpha", str(alpha), "--out", str(out)]) == 0
        got, want = _state(out), _state(src)
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_half_way_is_the_mean_and_the_folder_is_plain_hf_with_dftune_json(models, tmp_path):
    import json

    root, a, b = models
    out = tmp_path / "wise"
    merge.run([str(a), str(b)], out, alpha=0.5)
    sa, sb, got = _state(a), _state(b), _state(out)
    k = next(n for n in sa if n.endswith("attention.q_proj.weight") or n.endswith("query.weight"))
    assert torch.allclose(got[k], (sa[k] + sb[k]) / 2, atol=1e-6)
    meta = json.loads((out / "dftune.json").read_text())
    assert meta["threshold"] == 0.5 and meta["extra"]["merge"]["kind"] == "wise-ft"
    assert (out / "preprocessor_config.json").exists()


def test_label_orders_are_reconciled_by_name(models, tmp_path):
    """A model saved with its labels (and head rows) swapped averages with the original to itself."""
    from transformers import AutoModelForImageClassification

    root, a, _ = models
    m = AutoModelForImageClassification.from_pretrained(a)
    with torch.no_grad():
        m.classifier.weight.copy_(m.classifier.weight.flip(0))
        m.classifier.bias.copy_(m.classifier.bias.flip(0))
    m.config.id2label, m.config.label2id = {0: "Deepfake", 1: "Real"}, {"Deepfake": 0, "Real": 1}
    swapped = tmp_path / "swapped"
    m.save_pretrained(swapped)
    from transformers import AutoImageProcessor

    AutoImageProcessor.from_pretrained(a).save_pretrained(swapped)
    out = tmp_path / "mix"
    merge.run([str(a), str(swapped)], out, alpha=0.5)
    got, want = _state(out), _state(a)
    assert all(torch.allclose(got[k].float(), want[k].float(), atol=1e-6) for k in want)


def test_other_architectures_and_label_sets_are_refused(models, tmp_path):
    root, a, _ = models
    other = build_tiny_vit(tmp_path / "other", image_size=32, hidden_size=16)
    with pytest.raises(merge.MergeError, match="shapes differ|another architecture"):
        merge.run([str(a), str(other)], tmp_path / "x")
    three = build_tiny_vit(tmp_path / "three", {0: "real", 1: "fake", 2: "other"}, image_size=32)
    with pytest.raises(merge.MergeError, match="3 labels"):
        merge.run([str(a), str(three)], tmp_path / "y")
    with pytest.raises(merge.MergeError, match="between 0 and 1"):
        merge.run([str(a), str(a)], tmp_path / "z", alpha=1.5)


def test_greedy_soup_keeps_only_what_does_not_hurt_val(models, tmp_path):
    from dftune.synthetic import make_crops

    root, a, b = models
    data = make_crops(tmp_path / "data", n_videos=4, frames=2, size=32).parent
    r = merge.greedy_soup([str(a), str(b), str(a)], tmp_path / "soup", data)
    assert r["models"][0] == max(r["val"], key=r["val"].get)  # starts from the best on val
    assert r["soup_val"] >= max(r["val"].values()) - 1e-12  # never worse than its best ingredient
    assert (tmp_path / "soup" / "config.json").exists()
