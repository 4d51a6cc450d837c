"""A normalised-head image classifier: any transformers image encoder, its pooled feature L2-normalised, then
one linear layer (GenD's ``LinearNorm`` head, arXiv 2508.06248, on any backbone).

This file is self-contained on purpose (torch + transformers only, no dftune import): ``save_pretrained``
copies it into every saved folder as ``normalised.py`` and writes ``auto_map`` into ``config.json``, so
the folder loads anywhere with ``AutoModelForImageClassification.from_pretrained(folder,
trust_remote_code=True)``. Inside dftune ``register()`` puts the classes into the Auto registries, and the
folder loads without ``trust_remote_code`` (transformers prefers a registered class to a folder's code).

Interface (stable):

``NormalisedConfig`` (``model_type = "dftune_normalised"``), fields besides the usual ``id2label`` /
``label2id``:
  - ``encoder``: the encoder's own config (a ``PreTrainedConfig`` or its dict with ``model_type``); the
    encoder is ``AutoModel.from_config(encoder)`` (ViTModel for a ViT config, CLIPVisionModel for a
    ``clip_vision_model`` config, Dinov2Model, TimmWrapperModel, ...).
  - ``pooling``: how the encoder's output becomes one feature per image: ``"cls"`` =
    ``last_hidden_state[:, 0]`` (ViT / DeiT / DINOv2, as their classifiers do; the encoder is then built
    with ``add_pooling_layer=False`` where it takes that argument), ``"pooler"`` = ``pooler_output``
    flattened (CLIP's post-layernorm CLS, ConvNeXt, ResNet, Swin, timm), ``"mean"`` = mean over tokens.
  - ``feature_size``: the pooled feature's width (None: read from the encoder config: ``hidden_size``, else
    ``hidden_sizes[-1]``, else ``num_features``).

``NormalisedForImageClassification(config)``: weights ``encoder.*`` (the encoder's own names, so a
``ViTModel`` state dict loads into ``model.encoder`` unchanged) and ``classifier.weight`` /
``classifier.bias`` (``nn.Linear(feature_size, num_labels)``). ``forward(pixel_values, labels=None)`` returns
a ``NormalisedClassifierOutput``: ``logits`` = ``classifier(F.normalize(pooled, dim=-1))``, ``features`` =
the unit-norm features (what uniformity / alignment losses use), ``loss`` (cross-entropy) when ``labels``
are given. ``model.features(pixel_values)`` returns the unit-norm features alone.

Building one:
  - from a config: ``NormalisedConfig(encoder=ViTConfig(...), pooling="cls", id2label={0: "real", 1:
    "fake"}, label2id=...)`` then ``NormalisedForImageClassification(config)`` and load the encoder's weights
    with ``model.encoder.load_state_dict(...)`` (a GenD checkpoint: ``feature_extractor.vision_model.*`` ->
    ``encoder.*`` for CLIP with ``pooling="pooler"``: transformers 5's ``CLIPVisionModel`` holds the vision
    transformer's modules itself; ``feature_extractor.backbone.*`` -> ``encoder.*`` for DINO with
    ``pooling="cls"``; ``model.linear.*`` -> ``classifier.*``; check the names against
    ``model.state_dict()``).
  - from a stock classifier (``ViTForImageClassification`` ...): ``from_classifier(model, feature_norm=None)``
    keeps its encoder's weights and labels; the classifier is copied scaled by ``feature_norm`` (a typical
    pooled-feature norm, so the logits start where the stock head's were for features of that norm) when
    given and the shapes agree, else freshly initialised. ``copy_head(new, old_linear, feature_norm)`` does
    that copy later (once the norm is measured with the new model's ``pooled``); ``reads_pooled(stock, new)``
    says whether the stock head reads the same feature at all (CLIP's reads the patch mean: no).

``register()`` (idempotent) registers both classes with ``AutoConfig`` / ``AutoModelForImageClassification``;
dftune calls it before every load (``dftune.model.load.register_families``). ``save_pretrained`` writes this
file and ``auto_map`` whether registered or not.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import ImageClassifierOutput

MODEL_TYPE = "dftune_normalised"
POOLINGS = ("cls", "pooler", "mean")


class NormalisedConfig(PreTrainedConfig):
    model_type = MODEL_TYPE
    _auto_class = "AutoConfig"  # save_pretrained writes this file and auto_map, registered or not
    sub_configs_defaults = {"encoder": SubConfigSpec(config_class=AutoConfig, model_type="vit")}

    encoder: PreTrainedConfig | dict | None = None
    pooling: str = "cls"
    feature_size: int | None = None
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r}: expected one of {', '.join(POOLINGS)}")
        if self.feature_size is None:
            self.feature_size = encoder_width(self.encoder)


def encoder_width(cfg) -> int:
    """The pooled feature width an encoder config describes."""
    for name in ("hidden_size", "num_features"):
        v = getattr(cfg, name, None)
        if isinstance(v, int):
            return v
    sizes = getattr(cfg, "hidden_sizes", None)
    if sizes:
        return int(sizes[-1])
    raise ValueError(f"{type(cfg).__name__}: cannot tell the feature width (no hidden_size, hidden_sizes or "
                     "num_features); give feature_size")


@dataclass
class NormalisedClassifierOutput(ImageClassifierOutput):
    """``ImageClassifierOutput`` plus ``features``: the unit-norm pooled features the head saw."""

    features: torch.FloatTensor | None = None


def _build_encoder(cfg, pooling: str):
    cls = AutoModel._model_mapping[type(cfg)]
    kwargs = {}
    if pooling == "cls" and "add_pooling_layer" in inspect.signature(cls.__init__).parameters:
        kwargs["add_pooling_layer"] = False  # the CLS token is the feature; a tanh pooler would be dead weight
    return cls(cfg, **kwargs)


class NormalisedForImageClassification(PreTrainedModel):
    config_class = NormalisedConfig
    config: NormalisedConfig
    base_model_prefix = "encoder"
    _auto_class = "AutoModelForImageClassification"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def __init__(self, config: NormalisedConfig):
        super().__init__(config)
        self.encoder = _build_encoder(config.encoder, config.pooling)
        self.classifier = nn.Linear(config.feature_size, config.num_labels)
        self.post_init()

    def pooled(self, pixel_values, **kwargs):
        out = self.encoder(pixel_values=pixel_values, **kwargs)
        how = self.config.pooling
        if how == "cls":
            x = out.last_hidden_state[:, 0]
        elif how == "mean":
            h = out.last_hidden_state
            x = h.mean(dim=1) if h.dim() == 3 else h.flatten(2).mean(dim=2)
        else:
            x = out.pooler_output.flatten(1)
        return x, out

    def features(self, pixel_values):
        """The unit-norm pooled features of ``pixel_values``."""
        return F.normalize(self.pooled(pixel_values)[0], p=2, dim=-1)

    def forward(self, pixel_values=None, labels=None, output_hidden_states=None, output_attentions=None,
                return_dict=None, **kwargs):
        extra = {k: v for k, v in (("output_hidden_states", output_hidden_states),
                                   ("output_attentions", output_attentions)) if v is not None}
        pooled, out = self.pooled(pixel_values, **extra)
        features = F.normalize(pooled, p=2, dim=-1)
        logits = self.classifier(features)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return NormalisedClassifierOutput(loss=loss, logits=logits, features=features,
                                          hidden_states=getattr(out, "hidden_states", None),
                                          attentions=getattr(out, "attentions", None))


def register() -> None:
    """Register the classes with transformers' Auto classes (idempotent). Saving needs no registration: the
    classes' ``_auto_class`` makes ``save_pretrained`` write this file and ``auto_map`` into the folder."""
    from transformers import AutoModelForImageClassification
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if MODEL_TYPE not in CONFIG_MAPPING:
        AutoConfig.register(MODEL_TYPE, NormalisedConfig)
        AutoModelForImageClassification.register(NormalisedConfig, NormalisedForImageClassification)


