"""``dftune train``: fine-tune a Hugging Face image classifier on prepared face crops."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from dftune import runs
from dftune.commands import (
    add_parser,
    add_progress,
    alpha_or_auto,
    check_path,
    group,
    renamed,
    say_alpha_curve,
    workers,
)

if TYPE_CHECKING:
    from dftune.training.state import TrainSummary

DESCRIPTION = """\
Fine-tune any AutoModelForImageClassification (a local folder or a hub id) on the
crops `dftune prepare` made. Defaults are the guide's (batch {d.batch_size}, AdamW {d.lr:g}, {d.epochs} epochs,
early stopping patience {d.patience} on val {monitor}). Writes RUN_DIR/best and RUN_DIR/last
(Hugging Face folders with dftune.json), history.json / .csv / .png, settings.yaml, tensorboard/.
Without --out the run goes to runs/NAME (--name); `dftune runs` lists runs side by side.

Multi-GPU / multi-node: accelerate launch -m dftune train ...
Any setting: --config run.yaml (keys as in RUN_DIR/settings.yaml) or --set KEY=VALUE.
"""

def _workers(text: str):
    """train's --workers: auto is the config's -1 (kept as the old spelling of auto)."""
    import sys

    if text == "-1":
        print("--workers -1 is now --workers auto", file=sys.stderr)
        return -1
    n = workers(text)
    return -1 if n == "auto" else n


# flag -> (TrainConfig field, type, help); defaults come from TrainConfig and are shown in --help
_FLAGS = [
    ("--epochs", "epochs", int, "epochs to train"),
    ("--batch-size", "batch_size", int, "images per optimizer step per process (before --grad-accum)"),
    ("--lr", "lr", float, "AdamW learning rate"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay (not on biases and norms)"),
    ("--schedule", "schedule", str, "learning-rate schedule: constant or cosine (after --warmup)"),
    ("--warmup", "warmup_ratio", float, "share of all steps spent warming the learning rate up linearly"),
    ("--grad-accum", "grad_accum", int, "loader batches per optimizer step"),
    ("--micro-batch", "micro_batch", int, "images per forward pass (0 = batch size); halved by itself on GPU OOM"),
    ("--clip", "max_grad_norm", float, "gradient-norm clipping (0 = off)"),
    ("--balance", "balance", str, "class imbalance: loss (class-weighted CE), sampler (balanced sampling) or none"),
    ("--metric", "monitor", str, "val metric for best checkpoint and early stopping: f1, auc or loss"),
    ("--level", "monitor_level", str, "--metric at frame or video level"),
    ("--patience", "patience", int, "early stopping: validations without improvement (0 = off)"),
    ("--val-every", "val_every", int, "validate every N epochs and after the last one; the epochs between save "
                                      "last/ only (validation is ~1/5 of a ViT-B epoch on CPU)"),
    ("--seed", "seed", int, "random seed (data order, augmentations, head init)"),
    ("--workers", "num_workers", _workers, "data loader worker processes per process (auto: 0 on CPU, "
                                          "min(8, cores) on a GPU)"),
    ("--threads", "threads", int, "torch threads per process (0 = auto: on CPU OMP_NUM_THREADS if set, else "
                                  "cores // processes; on a GPU torch's default)"),
    ("--precision", "precision", str, "auto (bf16 if the GPU has it, else fp16; fp32 on CPU), bf16, fp16 or no"),
    ("--aggregate", "video_aggregate", str, "frame-to-video pooling for video metrics: mean, median, max, topk"),
    ("--sbi", "sbi", float, "probability that a real training crop becomes a self-blended pseudo-fake on the fly "
                            "(landmark mask when the manifest has landmarks, else the crop's face box; 0 = off)"),
    ("--tune", "tune", str, "which parameters train (the classifier head always does): full, head (linear probe), "
                            "layernorm (LayerNorm weights and biases: GenD), bias (BitFit), lora (low-rank adapters, "
                            "merged into every saved model) or svd-residual (Effort: the smallest singular "
                            "components of each attention projection of a ViT-family encoder, merged into plain "
                            "weights when saved)"),
    ("--head", "head", str, "the classifier head: linear (the starting model's own; a normalised one stays "
                            "normalised) or normalised (the pooled feature L2-normalised, then the linear layer: "
                            "GenD's; the start is kept in RUN_DIR/start with its head converted, its old head scaled "
                            "by the training crops' mean feature length where the shapes agree)"),
    ("--uniformity", "uniformity", float, "weight of the uniformity loss on each batch's unit-length features "
                                          "(Wang & Isola 2020; needs a normalised head and batches of >= 2; "
                                          "0 = off; GenD: 0.5)"),
    ("--alignment", "alignment", float, "weight of the label-aware alignment loss on each batch's unit-length "
                                        "features (pairs of the same class pulled together; needs a normalised "
                                        "head; 0 = off; GenD: 0.1)"),
    ("--lora-rank", "lora_rank", int, "LoRA rank r (--tune lora)"),
    ("--lora-alpha", "lora_alpha", float, "LoRA alpha: the adapters are scaled by alpha / rank (--tune lora)"),
    ("--lora-dropout", "lora_dropout", float, "dropout on the LoRA adapters' input (--tune lora)"),
    ("--lora-targets", "lora_targets", str, "comma-separated module names that get LoRA adapters (--tune lora); auto = "
                                            "every Linear layer inside the encoder's numbered blocks (attention "
                                            "and MLP)"),
    ("--svd-rank", "svd_rank", int, "how many of each attention projection's singular components train (--tune "
                                    "svd-residual; the others stay frozen, Effort's r - 1 of r at 1)"),
    ("--head-epochs", "head_epochs", int, "LP-FT: train the classifier head alone for the first N epochs, then the "
                                          "--tune set (0 = off)"),
    ("--lr-decay", "lr_decay", float, "layer-wise learning-rate decay: block i of L (counted over the whole "
                                      "encoder, across stages) gets lr * D^(L - i), the embeddings lr * D^(L + 1), "
                                      "the head lr (1 = off)"),
    ("--ema", "ema", float, "decay of an exponential moving average of the trainable weights, updated every "
                            "optimizer step; validation and the saved models use it, e.g. 0.999 (0 = off)"),
    ("--ema-horizon", "ema_horizon", float, "the EMA (as --ema) with its time constant given as a share of the run's "
                                            "optimizer steps: decay = 1 - 1 / (SHARE * steps), e.g. 0.1 = about the "
                                            "last tenth of the run, whatever its length (0 = off; not with --ema)"),
    ("--wise", "wise_alpha", alpha_or_auto,
     "WiSE-FT when training ends: RUN_DIR/wise = (1 - A) * the starting model + A * best/, e.g. 0.75 (0 = off; "
     "tune its threshold with evaluate --write-threshold); auto: the alpha of 0, 0.1, ..., 1 that scores best on "
     "the --check sets"),
    ("--select-on", "select_on", str, "what decides best/ and early stopping: val (the training data's own val) "
                                      "or check (the mean of the --check sets)"),
    ("--threshold-on", "threshold_on", str, "the threshold best/ (and wise/) store in dftune.json: val (0.5 until "
                                            "`dftune evaluate --write-threshold` tunes it on val; the val optimum is "
                                            "noted as information) or check (the macro-F1-optimal threshold on every "
                                            "--check set's rows pooled, at --level, no TTA)"),
    ("--recipe", "recipe", str, "named defaults under --config and the flags: guide (the guide's: full fine-tune, no "
                                "averaging) or generalise (--ema-horizon 0.4 --wise 0.75: keeps the starting model's "
                                "knowledge; in the proxy benchmark it matched the guide's on held-out data, beat "
                                "it on no clear majority of seeds, and did least harm; docs/benchmarks.md) or gend "
                                "(GenD's: --tune layernorm --head normalised --uniformity 0.5 --alignment 0.1 "
                                "--paired, AdamW 3e-4 cosine, no weight decay, its augmentations)"),
    ("--fake-label", "fake_label", str, "name (or index) of the model's fake class, for models whose labels "
                                        "do not say which is fake"),
]


def register(sub) -> None:
    from dftune.training.config import TrainConfig

    d = TrainConfig()
    p = add_parser(sub, "train", "fine-tune an image classifier on prepared crops", DESCRIPTION.format(
        d=d, monitor={"f1": "macro F1", "auc": "ROC AUC"}.get(d.monitor, d.monitor)), examples=(
        "dftune train --data data/ffpp-c23 --model ./baseline --out runs/ft",
        "dftune train --data data/ffpp-c23 --model ./baseline --out runs/ft --metric auc --level video"))
    p.add_argument("--data", action="append",
                   help="prepared folder (holds manifest.csv) from `dftune prepare`; repeat to train on several in "
                        "one run (mixed into RUN_DIR/data through links: each dataset's val is reported on its own "
                        "row, and pooled) (default: with --resume RUN or --config RUN/settings.yaml, the run's own)")
    p.add_argument("--data-weight", dest="data_weights", action="append", type=float, metavar="W",
                   default=argparse.SUPPRESS,
                   help="each --data's share of every epoch's samples, in order (default: by size)")
    p.add_argument("--check", dest="checks", action="append", type=check_path, metavar="PATH",
                   default=argparse.SUPPRESS,
                   help="check set from outside the training data, scored at every validation beside val (what "
                        "--select-on, --threshold-on and --wise auto can use): a prepared folder (its val+test, or "
                        "PATH:SPLIT) or a labels CSV (filename,label; paths relative to the CSV) whose images and "
                        "videos are framed as predict frames them, with the data's crop settings, once, into "
                        "RUN_DIR/checks; repeat to average several (default: none)")
    p.add_argument("--model", default=None,
                   help="model folder or Hugging Face hub id (hub needs network) (default: with --resume RUN or "
                        "--config RUN/settings.yaml, the run's own; a copy of its folder, identical file for file, "
                        "is the same model)")
    p.add_argument("--out", default=None, metavar="RUN_DIR",
                   help=f"run folder for checkpoints, history and settings (default: {runs.ROOT}/NAME of --name, "
                        f"numbered NAME2, NAME3... when taken)")
    p.add_argument("--name", default="train",
                   help=f"without --out: the run goes to {runs.ROOT}/NAME, or the first free {runs.ROOT}/NAME2, "
                        f"NAME3, ...")
    p.add_argument("--config", help="YAML file of settings (field: value); flags override it. A run's own "
                                    "RUN_DIR/settings.yaml re-runs it as a new run: its data and model too")
    from dftune.pooling import AGGREGATES
    from dftune.training.config import BALANCE, HEADS, LEVELS, MONITOR, PRECISION, RECIPES, SCHEDULES, TUNE

    choices = {"schedule": SCHEDULES, "balance": BALANCE, "monitor": MONITOR, "monitor_level": LEVELS,
               "select_on": ("val", "check"), "threshold_on": ("val", "check"),
               "precision": PRECISION, "video_aggregate": AGGREGATES, "tune": TUNE, "recipe": tuple(RECIPES),
               "head": HEADS}
    for flag, field, typ, help_ in _FLAGS:
        p.add_argument(flag, dest=field, type=typ, default=argparse.SUPPRESS, choices=choices.get(field),
                       metavar="auto|N" if field == "num_workers" else None,
                       help=f"{help_} (default: {_shown(getattr(d, field), field)})")
    p.add_argument("--reinit-head", dest="reinit_head", action="store_true", default=argparse.SUPPRESS,
                   help=f"replace a classifier head of another size by a new 2-class real/fake head "
                        f"(default: {_on(d.reinit_head)})")
    p.add_argument("--freeze", dest="freeze", action="append", metavar="PATTERN", default=argparse.SUPPRESS,
                   help="also freeze the parameters whose name matches this regex (re.search; repeatable; names as "
                        "the model's named_parameters, PEFT-prefixed with --tune lora) "
                        f"(default: {', '.join(d.freeze) or 'none'})")
    p.add_argument("--paired", dest="paired", action="store_true", default=argparse.SUPPRESS,
                   help="paired batches: each real frame with the fakes made from the same source video and frame "
                        f"(FF++ TARGET_SOURCE names; rows without a partner are sampled alone) "
                        f"(default: {_on(d.paired)})")
    p.add_argument("--no-aug", dest="aug", action="store_false", default=argparse.SUPPRESS,
                   help=f"turn all augmentations off (each has its own switch: --set aug_jpeg=0 etc.) "
                        f"(default: {'augment' if d.aug else 'off'})")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=argparse.SUPPRESS,
                   help=f"do not write TensorBoard scalars "
                        f"(default: {'write them to RUN_DIR/tensorboard' if d.tensorboard else 'off'})")
    p.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE", default=[],
                   help="any other setting, repeatable (e.g. --set aug_jpeg=0.3 --set aug_jpeg_quality=30,90)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                   help="continue a run from its last checkpoint with its settings.yaml, its data and its model: "
                        "--resume RUN_DIR needs no other flag (--resume alone: the --out run); flags given now may "
                        f"change only {_resume_safe_flags()} (others are refused); a cosine schedule cannot be "
                        "extended past the epochs it was laid out over")
    add_progress(p)
    renamed(p, "--monitor", "--metric", dest="monitor", choices=MONITOR)
    renamed(p, "--monitor-level", "--level", dest="monitor_level", choices=LEVELS)
    group(p, _GROUPS)
    p.set_defaults(func=run)


_GROUPS = {  # --help by purpose
    "data and model": ["--data", "--data-weight", "--check", "--model", "--out", "--name", "--config", "--set",
                       "--recipe", "--resume", "--fake-label", "--reinit-head"],
    "optimisation": ["--epochs", "--batch-size", "--lr", "--weight-decay", "--schedule", "--warmup", "--grad-accum",
                     "--micro-batch", "--clip", "--seed"],
    "data sampling and augmentation": ["--balance", "--paired", "--no-aug", "--sbi"],
    "which parameters train": ["--tune", "--lora-rank", "--lora-alpha", "--lora-dropout", "--lora-targets",
                               "--svd-rank", "--head-epochs", "--lr-decay", "--freeze"],
    "head and feature losses (GenD)": ["--head", "--uniformity", "--alignment"],
    "weight averaging": ["--ema", "--ema-horizon", "--wise"],
    "validation, best/ and the stored threshold": ["--metric", "--level", "--patience", "--val-every", "--aggregate",
                                                   "--select-on", "--threshold-on"],
    "machine": ["--workers", "--threads", "--precision", "--no-tensorboard"],
}


def _resume_safe_flags() -> str:
    """config.RESUME_SAFE as the flags that set them."""
    from dftune.training.config import RESUME_SAFE

    flags = {field: flag.lstrip("-") for flag, field, _, _ in _FLAGS} | {"tensorboard": "tensorboard"}
    names = [flags.get(k, k) for k in RESUME_SAFE]
    return ", ".join(names[:-1]) + " and " + names[-1]


def _shown(default, field: str = "") -> str:
    """A default as --help shows it: "not set" for None, as the other commands say; --workers' -1 is auto."""
    return "not set" if default is None else "auto" if field == "num_workers" and default == -1 else str(default)


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _overrides(args) -> dict:
    from dftune.training.config import FIELDS, parse_sets

    out = {k: v for k, v in vars(args).items() if k in FIELDS}
    if out.get("wise_alpha") == "auto":  # --wise auto: the alpha is chosen on the check sets when the run ends
        out.pop("wise_alpha")
        out["wise_auto"] = True
    out.update(parse_sets(args.sets))
    return out



