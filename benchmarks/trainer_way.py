"""The Hugging Face Trainer way: fine-tune an image classifier on a dftune prepared folder.

    python benchmarks/trainer_way.py --data CROPS --model MODEL_DIR --out RUN_DIR \
        [--epochs 2] [--batch 16] [--lr 1e-5] [--workers 2] [--seed 0] [--threads 1]

What a user of transformers' ``examples/pytorch/image-classification/run_image_classification.py``
would write for dftune's crops, without torchvision: a torch ``Dataset`` that opens each image with PIL
and calls the model's image processor on it in ``__getitem__`` (the processor is the whole transform),
``transformers.Trainer`` with evaluation and a checkpoint every epoch, accuracy and macro F1 from
scikit-learn, then ``save_model`` / ``save_state`` as the example does. It is a peer for
``benchmarks/bench_train.py --peers``, which runs it next to ``dftune train`` on the same crops.

Labels: dftune's manifest says 0 = real, 1 = fake; the model's output ids are found by their names
(``dftune.model.labels.resolve(model.config.id2label)``), so a model with 0 = "Realism", 1 = "Deepfake"
and one with 0 = "Deepfake", 1 = "Real" both train correctly.

Runs on CPU, or on the GPU when there is one (``--cpu`` keeps it on the CPU even then). The last line
printed is one JSON object: wall seconds (from the script's start, imports included), the Trainer's
``train_samples_per_second`` (its whole ``train()``: evaluation and checkpoints included), and the
steady-state images/s (time per optimizer step after the first ``--skip-steps`` steps of every epoch,
measured by a ``TrainerCallback`` between consecutive ``on_step_end`` calls, so data loading waits count and
evaluation/saving do not).
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=_Formatter)
    ap.add_argument("--data", required=True, help="dftune prepared folder (holds manifest.csv)")
    ap.add_argument("--model", required=True, help="model folder (AutoModelForImageClassification + processor)")
    ap.add_argument("--out", required=True, help="Trainer output_dir (checkpoint-N/ per epoch, final model)")
    ap.add_argument("--epochs", type=int, default=2, help="num_train_epochs")
    ap.add_argument("--batch", type=int, default=16, help="per_device_train_batch_size")
    ap.add_argument("--eval-batch", type=int, default=0,
                    help="per_device_eval_batch_size (0 = 2 x --batch, as dftune's validation)")
    ap.add_argument("--lr", type=float, default=1e-5, help="learning_rate (AdamW)")
    ap.add_argument("--schedule", default="linear",
                    help="lr_scheduler_type (the Trainer's default is linear decay; dftune's is constant)")
    ap.add_argument("--weight-decay", type=float, default=0.0,
                    help="weight_decay (the Trainer leaves biases and LayerNorm weights undecayed)")
    ap.add_argument("--workers", type=int, default=2, help="dataloader_num_workers")
    ap.add_argument("--seed", type=int, default=0, help="seed")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in the main process (0 = torch's)")
    ap.add_argument("--precision", choices=["auto", "no", "bf16", "fp16"], default="no",
                    help="no = fp32; auto = bf16 on a GPU that has it, else fp16 on a GPU, fp32 on CPU")
    ap.add_argument("--load-best", action="store_true",
                    help="load_best_model_at_end on eval macro F1 (not set: the last epoch's weights are kept)")
    ap.add_argument("--save-total-limit", type=int, default=0, help="save_total_limit (0 = keep every checkpoint)")
    ap.add_argument("--no-final-save", action="store_true",
                    help="skip the example's trainer.save_model() + save_state() after training")
    ap.add_argument("--final-eval", action="store_true",
                    help="one more trainer.evaluate() after training, as the HF example's do_eval does (not set: "
                         "validation once per epoch only, the same work as dftune train)")
    ap.add_argument("--skip-steps", type=int, default=3,
                    help="optimizer steps at the start of each epoch left out of the steady-state img/s")
    ap.add_argument("--cpu", action="store_true", help="use_cpu=True even where a GPU is present")
    return ap.parse_args(argv)


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def steady_rate(epochs: list[list[tuple[float, int]]], skip: int) -> float | None:
    """Images/s from per-epoch lists of (step end time, images in that step), leaving out each epoch's
    first ``skip`` steps (the interval before step i is charged to step i's images)."""
    n, t = 0, 0.0
    for steps in epochs:
        first = max(1, min(skip, len(steps) - 1))
        for i in range(first, len(steps)):
            t += steps[i][0] - steps[i - 1][0]
            n += steps[i][1]
    return n / t if t > 0 else None


def main(argv=None) -> int:
    args = parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image
    from sklearn.metrics import accuracy_score, f1_score
    from torch.utils.data import Dataset
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageClassification,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
    )

    from dftune.model.labels import resolve
    from dftune.prepared import image_path, read_manifest

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    model = AutoModelForImageClassification.from_pretrained(args.model)
    processor = AutoImageProcessor.from_pretrained(args.model)
    lm = resolve(model.config.id2label)
    to_model = {0: lm.real_index, 1: lm.fake_index}  # dftune label -> the model's output id

    class PreparedCrops(Dataset):
        """One manifest split; each item opened with PIL and run through the image processor."""

        def __init__(self, split):
            self.rows = read_manifest(args.data, splits=[split])

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            row = self.rows[i]
            with Image.open(image_path(args.data, row)) as im:
                img = im.convert("RGB")
            px = processor(images=img, return_tensors="pt")["pixel_values"][0]
            return {"pixel_values": px, "labels": to_model[int(row.label)]}

    train_ds, val_ds = PreparedCrops("train"), PreparedCrops("val")

    def compute_metrics(p):
        pred = np.argmax(p.predictions, axis=1)
        return {"accuracy": accuracy_score(p.label_ids, pred),
                "f1": f1_score(p.label_ids, pred, average="macro")}

    class StepTimer(TrainerCallback):
        """Wall time at each optimizer step's end, per epoch (evaluation and saving fall between epochs)."""

        def __init__(self):
            self.epochs: list[list[tuple[float, int]]] = []

        def on_epoch_begin(self, targs, state, control, **kw):
            self.epochs.append([])

        def on_step_end(self, targs, state, control, **kw):
            if not self.epochs:
                self.epochs.append([])
            self.epochs[-1].append((time.perf_counter(), 0))

    cuda = torch.cuda.is_available() and not args.cpu
    prec = args.precision
    if prec == "auto":
        prec = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    targs = TrainingArguments(
        output_dir=args.out,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        per_device_train_batch_size=args.batch,
        per_device_eval_batch_size=args.eval_batch or 2 * args.batch,
        learning_rate=args.lr,
        lr_scheduler_type=args.schedule,
        weight_decay=args.weight_decay,
        num_train_epochs=args.epochs,
        seed=args.seed,
        dataloader_num_workers=args.workers,
        report_to="none",
        remove_unused_columns=False,  # the Dataset's dict keys are the model's inputs already
        load_best_model_at_end=args.load_best,
        metric_for_best_model="f1" if args.load_best else None,
        save_total_limit=args.save_total_limit or None,
        bf16=prec == "bf16",
        fp16=prec == "fp16",
        use_cpu=not cuda,
        disable_tqdm=True,
    )
    timer = StepTimer()
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, eval_dataset=val_ds,
                      data_collator=default_data_collator, compute_metrics=compute_metrics,
                      processing_class=processor, callbacks=[timer])
    result = trainer.train()
    if not args.no_final_save:
        trainer.save_model()
        trainer.save_state()
    metrics = trainer.evaluate() if args.final_eval else next(
        (h for h in reversed(trainer.state.log_history) if "eval_f1" in h), {})

    # images per step: full batches, the epoch's last one what is left
    n = len(train_ds)
    spe = math.ceil(n / args.batch)
    for steps in timer.epochs:
        for i, (t, _) in enumerate(steps):
            steps[i] = (t, args.batch if (i + 1) % spe else n - (spe - 1) * args.batch)
    out = {
        "way": "trainer",
        "wall_s": round(time.perf_counter() - T_START, 3),
        "train_runtime_s": result.metrics.get("train_runtime"),
        "train_samples_per_s": result.metrics.get("train_samples_per_second"),
        "steady_img_s": steady_rate(timer.epochs, args.skip_steps),
        "steps": sum(len(s) for s in timer.epochs),
        "epochs": args.epochs,
        "train_images": n,
        "device": "cuda" if cuda else "cpu",
        "precision": prec,
        "threads": torch.get_num_threads(),
        "workers": args.workers,
        "eval_accuracy": metrics.get("eval_accuracy"),
        "eval_f1": metrics.get("eval_f1"),
        "label_map": {"real": lm.real_index, "fake": lm.fake_index},
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
