"""Training settings: one flat dataclass whose defaults are the guide's numbers.

Precedence, lowest first: these defaults, a YAML file (``--config run.yaml``, keys
= field names), then command-line flags and ``--set KEY=VALUE``. Every run writes
the resolved settings to ``RUN_DIR/settings.yaml``; ``--resume`` reads them back and
may change only the settings in :data:`RESUME_SAFE` (the others are refused, see
:func:`resume_changes`). ``threads`` (0) and ``num_workers`` (-1) mean "from the machine":
:func:`dftune.training.machine.resolve_threads` and :func:`~dftune.training.machine.resolve_workers` decide, and
the run records what they chose.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from dftune.training.trainable import TUNE  # the --tune modes (re-exported: commands read them here)

BALANCE = ("loss", "sampler", "none")
MONITOR = ("f1", "auc", "loss")
LEVELS = ("frame", "video")
SCHEDULES = ("constant", "cosine")
PRECISION = ("auto", "bf16", "fp16", "no")
HEADS = ("linear", "normalised")  # see dftune.model.normalised
_STR_TUPLES = ("freeze", "checks")  # tuple settings of strings
_FLOAT_TUPLES = ("data_weights",)  # ... of numbers (the other tuples hold ints)


@dataclass
class TrainConfig:
    # guide, section 5
    epochs: int = 5
    batch_size: int = 16  # per process, per optimizer step before accumulation
    lr: float = 1e-5
    weight_decay: float = 0.01  # torch's AdamW default, as the guide's AdamW
    num_workers: int = -1  # loader worker processes per process; -1 = auto (0 on CPU, min(8, cores) on GPU)
    # guide, section 9
    # loss (class-weighted CE, the guide's 4:1) | sampler (balanced sampling) | none. "loss" is the
    # default by measurement: demo crops at FF++'s 1 real : 4 fake, tiny ViT, 8 epochs, 3 seeds, final
    # val macro F1 @0.5 = 1.000 (loss) vs 0.945 (none) vs 0.913 (sampler); see docs/design.md.
    balance: str = "loss"
    patience: int = 3  # early stopping: validations without improvement of the monitor metric; 0 = off
    val_every: int = 1  # validate every N epochs (and after the last); the epochs between save last/ only
    monitor: str = "f1"  # f1 | auc | loss
    monitor_level: str = "frame"  # frame | video
    # beyond the guide
    schedule: str = "constant"  # constant | cosine (after linear warm-up)
    warmup_ratio: float = 0.0  # fraction of all optimizer steps spent warming up
    grad_accum: int = 1  # loader batches per optimizer step
    micro_batch: int = 0  # 0 = batch_size; halved automatically on GPU out-of-memory
    max_grad_norm: float = 1.0  # 0 = no clipping
    seed: int = 0
    precision: str = "auto"  # auto: bf16 on GPUs that have it, else fp16 (scaled) on GPU, fp32 on CPU
    video_aggregate: str = "mean"  # how frame probabilities become a video's (metrics.video_aggregate)
    max_train_batches: int = 0  # >0: cap batches per epoch (smoke runs)
    tensorboard: bool = True
    threads: int = 0  # torch threads per process; 0 = auto (CPU: cores // processes or OMP_NUM_THREADS; GPU: torch's)
    # augmentations, training split only
    aug: bool = True  # master switch
    aug_hflip: float = 0.5  # probability
    aug_crop_scale: float = 0.85  # random resized crop keeps at least this share of the area; 1 = off
    aug_color: float = 0.2  # brightness/contrast/saturation jitter strength; 0 = off
    aug_jpeg: float = 0.5  # probability of re-compressing as JPEG
    aug_jpeg_quality: tuple = (40, 95)
    aug_blur: float = 0.1  # probability of a light Gaussian blur
    aug_noise: float = 0.1  # probability of light Gaussian noise
    # self-blended images: probability that a real training crop becomes a pseudo-fake on the fly
    sbi: float = 0.0
    # labels and head
    fake_label: str | None = None
    reinit_head: bool = False
    # linear: the starting model's own head (a normalised one stays normalised); normalised: the pooled feature
    # L2-normalised before the linear classifier (GenD's LinearNorm, dftune.model.normalised; RUN_DIR/start keeps
    # the starting model under the new head, what --wise and merge interpolate with)
    head: str = "linear"
    # GenD's losses on the unit-norm features of each (micro-)batch (dftune.training.losses), added to the
    # cross-entropy with these weights; 0 = off. Need a normalised head and at least two images per batch
    uniformity: float = 0.0  # Wang & Isola 2020: log E exp(-2 ||f_i - f_j||^2) over the batch's pairs
    alignment: float = 0.0  # label-aware: E ||f_i - f_j||^2 over the pairs of the same class
    # which parameters train (dftune.training.trainable): full | head (linear probe) | layernorm (GenD) | bias (BitFit)
    # | lora (PEFT adapters, merged into every saved model) | svd-residual (Effort: the attention projections' smallest
    # singular components train, merged into plain weights when saved); the head always trains
    tune: str = "full"
    freeze: tuple = ()  # regexes (re.search on parameter names): matching parameters are frozen as well
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = "auto"  # auto: every Linear inside the encoder's numbered blocks; else comma-separated names
    svd_rank: int = 1  # --tune svd-residual: how many of each attention projection's singular components train
    head_epochs: int = 0  # LP-FT: the first N epochs train the head alone, then the --tune set
    lr_decay: float = 1.0  # layer-wise LR decay: block i of L gets lr * lr_decay ** (L - i); 1 = off
    ema: float = 0.0  # EMA decay of the trainable weights; validation and saved models use the average; 0 = off
    # the EMA's time constant as a share of the run's optimizer steps: decay = 1 - 1 / (share * steps); 0 = off
    ema_horizon: float = 0.0
    paired: bool = False  # batches of whole groups: a real frame with the fakes made from it (data.PairedSampler)
    # WiSE-FT at the end: RUN_DIR/wise = (1 - a) * the starting model + a * best/ (stages.merge); 0 = off
    wise_alpha: float = 0.0
    wise_auto: bool = False  # --wise auto: the alpha chosen on the check sets (dftune.averaging.choose_alpha)
    # check sets from outside the training data (dftune.checks): validated beside val every validation
    checks: tuple = ()
    select_on: str = "val"  # val | check: which decides best/ and early stopping
    # val: dftune.json keeps 0.5 (untuned; `evaluate --write-threshold` tunes it on val), the val optimum noted;
    # check: best/ (and wise/) store the macro-F1-optimal threshold on the check rows pooled, at monitor_level
    threshold_on: str = "val"
    data_weights: tuple = ()  # --data A --data B: each dataset's share of an epoch's samples (default: by size)
    # a named set of defaults under the settings file and flags (RECIPES): guide (the guide's) or generalise
    recipe: str = "guide"

    def __post_init__(self):
        # the recipe's settings, under every setting given here (``TrainConfig(recipe="generalise")`` is the
        # recipe, as ``--recipe generalise`` is; :func:`build` passes every field, having laid the recipe itself)
        given = getattr(self, "_given", None)
        if given is not None:
            object.__delattr__(self, "_given")
            for k, v in recipe_layer(self.recipe, given).items():
                if k not in given:
                    setattr(self, k, v)
        self.validate()

    def validate(self) -> None:
        def one_of(name, allowed):
            v = getattr(self, name)
            if v not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {v!r}")

        one_of("balance", BALANCE)
        one_of("monitor", MONITOR)
        one_of("monitor_level", LEVELS)
        one_of("schedule", SCHEDULES)
        one_of("precision", PRECISION)
        for name in ("epochs", "batch_size", "grad_accum", "val_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}")
        if int(self.num_workers) < -1:
            raise ValueError(f"num_workers must be -1 (auto) or at least 0; got {self.num_workers}")
        if int(self.threads) < 0:
            raise ValueError(f"threads must be 0 (auto) or at least 1; got {self.threads}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive; got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1); got {self.warmup_ratio}")
        if self.micro_batch < 0 or self.micro_batch > self.batch_size:
            raise ValueError(f"micro_batch must be 0 (= batch_size) or 1..{self.batch_size}; got {self.micro_batch}")
        if not 0 <= self.sbi < 1:
            raise ValueError(f"sbi is a probability in [0, 1); got {self.sbi}")
        if self.balance == "sampler" and self.sbi >= 0.5:
            raise ValueError(f"--balance sampler cannot balance classes when --sbi >= 0.5 turns most reals into "
                             f"fakes; got sbi={self.sbi} (use --balance loss)")
        one_of("tune", TUNE)
        one_of("head", HEADS)
        for name in ("uniformity", "alignment"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} is a loss weight, 0 (off) or more; got {getattr(self, name)}")
            per_pass = self.micro_batch or self.batch_size
            if getattr(self, name) > 0 and per_pass < 2:
                what = f"--micro-batch {self.micro_batch}" if self.micro_batch else f"--batch-size {self.batch_size}"
                raise ValueError(f"--{name} {getattr(self, name):g} compares the features of a batch's images in "
                                 f"pairs; {what} gives batches of one image, which have no pairs: use a batch of "
                                 f"at least 2 (GenD's is 512) or --{name} 0")
        if int(self.lora_rank) < 1:
            raise ValueError(f"lora_rank must be at least 1; got {self.lora_rank}")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be positive; got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout is a probability in [0, 1); got {self.lora_dropout}")
        if int(self.svd_rank) < 1:
            raise ValueError(f"svd_rank is how many singular components of each attention projection train, at "
                             f"least 1; got {self.svd_rank}")
        if self.tune == "svd-residual":
            lora = {f"--{k.replace('_', '-')} {getattr(self, k)}" for k in ("lora_rank", "lora_alpha", "lora_dropout",
                                                                            "lora_targets")
                    if getattr(self, k) != FIELDS[k].default}
            if lora:
                raise ValueError(f"--tune svd-residual trains the attention projections' residual singular "
                                 f"components, not LoRA adapters; {', '.join(sorted(lora))} would do nothing: "
                                 f"drop it, or train adapters with --tune lora")
        if int(self.head_epochs) < 0:
            raise ValueError(f"head_epochs must be 0 (off) or more; got {self.head_epochs}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1] (1 = off); got {self.lr_decay}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema is a decay in [0, 1) (0 = off, e.g. 0.999); got {self.ema}")
        if not 0 <= self.ema_horizon <= 1:
            raise ValueError(f"ema_horizon is the average's time constant as a share of the run's optimizer steps, "
                             f"in [0, 1] (0 = off, e.g. 0.1); got {self.ema_horizon}")
        if self.ema > 0 and self.ema_horizon > 0:
            raise ValueError(f"give the EMA's decay one way: --ema {self.ema:g} (per step) or --ema-horizon "
                             f"{self.ema_horizon:g} (a share of the run), not both")
        if not 0 <= self.wise_alpha <= 1:
            raise ValueError(f"wise_alpha is the fine-tuned model's share in [0, 1] (0 = off, e.g. 0.75); "
                             f"got {self.wise_alpha}")
        one_of("recipe", tuple(RECIPES))
        one_of("select_on", ("val", "check"))
        one_of("threshold_on", ("val", "check"))
        if isinstance(self.checks, str):
            self.checks = (self.checks,)
        self.checks = tuple(str(c) for c in self.checks or ())
        self.data_weights = tuple(float(w) for w in self.data_weights or ())
        if any(w < 0 for w in self.data_weights) or (self.data_weights and sum(self.data_weights) <= 0):
            raise ValueError(f"data_weights: one non-negative share per --data, not all zero; got {self.data_weights}")
        if self.select_on == "check" and not self.checks:
            raise ValueError("--select-on check needs check sets: --check PATH (a prepared folder or a labels CSV "
                             "of raw files from outside the training data)")
        if self.threshold_on == "check" and not self.checks:
            raise ValueError("--threshold-on check tunes the stored threshold on check sets: give --check PATH "
                             "(a prepared folder or a labels CSV from outside the training data); without them "
                             "the threshold stays "
                             "0.5 until `dftune evaluate --write-threshold` tunes it on val")
        if self.wise_auto and not self.checks:
            raise ValueError("--wise auto chooses the WiSE-FT alpha on check sets: give --check PATH (a prepared "
                             "folder or a labels CSV from outside the training data); on the training data's own "
                             "val it picks 1.0, the "
                             "fine-tuned model itself")
        if self.paired and self.balance == "sampler":
            raise ValueError("--paired orders each batch as real frames with their fakes; it cannot be combined "
                             "with --balance sampler (use --balance loss)")
        if isinstance(self.freeze, str):
            self.freeze = (self.freeze,)
        self.freeze = tuple(str(p) for p in self.freeze or ())
        import re

        for pat in self.freeze:
            try:
                re.compile(pat)
            except re.error as e:
                raise ValueError(f"freeze: {pat!r} is not a regular expression ({e})") from None
        q = tuple(self.aug_jpeg_quality)
        if len(q) != 2 or not 1 <= q[0] <= q[1] <= 100:
            raise ValueError(f"aug_jpeg_quality must be two qualities lo <= hi in 1..100; got {self.aug_jpeg_quality}")
        self.aug_jpeg_quality = (int(q[0]), int(q[1]))

    @staticmethod
    def defaults() -> dict:
        """Every setting's default, the guide's (no recipe laid)."""
        return TrainConfig(recipe="guide").to_dict()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["aug_jpeg_quality"] = list(self.aug_jpeg_quality)
        d["freeze"] = list(self.freeze)
        return d

    @property
    def higher_is_better(self) -> bool:
        return self.monitor != "loss"


FIELDS = {f.name: f for f in fields(TrainConfig)}
_dataclass_init = TrainConfig.__init__


@functools.wraps(_dataclass_init)
def _init_given(self, *args, **kwargs):
    """TrainConfig's own __init__, noting which settings were given (the recipe fills the others)."""
    object.__setattr__(self, "_given", {*list(FIELDS)[:len(args)], *kwargs})
    _dataclass_init(self, *args, **kwargs)


