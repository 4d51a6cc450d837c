"""``dftune evaluate``: frame- and video-level metrics of one or several models on a prepared split."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dftune.commands import add_parser, add_progress, check_path, group, one_of, renamed

if TYPE_CHECKING:
    from dftune.stages.evaluate import CrossResult, EvalSettings, FilesResult


SPLITS = ["train", "val", "test"]


def register(sub) -> None:
    from dftune.commands.predict import NO_FACE_HELP
    from dftune.portable import CLIPPED_RULES, FACE_RULES, NO_FACE_RULES
    from dftune.stages.evaluate import EvalSettings

    d = EvalSettings()  # every default below is read from here, so it lives once
    p = add_parser(
        sub, "evaluate", "measure models on a prepared split: frame/video metrics, per method, tuned threshold",
        description="Measure one or several models on a prepared split (frame and video level, per manipulation\n"
        "method), at 0.5 and at the macro-F1-optimal threshold found on val. Writes metrics.json, report.md,\n"
        "predictions.csv and ROC / confusion-matrix PNGs. --write-threshold stores the val threshold in each\n"
        "model's dftune.json so `dftune predict` uses it.\n"
        "Several --data: the cross-dataset table (threshold from the first dataset's val split, the training data).\n"
        "--files DIR --labels labels.csv: raw images/videos scored exactly as `dftune predict` does, against labels.",
        examples=("dftune evaluate --model runs/ft/best --data data/ffpp-c23 --split val --write-threshold",
                  "dftune evaluate --model ./baseline --model runs/ft/best --data data/ffpp-c23 --out runs/eval"),
    )
    p.add_argument("--model", action="append", required=True, metavar="MODEL_DIR",
                   help="model folder; repeat to compare models side by side, or an ensemble.json (or its folder)")
    p.add_argument("--data", action="append", metavar="PREPARED_DIR",
                   help="prepared folder (manifest.csv); repeat for the cross-dataset table (the first is the "
                        "training data, whose val split tunes the threshold)")
    p.add_argument("--threshold-data", default=None, metavar="PREPARED_DIR",
                   help="with several --data: the prepared training data whose val split tunes the threshold "
                        "(default: the first --data)")
    p.add_argument("--files", nargs="+", metavar="PATH",
                   help="instead of --data: image/video files or folders scored as predict scores them")
    p.add_argument("--labels", default=None, metavar="CSV",
                   help="with --files: filename,label CSV (label 0/1 or real/fake; filename as predict's CSV names it)")
    p.add_argument("--frames", type=int, default=d.frames,
                   help="with --files: frames sampled evenly from each video, as predict's --frames (default: the "
                        "model's dftune.json)")
    p.add_argument("--no-face", default=d.no_face, choices=list(NO_FACE_RULES),
                   help="with --files, as predict's --no-face: " + NO_FACE_HELP)
    p.add_argument("--faces", default=d.faces, choices=list(FACE_RULES),
                   help="with --files, as predict's --faces: a video's faces (all: each person pooled apart, the "
                        "highest; follow: one person; largest: each frame's)")
    p.add_argument("--clipped", default=d.clipped, choices=list(CLIPPED_RULES),
                   help="with --files, as predict's --clipped: an image whose guide square would leave it, whole or "
                        "pad")
    p.add_argument("--split", default=d.split, choices=SPLITS, help="split to measure")
    p.add_argument("--threshold-split", default=d.threshold_split, choices=SPLITS,
                   help="split the macro-F1-optimal threshold is tuned on")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for metrics.json, report.md, PNGs (default: no files, table only)")
    p.add_argument("--tta", default=",".join(d.tta) or "none",
                   help="TTA views as in predict: flip, cropF, comma separated, or none (one view a crop, as the "
                        "field's published tables score: use it to compare with them; with --files: the views "
                        "predict scores each file with)")
    p.add_argument("--aggregate", default=d.aggregate, help="video score from its crops: mean, median, max, topk[:K]")
    p.add_argument("--top-k", type=int, default=d.top_k, help="K for --aggregate topk")
    p.add_argument("--ensemble", action="store_true",
                   help="also measure the models' weighted-mean prob_fake as one model (implied for an ensemble.json)")
    p.add_argument("--weight", dest="weights", action="append", type=float, metavar="W",
                   help="ensemble weight per --model")
    p.add_argument("--write-threshold", action="store_true",
                   help="store the val threshold (with --check: the check sets'; tuned at --level with "
                        "this --tta and --aggregate) in each model's dftune.json, and with --ensemble the "
                        "ensemble's own in an ensemble.json; predict "
                        "applies it and says where it came from")
    p.add_argument("--check", dest="checks", action="append", type=check_path, default=None, metavar="PATH",
                   help="a check set from outside the training data (a prepared folder: its val+test splits, or "
                        "PATH:SPLIT[+SPLIT]; or a labels CSV of raw images and videos, framed as predict frames "
                        "them with the model's crop settings); repeat for several. The threshold is then tuned on "
                        "the check sets' "
                        "scores pooled (one macro-F1 optimum over all their crops or videos together), not on "
                        "--threshold-split, the --data split is measured at it, and --write-threshold writes it "
                        "naming the check sets; a check set sharing identities or videos with the data a model's "
                        "dftune.json names is refused (default: none, --threshold-split of --data tunes it)")
    p.add_argument("--ensemble-out", default=d.ensemble_out, metavar="FILE",
                   help="where --ensemble --write-threshold writes the ensemble (members, weights, its threshold) "
                        "for predict/export --model FILE (default: OUT/ensemble.json)")
    p.add_argument("--level", dest="threshold_level", default=d.threshold_level, choices=["frame", "video"],
                   help="which val threshold --write-threshold stores (the competition mixes images and videos)")
    p.add_argument("--fake-label", default=d.fake_label,
                   help="name (or index) of the fake class, if the labels do not say")
    p.add_argument("--backend", default=d.backend, choices=["torch", "int8", "onnx"], help="as in predict")
    p.add_argument("--device", default=d.device, help="auto (CUDA when available), cpu, cuda ...")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="crops per forward pass")
    p.add_argument("--from-videos", action="store_true",
                   help="also score the split's source videos through predict's path (decode, detect, crop in "
                        "memory) and report how far those video scores are from the ones pooled from the crops")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG figures")
    add_progress(p)
    renamed(p, "--threshold-level", "--level", dest="threshold_level", choices=["frame", "video"])
    group(p, {"models": ["--model", "--ensemble", "--weight", "--ensemble-out", "--fake-label", "--backend",
                         "--device", "--batch-size"],
              "what is measured": ["--data", "--split", "--threshold-data", "--files", "--labels", "--frames",
                                   "--no-face", "--faces", "--clipped", "--from-videos"],
              "the threshold": ["--threshold-split", "--check", "--level", "--write-threshold"],
              "scoring": ["--tta", "--aggregate", "--top-k"],
              "files written": ["--out", "--no-plots"]})
    p.set_defaults(func=run)


def settings(args) -> EvalSettings:
    """The options as the stage's settings: every option whose name is an ``EvalSettings`` field."""
    from dataclasses import fields

    from dftune import scoring
    from dftune.stages.evaluate import EvalSettings

    given = {f.name: getattr(args, f.name) for f in fields(EvalSettings) if hasattr(args, f.name)}
    return EvalSettings(**{**given, "tta": scoring.parse_tta(args.tta),
                           "checks": tuple(args.checks or EvalSettings.checks)})


