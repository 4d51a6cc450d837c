"""GenD checkpoints (Yermakov et al., WACV 2026; github.com/yermandy/GenD, MIT) as dftune models, read by dftune's
own code: nothing from the model repository is executed.

A GenD folder (``yermandy/GenD_CLIP_L_14``, ``GenD_DINOv3_L``, ``GenD_PE_L``, or any folder in that format) is a
``config.json`` with ``model_type: GenD``, ``backbone`` (the encoder's hub id: ``openai/clip-vit-large-patch14``,
``facebook/dinov3-...``, timm's ``vit_pe_...``) and ``head`` (``linear`` or ``LinearNorm``), and weights
``feature_extractor.*`` (the whole encoder) and ``model.linear.*`` (the 2-way head; logits [real, fake]).
GenD's forward is encoder -> pooled feature (CLIP: ``pooler_output``, the post-layernorm CLS; DINO:
``last_hidden_state[:, 0]``) -> L2-normalised (``LinearNorm``) -> linear.

That is exactly :class:`dftune.model.normalised.NormalisedForImageClassification`, so :func:`convert` writes a
dftune model folder of that class: the encoder built from the backbone's own config (the weights are all in the
GenD checkpoint), ``feature_extractor.vision_model.*`` -> ``encoder.vision_model.*`` (CLIP; the unused
``visual_projection`` dropped), ``feature_extractor.backbone.*`` -> ``encoder.*`` (DINO), ``model.linear.*``
-> ``classifier.*``; labels ``{0: real, 1: fake}`` as GenD's logits are; the backbone's image processor (GenD
preprocesses with it: CLIP's shortest-edge-224 bicubic resize and centre crop, CLIP's mean/std); and a
``dftune.json`` with GenD's face crops (RetinaFace, the box scaled 1.3), the licence its model card states and
the hub id as ``base_model``. :func:`dftune.model.formats.resolve`, which every command calls on a ``--model``,
turns a GenD source into that folder (once).

The backbone's config is looked for in ``FOLDER/encoder/`` (``config.json`` + ``preprocessor_config.json``,
for a machine without the hub), then in the Hugging Face cache, then (online) fetched: those two small files
only. A backbone dftune cannot build (unknown, or PE, whose encoder is a timm model: timm does not import
without torchvision, which dftune cannot install beside its torch) and a ``linear`` head (GenD's un-normalised
variant; the released checkpoints are ``LinearNorm``) are refused, naming the file and what to do.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

NAME = MODEL_TYPE = "GenD"
VERSION = "gend-1"  # of the conversion: a new one redoes converted folders
ENCODER_DIR = "encoder"  # inside a GenD folder: the backbone's config.json + preprocessor_config.json, offline
ENCODER_FILES = ("config.json", "preprocessor_config.json")
# GenD's published framing: RetinaFace boxes scaled by 1.3 (its src/retinaface.py), 224 px crops
CROP = {"detector": "retinaface", "margin": 1.3, "size": 224}
LABELS = {0: "real", 1: "fake"}  # GenD's logits: index 1 = fake


class GenDError(ValueError):
    """A GenD checkpoint dftune cannot read; the message names the file and what to do."""


def read_config(folder: str | os.PathLike) -> dict | None:
    """A folder's ``config.json`` when it is a GenD one, else None."""
    from dftune.model.formats import read_config as config_of

    cfg = config_of(folder)
    return cfg if cfg is not None and cfg.get("model_type") == MODEL_TYPE else None