TrainConfig.__init__ = _init_given

# Named defaults (``--recipe``), applied under a settings file and the flags, which still win. "generalise"
# is what the proxy benchmarks (benchmarks/bench_generalise.py, bench_recipe.py; docs/benchmarks.md) found to
# keep what the starting model knew: an EMA of the weights whose time constant is 0.4 of the run (so it means
# the same on a 300-step proxy and a 20,000-step FF++ run; the fixed 0.999 it replaces was a tenth of an FF++
# run and three times the proxy's), then WiSE-FT with the starting model at 0.75. No recipe measured beat the
# guide's on held-out data on most seeds (bench_recipe.py, 10 seeds); at the guide's lr this one did least harm
# (held-out C F1 +0.001, AUC +0.005 vs the guide's, A kept; 0.999 was -0.017 F1) and at a larger lr the longer
# horizon and WiSE-FT kept the most of A and C. LP-FT, layer-wise LR decay, --paired, the head/layernorm/bias/
# lora modes and a larger learning rate did not help there and are not in it.
#
# "gend" is GenD's recipe (Yermakov et al., WACV 2026, arXiv 2508.06248; yermandy/GenD's src/config.py): only
# the LayerNorms and the head train, the head is normalised, cross-entropy + 0.5 uniformity + 0.1 alignment,
# paired real/fake frames, AdamW at 3e-4 without weight decay on a cosine schedule laid out over the run's own
# steps (GenD's min_lr 1e-6 is ~0 here), and its augmentations as far as dftune has them: flip 0.5, colour
# jitter 0.1, JPEG always at quality 40-100, blur 0.1, scale jitter (0.9-1.1 -> a crop keeping >= 0.81 of the
# area), no noise (GenD's 10-degree rotation and translation have no dftune counterpart). The batch size and
# epochs stay the run's (GenD's 512 is one step of a GPU cluster's).
RECIPES: dict[str, dict] = {
    "guide": {},
    "generalise": {"ema_horizon": 0.4, "wise_alpha": 0.75},
    "gend": {"tune": "layernorm", "head": "normalised", "uniformity": 0.5, "alignment": 0.1, "paired": True,
             "lr": 3e-4, "schedule": "cosine", "weight_decay": 0.0, "aug_hflip": 0.5, "aug_color": 0.1,
             "aug_jpeg": 1.0, "aug_jpeg_quality": (40, 100), "aug_blur": 0.1, "aug_noise": 0.0,
             "aug_crop_scale": 0.81},
}