def _is_gend(source: str) -> bool:
    from dftune.model import gend

    try:
        return gend.source_folder(source) is not None
    except OSError:
        return False


def _where(args) -> None:
    """``args.data``, ``args.model``, ``args.out`` settled: a run to resume (``--resume RUN``) or re-run
    (``--config RUN/settings.yaml``) gives what was not given; a new run without --out gets runs/NAME(N)."""
    if isinstance(args.resume, str):
        if args.out and os.path.abspath(args.out) != os.path.abspath(args.resume):
            raise ValueError(f"--resume {args.resume} and --out {args.out} name two runs; give the run once")
        args.out = args.resume
    elif args.resume and not args.out:
        raise ValueError("--resume continues a run: give its folder, --resume RUN_DIR")
    settings = os.path.join(args.out, "settings.yaml") if args.resume else args.config
    if (not args.data or not args.model) and settings:
        data, model = runs.sources(settings)
        args.data, args.model = args.data or data, args.model or model
    if not args.data or not args.model:
        raise ValueError("give --data PREPARED_DIR and --model MODEL (or --resume RUN_DIR, or --config "
                         "RUN_DIR/settings.yaml to re-run a run)")
    if not args.out:
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:  # each process would number runs/NAME on its own
            raise ValueError("several processes: give the run folder, --out RUN_DIR (--name numbers runs/NAME in "
                             "one process)")
        args.out = str(runs.next_run_dir(args.name))
        args.named = True  # what Ctrl-C's hint says: the folder was chosen here
        print(f"run folder: {args.out}", file=sys.stderr)


