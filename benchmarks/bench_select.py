"""What should a choice be made on? B's own val, or a small check set D from outside the fine-tune's data.

    python benchmarks/bench_select.py --seeds 3 --out bench_select.json     # ~3-6 min a seed on 2 CPU cores

The proxy of ``bench_generalise.py`` (same domains, data, baseline and fine-tunes, imported from it): a
baseline trained on A (the hidden set), fine-tuned on B (FF++, the user's data), measured on held-out C and on
A; plus a fourth domain D, the check set: its own identities, methods (NeuralTextures-free: FaceSwap +
FaceEdit, kin to both A and B) and look, few videos (``--check-videos``), standing for the labelled sample of
other generators a user can gather. Per seed:

* ``guide``      full fine-tune at the guide's lr 1e-5 (best/ by B val F1)
* ``full``       full fine-tune at ``--lr`` (the rate that learns B)
* ``wise@val``   WiSE-FT of baseline + full, alpha picked on B's val (``merge --alpha auto`` would refuse this)
* ``wise@D``     alpha picked on the check set D (``dftune merge --alpha auto --check D``: the same code)
* ``wise0.75``   the fixed alpha of ``--recipe generalise``
* ``oracle``     alpha picked on C itself (the best any pick could do)

and for each: C and A macro F1 (at B val's tuned threshold, as a user would) and AUC, frame and video level.
Prints mean ± sd over seeds and each row minus ``guide`` paired by seed, with the count of seeds it was better.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_generalise as G  # noqa: E402  (its domains, training and scoring: one copy of each)

CHECK = (("FaceSwap", "FaceEdit"), "warm-jpeg", 300)  # D: methods, look, first identity
ROWS = ("baseline", "guide", "full", "wise@val", "wise@D", "wise0.75", "oracle")
METRICS = (("C", "frame_f1"), ("C", "video_f1"), ("C", "frame_auc"), ("C", "video_auc"), ("A", "frame_auc"),
           ("A", "video_auc"), ("B", "frame_f1"))


COMMON = {"num_workers": 0, "tensorboard": False, "patience": 0, "batch_size": 16}  # every fine-tune's settings


def setup(a, prefix: str):
    """What every proxy benchmark of check sets starts with: quiet libraries, ``a.threads`` torch threads, a
    timed ``say``, the work folder (``a.work`` or a temporary one), the domains A/B/C and the check set D
    (``a.check_methods``, ``a.check_videos`` identities): ``(say, work, domains, D's folder)``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.ERROR)
    import torch

    from dftune.progress import quiet_third_party
    from dftune.synthetic import make_crops

    quiet_third_party()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        el = time.perf_counter() - t0
        print(f"[{int(el // 60):02d}:{int(el % 60):02d}] {msg}", flush=True)

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    domains = G.make_domains(work, a.videos, a.frames, a.size, say)
    methods = tuple(m for m in a.check_methods.split(",") if m)
    dpath = work / f"check_v{a.check_videos}_f{a.frames}_s{a.size}_{'-'.join(methods)}"
    if not (dpath / "manifest.csv").exists():
        make_crops(dpath, n_videos=a.check_videos, frames=a.frames, size=a.size, methods=methods, look=CHECK[1],
                   first_id=CHECK[2])
    return say, work, domains, dpath


def baseline(domains: dict, sd: Path, seed: int, a, common: dict) -> Path:
    """The seed's baseline (a tiny ViT trained on A, ``a.base_epochs``): ``sd/baseline/best``, reused if done."""
    from dftune.model.load import build_tiny_vit

    init = sd / "init"
    if not (init / "config.json").exists():
        with G.logged(sd / "init.log"):
            build_tiny_vit(init, image_size=a.size, patch_size=max(1, a.size // 8), hidden_size=64, layers=3,
                           heads=4, seed=seed)
    G.run_train(domains["A"], str(init), sd / "baseline",
                {**common, "seed": seed, "epochs": a.base_epochs, "lr": 1e-3, "schedule": "cosine",
                 "warmup_ratio": 0.1, "aug": False})
    return sd / "baseline" / "best"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="bench_select.json")
    ap.add_argument("--work", default=None, help="keep data and models here (a re-run reuses finished runs)")
    ap.add_argument("--videos", type=int, default=20, help="train identities per domain A/B/C")
    ap.add_argument("--check-videos", type=int, default=4, help="train identities of D (its val+test is used)")
    ap.add_argument("--check-methods", default=",".join(CHECK[0]),
                    help="D's fake methods (FaceSwap is kin to A, FaceEdit to B, LipSync to C)")
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--base-epochs", type=int, default=25)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    from dftune.stages import merge

    say, work, domains, dpath = setup(a, "bench_select_")
    scorer = G.Scorer(domains, work / "scoring.log")
    common = COMMON | {"threads": a.threads}
    per_seed = []
    for seed in range(a.seeds):
        sd = work / f"seed{seed}"
        base = baseline(domains, sd, seed, a, common)
        for key, lr in (("guide", 1e-5), ("full", a.lr)):
            G.run_train(domains["B"], str(base), sd / key, {**common, "seed": seed, "epochs": a.epochs, "lr": lr})
        # the alpha curve on D (and on B's val: merge records it as "val" through the fine-tune's dftune.json)
        with G.logged(sd / "alpha.log"):
            _, curve = merge.choose_alpha([str(base), str(sd / "full" / "best")], [str(dpath)], merge.ALPHA_GRID)
        pts = curve["points"]
        by_val = max(pts, key=lambda p: (p.get("val") if p.get("val") is not None else -1, -p["alpha"]))["alpha"]
        by_d = curve["chosen"]
        models = {"baseline": base, "guide": sd / "guide" / "best", "full": sd / "full" / "best"}
        alphas = {"wise@val": by_val, "wise@D": by_d, "wise0.75": 0.75}
        def wise(al: float, sd: Path = sd, base: Path = base) -> Path:
            dest = sd / f"wise{al:g}"
            if not (dest / "config.json").exists():
                with G.logged(sd / "merge.log"):
                    merge.run([str(base), str(sd / "full" / "best")], dest, alpha=al, force=True)
            return dest

        # the oracle: the alpha of the grid that is best on C (video AUC)
        c_auc = {al: scorer.metrics(scorer.probs(wise(al)))["C"]["video_auc"] for al in merge.ALPHA_GRID}
        alphas["oracle"] = max(c_auc, key=lambda al: (c_auc[al], -al))
        for k, al in alphas.items():
            models[k] = wise(al)
        res = {k: scorer.metrics(scorer.probs(m)) for k, m in models.items()}
        res["_alphas"] = alphas
        per_seed.append(res)
        say(f"seed {seed}: alpha by B val {by_val:g}, by D {by_d:g}, oracle (C) {alphas['oracle']:g}; C video AUC "
            + ", ".join(f"{k} {res[k]['C']['video_auc']:.3f}" for k in ROWS))
    table = _table(per_seed)
    text = _markdown(table, per_seed)
    print(text)
    Path(a.out).write_text(json.dumps({"args": vars(a), "per_seed": per_seed, "table": table}, indent=1, default=str))
    return 0


def _table(per_seed: list[dict]) -> dict:
    out = {}
    for k in ROWS:
        out[k] = {}
        for dom, m in METRICS:
            xs = [r[k][dom][m] for r in per_seed]
            d = [r[k][dom][m] - r["guide"][dom][m] for r in per_seed]
            out[k][f"{dom} {m}"] = {"mean": statistics.mean(xs), "sd": statistics.pstdev(xs),
                                    "vs_guide": statistics.mean(d), "better": sum(x > 0 for x in d)}
    return out


def _markdown(table: dict, per_seed: list[dict]) -> str:
    cols = [f"{d} {m}" for d, m in METRICS]
    lines = ["| row | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for k in ROWS:
        lines.append(f"| {k} | " + " | ".join(f"{table[k][c]['mean']:.3f} ± {table[k][c]['sd']:.3f}" for c in cols)
                     + " |")
    lines += ["", "minus the guide's recipe, paired by seed (seeds better / seeds):", "",
              "| row | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    n = len(per_seed)
    for k in ROWS:
        lines.append(f"| {k} | " + " | ".join(f"{table[k][c]['vs_guide']:+.3f} ({table[k][c]['better']}/{n})"
                                              for c in cols) + " |")
    al = {k: [r["_alphas"][k] for r in per_seed] for k in per_seed[0]["_alphas"]}
    lines += ["", "alphas chosen per seed: " + "; ".join(f"{k} {v}" for k, v in al.items())]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