def recipe_layer(name: str, given: Iterable[str] = ()) -> dict:
    """Recipe ``name``'s settings under settings ``given`` by the user: an EMA given either way (``ema`` or
    ``ema_horizon``) replaces the recipe's, whichever way the recipe gives it (the two cannot both be set)."""
    if name not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}; got {name!r}")
    recipe = dict(RECIPES[name])
    if {k.replace("-", "_") for k in given} & {"ema", "ema_horizon"}:
        recipe.pop("ema", None)
        recipe.pop("ema_horizon", None)
    return recipe


def with_recipe(settings_file: Mapping | None, flags: Mapping, also_given: Iterable[str] = ()) -> TrainConfig:
    """A new run's settings: the defaults, the recipe (named by the flags or the settings file), the settings
    file, the flags; later wins. ``also_given``: settings the caller sets later (a search space's)."""
    name = flags.get("recipe") or (settings_file or {}).get("recipe") or "guide"
    return build(None, settings_file or {}, flags, {"recipe": name}, given=also_given)

# Settings that ``--resume`` may change: they touch neither the learning-rate schedule, nor the data order,
# nor the maths of a step (micro_batch splits a step's batch without changing it). Every other setting is
# refused on resume (see :func:`resume_changes`), so a new setting is safe-by-default only when listed here.
# ``epochs`` may change, but the LR schedule keeps the total it was laid out with at the run's start; a
# cosine schedule cannot be extended past it (it ends at lr 0), see ``dftune.stages.train``.
# None of the parameter-choice settings (tune, freeze, lora_*, head_epochs, lr_decay, ema, ema_horizon, paired) is
# safe: each changes what a step trains, its learning rates, the averaged weights or the data order.
RESUME_SAFE = ("epochs", "patience", "val_every", "num_workers", "threads", "tensorboard", "micro_batch",
               "wise_alpha")


