"""Training throughput: dftune's full loop vs the model step alone vs the guide's loop.

    python benchmarks/bench_train.py [--workers 2] [--threads 1] [--image-size 64] [--hidden 64]

Three numbers, same model, batch and data, in one run:

* step only   - forward/backward/AdamW on a batch already in memory (upper bound)
* dftune      - `dftune.stages.train.train` (loader workers decode (+ augment), uint8 batches,
                on-device normalisation, Accelerate); images/s of its 2nd epoch, with the
                augmentations off (the guide's work) and on (the default)
* guide       - a loop as the guide writes it: PIL open + image processor per image in
                the Dataset, float tensors collated, same workers

ratio = dftune / step-only shows the input pipeline's overhead. The machine's load
average is printed: on a shared CPU the workers compete with other processes. With a GPU, it also
times ViT-B/16 (random init, 224 px) in bf16, naming the card.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path


def step_only(model_dir, batch, steps, device="cpu", precision="no"):
    import torch
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(model_dir).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    size = model.config.image_size
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def one():
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits.float(), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):
        one()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        one()
    _sync(device)
    return steps * batch / (time.perf_counter() - t)


def _sync(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def dftune_loop(data, model_dir, batch, workers, out, precision="auto", epochs=2, aug=True):
    from dftune.train.config import TrainConfig
    from dftune.stages.train import train

    cfg = TrainConfig(epochs=epochs, batch_size=batch, num_workers=workers, patience=0, tensorboard=False,
                      precision=precision, lr=1e-5, aug=aug)
    train(data, model_dir, out, cfg, progress=False)
    hist = json.loads((Path(out) / "history.json").read_text())
    return hist[-1]["train"]["images_per_s"]


def guide_loop(data, model_dir, batch, workers, epochs=2, device="cpu"):
    """The guide's pattern: processor called per image inside __getitem__."""
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from dftune.prepared import image_path, read_manifest

    rows = read_manifest(data, splits=["train"])
    proc = AutoImageProcessor.from_pretrained(model_dir)

    class GuideDataset(Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            img = Image.open(image_path(data, rows[i])).convert("RGB")
            px = proc(images=img, return_tensors="pt")["pixel_values"].squeeze(0)
            return px, rows[i].label

    model = AutoModelForImageClassification.from_pretrained(model_dir).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    dl = DataLoader(GuideDataset(), batch_size=batch, shuffle=True, num_workers=workers)
    rate = 0.0
    for _ in range(epochs):
        n, t = 0, time.perf_counter()
        for x, y in dl:
            x, y = x.to(device), y.to(device)
            loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            n += len(y)
        _sync(device)
        rate = n / (time.perf_counter() - t)
    return rate


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2, help="loader workers for both loops")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the main process")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=64, help="tiny ViT input size")
    ap.add_argument("--hidden", type=int, default=64, help="tiny ViT width")
    ap.add_argument("--crop-size", type=int, default=64, help="size of the prepared crops")
    ap.add_argument("--videos", type=int, default=16, help="train identities (x5 videos x8 frames images)")
    ap.add_argument("--steps", type=int, default=60, help="steps for the step-only timing")
    ap.add_argument("--no-gpu", action="store_true", help="skip the ViT-B/16 GPU timing")
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    from dftune.stages.demo.dataset import make_crops
    from dftune.model.load import build_tiny_vit

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    data = tmp / "crops"
    make_crops(data, n_videos=args.videos, frames=8, size=args.crop_size)
    tiny = build_tiny_vit(tmp / "tiny", image_size=args.image_size, hidden_size=args.hidden)
    n_train = sum(1 for line in open(data / "manifest.csv") if ",train," in line)

    res = {"cpu_count": os.cpu_count(), "threads": args.threads, "workers": args.workers, "batch": args.batch,
           "model": f"tiny ViT {args.image_size}px hidden {args.hidden}", "crops": f"{n_train} x {args.crop_size}px"}
    res["step_only"] = step_only(tiny, args.batch, args.steps)
    res["dftune_no_aug"] = dftune_loop(data, str(tiny), args.batch, args.workers, tmp / "run0", precision="no",
                                       aug=False)
    res["dftune_aug"] = dftune_loop(data, str(tiny), args.batch, args.workers, tmp / "run1", precision="no")
    res["guide"] = guide_loop(data, str(tiny), args.batch, args.workers)
    res["ratio_dftune_no_aug_step"] = res["dftune_no_aug"] / res["step_only"]
    res["ratio_dftune_aug_step"] = res["dftune_aug"] / res["step_only"]
    res["ratio_guide_step"] = res["guide"] / res["step_only"]
    res["speedup_vs_guide_same_work"] = res["dftune_no_aug"] / res["guide"]
    res["load_avg_1min"] = os.getloadavg()[0]

    if torch.cuda.is_available() and not args.no_gpu:
        from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

        b16 = tmp / "vit_b16"
        cfg = ViTConfig(image_size=224, patch_size=16, num_labels=2, id2label={0: "Realism", 1: "Deepfake"},
                        label2id={"Realism": 0, "Deepfake": 1})
        ViTForImageClassification(cfg).save_pretrained(b16)
        ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(b16)
        data224 = tmp / "crops224"
        make_crops(data224, n_videos=args.videos, frames=8, size=224)
        res["gpu"] = torch.cuda.get_device_name(0)
        res["vit_b16_bf16_step_only"] = step_only(b16, 64, 30, device="cuda", precision="bf16")
        res["vit_b16_bf16_dftune"] = dftune_loop(data224, str(b16), 64, min(8, os.cpu_count() or 1),
                                                 tmp / "run_b16", precision="bf16")
    else:
        res["gpu"] = None

    for k, v in res.items():
        print(f"{k:>24}: {v:.3f}" if isinstance(v, float) else f"{k:>24}: {v}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