def run(args) -> int:
    from rich.table import Table

    from dftune import report
    from dftune.progress import console
    from dftune.stages import evaluate

    if not evaluate.is_main_process():
        return 0  # torchrun / accelerate launch: the main process scores and writes everything, alone
    s = settings(args)
    con = console()
    one_of(args, "--data", "--files")
    if args.files:
        if not args.labels:
            raise ValueError("--files needs --labels CSV (filename,label)")
        if s.checks:
            raise ValueError("--check tunes a threshold on check sets, measured on --data; --files measures at the "
                             "model's own threshold: give the files to --check instead, or drop --check")
        from dftune.stages.evaluate_files import evaluate_files

        return _files(con, evaluate_files(args.model, args.files, args.labels, args.out, s))
    d = evaluate.EvalSettings
    if args.frames is not None or (args.no_face, args.faces, args.clipped) != (d.no_face, d.faces, d.clipped):
        raise ValueError("--frames, --no-face, --faces and --clipped choose how --files are scored (predict's path); "
                         "with --data the "
                         "crops prepare wrote are scored")
    if not args.data:
        raise ValueError("give --data PREPARED_DIR (or --files PATH --labels CSV)")
    if s.checks and (len(args.data) > 1 or args.threshold_data):
        raise ValueError("--check tunes the threshold for one --data; with several --data (or --threshold-data) the "
                         "threshold comes from the training data's val split")
    if len(args.data) > 1 or args.threshold_data:
        return _cross(con, evaluate.cross_dataset(args.model, args.data, args.out, s, args.threshold_data))
    if s.checks:
        from dftune.stages.evaluate_checks import run_with_checks

        res = run_with_checks(args.model, args.data[0], args.out, s)
    else:
        res = evaluate.run(args.model, args.data[0], args.out, s)
    for title, header, rows, left in (
            (f"macro F1 on {args.split}: first at the threshold predict applies (the contest's number)",
             report.THRESHOLD_HEADER, report.threshold_rows(res), ("model", "threshold")),
            (f"dftune evaluate: {args.split} split (TTA {','.join(s.tta) or 'none'}, video = {res.aggregate})",
             report.summary_header(res), report.summary_rows(res), ("model", "level")),
            ("generators seen in training and held out (each group's fakes vs all reals)", report.SEEN_HEADER,
             report.seen_rows(res), ("model", "level", "generators", "which")),
            ("per manipulation method (video level; its fakes vs all reals)", report.METHOD_HEADER,
             report.method_rows(res, "video"), ("model", "method"))):
        if not rows:
            continue
        t = Table(title=title)
        for c in header:
            t.add_column(c, justify="left" if c in left else "right")
        for r in rows:
            t.add_row(*r)
        con.print(t)
    if res.skipped_crops:
        console(stderr=True).print(f"[yellow]{res.skipped_crops} crops could not be read and were skipped (see the "
                                   "log)[/yellow]")
    for nm, e in res.models.items():
        if "threshold_written" in e:
            where = e["path"] if nm == evaluate.ENSEMBLE else f"{e['path']}/dftune.json"
            con.print(f"threshold {e['threshold_written']:.4f} ({args.threshold_level} level, tuned on "
                      f"{res.threshold_split}, TTA {','.join(s.tta) or 'none'}) written to {where}")
        elif "model_threshold" in e:
            con.print(f"{nm}: its stored threshold {e['model_threshold_text']}")
    fv = res.from_videos
    if fv:
        for nm, e in fv["models"].items():
            con.print(f"--from-videos {nm}: {e['n']} videos through predict's path, AUC {report.fmt(e['auc'])}; vs "
                      f"crops: mean |Δp| {report.fmt(e['mean_abs_diff'])}, label agreement "
                      f"{report.fmt(e['label_agreement_at_0.5'])}, {e['only_from_videos']} videos only scored from "
                      "the video")
    if args.out:
        con.print(f"metrics: {args.out}/metrics.json, report: {args.out}/report.md")
    return 0


