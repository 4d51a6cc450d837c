"""``dftune merge``: average model weights (WiSE-FT, uniform and greedy soups) into one model folder."""

from __future__ import annotations

import argparse
import sys

from dftune.commands import (
    add_parser,
    add_progress,
    alpha_or_auto,
    check_path,
    group,
    positional_renamed,
    say_alpha_curve,
)
from dftune.stages.merge import ALPHA_GRID


def register(sub) -> None:
    p = add_parser(
        sub, "merge", "average model weights: WiSE-FT (baseline + fine-tuned), uniform or greedy soups",
        description="Average the weights of models of one architecture into a plain Hugging Face folder: --alpha A\n"
        "with two models is (1 - A) x the first + A x the second (WiSE-FT); more models, a uniform (or --weight)\n"
        "soup; --greedy --data D adds models best-first while D's val does not get worse.\n"
        "Labels are matched by name (label orders may differ); other architectures or label sets are refused.\n"
        "The merged folder gets threshold 0.5 (tune one with `dftune evaluate --write-threshold`), or with\n"
        "--threshold-on check --check PATH the threshold that is best on the check sets.",
        examples=("dftune merge --model ./baseline --model runs/ft/best --alpha 0.5 --out runs/wise",
                  "dftune merge --model runs/s0/best --model runs/s1/best --model runs/s2/best --out runs/soup"),
    )
    p.add_argument("--model", dest="model", action="append", default=[], metavar="MODEL_DIR",
                   help="model folder (HF format); repeat: two or more, in order (the first is A of --alpha)")
    p.add_argument("models", nargs="*", metavar="MODEL_DIR", help=argparse.SUPPRESS)  # the old spelling
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the merged model")
    p.add_argument("--alpha", type=alpha_or_auto, default=None,
                   help="with two models: the weight of the second, (1 - alpha) * A + alpha * B; 0 gives A, 1 gives B; "
                        "auto: the alpha of --alpha-grid that scores best on the --check sets (default: a uniform "
                        "soup)")
    p.add_argument("--check", action="append", type=check_path, default=[], metavar="PATH",
                   help="check set for --alpha auto and --threshold-on check, from outside the fine-tuned model's "
                        "data: a prepared folder (its val+test, or PATH:SPLIT) or a labels CSV (filename,label; paths "
                        "relative to the CSV) whose images and videos are framed as predict frames them, once, into "
                        "checks/ beside --out; repeat to average several (default: none)")
    p.add_argument("--threshold-on", default="val", choices=["val", "check"],
                   help="the threshold the merged folder stores: val (0.5 until `dftune evaluate --write-threshold` "
                        "tunes it on val) or check (the macro-F1-optimal threshold on every --check set's rows "
                        "pooled, at --level, no TTA)")
    p.add_argument("--alpha-grid", type=_grid, default=",".join(f"{a:g}" for a in ALPHA_GRID), metavar="A,B,...",
                   help="the alphas --alpha auto tries")
    p.add_argument("--weight", action="append", type=float, metavar="W",
                   help="soup weight per model, in order (default: equal)")
    p.add_argument("--greedy", action="store_true",
                   help="greedy soup: add models best-first while the soup's val metric does not drop (needs --data)")
    p.add_argument("--data", default=None, metavar="PREPARED_DIR", help="prepared data whose val split judges --greedy")
    p.add_argument("--metric", default="auc", choices=["auc", "f1", "loss"],
                   help="the metric of --greedy (on val) and of --alpha auto (on the check sets)")
    p.add_argument("--level", default="frame", choices=["frame", "video"], help="the level of that metric")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="precision of the saved weights; bfloat16/float16 halve the folder but round away part of a "
                        "fine-tune's update (the command says how much survives, measured from the first model)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_progress(p)
    group(p, {"models and output": ["--model", "--out", "--force", "--dtype"],
              "how they are averaged": ["--alpha", "--alpha-grid", "--weight", "--greedy", "--data"],
              "choosing on data": ["--check", "--metric", "--level", "--threshold-on"]})
    p.set_defaults(func=run)


def _grid(text) -> tuple:
    if not isinstance(text, str):
        return tuple(text)
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected alphas separated by commas, got {text!r}") from None


def run(args) -> int:
    from dftune.portable import describe_threshold
    from dftune.progress import console
    from dftune.stages import merge

    positional_renamed(args.models, "--model", "MODEL_DIR")
    args.models = args.model + args.models
    if args.greedy:
        if not args.data:
            raise ValueError("--greedy needs --data PREPARED_DIR (its val split judges each addition)")
        r = merge.greedy_soup(args.models, args.out, args.data, args.metric, args.level, force=args.force)
        con = console()
        for i, st in enumerate(r["steps"]):  # best-first; a model is kept if the soup with it does not get worse
            verdict = "start" if i == 0 else "added" if st["added"] else "left out"
            con.print(f"{verdict:<8} {st['model']}: own {r['metric']} {st['own']:.4f}; soup with it {st['soup']:.4f}")
        con.print(f"greedy soup of {len(r['models'])} models -> {r['out']} ({r['metric']} {r['soup_val']:.4f})")
        return 0
    if args.check and args.alpha != "auto" and args.threshold_on != "check":
        print(f"warning: --check {' --check '.join(args.check)}: not used; it serves --alpha auto (choose the alpha "
              f"on it) and --threshold-on check (tune the stored threshold on it). To measure the merged model "
              f"on it: dftune evaluate --model {args.out} --check {args.check[0]}", file=sys.stderr)
    r = merge.run(args.models, args.out, args.alpha, args.weight, args.force, dtype=args.dtype,
                  checks=args.check, grid=_grid(args.alpha_grid), metric=args.metric, level=args.level,
                  say=console().print, threshold_on=args.threshold_on, progress=args.progress)
    if "alpha_auto" in r:
        say_alpha_curve(console().print, r["alpha_auto"], r["out"])
    console().print(f"{r['kind']} of {len(r['models'])} models (weights {', '.join(f'{w:g}' for w in r['weights'])}) "
                    f"-> {r['out']}; threshold {describe_threshold(r['threshold']['value'], r['threshold']['source'])}")
    if "cast" in r:
        c = r["cast"]
        console().print(f"saved in {c['dtype']}: {100 * c['moved_kept']:.1f}% of the weights that differ from "
                        f"{r['models'][0]} still differ after the cast; the rounding is "
                        f"{100 * c['rounding_of_update']:.1f}% of the update's size (--dtype float32 keeps it all)")
    return 0