def run(args) -> int:
    from dftune.stages import train
    from dftune.training import config
    from dftune.training.resume import resume_config

    _where(args)
    overrides = _overrides(args)
    if args.resume:
        cfg = resume_config(args.out, overrides)
    else:
        settings_file = config.load_yaml(args.config) if args.config else None
        if "recipe" not in overrides and "recipe" not in (settings_file or {}) and _is_gend(args.model):
            overrides["recipe"] = "gend"  # GenD's own training for a GenD checkpoint, unless a recipe is named
            print(f"{args.model}: a GenD checkpoint, trained with --recipe gend (name another --recipe to change "
                  f"that)", file=sys.stderr)
        cfg = config.with_recipe(settings_file, overrides)
    try:
        summary = train.run(args.data if len(args.data) > 1 else args.data[0], args.model, args.out, cfg,
                            resume=bool(args.resume), progress=args.progress)
    except KeyboardInterrupt:
        args.interrupted_hint = _interrupted_hint(args)  # what dftune's Ctrl-C line says to do
        raise
    from accelerate import PartialState

    if PartialState().is_main_process:
        print_summary(summary)
    return 0


def _threshold(stored: dict | None) -> str:
    """A stored threshold (``{"value", "source"}``) in words; the untuned default says how to tune it."""
    from dftune.portable import describe_threshold

    if not stored:
        return "0.5 until `dftune evaluate --write-threshold` tunes it"
    return describe_threshold(stored["value"], stored["source"])