def backbone_kind(backbone: str, where: str) -> str:
    """``clip`` or ``dino`` (as GenD's own dispatch, by name); refuses the others."""
    b = str(backbone).lower()
    if "clip" in b:
        return "clip"
    if "dino" in b:
        return "dino"
    if "vit_pe" in b:
        raise GenDError(f"{where}: backbone {backbone!r} is a Perception Encoder, which GenD builds with timm; timm "
                        f"does not import without torchvision, which cannot be installed beside dftune's torch, so "
                        f"dftune cannot build this encoder: use GenD_CLIP_L_14 or GenD_DINOv3_L")
    raise GenDError(f"{where}: unknown GenD backbone {backbone!r}: dftune reads CLIP (a name with 'clip') and "
                    f"DINOv2/v3 (a name with 'dino') backbones, as GenD's own code does")


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def encoder_folder(folder: Path, backbone: str) -> Path:
    """Where the backbone's ``config.json`` and ``preprocessor_config.json`` are: ``folder/encoder/``, the
    Hugging Face cache, or (online) fetched into it."""
    local = folder / ENCODER_DIR
    if all((local / f).is_file() for f in ENCODER_FILES):
        return local
    from huggingface_hub import hf_hub_download

    found = []
    for online in (False, True):
        if online and _hub_offline():
            break
        try:
            found = [Path(hf_hub_download(backbone, f, local_files_only=not online)) for f in ENCODER_FILES]
            break
        except Exception as e:  # noqa: BLE001 - not cached / no network: said below
            log.debug("%s: %s", backbone, e)
    if found:
        return found[0].parent
    raise GenDError(f"{folder / 'config.json'}: its encoder {backbone}'s config is not in the Hugging Face cache "
                    f"and cannot be fetched offline: run `hf download {backbone} config.json "
                    f"preprocessor_config.json` where the hub can be reached, or place those two files in "
                    f"{local}/")


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise GenDError(f"{folder}: a GenD config.json but no *.safetensors weights")
    out = {}
    for f in files:
        try:
            out.update(load_file(str(f)))
        except Exception as e:  # noqa: BLE001 - a truncated download: name the file
            raise GenDError(f"{f}: cannot read GenD's weights ({type(e).__name__}: {e}); download it again") from None
    return out


def _encoder_config(kind: str, enc_dir: Path):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(enc_dir))
    if kind == "clip" and hasattr(cfg, "vision_config"):  # a whole CLIP's config: GenD keeps its vision tower
        cfg = cfg.vision_config
    return cfg


# GenD's weight names -> the normalised class's, per backbone kind (None: not used by GenD's forward). GenD's
# CLIP tower is a CLIPVisionTransformer saved as feature_extractor.vision_model.*: transformers 4's CLIPVisionModel
# keeps that level (encoder.vision_model.*), transformers 5's does not (encoder.*); "{vision}" is the one in use
_RENAMES = {
    "clip": (("feature_extractor.vision_model.", "encoder.{vision}"),
             ("feature_extractor.visual_projection.", None)),
    "dino": (("feature_extractor.backbone.", "encoder."),),
}
_POOLING = {"clip": "pooler", "dino": "cls"}


