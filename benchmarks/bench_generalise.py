"""Which fine-tuning levers keep a detector's other domains while it learns FF++? (issue 10)

    python benchmarks/bench_generalise.py --out bench_generalise.json   # 5 seeds, ~20 min on 2 CPU cores

A user fine-tunes a public detector (which already knows the hidden competition data) on FF++; a naive full
fine-tune can raise FF++ val F1 and lower the hidden set's score. This is that situation in miniature, on data
dftune makes itself (``dftune.synthetic.make_crops``: face crops + manifest, no download):

* domain A  the hidden set:    Deepfakes + FaceSwap (identity swaps), look ``warm-jpeg`` (warm cast, JPEG 60)
* domain B  FF++, the user's:  Face2Face + FaceEdit (the target's own face warped / colour-edited), no look
* domain C  held out:          FaceShifter (a low-resolution swap, kin to A) + LipSync (the mouth re-rendered,
                               kin to B's Face2Face), look ``cool-soft`` (cool cast, blur, noise, JPEG 75)

Each domain has identities of its own (``first_id``); ``--videos`` train identities, half as many in val and
test, 1 real : 2 fakes. NeuralTextures is left out: its fine pattern does not survive make_crops' small frames
(a model trained from scratch on Face2Face + NeuralTextures scores it at chance).

Per seed, a tiny ViT (``build_tiny_vit``: ``--size`` px, patch size/8, 3 blocks of width 64, random init) is
trained on A (``--base-epochs``, ``--base-lr``, cosine, no augmentation): the *baseline*, standing for the public
detector (A test AUC 1.0; B and C partly). Then each recipe fine-tunes that baseline on B's train split with the
same data, batch 16, ``--epochs`` (the same optimizer steps), dftune's default augmentations and checkpoint
rule (``best/`` by B's val frame F1, the user's only tuning data; early stopping off):

* full, lr 1e-5          ``--tune full --lr 1e-5``: the guide's recipe (``--guide-lr``); B barely moves
* full, lr 1e-4 / 3e-4   ``--tune full`` at ``--mid-lr`` / ``--lr``: 3e-4 is the rate at which B is learnt in
                         this budget (B val F1 ~0.85-0.95), so the levers below are applied at it
* --paired, --ema E, LP-FT (--head-epochs N, out of the same epochs), --lr-decay D: full at ``--lr`` plus one lever
* --tune head / layernorm / bias / lora at ``--peft-lr`` (fewer weights move: a larger rate)
* WiSE-FT alpha X        ``dftune merge --model BASELINE --model FULL --alpha X`` (no training; ``--alphas``)
* ensemble               mean prob_fake of the baseline and full (``dftune evaluate --ensemble``'s rule)
* preset candidate       WiSE-FT (``--preset-alphas``) and the ensemble on top of full at ``--lr`` with ``--ema E``
                         (no extra training: the ``--ema`` run above)

and the untouched baseline is a row too. Every model is scored (``dftune.scoring``, no TTA) on the test splits
of B (what FF++ val shows), A (the hidden set) and C (held out): macro F1 at the threshold tuned on B's val
(frame threshold for frames, video threshold for videos: all a user can tune on) and ROC AUC, at frame level and
at video level (mean of a video's crops). Prints two markdown tables: mean ± sd over the seeds, and each recipe
minus "full at --lr" paired by seed (same baseline; the seed-to-seed spread is large, pairing removes the shared
part) with the number of seeds on which it was better. Writes the per-seed numbers (with each run's val F1 by
epoch) and both tables to ``--out`` (JSON); ``--table-from FILE`` prints a saved run's tables again. Progress
lines show where a long run is. ``--recipes KEY,...`` runs a subset (the baseline and what a merge/ensemble needs
always run);
``--work DIR`` keeps data, models and logs, and a re-run reuses the finished runs whose settings match.

Torch runs with ``--threads`` threads (default 1: on a shared 2-core machine, two threads spin against other
work and ran several times slower).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# domain: (methods, look, first identity)
DOMAINS = {
    "A": (("Deepfakes", "FaceSwap"), "warm-jpeg", 0),
    "B": (("Face2Face", "FaceEdit"), None, 100),
    "C": (("FaceShifter", "LipSync"), "cool-soft", 200),
}
ORDER = ("B", "A", "C")  # table column order: what FF++ val shows first


def recipes(a) -> list[dict]:
    """Every row: key, label, kind (base | train | wise | ensemble) and what it needs."""
    full = {"tune": "full", "lr": a.lr}
    peft = {"lr": a.peft_lr}
    rows = [
        {"key": "baseline", "label": "baseline (trained on A, untouched)", "kind": "base"},
        {"key": "guide", "label": f"full, lr {a.guide_lr:g} (the guide's)", "kind": "train",
         "set": {"tune": "full", "lr": a.guide_lr}},
        {"key": "full_mid", "label": f"full, lr {a.mid_lr:g}", "kind": "train",
         "set": {"tune": "full", "lr": a.mid_lr}},
        {"key": "full", "label": f"full, lr {a.lr:g}", "kind": "train", "set": full},
        {"key": "paired", "label": f"full, lr {a.lr:g}, --paired", "kind": "train", "set": {**full, "paired": True}},
        {"key": "ema", "label": f"full, lr {a.lr:g}, --ema {a.ema:g}", "kind": "train", "set": {**full, "ema": a.ema}},
        {"key": "lpft", "label": f"full, lr {a.lr:g}, LP-FT --head-epochs {a.head_epochs}", "kind": "train",
         "set": {**full, "head_epochs": a.head_epochs}},
        {"key": "lrdecay", "label": f"full, lr {a.lr:g}, --lr-decay {a.lr_decay:g}", "kind": "train",
         "set": {**full, "lr_decay": a.lr_decay}},
    ]
    for mode in ("head", "layernorm", "bias", "lora"):
        rows.append({"key": mode, "label": f"--tune {mode}, lr {a.peft_lr:g}", "kind": "train",
                     "set": {**peft, "tune": mode}})
    for al in a.alphas:
        rows.append({"key": f"wise{al:g}", "label": f"WiSE-FT baseline + full lr {a.lr:g}, alpha {al:g}",
                     "kind": "wise", "alpha": al, "of": "full"})
    rows.append({"key": "ensemble", "label": f"ensemble baseline + full lr {a.lr:g}", "kind": "ensemble",
                 "of": "full"})
    # the preset candidate: the training lever that helped without costing B (--ema), with WiSE-FT / the
    # ensemble on top of it
    ema = f"full, lr {a.lr:g}, --ema {a.ema:g}"
    for al in a.preset_alphas:
        rows.append({"key": f"ema_wise{al:g}", "label": f"WiSE-FT baseline + ({ema}), alpha {al:g}",
                     "kind": "wise", "alpha": al, "of": "ema"})
    rows.append({"key": "ema_ensemble", "label": f"ensemble baseline + ({ema})", "kind": "ensemble", "of": "ema"})
    return rows


# ---------------------------------------------------------------- data, models, scoring


def make_domains(root: Path, videos: int, frames: int, size: int, say) -> dict[str, Path]:
    from dftune.synthetic import make_crops

    out = {}
    for name, (methods, look, first) in DOMAINS.items():
        d = root / f"data_v{videos}_f{frames}_s{size}" / name  # a kept --work folder reuses matching data
        if not (d / "manifest.csv").exists():
            make_crops(d, n_videos=videos, frames=frames, size=size, methods=methods, look=look, first_id=first)
        out[name] = d
        say(f"data {name}: {', '.join(methods)}, look {look or 'none'} -> {d}")
    return out


@contextlib.contextmanager
def logged(path: Path):
    """The trainer's epoch lines and warnings go to ``path``, not the terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield


