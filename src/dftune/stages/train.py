"""The trainer, a recipe to read top to bottom: setup, data, optimizer and schedule, state (fresh or resumed),
the epoch loop (train, validate, checkpoint, early stop), summary. Its parts live in :mod:`dftune.training`.

The same code runs on one CPU, one GPU, or many GPUs/nodes under
``accelerate launch -m dftune train ...``: Accelerate places the model and
batches, wraps DDP, casts to bf16/fp16, gathers validation results, and saves the
optimizer/scheduler/RNG state. Only the main process writes files.

RUN_DIR after a run::

    settings.yaml        resolved settings + run metadata (data, model, label map, devices, threads, workers,
                         the LR schedule's layout) and ``_stretches``: one entry per start or --resume, with
                         its epoch range, what it changed, and its threads/workers/device
    history.json/.csv/.png  one record per epoch (a table, curves: dftune.runs); the .png at most once a minute
    best/  last/         Hugging Face model folders (model + processor + dftune.json); in an epoch that is
                         the best so far, last/'s files are hard links to best/'s (written once)
    last/training_state/ optimizer, scheduler, scaler, RNG, epoch: what --resume needs beside last/'s own
                         weights, which it does not copy (AdamW's two moments: ~2x the trained weights).
                         Only where last/'s model is not the raw training weights does it hold them too:
                         weights.safetensors (--ema: the raw weights, ema.safetensors the average;
                         --tune lora: the unmerged adapters)
    tensorboard/         scalars
    skipped.txt          images that could not be read (if any)
    .lock                held while a training writes the folder: its host and pid (empty after)

Resuming (``--resume``) continues the run with the settings it started with. Settings that would change
its learning-rate schedule, data order or the maths of a step (batch size, accumulation, lr, schedule,
warm-up, seed, balance, SBI, augmentations, ...) are refused with each change named; the ones in
``config.RESUME_SAFE`` (epochs, patience, val-every, workers, threads, TensorBoard, micro-batch) are honoured and
recorded in the new stretch of ``settings.yaml``. The LR schedule is laid out once, at the run's start,
over the epochs planned then (its total steps and warm-up are kept in the training state): changing
``epochs`` later moves where the run stops, never the schedule. A constant schedule can thus be extended;
a cosine schedule cannot be extended past its original end (it reaches lr 0 there: the extra epochs would
not train), which is refused; stopping it earlier is allowed.

Validation runs every ``--val-every N`` epochs and after the last one, under ``torch.inference_mode`` at twice
the training batch; an epoch without it saves ``last/`` only, and early stopping's patience counts
validations.

What trains (``dftune.training.trainable``): ``--tune full`` (the default) every parameter; ``head`` a linear
probe; ``layernorm`` LayerNorm weights/biases + head (GenD); ``bias`` biases + head (BitFit); ``lora`` PEFT
adapters on the encoder blocks' Linear layers + head, merged into a copy at every save, so ``best/`` and
``last/`` are always plain Hugging Face models. ``--freeze PATTERN`` freezes more. The trainable count and
share are printed, stored in settings.yaml (``_tuning``) and the summary. ``--head-epochs N`` (LP-FT) trains
the head alone for the first N epochs: the optimizer holds every parameter that ever trains, and the others
keep ``requires_grad`` off (one process) or have their gradients dropped before each step (several
processes, where DDP's parameter set is fixed); AdamW skips a parameter whose gradient is None.
``--lr-decay D`` gives block i of L the learning rate ``lr * D**(L - i)`` (``trainable.param_groups``), the
blocks counted in order over the whole encoder (across the stages of ConvNeXt, Swin, ResNet, ...;
``trainable.depths``). ``--ema DECAY`` (or ``--ema-horizon SHARE``: a time constant of SHARE x the schedule's
optimizer steps, ``ema.run_decay``) keeps a moving average of the trainable weights and of the batch-norm
running statistics (``dftune.training.ema``), updated after every optimizer step taken; validation and the
saved models use it, training and the resume state the raw weights. ``--paired`` samples batches of real
frames with the fakes made from them
(``data.PairedSampler``). None of these may change on ``--resume``. ``--wise A`` writes ``RUN_DIR/wise`` when the
run ends: (1 - A) * the starting model + A * ``best/`` (WiSE-FT, ``stages.merge``); a hub model merges from its
snapshot in the Hugging Face cache, and a run without a local folder of its starting model is refused at its
start. ``--recipe generalise`` lays
``--ema-horizon 0.4 --wise 0.75`` under the flags (``config.RECIPES``; the proxy benchmark's choice; an
``--ema`` or ``--ema-horizon`` given replaces its EMA). ``--head normalised`` puts the model under a normalised
head (``model.normalised``; the start so converted is ``RUN_DIR/start``, what ``--wise`` merges with);
``--uniformity`` / ``--alignment`` add GenD's feature losses (``training.losses``); ``--recipe gend`` is GenD's
whole recipe.

One training per run folder: the run holds ``RUN_DIR/.lock`` (``dftune.atomic.folder_lock``, the lock prepare
takes too; only the main process of a group), so a second one on the same ``--out`` is refused, naming the
holder's host and pid; a lock left by a killed run on this host is taken over. ``--resume`` refuses another
``--model`` than the run started from. A val split of one class is refused at the start (the best checkpoint
is chosen on it) unless ``--metric loss``.

A checkpoint that cannot be written (a full disk) stops the run with an error naming the file and the
free space; the previous ``last/`` stays complete, history.json lists the epochs done, and ``--resume``
continues from that checkpoint once space is freed.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dftune import progress as _progress
from dftune import runs
from dftune.atomic import WriteError, read_json, write_json, write_text
from dftune.model import card, formats
from dftune.portable import Preprocess
from dftune.prepared import read_manifest
from dftune.training import TrainError, data, extra, machine, schedule, starting, stats, trainable, validate
from dftune.training import checkpoint as ckpt
from dftune.training import ema as ema_mod
from dftune.training.checkpoint import STATE_DIR
from dftune.training.config import TrainConfig, save_yaml
from dftune.training.losses import FeatureLoss
from dftune.training.resume import Previous, check_processes, continues_from, run_lock, stretches
from dftune.training.state import TrainState, TrainSummary, trained_counts
from dftune.training.step import ForwardBackward
from dftune.training.writer import ModelWriter

__all__ = ["TrainError", "TrainSummary", "run"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the recipe


def run(data_dir: str | os.PathLike, model_source: str, out_dir: str | os.PathLike, cfg: TrainConfig,
        resume: bool = False, progress: bool = True, on_epoch_end: Callable[[int, dict], None] | None = None,
        say: Callable[[str], None] | None = None) -> TrainSummary:
    """Fine-tune ``model_source`` on the prepared crops in ``data_dir``; return the run summary.

    ``on_epoch_end(epoch, record)`` is called after each epoch's checkpoint (an exception raised there stops
    the run after it); ``say(line)`` receives every line the run reports (the trainable share, each epoch's
    line, resume and warning lines): by default they are printed on the main process.

    The run sets torch's thread count (``cfg.threads``, see :func:`dftune.training.machine.resolve_threads`)
    and puts the caller's back when it ends.
    """
    import torch

    threads_before = torch.get_num_threads()
    try:
        # one training per run folder: a second one on the same --out is refused while this one holds it
        with run_lock(Path(out_dir), resume, lambda line: (say or print)(line)):
            data_dir = extra.mixed_data(data_dir, Path(out_dir), cfg)
            return _train(Path(data_dir), model_source, Path(out_dir), cfg, resume, progress, on_epoch_end, say)
    finally:
        torch.set_num_threads(threads_before)


def _train(data_dir: Path, model_source: str, run_dir: Path, cfg: TrainConfig, resume: bool, progress: bool,
           on_epoch_end: Callable[[int, dict], None] | None, say: Callable[[str], None] | None) -> TrainSummary:
    from accelerate.utils import set_seed

    # ---- setup: what the run continues from, devices and precision, threads and workers, the model
    prev = continues_from(run_dir, cfg, resume, model_source)
    accelerator, use_tb = _accelerator(cfg, run_dir)
    say = say or accelerator.print
    if accelerator.is_main_process:
        for line in ckpt.remove_leftovers(run_dir):  # what a run killed while writing left (e.g. .wise.tmp-*)
            say(line)
    facts = machine.settle(cfg, accelerator)
    set_seed(cfg.seed)
    model, processor, lm, plan, folder, start = _model(model_source, cfg, say, data_dir, run_dir,
                                                       accelerator.is_main_process)
    # --wise: the starting model as a folder, checked now (under a new --head: RUN_DIR/start)
    wise_base = starting.wise_base(start or folder, model_source, cfg)
    # ---- data, and the loss's class weights
    d = _data(data_dir, run_dir, cfg, Preprocess.from_processor(processor), facts.workers, say, progress)
    w, class_w, to_model = _class_weights(cfg, d.counts, lm)
    # ---- optimizer and schedule
    model, optimizer, groups, body = _optimizer(accelerator, model, plan, cfg, d)
    n_batches = len(d.train_dl) if not cfg.max_train_batches else min(len(d.train_dl), cfg.max_train_batches)
    steps_per_epoch = math.ceil(n_batches / cfg.grad_accum)
    sched = schedule.layout(cfg, steps_per_epoch, run_dir, prev.trainer, prev.meta, prev.cfg, say)
    # --ema / --ema-horizon: the average (after prepare: it lives where the weights do), its decay from the
    # schedule's steps (kept by a resume, so the same decay)
    ema_decay = ema_mod.run_decay(cfg.ema, cfg.ema_horizon, sched["schedule_steps"])
    ema = ema_mod.make(accelerator.unwrap_model(model), set(plan.trainable), ema_decay) \
        if cfg.ema > 0 or cfg.ema_horizon > 0 else None
    scheduler = schedule.make_scheduler(accelerator, optimizer, sched, cfg.schedule)
    class_w, to_model = class_w.to(accelerator.device), to_model.to(accelerator.device)
    # ---- state: fresh or resumed, and what settings.yaml records
    state = TrainState(micro_batch=cfg.micro_batch or cfg.batch_size, **sched, steps_per_epoch=steps_per_epoch)
    history = _resume_state(accelerator, model, ema, plan, prev, cfg, run_dir, state, d.skipped, say)
    meta = _run_meta(data_dir, model_source, cfg, accelerator, model, lm, d, w, facts, state, plan, groups)
    if ema is not None:
        meta["ema"] = {"decay": ema_decay, "horizon": cfg.ema_horizon, "steps": state.schedule_steps}
    check_processes(run_dir, prev, accelerator.num_processes)
    # settings.yaml says what each stretch of the run (its start, then every --resume) used
    meta["stretches"] = stretches(prev, state.epoch, cfg, facts, accelerator)
    if accelerator.is_main_process:
        save_yaml(run_dir / "settings.yaml", cfg, meta)
    if use_tb:
        accelerator.init_trackers("tensorboard")
    crop = starting.crop_settings(data_dir)
    crop.aggregate = cfg.video_aggregate
    mixed = (read_json(data_dir / "settings.json").get("mix") or {}).get("folders") \
        if (data_dir / "settings.json").exists() else None
    writer = ModelWriter(accelerator, model, processor, set(plan.trainable), ema, crop, lm.fake_index,
                         lm.real_index, cfg.monitor, cfg.monitor_level, str(model_source), str(data_dir.resolve()),
                         datasets=mixed, select_on=cfg.select_on, provenance=card.provenance(folder, model_source),
                         train_methods=sorted({r.method for r in d.train_rows if r.label == 1}))
    r = Run(cfg, run_dir, accelerator, say, progress, use_tb, model, optimizer, scheduler, ema, plan, body, d,
            class_w, to_model, lm.fake_index, n_batches, state, history, meta, writer)
    # one loader batch: forward/backward in micro-batches, halving on OOM (see dftune.training.step); its
    # messages go through the epoch's bar (bar.write)
    r.forward_backward = ForwardBackward(accelerator, model, optimizer, state.micro_batch, d.normalize,
                                         on_message=(lambda msg: r.bar.write(msg)) if r.main else None,
                                         feature_loss=FeatureLoss(cfg.uniformity, cfg.alignment))

    # ---- the loop
    model.train()
    first_epoch = state.epoch + 1
    for epoch in range(first_epoch, cfg.epochs + 1):
        if state.bad_epochs >= cfg.patience > 0:
            break  # early stopping
        train_stats, t0 = _train_epoch(r, epoch, first_epoch)
        record = _end_epoch(r, epoch, train_stats, t0)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
    if use_tb:
        accelerator.end_training()
    return _summary(r, wise_base or model_source, lm, facts)


@dataclass
class RunData:
    """The run's two splits: rows, datasets and loaders (prepared by Accelerate with the model), the
    on-device normalisation, the train split's class counts (real, fake) and the images skipped so far."""

    train_rows: list
    val_rows: list
    train_ds: data.CropDataset
    val_ds: data.CropDataset
    train_dl: object
    val_dl: object
    normalize: data.Normalize
    spec: Preprocess
    counts: np.ndarray
    skipped: set
    extras: object = None  # dftune.training.extra.Extras: check sets, a mix's per-dataset val


