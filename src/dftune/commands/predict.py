"""``dftune predict``: images and videos -> a submission-style CSV (one row per file)."""

from __future__ import annotations

from dftune.commands import add_parser, add_progress, add_workers, group, one_of, renamed

# predict's and evaluate --files' --no-face (one text: they score files alike)
NO_FACE_HELP = ("a file in which no face is found (framing whole:no-face): score its centred square, or call it "
                "real / fake (the contest baseline's rule) with that label's value, 0.0 / 1.0, as its prob_fake; "
                "never applies with --detector none")


def register(sub) -> None:
    from dftune.portable import (
        ALREADY_CROPPED,
        BACKENDS,
        CLIPPED,
        CLIPPED_RULES,
        FACE_RULES,
        FACES,
        NAME_STYLES,
        NO_FACE_RULES,
        CsvFormat,
    )
    from dftune.portable.workers import FORMATS
    from dftune.stages.predict import PredictSettings

    d0, f0 = PredictSettings(), CsvFormat()
    p = add_parser(
        sub, "predict", "label images and videos with one or several models (TTA, ensemble) into a CSV",
        description="Label images and videos with one or several models into a CSV, one row per file.\n"
        "Faces are found and cropped as in the model's training data (its dftune.json); a video's sampled\n"
        "frames are pooled; the label uses the model's threshold (set by `dftune evaluate --write-threshold`).",
        examples=("dftune predict test_images/ test_videos/ --model runs/ft/best --csv submission.csv",
                  "dftune predict test/ --model runs/ft/best --format filename,label --csv submission.csv"),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image/video files or folders (searched recursively for jpg jpeg png bmp webp gif "
                        "tif tiff, and mp4 avi mov mkv webm m4v; a GIF is scored by its first frame)")
    p.add_argument("--model", action="append", required=True, metavar="MODEL_DIR",
                   help="model folder (HF format, with dftune.json); repeat for an ensemble, or give an "
                        "ensemble.json (or its folder) written by `dftune evaluate --ensemble --write-threshold`")
    p.add_argument("--weight", action="append", type=float, metavar="W",
                   help="ensemble weight of each --model, in the same order (default: equal)")
    p.add_argument("--fake-label", default=None,
                   help="name (or index) of the fake class for models whose labels do not say")
    p.add_argument("--csv", default="predictions.csv", metavar="FILE", help="CSV to write")
    p.add_argument("--backend", default="torch", choices=list(BACKENDS),
                   help="torch: the HF weights; int8 / onnx: the files `dftune export --int8/--onnx` wrote")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    p.add_argument("--batch-size", type=int, default=d0.batch_size, help="crops per forward pass")
    add_workers(p, "the cores less one, which the model and a framing thread use; 0 or 1: in this process",
                "worker processes decoding, detecting and cropping ahead of the model")
    p.add_argument("--tta", default="auto",
                   help="test-time augmentation views, comma separated: flip, cropF (e.g. crop0.9), or none; "
                        "default auto: the views the model's threshold was tuned with (its provenance in "
                        "dftune.json), flip when it does not say; other views than the threshold's are warned about")
    g = p.add_argument_group("face crop and video sampling (default: the model's dftune.json)")
    g.add_argument("--detector", default=None, choices=["dlib", "retinaface", "none"],
                   help="face detector; none = the whole image as it is (like transformers' pipeline)")
    g.add_argument("--margin", type=float, default=None, help="crop side = margin x the face box side")
    g.add_argument("--size", type=int, default=None, help="crop size in pixels")
    g.add_argument("--frames", type=int, default=None, help="frames sampled evenly from each video")
    g.add_argument("--every", type=int, default=None, metavar="K",
                   help="sample every K-th frame instead (0: use --frames; not with --frames)")
    g.add_argument("--detect-every", type=int, default=None, metavar="K",
                   help="run the face detector on every K-th sampled frame of a video (and its last), a face's box "
                        "in the frames between interpolated (default: the model's dftune.json, where prepare's "
                        "--detect-every went; 1 = every frame)")
    g.add_argument("--aggregate", default=None,
                   help="how a video's frame probabilities are pooled: mean, median, max, topk[:K]")
    g.add_argument("--top-k", type=int, default=d0.top_k, help="K for --aggregate topk")
    g.add_argument("--already-cropped", type=float, default=ALREADY_CROPPED, metavar="RATIO",
                   help="the old rule: an image whose detected face is at least RATIO of its shorter side is used "
                        "whole (0: off, the guide's square whenever it fits in the image, else --clipped)")
    g.add_argument("--clipped", default=CLIPPED, choices=list(CLIPPED_RULES),
                   help="an image whose guide square would leave it: whole (the centred square) or pad (the square, "
                        "edge pixels outside)")
    g.add_argument("--faces", default=FACES, choices=list(FACE_RULES),
                   help="a video's faces: all (each person seen in a third of the frames or more pooled apart, the "
                        "highest: one fake face makes a fake video; measured best, benchmarks/bench_faces.py); follow "
                        "(one person, the most often seen, as prepare's crops); largest: each frame's largest face "
                        "(default: %(default)s)")
    d = p.add_argument_group("decision and CSV format")
    d.add_argument("--threshold", type=float, default=None,
                   help="fake when prob_fake >= this (default: the model's dftune.json or ensemble.json, "
                        "0.5 until `dftune evaluate --write-threshold` tunes one; the summary says which)")
    d.add_argument("--no-face", default=d0.no_face, choices=list(NO_FACE_RULES),
                   help=NO_FACE_HELP)
    d.add_argument("--format", default="full", choices=list(FORMATS),
                   help="filename,label: exactly those two columns, labels 0/1 (what contests read; overrides the "
                        "column, word and extra-column options); full: the columns the options below choose")
    d.add_argument("--filename-style", default="relative", choices=list(NAME_STYLES),
                   help="what the filename column shows: path relative to the folder given, name, stem, full path")
    d.add_argument("--filename-column", default=f0.filename_column, help="header of the file name column")
    d.add_argument("--label-column", default=f0.label_column, help="header of the label column")
    d.add_argument("--prob-column", default=f0.prob_column, help="header of the probability column ('' to omit it)")
    d.add_argument("--label-words", default=",".join(f0.label_words),
                   help="REAL,FAKE: what the label column says, e.g. real,fake")
    d.add_argument("--error-label", default="real", choices=["real", "fake"],
                   help="label given to a file that cannot be read")
    d.add_argument("--no-extra-columns", action="store_true",
                   help="write only filename, label (and prob) columns: no faces_found/frames/framing/error")
    d.add_argument("--per-model", action="store_true", help="add each ensemble member's prob_fake column")
    add_progress(p)
    renamed(p, "--out", "--csv", dest="csv")
    group(p, {"inputs, models and output": ["--model", "--weight", "--fake-label", "--csv", "--backend", "--device",
                                            "--batch-size", "--workers", "--tta"]})
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.table import Table

    from dftune import portable, scoring
    from dftune.portable.workers import csv_format_fields
    from dftune.progress import console
    from dftune.stages import predict
    from dftune.stages.evaluate import is_main_process

    if not is_main_process():  # under torchrun / accelerate launch: one process scores and writes the CSV
        return 0
    words = [w.strip() for w in args.label_words.split(",")]
    if len(words) != 2 or not all(words):
        raise ValueError(f"--label-words {args.label_words!r}: give two words, REAL,FAKE (e.g. 0,1 or real,fake)")
    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    one_of(args, "--frames", "--every")
    s = predict.PredictSettings(
        tta=None if args.tta.strip().lower() == portable.TTA_AUTO else scoring.parse_tta(args.tta),
        batch_size=args.batch_size, aggregate=args.aggregate, top_k=args.top_k,
        threshold=args.threshold, detector=args.detector, margin=args.margin, size=args.size, frames=args.frames,
        every=args.every, detect_every=args.detect_every, already_cropped=args.already_cropped, faces=args.faces,
        clipped=args.clipped,
        no_face=args.no_face,
        error_label=1 if args.error_label == "fake" else 0,
        progress=args.progress, workers=None if args.workers == "auto" else args.workers,
    )
    fmt = predict.CsvFormat(**csv_format_fields(args.format, dict(
        filename_column=args.filename_column, label_column=args.label_column, prob_column=args.prob_column,
        label_words=tuple(words), extra_columns=not args.no_extra_columns, per_model=args.per_model)))
    sm = predict.run(args.inputs, args.model, s, args.csv, fmt, weights=args.weight, fake_label=args.fake_label,
                     device=args.device, backend=args.backend, filename_style=args.filename_style)
    crop = sm.crop
    con = console()
    t = Table(title=f"dftune predict -> {args.csv}", show_header=False)
    t.add_row("models", sm.models)
    t.add_row("device / backend", f"{sm.device} / {args.backend}")
    t.add_row("face crop", f"{crop.detector}, margin {crop.margin}, {crop.size}px; videos: "
              f"{'every ' + str(crop.every) if crop.every else str(crop.frames) + ' frames'}, {crop.aggregate}"
              + (f", detected on every {crop.detect_every}th" if crop.detect_every > 1 else ""))
    t.add_row("several people (--faces)", {"all": "all: each person pooled apart, the highest",
                                           "follow": "follow: one person, the most often seen",
                                           "largest": "largest: each frame's largest face"}.get(args.faces, args.faces))
    t.add_row("TTA", (", ".join(sm.tta) or "none") + (" (auto: the threshold's)" if args.tta == "auto" else ""))
    t.add_row("threshold", sm.threshold_text)
    t.add_row("files", f"{sm.files} ({sm.images} images, {sm.videos} videos)")
    t.add_row("predicted", f"{sm.predicted_fake} fake, {sm.predicted_real} real")
    t.add_row("share labelled fake", predict.decision_line(sm))
    if crop.detector != "none":
        if sm.no_face_rule == "score":
            t.add_row("no face found (centre square scored)", str(sm.no_face))
        else:
            t.add_row(f"no face found (--no-face {sm.no_face_rule}: labelled {sm.no_face_rule})",
                      str(sm.decided_no_face))
        t.add_row("already a face crop (used whole)", str(sm.already_cropped))
    t.add_row("errors (default label)", f"{sm.errors}" + (f" -> {args.error_label}" if sm.errors else ""))
    if sm.skipped:
        t.add_row("skipped: not an image or video", f"{len(sm.skipped)}: " + ", ".join(sm.skipped))
    con.print(t)
    if sm.share_warning:
        console(stderr=True).print(f"[yellow]warning[/yellow] {sm.share_warning}", highlight=False)
    con.print(f"summary: {sm.sidecar}", highlight=False)
    for r in sm.results:
        if r.error:
            console(stderr=True).print(f"[yellow]error[/yellow] {r.name}: {r.error}")
    return 0