def resume_changes(old: TrainConfig, new: TrainConfig) -> tuple[dict, dict]:
    """``(allowed, refused)``: ``{setting: (old, new)}`` for every setting ``new`` changes on resume."""
    a, b = old.to_dict(), new.to_dict()
    changed = {k: (a.get(k), b[k]) for k in b if a.get(k) != b[k]}
    allowed = {k: v for k, v in changed.items() if k in RESUME_SAFE}
    refused = {k: v for k, v in changed.items() if k not in RESUME_SAFE}
    return allowed, refused


def _coerce(name: str, value: Any) -> Any:
    """Turn a YAML value or a ``--set`` string into the field's type."""
    f = FIELDS.get(name)
    if f is None:
        close = [k for k in FIELDS if name.replace("-", "_") in k or k in name]
        hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
        raise ValueError(f"unknown training setting {name!r}{hint}; settings are: {', '.join(FIELDS)}")
    default = f.default if f.default is not dataclasses.MISSING else None
    if value is None:
        return None
    if isinstance(default, bool):
        if isinstance(value, str):
            v = value.strip().lower()
            if v in ("1", "true", "yes", "on"):
                return True
            if v in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{name} expects true/false; got {value!r}")
        return bool(value)
    if name in _STR_TUPLES:  # a --set value is one pattern (a regex may hold commas)
        return (value,) if isinstance(value, str) else tuple(str(x) for x in value)
    if name in _FLOAT_TUPLES:
        if isinstance(value, str):
            value = [x for x in value.split(",") if x.strip()]
        return tuple(float(x) for x in value)
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [x for x in value.replace("-", ",").split(",") if x.strip()]
        return tuple(int(x) for x in value)
    try:
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} expects a number; got {value!r}") from None
    return value if value is None or isinstance(value, str) else str(value)