@dataclass
class Run:
    """What the epoch loop reads and updates, passed explicitly: built by the steps of :func:`_train`."""

    cfg: TrainConfig
    run_dir: Path
    accelerator: object
    say: Callable[[str], None]
    progress: bool
    use_tb: bool
    model: object
    optimizer: object
    scheduler: object
    ema: object  # dftune.training.ema.EMA with --ema, else None
    plan: trainable.Plan
    body: list  # the parameters the head-only epochs (--head-epochs) keep still
    data: RunData
    class_w: object  # the loss's class weights, by model output index
    to_model: object  # dftune label (0 real, 1 fake) -> model output index
    fake_index: int
    n_batches: int  # loader batches per epoch (--max-train-batches caps them)
    state: TrainState
    history: list[dict]
    meta: dict  # settings.yaml's run metadata
    writer: ModelWriter
    forward_backward: ForwardBackward | None = None
    bar: object = None  # the epoch's progress bar

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


# ---------------------------------------------------------------- setup


def _accelerator(cfg: TrainConfig, run_dir: Path):
    """``(accelerator, TensorBoard on)``: devices, precision and trackers; the run folder on the main process."""
    from accelerate import Accelerator, DataLoaderConfiguration

    use_tb = cfg.tensorboard and _has_tensorboard()
    accelerator = Accelerator(
        mixed_precision=machine.pick_precision(cfg),
        dataloader_config=DataLoaderConfiguration(non_blocking=True),
        log_with="tensorboard" if use_tb else None,
        project_dir=str(run_dir),
    )
    ckpt.without_model_weights(accelerator)  # the state holds no second copy of the weights (checkpoint.py)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    _progress.quiet_third_party()  # no "Writing model shards" bars from transformers at every checkpoint
    return accelerator, use_tb


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
        return True
    except ImportError:
        return False