def run_train(data: Path, model: str, out: Path, settings: dict) -> dict:
    from dftune.stages import train
    from dftune.training.config import build

    done = out / "summary.json"
    if (out / "best" / "config.json").exists() and done.exists():  # a kept --work folder: reuse a finished run
        r = json.loads(done.read_text())
        if r.get("settings") == {**settings, "model": model, "data": str(data)}:
            return r
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    with logged(out.parent / f"{out.name}.log"):
        s = train.run(data, model, out, build(None, {k: v for k, v in settings.items()}), progress=False)
    hist = json.loads((out / "history.json").read_text())
    r = {"settings": {**settings, "model": model, "data": str(data)},
         "best_epoch": s.best_epoch, "seconds": round(time.perf_counter() - t0, 1),
         "trainable_share": s.trainable_share,
         "val_f1_by_epoch": [h["val"]["frame"]["macro_f1"] for h in hist]}
    done.write_text(json.dumps(r))
    return r


class Scorer:
    """Loads the evaluation crops once; scores a model folder on each of them (prob_fake, no TTA)."""

    def __init__(self, domains: dict[str, Path], log: Path):
        import numpy as np

        self.log = log
        from dftune import prepared
        from dftune.portable import load_image

        self.sets = {}
        wanted = [("B", "val")] + [(d, "test") for d in ORDER]
        for dom, split in wanted:
            rows = prepared.read_manifest(domains[dom], [split])
            imgs = [load_image(p) for p in prepared.image_paths(domains[dom], rows)]
            self.sets[(dom, split)] = {"imgs": imgs, "y": np.array([r.label for r in rows]),
                                       "videos": [r.video for r in rows]}

    def probs(self, model_dir: str | Path) -> dict:
        import numpy as np

        from dftune import scoring
        from dftune.portable import prob_fake

        with logged(self.log):  # transformers' one-off notices
            m = scoring.load_model(model_dir, device="cpu")
        out = {}
        for key, s in self.sets.items():
            imgs = s["imgs"]
            out[key] = np.concatenate([prob_fake(m.run, m.pre, m.fake_index, imgs[i:i + 128], (), m.device)
                                       for i in range(0, len(imgs), 128)])
        return out

    def metrics(self, probs: dict) -> dict:
        """Frame and video macro F1 at B val's tuned thresholds, and AUC, on each domain's test split."""
        from dftune import metrics
        from dftune.pooling import video_aggregate

        bv = self.sets[("B", "val")]
        pv = probs[("B", "val")]
        thr_f, _ = metrics.best_threshold(bv["y"], pv)
        _, vp, vy = video_aggregate(bv["videos"], pv, bv["y"])
        thr_v, _ = metrics.best_threshold(vy, vp)
        out = {"threshold": {"frame": thr_f, "video": thr_v}}
        for dom in ORDER:
            s, p = self.sets[(dom, "test")], probs[(dom, "test")]
            _, vp, vy = video_aggregate(s["videos"], p, s["y"])
            out[dom] = {"frame_f1": metrics.binary_metrics(s["y"], p, thr_f)["macro_f1"],
                        "frame_auc": metrics.roc_auc(s["y"], p),
                        "video_f1": metrics.binary_metrics(vy, vp, thr_v)["macro_f1"],
                        "video_auc": metrics.roc_auc(vy, vp)}
        return out


