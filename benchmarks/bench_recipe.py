"""Which recipe to recommend for a hidden test set: the guide's, ``--recipe generalise`` as shipped, or an EMA
whose time constant scales with the run (``--ema-horizon``)? (issue 23, item 6)

    python benchmarks/bench_recipe.py --seeds 3 --out bench_recipe.json --work /tmp/bench_recipe
    python benchmarks/bench_recipe.py --table-from bench_recipe.json [more.json ...]   # the tables, no training

The proxy of ``bench_generalise.py`` (domains A hidden, B = FF++ the user's, C held out; a tiny ViT baseline
trained on A, fine-tuned on B; imported, one copy) with ``bench_select.py``'s check set D (its own identities and
look; ``--check-methods``; its val+test used). Per seed, every fine-tune has the same data, batch 16 and
``--epochs`` (the same optimizer steps), best/ by B's val frame F1 unless it says D:

* ``guide``            full fine-tune at the guide's lr 1e-5 (``--recipe guide``)
* ``shipped``          ``--recipe generalise`` as shipped before this benchmark: lr 1e-5, ``--ema 0.999``,
                       ``--wise 0.75`` (RUN/wise, written by train itself)
* ``h{S}@{lr}``        full fine-tune at lr with ``--ema-horizon S`` (a time constant of S x the run's steps);
  ``h{S}@{lr}+w``      ... and WiSE-FT 0.75 with the baseline (``dftune merge``); lr is the guide's and ``--lr``
* ``full@{lr}``        full fine-tune at ``--lr`` without an average (what the EMA adds there)
* ``guide@D``, ``h{S}@{lr}@D``  best/ chosen on D: ``--select-on check --check D``
* ``h{S}@{lr}+auto``   WiSE-FT with the alpha chosen on D (``choose_alpha``, the code of ``train --wise auto``)
* ``gend``             GenD's recipe (``--recipe gend``: LayerNorm-only, normalised head, uniformity 0.5, alignment
                       0.1, --paired, AdamW 3e-4 cosine, no weight decay, its augmentations) from the baseline
* ``gend+w``           ... WiSE-FT 0.75 with its start under the normalised head (RUN/start, what --wise uses)
* ``gend-ua``          GenD's recipe without its two losses (``--uniformity 0 --alignment 0``): what they add
* ``norm``             the normalised head alone: the guide's recipe with ``--head normalised``

Each is scored (``dftune.scoring``, no TTA) on C's and A's test splits: C frame macro F1 at the threshold tuned
on B's val (what ``train`` stores) and at the threshold tuned on D (``metrics.best_threshold`` of D's frame
scores: what ``train --threshold-on check`` would store), C video AUC, and A frame/video AUC as a share of the
untouched baseline's. The paired table gives each row minus ``guide`` on the same seed and the seeds it beat the
guide on; ``goal`` says whether it beat the guide on C frame F1 and C video AUC on most seeds while keeping at
least 95 % of the baseline's A AUC (frame and video, mean over seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_generalise as G  # noqa: E402  (its domains, training and scoring: one copy of each)
import bench_select as S  # noqa: E402  (its check set D)

# (key, what it shows); C: held out, A: hidden
COLS = (("C_f1", "C F1 frame @B-val thr"), ("C_f1_D", "C F1 frame @D thr"), ("C_vf1", "C F1 video @B-val thr"),
        ("C_auc", "C AUC video"), ("C_fauc", "C AUC frame"), ("A_fkeep", "A AUC frame kept"),
        ("A_vkeep", "A AUC video kept"), ("B_f1", "B F1 frame"))


def rows(a) -> list[dict]:
    """Every row: key, kind (base | train | wise | auto) and its settings."""
    out = [{"key": "baseline", "kind": "base"},
           {"key": "guide", "kind": "train", "set": {"lr": a.guide_lr}},
           {"key": "shipped", "kind": "train", "set": {"lr": a.guide_lr, "ema": 0.999, "wise_alpha": 0.75},
            "model": "wise"},
           {"key": f"full@{a.lr:g}", "kind": "train", "set": {"lr": a.lr}}]
    for lr in (a.guide_lr, a.lr):
        for h in a.horizons:
            k = f"h{h:g}@{lr:g}"
            out.append({"key": k, "kind": "train", "set": {"lr": lr, "ema_horizon": h}})
            out.append({"key": f"{k}+w", "kind": "wise", "of": k, "alpha": 0.75})
    out.append({"key": "guide@D", "kind": "train", "set": {"lr": a.guide_lr, "select_on": "check"}, "check": True})
    cand = f"h{a.horizons[0]:g}@{a.lr:g}"
    out.append({"key": f"{cand}@D", "kind": "train", "set": {"lr": a.lr, "ema_horizon": a.horizons[0],
                                                              "select_on": "check"}, "check": True})
    out.append({"key": f"{cand}@D+w", "kind": "wise", "of": f"{cand}@D", "alpha": 0.75})
    for h in a.horizons:
        out.append({"key": f"h{h:g}@{a.lr:g}+auto", "kind": "auto", "of": f"h{h:g}@{a.lr:g}"})
    from dftune.training.config import RECIPES

    gend = {k: list(v) if isinstance(v, tuple) else v for k, v in RECIPES["gend"].items()}  # JSON-stable
    out.append({"key": "gend", "kind": "train", "set": gend})
    out.append({"key": "gend+w", "kind": "wise", "of": "gend", "alpha": 0.75, "start": True})
    out.append({"key": "gend-ua", "kind": "train", "set": {**gend, "uniformity": 0.0, "alignment": 0.0}})
    out.append({"key": "norm", "kind": "train", "set": {"lr": a.guide_lr, "head": "normalised"}})
    return out


def score(scorer, probs: dict, base: dict | None) -> dict:
    """The columns of one model from its prob_fake on every set (``scorer.probs``); ``base`` the baseline's
    columns (None: this is the baseline)."""
    from dftune import metrics
    from dftune.pooling import video_aggregate

    def thr(key, level):
        s, p = scorer.sets[key], probs[key]
        if level == "video":
            _, p, y = video_aggregate(s["videos"], p, s["y"])
            return metrics.best_threshold(y, p)[0]
        return metrics.best_threshold(s["y"], p)[0]

    out = {"thr_B": thr(("B", "val"), "frame"), "thr_D": thr(("D", "check"), "frame")}
    vthr = thr(("B", "val"), "video")
    for dom in ("A", "C", "B"):
        s, p = scorer.sets[(dom, "test")], probs[(dom, "test")]
        _, vp, vy = video_aggregate(s["videos"], p, s["y"])
        out[f"{dom}_f1"] = metrics.binary_metrics(s["y"], p, out["thr_B"])["macro_f1"]
        out[f"{dom}_f1_D"] = metrics.binary_metrics(s["y"], p, out["thr_D"])["macro_f1"]
        out[f"{dom}_vf1"] = metrics.binary_metrics(vy, vp, vthr)["macro_f1"]
        out[f"{dom}_fauc"] = metrics.roc_auc(s["y"], p)
        out[f"{dom}_auc"] = metrics.roc_auc(vy, vp)
    b = base or out
    out["A_fkeep"] = out["A_fauc"] / b["A_fauc"]
    out["A_vkeep"] = out["A_auc"] / b["A_auc"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    D = "(default: %(default)s)"
    ap.add_argument("--seeds", type=int, default=3, help=f"seeds to run {D}")
    ap.add_argument("--first-seed", type=int, default=0, help=f"the first seed (two processes: 0 and 3, say) {D}")
    ap.add_argument("--out", default="bench_recipe.json", help=f"JSON file for the per-seed numbers {D}")
    ap.add_argument("--work", default=None, help="keep data and models here (a re-run reuses finished runs)")
    ap.add_argument("--videos", type=int, default=20, help=f"train identities per domain A/B/C {D}")
    ap.add_argument("--check-videos", type=int, default=4, help=f"train identities of D (val+test used) {D}")
    ap.add_argument("--check-methods", default=",".join(S.CHECK[0]), help=f"D's fake methods {D}")
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--base-epochs", type=int, default=25)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--guide-lr", type=float, default=1e-5)
    ap.add_argument("--lr", type=float, default=3e-4, help=f"the rate that learns B in the budget {D}")
    ap.add_argument("--horizons", default="0.15,0.4",
                    help=f"--ema-horizon shares; the first is the one selected on D {D}")
    ap.add_argument("--only", default="all", help=f"comma-separated row keys to run (the baseline always) {D}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table-from", nargs="+", default=None, metavar="JSON",
                    help="print the tables of finished runs' --out files, their seeds pooled (no training)")
    a = ap.parse_args(argv)
    if a.table_from:
        print(report(pooled(json.loads(Path(f).read_text())["per_seed"] for f in a.table_from)))
        return 0
    a.horizons = [float(x) for x in a.horizons.split(",") if x.strip()]
    from dftune.stages import merge

    say, work, domains, dpath = S.setup(a, "bench_recipe_")
    scorer = G.Scorer(domains, work / "scoring.log")
    _add_check(scorer, dpath)
    plan = rows(a)
    if a.only != "all":
        want = {k.strip() for k in a.only.split(",")}
        need = want | {r["of"] for r in plan if r["key"] in want and "of" in r}
        plan = [r for r in plan if r["key"] in need or r["kind"] == "base"]
    common = S.COMMON | {"threads": a.threads}
    per_seed = []
    out = Path(a.out)
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        t_seed = time.perf_counter()
        sd = work / f"seed{seed}"
        base = S.baseline(domains, sd, seed, a, common)
        res = {"seed": seed, "baseline": score(scorer, scorer.probs(base), None)}
        extra = {}
        for r in plan:
            k = r["key"]
            if r["kind"] == "base":
                continue
            if r["kind"] == "train":
                st = {**common, "seed": seed, "epochs": a.epochs, **r["set"]}
                if r.get("check"):
                    st["checks"] = [str(dpath)]
                tr = G.run_train(domains["B"], str(base), sd / _safe(k), st)
                model = sd / _safe(k) / r.get("model", "best")
                extra[k] = {"best_epoch": tr["best_epoch"], "seconds": tr["seconds"]}
            elif r["kind"] == "wise":
                model = sd / f"{_safe(k)}"
                # the start: the baseline, or (a run under a new head) the baseline under it, RUN/start
                first = sd / _safe(r["of"]) / "start" if r.get("start") else base
                if not (model / "config.json").exists():
                    with G.logged(sd / "merge.log"):
                        merge.run([str(first), str(sd / _safe(r["of"]) / "best")], model, alpha=r["alpha"],
                                  force=True)
            else:  # auto: the alpha of the grid that scores best on D (frame AUC, merge's default)
                with G.logged(sd / "alpha.log"):
                    al, _ = merge.choose_alpha([str(base), str(sd / _safe(r["of"]) / "best")], [str(dpath)],
                                               merge.ALPHA_GRID)
                model = sd / f"{_safe(r['of'])}+wise{al:g}"
                if not (model / "config.json").exists():
                    with G.logged(sd / "merge.log"):
                        merge.run([str(base), str(sd / _safe(r["of"]) / "best")], model, alpha=al, force=True)
                extra[k] = {"alpha": al}
            res[k] = score(scorer, scorer.probs(model), res["baseline"])
            say(f"seed {seed} {k}: C F1 {res[k]['C_f1']:.3f} (@D {res[k]['C_f1_D']:.3f}) C AUC {res[k]['C_auc']:.3f}"
                f" A AUC kept {res[k]['A_fkeep']:.3f}/{res[k]['A_vkeep']:.3f} B F1 {res[k]['B_f1']:.3f}"
                + (f" {extra[k]}" if k in extra else ""))
        res["_extra"] = extra
        per_seed.append(res)
        out.write_text(json.dumps({"args": vars(a), "per_seed": per_seed}, indent=1, default=str))
        say(f"seed {seed} done in {time.perf_counter() - t_seed:.0f} s")
    print(report(per_seed))
    return 0


def _safe(key: str) -> str:
    return key.replace("@", "_at_").replace("+", "_")


def _add_check(scorer, dpath: Path) -> None:
    """D's val+test crops as one more scored set, ``("D", "check")``."""
    import numpy as np

    from dftune import prepared
    from dftune.portable import load_image

    rws = prepared.read_manifest(dpath, ["val", "test"])
    scorer.sets[("D", "check")] = {"imgs": [load_image(p) for p in prepared.image_paths(dpath, rws)],
                                   "y": np.array([r.label for r in rws]), "videos": [r.video for r in rws]}


