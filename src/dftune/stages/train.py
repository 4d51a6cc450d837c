"""The trainer: setup, loop, validate, checkpoint. Read it top to bottom.

The same code runs on one CPU, one GPU, or many GPUs/nodes under
``accelerate launch -m dftune train ...``: Accelerate places the model and
batches, wraps DDP, casts to bf16/fp16, gathers validation results, and saves the
optimizer/scheduler/RNG state. Only the main process writes files.

RUN_DIR after a run::

    settings.yaml        resolved settings + run metadata (data, model, label map, devices, threads, workers,
                         the LR schedule's layout) and ``_stretches``: one entry per start or --resume, with
                         its epoch range, what it changed, and its threads/workers/device
    history.json         one record per epoch, rewritten after every epoch
    best/  last/         Hugging Face model folders (model + processor + dftune.json); in an epoch that is
                         the best so far, last/'s files are hard links to best/'s (written once)
    last/training_state/ optimizer, scheduler, scaler, RNG, epoch: what --resume needs beside last/'s own
                         weights, which it does not copy (AdamW's two moments: ~2x the trained weights).
                         Only where last/'s model is not the raw training weights does it hold them too:
                         weights.safetensors (--ema: the raw weights, ema.safetensors the average;
                         --tune lora: the unmerged adapters)
    tensorboard/         scalars
    skipped.txt          images that could not be read (if any)

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
``--lr-decay D`` gives block i of L the learning rate ``lr * D**(L - i)`` (``tuning.param_groups``).
``--ema DECAY`` keeps a moving average of the trainable weights (``dftune.training.ema``), updated after every
optimizer step taken; validation and the saved models use it, training and the resume state the raw
weights. ``--paired`` samples batches of real frames with the fakes made from them
(``data.PairedSampler``). None of these may change on ``--resume``. ``--wise A`` writes ``RUN_DIR/wise`` when the
run ends: (1 - A) * the starting model + A * ``best/`` (WiSE-FT, ``stages.merge``). ``--recipe generalise`` lays
``--ema 0.999 --wise 0.75`` under the flags (``config.RECIPES``; the proxy benchmark's choice).

A checkpoint that cannot be written (a full disk) stops the run with an error naming the file and the
free space; the previous ``last/`` stays complete, history.json lists the epochs done, and ``--resume``
continues from that checkpoint once space is freed.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from dftune.portable import Preprocess
from dftune.model import labels as _labels
from dftune import metrics
from dftune.model import meta as modelmeta
from dftune import progress as _progress
from dftune.atomic import WriteError, read_json, write_json, write_text
from dftune.pooling import video_aggregate
from dftune.prepared import read_manifest
from dftune.training import checkpoint as ckpt
from dftune.training import data
from dftune.training import trainable
from dftune.training.checkpoint import STATE_DIR, TRAINER_FILE
from dftune.training.config import (RESUME_SAFE, TrainConfig, available_cores, load_run_settings, resolve_threads,
                                 resolve_workers, resume_changes, save_yaml)
from dftune.training.step import ForwardBackward

log = logging.getLogger(__name__)


class TrainError(ValueError):
    """A run that cannot start; the message says why and what to do."""


# ---------------------------------------------------------------- setup helpers


def crop_settings(data_dir: Path) -> modelmeta.CropSettings:
    """The prepared data's crop settings (``settings.json`` written by prepare), or the guide's defaults."""
    p = Path(data_dir) / "settings.json"
    if not p.exists():
        log.info("%s: no settings.json; recording the guide's crop settings in the model", data_dir)
        return modelmeta.CropSettings()
    return modelmeta.CropSettings.from_dict(read_json(p))


def load_model(source: str, cfg: TrainConfig):
    """(model, processor, LabelMap). Labels by name; a head of another size only with --reinit-head."""
    from transformers import AutoConfig

    from dftune.model.load import load_classifier

    try:
        mcfg = AutoConfig.from_pretrained(source)
    except OSError as e:
        raise OSError(f"{source}: could not read the model's config ({e})") from e
    try:
        lm = _labels.resolve(mcfg.id2label, cfg.fake_label, where=str(source))
        model, proc = load_classifier(source)
    except _labels.LabelMappingError:
        if not (cfg.reinit_head and mcfg.num_labels != 2):
            raise
        id2label = _labels.dftune_id2label()
        log.warning("%s: %d-class head replaced by a new 2-class head %s (--reinit-head)", source,
                    mcfg.num_labels, id2label)
        model, proc = load_classifier(source, num_labels=2, id2label=id2label,
                                      label2id={v: k for k, v in id2label.items()}, ignore_mismatched_sizes=True)
        lm = _labels.resolve(model.config.id2label)
    if cfg.reinit_head and mcfg.num_labels == 2:
        log.warning("%s: --reinit-head ignored, the head already has 2 outputs", source)
    return model, proc, lm


def pick_precision(cfg: TrainConfig) -> str:
    import torch

    if cfg.precision != "auto":
        return cfg.precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def lr_lambda(total_steps: int, warmup: int, schedule: str) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            t = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return 1.0

    return f


def prepare_scheduler(accelerator, scheduler):
    """``accelerator.prepare`` the LR scheduler, stepping it once per optimizer step actually taken.

    Accelerate's ``AcceleratedScheduler.step`` does nothing when the optimizer step was skipped (fp16
    GradScaler found inf/NaN gradients), and Accelerate saves and loads it with the other state. Left
    alone it also steps ``num_processes`` times per call (it assumes a schedule counted in
    single-process batches); ours is counted in optimizer steps (``len(train_dl)`` after prepare is a
    per-process length), hence ``split_batches`` = one step per call, whatever the process count.
    """
    prepared = accelerator.prepare(scheduler)
    prepared.split_batches = True
    return prepared


# ---------------------------------------------------------------- the run


def run(data_dir: str | os.PathLike, model_source: str, out_dir: str | os.PathLike, cfg: TrainConfig,
          resume: bool = False, progress: bool = True,
          on_epoch_end: Callable[[int, dict], None] | None = None, say: Callable[[str], None] | None = None) -> dict:
    """Fine-tune ``model_source`` on the prepared crops in ``data_dir``; return the run summary.

    ``on_epoch_end(epoch, record)`` is called after each epoch's checkpoint (an exception raised there stops
    the run after it); ``say(line)`` receives every line the run reports (the trainable share, each epoch's
    line, resume and warning lines): by default they are printed on the main process.

    The run sets torch's thread count (``cfg.threads``, see :func:`dftune.training.config.resolve_threads`)
    and puts the caller's back when it ends.
    """
    import torch

    threads_before = torch.get_num_threads()
    try:
        return _train(data_dir, model_source, out_dir, cfg, resume, progress, on_epoch_end, say)
    finally:
        torch.set_num_threads(threads_before)


def check_resume(run_dir: Path, cfg: TrainConfig, resume_from: Path) -> tuple[TrainConfig | None, dict, dict, dict]:
    """Refuse a resume that would change the run's schedule, data order or step; return
    ``(previous settings, previous run metadata, the checkpoint's trainer counters, allowed changes)``."""
    trainer = read_json(resume_from / STATE_DIR / TRAINER_FILE)
    p = run_dir / "settings.yaml"
    if not p.exists():
        log.warning("%s: no settings.yaml; cannot check the settings against the run's own", run_dir)
        return None, {}, trainer, {}
    prev, meta = load_run_settings(p)
    allowed, refused = resume_changes(prev, cfg)
    if refused:
        lines = "\n".join(f"  {k}: {_show(a)} -> {_show(b)}" for k, (a, b) in refused.items())
        raise TrainError(
            f"{run_dir}: --resume continues the run with the settings it started with; these would change its "
            f"learning-rate schedule, data order or training steps, and are refused:\n{lines}\n"
            f"Settings a resume may change: {', '.join(RESUME_SAFE)}. To train with other settings, start a new "
            f"run (another --out), e.g. from this one's weights with --model {run_dir / 'last'}")
    done = int(trainer.get("epoch", 0))
    sched_epochs = int(trainer.get("schedule_epochs") or meta.get("schedule", {}).get("epochs") or prev.epochs)
    if cfg.epochs < done:
        raise TrainError(f"{run_dir}: epochs {cfg.epochs} is fewer than the {done} already trained; "
                         f"the run is complete (its models are in {run_dir / 'best'} and {run_dir / 'last'})")
    if cfg.schedule == "cosine" and cfg.epochs > sched_epochs:
        raise TrainError(
            f"{run_dir}: epochs: {prev.epochs} -> {cfg.epochs} cannot extend this run: its cosine learning-rate "
            f"schedule was laid out over {sched_epochs} epochs and reaches lr 0 at their end, so further epochs "
            f"would not train. Resume with --epochs {sched_epochs} or fewer, or start a new run from its weights "
            f"(--model {run_dir / 'last'}, another --out)")
    return prev, meta, trainer, allowed


def _show(v) -> str:
    return repr(v) if isinstance(v, str) or v is None else str(v)


def _train(data_dir, model_source, out_dir, cfg: TrainConfig, resume: bool, progress: bool,
           on_epoch_end: Callable[[int, dict], None] | None, say: Callable[[str], None] | None) -> dict:
    import torch
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import set_seed

    data_dir, run_dir = Path(data_dir), Path(out_dir)
    resume_from = ckpt.last_dir(run_dir) if resume else None
    if resume and resume_from is None:
        left = " (a checkpoint was being written when the run stopped; none was completed)" \
            if ckpt.tmp_dir(run_dir / "last").exists() else ""
        raise TrainError(f"{run_dir}: nothing to resume (no complete last/{STATE_DIR}){left}; "
                         f"start without --resume")
    if not resume and ckpt.last_dir(run_dir) is not None:
        raise TrainError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out")
    prev_cfg, prev_meta, prev_trainer, allowed = (check_resume(run_dir, cfg, resume_from) if resume_from
                                                  else (None, {}, {}, {}))

    # ---- devices, precision, trackers
    use_tb = cfg.tensorboard and _has_tensorboard()
    accelerator = Accelerator(
        mixed_precision=pick_precision(cfg),
        dataloader_config=DataLoaderConfiguration(non_blocking=True),
        log_with="tensorboard" if use_tb else None,
        project_dir=str(run_dir),
    )
    say = say or accelerator.print
    ckpt.without_model_weights(accelerator)  # the state holds no second copy of the weights (checkpoint.py)
    main = accelerator.is_main_process
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    _progress.quiet_third_party()  # no "Writing model shards" bars from transformers at every checkpoint
    gpu = accelerator.device.type != "cpu"
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE") or 0) or accelerator.num_processes
    cores = available_cores()
    n_threads, threads_why = resolve_threads(cfg.threads, cores=cores, processes=local_processes, gpu=gpu,
                                             current=torch.get_num_threads())
    if n_threads is not None:
        torch.set_num_threads(n_threads)
    n_threads = torch.get_num_threads()
    n_workers, workers_why = resolve_workers(cfg.num_workers, cores=cores, processes=local_processes, gpu=gpu)
    set_seed(cfg.seed)

    # ---- model and labels (by name, never assumed); which parameters train (dftune.training.trainable)
    if cfg.wise_alpha > 0 and cfg.reinit_head:
        raise TrainError("--wise interpolates with the starting model, head included; --reinit-head gives the run "
                         "another head: use one or the other")
    model, processor, lm = load_model(model_source, cfg)
    try:
        model, plan = trainable.setup(model, cfg)
    except trainable.TuningError as e:
        raise TrainError(str(e)) from None
    say(plan.line())
    spec = Preprocess.from_processor(processor)
    fake_i, real_i = lm.fake_index, lm.real_index

    # ---- data
    rows = read_manifest(data_dir, splits=("train", "val"))
    train_rows, bad_train = data.check_files(data_dir, [r for r in rows if r.split == "train"])
    val_rows, bad_val = data.check_files(data_dir, [r for r in rows if r.split == "val"])
    skipped = set(bad_train + bad_val)
    if not train_rows or not val_rows:
        raise TrainError(f"{data_dir}: need train and val crops, found {len(train_rows)} train / {len(val_rows)} val "
                         f"readable rows; check the manifest's split column (dftune prepare makes both)")
    train_ds = data.CropDataset(data_dir, train_rows, data.make_transform(spec, data.AugSettings.from_config(cfg)), cfg.seed,
                             sbi=cfg.sbi)
    val_ds = data.CropDataset(data_dir, val_rows, data.make_transform(spec, None), cfg.seed)
    counts = train_ds.class_counts()
    if (counts == 0).any():
        raise TrainError(f"{data_dir}: the train split holds only one class ({counts[0]} real, {counts[1]} fake)")
    pin = torch.cuda.is_available()
    if cfg.paired:
        sampler = data.PairedSampler(train_rows, cfg.batch_size, cfg.seed)
    else:
        sampler = data.EpochSampler(train_ds.labels, cfg.seed, shuffle=True, balanced=cfg.balance == "sampler",
                                 sbi=cfg.sbi)
    train_dl = data.make_loader(train_ds, cfg.batch_size, sampler, n_workers, pin)
    val_dl = data.make_loader(val_ds, cfg.batch_size * 2, None, n_workers, pin)
    normalize = data.Normalize(spec)

    # class weights live in the model's index space: weight[fake_index] is the fake class's
    w = data.class_weights(counts) if cfg.balance == "loss" else np.ones(2)
    class_w = torch.zeros(2)
    class_w[real_i], class_w[fake_i] = float(w[0]), float(w[1])
    to_model = torch.tensor([real_i, fake_i])  # dftune label (0 real, 1 fake) -> model output index

    # ---- optimizer and schedule: over every parameter that ever trains (the head-only epochs of --head-epochs
    # leave the others' gradients None, which AdamW skips); one learning rate per layer with --lr-decay
    train_names = set(plan.trainable)
    named = [(n, p) for n, p in model.named_parameters() if n in train_names]
    try:
        groups = trainable.param_groups(named, cfg.lr, cfg.weight_decay, cfg.lr_decay,
                                n_layers=trainable.count_layers(n for n, _ in model.named_parameters()))
    except trainable.TuningError as e:
        raise TrainError(str(e)) from None
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    model, optimizer, train_dl, val_dl = accelerator.prepare(model, optimizer, train_dl, val_dl)
    body = [p for n, p in accelerator.unwrap_model(model).named_parameters()
            if n in train_names and n not in set(plan.head)]  # what the head-only epochs keep still
    ema = None
    if cfg.ema > 0:  # after prepare: the average lives where the weights do
        from dftune.training.ema import EMA

        ema = EMA([(n, p) for n, p in accelerator.unwrap_model(model).named_parameters() if n in train_names],
                  cfg.ema)
    n_batches = len(train_dl) if not cfg.max_train_batches else min(len(train_dl), cfg.max_train_batches)
    steps_per_epoch = math.ceil(n_batches / cfg.grad_accum)
    # the schedule is laid out once, at the run's start, over the epochs planned then; a resume keeps it
    # (changing --epochs moves where the run stops, not the schedule: see the module's docstring)
    if prev_trainer.get("schedule_steps"):
        sched = {k: int(prev_trainer[k]) for k in ("schedule_epochs", "schedule_steps", "warmup_steps")}
        before = prev_trainer.get("steps_per_epoch")
        if before and int(before) != steps_per_epoch:
            msg = (f"{run_dir}: {steps_per_epoch} optimizer steps per epoch now, {before} when the run started "
                   f"(different data or readable files); the learning-rate schedule keeps its "
                   f"{sched['schedule_steps']} steps")
            log.warning(msg)
            say(f"warning: {msg}")
    else:  # a fresh run, or a checkpoint from before the layout was stored: the epochs the run started with
        sched_epochs = int(prev_meta.get("schedule", {}).get("epochs") or (prev_cfg or cfg).epochs)
        total = steps_per_epoch * sched_epochs
        sched = {"schedule_epochs": sched_epochs, "schedule_steps": total,
                 "warmup_steps": int(cfg.warmup_ratio * total)}
    scheduler = prepare_scheduler(accelerator, torch.optim.lr_scheduler.LambdaLR(
        optimizer.optimizer, lr_lambda(sched["schedule_steps"], sched["warmup_steps"], cfg.schedule)))
    class_w, to_model = class_w.to(accelerator.device), to_model.to(accelerator.device)

    # ---- state: fresh or resumed
    state = {"epoch": 0, "best": None, "best_epoch": 0, "bad_epochs": 0,
             "micro_batch": cfg.micro_batch or cfg.batch_size, "step": 0, **sched, "steps_per_epoch": steps_per_epoch}
    history: list[dict] = []
    if resume_from is not None:
        state.update(ckpt.load(accelerator, resume_from, accelerator.unwrap_model(model), train_names))
        if ema is not None:
            ema.load(resume_from / STATE_DIR)
        state.update(sched, steps_per_epoch=steps_per_epoch)
        if "micro_batch" in allowed:  # asked for now: honoured (the effective batch is the same)
            state["micro_batch"] = cfg.micro_batch or cfg.batch_size
        if (run_dir / "history.json").exists():
            history = [h for h in read_json(run_dir / "history.json") if h["epoch"] <= state["epoch"]]
        skipped |= set(state.get("skipped", []))
        say(f"resuming {run_dir} after epoch {state['epoch']} (best {cfg.monitor} "
                          f"{state['best']} at epoch {state['best_epoch']})")
    run_meta = {
        "data": str(data_dir.resolve()), "model": str(model_source), "label_map": lm.to_dict(),
        "id2label": {int(k): v for k, v in accelerator.unwrap_model(model).config.id2label.items()},
        "train_counts": {"real": int(counts[0]), "fake": int(counts[1])},
        "class_weights": {"real": float(w[0]), "fake": float(w[1])},
        "input": {"height": spec.out_height, "width": spec.out_width, "preprocess": spec.to_dict()},
        "processes": accelerator.num_processes, "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "effective_batch": cfg.batch_size * cfg.grad_accum * accelerator.num_processes,
        "threads": n_threads, "threads_from": threads_why, "workers": n_workers, "workers_from": workers_why,
        "schedule": {"epochs": sched["schedule_epochs"], "steps": sched["schedule_steps"],
                     "warmup_steps": sched["warmup_steps"], "steps_per_epoch": steps_per_epoch},
        "tuning": plan.meta(),
    }
    if cfg.lr_decay != 1.0:
        run_meta["tuning"]["layer_lrs"] = {int(g["layer"]): float(g["lr"]) for g in groups}
    if resume_from is not None and prev_meta.get("processes") not in (None, accelerator.num_processes):
        raise TrainError(f"{run_dir}: the run started with {prev_meta['processes']} process(es) and is resumed "
                         f"with {accelerator.num_processes}: that changes its effective batch and data order; "
                         f"resume with {prev_meta['processes']} process(es)")
    # settings.yaml says what each stretch of the run (its start, then every --resume) used
    stretches = _previous_stretches(prev_cfg, prev_meta, state["epoch"]) if resume_from is not None else []
    stretch = {"first_epoch": state["epoch"] + 1, "last_epoch": None, "planned_epochs": cfg.epochs,
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed": resume_from is not None,
               "changed": {k: {"from": a, "to": b} for k, (a, b) in allowed.items()},
               "threads": n_threads, "workers": n_workers, "device": str(accelerator.device),
               "processes": accelerator.num_processes}
    stretches.append(stretch)
    run_meta["stretches"] = stretches
    if main:
        save_yaml(run_dir / "settings.yaml", cfg, run_meta)
    if use_tb:
        accelerator.init_trackers("tensorboard")
    crop = crop_settings(data_dir)
    crop.aggregate = cfg.video_aggregate

    # ---- one loader batch: forward/backward in micro-batches, halving on OOM (see dftune.training.step)
    bar = _progress.bar(0, "", enabled=False)  # the epoch's bar; messages go through it (bar.write)
    forward_backward = ForwardBackward(accelerator, model, optimizer, state["micro_batch"], normalize,
                                       on_message=(lambda msg: bar.write(msg)) if main else None)

    # ---- validation: frame and video level, gathered over processes
    def averaged():
        """The EMA weights in the model for the block (--ema), else nothing changes."""
        import contextlib

        return ema.applied() if ema is not None else contextlib.nullcontext()

    def validate() -> dict:
        with averaged():
            return _validate()

    def _validate() -> dict:
        model.eval()
        P, I, V = [], [], []
        with torch.inference_mode():
            for batch in val_dl:
                logits = model(pixel_values=normalize(batch["pixels"])).logits.float()
                p = logits.softmax(-1)[:, fake_i]
                # uint8, not bool: every collective backend gathers it
                p, idx, ok = accelerator.gather_for_metrics((p, batch["index"], batch["valid"].to(torch.uint8)))
                P.append(p.cpu()), I.append(idx.cpu()), V.append(ok.cpu().bool())
        model.train()
        p, idx, ok = torch.cat(P).numpy(), torch.cat(I).numpy(), torch.cat(V).numpy()
        for i in idx[~ok]:
            skipped.add(f"{val_ds.paths[i]}: cannot decode as an image")
        p, idx = p[ok].astype(np.float64), idx[ok]
        y = val_ds.labels[idx]
        keys = [val_rows[i].video for i in idx]
        frame = metrics.binary_metrics(y, p)
        _, vp, vy = video_aggregate(keys, p, y, how=cfg.video_aggregate)
        video = metrics.binary_metrics(vy, vp)
        t, t_f1 = metrics.best_threshold(y, p)
        vt, vt_f1 = metrics.best_threshold(vy, vp)
        frame.update(best_threshold=t, best_threshold_f1=t_f1)
        video.update(best_threshold=vt, best_threshold_f1=vt_f1)
        return {"frame": _short(frame), "video": _short(video)}

    def monitor_value(val: dict) -> float:
        key = {"f1": "macro_f1", "auc": "auc", "loss": "loss"}[cfg.monitor]
        v = val[cfg.monitor_level][key]
        return float("nan") if v is None else float(v)  # AUC is undefined with one class in val

    def improved(v: float) -> bool:
        if state["best"] is None or math.isnan(state["best"]):
            return not math.isnan(v)
        return v > state["best"] if cfg.higher_is_better else v < state["best"]

    # last/'s model is the raw training weights unless it holds the average (--ema) or merged adapters (LoRA):
    # only then does the training state need its own copy of them (checkpoint.WEIGHTS_FILE)
    raw_apart = ema is not None or trainable.is_peft(accelerator.unwrap_model(model))

    def raw_weights() -> dict:
        """The trained parameters and the buffers of the training model, under its own names."""
        m = accelerator.unwrap_model(model)
        params = {n for n, _ in m.named_parameters()}
        return {n: t.detach().to("cpu", copy=True) for n, t in m.state_dict().items()
                if n in train_names or n not in params}

    def save_model(dest: Path, record: dict, with_state: bool, same_as: Path | None = None) -> None:
        def write(folder: Path) -> None:
            if ema is not None and with_state:
                ema.save(folder / STATE_DIR)  # --resume continues the average
            if same_as is not None:  # the same model was just saved there: link its files, don't write them again
                ckpt.link_files(same_as, folder)
                return
            # a plain Hugging Face model: the EMA weights (--ema), LoRA adapters merged into a copy (--tune lora)
            with averaged():
                trainable.merged_copy(accelerator.unwrap_model(model)).save_pretrained(folder)
            processor.save_pretrained(folder)
            val = record["val"]
            extra = {"epoch": record["epoch"], "best_epoch": state["best_epoch"], "monitor": cfg.monitor,
                     "monitor_level": cfg.monitor_level, "metrics": val, "trained_from": str(model_source),
                     "data": str(data_dir.resolve())}
            if val is not None:
                # threshold and its source stay the defaults (0.5, "default"): the one predict applies comes from
                # `dftune evaluate --write-threshold`, tuned with its TTA and video pooling. The val optimum seen
                # here (frame or video level, no TTA) is kept as information only.
                extra["train_val_threshold"] = {
                    "frame": val["frame"]["best_threshold"], "video": val["video"]["best_threshold"],
                    "tta": [], "note": "frame/video level, no TTA; not applied: run `dftune evaluate "
                                       "--write-threshold` to tune the threshold predict uses"}
            modelmeta.save(folder, modelmeta.ModelMeta(fake_index=fake_i, real_index=real_i, crop=crop, extra=extra))

        ckpt.save(accelerator, dest, write, {**state, "skipped": sorted(skipped)} if with_state else None,
                  raw_weights=raw_weights if with_state and raw_apart else None)

    # ---- the loop
    model.train()
    first_epoch = state["epoch"] + 1
    for epoch in range(first_epoch, cfg.epochs + 1):
        if state["bad_epochs"] >= cfg.patience > 0:
            break  # early stopping
        set_seed(cfg.seed + epoch, device_specific=True)  # an epoch's randomness depends on (seed, epoch) only
        head_only = epoch <= cfg.head_epochs  # LP-FT: the head alone first
        if accelerator.num_processes == 1:  # under DDP the set stays fixed: the body's gradients are dropped below
            trainable.set_phase(accelerator.unwrap_model(model), plan, head_only)
        if cfg.head_epochs and epoch in (first_epoch, cfg.head_epochs + 1):
            say(f"epoch {epoch}: training {'the head only' if head_only else f'--tune {cfg.tune}'}")
        train_dl.set_epoch(epoch)
        t0 = time.perf_counter()
        sums = torch.zeros(6, device=accelerator.device)  # loss, n, tp, fp, tn, fn
        bar = _progress.bar(n_batches, f"epoch {epoch}/{cfg.epochs}", unit="it", enabled=progress and main,
                            leave=False)
        seen = 0
        for bi, batch in enumerate(train_dl):
            if bi >= n_batches:
                break
            start = bi - bi % cfg.grad_accum
            win_len = min(cfg.grad_accum, n_batches - start)
            sync = bi - start == win_len - 1
            valid = batch["valid"]
            if not bool(valid.all()):
                for i in batch["index"][~valid].tolist():
                    skipped.add(f"{train_ds.paths[i]}: cannot decode as an image")
            target = to_model[batch["labels"]]
            weight = class_w[target] * valid.float()  # 0 drops an unreadable image
            denom = weight.sum().clamp_min(1e-8) * win_len
            loss, logits = forward_backward(batch["pixels"], target, weight, denom, sync)
            state["micro_batch"] = forward_backward.micro_batch
            pred = (logits.softmax(-1)[:, fake_i] >= 0.5).long()
            y, v = batch["labels"], valid
            sums += torch.stack([loss * win_len, v.sum(), ((pred == 1) & (y == 1) & v).sum(),
                                 ((pred == 1) & (y == 0) & v).sum(), ((pred == 0) & (y == 0) & v).sum(),
                                 ((pred == 0) & (y == 1) & v).sum()]).float()
            if sync:
                if head_only:
                    for p in body:
                        p.grad = None  # AdamW skips them: no update, no weight decay
                if cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()  # a no-op when fp16's GradScaler skipped the step (inf/NaN gradients)
                optimizer.zero_grad(set_to_none=True)
                if ema is not None and not accelerator.optimizer_step_was_skipped:
                    ema.update()
                state["step"] += 1
            seen += int(batch["labels"].shape[0]) * accelerator.num_processes
            bar.update(1)
            if bi % 10 == 0 or bi == n_batches - 1:
                bar.set_postfix(loss=f"{(sums[0] / (bi + 1)).item():.4f}",
                                img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        bar.close()
        train_time = time.perf_counter() - t0
        tot = accelerator.reduce(sums, reduction="sum").tolist()
        tp, fp, tn, fn = tot[2:]
        f1s = [2 * tp / max(1, 2 * tp + fp + fn), 2 * tn / max(1, 2 * tn + fn + fp)]
        train_stats = {"loss": tot[0] / max(1, n_batches * accelerator.num_processes),
                       "accuracy": (tp + tn) / max(1, tot[1]), "macro_f1": sum(f1s) / 2,
                       "images_per_s": seen / train_time, "lr": max(scheduler.get_last_lr()),
                       "micro_batch": state["micro_batch"]}
        validated = epoch % cfg.val_every == 0 or epoch == cfg.epochs  # --val-every, and always the last epoch
        val = validate() if validated else None
        v = monitor_value(val) if validated else float("nan")
        record = {"epoch": epoch, "train": train_stats, "val": val, "monitor": None if math.isnan(v) else v,
                  "time_s": round(time.perf_counter() - t0, 3)}
        state["epoch"] = epoch
        record["best"] = validated and improved(v)
        if record["best"]:
            state.update(best=v, best_epoch=epoch, bad_epochs=0)
        elif validated:
            state["bad_epochs"] += 1  # patience counts validations
        history.append(record)
        try:
            if record["best"]:
                save_model(run_dir / "best", record, with_state=False)
            save_model(run_dir / "last", record, with_state=True,
                       same_as=run_dir / "best" if record["best"] else None)
        except WriteError as e:
            raise _checkpoint_failed(e, run_dir, epoch, history, skipped, main) from e
        if main:
            write_json(run_dir / "history.json", history)
            if skipped:
                write_text(run_dir / "skipped.txt", "\n".join(sorted(skipped)) + "\n")
            stretch["last_epoch"] = epoch
            save_yaml(run_dir / "settings.yaml", cfg, run_meta)
        if use_tb:
            accelerator.log(_scalars(record), step=epoch)
        say(_epoch_line(record, cfg))
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
    stop_reason = "completed all epochs"
    if state["bad_epochs"] >= cfg.patience > 0 and state["epoch"] < cfg.epochs:
        stop_reason = f"early stopping: no val {cfg.monitor} improvement for {cfg.patience} epochs"
    if use_tb:
        accelerator.end_training()

    best_rec = next((h for h in history if h["epoch"] == state["best_epoch"]), None)
    wise = wise_ft(model_source, run_dir, cfg.wise_alpha) if cfg.wise_alpha > 0 and main else {}
    summary = {**wise,
        "run_dir": str(run_dir), "epochs_run": state["epoch"], "epochs_planned": cfg.epochs,
        "best_epoch": state["best_epoch"], "monitor": f"val {cfg.monitor_level} {cfg.monitor}",
        "best_value": state["best"], "best_val": best_rec["val"] if best_rec else None,
        "best_dir": str(run_dir / "best"), "last_dir": str(run_dir / "last"), "stopped": stop_reason,
        "skipped": sorted(skipped), "label_map": lm.to_dict(), "micro_batch": state["micro_batch"],
        "mixed_precision": accelerator.mixed_precision, "processes": accelerator.num_processes,
        "device": str(accelerator.device), "threads": n_threads, "threads_from": threads_why,
        "workers": n_workers, "workers_from": workers_why,
        "tune": cfg.tune, "trainable_params": plan.n_trainable, "total_params": plan.total,
        "trainable_share": plan.meta()["trainable_share"],
    }
    return summary


def wise_ft(model_source: str, run_dir: Path, alpha: float) -> dict:
    """``--wise A``: ``RUN_DIR/wise`` = (1 - A) * the starting model + A * ``best/`` (WiSE-FT, stages.merge).
    A failure is reported, never raised: the run's own models are complete by then."""
    from dftune.stages import merge

    best = run_dir / "best"
    if not best.exists():
        return {"wise_error": f"{best} does not exist (no epoch was validated)"}
    try:
        merge.run([str(model_source), str(best)], run_dir / "wise", alpha=alpha, force=True)
    except Exception as e:  # noqa: BLE001 - the run is done; say why this extra did not happen
        log.warning("%s: WiSE-FT model not written: %s", run_dir, e)
        return {"wise_error": f"{type(e).__name__}: {e}"}
    return {"wise_dir": str(run_dir / "wise"), "wise_alpha": alpha}


def _previous_stretches(prev_cfg: TrainConfig | None, prev_meta: dict, done: int) -> list[dict]:
    """The stretches recorded before this resume, cut to the ``done`` epochs its checkpoint holds (a stretch
    whose epochs were not saved is dropped: they are trained again now)."""
    old = [dict(s) for s in prev_meta.get("stretches") or []]
    if not old:  # a run from before stretches were recorded
        old = [{"first_epoch": 1, "last_epoch": done, "planned_epochs": prev_cfg.epochs if prev_cfg else None,
                "resumed": False, "note": "recorded before settings.yaml kept stretches"}]
    kept = [s for s in old if int(s.get("first_epoch") or 1) <= done]
    if kept:
        kept[-1]["last_epoch"] = done
    return kept


def _checkpoint_failed(e: WriteError, run_dir: Path, epoch: int, history: list[dict], skipped: set,
                       main: bool) -> WriteError:
    """Epoch ``epoch``'s checkpoint could not be written: keep the history of what was done, and say what the
    run can do now."""
    history[-1]["checkpoint"] = f"not saved: {e}"
    if main:
        try:
            write_json(run_dir / "history.json", history)
            if skipped:
                write_text(run_dir / "skipped.txt", "\n".join(sorted(skipped)) + "\n")
        except WriteError as e2:
            log.error("%s", e2)
    last = ckpt.last_dir(run_dir)
    if last is not None:
        done = int(read_json(last / STATE_DIR / TRAINER_FILE).get("epoch", 0))
        then = (f"{last} still holds the complete checkpoint of epoch {done}: free some space, then run the same "
                f"command with --resume to continue from epoch {done + 1}")
    else:
        then = "no checkpoint was completed yet: free some space and start the run again (without --resume)"
    return WriteError(e.errno, f"{e}\nepoch {epoch}'s checkpoint was not written; {then} "
                               f"(history.json lists the epochs trained)")


# ---------------------------------------------------------------- small helpers


_KEEP = ("n", "n_real", "n_fake", "loss", "accuracy", "macro_f1", "auc", "balanced_accuracy",
         "best_threshold", "best_threshold_f1")


def _short(m: dict) -> dict:
    return {k: (None if isinstance(m[k], float) and math.isnan(m[k]) else m[k]) for k in _KEEP if k in m}


def _scalars(rec: dict) -> dict:
    out = {f"train/{k}": v for k, v in rec["train"].items() if isinstance(v, (int, float))}
    for level in ("frame", "video") if rec["val"] is not None else ():
        for k, v in rec["val"][level].items():
            if isinstance(v, (int, float)) and v is not None:
                out[f"val_{level}/{k}"] = v
    return out


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _epoch_line(rec: dict, cfg: TrainConfig) -> str:
    tr = rec["train"]
    if rec["val"] is None:
        return (f"epoch {rec['epoch']}/{cfg.epochs}: train loss {tr['loss']:.4f} f1 {tr['macro_f1']:.4f} "
                f"({tr['images_per_s']:.0f} img/s) | not validated (--val-every {cfg.val_every})")
    fr, vi = rec["val"]["frame"], rec["val"]["video"]
    return (f"epoch {rec['epoch']}/{cfg.epochs}: train loss {tr['loss']:.4f} f1 {tr['macro_f1']:.4f} "
            f"({tr['images_per_s']:.0f} img/s) | val frame loss {_fmt(fr['loss'])} f1 {_fmt(fr['macro_f1'])} "
            f"auc {_fmt(fr['auc'])} | video f1 {_fmt(vi['macro_f1'])} auc {_fmt(vi['auc'])}"
            f"{'  * best' if rec['best'] else ''}")


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
        return True
    except ImportError:
        return False


def resume_config(run_dir: str | os.PathLike, overrides: dict) -> TrainConfig:
    """Settings for ``--resume``: the run's own settings.yaml, with explicit overrides (e.g. more epochs)."""
    from dftune.training.config import build

    p = Path(run_dir) / "settings.yaml"
    if not p.exists():
        raise TrainError(f"{run_dir}: no settings.yaml to resume from")
    cfg, _ = load_run_settings(p)
    return build(cfg, overrides)