# ---------------------------------------------------------------- the table

COLS = [(d, m) for d in ORDER for m in ("frame_f1", "video_f1", "frame_auc", "video_auc")]
COL_NAMES = {"frame_f1": "F1 frame", "video_f1": "F1 video", "frame_auc": "AUC frame", "video_auc": "AUC video"}


def aggregate(results: list[dict], rows: list[dict]) -> list[dict]:
    table = []
    for r in rows:
        per = [s[r["key"]] for s in results if r["key"] in s]
        if not per:
            continue
        cell = {}
        for d, m in COLS:
            xs = [p["metrics"][d][m] for p in per if p["metrics"][d][m] == p["metrics"][d][m]]  # drop NaN
            cell[f"{d}_{m}"] = ({"mean": statistics.mean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
                                 "n": len(xs)} if xs else None)
        table.append({"key": r["key"], "label": r["label"], **cell})
    return table


def markdown(table: list[dict], cell=lambda c: f"{c['mean']:.3f} ± {c['sd']:.3f}") -> str:
    """A markdown table: a row per recipe, a column per (domain, metric), each cell written by ``cell``."""
    head = ["recipe"] + [f"{d} {COL_NAMES[m]}" for d, m in COLS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in table:
        cells = [t["label"]] + ["n/a" if t[f"{d}_{m}"] is None else cell(t[f"{d}_{m}"]) for d, m in COLS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def deltas(results: list[dict], rows: list[dict], ref: str = "full") -> list[dict]:
    """Each recipe minus ``ref`` (full at --lr) on the same seed (same baseline, same data): the mean paired
    difference and on how many seeds the recipe was better. Seed-to-seed spread is large here; pairing by seed
    removes the part every recipe shares."""
    table = []
    for r in rows:
        pairs = [(s[r["key"]], s[ref]) for s in results if r["key"] in s and ref in s]
        if not pairs or r["key"] == ref:
            continue
        cell = {}
        for d, m in COLS:
            xs = [a["metrics"][d][m] - b["metrics"][d][m] for a, b in pairs]
            xs = [x for x in xs if x == x]
            cell[f"{d}_{m}"] = ({"mean": statistics.mean(xs), "better": sum(x > 0 for x in xs), "n": len(xs)}
                                if xs else None)
        table.append({"key": r["key"], "label": r["label"], **cell})
    return table


def markdown_deltas(table: list[dict]) -> str:
    return markdown(table, cell=lambda c: f"{c['mean']:+.3f} ({c['better']}/{c['n']})")


def report(header: str, table: list[dict], delta_table: list[dict], ref_label: str) -> str:
    if not delta_table:  # --recipes without "full": nothing to pair with
        return "\n".join([header, "", markdown(table)])
    return "\n".join([header, "", markdown(table), "",
                      f"Paired by seed: each recipe minus \"{ref_label}\" on the same seed, mean difference "
                      f"(seeds on which the recipe was better / seeds).", "", markdown_deltas(delta_table)])


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    D = "(default: %(default)s)"
    ap.add_argument("--seeds", type=int, default=5,
                    help=f"seeds (baseline init + training order); results are mean ± sd {D}")
    ap.add_argument("--out", default="bench_generalise.json",
                    help=f"JSON file for the per-seed numbers and the table {D}")
    ap.add_argument("--work", default=None,
                    help="folder for data, models and training logs, kept (a re-run reuses finished runs); "
                         "default: a temporary folder, removed at the end")
    ap.add_argument("--videos", type=int, default=20, help=f"train identities per domain (val/test get half) {D}")
    ap.add_argument("--frames", type=int, default=6, help=f"crops per video {D}")
    ap.add_argument("--size", type=int, default=64, help=f"crop size in pixels (the ViT's input; patch = size / 8) {D}")
    ap.add_argument("--base-epochs", type=int, default=25, help=f"epochs of the baseline on A {D}")
    ap.add_argument("--base-lr", type=float, default=1e-3,
                    help=f"baseline's learning rate (cosine, 10%% warm-up, no augmentation: a ViT from scratch) {D}")
    ap.add_argument("--epochs", type=int, default=15, help=f"fine-tuning epochs on B, every recipe {D}")
    ap.add_argument("--guide-lr", type=float, default=1e-5, help=f"the guide's full fine-tuning rate {D}")
    ap.add_argument("--mid-lr", type=float, default=1e-4, help=f"a middle full fine-tuning rate {D}")
    ap.add_argument("--lr", type=float, default=3e-4,
                    help=f"the full fine-tuning rate that learns B in the budget; the levers are applied at it {D}")
    ap.add_argument("--peft-lr", type=float, default=1e-3, help=f"rate of --tune head/layernorm/bias/lora {D}")
    ap.add_argument("--ema", type=float, default=0.98,
                    help=f"--ema decay: a ~50-step time constant, about 1/7 of this run's ~345 steps {D}")
    ap.add_argument("--head-epochs", type=int, default=1, help=f"LP-FT: head-only epochs, out of --epochs {D}")
    ap.add_argument("--lr-decay", type=float, default=0.5, help=f"--lr-decay (3 blocks: 0.5 .. 0.06 of lr) {D}")
    ap.add_argument("--alphas", default="0.25,0.5,0.75", help=f"WiSE-FT alphas (weight of the fine-tuned model) {D}")
    ap.add_argument("--preset-alphas", default="0.5,0.75",
                    help=f"WiSE-FT alphas on top of the preset candidate (full --ema) {D}")
    ap.add_argument("--recipes", default="all", help=f"comma-separated recipe keys to run, or all {D}")
    ap.add_argument("--threads", type=int, default=1, help=f"torch threads {D}")
    ap.add_argument("--table-from", default=None, metavar="JSON",
                    help="only print the tables of a finished run's --out file (no training)")
    args = ap.parse_args(argv)
    if args.table_from:
        saved = json.loads(Path(args.table_from).read_text())
        rows = [{"key": t["key"], "label": t["label"]} for t in saved["table"]]
        ref = next((t["label"] for t in saved["table"] if t["key"] == "full"), "full")
        print(report(saved["header"], aggregate(saved["per_seed"], rows), deltas(saved["per_seed"], rows), ref))
        return 0
    args.alphas = [float(x) for x in args.alphas.split(",") if x.strip()]
    args.preset_alphas = [float(x) for x in args.preset_alphas.split(",") if x.strip()]

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.ERROR)
    import torch

    from dftune.model.load import build_tiny_vit
    from dftune.progress import quiet_third_party
    from dftune.stages import merge

    quiet_third_party()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # one-off notices (e.g. the PIL image-processor fallback) off the terminal
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()

    def say(msg: str) -> None:
        el = time.perf_counter() - t_all
        print(f"[{int(el // 60):02d}:{int(el % 60):02d}] {msg}", flush=True)

    rows = recipes(args)
    keys = [r["key"] for r in rows]
    if args.recipes != "all":
        want = {k.strip() for k in args.recipes.split(",")}
        unknown = want - set(keys)
        if unknown:
            ap.error(f"--recipes: unknown {sorted(unknown)}; choose from {', '.join(keys)}")
        need = set(want) | {"baseline"} | {r["of"] for r in rows if r["key"] in want and "of" in r}
        rows = [r for r in rows if r["key"] in need]
    n_train = sum(r["kind"] == "train" for r in rows)

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_generalise_"))
    work.mkdir(parents=True, exist_ok=True)
    domains = make_domains(work, args.videos, args.frames, args.size, say)
    scorer = Scorer(domains, work / "scoring.log")
    say("eval crops: " + ", ".join(f"{d} {s} {len(v['y'])}" for (d, s), v in scorer.sets.items()))
    common = {"num_workers": 0, "tensorboard": False, "threads": args.threads, "patience": 0, "batch_size": 16}

    results: list[dict] = []
    seed_secs: list[float] = []
    for seed in range(args.seeds):
        t_seed = time.perf_counter()
        sd = work / f"seed{seed}"
        res: dict = {}
        probs: dict = {}
        init = sd / f"init{args.size}"
        if not (init / "config.json").exists():
            with logged(sd / "init.log"):
                build_tiny_vit(init, image_size=args.size, patch_size=max(1, args.size // 8), hidden_size=64, layers=3,
                               heads=4, seed=seed)
        base = run_train(domains["A"], str(init), sd / "baseline",
                         {**common, "seed": seed, "epochs": args.base_epochs, "lr": args.base_lr,
                          "schedule": "cosine", "warmup_ratio": 0.1, "aug": False})
        base_dir = sd / "baseline" / "best"
        probs["baseline"] = scorer.probs(base_dir)
        res["baseline"] = {"train": base, "metrics": scorer.metrics(probs["baseline"])}
        say(f"seed {seed}: baseline trained on A in {base['seconds']:.0f} s (best epoch {base['best_epoch']}); "
            + _brief(res["baseline"]["metrics"]))
        i = 0
        for r in rows:
            k = r["key"]
            if r["kind"] == "train":
                i += 1
                tr = run_train(domains["B"], str(base_dir), sd / k,
                               {**common, "seed": seed, "epochs": args.epochs, **r["set"]})
                probs[k] = scorer.probs(sd / k / "best")
                res[k] = {"train": tr, "metrics": scorer.metrics(probs[k])}
                say(f"seed {seed}: [{i}/{n_train}] {r['label']}: {tr['seconds']:.0f} s, best epoch "
                    f"{tr['best_epoch']}, {100 * tr['trainable_share']:.1f}% trainable; " + _brief(res[k]["metrics"]))
        for r in rows:
            k = r["key"]
            if r["kind"] == "wise":
                dest = sd / k
                with logged(sd / f"{k}.log"):
                    merge.run([str(base_dir), str(sd / r["of"] / "best")], dest, alpha=r["alpha"], force=True)
                probs[k] = scorer.probs(dest)
                res[k] = {"metrics": scorer.metrics(probs[k])}
                say(f"seed {seed}: {r['label']}: " + _brief(res[k]["metrics"]))
            elif r["kind"] == "ensemble":
                probs[k] = {key: (probs["baseline"][key] + probs[r["of"]][key]) / 2 for key in probs["baseline"]}
                res[k] = {"metrics": scorer.metrics(probs[k])}
                say(f"seed {seed}: {r['label']}: " + _brief(res[k]["metrics"]))
        results.append(res)
        seed_secs.append(time.perf_counter() - t_seed)
        left = args.seeds - seed - 1
        say(f"seed {seed} done in {seed_secs[-1]:.0f} s" +
            (f"; about {left * statistics.mean(seed_secs) / 60:.1f} min left" if left else ""))

    table = aggregate(results, rows)
    delta_table = deltas(results, rows)
    md = markdown(table)
    header = (f"Domains: A = hidden set ({', '.join(DOMAINS['A'][0])}, look {DOMAINS['A'][1]}), "
              f"B = FF++ stand-in ({', '.join(DOMAINS['B'][0])}), C = held out ({', '.join(DOMAINS['C'][0])}, "
              f"look {DOMAINS['C'][1]}). {args.videos} train identities a domain, {args.frames} crops a video, "
              f"{args.size} px; tiny ViT (3 blocks, width 64) trained {args.base_epochs} epochs on A, then "
              f"{args.epochs} epochs on B per recipe (batch 16, best B-val-F1 checkpoint). Test splits; F1 = macro F1 "
              f"at the threshold tuned on B's val; video = mean of a video's crops. Mean ± sd over {args.seeds} "
              f"seed(s). torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} cores.")
    ref_label = next((r["label"] for r in rows if r["key"] == "full"), "full")
    print()
    print(report(header, table, delta_table, ref_label))
    total = time.perf_counter() - t_all
    print(f"\ntotal {total / 60:.1f} min" + (f"; everything in {work}" if args.work else ""))
    out = Path(args.out)
    if out.parent != Path(""):
        out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "domains": {k: {"methods": v[0], "look": v[1], "first_id": v[2]}
                                                                for k, v in DOMAINS.items()},
                               "header": header, "table": table, "markdown": md, "deltas_vs_full": delta_table,
                               "markdown_deltas": markdown_deltas(delta_table),
                               "per_seed": results, "seconds": round(total, 1)}, indent=1, default=str))
    print(f"wrote {out}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _brief(m: dict) -> str:
    return " | ".join(f"{d} F1 {m[d]['frame_f1']:.3f} AUC {m[d]['frame_auc']:.3f}" for d in ORDER)


if __name__ == "__main__":
    sys.exit(main())