def _model(model_source: str, cfg: TrainConfig, say: Callable[[str], None], data_dir: Path, run_dir: Path,
           main: bool):
    """``(model, processor, LabelMap, Plan, folder, start)``: labels by name (never assumed), the head (``--head
    normalised``: ``start`` = RUN_DIR/start, the starting model under it), which parameters train
    (:mod:`dftune.training.trainable`), the folder the model was read from (a hub id's snapshot)."""
    if (cfg.wise_alpha > 0 or cfg.wise_auto) and cfg.reinit_head:
        raise TrainError("--wise interpolates with the starting model, head included; --reinit-head gives the run "
                         "another head: use one or the other")
    folder = formats.resolve(model_source)  # GenD / timm checkpoints: their converted folder
    folder = _hub_folder(folder) if folder == str(model_source) else folder
    model, processor, lm = starting.load_model(folder, cfg, where=model_source)
    model, start = starting.with_head(model, processor, cfg, data_dir, run_dir, main, say)
    if (cfg.uniformity > 0 or cfg.alignment > 0) and not starting.is_normalised(model):
        raise TrainError(f"--uniformity/--alignment act on the normalised head's unit-length features; "
                         f"{model_source} has a plain {type(model).__name__} head: add --head normalised "
                         f"(or --recipe gend)")
    try:
        model, plan = trainable.setup(model, cfg)
    except trainable.TuningError as e:
        raise TrainError(str(e)) from None
    say(plan.line())
    if cfg.head_epochs >= cfg.epochs:
        say(f"--head-epochs {cfg.head_epochs} covers all {cfg.epochs} epoch(s): only the classifier head trains "
            f"({plan.n_head:,} of {plan.total:,} parameters), never the --tune {cfg.tune} set")
    return model, processor, lm, plan, folder, start


