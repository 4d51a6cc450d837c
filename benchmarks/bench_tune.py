"""Does `dftune tune` pay? Default settings vs the best of an N-trial study, on the test split.

    python benchmarks/bench_tune.py --trials 8 --seeds 3 [--epochs 6] [--pruner median] [--out DIR]

On the demo crops (`dftune.synthetic.make_crops`, no download) and the demo's small ViT
(built from a config, random init), for each seed:

* default x1     - one `train` run with TrainConfig's defaults (the guide's: AdamW 1e-5, batch 16, ...)
* default best/N - N default runs with seeds hash(seed, i), the one with the best val metric: the same
                   compute as the study without pruning (N runs x E epochs), spent on seeds, not settings
* tuned          - `dftune.stages.tune.run` with N trials of E epochs (default space, the pruner given);
                   its best trial's model

Every picked model is scored on the TEST split by `dftune.stages.evaluate.run` (no TTA): frame
macro F1 at the threshold tuned on val, and frame ROC AUC. Compute is counted in train epochs run;
"saved by pruning" is the epochs the pruned trials did not run. Prints one table (mean ± sd over
seeds) and writes OUT/bench_tune.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

FIXED = {"num_workers": 0, "tensorboard": False, "batch_size": 16}


def make_data(root: Path, videos: int, frames: int, size: int) -> tuple[Path, str]:
    from dftune.model.load import build_tiny_vit
    from dftune.synthetic import make_crops

    data = root / "crops"
    if not (data / "manifest.csv").exists():
        make_crops(data, n_videos=videos, frames=frames, size=size)
    model = root / "vit"
    if not (model / "config.json").exists():  # the demo's small ViT (dftune demo's defaults)
        build_tiny_vit(model, image_size=32, patch_size=4, hidden_size=64, layers=3, heads=4)
    return data, str(model)


def test_score(model_dir: str | Path, data: Path) -> dict:
    from dftune.stages import evaluate
    from dftune.stages.evaluate import EvalSettings

    r = evaluate.run([str(model_dir)], data, None, EvalSettings(tta=(), device="cpu", plots=False, progress=False))
    e = next(iter(r.models.values()))["frame"]
    at = e.get("at_val_threshold") or e["at_0.5"]
    return {"test_f1": at["macro_f1"], "test_auc": at["auc"]}


def run_default(data: Path, model: str, out: Path, seed: int, epochs: int, metric) -> dict:
    from dftune.stages import train
    from dftune.training.config import build

    t0 = time.perf_counter()
    s = train.run(data, model, out, build(None, {**FIXED, "epochs": epochs, "seed": seed}), progress=False)
    hist = {h["epoch"]: h for h in json.loads((out / "history.json").read_text())}
    val = metric.of(hist[s.best_epoch]) if s.best_epoch else None
    return {"dir": str(out / "best"), "val": val, "epochs": s.epochs_run, "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8, help="trials per study (and default runs for best/N)")
    ap.add_argument("--seeds", type=int, default=3, help="study seeds; results are mean ± sd over them")
    ap.add_argument("--epochs", type=int, default=6, help="epochs per run")
    ap.add_argument("--pruner", default="median", choices=("median", "hyperband", "none"))
    ap.add_argument("--metric", default="frame_f1", help="val metric the study and best/N pick by")
    ap.add_argument("--videos", type=int, default=8, help="demo identities in train (val/test get half)")
    ap.add_argument("--frames", type=int, default=8, help="crops per demo video")
    ap.add_argument("--size", type=int, default=64, help="crop size in pixels")
    ap.add_argument("--patience", type=int, default=None,
                    help="early-stopping patience for every run in all three arms (default: TrainConfig's, 3; "
                         "0 = off, as `dftune demo` trains: val F1 wanders before a model from scratch takes off)")
    ap.add_argument("--out", default=None, help="keep everything here (default: a temporary folder)")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    import torch

    from dftune.progress import quiet_third_party
    from dftune.search.metric import parse_metric
    from dftune.search.space import trial_seed
    from dftune.stages import tune

    quiet_third_party()
    torch.set_num_threads(1)
    if args.patience is not None:
        FIXED["patience"] = args.patience
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_tune_"))
    root.mkdir(parents=True, exist_ok=True)
    data, model = make_data(root, args.videos, args.frames, args.size)
    metric = parse_metric(args.metric)
    better = max if metric.direction == "maximize" else min
    results = []
    t_all = time.perf_counter()
    for seed in range(args.seeds):
        r: dict = {"seed": seed}
        # default x1
        d1 = run_default(data, model, root / f"s{seed}" / "default", seed, args.epochs, metric)
        r["default"] = {**test_score(d1["dir"], data), "val": d1["val"], "epochs": d1["epochs"],
                        "seconds": d1["seconds"]}
        # default best of N seeds
        runs = [run_default(data, model, root / f"s{seed}" / f"default_{i}", trial_seed(seed, i), args.epochs,
                            metric) for i in range(args.trials)]
        ok = [x for x in runs if x["val"] is not None]
        pick = better(ok, key=lambda x: x["val"])
        r["default_best_of_n"] = {**test_score(pick["dir"], data), "val": pick["val"],
                                  "epochs": sum(x["epochs"] for x in runs), "seconds": sum(x["seconds"] for x in runs)}
        # the study
        t0 = time.perf_counter()
        sm = tune.run(data, model, root / f"s{seed}" / "study",
                      tune.TuneSettings(trials=args.trials, epochs=args.epochs, metric=args.metric, pruner=args.pruner,
                                        seed=seed, sets={k: str(v) for k, v in FIXED.items()}),
                      say=lambda m, seed=seed: print(f"  [seed {seed}] {m}", flush=True))
        secs = time.perf_counter() - t0
        if sm.best is None:
            r["tuned"] = {"test_f1": None, "test_auc": None, "val": None, "epochs": sm.epochs_run, "seconds": secs}
        else:
            r["tuned"] = {**test_score(Path(sm.best["run_dir"]) / "best", data), "val": sm.best["value"],
                          "epochs": sm.epochs_run, "seconds": secs, "params": sm.best["params"]}
        r["tuned"]["epochs_saved_by_pruning"] = sm.epochs_saved_by_pruning
        r["tuned"]["states"] = sm.by_state
        results.append(r)
        arms = ("default", "default_best_of_n", "tuned")
        print(f"seed {seed}: " + " | ".join(f"{k} test F1 {_f(r[k]['test_f1'])} AUC {_f(r[k]['test_auc'])} "
                                            f"({r[k]['epochs']} ep)" for k in arms), flush=True)

    def agg(key, field):
        xs = [r[key][field] for r in results if r[key].get(field) is not None]
        if not xs:
            return "n/a"
        return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"

    print(f"\ndemo crops ({args.videos} train identities, {args.frames} frames, {args.size} px), demo ViT, "
          f"{args.epochs} epochs a run, {args.trials} trials, pruner {args.pruner}, {args.seeds} seeds, "
          f"fixed {FIXED}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} cores")
    print(f"{'':18} {'test F1@val thr':>16} {'test AUC':>16} {'val ' + args.metric:>16} {'epochs':>8} {'seconds':>8}")
    for key, name in (("default", "default x1"), ("default_best_of_n", f"default best/{args.trials}"),
                      ("tuned", f"tuned ({args.trials} trials)")):
        ep = statistics.mean(r[key]["epochs"] for r in results)
        sec = statistics.mean(r[key]["seconds"] for r in results)
        print(f"{name:18} {agg(key, 'test_f1'):>16} {agg(key, 'test_auc'):>16} {agg(key, 'val'):>16} "
              f"{ep:>8.1f} {sec:>8.1f}")
    saved = [r["tuned"]["epochs_saved_by_pruning"] for r in results]
    planned = args.trials * args.epochs
    print(f"pruning saved {statistics.mean(saved):.1f} of {planned} planned epochs a study "
          f"({100 * statistics.mean(saved) / planned:.0f}%); trial states per seed: "
          f"{[r['tuned']['states'] for r in results]}")
    print(f"total {time.perf_counter() - t_all:.0f} s; everything in {root}")
    (root / "bench_tune.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1, default=str))
    return 0


def _f(v):
    return "n/a" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    sys.exit(main())
