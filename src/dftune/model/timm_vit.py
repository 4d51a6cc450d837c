"""timm Vision Transformer checkpoints (FSFM's ViT-B/16, ``timm/vit_*`` on the hub) as transformers ViT models.

transformers reads timm checkpoints through ``TimmWrapperForImageClassification``, which builds the model with
timm itself. timm cannot be used beside dftune's torch: every timm release imports torchvision when imported
(timm 1.0.31: ``timm/layers/create_norm.py`` imports ``torchvision.ops.misc``; installed without its
dependencies, ``import timm`` fails with ``No module named 'torchvision'``), and PyPI's torchvision does not
import beside the torch build dftune pins. So dftune converts instead, for the family whose architecture
transformers has: a timm ``VisionTransformer`` with class-token pooling is transformers' ViT, block for block
(pre-norm blocks, fused ``qkv`` split into q/k/v, the final norm, the head on the class token).

A timm folder, as timm saves to the hub: ``config.json`` with ``architecture`` (e.g. ``vit_base_patch16_224``),
``num_classes``, optional ``label_names``, ``global_pool`` and ``pretrained_cfg`` (``input_size``, ``mean``,
``std``, ``interpolation``, ``crop_pct``, ``crop_mode``), and ``model.safetensors`` (or ``pytorch_model.bin``)
with timm's names. :func:`convert` writes a ``ViTForImageClassification`` folder: the sizes read from the
weights (width, depth, MLP width, patch size, tokens) and the head count from ``model_args.num_heads`` or the
architecture's name (tiny 3, small 6, base 12, large 16, huge 16); labels ``label_names`` for a 2-way head, else
a new 2-way head {0: real, 1: fake} (an ImageNet head or none, as a self-supervised encoder such as FSFM's has);
the processor timm's eval transform is (resize the shorter side to ``floor(size / crop_pct)`` with its
interpolation, centre crop, ``mean``/``std``), as a ``BitImageProcessor``: equal to timm's where the margin the crop
cuts is even (224 at crop_pct 0.875, 0.9 or 1.0: 256, 248, 224; tested), one pixel apart where it is odd (torchvision
rounds the crop's offset half up, transformers down; a warning says so). Refused, naming the file: other timm
families, average pooling (``global_pool: avg`` / ``fc_norm``), layer scale, register tokens, a pre-norm.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

NAME = "timm"
VERSION = "timm-vit-1"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HEADS = {"tiny": 3, "small": 6, "base": 12, "large": 16, "huge": 16}
LABELS = {0: "real", 1: "fake"}
_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1, "box": 4, "hamming": 5}


class TimmError(ValueError):
    """A timm checkpoint dftune cannot read; the message names the file and what to do."""


def read_config(folder: str | os.PathLike) -> dict | None:
    """A folder's ``config.json`` when it is timm's (``architecture``, no ``model_type``), else None."""
    from dftune.model.formats import read_config as config_of

    cfg = config_of(folder)
    return cfg if cfg is not None and "architecture" in cfg and "model_type" not in cfg else None


def source_folder(source: str | os.PathLike) -> Path | None:
    """The timm folder ``source`` names (a folder, or a hub id's cached snapshot), or None."""
    s = str(source)
    if Path(s).is_dir():
        return Path(s) if read_config(s) else None
    from dftune.model.load import looks_local

    if looks_local(s) or s.count("/") != 1:
        return None
    from dftune.training.starting import local_snapshot

    snap = local_snapshot(s)
    return Path(snap) if snap is not None and read_config(snap) else None


def _weights(folder: Path) -> dict:
    import torch

    for name in WEIGHT_FILES:
        f = folder / name
        if f.is_file():
            try:
                if name.endswith(".safetensors"):
                    from safetensors.torch import load_file

                    return load_file(str(f))
                state = torch.load(str(f), map_location="cpu", weights_only=True)
                return state.get("model", state) if isinstance(state, dict) else state
            except Exception as e:  # noqa: BLE001 - a truncated file: name it
                raise TimmError(f"{f}: cannot read the timm weights ({type(e).__name__}: {e})") from None
    raise TimmError(f"{folder}: a timm config.json but no {' or '.join(WEIGHT_FILES)}")


def _heads(cfg: dict, arch: str, where: str) -> int:
    n = (cfg.get("model_args") or {}).get("num_heads")
    if n:
        return int(n)
    for size, heads in HEADS.items():
        if re.search(rf"(^|_){size}(_|$)", arch):
            return heads
    raise TimmError(f"{where}: cannot tell the head count of {arch!r} (no model_args.num_heads and no "
                    f"tiny/small/base/large/huge in the name): add \"model_args\": {{\"num_heads\": N}}")


def processor_of(pretrained_cfg: dict):
    """timm's eval transform of ``pretrained_cfg`` as a transformers image processor: the shorter side resized
    to ``floor(size / crop_pct)`` with its interpolation, a centre crop of ``input_size``, ``mean``/``std``."""
    from transformers import BitImageProcessorPil

    _, h, w = pretrained_cfg.get("input_size", (3, 224, 224))
    crop_pct = float(pretrained_cfg.get("crop_pct") or 0.875)
    mode = pretrained_cfg.get("crop_mode", "center")
    if mode != "center":
        raise TimmError(f"pretrained_cfg crop_mode {mode!r}: dftune reproduces timm's 'center' mode only")
    interp = str(pretrained_cfg.get("interpolation", "bicubic"))
    if interp not in _RESAMPLE:
        raise TimmError(f"pretrained_cfg interpolation {interp!r}: expected one of {', '.join(_RESAMPLE)}")
    scale = math.floor(min(h, w) / crop_pct) if h == w else None
    if scale is None:
        raise TimmError(f"pretrained_cfg input_size {h}x{w}: dftune reproduces square inputs only")
    if (scale - h) % 2:  # torchvision's centre crop rounds half a pixel up, transformers' down
        log.warning("timm crop_pct %s: a square crop is resized to %d and cut to %d, an odd margin; timm's centre "
                    "crop and dftune's differ by one pixel there", crop_pct, scale, h)
    return BitImageProcessorPil(size={"shortest_edge": scale}, crop_size={"height": h, "width": w},
                                resample=_RESAMPLE[interp], do_center_crop=True,
                                image_mean=list(pretrained_cfg.get("mean", (0.485, 0.456, 0.406))),
                                image_std=list(pretrained_cfg.get("std", (0.229, 0.224, 0.225))))


def build(folder: str | os.PathLike):
    """``(ViTForImageClassification, processor)`` of timm folder ``folder``."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    folder = Path(folder)
    where = str(folder / "config.json")
    cfg = read_config(folder)
    if cfg is None:
        raise TimmError(f"{where}: not a timm config (no 'architecture')")
    arch = str(cfg["architecture"])
    if not arch.startswith(("vit_", "deit_")) or "distilled" in arch:
        raise TimmError(f"{where}: architecture {arch!r}: dftune converts timm Vision Transformers (vit_*) only; "
                        f"other timm models need timm itself, which does not import without torchvision")
    sd = _weights(folder)
    bad = sorted({k.split(".")[0] if "." in k else k for k in sd
                  if k.startswith(("fc_norm", "reg_token", "norm_pre", "attn_pool"))
                  or re.search(r"\.ls[12]\.|\.attn\.(q_norm|k_norm)|\.norm\.|mlp\.norm", k)})
    if str(cfg.get("global_pool", "token")) not in ("token", "") or bad:
        raise TimmError(f"{where}: {arch} pools or normalises differently from transformers' ViT "
                        f"(global_pool {cfg.get('global_pool', 'token')!r}{', has ' + ', '.join(bad) if bad else ''}); "
                        f"dftune converts class-token ViTs only")
    need = ("cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight")
    missing = [k for k in need if k not in sd]
    if missing:
        raise TimmError(f"{folder}: timm ViT weights lack {', '.join(missing)}")
    d = int(sd["cls_token"].shape[-1])
    patch = int(sd["patch_embed.proj.weight"].shape[-1])
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    n_tokens = int(sd["pos_embed"].shape[1]) - 1
    grid = int(round(math.sqrt(n_tokens)))
    if grid * grid != n_tokens:
        raise TimmError(f"{folder}: pos_embed holds {n_tokens} patch positions, not a square grid")
    pcfg = dict(cfg.get("pretrained_cfg") or {})
    head_w = sd.get("head.weight")
    names = cfg.get("label_names")
    if head_w is not None and head_w.shape[0] == 2 and names and len(names) == 2:
        id2label = {i: str(n) for i, n in enumerate(names)}
        keep_head = True
    else:
        id2label, keep_head = dict(LABELS), False
        log.warning("%s: %s; a new 2-way head {0: real, 1: fake} is put on its encoder", folder,
                    "no classifier head" if head_w is None else f"a {head_w.shape[0]}-way head without 2 label names")
    vcfg = ViTConfig(image_size=grid * patch, patch_size=patch, hidden_size=d, num_hidden_layers=depth,
                     num_attention_heads=_heads(cfg, arch, where),
                     intermediate_size=int(sd["blocks.0.mlp.fc1.weight"].shape[0]), hidden_act="gelu",
                     layer_norm_eps=1e-6, qkv_bias="blocks.0.attn.qkv.bias" in sd, num_labels=2,
                     id2label=id2label, label2id={v: k for k, v in id2label.items()})
    model = ViTForImageClassification(vcfg)
    state = {"vit.embeddings.cls_token": sd["cls_token"], "vit.embeddings.position_embeddings": sd["pos_embed"],
             "vit.embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
             "vit.layernorm.weight": sd["norm.weight"], "vit.layernorm.bias": sd["norm.bias"]}
    if "patch_embed.proj.bias" in sd:
        state["vit.embeddings.patch_embeddings.projection.bias"] = sd["patch_embed.proj.bias"]
    for i in range(depth):
        b, o = f"blocks.{i}.", f"vit.layers.{i}."
        for src, dst in (("norm1", "layernorm_before"), ("norm2", "layernorm_after"), ("attn.proj", "attention.o_proj"),
                         ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            for t in ("weight", "bias"):
                state[f"{o}{dst}.{t}"] = sd[f"{b}{src}.{t}"]
        for t in ("weight", "bias"):
            if f"{b}attn.qkv.{t}" in sd:
                for part, name in zip(sd[f"{b}attn.qkv.{t}"].chunk(3, dim=0), ("q_proj", "k_proj", "v_proj"),
                                      strict=True):
                    state[f"{o}attention.{name}.{t}"] = part
    if keep_head:
        state["classifier.weight"], state["classifier.bias"] = sd["head.weight"], sd["head.bias"]
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:  # transformers' ViT names changed (transformers 4 names its blocks otherwise)
        raise TimmError(f"{folder}: this transformers' ViT has no {unknown[0]}; dftune converts for transformers 5")
    shapes = [k for k in state if tuple(state[k].shape) != tuple(own[k].shape)]
    if shapes:
        raise TimmError(f"{folder}: {shapes[0]} has shape {tuple(state[shapes[0]].shape)}, the converted ViT "
                        f"expects {tuple(own[shapes[0]].shape)}")
    with torch.no_grad():
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return model, processor_of(pcfg)


def convert(folder: str | os.PathLike, out: str | os.PathLike, source: str | None = None) -> Path:
    """Write timm folder ``folder`` as a transformers ViT folder ``out`` (atomically) with a ``dftune.json``
    naming where it came from and the licence its model card states."""
    from dftune.atomic import staged_folder
    from dftune.model import card
    from dftune.model import meta as modelmeta
    from dftune.portable import fake_index_of

    folder = Path(folder)
    model, processor = build(folder)
    source = str(source or folder)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    fake = fake_index_of(id2label, None, None, str(folder))
    meta = modelmeta.ModelMeta(fake_index=fake, real_index=1 - fake,
                               extra={"converted_from": {"format": "timm", "source": source, "folder": str(folder)},
                                      **card.provenance(folder, source)})
    with staged_folder(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        modelmeta.save(tmp, meta)
    return Path(out)