def _hub_folder(source: str) -> str:
    """Where to load ``source`` from: a local folder as it is; a hub id (``org/name``) from its snapshot in the
    Hugging Face cache, fetched into it first by transformers' own loaders when it is not there yet
    (``load_classifier`` takes a name with a ``/`` for a folder)."""
    import re

    if Path(source).exists() or not re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", str(source)):
        return str(source)  # a folder, or not a hub id: loaded (or refused) as it is
    folder = starting.local_snapshot(source)
    if folder is None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        from dftune.model.load import register_families

        register_families()

        try:  # the files from_pretrained reads, into the cache (a hub id needs network access for this)
            AutoModelForImageClassification.from_pretrained(source)
            AutoImageProcessor.from_pretrained(source)
        except Exception:  # noqa: BLE001 - offline, no such model: load_model says so, as for any source
            return str(source)
        folder = starting.local_snapshot(source)
    return folder or str(source)


# ---------------------------------------------------------------- data


def _data(data_dir: Path, run_dir: Path, cfg: TrainConfig, spec: Preprocess, workers: int,
          say: Callable[[str], None] = print, progress: bool = True) -> RunData:
    """The train and val splits' readable rows, datasets and loaders. A val split of one class is refused
    (the best checkpoint and early stopping are chosen on it) unless --metric loss."""
    import torch

    rows = read_manifest(data_dir, splits=("train", "val"))
    train_rows, bad_train = data.check_files(data_dir, [r for r in rows if r.split == "train"])
    val_rows, bad_val = data.check_files(data_dir, [r for r in rows if r.split == "val"])
    skipped = set(bad_train + bad_val)
    if not train_rows or not val_rows:
        raise TrainError(f"{data_dir}: need train and val crops, found {len(train_rows)} train / {len(val_rows)} val "
                         f"readable rows; check the manifest's split column (dftune prepare makes both)")
    train_ds = data.CropDataset(data_dir, train_rows, data.make_transform(spec, data.AugSettings.from_config(cfg)),
                                cfg.seed, sbi=cfg.sbi)
    val_ds = data.CropDataset(data_dir, val_rows, data.make_transform(spec, None), cfg.seed)
    counts = train_ds.class_counts()
    if (counts == 0).any():
        raise TrainError(f"{data_dir}: the train split holds only one class ({counts[0]} real, {counts[1]} fake)")
    validate.check_val_classes(data_dir, val_ds.class_counts(), cfg, say)
    extra.warn_mix(data_dir, train_rows, val_rows, cfg)
    pin = torch.cuda.is_available()
    if cfg.paired:
        sampler = data.PairedSampler(train_rows, cfg.batch_size, cfg.seed)
        paired = [g for g in sampler.groups if len(g) > 1]
        say(f"--paired: {len(paired)} real frame(s) with the fakes made from them ({sum(len(g) - 1 for g in paired)} "
            f"fakes), {sum(len(g) == 1 for g in sampler.groups)} of {len(train_rows)} train rows without a partner "
            f"(sampled alone)")
    else:
        weights = extra.sample_weights(data_dir, train_rows, cfg)
        sampler = data.EpochSampler(train_ds.labels, cfg.seed, shuffle=True, balanced=cfg.balance == "sampler",
                                    sbi=cfg.sbi, weights=weights)
        if weights is not None:  # the loss's class balance over the epoch as drawn (SBI's pseudo-fakes counted)
            counts = train_ds.class_counts(weights)
    train_dl = data.make_loader(train_ds, cfg.batch_size, sampler, workers, pin)
    val_dl = data.make_loader(val_ds, cfg.batch_size * 2, None, workers, pin)
    extras = extra.build(cfg, data_dir, run_dir, train_rows, val_rows, spec, workers, pin, say, progress)
    for s in extras.checks:
        say(f"check set {s.name}: {len(s.rows)} crops ({sum(r.label == 0 for r in s.rows)} real), scored at every "
            f"validation" + ("; it decides best/ (--select-on check)" if cfg.select_on == "check" else ""))
    return RunData(train_rows, val_rows, train_ds, val_ds, train_dl, val_dl, data.Normalize(spec), spec, counts,
                   skipped, extras)


