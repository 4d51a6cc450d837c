"""Stage ``evaluate --files DIR --labels CSV``: a labelled folder of raw images and videos, exactly as predict sees it.

Every file goes through :func:`dftune.stages.predict.score_files` with predict's options (``--tta``, ``--frames``,
``--no-face``), so the numbers are those of the CSV predict would write; they are measured against the labels
overall, per kind (image, video) and per framing (the CSV's ``framing`` column: a face, a face crop used whole,
padded, no face found, no detector), so a user can choose frames and the no-face rule on their own check set.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dftune import metrics, portable, scoring
from dftune.atomic import write_json, write_text
from dftune.labelfile import read_labels_counted
from dftune.stages.evaluate import EvalSettings, FilesResult, _clean

log = logging.getLogger(__name__)


def framing_metrics(y, p, threshold: float) -> dict:
    """One framing's numbers at ``threshold``: every metric when both classes are there; with one class only its
    counts and accuracy (an AUC, F1 or EER of one class says nothing), and which class (``one_class``)."""
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(p, dtype=np.float64)
    if len(set(y.tolist())) == 2:
        return metrics.full_metrics(y, p, threshold)
    n_fake = int(y.sum())
    return {"n": int(y.size), "n_real": int(y.size) - n_fake, "n_fake": n_fake, "threshold": float(threshold),
            "accuracy": float(np.mean((p >= threshold).astype(np.int64) == y)) if y.size else float("nan"),
            "one_class": "fake" if n_fake else "real"}


def per_framing(y, p, framings: Sequence[str], threshold: float) -> dict:
    """``{framing: framing_metrics}`` for each framing kind present, in portable's order (then any other)."""
    order = [portable.FRAMED_FACE, portable.FRAMED_PADDED, portable.FRAMED_CROPPED, portable.FRAMED_NO_FACE,
             portable.FRAMED_AS_IS]
    fr = np.asarray([str(f) for f in framings])
    present = set(fr.tolist())
    kinds = [k for k in order if k in present] + sorted(present - set(order))
    y, p = np.asarray(y), np.asarray(p)
    return {k: framing_metrics(y[fr == k], p[fr == k], threshold) for k in kinds}


def evaluate_files(model_dirs: Sequence[str], inputs: Sequence[str], labels: str | os.PathLike,
                   out_dir: str | os.PathLike | None, s: EvalSettings, filename_style: str = "relative") -> FilesResult:
    """Raw images and videos scored exactly as ``predict`` scores them (face crop, ``s.frames``, TTA, ensemble,
    threshold, ``s.no_face``), measured against ``labels``: the rehearsal of a hidden test set."""
    from dftune.stages import predict

    truth, dupes = read_labels_counted(labels)
    found = predict.collect(inputs, filename_style)
    csv_path = Path(labels).resolve()  # the CSV kept beside the files is not one of them
    found.files = [f for f in found.files if Path(f.path).resolve() != csv_path]
    found.skipped = [x for x in found.skipped if Path(str(x)).resolve() != csv_path]
    ens = scoring.load_ensemble(model_dirs, s.fake_label, s.device, s.backend, s.weights)
    ps = predict.PredictSettings(tta=s.tta, batch_size=s.batch_size, progress=s.progress, frames=s.frames,
                                 no_face=s.no_face, faces=s.faces, clipped=s.clipped)
    thr, thr_text, _ = predict.decision(ens, ps)
    # a label's filename as predict's CSV names the file, relative to the labels CSV's folder (as --check reads
    # it), or absolute
    here = Path(labels).resolve().parent
    by_path = {os.path.normpath(k if os.path.isabs(k) else here / k): k for k in truth}
    key = {}
    for f in found.files:
        k = f.name if f.name in truth else by_path.get(os.path.normpath(os.path.abspath(f.path)))
        if k is not None:
            key[f.name] = k
    labelled = [f for f in found.files if f.name in key]
    if not labelled:
        raise ValueError(f"{labels}: none of the {len(found.files)} files found in {', '.join(map(str, inputs))} is "
                         f"named in it (its {len(truth)} names, e.g. {next(iter(truth), '')!r}, are read as predict "
                         f"names the files, relative to the CSV's folder, or absolute)")
    res = predict.score_files(ens, labelled, ps, threshold=thr)
    ok = [r for r in res if not r.error]
    y = np.array([truth[key[r.name]] for r in ok], dtype=np.int64)
    p = np.array([r.prob_fake for r in ok])
    kinds = sorted({r.kind for r in ok})
    result = FilesResult(
        inputs=[str(i) for i in inputs], labels=str(labels), tta=list(s.tta), threshold=thr,
        threshold_source=thr_text, files=len(labelled), scored=len(ok),
        errors=[{"file": r.name, "error": r.error} for r in res if r.error],
        no_face=[r.name for r in ok if r.faces_found == 0],
        unlabelled=[f.name for f in found.files if f.name not in key],
        missing=sorted(set(truth) - set(key.values())),
        skipped=found.skipped,
        at_05=metrics.full_metrics(y, p, 0.5), at_threshold=metrics.full_metrics(y, p, thr),
        per_kind={k: metrics.full_metrics(y[[r.kind == k for r in ok]], p[[r.kind == k for r in ok]], thr)
                  for k in kinds},
        per_framing=per_framing(y, p, [r.framing for r in ok], thr),
        frames=int(predict.crop_settings(ens.models, ps).frames), no_face_rule=s.no_face,
        decided_no_face=sum(portable.decided_by_no_face(r.framing, s.no_face) for r in ok),
        duplicate_label_rows=dupes or None,
    )
    if dupes:
        log.warning("%s: %d row(s) repeat an earlier row exactly; each file is counted once", labels, dupes)
    if out_dir is not None:
        from dftune import report

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "metrics.json", _clean(result.to_dict()))
        predict.write_csv(out / "predictions.csv", res, predict.CsvFormat())
        write_text(out / "report.md", report.files_md(result))
        if s.plots:
            kinds_of = [r.kind for r in ok]
            report.write_files_html(out / "report.html", result, y, p, kinds_of)
        result.out = str(out)
    return result
