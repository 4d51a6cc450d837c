"""Benchmark `dftune predict` against the guide's way, on this CPU.

Images/s on a folder of face photos (face detection + crop + model), on the same faces
as 224 px crops (the model alone, no detector) and frames/s on short videos, with and
without flip TTA, for the fp32 (torch), int8 and ONNX backends, each against the guide's
way (OpenCV seek per sampled frame, the same face crop, the image processor called per
crop, batch 1, one forward per view) measured in the same run on the same inputs.

The model is a ViT-B/16 (224 px, the baseline's architecture) with random weights, built
from a config (no download); ``--arch small`` / ``tiny`` for a quick run. Usage:

    python benchmarks/bench_predict.py --images 16 --videos 3 --out bench_predict.json
    python benchmarks/bench_predict.py --clock --arch tiny --frames 30 --videos 8 --images 2 --workers 0,1,2
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


STAGES = ("decode", "detect", "crop", "model", "write")


class Clock:
    """CPU-seconds (``time.process_time``: every thread of this process, so torch's too) and wall seconds per stage.
    CPU-seconds hardly move when other programs load the machine; wall seconds do."""

    def __init__(self):
        self.cpu = dict.fromkeys(STAGES, 0.0)
        self.wall = dict.fromkeys(STAGES, 0.0)

    def __call__(self, stage, fn, *args, **kwargs):
        c, w = time.process_time(), time.perf_counter()
        out = fn(*args, **kwargs)
        self.cpu[stage] += time.process_time() - c
        self.wall[stage] += time.perf_counter() - w
        return out


def stage_clock(models, files, frames: int, detector: str, detect_every: int, tta, faces: str = "all"):
    """Each video through predict's steps one at a time in this process, each step timed: ``(Clock, crops per
    file, {file: {frame position: (crop, box)}} of the first person)``."""
    from dftune import portable, scoring

    det = portable.get_detector(detector)
    clk, n_crops, first = Clock(), 0, {}
    rows = []
    for path in files:
        rgbs = clk("decode", lambda p=path: [rgb for _, rgb in portable.sample_frames(p, frames)])
        people = clk("detect", portable.video_people, rgbs, det, faces, detect_every)

        def framed(people=people, rgbs=rgbs):
            return [[(t, *portable.frame_face(rgbs[t], f, 1.3, 224)[::2]) for t, f in enumerate(p) if f is not None]
                    for p in people]

        crops = clk("crop", framed)
        first[path.name] = {t: (c, b) for t, c, b in (crops[0] if crops else [])}
        flat = [c for p in crops for _, c, _ in p]
        n_crops += len(flat)
        probs = clk("model", scoring.ensemble_prob_fake, models, flat, tta)[0] if flat else np.zeros(0)
        rows.append(portable.FileResult(path.name, str(path), "video", prob_fake=float(probs.mean()) if flat else 0.5))
    out = Path(tempfile.mkdtemp()) / "p.csv"
    clk("write", lambda: out.write_text(portable.to_csv(rows, portable.CsvFormat())))
    return clk, n_crops / max(1, len(files)), first


def crop_difference(a: dict, b: dict) -> dict:
    """The first person's crops of two runs on the same frames: mean absolute pixel difference (0-255) and box IoU,
    and the frames only one of them has a face in."""
    from dftune.portable.faces import Face, iou

    diffs, ious, only = [], [], 0
    for name in a:
        for t in set(a[name]) | set(b.get(name, {})):
            if t not in a[name] or t not in b.get(name, {}):
                only += 1
                continue
            (ca, ba), (cb, bb) = a[name][t], b[name][t]
            diffs.append(float(np.abs(ca.astype(np.int16) - cb.astype(np.int16)).mean()))
            ious.append(iou(Face(ba[0], ba[1], ba[0] + ba[2], ba[1] + ba[2]),
                            Face(bb[0], bb[1], bb[0] + bb[2], bb[1] + bb[2])))
    d, o = np.asarray(diffs or [0.0]), np.asarray(ious or [1.0])
    return {"mean_abs_px": round(float(d.mean()), 2), "max_abs_px": round(float(d.max()), 2),
            "mean_box_iou": round(float(o.mean()), 3), "min_box_iou": round(float(o.min()), 3),
            "frames_compared": len(diffs), "frames_one_side_only": only}


def cpu_now() -> float:
    """CPU-seconds of this process and of its children that have ended (the pool's workers, once shut down)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def clock(a, sub: Path, img_dir: Path, vid_dir: Path, crop_dir: Path) -> dict:
    """``--clock``: where a video's time goes (CPU-seconds per file by stage, and the cores each stage used), the
    crops and the detection saved by ``--detect-every``, predict's and the script's scaling over 1..nproc
    workers (wall, CPU-seconds of all processes, cores used), and the estimate for N files on C cores with a GPU."""
    import runpy

    from dftune import scoring
    from dftune.portable import parse_tta, workers
    from dftune.stages import predict

    nproc = workers.default_workers()
    models = scoring.load_models([str(sub)], device="cpu")
    tta = parse_tta(a.tta)
    vids = sorted(vid_dir.iterdir())
    out: dict = {"nproc": nproc, "tta": list(tta), "stages": [], "scaling": []}
    print(f"== CPU-seconds per video by stage ({a.frames} frames, {a.clock_detector}, TTA {a.tta}; process_time, "
          "torch on 1 thread) ==")
    print(f"{'detect-every':>12} " + " ".join(f"{s:>8}" for s in STAGES) + f" {'total':>8}  cores used (cpu/wall) "
          "per stage")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the stages' work, one core each: more threads add OpenMP's spinning, not work
    firsts = {}
    for k in [int(v) for v in a.detect_every.split(",")]:
        stage_clock(models, vids[:1], a.frames, a.clock_detector, k, tta)  # warm-up: the detector, first forward
        clk, per_file, firsts[k] = stage_clock(models, vids, a.frames, a.clock_detector, k, tta)
        per = {s: clk.cpu[s] / len(vids) for s in STAGES}
        cores = {s: clk.cpu[s] / clk.wall[s] if clk.wall[s] > 0 else 0.0 for s in STAGES}
        row = {"detect_every": k, "cpu_s_per_file": per, "cores_used": cores, "crops_per_file": per_file}
        if k != 1 and 1 in firsts:
            row["crops_vs_every_frame"] = crop_difference(firsts[1], firsts[k])
        out["stages"].append(row)
        print(f"{k:>12} " + " ".join(f"{per[s]:8.3f}" for s in STAGES) + f" {sum(per.values()):8.3f}  "
              + " ".join(f"{s} {cores[s]:.2f}" for s in STAGES), flush=True)
        if "crops_vs_every_frame" in row:
            print(f"{'':>12} crops vs --detect-every 1: {row['crops_vs_every_frame']}", flush=True)
    torch.set_num_threads(threads)
    print("== scaling: all files, in-process (0) and 1..nproc worker processes; CPU-seconds of every process ==")
    script = runpy.run_path(str(sub / "predict_submission.py"))
    files = predict.collect_inputs([vid_dir])

    def ready(way, w):  # built before the clock starts, as a run loads its model once
        if way == "predict":
            s = predict.PredictSettings(tta=tta, batch_size=a.batch_size, detector=a.clock_detector, frames=a.frames,
                                        progress=False, workers=w)
            return lambda: predict.score_files(models, files, s)
        pr = script["Predictor"](sub, tta=",".join(tta) or "none", detector=a.clock_detector, frames=a.frames,
                                 batch_size=a.batch_size, workers=w)
        pr.predict_paths(vids[:1])  # warm-up: a fresh model's first forward pass
        return lambda: pr.predict_paths(vids)

    for way in ("predict", "script"):
        base = None
        for w in [0, *range(2, nproc + 1)] if not a.workers else [int(v) for v in a.workers.split(",")]:
            best = None
            fn = ready(way, w)
            for _ in range(a.repeat):
                c, t = cpu_now(), time.perf_counter()
                fn()
                wall, cpu = time.perf_counter() - t, cpu_now() - c
                if best is None or wall < best[0]:
                    best = (wall, cpu)
            wall, cpu = best
            base = base or wall
            row = {"way": way, "workers": w, "wall_s": wall, "cpu_s": cpu, "cpu_s_per_file": cpu / len(vids),
                   "cores_used": cpu / wall, "x_first": base / wall}
            out["scaling"].append(row)
            print(f"{way:8} workers={w:<3} wall {wall:7.2f} s  CPU {cpu:7.2f} s ({cpu / len(vids):.3f}/file)  "
                  f"cores used {cpu / wall:4.2f}  x{base / wall:4.2f} of the first", flush=True)
    st = next(r for r in out["stages"] if r["detect_every"] == 1)["cpu_s_per_file"]
    framing = st["decode"] + st["detect"] + st["crop"]
    views = 1 + len(tta)  # each TTA view is one more forward of the crop
    crops = next(r for r in out["stages"] if r["detect_every"] == 1)["crops_per_file"] * views
    n, c, g, eff = a.estimate_files, a.estimate_cores, a.gpu_rate, a.efficiency
    t_cpu = n * (framing + st["model"]) / (c * eff)
    t_gpu = max(n * framing / (max(1, c - 1) * eff), n * crops / g)
    out["estimate"] = {"files": n, "cores": c, "gpu_crops_per_s": g, "efficiency": eff, "framing_cpu_s_per_file":
                       framing, "model_cpu_s_per_file": st["model"], "views_per_crop": views,
                       "crops_per_file": crops / views, "cpu_only_s": t_cpu, "with_gpu_s": t_gpu}
    print(f"== estimate: {n} files on {c} cores ==\n"
          f"assumptions: (1) these files' CPU-seconds per file by stage hold for the contest's files (same frames, "
          f"size, detector); (2) worker processes scale at {eff:.0%} of linear (--efficiency; measured above as "
          f"x_first / workers); (3) with a GPU, the model runs at {g:g} crops/s (--gpu-rate, an assumed figure, not "
          f"measured here) while {max(1, c - 1)} cores frame (one feeds the GPU), and the two overlap fully; "
          f"(4) {views} view(s) per crop (TTA {a.tta}).\n"
          f"CPU only: {n} x ({framing:.3f} framing + {st['model']:.3f} model) CPU-s / ({c} x {eff:.2f}) = "
          f"{t_cpu / 60:.1f} min\n"
          f"with a GPU: max({n} x {framing:.3f} / ({max(1, c - 1)} x {eff:.2f}), {n} x {crops:.1f} crops / {g:g}/s) "
          f"= {t_gpu / 60:.1f} min", flush=True)
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
                    help="instead: CPU-seconds per video by stage (decode, detect, crop, model, writing) and the cores "
                         "each used, per --detect-every; predict's and the script's scaling over --workers; the "
                         "estimate for --estimate-files on --estimate-cores with a GPU at --gpu-rate")
    ap.add_argument("--clock-detector", default="dlib", choices=["dlib", "retinaface"])
    ap.add_argument("--detect-every", default="1,2,3", help="--clock: detect-every values to measure (1 first)")
    ap.add_argument("--tta", default="flip", help="--clock: TTA views (flip, none)")
    ap.add_argument("--workers", default="", help="--clock: worker counts to measure, e.g. 1,2 (default: 0 = in "
                    "process, then 2..nproc)")
    ap.add_argument("--repeat", type=int, default=1, help="--clock: runs per worker count, the fastest kept")
    ap.add_argument("--estimate-files", type=int, default=1000)
    ap.add_argument("--estimate-cores", type=int, default=8)
    ap.add_argument("--gpu-rate", type=float, default=1000.0,
                    help="crops/s the model is assumed to score on the GPU (an L4 with a ViT-B/16 in half precision: "
                         "an assumption, not measured here)")
    ap.add_argument("--efficiency", type=float, default=0.9,
                    help="share of linear scaling assumed for worker processes in the estimate")
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