def _class_weights(cfg: TrainConfig, counts: np.ndarray, lm):
    """``(weights (real, fake), class weights by model output index, dftune label -> model output index)``."""
    import torch

    # class weights live in the model's index space: weight[fake_index] is the fake class's
    w = data.class_weights(counts) if cfg.balance == "loss" else np.ones(2)
    class_w = torch.zeros(2)
    class_w[lm.real_index], class_w[lm.fake_index] = float(w[0]), float(w[1])
    to_model = torch.tensor([lm.real_index, lm.fake_index])  # dftune label (0 real, 1 fake) -> model output index
    return w, class_w, to_model


# ---------------------------------------------------------------- optimizer


def _optimizer(accelerator, model, plan: trainable.Plan, cfg: TrainConfig, d: RunData):
    """``(model, optimizer, param groups, body)``, model, optimizer and ``d``'s loaders prepared by
    Accelerate. The optimizer holds every parameter that ever trains (the head-only epochs of --head-epochs
    leave the others' gradients None, which AdamW skips); one learning rate per layer with --lr-decay."""
    import torch

    train_names = set(plan.trainable)
    named = [(n, p) for n, p in model.named_parameters() if n in train_names]
    try:  # depths over the whole model (frozen blocks included), in its order; the head at the full lr
        groups = trainable.param_groups(named, cfg.lr, cfg.weight_decay, cfg.lr_decay,
                                        names=[n for n, _ in model.named_parameters()], head=plan.head,
                                        family=_family(model))
    except trainable.TuningError as e:
        raise TrainError(str(e)) from None
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    model, optimizer, d.train_dl, d.val_dl, *more = accelerator.prepare(model, optimizer, d.train_dl, d.val_dl,
                                                                       *d.extras.loaders())
    d.extras.set_loaders(more)
    body = [p for n, p in accelerator.unwrap_model(model).named_parameters()
            if n in train_names and n not in set(plan.head)]  # what the head-only epochs keep still
    return model, optimizer, groups, body


