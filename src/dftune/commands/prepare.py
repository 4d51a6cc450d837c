"""``dftune prepare``: FF++ (or real/fake folders) to face crops + manifest."""

from __future__ import annotations

import argparse
import sys

from dftune.commands import add_parser, defaults

DESCRIPTION = """\
Index FaceForensics++ (or a folder of real/ and fake/ videos and images), sample frames,
detect the largest face, crop it with the guide's geometry (side = max(w, h) x margin,
clipped to the frame), resize bicubic and save JPEG q95, with FF++'s official
identity-disjoint splits. Writes OUT/{train,val,test}/{real,fake}/*.jpg,
OUT/manifest.csv and OUT/summary.json. Re-running the same command resumes.

examples:
  dftune prepare /data/FaceForensics++ --out data/ffpp-c23
  dftune prepare /data/FaceForensics++ --out data/ffpp-c23 --detector retinaface --workers 16
  dftune prepare /data/FaceForensics++ --out data/ffpp --shard 1/4   # ... then 2/4, 3/4, 4/4
  dftune prepare /data/FaceForensics++ --out data/ffpp --merge       # manifest from all shards
  dftune prepare my_data/ --source folders --split random --out data/mine
  dftune prepare /data/Celeb-DF-v2 --source celebdf --out data/celebdf   # official test list, 1 = real
  dftune prepare /data/WildDeepfake --source frames --no-detect --out data/wdf   # face frames used whole
"""


def _shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
        if not 1 <= k <= n:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N, such as 1/4; got {text!r}") from None
    return k, n


def _ratios(text: str) -> tuple[float, float, float]:
    try:
        parts = [float(x) for x in text.split(",")]
        if len(parts) != 3 or min(parts) < 0 or sum(parts) <= 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three non-negative numbers train,val,test such as "
                                         f"0.72,0.14,0.14; got {text!r}") from None
    return parts[0], parts[1], parts[2]


