"""``dftune prepare``: FF++ (or real/fake folders) to face crops + manifest."""

from __future__ import annotations

import argparse
import os
import sys

from dftune.commands import add_parser, add_progress, add_workers, defaults, group, one_of, renamed

DESCRIPTION = """\
Index FaceForensics++ (or a folder of real/ and fake/ videos and images), sample frames,
detect the largest face, crop it with the guide's geometry (side = max(w, h) x margin,
clipped to the frame), resize bicubic and save JPEG q95, with FF++'s official
identity-disjoint splits. Writes OUT/{train,val,test}/{real,fake}/*.jpg,
OUT/manifest.csv and OUT/summary.json. Re-running the same command resumes.

more:
  dftune prepare /data/FaceForensics++ --out data/ffpp --shard 1/4   # ... then 2/4, 3/4, 4/4
  dftune prepare /data/FaceForensics++ --out data/ffpp --merge       # manifest from all shards
  dftune prepare my_data/ --source folders --split-by random --out data/mine
  dftune prepare /data/Celeb-DF-v2 --source celebdf --out data/celebdf   # official test list, 1 = real
  dftune prepare /data/WildDeepfake --source frames --detector none --out data/wdf   # face frames used whole
  dftune prepare org/fakes --source hf --streaming --per-generator 2000 --limit 20000 --out data/fakes-sample
  dftune prepare /data/FaceForensics++ --out data/ffpp-hold --holdout-generators NeuralTextures
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
    p = add_parser(sub, "prepare", "videos/images -> face crops + manifest (FF++ official splits)", DESCRIPTION,
                   examples=("dftune prepare /data/FaceForensics++ --out data/ffpp-c23",
                             "dftune prepare /data/FaceForensics++ --out data/ffpp-c23 --detector retinaface "
                             "--workers 16"))
    p.add_argument("root", nargs="*", metavar="ROOT",
                   help="FF++ root (holding original_sequences/ and manipulated_sequences/), or the root of the "
                        "layout --source names (a list file for --source list; a dataset JSON for --source "
                        "deepfakebench); with --merge-into: the prepared folders to mix; none with --resume OUT")
    p.add_argument("--out", default=None, help="output folder for crops, manifest.csv and summary.json "
                                                "(required unless --merge-into)")
    p.add_argument("--resume", default=None, metavar="OUT",
                   help="continue (or re-run) OUT with the root and settings its settings.json records: no ROOT "
                        "or other crop option needed; --workers, --shard, --merge and progress still apply "
                        "(default: not set; the same command again resumes too)")
    p.add_argument("--merge-into", default=None, metavar="MIX",
                   help="process nothing: write MIX, one manifest over the prepared folders given as ROOT (links, no "
                        "copies; each row's dataset column names its folder; a train row sharing an identity with "
                        "another folder's val/test rows is dropped), for train/tune/synth/evaluate (default: not set)")
    p.add_argument("--source", choices=SOURCES, default=d["source"],
                   help="input layout: ffpp, folders (real/ and fake/), celebdf (Celeb-DF v1/v2), dfdc (DFDC "
                        "training parts + test set), dfdcp (DFDC preview), frames (per-video folders of face frames, "
                        "WildDeepfake), list (path,label[,split][,method][,video] CSV), deepfakebench (a "
                        "DeepfakeBench/DF40 dataset JSON over its face frames; implies --detector none), hf (a Hugging "
                        "Face dataset: hub id, save_to_disk folder, parquet/arrow files or an imagefolder; see the hf "
                        "options below); each keeps its official test set")
    p.add_argument("--split-by", dest="split", choices=("official", "random", "generator"), default=d["split"],
                   help="official: FF++'s identity-disjoint pairs; random: identity-grouped random split; "
                        "generator: whole generators (fake methods) dealt to train/val/test with --seed and "
                        "--ratios, reals split as before, a fake whose identity lands in another split dropped")
    p.add_argument("--holdout-generators", type=_names, default=(), metavar="A,B",
                   help="generators (fake methods, as the manifest names them) kept out of training: all their fakes "
                        "go to test (a fake whose identity is in train/val is dropped); a name the data lacks is an "
                        "error listing those it has; evaluate then reports them apart (default: none)")
    p.add_argument("--split-files", dest="splits", default=None, metavar="DIR",
                   help="folder with train.json/val.json/test.json in FF++'s format "
                        "(default: the official ones shipped with dftune)")
    p.add_argument("--seed", type=int, default=d["seed"], help="seed of --split-by random and --split-by generator")
    p.add_argument("--ratios", type=_ratios, default=d["ratios"], metavar="T,V,T",
                   help="train,val,test fractions of identity groups for --split-by random (of generators for "
                        "--split-by generator; FF++'s official shares)")
    p.add_argument("--compression", choices=COMPRESSIONS, default=d["compression"],
                   help="FF++ compression folder to read")
    p.add_argument("--methods", nargs="+", default=list(d["methods"]), metavar="METHOD",
                   help=f"manipulation methods to read (also: {', '.join(OPTIONAL_METHODS)})")
    p.add_argument("--actors", action="store_true",
                   help="also read original_sequences/actors (DeepFakeDetection reals)")
    p.add_argument("--frames", type=int, default=None,
                   help=f"frames per video, evenly spaced: linspace(0, n-1, frames) (default: {d['frames']})")
    p.add_argument("--every", type=int, default=None, metavar="K",
                   help="take every K-th frame instead of --frames evenly spaced (not with --frames) (default: not "
                        "set, --frames)")
    p.add_argument("--size", type=int, default=d["size"], help="crop side in pixels after bicubic resize")
    p.add_argument("--margin", type=float, default=d["margin"], help="crop side = max(face w, h) x margin")
    p.add_argument("--detector", choices=[*sorted(REGISTRY), "none"], default=d["detector"],
                   help="face detector: none = no detection, each frame used whole (its centred square, resized to "
                        "--size; for pre-extracted face frames such as --source frames); "
                        "dlib = HOG exactly as the guide/baseline (width 640, upsample 1); "
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
    p.add_argument("--class-map", default=None, metavar="FILE",
                   help="--source deepfakebench / hf: YAML/JSON of label -> 0 (real) / 1 (fake), or a DeepfakeBench "
                        "config with label_dict, on top of DeepfakeBench's own label_dict (default: not set)")
    hf = p.add_argument_group("--source hf (a Hugging Face dataset; each column guessed when not named)")
    hf.add_argument("--hf-config", default=None, metavar="NAME", help="the dataset's configuration (default: its "
                                                                       "only or default one)")
    hf.add_argument("--revision", default=None, metavar="REV", help="hub revision: branch, tag or commit "
                                                                     "(default: main)")
    from dftune.sources import hf as hf_source

    def guesses(names) -> str:
        return ", ".join(names[:5])

    hf.add_argument("--image-column", default=None, metavar="COL",
                    help="images or videos: an Image/Video feature, or a column of file paths (default: the first "
                         f"Image/Video feature, else {guesses(hf_source.IMAGE_NAMES)} ...)")
    for flag, names, what in (
            ("--label-column", hf_source.LABEL_NAMES, "real/fake label"),
            ("--generator-column", hf_source.GENERATOR_NAMES, "the generator of each row, the manifest's method "
                                                              "(none: real/fake by label)"),
            ("--group-column", hf_source.GROUP_NAMES, "identity or source video: rows sharing it never cross splits "
                                                      "(none: each row its own)"),
            ("--split-column", hf_source.SPLIT_NAMES, "train/val/test per row (none: the dataset's own splits)")):
        hf.add_argument(flag, default=None, metavar="COL", help=f"{what} (default: {guesses(names)})")
    for flag, side, other in (("--fake-values", "fake", "real"), ("--real-values", "real", "fake")):
        hf.add_argument(flag, type=_names, default=(), metavar="A,B",
                        help=f"label values meaning {side} (a ClassLabel's names or the raw values); with only these "
                             f"given, every other value is {other} (default: 0/1 and real/fake words)")
    hf.add_argument("--streaming", action="store_true",
                    help="read the dataset as a stream: only the rows read are downloaded (with --limit / "
                         "--per-generator: a sample of a large set)")
    hf.add_argument("--limit", type=int, default=0, metavar="N",
                    help="at most N rows of each of the dataset's splits, in its order (default: 0, all)")
    hf.add_argument("--per-generator", type=int, default=0, metavar="N",
                    help="at most N rows of each generator in each split: a balanced sample (default: 0, all)")
    p.add_argument("--frames-root", default=None, metavar="DIR",
                   help="--source deepfakebench: the folder the JSON's frame paths start from (default: the "
                        "JSON's folder, then the one above it)")
    add_workers(p, f"all cores, {d['workers']} here")
    p.add_argument("--decode-threads", type=int, default=d["decode_threads"],
                   help="FFmpeg decoding threads per worker (0: 1 when --workers > 1, else automatic)")
    p.add_argument("--shard", type=_shard, default=None, metavar="K/N",
                   help="process only share K of N (stable by video name); merge with --merge when all are done")
    p.add_argument("--merge", action="store_true",
                   help="process nothing: rebuild manifest.csv and summary.json from all work in --out (after shards)")
    add_progress(p)
    renamed(p, "--split", "--split-by", dest="split", choices=("official", "random"))
    renamed(p, "--splits", "--split-files", dest="splits", metavar="DIR")
    renamed(p, "--no-detect", "--detector none", dest="detector", action="store_const", const="none")
    group(p, {"input": ["--source", "--compression", "--methods", "--actors", "--class-map", "--frames-root"],
              "splits": ["--split-by", "--split-files", "--seed", "--ratios"],
              "frames and faces": ["--frames", "--every", "--detector", "--detect-width", "--landmarks", "--margin",
                                   "--size", "--quality"],
              "output and work sharing": ["--out", "--merge-into", "--shard", "--merge", "--workers",
                                          "--decode-threads"]})
    p.set_defaults(func=run)


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


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
    from dftune.sources.hf import HfOptions
    from dftune.stages import prepare
    from dftune.stages.prepare import PrepareConfig

    if args.merge_into:
        return _mix(args)
    workers = {} if args.workers == "auto" else {"workers": args.workers}  # auto: PrepareConfig's default
    if args.resume:
        if args.root or (args.out and os.path.abspath(args.out) != os.path.abspath(args.resume)):
            raise ValueError(f"--resume {args.resume} takes the root and --out from its settings.json: give "
                             f"--resume alone, or ROOT and --out")
        return _run(prepare.PrepareConfig(**prepare.resumed(args.resume), **workers,
                                          decode_threads=args.decode_threads, shard=args.shard,
                                          merge_only=args.merge, progress=args.progress), args)
    if len(args.root) != 1:
        raise ValueError(f"one ROOT to prepare, got {len(args.root)}: {' '.join(args.root)} (several prepared "
                         f"folders go together with --merge-into MIX)")
    if not args.out:
        raise ValueError("--out is required: the folder for crops, manifest.csv and summary.json")
    one_of(args, "--frames", "--every")
    d = PrepareConfig
    cfg = PrepareConfig(
        root=args.root[0], out=args.out, source=args.source, splits=args.splits, split=args.split, seed=args.seed,
        ratios=tuple(args.ratios), compression=args.compression, methods=tuple(args.methods), actors=args.actors,
        frames=d.frames if args.frames is None else args.frames, every=args.every or 0, size=args.size,
        margin=args.margin, detector=d.detector if args.detector == "none" else args.detector,
        detect_width=args.detect_width, detect_every=args.detect_every,
        landmarks=args.landmarks, quality=args.quality, decode_threads=args.decode_threads,
        **workers, no_detect=args.detector == "none", class_map=args.class_map, frames_root=args.frames_root,
        shard=args.shard, merge_only=args.merge, progress=args.progress,
        holdout_generators=tuple(args.holdout_generators),
        hf=HfOptions(hf_config=args.hf_config, revision=args.revision, image_column=args.image_column,
                     label_column=args.label_column, fake_values=tuple(args.fake_values),
                     real_values=tuple(args.real_values), generator_column=args.generator_column,
                     group_column=args.group_column, split_column=args.split_column, streaming=args.streaming,
                     limit=args.limit, per_generator=args.per_generator),
    )
    return _run(cfg, args)


def _run(cfg, args) -> int:
    from dftune.stages import prepare

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
    err = console(stderr=True)  # warnings and failures: stderr
    ds = s.get("dataset")
    if ds:
        con.print(f"dataset {ds['name']}: licence {ds['license'] or 'not stated (read its card before training)'}; "
                  f"{ds['rows_kept']} rows kept ({', '.join(f'{g} {n}' for g, n in ds['generators'].items())})"
                  + (f", {ds['rows_skipped']} without an image" if ds["rows_skipped"] else ""), highlight=False)
    gens = s.get("generators")
    if gens:
        con.print("generators: " + "; ".join(f"{sp} {', '.join(gens[sp]) or '-'}" for sp in ("train", "val", "test"))
                  + (f" (held out: {', '.join(gens['held_out'])})" if gens["held_out"] else "")
                  + (f"; {gens['fakes_dropped']} fakes dropped (identity in another split)" if gens["fakes_dropped"]
                     else ""), highlight=False)
    for line in s.get("one_class_splits", []):
        err.print(f"[yellow]warning[/yellow] {line}", highlight=False)
    for f in s["failures"][:5]:
        err.print(f"[red]failed[/red] {f['error']}", highlight=False)
    if len(s["failures"]) > 5:
        con.print(f"... {len(s['failures']) - 5} more failures in summary.json")
    if v["pending"]:
        con.print(f"{v['pending']} videos still to do (other shards, or an interrupted run): "
                      f"run again, or `--merge` once all shards are done")
    con.print(f"manifest: {s['out']}/manifest.csv   summary: {s['out']}/summary.json")
