"""Training throughput: dftune's full loop vs the model step alone vs the guide's loop.

    python benchmarks/bench_train.py [--workers 2] [--threads 1] [--image-size 64] [--hidden 64]

Three numbers, same model, batch and data, in one run:

* step only   - forward/backward/AdamW on a batch already in memory (upper bound)
* dftune      - `dftune.stages.train.run` (loader workers decode (+ augment), uint8 batches,
                on-device normalisation, Accelerate); images/s of its last epoch (--epochs), with the
                augmentations off (the guide's work) and on (the default)
* guide       - a loop as the guide writes it: PIL open + image processor per image in
                the Dataset, float tensors collated, same workers

ratio = dftune / step-only shows the input pipeline's overhead. The machine's load
average is printed: on a shared CPU the workers compete with other processes. With a GPU, it also
times ViT-B/16 (random init, 224 px) in bf16, naming the card.

Peers (issue 13, "dftune train as fast and lean as the HF Trainer"): ``--peers`` instead runs three
ways of training, each as its own subprocess, on the same prepared crops, model, batch, lr, epochs,
seed, loader workers and torch threads, interleaved (dftune, trainer, guide, dftune, ... for
``--repeats N``)::

    python benchmarks/bench_train.py --peers --size tiny            # tiny ViT, 64 px crops, 3 rounds
    python benchmarks/bench_train.py --peers --size vitb --videos 4 --workers 2 --threads $(($(nproc) - 2))
                                                                    # ViT-B/16, 224 px crops (160 train)

(``--threads`` defaults to 1, right for the tiny model on a shared box; give ViT-B the cores the loader
workers leave. On a GPU every way uses it; ``--precision`` defaults to fp32 for all, ``--cpu`` hides it.)

* dftune  - ``python -m dftune train`` (its CLI; ``--no-aug --no-tensorboard --patience 0 --no-progress``
            by default, the same work as the others: see ``--dftune-aug``, ``--dftune-args``)
* trainer - ``benchmarks/trainer_way.py``: ``transformers.Trainer``, PIL + image processor per image,
            eval + checkpoint every epoch, then ``save_model``/``save_state`` as the HF example does
            (run with dftune's constant schedule and weight decay 0.01)
* guide   - :func:`guide_loop` below (no validation, no checkpoints: its wall and disk are lower bounds)

Each child runs under ``bench_train.py _child WAY RESULT.json ARGS...``, which only registers a global
``torch.optim`` step post-hook (a timestamp per optimizer step) and then runs the way in-process
(``runpy`` of ``dftune``'s ``__main__`` = ``python -m dftune train``; ``runpy`` of trainer_way.py).
Per run, measured from outside and from the hook, the same way for all three:

* wall       - seconds from spawning the subprocess to its exit (imports, data, eval, saving included)
* steady     - images/s over the optimizer steps of every epoch after its first ``--skip-steps``
               (interval between consecutive step timestamps, charged to the later step's images:
               loader waits count, validation/checkpointing between epochs do not)
* start/between/tail - where the rest of the wall goes: spawn -> first optimizer step (imports, model and
               data setup, loader start), the gaps at epoch boundaries (validation, checkpoint, loader
               restart), last step -> exit (last validation/checkpoint, final save, teardown)
* own        - the way's own figure for cross-checking: dftune history.json images_per_s of its last
               epoch (whole epoch), the Trainer callback's steady img/s, the guide's last-epoch rate
* PSS        - peak over time of the summed ``Pss:`` of ``/proc/PID/smaps_rollup`` of the child and all
               its descendants (loader workers), sampled every ``--interval`` s; ``main`` is the child's
               own share at that peak, ``procs`` the most processes seen in the tree at once
* disk/epoch - ``write_bytes`` of ``/proc/PID/io`` (bytes sent to the storage layer; a reaped worker's
               count moves into its parent's), summed over the tree, the max of the samples and of the
               child's own reading at its end, divided by the epochs; ``wchar`` (every write() call,
               pipes included) and the output folder's size at the end are listed too
* state/model - dftune: size of ``last/training_state/`` / ``last/model.safetensors`` (issue goal
               <= 2.3); trainer: its last ``checkpoint-N/`` less the model files / ``model.safetensors``
* load       - the 1-minute load average when the run started and when it ended

It prints a row per run, then per size the best of N (min wall, max img/s, min PSS, min disk) and the
median of each way with the ratios dftune/trainer and dftune/guide, and one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import runpy
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WAYS = ("dftune", "trainer", "guide")


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
    from dftune.stages import train
    from dftune.training.config import TrainConfig

    cfg = TrainConfig(epochs=epochs, batch_size=batch, num_workers=workers, patience=0, tensorboard=False,
                      precision=precision, lr=1e-5, aug=aug)
    train.run(data, model_dir, out, cfg, progress=False)
    hist = json.loads((Path(out) / "history.json").read_text())
    return hist[-1]["train"]["images_per_s"]


def guide_loop(data, model_dir, batch, workers, epochs=2, device="cpu", lr=1e-5, precision="no"):
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
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    dl = DataLoader(GuideDataset(), batch_size=batch, shuffle=True, num_workers=workers)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=precision == "fp16")
    rate = 0.0
    for _ in range(epochs):
        n, t = 0, time.perf_counter()
        for x, y in dl:
            x, y = x.to(device), y.to(device)
            with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None):
                loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits.float(), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            n += len(y)
        _sync(device)
        rate = n / (time.perf_counter() - t)
    return rate


def build_vit_b16(out_dir) -> Path:
    """ViT-B/16 (transformers' ViTConfig defaults: 224 px, patch 16, 12 x 768), random init, 2 labels."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    out = Path(out_dir)
    cfg = ViTConfig(num_labels=2, id2label={0: "Realism", 1: "Deepfake"}, label2id={"Realism": 0, "Deepfake": 1})
    ViTForImageClassification(cfg).save_pretrained(out)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(out)
    return out


# ============================================================ peers: dftune train vs the Trainer vs the guide


def _child(argv) -> int:
    """``bench_train.py _child WAY RESULT_JSON ARGS...``: run one way in this process, timing optimizer steps."""
    way, result, rest = argv[0], Path(argv[1]), list(argv[2:])
    import resource

    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    steps: list[float] = []
    register_optimizer_step_post_hook(lambda opt, a, kw: steps.append(time.perf_counter()))
    rc, own = 0, None
    t0 = time.perf_counter()
    try:
        if way == "dftune":  # exactly `python -m dftune ARGS`
            sys.argv = ["dftune", *rest]
            runpy.run_module("dftune", run_name="__main__", alter_sys=True)
        elif way == "trainer":
            script = str(HERE / "trainer_way.py")
            sys.argv = [script, *rest]
            runpy.run_path(script, run_name="__main__")
        elif way == "guide":
            g = json.loads(rest[0])
            threads = g.pop("threads")
            if threads > 0:
                torch.set_num_threads(threads)
            torch.manual_seed(g.pop("seed"))
            own = guide_loop(**g)
        else:
            raise SystemExit(f"unknown way {way!r}")
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    result.write_text(json.dumps({
        "rc": rc, "steps": steps, "in_process_s": time.perf_counter() - t0, "io": _read_io(os.getpid()),
        "own": own, "maxrss_self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "maxrss_children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
    return rc


def _read_io(pid) -> dict:
    try:
        with open(f"/proc/{pid}/io") as f:
            return {k: int(v) for k, v in (line.split(":") for line in f if ":" in line)}
    except (OSError, ValueError):
        return {}


def _pss_kib(pid) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _tree(root: int) -> list[int]:
    """``root`` and all its live descendants (parents read from /proc/*/stat)."""
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


class TreeMonitor(threading.Thread):
    """Samples a process tree: peak summed PSS, peak process count, peak summed write counters."""

    IO_KEYS = ("write_bytes", "wchar", "cancelled_write_bytes")

    def __init__(self, root: int, interval: float):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak_pss_kib = 0
        self.peak_main_kib = 0  # the root's own PSS at the peak (the rest: its loader workers)
        self.peak_procs = 0
        self.io = dict.fromkeys(self.IO_KEYS, 0)
        self.samples = 0
        self._halt = threading.Event()

    def sample(self) -> None:
        pids = _tree(self.root)
        self.peak_procs = max(self.peak_procs, len(pids))
        pss = [_pss_kib(p) for p in pids]
        if sum(pss) > self.peak_pss_kib:
            self.peak_pss_kib, self.peak_main_kib = sum(pss), pss[0]  # pids[0] is the root
        ios = [_read_io(p) for p in pids]
        for k in self.IO_KEYS:
            self.io[k] = max(self.io[k], sum(io.get(k, 0) for io in ios))
        self.samples += 1

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _dir_bytes(path: Path) -> int:
    """Bytes of the files under ``path``, each inode once (hard-linked files are not counted twice)."""
    total, seen = 0, set()
    for root, _, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def steady_img_s(steps: list[float], n_train: int, batch: int, epochs: int, skip: int) -> float | None:
    """Images/s from optimizer-step timestamps, leaving out each epoch's first ``skip`` steps.

    Epochs are cut every ceil(n_train / batch) steps (drop_last off, no accumulation: all three ways);
    the interval before step i is charged to step i's images (the epoch's last batch is the remainder).
    If the count does not match, intervals over 5x the median (epoch boundaries) are left out instead.
    """
    spe = math.ceil(n_train / batch)
    last = n_train - (spe - 1) * batch
    if len(steps) == spe * epochs:
        sys.path.insert(0, str(HERE))
        from trainer_way import steady_rate  # the same rule as the Trainer way's own callback

        sizes = [batch] * (spe - 1) + [last]
        return steady_rate([list(zip(steps[e * spe:(e + 1) * spe], sizes, strict=False)) for e in range(epochs)], skip)
    gaps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    if not gaps:
        return None
    med = statistics.median(gaps)
    kept = [g for g in gaps[skip:] if g <= 5 * med] or gaps
    return batch * len(kept) / sum(kept)


def _state_ratio(way: str, out: Path) -> dict:
    """Checkpoint training state vs model weights, in bytes."""
    if way == "dftune":
        model, state = out / "last" / "model.safetensors", out / "last" / "training_state"
        if model.exists() and state.exists():
            m, s = model.stat().st_size, _dir_bytes(state)
            return {"model_bytes": m, "state_bytes": s, "state_x_model": s / m,
                    "state_files": {p.name: p.stat().st_size for p in sorted(state.iterdir()) if p.is_file()}}
    elif way == "trainer":
        ckpts = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        if ckpts and (ckpts[-1] / "model.safetensors").exists():
            c = ckpts[-1]
            m = (c / "model.safetensors").stat().st_size
            model_files = {"model.safetensors", "config.json", "preprocessor_config.json"}
            s = sum(p.stat().st_size for p in c.iterdir() if p.is_file() and p.name not in model_files)
            return {"model_bytes": m, "state_bytes": s, "state_x_model": s / m,
                    "state_files": {p.name: p.stat().st_size for p in sorted(c.iterdir())
                                    if p.is_file() and p.name not in model_files}}
    return {}


def _own_rate(way: str, out: Path, child: dict, stdout: str):
    """The way's own img/s figure, for cross-checking the hook's."""
    if way == "dftune":
        try:
            return json.loads((out / "history.json").read_text())[-1]["train"]["images_per_s"]
        except (OSError, ValueError, KeyError, IndexError):
            return None
    if way == "trainer":
        for line in reversed(stdout.splitlines()):
            if line.startswith('{"way": "trainer"'):
                return json.loads(line).get("steady_img_s")
        return None
    return child.get("own")


def run_peer(way: str, child_args: list[str], out: Path, logs: Path, run_id: str, setup: dict, args,
             env: dict) -> dict:
    """One way as its own subprocess, its tree sampled from here; the run's measurements."""
    result = logs / f"{run_id}.result.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "_child", way, str(result), *child_args]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    # output through a pipe (not a file): it must not count as the child's disk writes
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    mon = TreeMonitor(proc.pid, args.interval)
    mon.start()
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stdout.read(65536), b"")), daemon=True)
    reader.start()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    mon.stop()
    reader.join()
    load1 = os.getloadavg()[0]
    stdout = b"".join(chunks).decode(errors="replace")
    (logs / f"{run_id}.log").write_text(stdout)
    child = json.loads(result.read_text()) if result.exists() else {}
    rec = {"run": run_id, "way": way, "rc": rc, "wall_s": wall, "load_start": load0, "load_end": load1,
           "samples": mon.samples, "peak_procs": mon.peak_procs, "peak_pss_mib": mon.peak_pss_kib / 1024,
           "peak_pss_main_mib": mon.peak_main_kib / 1024,
           "steps": len(child.get("steps", []))}
    if rc != 0 or not child:
        tail = "\n".join(stdout.splitlines()[-25:])
        print(f"!! {run_id} {way} failed (rc {rc}); log {logs / (run_id + '.log')}:\n{tail}", file=sys.stderr)
        rec["failed"] = True
        return rec
    epochs = args.epochs
    steps = child["steps"]  # time.perf_counter is CLOCK_MONOTONIC: the child's stamps compare with t0 here
    spe = math.ceil(setup["n_train"] / args.batch)
    between = ([steps[e * spe] - steps[e * spe - 1] for e in range(1, epochs)]
               if len(steps) == spe * epochs else [])
    io = {k: max(mon.io.get(k, 0), child["io"].get(k, 0)) for k in TreeMonitor.IO_KEYS}
    rec.update({
        "steady_img_s": steady_img_s(steps, setup["n_train"], args.batch, epochs, args.skip_steps),
        "start_s": steps[0] - t0 if steps else None,  # spawn -> first optimizer step done (imports, setup)
        "between_s": sum(between) if between else None,  # epoch boundaries: validation, checkpoint, loader restart
        "tail_s": t0 + wall - steps[-1] if steps else None,  # last step -> exit (last validation/save, teardown)
        "own_img_s": _own_rate(way, out, child, stdout),
        "write_bytes": io["write_bytes"], "wchar": io["wchar"], "cancelled_write_bytes": io["cancelled_write_bytes"],
        "disk_mib_per_epoch": io["write_bytes"] / epochs / 2**20, "wchar_mib_per_epoch": io["wchar"] / epochs / 2**20,
        "out_mib": _dir_bytes(out) / 2**20,
        "maxrss_main_mib": child.get("maxrss_self_kib", 0) / 1024,
        "ckpt": _state_ratio(way, out),
    })
    return rec


def _cmds(way: str, data: Path, model: Path, out: Path, args) -> list[str]:
    common = {"epochs": args.epochs, "lr": args.lr, "seed": args.seed, "workers": args.workers,
              "threads": args.threads}
    if way == "dftune":
        a = ["train", "--data", str(data), "--model", str(model), "--out", str(out),
             "--batch-size", str(args.batch), "--precision", args.precision, "--patience", "0", "--no-progress"]
        a += [x for k, v in common.items() for x in (f"--{k}", str(v))]
        if not args.dftune_aug:
            a.append("--no-aug")
        if not args.dftune_tensorboard:
            a.append("--no-tensorboard")
        return a + shlex.split(args.dftune_args)
    if way == "trainer":
        a = ["--data", str(data), "--model", str(model), "--out", str(out), "--batch", str(args.batch),
             "--precision", args.precision, "--weight-decay", "0.01", "--schedule", "constant",
             "--skip-steps", str(args.skip_steps)]
        a += [x for k, v in common.items() for x in (f"--{k}", str(v))]
        if args.cpu:
            a.append("--cpu")
        return a + shlex.split(args.trainer_args)
    if way == "guide":
        import torch

        device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
        return [json.dumps({"data": str(data), "model_dir": str(model), "batch": args.batch, "workers": args.workers,
                            "epochs": args.epochs, "device": device, "lr": args.lr, "precision": args.precision,
                            "threads": args.threads, "seed": args.seed})]
    raise ValueError(way)


# metric -> (label, better): best-of-N takes min or max
METRICS = {"wall_s": ("wall s", min), "steady_img_s": ("steady img/s", max), "peak_pss_mib": ("peak PSS MiB", min),
           "disk_mib_per_epoch": ("disk MiB/epoch", min)}


def _fmt(v, w=9):
    if v is None:
        return f"{'n/a':>{w}}"
    if isinstance(v, float):
        return f"{v:>{w}.3g}" if abs(v) < 1000 else f"{v:>{w}.0f}"
    return f"{v!s:>{w}}"


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def summarize(runs: list[dict], ways) -> dict:
    out = {}
    for key, (_, better) in METRICS.items():
        row = {}
        for way in ways:
            vals = [r[key] for r in runs if r["way"] == way and not r.get("failed") and r.get(key) is not None]
            row[way] = {"best": better(vals) if vals else None, "median": statistics.median(vals) if vals else None,
                        "n": len(vals)}
        for stat in ("best", "median"):
            d = row.get("dftune", {}).get(stat)
            row[f"dftune/trainer_{stat}"] = _ratio(d, row.get("trainer", {}).get(stat))
            row[f"dftune/guide_{stat}"] = _ratio(d, row.get("guide", {}).get(stat))
        out[key] = row
    st = [r["ckpt"]["state_x_model"] for r in runs if r["way"] == "dftune" and r.get("ckpt")]
    out["dftune_state_x_model"] = statistics.median(st) if st else None
    st = [r["ckpt"]["state_x_model"] for r in runs if r["way"] == "trainer" and r.get("ckpt")]
    out["trainer_state_x_model"] = statistics.median(st) if st else None
    return out


def print_size(size: str, setup: dict, runs: list[dict], summary: dict, ways) -> None:
    print(f"\n== {size}: {setup['model']} | {setup['crops']} | epochs {setup['epochs']} batch {setup['batch']} "
          f"lr {setup['lr']} seed {setup['seed']} workers {setup['workers']} threads {setup['threads']} "
          f"precision {setup['precision']} | {setup['cpu_count']} cpus")
    cols = ["wall_s", "start_s", "between", "tail_s", "steady", "own", "PSS_MiB", "main", "procs", "disk/ep",
            "wchar/ep", "out_MiB", "state/mdl", "load0", "load1"]
    print(f"{'run':>14} {'way':>8} " + " ".join(f"{c:>9}" for c in cols))
    for r in runs:
        if r.get("failed"):
            print(f"{r['run']:>14} {r['way']:>8}   FAILED rc {r['rc']}")
            continue
        print(f"{r['run']:>14} {r['way']:>8} " + " ".join(_fmt(v) for v in (
            r["wall_s"], r["start_s"], r["between_s"], r["tail_s"], r["steady_img_s"], r["own_img_s"],
            r["peak_pss_mib"], r["peak_pss_main_mib"], r["peak_procs"], r["disk_mib_per_epoch"],
            r["wchar_mib_per_epoch"], r["out_mib"], r["ckpt"].get("state_x_model"), r["load_start"], r["load_end"])))
    n = max((v["n"] for row in summary.values() if isinstance(row, dict) for k, v in row.items()
             if isinstance(v, dict)), default=0)
    hdr = ["metric"] + [f"{w}" for w in ways]
    rat = [k for k in ("dftune/trainer", "dftune/guide") if all(w in ways for w in k.split("/"))]
    for stat in ("best", "median"):
        if stat == "best":
            print(f"-- best of {n} (" + ", ".join(f"{lab}: {b.__name__}" for lab, b in METRICS.values()) + ")")
        else:
            print(f"-- median of {n}")
        print(f"{hdr[0]:>16} " + " ".join(f"{h:>14}" for h in hdr[1:] + rat))
        for key, (label, _) in METRICS.items():
            row = summary[key]
            vals = [row[w][stat] for w in ways] + [row[f"{k}_{stat}"] for k in rat]
            print(f"{label:>16} " + " ".join(_fmt(v, 14) for v in vals))
    print("median last/training_state / last/model.safetensors (dftune, goal <= 2.3): "
          f"{_fmt(summary['dftune_state_x_model'], 0)}   trainer checkpoint-N extras / model.safetensors: "
          f"{_fmt(summary['trainer_state_x_model'], 0)}")


def peers(args) -> int:
    import torch

    from dftune.model.load import build_tiny_vit
    from dftune.synthetic import make_crops

    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    bad = [w for w in ways if w not in WAYS]
    if bad:
        raise SystemExit(f"--ways: unknown {bad}; choose from {','.join(WAYS)}")
    sizes = ["tiny", "vitb"] if args.size == "both" else [args.size]
    tmp = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench_peers_"))
    tmp.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("PYTHONWARNINGS", "ignore")
    if args.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.cpu else None
    report = {"cpu_count": os.cpu_count(), "gpu": gpu, "work_dir": str(tmp), "sizes": {}}
    print(f"work dir {tmp}; device {gpu or 'cpu'}; order per repeat: {', '.join(ways)}", flush=True)
    for size in sizes:
        crop = args.crop_size if size == "tiny" else args.vitb_crop_size
        data = tmp / f"crops{crop}_v{args.videos}_f{args.frames}"
        if not (data / "manifest.csv").exists():
            make_crops(data, n_videos=args.videos, frames=args.frames, size=crop)
        if size == "tiny":
            model = build_tiny_vit(tmp / "tiny", image_size=args.image_size, hidden_size=args.hidden)
            desc = f"tiny ViT {args.image_size}px hidden {args.hidden}"
        else:
            model = tmp / "vit_b16"
            if not (model / "config.json").exists():
                build_vit_b16(model)
            desc = "ViT-B/16 224px (random init)"
        n_train = sum(1 for line in open(data / "manifest.csv") if ",train," in line)
        setup = {"model": desc, "crops": f"{n_train} train x {crop}px", "n_train": n_train, "epochs": args.epochs,
                 "batch": args.batch, "lr": args.lr, "seed": args.seed, "workers": args.workers,
                 "threads": args.threads, "precision": args.precision, "cpu_count": os.cpu_count(),
                 "skip_steps": args.skip_steps, "dftune_aug": args.dftune_aug}
        logs = tmp / f"logs_{size}"
        logs.mkdir(exist_ok=True)
        runs = []
        for rep in range(1, args.repeats + 1):
            for way in ways:
                run_id = f"{size}{rep}_{way}"
                out = tmp / f"run_{run_id}"
                shutil.rmtree(out, ignore_errors=True)
                rec = run_peer(way, _cmds(way, data, model, out, args), out, logs, run_id, setup, args, env)
                runs.append(rec)
                print(f"  {run_id}: wall {rec['wall_s']:.1f} s, steady {_fmt(rec.get('steady_img_s'), 0)} img/s, "
                      f"PSS {rec['peak_pss_mib']:.0f} MiB, disk/epoch {_fmt(rec.get('disk_mib_per_epoch'), 0)} MiB, "
                      f"load {rec['load_start']:.2f}->{rec['load_end']:.2f}", flush=True)
                if not args.keep:
                    shutil.rmtree(out, ignore_errors=True)
        summary = summarize(runs, ways)
        print_size(size, setup, runs, summary, ways)
        report["sizes"][size] = {"setup": setup, "runs": runs, "summary": summary}
    if not args.keep and not args.work_dir:
        shutil.rmtree(tmp, ignore_errors=True)
    line = json.dumps(report)
    print(line)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n")
    return 1 if any(r.get("failed") for v in report["sizes"].values() for r in v["runs"]) else 0


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["_child"]:
        return _child(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=_Formatter)
    g = ap.add_argument_group("both modes")
    g.add_argument("--workers", type=int, default=2, help="data loader worker processes, every loop/way")
    g.add_argument("--threads", type=int, default=1, help="torch threads in each main process (peers: 0 = each "
                                                          "way's own default)")
    g.add_argument("--batch", type=int, default=16, help="images per step, every loop/way")
    g.add_argument("--epochs", type=int, default=2, help="epochs per training run")
    g.add_argument("--image-size", type=int, default=64, help="tiny ViT input size")
    g.add_argument("--hidden", type=int, default=64, help="tiny ViT width")
    g.add_argument("--crop-size", type=int, default=64, help="size of the prepared crops (tiny model)")
    g.add_argument("--videos", type=int, default=16,
                   help="train identities: videos x 5 (1 real + 4 fakes) x --frames train images; val and test "
                        "get half as many identities (at least 2)")
    g.add_argument("--frames", type=int, default=8, help="frames per video in the crops")
    g = ap.add_argument_group("throughput mode (default)")
    g.add_argument("--steps", type=int, default=60, help="steps for the step-only timing")
    g.add_argument("--no-gpu", action="store_true", help="skip the ViT-B/16 GPU timing")
    g = ap.add_argument_group("peers mode (--peers)")
    g.add_argument("--peers", action="store_true",
                   help="compare dftune train / trainer_way.py / guide loop as subprocesses (see above)")
    g.add_argument("--size", choices=["tiny", "vitb", "both"], default="tiny",
                   help="model: tiny ViT (--image-size/--hidden, --crop-size crops), ViT-B/16 (random init, "
                        "--vitb-crop-size crops) or both")
    g.add_argument("--repeats", type=int, default=3, help="interleaved rounds (each runs every way once)")
    g.add_argument("--ways", default=",".join(WAYS), help="comma-separated ways to run, in this order per round")
    g.add_argument("--lr", type=float, default=1e-5, help="learning rate, every way")
    g.add_argument("--seed", type=int, default=0, help="seed, every way")
    g.add_argument("--precision", choices=["auto", "no", "bf16", "fp16"], default="no",
                   help="every way (no = fp32; auto = dftune's rule: bf16/fp16 on a GPU, fp32 on CPU)")
    g.add_argument("--cpu", action="store_true", help="hide any GPU from the children (CUDA_VISIBLE_DEVICES='')")
    g.add_argument("--vitb-crop-size", type=int, default=224, help="size of the prepared crops for ViT-B/16")
    g.add_argument("--skip-steps", type=int, default=3,
                   help="optimizer steps at the start of each epoch left out of the steady img/s")
    g.add_argument("--interval", type=float, default=0.15, help="seconds between PSS / io samples of a run's tree")
    g.add_argument("--dftune-aug", action="store_true",
                   help="let dftune augment (its default; off here so that it does the others' work)")
    g.add_argument("--dftune-tensorboard", action="store_true",
                   help="let dftune write TensorBoard scalars (its default; off here, the Trainer has report_to=none)")
    g.add_argument("--dftune-args", default="",
                   help="extra arguments for `dftune train`, one shell-quoted string given with = "
                        "(--dftune-args='--tune lora')")
    g.add_argument("--trainer-args", default="",
                   help="extra arguments for trainer_way.py, one string given with = (--trainer-args='--load-best')")
    g.add_argument("--work-dir", default=None,
                   help="folder for crops, models, runs and logs, kept (not set: a new temp folder, removed at "
                        "the end unless --keep)")
    g.add_argument("--keep", action="store_true",
                   help="keep each run's output folder and the temp folder (not set: measured, then removed)")
    g.add_argument("--json-out", default=None, help="also write the final JSON line to this file")
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    if args.peers:
        return peers(args)
    import torch

    torch.set_num_threads(args.threads)
    from dftune.model.load import build_tiny_vit
    from dftune.synthetic import make_crops

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    data = tmp / "crops"
    make_crops(data, n_videos=args.videos, frames=args.frames, size=args.crop_size)
    tiny = build_tiny_vit(tmp / "tiny", image_size=args.image_size, hidden_size=args.hidden)
    n_train = sum(1 for line in open(data / "manifest.csv") if ",train," in line)

    res = {"cpu_count": os.cpu_count(), "threads": args.threads, "workers": args.workers, "batch": args.batch,
           "model": f"tiny ViT {args.image_size}px hidden {args.hidden}", "crops": f"{n_train} x {args.crop_size}px"}
    res["step_only"] = step_only(tiny, args.batch, args.steps)
    res["dftune_no_aug"] = dftune_loop(data, str(tiny), args.batch, args.workers, tmp / "run0", precision="no",
                                       epochs=args.epochs, aug=False)
    res["dftune_aug"] = dftune_loop(data, str(tiny), args.batch, args.workers, tmp / "run1", precision="no",
                                    epochs=args.epochs)
    res["guide"] = guide_loop(data, str(tiny), args.batch, args.workers, epochs=args.epochs)
    res["ratio_dftune_no_aug_step"] = res["dftune_no_aug"] / res["step_only"]
    res["ratio_dftune_aug_step"] = res["dftune_aug"] / res["step_only"]
    res["ratio_guide_step"] = res["guide"] / res["step_only"]
    res["speedup_vs_guide_same_work"] = res["dftune_no_aug"] / res["guide"]
    res["load_avg_1min"] = os.getloadavg()[0]

    if torch.cuda.is_available() and not args.no_gpu:
        b16 = build_vit_b16(tmp / "vit_b16")
        data224 = tmp / "crops224"
        make_crops(data224, n_videos=args.videos, frames=args.frames, size=224)
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
