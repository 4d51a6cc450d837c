"""Loading Hugging Face image classifiers, and the small ones dftune builds itself.

``load_classifier`` takes a local folder or a hub id (the hub works for users who
are online; dftune never needs it in its tests or demo). ``build_tiny_vit`` makes
a small randomly initialised ViT from a config, saved like any hub model, for the
tests and the demo.
"""

from __future__ import annotations

import os
from pathlib import Path


def looks_local(src: str) -> bool:
    """Whether ``src`` names a folder rather than a hub id: it exists, or it is written as a path (``./x``,
    ``/x``, ``~/x``, ``a/b/c``); ``org/name`` is a hub id."""
    s = str(src)
    return (Path(s).expanduser().exists() or s.startswith((".", "/", "~")) or s.count("/") > 1
            or os.path.sep != "/" and os.path.sep in s)


def register_families() -> None:
    """Put dftune's own model classes (``model.normalised``) into transformers' Auto registries, so their
    folders load without ``trust_remote_code``; called before every load (idempotent, cheap)."""
    from . import normalised

    normalised.register()


def load_classifier(name_or_path: str | os.PathLike, num_labels: int | None = None, **kwargs):
    """Return ``(model, image_processor)`` for any ``AutoModelForImageClassification``.

    Errors name the model and say what is wrong (missing folder, no weights, offline).
    """
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    register_families()
    src = str(name_or_path)
    if looks_local(src):
        if not Path(src).exists():
            raise FileNotFoundError(f"{src}: model folder does not exist")
        if not (Path(src) / "config.json").exists():
            raise FileNotFoundError(f"{src}: not a Hugging Face model folder (no config.json)")
    try:
        model = AutoModelForImageClassification.from_pretrained(src, **kwargs)
        processor = AutoImageProcessor.from_pretrained(src)
    except OSError as e:
        raise OSError(f"{src}: could not load the model ({e}). A hub id needs network access; "
                      f"a local folder needs config.json, weights and preprocessor_config.json") from e
    return as_float32(model), processor


def as_float32(model):
    """``model`` with float32 parameters and buffers: a checkpoint saved in bf16/fp16 (which transformers 5
    loads as saved) would otherwise train with no float32 master copy, and a fine-tune's small updates
    (lr 1e-5 moves a weight by less than bf16's resolution) would round away. Mixed precision stays
    autocast's job. Casting bf16/fp16 up to float32 is exact."""
    import torch

    if any(t.is_floating_point() and t.dtype != torch.float32
           for t in [*model.parameters(), *model.buffers()]):
        model = model.float()  # save_pretrained then records (and writes) float32
    return model


def build_tiny_vit(out_dir: str | os.PathLike, id2label: dict | None = None, image_size: int = 32,
                   patch_size: int = 8, hidden_size: int = 32, layers: int = 2, heads: int = 2,
                   seed: int = 0, head: str = "linear") -> Path:
    """Save a small random ViT image classifier and its processor to ``out_dir``; ``head="normalised"``: the
    same encoder under a normalised head (``model.normalised``), its classifier freshly initialised."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    id2label = id2label or {0: "Realism", 1: "Deepfake"}
    id2label = {int(k): v for k, v in id2label.items()}
    cfg = ViTConfig(
        image_size=image_size, patch_size=patch_size, hidden_size=hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=hidden_size * 2, num_labels=len(id2label),
        id2label=id2label, label2id={v: k for k, v in id2label.items()},
    )
    torch.manual_seed(seed)
    model = ViTForImageClassification(cfg)
    if head == "normalised":
        from .normalised import from_classifier

        model = from_classifier(model)
    elif head != "linear":
        raise ValueError(f"head {head!r}: expected linear or normalised")
    proc = ViTImageProcessor(size={"height": image_size, "width": image_size},
                             image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    out = Path(out_dir)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out
