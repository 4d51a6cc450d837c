"""GenD checkpoints (yermandy/GenD's format) as starting models, read by dftune's own code: offline, on a tiny
checkpoint written here in exactly that format (config fields, weight names), its logits compared with a
reference forward pass written here (GenD's: CLIP vision tower -> pooler_output -> L2-normalised -> linear)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import hub_cache_entry
from dftune.cli import main
from dftune.model import formats, gend
from dftune.model import meta as modelmeta

torch.set_num_threads(1)

BACKBONE = "openai/clip-vit-large-patch14"
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
              patch_size=8)
GEND_CONFIG = {"architectures": ["GenD"], "auto_map": {"AutoConfig": "modeling_gend.GenDConfig",
                                                       "AutoModel": "modeling_gend.GenD"},
               "backbone": BACKBONE, "head": "LinearNorm", "model_type": "GenD", "torch_dtype": "float32",
               "transformers_version": "4.56.2"}


def _encoder_files() -> dict[str, str]:
    from transformers import CLIPConfig, CLIPImageProcessor

    cfg = CLIPConfig(text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, vocab_size=99), vision_config=VISION,
                     projection_dim=16)
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return {"config.json": cfg.to_json_string(), "preprocessor_config.json": proc.to_json_string()}


def write_gend(folder: Path, backbone: str = BACKBONE, head: str = "LinearNorm", seed: int = 0) -> dict:
    """A GenD checkpoint folder as GenD's PreTrainedModel saves it, plus its model card; returns its weights."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    vision = CLIPVisionModel(CLIPVisionConfig(**VISION))
    # GenD keeps CLIP's CLIPVisionTransformer as feature_extractor.vision_model (transformers 5's CLIPVisionModel
    # no longer has that level; 4's does)
    state = {"feature_extractor.vision_model." + k.removeprefix("vision_model."): v.contiguous()
             for k, v in vision.state_dict().items()}
    state["feature_extractor.visual_projection.weight"] = torch.randn(16, 32)
    state["model.linear.weight"] = torch.randn(2, 32)
    state["model.linear.bias"] = torch.randn(2)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({**GEND_CONFIG, "backbone": backbone, "head": head}))
    (folder / "README.md").write_text("---\nlicense: mit\ntags:\n- deepfake-detection\n---\n\n# GenD\n")
    # the repository's code: dftune must never run it
    (folder / "modeling_gend.py").write_text("raise RuntimeError('the model repository\\'s code was executed')\n")
    return state


