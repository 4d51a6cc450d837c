"""Benchmark `dftune predict` against the guide's way, on this CPU.

Images/s on a folder of face photos (face detection + crop + model), on the same faces
as 224 px crops (the model alone, no detector) and frames/s on short videos, with and
without flip TTA, for the fp32 (torch), int8 and ONNX backends, each against the guide's
way (OpenCV seek per sampled frame, the same face crop, the image processor called per
crop, batch 1, one forward per view) measured in the same run on the same inputs.

The model is a ViT-B/16 (224 px, the baseline's architecture) with random weights, built
from a config (no download); ``--arch small`` / ``tiny`` for a quick run. Usage:

    python benchmarks/bench_predict.py --images 16 --videos 3 --out bench_predict.json
    python benchmarks/bench_predict.py --clock --arch tiny --frames 30 --videos 8 --images 16   # workers
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ARCH = {  # hidden, layers, heads, mlp
    "base": (768, 12, 12, 3072),
    "small": (384, 12, 6, 1536),
    "tiny": (192, 12, 3, 768),
}


def build_model(out: Path, arch: str) -> Path:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    h, n, heads, mlp = ARCH[arch]
    cfg = ViTConfig(image_size=224, patch_size=16, hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
                    intermediate_size=mlp, num_labels=2, id2label={0: "Realism", 1: "Deepfake"},
                    label2id={"Realism": 0, "Deepfake": 1})
    torch.manual_seed(0)
    ViTForImageClassification(cfg).save_pretrained(out)
    ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(out)
    return out


def make_inputs(root: Path, n_images: int, n_videos: int, width: int = 640, height: int = 360,
                n_frames: int = 60) -> tuple[Path, Path, Path]:
    """Face photos from PyPI packages (variants of size/tint) and short H.264 clips."""
    import cv2
    from PIL import Image

    from dftune import synthetic

    img_dir, vid_dir = root / "images", root / "videos"
    img_dir.mkdir(parents=True)
    vid_dir.mkdir(parents=True)
    photos = [p for _, p, _ in synthetic._photo_files()]
    for i in range(n_images):
        rgb = photos[i % len(photos)]
        s = 0.7 + 0.3 * ((i * 7) % 5) / 4
        rgb = cv2.resize(rgb, (int(rgb.shape[1] * s), int(rgb.shape[0] * s)))
        rgb = np.clip(rgb.astype(np.int16) + (i % 3 - 1) * 12, 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(img_dir / f"img_{i:03d}.jpg", quality=92)
    crop_dir = root / "crops"  # 224 px face crops, as prepare writes them: the model-only measurement
    crop_dir.mkdir(parents=True)
    from dftune.portable import crop_square, get_detector, guide_square, largest

    det = get_detector("retinaface")
    for f in sorted(img_dir.iterdir()):
        rgb = np.asarray(Image.open(f).convert("RGB"))
        b = largest(det.detect(rgb))
        box = guide_square(b.x1, b.y1, b.x2, b.y2, rgb.shape[1], rgb.shape[0])
        Image.fromarray(crop_square(rgb, box, 224)).save(crop_dir / f"{f.stem}.png")
    for v in range(n_videos):
        ph, bg = synthetic.identity(v), synthetic._background(v, width, height)
        frames = [synthetic.render_frame(ph.rgb, ph.face, bg, k / (n_frames - 1), motion_seed=v)[0]
                  for k in range(n_frames)]
        synthetic.write_video(vid_dir / f"vid_{v:02d}.mp4", frames)
    return img_dir, vid_dir, crop_dir


class GuideWay:
    """The guide's inference: per crop, processor(images=...) then the model on a batch of 1."""

    def __init__(self, model_dir: Path, detector: str, margin: float = 1.3, size: int = 224):
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        from dftune.portable import get_detector

        self.model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
        self.proc = AutoImageProcessor.from_pretrained(model_dir)
        self.det = get_detector(detector) if detector != "none" else None
        self.margin, self.size = margin, size

    def crop(self, rgb):
        from dftune.portable import crop_square, guide_square, largest, whole_image_box

        if self.det is None:
            return rgb
        h, w = rgb.shape[:2]
        f = largest(self.det.detect(rgb))
        box = guide_square(f.x1, f.y1, f.x2, f.y2, w, h, self.margin) if f else whole_image_box(w, h)
        return crop_square(rgb, box, self.size)

    def prob(self, crop, tta: bool) -> float:
        import torch
        from PIL import Image

        views = [Image.fromarray(crop)] + ([Image.fromarray(np.ascontiguousarray(crop[:, ::-1]))] if tta else [])
        ps = []
        with torch.no_grad():
            for v in views:
                x = self.proc(images=v, return_tensors="pt")
                ps.append(torch.softmax(self.model(**x).logits, -1)[0, 1].item())
        return float(np.mean(ps))

    def image(self, path, tta):
        from PIL import Image

        return self.prob(self.crop(np.asarray(Image.open(path).convert("RGB"))), tta)

    def images_per_s(self, paths, tta):
        t = time.perf_counter()
        for p in paths:
            self.image(p, tta)
        return len(paths) / (time.perf_counter() - t)

    def video(self, path, tta, frames=10):
        import cv2

        cap = cv2.VideoCapture(str(path))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        ps = []
        for i in np.linspace(0, n - 1, frames).astype(int):  # the guide seeks to each index
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(i))
            ok, bgr = cap.read()
            if ok:
                ps.append(self.prob(self.crop(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), tta))
        cap.release()
        return float(np.mean(ps)), len(ps)

    def videos(self, paths, frames, tta=False):
        return [self.video(p, tta, frames) for p in paths]


