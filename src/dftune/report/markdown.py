"""``report.md`` and the table rows it shares with the terminal and ``report.html``.

Every table evaluate shows is built here once, as a header and rows of strings: the terminal
(``commands/evaluate``), the markdown page and the HTML page print the same cells. The inputs
are evaluate's results (``EvalResult``, ``CrossResult``, ``FilesResult`` of
:mod:`dftune.stages.evaluate`), read by attribute; nothing here computes a metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the types only; a component never imports a stage at run time
    from dftune.stages.evaluate import CrossResult, EvalResult, FilesResult

THRESHOLD_HEADER = ["model", "threshold", "value", "frame F1", "video F1"]
SUMMARY_HEADER = ["model", "level", "n", "acc@.5", "F1@.5", "val thr", "F1@thr", "AUC", "AP", "EER"]
METHOD_HEADER = ["model", "method", "fakes", "AUC", "F1", "caught", "EER"]
SEEN_HEADER = ["model", "level", "generators", "fakes", "AUC", "F1", "caught", "EER", "which"]
HELD_OUT = "held out"
CROSS_HEADER = ["model", "dataset", "videos", "frame AUC", "video AUC", "AP", "EER", "F1@.5", "F1@thr"]
FILES_HEADER = ["files", "n", "AUC", "F1@.5", "F1@thr", "EER"]
FRAMING_HEADER = ["framing", "n", "real", "fake", "acc@thr", "AUC", "F1@thr", "EER"]
FROM_VIDEOS_HEADER = ["model", "videos", "AUC", "F1@.5", "also in crops", "only here", "mean |Δp|", "max |Δp|",
                      "agree@.5"]


def fmt(v) -> str:
    """A metric as the tables show it: three decimals, ``-`` for a missing or NaN value."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return f"{v:.3f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- one prepared split


def summary_header(result: EvalResult) -> list[str]:
    """:data:`SUMMARY_HEADER`, its tuned-threshold column named after where the threshold came from: ``check thr``
    when check sets tuned it (``evaluate --check``), ``val thr`` otherwise."""
    return [("check thr" if _from_checks(result) else c) if c == "val thr" else c for c in SUMMARY_HEADER]


def _from_checks(result: EvalResult) -> bool:
    return str(result.threshold_split or "").startswith("check sets")


def threshold_rows(result: EvalResult) -> list[list[str]]:
    """Macro F1 per model at three thresholds, the one ``predict`` applies FIRST (the model's stored threshold,
    each crop and each pooled video judged as predict judges them: the contest's number), then the val-tuned
    ones (frame and video each at its own optimum) and 0.5."""
    out = []
    for nm, e in result.models.items():
        st = e.get("at_stored_threshold")
        if st:
            out.append([nm, f"stored, as predict applies it ({st['source']}; video = {st['aggregate']})",
                        fmt(st["threshold"]), fmt(st["frame"]["macro_f1"]), fmt(st["video"]["macro_f1"])])
        bf, bv = e["frame"].get("at_val_threshold"), e["video"].get("at_val_threshold")
        if bf and bv:
            out.append([nm, f"tuned on {result.threshold_split} (frame / video)",
                        f"{fmt(bf['threshold'])} / {fmt(bv['threshold'])}", fmt(bf["macro_f1"]), fmt(bv["macro_f1"])])
        out.append([nm, "0.5", fmt(0.5), fmt(e["frame"]["at_0.5"]["macro_f1"]), fmt(e["video"]["at_0.5"]["macro_f1"])])
    return out


def summary_rows(result: EvalResult) -> list[list[str]]:
    """One row per model and level: the numbers the terminal table and report.md show."""
    out = []
    for nm, e in result.models.items():
        for level in ("frame", "video"):
            a = e[level]["at_0.5"]
            b = e[level].get("at_val_threshold")
            out.append([nm, level, str(a["n"]), fmt(a["accuracy"]), fmt(a["macro_f1"]),
                        fmt(b["threshold"]) if b else "-", fmt(b["macro_f1"]) if b else "-",
                        fmt(a["auc"]), fmt(a["average_precision"]), fmt(a["eer"])])
    return out


def method_rows(result: EvalResult, level: str = "video") -> list[list[str]]:
    """One row per model and manipulation method, at the val threshold (0.5 without val)."""
    out = []
    for nm, e in result.models.items():
        key = "per_method_at_val_threshold" if "per_method_at_val_threshold" in e[level] else "per_method_at_0.5"
        seen = e.get("seen_generators")
        for meth, m in e[level][key].items():
            name = meth if seen is None or meth in seen else f"{meth} ({HELD_OUT})"
            out.append([nm, name, str(m["n_fake"]), fmt(m["auc"]), fmt(m["macro_f1"]), fmt(m["tpr"]), fmt(m["eer"])])
    return out


def seen_rows(result: EvalResult) -> list[list[str]]:
    """The generators each model trained on against the ones it did not (its dftune.json names its training
    data), each group's fakes against all reals, at the val threshold (0.5 without val); empty when no model's
    training data is known."""
    out = []
    for nm, e in result.models.items():
        for level in ("video", "frame"):
            for group, part in e[level].get("seen_held_out", {}).items():
                m = part.get("at_val_threshold") or part["at_0.5"]
                out.append([nm, level, ", ".join(part["generators"]), str(m["n_fake"]), fmt(m["auc"]),
                            fmt(m["macro_f1"]), fmt(m["tpr"]), fmt(m["eer"]),
                            "seen in training" if group == "seen" else HELD_OUT])
    return out


def from_videos_rows(fv: dict) -> list[list[str]]:
    """``--from-videos``: each model's scores through predict's path against the crops' ones."""
    return [[nm, str(e["n"]), fmt(e["auc"]), fmt(e["macro_f1_at_0.5"]), str(e["compared_with_crops"]),
             str(e["only_from_videos"]), fmt(e["mean_abs_diff"]), fmt(e["max_abs_diff"]),
             fmt(e["label_agreement_at_0.5"])]
            for nm, e in fv["models"].items()]


def _from_videos_md(fv: dict) -> list[str]:
    return [f"{fv['videos']} videos ({fv['errors']} unreadable, {fv['no_face_videos']} with no face found):", "",
            md_table(FROM_VIDEOS_HEADER, from_videos_rows(fv)), ""]


def report_md(result: EvalResult) -> str:
    """``report.md`` of one prepared split."""
    parts = [
        f"# dftune evaluate: {result.split} split of `{result.data}`",
        "",
        f"TTA: {', '.join(result.tta) or 'none'}; video score = {result.aggregate} of its crops; "
        f"threshold tuned for macro F1 on: {result.threshold_split or 'nothing (no val rows)'}"
        + (f"; {result.skipped_crops} unreadable crops skipped" if result.skipped_crops else "") + ".",
        "",
        "## Macro F1 at the threshold predict applies",
        "",
        "First row of each model: its stored threshold (dftune.json), each crop and each pooled video judged as "
        "`dftune predict` judges them: the number the contest scores. Then the thresholds tuned here and 0.5.",
        "",
        md_table(THRESHOLD_HEADER, threshold_rows(result)),
        "",
        "## Summary",
        "",
        "F1 = macro F1 (the competition's metric); "
        + ("`check thr` = the macro-F1-optimal threshold on the check sets' rows pooled; " if _from_checks(result)
           else "`val thr` = the macro-F1-optimal threshold on val; ")
        + "EER = equal error rate; AP = average precision (fake = positive).",
        "",
        md_table(summary_header(result), summary_rows(result)),
        "",
        *(["## Generators seen in training and held out", "",
           "The fake methods of the model's own train split against the others, each group's fakes against all "
           "reals, at the tuned threshold (0.5 without val).", "",
           md_table(SEEN_HEADER, seen_rows(result)), ""] if seen_rows(result) else []),
        "## Per manipulation method (video level)",
        "",
        "Each method's fakes against all reals, at the tuned threshold (0.5 without val); "
        "`caught` = share of that method's fakes called fake.",
        "",
        md_table(METHOD_HEADER, method_rows(result, "video")),
        "",
        "## Per manipulation method (frame level)",
        "",
        md_table(METHOD_HEADER, method_rows(result, "frame")),
        "",
        "## evaluate and predict",
        "",
        "These numbers score the JPEG crops `prepare` wrote; `dftune predict` decodes the videos and crops in "
        "memory (no JPEG round trip) and scores a video with no face on its whole frames, while such a video has "
        "no crops here and is left out of these video metrics. `--from-videos` scores the split's videos through "
        "predict's path to check that the two agree"
        + (":" if result.from_videos else "."),
        "",
        *(_from_videos_md(result.from_videos) if result.from_videos else []),
        "Figures: `roc_frame.png`, `roc_video.png`, `confusion_<model>_<level>.png`. "
        "All numbers: `metrics.json`; per-crop scores: `predictions.csv`.",
        "",
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------- across datasets


def cross_cells(row: dict) -> list[str]:
    """One row of the cross-dataset table (``CrossResult.table``) as the tables print it."""
    mark = row.get("generators")
    return [row["model"], row["dataset"] + (f" ({mark})" if mark else ""), str(row["videos"]),
            fmt(row["frame_auc"]), fmt(row["video_auc"]),
            fmt(row["ap"]), fmt(row["eer"]), fmt(row["f1_0.5"]), fmt(row["f1_thr"])]


def cross_notes(result: CrossResult) -> list[str]:
    """What the cross-dataset table cannot show by itself: datasets of one class left out of every mean,
    and a training val of one class that tuned no threshold (0.5 used instead)."""
    notes = []
    left = next((r["left_out"] for r in result.table if r["dataset"] == "mean" and r.get("left_out")), None)
    if left:
        notes.append(f"mean: over the datasets with both classes only; left out of every mean (AUC, AP, EER and F1 "
                     f"alike): {', '.join(left)} (one class: AUC undefined)")
    said = {t.get("note") for t in result.thresholds.values() if t.get("note")}
    notes += [f"threshold: {n}" for n in sorted(said)]
    return notes


def cross_md(result: CrossResult) -> str:
    """``report.md`` of a cross-dataset evaluation."""
    notes = cross_notes(result)
    return "\n".join([
        f"# dftune evaluate: across datasets ({result.split} split of each)",
        "",
        f"Threshold tuned for macro F1 on the {result.threshold_split} split of `{result.threshold_data}` "
        "(the training data), never on a test dataset. Video level unless named; AUC/AP/EER threshold-free.",
        "",
        md_table(CROSS_HEADER, [cross_cells(r) for r in result.table]),
        "",
        *[line for n in notes for line in (f"Note — {n}.", "")],
        "Each dataset's full report: `<dataset>/report.md` and `<dataset>/report.html`; this table with AUC bars "
        "per dataset: `report.html`.",
        "",
    ])


# ---------------------------------------------------------------- a labelled folder


def files_rows(result: FilesResult) -> list[list[str]]:
    """All files at 0.5 and at the threshold, then each kind (image, video) at the threshold."""
    a, b = result.at_05, result.at_threshold
    rows = [["all", str(a["n"]), fmt(a["auc"]), fmt(a["macro_f1"]), fmt(b["macro_f1"]), fmt(a["eer"])]]
    rows += [[k, str(m["n"]), fmt(m["auc"]), "-", fmt(m["macro_f1"]), fmt(m["eer"])]
             for k, m in result.per_kind.items()]
    return rows


def framing_rows(result: FilesResult) -> list[list[str]]:
    """One row per framing kind (the CSV's ``framing``) at the threshold; a kind of one class shows its counts
    and accuracy, ``-`` for the AUC, F1 and EER it cannot have."""
    rows = []
    for k, m in result.per_framing.items():
        both = "one_class" not in m
        rows.append([k or "-", str(m["n"]), str(m["n_real"]), str(m["n_fake"]), fmt(m["accuracy"]),
                     fmt(m["auc"]) if both else "-", fmt(m["macro_f1"]) if both else "-",
                     fmt(m["eer"]) if both else "-"])
    return rows


def files_settings(result: FilesResult) -> str:
    """The predict options the files were scored with, in words."""
    rule = ("scored on the centred square" if result.no_face_rule == "score"
            else f"labelled {result.no_face_rule} ({result.decided_no_face} files)")
    return (f"TTA {', '.join(result.tta) or 'none'}; {result.frames} frames per video; no face found "
            f"(--no-face {result.no_face_rule}): {rule}")


def files_md(result: FilesResult) -> str:
    """``report.md`` of ``evaluate --files``."""
    lines = [f"# dftune evaluate --files: {', '.join(result.inputs)}", "",
             f"Scored exactly as `dftune predict` does (face crop, pooling; {files_settings(result)}); "
             f"threshold {result.threshold_source}.", "",
             md_table(FILES_HEADER, files_rows(result)), "",
             "## Per framing", "",
             "The CSV's `framing` column: `face` (the guide's square), `face:padded`, `whole:face-crop` (used "
             "whole), `whole:no-face` (no face found), `whole:no-detector`. At the threshold; a kind of one class "
             "has no AUC, F1 or EER.", "",
             md_table(FRAMING_HEADER, framing_rows(result)), ""]
    if result.duplicate_label_rows:
        lines += [f"{result.duplicate_label_rows} row(s) of the labels repeat an earlier row exactly; each file is "
                  "counted once.", ""]
    for key, title in (("errors", "unreadable (label counted as missing)"), ("no_face", "no face found"),
                       ("unlabelled", "found but not in the labels"), ("missing", "in the labels but not found")):
        listed = getattr(result, key)
        if listed:
            items = [e["file"] + ": " + e["error"] if isinstance(e, dict) else e for e in listed]
            lines += [f"**{title}** ({len(items)}): " + "; ".join(items[:20]), ""]
    return "\n".join(lines)
