"""Which parameters train, and at what learning rate (``dftune train --tune/--freeze/--head-epochs/--lr-decay``).

Modes (``--tune``), each with the classifier head fully trainable:

- ``full``: every parameter (the guide's fine-tuning; the default).
- ``head``: the head only (a linear probe).
- ``layernorm``: LayerNorm weights and biases + the head (GenD's recipe for CLIP-style encoders).
- ``bias``: every bias + the head (BitFit).
- ``lora``: low-rank adapters (PEFT's ``LoraConfig``) on the encoder's Linear layers + the head
  (``modules_to_save``). Checkpoint folders hold the adapters *merged* into the weights, so ``best/`` and
  ``last/`` are plain Hugging Face models; ``last/training_state/`` holds the unmerged model (adapters
  included) that ``--resume`` continues.
- ``svd-residual``: Effort's parameterisation (Yan et al., ICML 2025) of the attention projections (q, k, v and
  the output projection of every attention block): each weight W = U S V^T is split into its top r - K singular
  components, frozen, and the K smallest, ``U_residual diag(S_residual) V_residual``, which train (``--svd-rank
  K``, default 1 as Effort's r - 1 of r) + the head. The biases and every other layer stay frozen. Checkpoint
  folders hold the merged weights (W_main + the residual): plain models of the family; the training state keeps
  the split for ``--resume``. A family without attention projections (ConvNeXt, ResNet, ...) is refused.

``--freeze PATTERN`` (a regex, ``re.search`` on parameter names, repeatable) then freezes whatever it
matches. ``--head-epochs N`` trains the head alone for the first N epochs (LP-FT), then the mode's set.

The head is every parameter outside the model's base model (``model.base_model_prefix``, e.g. ``vit``),
i.e. ``classifier.*`` for ViT, ConvNeXt, Swin, ...; for a model without one, the Linear layer(s) with
``num_labels`` outputs.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

TUNE = ("full", "head", "layernorm", "lora", "bias", "svd-residual")

# the encoder's blocks: "layers.3." (transformers 5 ViT), "layer.3." (BERT-style ViT), "blocks.3." (timm)
_LAYER = re.compile(r"(?:^|\.)(?:layers?|blocks?|resblocks)\.(\d+)\.")
# blocks numbered inside stages: "stages.2.layers.0." (ConvNeXt, ResNet, RegNet), "layers.2.blocks.0." (Swin)
_STAGE = re.compile(r"(?:^|\.)(?:stages?|layers?|blocks?|resblocks)\.(\d+)\.(?:layers?|blocks?|resblocks)\.(\d+)\.")
_IN_STAGE = re.compile(r"(?:^|\.)(?:stages?|layers?|blocks?|resblocks)\.\d+\.")  # a stage's, in a block or not
# a module path inside an attention block: "attention.attention" (ViT, DeiT, BEiT, DINOv2, Swin's "attention.self"),
# "self_attn" (CLIP, SigLIP), "attn" (timm); its Linear layers are the projections --tune svd-residual splits
_ATTENTION = re.compile(r"(?:^|\.)(?:[a-z_]*attn|[a-z_]*attention)(?:\.|$)", re.I)
_EMBED = re.compile(r"embed|stem|cls_token|pos_|position|patch|mask_token|register", re.I)


class TuningError(ValueError):
    pass


@dataclass
class Plan:
    """What trains: ``trainable`` in the chosen mode, ``head`` during the first ``head_epochs``."""

    mode: str
    trainable: list[str]
    head: list[str]
    total: int = 0
    n_trainable: int = 0
    n_head: int = 0  # parameters of the head (what --head-epochs trains first)
    frozen_by_pattern: list[str] = field(default_factory=list)
    lora_targets: list[str] | None = None
    svd_targets: list[str] | None = None

    def meta(self) -> dict:
        d = {"mode": self.mode, "trainable_params": self.n_trainable, "total_params": self.total,
             "trainable_share": round(self.n_trainable / max(1, self.total), 6),
             "trainable_tensors": len(self.trainable), "head": sorted(self.head)}
        if self.frozen_by_pattern:
            d["frozen_by_pattern"] = len(self.frozen_by_pattern)
        if self.lora_targets is not None:
            d["lora_targets"] = self.lora_targets
        if self.svd_targets is not None:
            d["svd_targets"] = self.svd_targets
        return d

    def line(self) -> str:
        return (f"trainable parameters: {self.n_trainable:,} of {self.total:,} "
                f"({100 * self.n_trainable / max(1, self.total):.2f}%), --tune {self.mode}")


def head_modules(model) -> list[str]:
    """Top-level module names of the classifier head (``["classifier"]`` for ViT)."""
    import torch

    prefix = getattr(model, "base_model_prefix", "") or ""
    children = dict(model.named_children())
    if prefix in children:
        heads = [n for n, m in children.items() if n != prefix and any(True for _ in m.parameters())]
        if heads:
            return heads
    n_labels = int(getattr(getattr(model, "config", None), "num_labels", 0) or 0)
    found = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.out_features == n_labels]
    if not found:
        raise TuningError(f"{type(model).__name__}: cannot find the classifier head (no module outside the base "
                          f"model '{prefix}' and no Linear layer with {n_labels} outputs)")
    return [found[-1]]


def _under(name: str, modules: list[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def _norm_params(model) -> set[str]:
    import torch

    out = set()
    for mn, m in model.named_modules():
        if isinstance(m, torch.nn.LayerNorm) or type(m).__name__.endswith("LayerNorm"):
            out |= {f"{mn}.{pn}" if mn else pn for pn, _ in m.named_parameters(recurse=False)}
    return out


def auto_lora_targets(model, heads: list[str]) -> list[str]:
    """Full names of the Linear layers inside the encoder's blocks (attention and MLP: q/k/v/o projections,
    fc1/fc2, query/key/value/dense, qkv/proj, ...); every Linear outside the head when the model has no
    numbered blocks."""
    import torch

    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not _under(n, heads)]
    inside = [n for n in linear if _LAYER.search(n + ".")]
    targets = inside or linear
    if not targets:
        raise TuningError(f"{type(model).__name__}: no Linear layers to put LoRA adapters on; "
                          f"use --tune layernorm, bias, head or full")
    return targets


def svd_targets(model, heads: list[str]) -> list[str]:
    """Full names of the attention projections of the encoder's blocks: the Linear layers under an attention
    module (``attention``, ``self_attn``, ``attn``) inside numbered blocks; ``TuningError`` when there are none."""
    import torch

    found = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not _under(n, heads)
             and _LAYER.search(n + ".") and _ATTENTION.search(n.rsplit(".", 1)[0] if "." in n else "")]
    if not found:
        mtype = getattr(getattr(model, "config", None), "model_type", None)
        raise TuningError(f"--tune svd-residual splits the attention projections (q, k, v, output) of a ViT-family "
                          f"encoder; {type(model).__name__}{f' ({mtype})' if mtype else ''} has none (no Linear "
                          f"layer under an attention module of a numbered block): use --tune lora, layernorm, "
                          f"bias, head or full")
    return found


def _make_svd_residual():
    import torch

    class SVDResidualLinear(torch.nn.Module):
        """A Linear layer whose weight is ``weight_main`` (frozen buffer: the top singular components) +
        ``U_residual @ diag(S_residual) @ V_residual`` (trained: the ``k`` smallest). Built from a Linear layer
        ``W = U S V^T``, it starts at W: ``weight_main`` is W minus the residual as first computed, so the
        model's outputs do not move when the mode is set up."""

        def __init__(self, linear, k: int):
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            w = linear.weight.detach()
            u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
            r = s.numel() - min(int(k), s.numel())
            u_res, s_res, v_res = (u[:, r:].to(w.dtype), s[r:].to(w.dtype), vh[r:].to(w.dtype))
            self.U_residual = torch.nn.Parameter(u_res.contiguous())
            self.S_residual = torch.nn.Parameter(s_res.contiguous())
            self.V_residual = torch.nn.Parameter(v_res.contiguous())
            self.register_buffer("weight_main", (w - self.residual().detach()).contiguous())
            self.bias = (torch.nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
                         if linear.bias is not None else None)

        def residual(self):
            return (self.U_residual * self.S_residual) @ self.V_residual

        def merged_weight(self):
            return self.weight_main + self.residual()

        def forward(self, x):
            return torch.nn.functional.linear(x, self.merged_weight(), self.bias)

        def extra_repr(self) -> str:
            return (f"in_features={self.in_features}, out_features={self.out_features}, "
                    f"trained_rank={self.S_residual.numel()}")

    return SVDResidualLinear


