"""``dftune demo``: the whole chain, on data it makes itself, in a few minutes on a CPU."""

from __future__ import annotations

import os

from dftune.commands import add_parser, add_progress, add_workers, group

DESCRIPTION = """\
Build a small FaceForensics++-shaped dataset (H.264 videos of faces from photos that ship
in installed packages; fakes in the four method folders, each a different manipulation of
the face; official-format split files), then run prepare -> train -> evaluate -> predict ->
export on it with a small ViT built from a config, and print one table: crops per split,
the training curve, val/test macro F1 and AUC of the untrained and the trained model
(frame and video level, per method), the prediction CSV and the exported folder with its
parity check. About 85 s on a quiet 2-core CPU; nothing is downloaded; the same --seed gives the same numbers.
`dftune demo --keep` keeps the temporary folder (printed at the end) to look at.
"""


def register(sub) -> None:
    from dftune.stages.demo import DemoConfig

    d = DemoConfig()
    p = add_parser(sub, "demo", "the whole chain on a small self-made FF++-shaped dataset, in minutes on a CPU",
                   DESCRIPTION, examples=("dftune demo                      # temporary folder, removed at the end",
                                          "dftune demo --out demo/          # in demo/ (kept); a re-run reuses the "
                                          "videos and crops"))
    p.add_argument("--out", default=None, metavar="DIR", help="folder for everything (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the model init and training")
    p.add_argument("--ids", dest="n_ids", type=int, default=d.n_ids,
                   help="identities (in pairs; 60/20/20 train/val/test over pairs)")
    p.add_argument("--frames", type=int, default=d.frames, help="frames prepare samples per video")
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    p.add_argument("--sbi", type=float, default=0.0, metavar="P",
                   help="train with self-blended pseudo-fakes: each real train crop becomes one with probability P")
    add_workers(p, f"all cores, {os.cpu_count() or 1} here", "prepare's worker processes")
    p.add_argument("--onnx", action="store_true", help="also export and check ONNX")
    add_progress(p)
    group(p, {"the demo's data and training": ["--ids", "--frames", "--epochs", "--sbi", "--seed"],
              "folder and machine": ["--out", "--keep", "--workers", "--onnx"]})
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from dftune.stages import demo
    from dftune.stages.demo import DemoConfig, DemoError

    cfg = DemoConfig(out=Path(args.out) if args.out else None, keep=args.keep, seed=args.seed, n_ids=args.n_ids,
                     frames=args.frames, epochs=args.epochs, sbi=args.sbi, onnx=args.onnx,
                     workers=(os.cpu_count() or 1) if args.workers == "auto" else args.workers, progress=args.progress)
    try:
        r = demo.run(cfg)
    except DemoError as e:
        import sys

        print(f"dftune demo: {e}", file=sys.stderr)
        return 1
    te = r["eval"]["test"]
    return 0 if (te["trained"]["frame"]["macro_f1"] or 0) > (te["untrained"]["frame"]["macro_f1"] or 0) else 3