def _family(model) -> str:
    """The model's family for messages: its class and ``model_type`` (``ConvNextForImageClassification
    (convnext)``)."""
    m = model.get_base_model() if trainable.is_peft(model) else model
    mtype = getattr(getattr(m, "config", None), "model_type", None)
    return f"{type(m).__name__} ({mtype})" if mtype else type(m).__name__


# ---------------------------------------------------------------- state


def _resume_state(accelerator, model, ema, plan: trainable.Plan, prev: Previous, cfg: TrainConfig, run_dir: Path,
                  state: TrainState, skipped: set, say: Callable[[str], None]) -> list[dict]:
    """Restore a resumed run's checkpoint (weights, optimizer, scheduler, RNG, the average) into the run and
    its counters into ``state``; return the history of the epochs it holds (empty for a fresh run)."""
    if prev.folder is None:
        return []
    sched = {k: getattr(state, k) for k in (*schedule.LAYOUT_KEYS, "steps_per_epoch")}
    counters = ckpt.load(accelerator, prev.folder, accelerator.unwrap_model(model), set(plan.trainable))
    state.update(counters)
    if ema is not None:
        ema.load(prev.folder / STATE_DIR)
    state.update(sched)  # the schedule as laid out (schedule.layout), this run's steps per epoch
    if "micro_batch" in prev.allowed:  # asked for now: honoured (the effective batch is the same)
        state.micro_batch = cfg.micro_batch or cfg.batch_size
    history = []
    if (run_dir / "history.json").exists():
        history = [h for h in read_json(run_dir / "history.json") if h["epoch"] <= state.epoch]
    skipped |= set(counters.get("skipped", []))
    best = "none yet" if state.best is None else f"{state.best:.4f} at epoch {state.best_epoch}"
    say(f"resuming {run_dir} after epoch {state.epoch} (best {cfg.monitor_level} {cfg.monitor}: {best})")
    return history


def _run_meta(data_dir: Path, model_source: str, cfg: TrainConfig, accelerator, model, lm, d: RunData, w,
              facts: machine.Machine, state: TrainState, plan: trainable.Plan, groups: list[dict]) -> dict:
    """settings.yaml's run metadata (the ``_`` keys): data, model, labels, devices, threads, workers, the LR
    schedule's layout, what trains."""
    spec = d.spec
    meta = {
        "data": str(data_dir.resolve()), "model": str(model_source),
        **({"model_dir": str(Path(model_source).resolve()), "model_files": runs.model_files(model_source)}  # a copy
           if Path(model_source).is_dir() else {}),
        "label_map": lm.to_dict(),
        "id2label": {int(k): v for k, v in accelerator.unwrap_model(model).config.id2label.items()},
        "train_counts": {"real": round(float(d.counts[0])), "fake": round(float(d.counts[1]))},
        "class_weights": {"real": float(w[0]), "fake": float(w[1])},
        "input": {"height": spec.out_height, "width": spec.out_width, "preprocess": spec.to_dict()},
        "processes": accelerator.num_processes, "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "effective_batch": cfg.batch_size * cfg.grad_accum * accelerator.num_processes,
        "threads": facts.threads, "threads_from": facts.threads_from, "workers": facts.workers,
        "workers_from": facts.workers_from,
        "schedule": {"epochs": state.schedule_epochs, "steps": state.schedule_steps,
                     "warmup_steps": state.warmup_steps, "steps_per_epoch": state.steps_per_epoch},
        "tuning": plan.meta(),
    }
    if cfg.lr_decay != 1.0:
        meta["tuning"]["layer_lrs"] = {int(g["layer"]): float(g["lr"]) for g in groups}
    return meta