def reference_logits(state: dict, x: torch.Tensor) -> torch.Tensor:
    """GenD's forward, written out: the CLIP vision tower's pooler_output, L2-normalised, GenD's linear layer."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    vision = CLIPVisionModel(CLIPVisionConfig(**VISION)).eval()
    p = "feature_extractor.vision_model."
    level = "vision_model." if any(k.startswith("vision_model.") for k in vision.state_dict()) else ""
    vision.load_state_dict({level + k[len(p):]: v for k, v in state.items() if k.startswith(p)}, strict=True)
    with torch.no_grad():
        feats = vision(pixel_values=x).pooler_output
    return F.normalize(feats, p=2, dim=1) @ state["model.linear.weight"].T + state["model.linear.bias"]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache and dftune cache of the test's own; the hub offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("DFTUNE_CACHE", str(tmp_path / "dftune-cache"))
    return cache


def test_a_gend_folder_gives_gends_logits_labels_crops_and_licence(tmp_path, hub):
    from dftune import scoring

    hub_cache_entry(hub, BACKBONE, _encoder_files())
    state = write_gend(tmp_path / "GenD_tiny")
    m = scoring.load_model(tmp_path / "GenD_tiny", device="cpu")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = m.module(pixel_values=x).logits
    ref = reference_logits(state, x)
    assert torch.allclose(ours, ref, atol=1e-6), (ours - ref).abs().max()
    assert m.id2label == {0: "real", 1: "fake"} and m.meta.fake_index == 1
    c = m.meta.crop
    assert (c.detector, c.margin, c.size) == ("retinaface", 1.3, 224)  # GenD's RetinaFace + 1.3 crops
    assert m.meta.extra["licence"]["license"] == "mit"
    assert (m.pre.out_height, m.pre.out_width) == (32, 32)  # the backbone's processor: CLIP's centre crop
    # the converted folder is an ordinary dftune model folder, made once
    conv = Path(m.path)
    assert conv.parent == tmp_path / "dftune-cache" / "converted" and (conv / "dftune.json").is_file()
    assert formats.resolve(tmp_path / "GenD_tiny") == str(conv)


def test_a_hub_id_and_a_local_encoder_config(tmp_path, hub):
    """``--model org/GenD_x`` from its cache snapshot (the card's base_model); a GenD folder with the encoder's
    config in FOLDER/encoder/ loads with nothing in the cache."""
    enc = _encoder_files()
    state = write_gend(tmp_path / "src", seed=3)
    snap = hub_cache_entry(hub, "yermandy/GenD_tiny", {})
    for f in ("config.json", "model.safetensors", "README.md"):
        (snap / f).write_bytes((tmp_path / "src" / f).read_bytes())
    with pytest.raises(gend.GenDError, match=rf"hf download {BACKBONE} config.json preprocessor_config.json.*"
                                             rf"encoder/"):
        formats.resolve("yermandy/GenD_tiny")  # the encoder's config is nowhere offline
    (tmp_path / "src" / "encoder").mkdir()
    for name, text in enc.items():
        (tmp_path / "src" / "encoder" / name).write_text(text)
    from dftune import scoring

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    m = scoring.load_model(tmp_path / "src", device="cpu")
    with torch.no_grad():
        assert torch.allclose(m.module(pixel_values=x).logits, reference_logits(state, x), atol=1e-6)
    hub_cache_entry(hub, BACKBONE, enc)
    conv = formats.resolve("yermandy/GenD_tiny")
    assert modelmeta.load(conv).extra["base_model"] == "yermandy/GenD_tiny"


def test_bad_gend_folders_are_refused_naming_the_file(tmp_path, hub, capsys, make_crops):
    write_gend(tmp_path / "pe", backbone="vit_pe_core_large_patch14_336")
    with pytest.raises(gend.GenDError, match=r"pe/config.json.*Perception Encoder.*timm"):
        formats.resolve(tmp_path / "pe")
    write_gend(tmp_path / "odd", backbone="some/other-encoder")
    with pytest.raises(gend.GenDError, match=r"odd/config.json: unknown GenD backbone 'some/other-encoder'"):
        formats.resolve(tmp_path / "odd")
    write_gend(tmp_path / "nocfg")
    crops = make_crops(n_videos=2, frames=2, size=32, methods=("Deepfakes",))
    assert main(["evaluate", "--data", str(crops), "--model", str(tmp_path / "nocfg"), "--out",
                 str(tmp_path / "ev"), "--no-progress"]) == 2
    assert f"hf download {BACKBONE}" in capsys.readouterr().err


def test_gend_evaluates_predicts_fine_tunes_with_its_recipe_merges_and_exports(tmp_path, hub, make_crops, capsys):
    from huggingface_hub import ModelCard
    from PIL import Image

    hub_cache_entry(hub, BACKBONE, _encoder_files())
    g = tmp_path / "GenD_tiny"
    write_gend(g)
    crops = make_crops(n_videos=4, frames=3, size=32, methods=("Deepfakes",))
    assert main(["evaluate", "--data", str(crops), "--model", str(g), "--out", str(tmp_path / "ev"),
                 "--no-progress"]) == 0
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, p in enumerate(sorted((Path(crops)).rglob("*.jpg"))[:3]):
        Image.open(p).save(imgs / f"{i}.png")
    assert main(["predict", str(imgs), "--model", str(g), "--detector", "none", "--out",
                 str(tmp_path / "p.csv"), "--no-progress"]) == 0
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 4
    capsys.readouterr()
    run = tmp_path / "run"
    assert main(["train", "--data", str(crops), "--model", str(g), "--out", str(run), "--epochs", "1",
                 "--batch-size", "4", "--no-progress", "--no-tensorboard", "--set", "num_workers=0",
                 "--set", "max_train_batches=2"]) == 0
    assert "--recipe gend" in capsys.readouterr().err
    import yaml

    settings = yaml.safe_load((run / "settings.yaml").read_text())
    assert settings["recipe"] == "gend" and settings["tune"] == "layernorm"
    assert modelmeta.load(run / "best").extra["licence"]["license"] == "mit"
    assert main(["merge", str(g), str(run / "best"), "--alpha", "0.5", "--out", str(tmp_path / "wise")]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "wise"), "--out", str(tmp_path / "sub"), "--bench-seconds", "0"]) == 0
    assert "licence: mit" in capsys.readouterr().out
    assert ModelCard.load(tmp_path / "sub" / "README.md").data.license == "mit"


def test_exported_gend_script_agrees_with_predict_without_dftune(tmp_path, hub, without_dftune):
    import subprocess

    from dftune import synthetic

    hub_cache_entry(hub, BACKBONE, _encoder_files())
    g = tmp_path / "GenD_tiny"
    write_gend(g, seed=5)
    sub = tmp_path / "sub"
    assert main(["export", str(g), "--out", str(sub), "--bench-seconds", "0"]) == 0
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    from PIL import Image

    for i in range(3):
        ph = synthetic.identity(i)
        Image.fromarray(ph.rgb).save(imgs / f"{i}.png")
    ours, theirs = tmp_path / "ours.csv", tmp_path / "theirs.csv"
    assert main(["predict", str(imgs), "--model", str(g), "--detector", "none", "--out", str(ours),
                 "--no-progress"]) == 0
    r = subprocess.run([*without_dftune, str(sub / "predict_submission.py"), str(imgs), "--out", str(theirs),
                        "--detector", "none"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert ours.read_bytes() == theirs.read_bytes() and len(ours.read_text().splitlines()) == 4