_SVD_CLASS = None


def svd_residual_class():
    """The ``SVDResidualLinear`` module class (built on first use: torch is imported lazily here)."""
    global _SVD_CLASS
    if _SVD_CLASS is None:
        _SVD_CLASS = _make_svd_residual()
    return _SVD_CLASS


def _set_module(model, name: str, module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def apply_svd_residual(model, targets: list[str], k: int) -> None:
    """Replace each Linear layer named in ``targets`` by its :func:`svd_residual_class` split (``k`` trained
    components), in place."""
    cls = svd_residual_class()
    for n in targets:
        _set_module(model, n, cls(model.get_submodule(n), k))


def has_svd_residual(model) -> bool:
    """Whether ``model`` carries ``--tune svd-residual``'s split layers (what it saves is merged)."""
    cls = _SVD_CLASS
    return cls is not None and any(isinstance(m, cls) for m in model.modules())


def setup(model, cfg):
    """Apply ``cfg.tune`` (wrapping the model with PEFT for ``lora``) and ``cfg.freeze``; return
    ``(model, Plan)``. The model comes back with ``requires_grad`` set for the mode (not the head phase)."""
    heads = head_modules(model)
    lora_targets = svd = None
    if cfg.tune == "svd-residual":
        if is_peft(model):
            raise TuningError("--tune svd-residual cannot go on a model that carries LoRA adapters: merge them first "
                              "(a dftune checkpoint folder is merged already)")
        svd = svd_targets(model, heads)
        apply_svd_residual(model, svd, int(cfg.svd_rank))
    if cfg.tune == "lora":
        from peft import LoraConfig, get_peft_model

        if str(cfg.lora_targets).strip().lower() in ("", "auto"):
            lora_targets = auto_lora_targets(model, heads)
        else:
            lora_targets = [t.strip() for t in str(cfg.lora_targets).split(",") if t.strip()]
        lcfg = LoraConfig(r=int(cfg.lora_rank), lora_alpha=cfg.lora_alpha, lora_dropout=float(cfg.lora_dropout),
                          target_modules=lora_targets, modules_to_save=list(heads), bias="none")
        try:
            model = get_peft_model(model, lcfg)
        except ValueError as e:
            raise TuningError(f"--lora-targets {cfg.lora_targets}: {e}") from None
        names = [n for n, _ in model.named_parameters()]
        head = [n for n in names if ".modules_to_save." in n]
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]  # adapters + head copy
    else:
        names = [n for n, _ in model.named_parameters()]
        head = [n for n in names if _under(n, heads)]
        if cfg.tune == "full":
            trainable = list(names)
        elif cfg.tune == "head":
            trainable = list(head)
        elif cfg.tune == "layernorm":
            norms = _norm_params(model)
            trainable = [n for n in names if n in norms or n in head]
        elif cfg.tune == "bias":
            trainable = [n for n in names if n.endswith("bias") or n in head]
        elif cfg.tune == "svd-residual":
            trainable = [n for n in names if n.rsplit(".", 1)[-1] in ("U_residual", "S_residual", "V_residual")
                         or n in head]
        else:
            raise TuningError(f"tune must be one of {', '.join(TUNE)}; got {cfg.tune!r}")
    frozen = []
    if cfg.freeze:
        pats = [re.compile(p) for p in cfg.freeze]
        frozen = [n for n in trainable if any(p.search(n) for p in pats)]
        trainable = [n for n in trainable if n not in set(frozen)]
        head = [n for n in head if n not in set(frozen)]
    if not trainable:
        raise TuningError(f"--tune {cfg.tune} with --freeze {' '.join(cfg.freeze)} leaves nothing to train")
    if cfg.head_epochs and not head:
        raise TuningError("--head-epochs trains the classifier head alone, but --freeze froze all of it")
    plan = Plan(cfg.tune, trainable, head, frozen_by_pattern=frozen, lora_targets=lora_targets, svd_targets=svd)
    set_phase(model, plan, head_only=False)
    params = dict(model.named_parameters())
    plan.total = sum(p.numel() for p in params.values())
    plan.n_trainable = sum(params[n].numel() for n in trainable)
    plan.n_head = sum(params[n].numel() for n in head)
    return model, plan