def from_classifier(model, feature_norm: float | None = None, pooling: str | None = None):
    """A ``NormalisedForImageClassification`` with ``model``'s encoder weights and labels.

    ``model`` is a stock ``*ForImageClassification`` whose ``base_model`` (or, for CLIP / SigLIP, its child
    ``vision_model``) is its encoder. ``pooling`` None:
    ``"pooler"`` when the encoder returns a ``pooler_output``, else ``"cls"``. The classifier is ``model``'s
    scaled by ``feature_norm`` when that is given and the shapes agree (logits unchanged for features of that
    norm), else freshly initialised."""
    if isinstance(model, NormalisedForImageClassification):
        return model
    enc = model.base_model
    if enc is model or not isinstance(enc, PreTrainedModel):  # CLIP / SigLIP classifiers: vision_model
        enc = next((m for m in model.children() if isinstance(m, PreTrainedModel)), None)
    if enc is None:
        raise ValueError(f"{type(model).__name__}: no separate encoder (base_model) to put a normalised head on")
    ecfg = enc.config.to_dict()
    for k in ("id2label", "label2id", "architectures", "auto_map"):
        ecfg.pop(k, None)
    ecfg = type(enc.config).from_dict(ecfg)
    if pooling is None:
        pooling = "cls" if getattr(enc, "pooler", "absent") is None else _probe_pooling(enc)
    cfg = NormalisedConfig(encoder=ecfg, pooling=pooling, id2label=dict(model.config.id2label),
                           label2id=dict(model.config.label2id))
    out = NormalisedForImageClassification(cfg)
    missing, _unexpected = out.encoder.load_state_dict(enc.state_dict(), strict=False)
    if missing:
        raise ValueError(f"{type(model).__name__}: its encoder lacks {len(missing)} weights the rebuilt one has "
                         f"(e.g. {missing[0]}); cannot put a normalised head on it")
    if feature_norm is not None:
        copy_head(out, getattr(model, "classifier", None), feature_norm)
    return out.to(next(model.parameters()).dtype)