def _cross(con, r: CrossResult) -> int:
    from rich.table import Table

    from dftune import report

    t = Table(title=f"dftune evaluate across datasets ({r.split} split; threshold from {r.threshold_split} of "
                    f"{r.threshold_data})")
    for c in report.CROSS_HEADER:
        t.add_column(c, justify="left" if c in ("model", "dataset") else "right")
    for row in r.table:
        t.add_row(*report.cross_cells(row), style="bold" if row["dataset"] == "mean" else None)
    con.print(t)
    for note in report.cross_notes(r):
        con.print(f"[yellow]note[/yellow] — {note}")
    if r.out:
        con.print(f"metrics: {r.out}/metrics.json, report: {r.out}/report.md")
    return 0


def _files(con, r: FilesResult) -> int:
    from rich.table import Table

    from dftune import report
    from dftune.progress import console

    t = Table(title=f"dftune evaluate --files: {r.scored} of {r.files} labelled files scored as predict does")
    for c in report.FILES_HEADER:
        t.add_column(c, justify="left" if c == "files" else "right")
    for row in report.files_rows(r):
        t.add_row(*row)
    con.print(t)
    ft = Table(title="per framing (the CSV's framing column; at the threshold; one class: no AUC, F1, EER)")
    for c in report.FRAMING_HEADER:
        ft.add_column(c, justify="left" if c == "framing" else "right")
    for row in report.framing_rows(r):
        ft.add_row(*row)
    con.print(ft)
    con.print(f"scored with {report.files_settings(r)}")
    con.print(f"threshold {r.threshold_source}")
    if r.duplicate_label_rows:
        con.print(f"{r.duplicate_label_rows} label row(s) repeat an earlier row exactly: counted once")
    no_face = "no face found" + (f" (--no-face {r.no_face_rule}: labelled {r.no_face_rule})"
                                 if r.no_face_rule != "score" else "")
    for key, what in (("errors", "unreadable"), ("no_face", no_face), ("unlabelled", "not in the labels"),
                      ("missing", "in the labels, not found"), ("skipped", "skipped: not an image or video")):
        listed = getattr(r, key)
        if listed:
            console(stderr=True).print(f"[yellow]{len(listed)} {what}[/yellow]: " + ", ".join(
                (e["file"] if isinstance(e, dict) else str(e)) for e in listed[:5]))
    if r.out:
        con.print(f"metrics: {r.out}/metrics.json, report: {r.out}/report.md")
    return 0