def build(folder: str | os.PathLike):
    """``(model, processor, gend_config)`` for GenD folder ``folder``: a
    :class:`~dftune.model.normalised.NormalisedForImageClassification` holding GenD's weights, and the
    backbone's image processor."""
    from transformers import AutoImageProcessor

    from dftune.model import normalised

    folder = Path(folder)
    cfg = read_config(folder)
    where = str(folder / "config.json")
    if cfg is None:
        raise GenDError(f"{where}: not a GenD config (model_type {MODEL_TYPE!r})")
    backbone, head = cfg.get("backbone"), cfg.get("head", "linear")
    if not backbone:
        raise GenDError(f"{where}: no 'backbone' (the encoder's name) in a GenD config")
    kind = backbone_kind(backbone, where)
    if head != "LinearNorm":
        raise GenDError(f"{where}: head {head!r}: dftune reads GenD's LinearNorm head (the L2-normalised feature "
                        f"before the linear layer, as the released checkpoints have); a {head!r} head is not "
                        f"supported")
    enc_dir = encoder_folder(folder, backbone)
    normalised.register()
    ncfg = normalised.NormalisedConfig(encoder=_encoder_config(kind, enc_dir), pooling=_POOLING[kind],
                                       id2label=dict(LABELS), label2id={v: k for k, v in LABELS.items()})
    model = normalised.NormalisedForImageClassification(ncfg)
    own = model.state_dict()
    vision = "vision_model." if any(k.startswith("encoder.vision_model.") for k in own) else ""
    state, unknown = {}, []
    for name, t in _weights(folder).items():
        if name.startswith("model.linear."):
            state["classifier." + name[len("model.linear."):]] = t
            continue
        for old, new in _RENAMES[kind]:
            if name.startswith(old):
                if new is not None:
                    state[new.format(vision=vision) + name[len(old):]] = t
                break
        else:
            unknown.append(name)
    extra = sorted(set(state) - set(own)) + unknown
    missing = sorted(k for k in own if k not in state and not _is_derived(k))
    if extra or missing:
        raise GenDError(f"{folder}: GenD's weights do not fit backbone {backbone} as its config "
                        f"({enc_dir / 'config.json'}) describes it: "
                        + (f"{len(missing)} missing, e.g. {missing[:2]}" if missing else "")
                        + ("; " if missing and extra else "")
                        + (f"{len(extra)} unexpected, e.g. {extra[:2]}" if extra else ""))
    bad = [k for k in state if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise GenDError(f"{folder}: weight {bad[0]} has shape {tuple(state[bad[0]].shape)}, backbone {backbone}'s "
                        f"config gives {tuple(own[bad[0]].shape)}: the encoder config is not this checkpoint's")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    processor = AutoImageProcessor.from_pretrained(str(enc_dir))
    return model, processor, cfg


def _is_derived(name: str) -> bool:
    """Buffers a model computes itself (position ids), which a checkpoint need not hold."""
    return name.endswith("position_ids")


def convert(folder: str | os.PathLike, out: str | os.PathLike, source: str | None = None) -> Path:
    """Write GenD folder ``folder`` as a dftune model folder ``out`` (atomically); ``source``: the name the
    user gave (a hub id becomes the card's ``base_model``)."""
    from dftune.atomic import staged_folder
    from dftune.model import card
    from dftune.model import meta as modelmeta

    folder = Path(folder)
    model, processor, _cfg = build(folder)
    source = str(source or folder)
    meta = modelmeta.ModelMeta(fake_index=1, real_index=0, crop=modelmeta.CropSettings.from_dict(CROP),
                               extra={"converted_from": {"format": "GenD", "source": source,
                                                         "folder": str(folder)},
                                      **card.provenance(folder, source)})
    with staged_folder(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        modelmeta.save(tmp, meta)
    return Path(out)


def _hub_folder(source: str) -> Path | None:
    """A hub id's GenD files: the cached snapshot, or (online, and only when its config says GenD) downloaded:
    config, weights and model card, never its code."""
    from dftune.model.load import looks_local

    if looks_local(source) or source.count("/") != 1:
        return None
    from dftune.training.starting import local_snapshot

    snap = local_snapshot(source)
    if snap is not None:
        return Path(snap) if read_config(snap) else None
    if _hub_offline():
        return None
    try:
        from huggingface_hub import hf_hub_download, snapshot_download

        if read_config(Path(hf_hub_download(source, "config.json")).parent) is None:
            return None
        return Path(snapshot_download(source, allow_patterns=["config.json", "*.safetensors", "README.md"]))
    except Exception as e:  # noqa: BLE001 - not on the hub, no network: the ordinary loaders say so
        log.debug("%s: %s", source, e)
        return None


def source_folder(source: str | os.PathLike) -> Path | None:
    """The GenD folder ``source`` names (a folder, or a hub id), or None when it is not a GenD model."""
    s = str(source)
    if Path(s).is_dir():
        return Path(s) if read_config(s) else None
    return _hub_folder(s)