def reads_pooled(stock, model: NormalisedForImageClassification) -> bool:
    """Whether ``stock``'s classifier reads the very feature ``model`` pools (its logits on a random image equal
    ``stock.classifier(model.pooled(x))``): then ``copy_head`` keeps its meaning. False for, e.g., CLIP's
    classifier (mean of the patch tokens) under GenD's pooling (the post-layernorm CLS)."""
    old = getattr(stock, "classifier", None)
    if not isinstance(old, nn.Linear) or old.in_features != model.config.feature_size:
        return False
    c = model.config.encoder
    size = getattr(c, "image_size", 224)
    size = size if isinstance(size, (list, tuple)) else (size, size)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, getattr(c, "num_channels", 3), *size[-2:], generator=g).to(next(stock.parameters()).dtype)
    was = stock.training, model.training
    stock.eval(), model.eval()
    with torch.no_grad():
        same = torch.allclose(stock(pixel_values=x).logits, old(model.pooled(x)[0]), atol=1e-4, rtol=1e-4)
    stock.train(was[0]), model.train(was[1])
    return bool(same)


def copy_head(model: NormalisedForImageClassification, old, feature_norm: float) -> bool:
    """``model.classifier`` = the stock head ``old`` with its weight scaled by ``feature_norm``: for a feature of
    that length the logits are the stock head's. False (nothing changed) when ``old`` is no ``nn.Linear`` of the
    same shape."""
    if not isinstance(old, nn.Linear) or tuple(old.weight.shape) != tuple(model.classifier.weight.shape):
        return False
    with torch.no_grad():
        model.classifier.weight.copy_(old.weight * float(feature_norm))
        model.classifier.bias.copy_(old.bias)
    return True


def _probe_pooling(enc) -> str:
    """``"pooler"`` when the encoder's output has a ``pooler_output`` (one forward on a blank image), else
    ``"cls"``."""
    c = enc.config
    size = getattr(c, "image_size", 224)
    size = size if isinstance(size, (list, tuple)) else (size, size)
    x = torch.zeros(1, getattr(c, "num_channels", 3), *size[-2:], dtype=next(enc.parameters()).dtype)
    with torch.no_grad():
        out = enc(pixel_values=x)
    return "pooler" if getattr(out, "pooler_output", None) is not None else "cls"