def set_phase(model, plan: Plan, head_only: bool) -> None:
    """``requires_grad`` for the head phase (``head_only``) or the mode's set."""
    on = set(plan.head if head_only else plan.trainable)
    for n, p in model.named_parameters():
        p.requires_grad_(n in on)


def depths(names, head=()) -> tuple[dict[str, int], int]:
    """``({parameter: depth}, L)`` for the parameter names of a whole model, in the model's order: block i of
    the encoder's L blocks (counted in order across the whole encoder) has depth i (1..L), what comes before
    the first block (the embeddings, a stem) 0, what follows the last (the final norm, the head) L + 1.

    Blocks are numbered ``layers.N.`` (ViT, CLIP, SigLIP, BEiT, DeiT, DINOv2), ``layer.N.`` (MobileNetV2),
    ``blocks.N.`` (EfficientNet) or inside stages, ``stages.S.layers.N.`` (ConvNeXt, ResNet, RegNet) and
    ``layers.S.blocks.N.`` (Swin): there the depth runs over the stages in order, so stage 3's first block is
    deeper than every block of stages 0-2. A layer of a stage that is in none of its blocks (ConvNeXt's
    ``stages.S.downsampling_layer``, Swin's ``layers.S.downsample``) goes with the block it feeds, the next
    one in the model's order: ConvNeXt's with its own stage's first block, Swin's (which ends a stage) with
    the next stage's first block. ``head`` (the classifier's parameter names) is always L + 1."""
    names = list(names)
    head = set(head)
    staged = any(_STAGE.search(n) for n in names)

    def key(n: str) -> tuple | None:
        m = (_STAGE if staged else _LAYER).search(n)
        return tuple(int(g) for g in m.groups()) if m else None

    keys = {n: key(n) for n in names}
    order = {k: i + 1 for i, k in enumerate(sorted({k for k in keys.values() if k is not None}))}
    L = len(order)
    first_block = next((i for i, n in enumerate(names) if keys[n] is not None), len(names))
    out: dict[str, int] = {}
    feeds = L + 1  # the depth of the next block in the model's order (walking backwards)
    for i in range(len(names) - 1, -1, -1):
        n, k = names[i], keys[names[i]]
        if n in head:
            out[n] = L + 1
        elif k is not None:
            feeds = out[n] = order[k]
        elif staged and _IN_STAGE.search(n):  # a stage's layer outside its blocks: with the block it feeds
            out[n] = feeds
        elif (_EMBED.search(n) and ".modules_to_save." not in n) or i < first_block:
            out[n] = 0
        else:
            out[n] = L + 1
    return out, L