def read_yaml_mapping(path: str | os.PathLike, what: str = "config file", expected: str = "setting: value",
                      error: type = ValueError) -> dict:
    """A YAML file whose top level is a mapping; errors name the file and say what was expected."""
    import yaml

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: {what} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise error(f"{p}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise error(f"{p}: expected a mapping of {expected} at the top level")
    return data


def load_yaml(path: str | os.PathLike) -> dict:
    data = read_yaml_mapping(path)
    # tolerate a nested "train:" section and the run metadata settings.yaml carries
    data = data.get("train", data)
    return {k: v for k, v in data.items() if k in FIELDS or not k.startswith("_")}


def parse_sets(items: list[str] | None) -> dict:
    """``["lr=1e-4", "aug_jpeg=0"]`` -> dict; errors name the bad item."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE; got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = v.strip()
    return out


def build(base: TrainConfig | Mapping | None = None, *layers: Mapping, given: Iterable[str] = ()) -> TrainConfig:
    """A config from a base and override layers (later wins); unknown keys are errors.

    The recipe the result names is laid under the base and the layers (defaults < recipe < base < layers), as
    ``--recipe`` is, so ``build(None, {"recipe": "generalise"})`` trains what settings.yaml says; a setting any
    of them gives (or ``given`` names: set later by the caller) wins over the recipe's. A :class:`TrainConfig`
    base is already resolved: its recipe is not laid again unless a layer names another one."""
    layers = tuple({k.replace("-", "_"): v for k, v in (layer or {}).items()} for layer in layers)
    d = base.to_dict() if isinstance(base, TrainConfig) else dict(TrainConfig.defaults())
    named = set(given)
    if isinstance(base, Mapping):
        for k, v in base.items():
            d[k] = _coerce(k, v)
        named |= set(base)
    for layer in layers:
        for k, v in layer.items():
            d[k] = _coerce(k, v)
        named |= set(layer)
    if not (isinstance(base, TrainConfig) and base.recipe == d["recipe"]):
        for k, v in recipe_layer(d["recipe"], named).items():
            if k not in named:
                d[k] = _coerce(k, v)
    return TrainConfig(**d)


def save_yaml(path: str | os.PathLike, cfg: TrainConfig, extra: Mapping | None = None) -> None:
    """Write the resolved settings (plus run metadata under keys starting with ``_``)."""
    import yaml

    from dftune.atomic import write_text

    d = cfg.to_dict()
    if extra:
        d.update({f"_{k}" if not k.startswith("_") else k: v for k, v in extra.items()})
    write_text(path, yaml.safe_dump(d, sort_keys=False))


def load_run_settings(path: str | os.PathLike) -> tuple[TrainConfig, dict]:
    """Read ``settings.yaml`` back: (config, run metadata)."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    meta = {k[1:]: v for k, v in raw.items() if k.startswith("_")}
    return build({k: v for k, v in raw.items() if not k.startswith("_")}), meta