def _interrupted_hint(args) -> str:
    """After Ctrl-C: what continues the run. The same command again only where it was a --resume already;
    else it needs --resume added (or, with no checkpoint completed yet, starts over)."""
    from pathlib import Path

    from dftune.atomic import read_json
    from dftune.training.checkpoint import STATE_DIR, TRAINER_FILE, last_dir

    last = last_dir(Path(args.out))
    if last is None:
        return "no checkpoint was completed yet: run the same command again (without --resume) to start over"
    try:
        done = int(read_json(last / STATE_DIR / TRAINER_FILE).get("epoch", 0))
    except (OSError, ValueError):
        done = None
    after = f" from epoch {done + 1}" if done is not None else ""
    if args.resume:
        return f"run the same command again to continue{after}"
    if getattr(args, "named", False):
        return f"continue{after} with: dftune train --resume {args.out}"
    return f"run the same command with --resume added to continue{after} (without it, the run folder is refused)"


def print_summary(s: TrainSummary) -> None:
    from rich.table import Table

    from dftune.progress import console

    t = Table(title="dftune train", show_header=True, header_style="bold")
    t.add_column("")
    t.add_column("frame")
    t.add_column("video")
    bv = s.best_val or {}
    fr, vi = bv.get("frame", {}), bv.get("video", {})

    def f(x):
        return "n/a" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)

    for key, name in (("macro_f1", "macro F1 @0.5"), ("auc", "ROC AUC"), ("accuracy", "accuracy"),
                      ("loss", "loss"), ("best_threshold", "val-optimal threshold"),
                      ("best_threshold_f1", "macro F1 @threshold"), ("n", "images / videos")):
        t.add_row(name, f(fr.get(key)), f(vi.get(key)))
    c = console()
    c.print(t)
    sets = {**({"check sets (mean)": s.best_check["mean"]} if s.best_check else {}),
            **{f"check {n}": m for n, m in ((s.best_check or {}).get("sets") or {}).items()
               if len(s.best_check["sets"]) > 1},
            **{f"val {n}": m for n, m in (s.best_datasets or {}).items()}}
    if sets:  # the sets validated beside val, at the best epoch: one row each
        x = Table(title="beside val, at the best epoch", show_header=True, header_style="bold")
        for col in ("", "frame F1 @0.5", "frame AUC", "video F1 @0.5", "video AUC"):
            x.add_column(col)
        for n, m in sets.items():
            x.add_row(n, f(m["frame"].get("macro_f1")), f(m["frame"].get("auc")), f(m["video"].get("macro_f1")),
                      f(m["video"].get("auc")))
        c.print(x)
    c.print(f"epochs run {s.epochs_run}/{s.epochs_planned} ({s.stopped}); best epoch {s.best_epoch} "
            f"by {s.monitor} = {f(s.best_value)}")
    c.print(f"best model: {s.best_dir}\nlast model: {s.last_dir} (continue: dftune train --resume {s.run_dir})")
    if s.threshold:
        c.print(f"best/ threshold: {_threshold(s.threshold)}")
    contest = runs.contest_number({"val": s.best_val, "check": s.best_check, "threshold": s.threshold})
    if contest:  # what predict will score with best/ as it stands: the figure evaluate's first row and runs show
        c.print(f"macro F1 at best/'s threshold, as predict applies it: {runs.describe_contest(contest)} (no TTA)")
    if s.wise_dir and s.wise_curve:  # --wise auto: the curve the alpha was chosen on
        say_alpha_curve(c.print, s.wise_curve, s.wise_dir, "--wise auto")
    if s.wise_dir:
        c.print(f"WiSE-FT model: {s.wise_dir} ((1 - {s.wise_alpha}) x the starting model + {s.wise_alpha} x "
                f"best/; threshold {_threshold(s.wise_threshold)})")
    elif s.wise_error:
        console(stderr=True).print(f"[yellow]WiSE-FT model not written: {s.wise_error}[/yellow]")
    c.print(f"device {s.device} x{s.processes}, precision {s.mixed_precision}, micro-batch {s.micro_batch}")
    if s.head_epochs and s.epochs_run <= s.head_epochs:  # --head-epochs covered every epoch: the head alone
        c.print(f"--tune {s.tune} did not train: --head-epochs {s.head_epochs} covered all {s.epochs_run} epoch(s) "
                f"run, so only the classifier head trained: {s.trainable_params:,} of {s.total_params:,} parameters "
                f"({100 * s.trainable_share:.2f}%)")
    else:
        alone = (f"; the head alone in epoch{' 1' if s.head_epochs == 1 else f's 1-{s.head_epochs}'}"
                 if s.head_epochs else "")
        c.print(f"--tune {s.tune}: {s.trainable_params:,} of {s.total_params:,} parameters trained "
                f"({100 * s.trainable_share:.2f}%){alone}")
    c.print(f"threads {s.threads} ({s.threads_from}), loader workers {s.workers} ({s.workers_from})")
    if s.skipped:
        console(stderr=True).print(f"[yellow]{len(s.skipped)} unreadable image(s) skipped; listed in "
                f"{s.run_dir}/skipped.txt[/yellow]")