def layer_id(name: str, n_layers: int) -> int:
    """0 for the embeddings, i + 1 for block i, ``n_layers + 1`` for what follows the blocks (the final norm,
    the head), for one name of a model whose blocks are numbered ``layers.N.`` (not stages: see
    :func:`depths`)."""
    m = _LAYER.search(name)
    if m:
        return int(m.group(1)) + 1
    return 0 if _EMBED.search(name) and ".modules_to_save." not in name else n_layers + 1


def count_layers(names) -> int:
    """The encoder's block count L over all its stages (see :func:`depths`)."""
    return depths(names)[1]


def param_groups(named_params, lr: float, weight_decay: float, lr_decay: float = 1.0,
                 n_layers: int | None = None, names=None, head=(), family: str | None = None) -> list[dict]:
    """AdamW parameter groups: weight decay on matrices only; with ``lr_decay`` < 1 also one learning rate per
    depth (:func:`depths`), ``lr * lr_decay ** (L + 1 - depth)``: block i of L gets ``lr * lr_decay ** (L - i)``,
    the embeddings ``lr * lr_decay ** (L + 1)``, the final norm and head the full ``lr``.

    ``names`` are the parameter names of the whole model in its order (pass them when ``named_params`` leaves
    frozen ones out: depths are counted over the whole encoder); by default those of ``named_params``.
    ``n_layers`` overrides L. ``head``: the classifier's names (full ``lr`` wherever the model puts them).
    ``family`` (e.g. the model's class name) names the model when it has no blocks to order."""
    named_params = list(named_params)
    if lr_decay == 1.0:
        decay = [p for _, p in named_params if p.ndim >= 2]
        no_decay = [p for _, p in named_params if p.ndim < 2]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    names = [n for n, _ in named_params] if names is None else list(names)
    depth, L = depths(names, head)
    n_layers = L if n_layers is None else int(n_layers)
    if n_layers == 0:
        raise TuningError(f"--lr-decay needs an encoder with numbered blocks (parameter names with 'layers.N.', "
                          f"'layer.N.', 'blocks.N.' or stages of them, 'stages.S.layers.N.'); "
                          f"{family or 'this model'} has none, so its layers cannot be ordered by depth: "
                          f"train it without --lr-decay")
    groups: dict[tuple, dict] = {}
    for n, p in named_params:
        lid = depth[n] if n in depth else layer_id(n, n_layers)
        lid = min(lid, n_layers + 1)
        wd = weight_decay if p.ndim >= 2 else 0.0
        g = groups.setdefault((lid, wd > 0), {"params": [], "weight_decay": wd,
                                              "lr": lr * lr_decay ** (n_layers + 1 - lid), "layer": lid})
        g["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def is_peft(model) -> bool:
    """Whether ``model`` carries PEFT adapters (``--tune lora``): what it saves is not its own weights."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def saves_merged(model) -> bool:
    """Whether what ``model`` saves is not its own parameters: LoRA adapters or SVD residuals merged into
    plain weights (the training state must then keep the raw ones)."""
    return is_peft(model) or has_svd_residual(model)


def merged_copy(model):
    """A plain model to save: a PEFT model's adapters, or ``--tune svd-residual``'s split layers, merged into a
    copy (the training model is untouched); any other model as it is."""
    import copy

    if is_peft(model):
        return copy.deepcopy(model).merge_and_unload()
    if has_svd_residual(model):
        import torch

        out = copy.deepcopy(model)
        for n, m in list(out.named_modules()):
            if isinstance(m, _SVD_CLASS):
                lin = torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                                      device=m.weight_main.device, dtype=m.weight_main.dtype)
                with torch.no_grad():
                    lin.weight.copy_(m.merged_weight())
                    if m.bias is not None:
                        lin.bias.copy_(m.bias)
                _set_module(out, n, lin)
        return out
    return model