# ---------------------------------------------------------------- one epoch


def _train_epoch(r: Run, epoch: int, first_epoch: int) -> tuple[dict, float]:
    """Train one epoch; return its ``train`` record and when it started (``time.perf_counter``)."""
    from accelerate.utils import set_seed

    cfg, accelerator, state, d = r.cfg, r.accelerator, r.state, r.data
    set_seed(cfg.seed + epoch, device_specific=True)  # an epoch's randomness depends on (seed, epoch) only
    head_only = epoch <= cfg.head_epochs  # LP-FT: the head alone first
    if accelerator.num_processes == 1:  # under DDP the set stays fixed: the body's gradients are dropped below
        trainable.set_phase(accelerator.unwrap_model(r.model), r.plan, head_only)
    if cfg.head_epochs and epoch in (first_epoch, cfg.head_epochs + 1):
        r.say(f"epoch {epoch}: training {'the head only' if head_only else f'--tune {cfg.tune}'}")
    d.train_dl.set_epoch(epoch)
    t0 = time.perf_counter()
    sums = stats.zeros(accelerator.device)  # loss, n, tp, fp, tn, fn
    n_batches = r.n_batches
    r.bar = bar = _progress.bar(n_batches, f"epoch {epoch}/{cfg.epochs}", unit="it", enabled=r.progress and r.main,
                                leave=False)
    seen = 0
    for bi, batch in enumerate(d.train_dl):
        if bi >= n_batches:
            break
        start = bi - bi % cfg.grad_accum
        win_len = min(cfg.grad_accum, n_batches - start)
        sync = bi - start == win_len - 1
        valid = batch["valid"]
        if not bool(valid.all()):
            for i in batch["index"][~valid].tolist():
                d.skipped.add(f"{d.train_ds.paths[i]}: cannot decode as an image")
        target = r.to_model[batch["labels"]]
        weight = r.class_w[target] * valid.float()  # 0 drops an unreadable image
        denom = weight.sum().clamp_min(1e-8) * win_len
        loss, logits = r.forward_backward(batch["pixels"], target, weight, denom, sync, share=1.0 / win_len)
        state.micro_batch = r.forward_backward.micro_batch
        sums += stats.batch_counts(loss, win_len, logits, r.fake_index, batch["labels"], valid)
        if sync:
            _optimizer_step(r, head_only)
        seen += int(batch["labels"].shape[0]) * accelerator.num_processes
        bar.update(1)
        if bi % 10 == 0 or bi == n_batches - 1:
            bar.set_postfix(loss=f"{(sums[0] / (bi + 1)).item():.4f}",
                            img_s=f"{seen / (time.perf_counter() - t0):.0f}")
    bar.close()
    train_time = time.perf_counter() - t0
    total = accelerator.reduce(sums, reduction="sum").tolist()
    return stats.train_stats(total, n_batches * accelerator.num_processes, seen, train_time,
                             max(r.scheduler.get_last_lr()), state.micro_batch), t0


def _optimizer_step(r: Run, head_only: bool) -> None:
    """The window's optimizer step: clip, step, schedule, zero, average."""
    if head_only:
        for p in r.body:
            p.grad = None  # AdamW skips them: no update, no weight decay
    if r.cfg.max_grad_norm > 0:
        r.accelerator.clip_grad_norm_(r.model.parameters(), r.cfg.max_grad_norm)
    r.optimizer.step()
    r.scheduler.step()  # a no-op when fp16's GradScaler skipped the step (inf/NaN gradients)
    r.optimizer.zero_grad(set_to_none=True)
    if r.ema is not None and not r.accelerator.optimizer_step_was_skipped:
        r.ema.update()
    r.state.step += 1