def run_dftune(model_dir, inputs, backend, tta, detector, frames, batch):
    from dftune import scoring
    from dftune.stages import predict

    models = scoring.load_models([str(model_dir)], device="cpu", backend=backend)
    items = predict.collect_inputs([inputs])
    s = predict.PredictSettings(tta=("flip",) if tta else (), batch_size=batch, detector=detector, frames=frames,
                          progress=False)
    predict.score_files(models, items[:1], s)  # warm-up (detector build, first forward)
    t = time.perf_counter()
    res = predict.score_files(models, items, s)
    dt = time.perf_counter() - t
    assert not any(r.error for r in res), [r.error for r in res if r.error]
    return dt, sum(r.frames for r in res), res


def clock(a, sub: Path, img_dir: Path, vid_dir: Path, crop_dir: Path) -> dict:
    """``--clock``: videos/s and images/s of predict and of the script with 1 and all workers, against the
    guide's loop, per detector, with the model alone (224 px crops, no detector) as the ceiling."""
    import runpy

    from dftune import scoring
    from dftune.portable import workers
    from dftune.stages import predict

    all_w = workers.default_workers()
    models = scoring.load_models([str(sub)], device="cpu")
    script = runpy.run_path(str(sub / "predict_submission.py"))
    imgs, vids = sorted(img_dir.iterdir()), sorted(vid_dir.iterdir())
    out: dict = {"workers_all": all_w, "rows": []}

    def rate(n, fn, *args):
        t = time.perf_counter()
        fn(*args)
        return n / (time.perf_counter() - t)

    def row(way, det, w, kind, per_s):
        out["rows"].append({"way": way, "detector": det, "workers": w, "kind": kind, "per_s": per_s})
        print(f"{way:8} {det:10} workers={w}  {kind:6}/s {per_s:7.3f}", flush=True)

    s0 = predict.PredictSettings(tta=(), batch_size=a.batch_size, detector="none", progress=False, workers=0)
    items = predict.collect_inputs([crop_dir])
    predict.score_files(models, items[:2], s0)
    row("model", "none", 0, "crop", rate(len(items), predict.score_files, models, items, s0))
    out["ceiling_videos_per_s"] = out["rows"][-1]["per_s"] / a.frames
    print(f"ceiling (model only): {out['ceiling_videos_per_s']:.3f} videos/s at {a.frames} frames", flush=True)
    for det in a.clock_detectors.split(","):
        guide = GuideWay(sub, det)
        guide.image(imgs[0], False)
        row("guide", det, 1, "video", rate(len(vids), guide.videos, vids, a.frames))
        row("guide", det, 1, "image", rate(len(imgs), guide.images_per_s, imgs, False))
        for w in dict.fromkeys((1, all_w)):
            s = predict.PredictSettings(tta=(), batch_size=a.batch_size, detector=det, frames=a.frames,
                                        progress=False, workers=w)
            for kind, folder, n in (("video", vid_dir, len(vids)), ("image", img_dir, len(imgs))):
                files = predict.collect_inputs([folder])
                row("predict", det, w, kind, rate(n, predict.score_files, models, files, s))
            pr = script["Predictor"](sub, tta="none", detector=det, frames=a.frames, batch_size=a.batch_size,
                                     workers=w)
            for kind, files in (("video", vids), ("image", imgs)):
                row("script", det, w, kind, rate(len(files), pr.predict_paths, files))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="base", choices=list(ARCH))
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--videos", type=int, default=3)
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--detector", default="dlib", choices=["dlib", "retinaface"])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--backends", default="torch,int8,onnx")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=None, help="JSON file for the numbers")
    ap.add_argument("--clock", action="store_true",
                    help="instead: predict and the script with 1 and all worker processes vs the guide's loop "
                         "(no TTA, fp32), videos/s and images/s per detector, model-only ceiling")
    ap.add_argument("--clock-detectors", default="dlib,retinaface")
    ap.add_argument("--video-size", default="640x360", help="WxH of the made videos (--clock)")
    a = ap.parse_args()

    import torch

    from dftune.stages import export

    if a.threads:
        torch.set_num_threads(a.threads)
    root = Path(tempfile.mkdtemp(prefix="dftune-bench-predict-"))
    try:
        model = build_model(root / "model", a.arch)
        sub = root / "submit"
        if a.clock:
            export.run(model, sub, export.ExportSettings(n_samples=2, bench_seconds=0))
            w, h = (int(v) for v in a.video_size.split("x"))
            dirs = make_inputs(root / "in", a.images, a.videos, w, h, max(60, 2 * a.frames))
            results = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "arch": a.arch,
                       "images": a.images, "videos": a.videos, "frames_per_video": a.frames,
                       "video_size": a.video_size, **clock(a, sub, *dirs)}
            if a.out:
                Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
            return
        export.run(model, sub, export.ExportSettings(int8="int8" in a.backends, onnx="onnx" in a.backends,
                                              n_samples=4, int8_tolerance=1.0, bench_seconds=0))
        img_dir, vid_dir, crop_dir = make_inputs(root / "in", a.images, a.videos)
        guide, guide_crops = GuideWay(sub, a.detector), GuideWay(sub, "none")
        imgs, vids, crops = sorted(img_dir.iterdir()), sorted(vid_dir.iterdir()), sorted(crop_dir.iterdir())
        guide.image(imgs[0], False)  # warm-up
        results = {"cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "arch": a.arch,
                   "images": len(imgs), "videos": len(vids), "frames_per_video": a.frames,
                   "detector": a.detector, "batch_size": a.batch_size, "runs": []}
        for tta in (False, True):
            g = {"photos": guide.images_per_s(imgs, tta), "crops": guide_crops.images_per_s(crops, tta)}
            t, nf = time.perf_counter(), 0
            for p in vids:
                nf += guide.video(p, tta, a.frames)[1]
            g["video_frames"] = nf / (time.perf_counter() - t)
            results["runs"].append({"way": "guide (fp32, batch 1)", "tta": tta,
                                    **{k + "_per_s": v for k, v in g.items()}})
            print(f"guide        tta={tta!s:5}  " + "  ".join(f"{k}/s {v:7.2f}" for k, v in g.items()), flush=True)
            for backend in a.backends.split(","):
                d = {}
                dt, n, _ = run_dftune(sub, img_dir, backend, tta, a.detector, a.frames, a.batch_size)
                d["photos"] = n / dt
                dt, n, _ = run_dftune(sub, crop_dir, backend, tta, "none", a.frames, a.batch_size)
                d["crops"] = n / dt
                dt, n, _ = run_dftune(sub, vid_dir, backend, tta, a.detector, a.frames, a.batch_size)
                d["video_frames"] = n / dt
                results["runs"].append({"way": f"dftune {backend}", "tta": tta,
                                        **{k + "_per_s": v for k, v in d.items()},
                                        **{k + "_x_guide": v / g[k] for k, v in d.items()}})
                print(f"dftune {backend:5} tta={tta!s:5}  " +
                      "  ".join(f"{k}/s {v:7.2f} ({v / g[k]:4.2f}x)" for k, v in d.items()), flush=True)
        rep = json.loads((sub / "export_report.json").read_text())
        results["sizes_mb"] = {"fp32": rep["exports"]["plain"]["size_bytes"] / 1e6,
                               **{k: v["size_bytes"] / 1e6 for k, v in rep["exports"].items() if k != "plain"}}
        print("sizes MB:", {k: round(v, 1) for k, v in results["sizes_mb"].items()})
        if a.out:
            Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