def pooled(files) -> list[dict]:
    """The per-seed results of several ``--out`` files as one list, a seed's rows from every file together (one
    file may hold seeds 0-2, another 3-5, another more rows of seeds 0-5 run with ``--only``)."""
    by_seed: dict[int, dict] = {}
    for per_seed in files:
        for s in per_seed:
            into = by_seed.setdefault(s["seed"], {"seed": s["seed"], "_extra": {}})
            into.update({k: v for k, v in s.items() if k not in ("seed", "_extra")})
            into["_extra"].update(s.get("_extra", {}))
    return [by_seed[k] for k in sorted(by_seed)]


def report(per_seed: list[dict]) -> str:
    keys = list(dict.fromkeys(k for s in per_seed for k in s if k not in ("seed", "_extra")))
    n = len(per_seed)
    head = "| row | " + " | ".join(c for _, c in COLS) + " |"
    sep = "|---|" + "---|" * len(COLS)
    lines = [f"Mean ± sd over {n} seed(s) ({', '.join(str(s['seed']) for s in per_seed)}):", "", head, sep]
    for k in keys:
        cells = []
        for c, _ in COLS:
            xs = [s[k][c] for s in per_seed if k in s]
            cells.append(f"{statistics.mean(xs):.3f} ± {statistics.pstdev(xs):.3f}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "Minus the guide's recipe, paired by seed (seeds better / seeds); goal = beats the guide on C F1 "
              "frame (B-val threshold) and C AUC video on most seeds, A AUC kept >= 0.95 (mean); goal+mean = and "
              "both mean differences > 0:", "",
              head[:-1] + " | goal | goal+mean |", sep + "---|---|"]
    for k in keys:
        if k == "guide":
            continue
        m = sum(k in s and "guide" in s for s in per_seed)
        if not m:
            continue
        cells, wins, mean = [], {}, {}
        for c, _ in COLS:
            d = [s[k][c] - s["guide"][c] for s in per_seed if k in s and "guide" in s]
            wins[c], mean[c] = sum(x > 0 for x in d), statistics.mean(d)
            cells.append(f"{mean[c]:+.3f} ({wins[c]}/{len(d)})")
        keep = min(statistics.mean(s[k][c] for s in per_seed if k in s) for c in ("A_fkeep", "A_vkeep"))
        goal = wins["C_f1"] > m / 2 and wins["C_auc"] > m / 2 and keep >= 0.95
        both = goal and mean["C_f1"] > 0 and mean["C_auc"] > 0
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {'yes' if goal else 'no'} | {'yes' if both else 'no'} |")
    lines += ["", "The threshold tuned on D instead of B's val, each row against itself (C F1 frame @D minus @B-val "
              "thr, seeds better / seeds): " + "; ".join(
                  f"{k} {statistics.mean(d):+.3f} ({sum(x > 0 for x in d)}/{len(d)})" for k in keys
                  for d in [[s[k]["C_f1_D"] - s[k]["C_f1"] for s in per_seed if k in s]])]
    ex = {}
    for s in per_seed:
        for k, v in s.get("_extra", {}).items():
            for f in ("alpha", "best_epoch"):
                if f in v:
                    ex.setdefault(f"{k} {f}", []).append(v[f])
    lines += ["", "per seed: " + "; ".join(f"{k} {v}" for k, v in ex.items())]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