def _end_epoch(r: Run, epoch: int, train_stats: dict, t0: float) -> dict:
    """Validate (every --val-every epochs and the last), update the best and patience, write the checkpoints,
    history.json, skipped.txt and settings.yaml, log and report the epoch; return its record."""
    cfg, state, d, run_dir = r.cfg, r.state, r.data, r.run_dir
    validated = epoch % cfg.val_every == 0 or epoch == cfg.epochs  # --val-every, and always the last epoch
    val = validate.validate(r.accelerator, r.model, d.val_dl, d.normalize, d.val_ds, d.val_rows, r.fake_index,
                            cfg.video_aggregate, d.skipped, r.ema) if validated else None
    more = extra.run_all(d.extras, r.accelerator, r.model, d.normalize, r.fake_index, cfg.video_aggregate,
                         d.skipped, r.ema) if validated else {}
    selected = more["check"]["mean"] if cfg.select_on == "check" and validated else val
    v = validate.monitor_value(selected, cfg) if validated else float("nan")
    record = {"epoch": epoch, "train": train_stats, "val": val, **more, "monitor": None if math.isnan(v) else v,
              "time_s": round(time.perf_counter() - t0, 3)}
    record["threshold"] = extra.stored_threshold(record, cfg)  # what best/ and last/ store (--threshold-on)
    state.epoch = epoch
    record["best"] = validated and validate.improved(v, state.best, cfg.higher_is_better)
    if record["best"]:
        state.best, state.best_epoch, state.bad_epochs = v, epoch, 0
    elif validated:
        state.bad_epochs += 1  # patience counts validations
    r.history.append(record)
    try:
        if record["best"]:
            r.writer.save(run_dir / "best", record, state.best_epoch)
        r.writer.save(run_dir / "last", record, state.best_epoch, trainer_state=state.to_json(d.skipped),
                      same_as=run_dir / "best" if record["best"] else None)
    except WriteError as e:
        raise ckpt.checkpoint_failed(e, run_dir, epoch, r.history, d.skipped, r.main) from e
    if r.main:
        write_json(run_dir / "history.json", r.history)
        runs.write_history(run_dir, r.history, final=epoch == cfg.epochs or state.bad_epochs >= cfg.patience > 0)
        if d.skipped:
            write_text(run_dir / "skipped.txt", "\n".join(sorted(d.skipped)) + "\n")
        r.meta["stretches"][-1]["last_epoch"] = epoch
        save_yaml(run_dir / "settings.yaml", cfg, r.meta)
    if r.use_tb:
        r.accelerator.log(stats.scalars(record), step=epoch)
    r.say(stats.epoch_line(record, cfg))
    for line in stats.extra_lines(record):
        r.say(line)
    return record


# ---------------------------------------------------------------- summary


def _summary(r: Run, model_source: str, lm, facts: machine.Machine) -> TrainSummary:
    """Why the run stopped, its best epoch, where its models are (and the --wise one), what it ran with."""
    cfg, state, run_dir, accelerator = r.cfg, r.state, r.run_dir, r.accelerator
    stop_reason = "completed all epochs"
    if state.bad_epochs >= cfg.patience > 0 and state.epoch < cfg.epochs:
        stop_reason = f"early stopping: no {cfg.select_on} {cfg.monitor} improvement for {cfg.patience} epochs"
    best_rec = next((h for h in r.history if h["epoch"] == state.best_epoch), None)
    alpha = "auto" if cfg.wise_auto else cfg.wise_alpha
    wanted = (cfg.wise_auto or cfg.wise_alpha > 0) and r.main
    wise = starting.wise_ft(model_source, run_dir, alpha, cfg) if wanted else {}
    return TrainSummary(
        run_dir=str(run_dir), epochs_run=state.epoch, epochs_planned=cfg.epochs, best_epoch=state.best_epoch,
        monitor=f"{cfg.select_on} {cfg.monitor_level} {cfg.monitor}", best_value=state.best,
        best_check=best_rec.get("check") if best_rec else None,
        best_datasets=best_rec.get("datasets") if best_rec else None,
        best_val=best_rec["val"] if best_rec else None, best_dir=str(run_dir / "best"),
        threshold=best_rec.get("threshold") if best_rec else None,
        last_dir=str(run_dir / "last"), stopped=stop_reason, skipped=sorted(r.data.skipped), label_map=lm.to_dict(),
        micro_batch=state.micro_batch, mixed_precision=accelerator.mixed_precision,
        processes=accelerator.num_processes, device=str(accelerator.device), threads=facts.threads,
        threads_from=facts.threads_from, workers=facts.workers, workers_from=facts.workers_from, tune=cfg.tune,
        **trained_counts(r.plan, cfg, state.epoch), **wise)