def register(sub) -> None:
    from dftune.portable import DETECTORS as REGISTRY
    from dftune.sources import SOURCES
    from dftune.sources.ffpp import COMPRESSIONS, OPTIONAL_METHODS
    from dftune.stages.prepare import PrepareConfig

    d = defaults(PrepareConfig)
    p = add_parser(sub, "prepare", "videos/images -> face crops + manifest (FF++ official splits)", DESCRIPTION)
    p.add_argument("root", nargs="+", help="FF++ root (holding original_sequences/ and manipulated_sequences/), "
                                           "or the root of the layout --source names (a list file for --source "
                                           "list; a dataset JSON for --source deepfakebench); with --merge-into: "
                                           "the prepared folders to mix")
    p.add_argument("--out", default=None, help="output folder for crops, manifest.csv and summary.json "
                                                "(required unless --merge-into)")
    p.add_argument("--merge-into", default=None, metavar="MIX",
                   help="process nothing: write MIX, one manifest over the prepared folders given as ROOT (links, no "
                        "copies; each row's dataset column names its folder; a train row sharing an identity with "
                        "another folder's val/test rows is dropped), for train/tune/synth/evaluate (default: not set)")
    p.add_argument("--source", choices=SOURCES, default=d["source"],
                   help="input layout: ffpp, folders (real/ and fake/), celebdf (Celeb-DF v1/v2), dfdc (DFDC "
                        "training parts + test set), dfdcp (DFDC preview), frames (per-video folders of face frames, "
                        "WildDeepfake), list (path,label[,split][,method][,video] CSV), deepfakebench (a "
                        "DeepfakeBench/DF40 dataset JSON over its face frames; implies --no-detect); each keeps its "
                        "official test set")
    p.add_argument("--split", choices=("official", "random"), default=d["split"],
                   help="official: FF++'s identity-disjoint pairs; random: identity-grouped random split")
    p.add_argument("--splits", default=None, metavar="DIR",
                   help="folder with train.json/val.json/test.json in FF++'s format "
                        "(default: the official ones shipped with dftune)")
    p.add_argument("--seed", type=int, default=d["seed"], help="seed of --split random")
    p.add_argument("--ratios", type=_ratios, default=d["ratios"], metavar="T,V,T",
                   help="train,val,test fractions of identity groups for --split random (FF++'s official shares)")
    p.add_argument("--compression", choices=COMPRESSIONS, default=d["compression"],
                   help="FF++ compression folder to read")
    p.add_argument("--methods", nargs="+", default=list(d["methods"]), metavar="METHOD",
                   help=f"manipulation methods to read (also: {', '.join(OPTIONAL_METHODS)})")
    p.add_argument("--actors", action="store_true",
                   help="also read original_sequences/actors (DeepFakeDetection reals)")
    p.add_argument("--frames", type=int, default=d["frames"],
                   help="frames per video, evenly spaced: linspace(0, n-1, frames)")
    p.add_argument("--every", type=int, default=d["every"], metavar="K",
                   help="take every K-th frame instead of --frames evenly spaced (0 = off)")
    p.add_argument("--size", type=int, default=d["size"], help="crop side in pixels after bicubic resize")
    p.add_argument("--margin", type=float, default=d["margin"], help="crop side = max(face w, h) x margin")
    p.add_argument("--detector", choices=sorted(REGISTRY), default=d["detector"],
                   help="face detector: dlib = HOG exactly as the guide/baseline (width 640, upsample 1); "
                        "retinaface = RetinaFace-mobilenet on onnxruntime, 5 landmarks (prepare ran at 10.5-10.9x the "
                        "guide's frames/s on 2 cores with --detect-width auto; docs/benchmarks.md)")
    p.add_argument("--detect-width", type=_detect_width, default=d["detect_width"], metavar="auto|PIXELS",
                   help="width the detector sees each frame at: auto = dlib at 640 (the guide's); retinaface at 320 "
                        "first, again at 640 when it finds no face or only faces under 32 px there (a tenth of the "
                        "width); a number = one pass at that width (640 = retinaface as before this option, which "
                        "is what a retinaface folder prepared before it needs to resume)")
    p.add_argument("--detect-every", type=int, default=d["detect_every"], metavar="K",
                   help="run the detector on every K-th sampled frame of a video (and its last), the followed "
                        "face's box in the frames between interpolated; recorded in the crop settings, so predict "
                        "does the same (1 = every frame)")
    p.add_argument("--landmarks", action="store_true",
                   help="record facial landmarks in the manifest (retinaface: 5 points; dlib: 68 points, "
                        "needs face-recognition-models) for self-blended training images")
    p.add_argument("--quality", type=int, default=d["quality"], help="JPEG quality of the crops")
    p.add_argument("--no-detect", action="store_true",
                   help="no face detection: each frame is used whole (its centred square, resized to --size); "
                        "for pre-extracted face frames such as --source frames")
    p.add_argument("--class-map", default=None, metavar="FILE",
                   help="--source deepfakebench: YAML/JSON of label -> 0 (real) / 1 (fake), or a DeepfakeBench "
                        "config with label_dict, on top of DeepfakeBench's own label_dict (default: not set)")
    p.add_argument("--frames-root", default=None, metavar="DIR",
                   help="--source deepfakebench: the folder the JSON's frame paths start from (default: the "
                        "JSON's folder, then the one above it)")
    p.add_argument("--workers", type=int, default=d["workers"], help="worker processes (default: all cores)")
    p.add_argument("--decode-threads", type=int, default=d["decode_threads"],
                   help="FFmpeg decoding threads per worker (0: 1 when --workers > 1, else automatic)")
    p.add_argument("--shard", type=_shard, default=None, metavar="K/N",
                   help="process only share K of N (stable by video name); merge with --merge when all are done")
    p.add_argument("--merge", action="store_true",
                   help="process nothing: rebuild manifest.csv and summary.json from all work in --out (after shards)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _detect_width(text: str):
    if text == "auto":
        return text
    try:
        w = int(text)
    except ValueError:
        w = 0
    if w < 16:
        raise argparse.ArgumentTypeError(f"expected auto or a width in pixels (16 or more), got {text!r}")
    return w


def run(args) -> int:
    from dftune.stages import prepare
    from dftune.stages.prepare import PrepareConfig

    if args.merge_into:
        return _mix(args)
    if len(args.root) != 1:
        raise ValueError(f"one ROOT to prepare, got {len(args.root)}: {' '.join(args.root)} (several prepared "
                         f"folders go together with --merge-into MIX)")
    if not args.out:
        raise ValueError("--out is required: the folder for crops, manifest.csv and summary.json")
    cfg = PrepareConfig(
        root=args.root[0], out=args.out, source=args.source, splits=args.splits, split=args.split, seed=args.seed,
        ratios=tuple(args.ratios), compression=args.compression, methods=tuple(args.methods), actors=args.actors,
        frames=args.frames, every=args.every, size=args.size, margin=args.margin, detector=args.detector,
        detect_width=args.detect_width, detect_every=args.detect_every,
        landmarks=args.landmarks, quality=args.quality, workers=args.workers, decode_threads=args.decode_threads,
        no_detect=args.no_detect, class_map=args.class_map, frames_root=args.frames_root,
        shard=args.shard, merge_only=args.merge, progress=not args.no_progress,
    )
    try:
        summary = prepare.run(cfg)
    except KeyboardInterrupt:
        print("\ninterrupted: finished videos are kept in", cfg.out, "- run the same command to continue",
              file=sys.stderr)
        return 130
    print_summary(summary)
    if summary["crops"]["total"] == 0 and not args.shard:
        print(f"dftune prepare: error: no face crop was produced; see {cfg.out}/summary.json", file=sys.stderr)
        return 1
    return 0


def _mix(args) -> int:
    from dftune.mix import write_mix

    s = write_mix(args.root, args.merge_into)
    print_table(s, f"mix: {s['out']}")
    for w in s["warnings"]:
        print(f"warning: {w['error']}", file=sys.stderr)
    return 0


def print_table(s: dict, title: str) -> None:
    from rich.table import Table

    from dftune.progress import console

    t = Table(title=title, show_lines=False)
    for col in ("split", "real crops", "fake crops", "videos", "by method"):
        t.add_column(col, justify="right" if col != "by method" and col != "split" else "left")
    for split in ("train", "val", "test"):
        c = s["crops"]["by_split"].get(split)
        if not c:
            continue
        methods = ", ".join(f"{m} {n}" for m, n in sorted(c["methods"].items()))
        t.add_row(split, str(c["real"]), str(c["fake"]), str(c["videos"]), methods)
    console(stderr=False).print(t)


def print_summary(s: dict) -> None:
    from dftune.progress import console

    con = console(stderr=False)
    v = s["videos"]
    print_table(s, f"prepare: {s['out']}")
    run = s["this_run"]
    con.print(
        f"videos: {v['done']} done, {v['failed']} failed, {v['pending']} pending, {v['excluded']} excluded, "
        f"{v['with_no_face']} with no face | frames: {s['frames']['sampled']} sampled, "
        f"{s['frames']['no_face']} without a face | this run: {run['todo']} processed, "
        f"{run['skipped_complete']} already complete, {run['frames_per_s']} frames/s"
    )
    for line in s.get("one_class_splits", []):
        con.print(f"[yellow]warning[/yellow] {line}", highlight=False)
    for f in s["failures"][:5]:
        con.print(f"[red]failed[/red] {f['error']}", highlight=False)
    if len(s["failures"]) > 5:
        con.print(f"... {len(s['failures']) - 5} more failures in summary.json")
    if v["pending"]:
        con.print(f"{v['pending']} videos still to do (other shards, or an interrupted run): "
                      f"run again, or `--merge` once all shards are done")
    con.print(f"manifest: {s['out']}/manifest.csv   summary: {s['out']}/summary.json")
