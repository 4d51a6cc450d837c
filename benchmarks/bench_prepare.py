"""Benchmark: `dftune prepare` frames/s against the guide's method, same tree, same run.

    python benchmarks/bench_prepare.py [--ids 6] [--frames-per-video 300] [--workers N] [--work DIR]
                                       [--detectors dlib,retinaface] [--detect-width auto]

Builds (once, cached in --work) an FF++-shaped tree of 1280x720 H.264 videos, then times:
  guide      the guide's way re-implemented: one process, OpenCV seek to each of the 10 frames,
             dlib HOG on the frame downscaled to width 640 with upsample 1, crop, JPEG q95
  decode     decode-only floor: dftune's sequential PyAV decoding of the same 10 frames, one process
  dlib       `dftune prepare --detector dlib --workers N`
  retinaface `dftune prepare --detector retinaface --workers N` (--detect-width auto: 320 wide, again
             at 640 when the face is small or missing)
each dftune way in a fresh Python process (a command's cold start: fork server, imports, detectors),
the guide once before them and (--guide-runs 2) once after, and prints frames/s, the ratios to the
guide's runs pooled (and to each), and the box agreement with the guide:
dlib's share of frames with IoU >= 0.9 (goal: 95% of frames both detect), and for
retinaface the faces found and whether its crop centres fall on the guide's faces.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def guide_way(videos: list[Path], out: Path, frames: int = 10) -> tuple[int, float, dict]:
    """The guide's preprocessing as its text describes it (our code, its behaviour)."""
    import cv2
    import dlib

    from dftune.portable import guide_square

    det = dlib.get_frontal_face_detector()
    out.mkdir(parents=True, exist_ok=True)
    boxes = {}
    n = 0
    t0 = time.perf_counter()
    for v in videos:
        cap = cv2.VideoCapture(str(v))
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if total <= 0:
            continue
        for i in np.linspace(0, total - 1, frames).astype(int):
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(i))
            ok, bgr = cap.read()
            if not ok:
                continue
            n += 1
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            h, w = rgb.shape[:2]
            scale = 1.0
            small = rgb
            if w > 640:
                scale = 640 / w
                small = cv2.resize(rgb, (640, int(h * scale)))
            faces = det(small, 1)
            if len(faces) == 0:
                continue
            f = max(faces, key=lambda r: r.width() * r.height())
            x1, y1, x2, y2 = (int(f.left() / scale), int(f.top() / scale), int(f.right() / scale),
                              int(f.bottom() / scale))
            x, y, s = guide_square(x1, y1, x2, y2, w, h, 1.3)
            crop = cv2.resize(rgb[y:y + s, x:x + s], (224, 224), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(out / f"{v.parent.parent.parent.name}_{v.stem}_frame{i:03d}.jpg"),
                        cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            boxes[(str(v), int(i))] = (x, y, s)
        cap.release()
    return n, time.perf_counter() - t0, boxes


def decode_only(videos: list[Path], frames: int = 10) -> tuple[int, float]:
    from dftune.portable import sample_frames

    n = 0
    t0 = time.perf_counter()
    for v in videos:
        for _ in sample_frames(v, frames):
            n += 1
    return n, time.perf_counter() - t0


def _timed_run(root: Path, out: Path, detector: str, workers: int, detect_width: str) -> dict:
    """``prepare.run`` timed from its call to its return (in the process that calls this)."""
    from dftune.stages.prepare import PrepareConfig, run

    extra = {} if detect_width == "auto" else {"detect_width": detect_width}  # (a dftune without it: auto)
    t0 = time.perf_counter()
    s = run(PrepareConfig(root=root, out=out, splits=str(root / "splits"), detector=detector, workers=workers,
                          progress=False, **extra))
    return {"sampled": s["frames"]["sampled"], "s": time.perf_counter() - t0}


def dftune_way(root: Path, out: Path, detector: str, workers: int,
               detect_width: str = "auto") -> tuple[int, float, dict, float | None]:
    """One ``dftune prepare`` in a fresh Python process, as a command runs: its fork server, worker
    imports and detectors all start cold (in this process, the previous way's would be warm)."""
    import subprocess

    from dftune.prepared import read_manifest

    shutil.rmtree(out, ignore_errors=True)
    job = json.dumps([str(root), str(out), detector, workers, detect_width])
    r = subprocess.run([sys.executable, __file__, "--one-run", job], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"prepare --detector {detector} failed:\n{r.stderr[-3000:]}")
    got = json.loads(r.stdout.strip().splitlines()[-1])
    # wall time of the whole command: indexing, pool start, worker imports, merge included
    dt = got["s"]
    s = {"frames": {"sampled": got["sampled"]}}
    # steady state: from the moment every worker has finished its first video (process start,
    # imports and detector construction behind it) to the last video, by the part files' mtimes
    stamps = sorted((p.stat().st_mtime, json.loads(p.read_text())["frames_sampled"])
                    for p in (out / ".parts").rglob("*.json"))
    skip = min(workers, len(stamps) - 1)
    steady = sum(f for _, f in stamps[skip:]) / max(stamps[-1][0] - stamps[skip - 1][0], 1e-9) if skip else None
    boxes = {}
    for r in read_manifest(out):
        kind = "original_sequences" if r.label == 0 else "manipulated_sequences"
        sub = "youtube" if r.label == 0 else r.method
        path = root / kind / sub / "c23" / "videos" / f"{r.video_id}.mp4"
        boxes[(str(path), r.frame_index)] = (r.box_x, r.box_y, r.box_size)
    return s["frames"]["sampled"], dt, boxes, steady


def agreement(ref: dict, other: dict) -> dict:
    from dftune.geometry import square_iou

    both = [k for k in ref if k in other]
    ious = [square_iou(ref[k], other[k]) for k in both]
    centred = 0
    for k in both:
        (x, y, s), (ox, oy, os_) = ref[k], other[k]
        cx, cy = ox + os_ / 2, oy + os_ / 2
        # crop centre inside the central half of the guide's crop = same face
        centred += (abs(cx - (x + s / 2)) < s / 4) and (abs(cy - (y + s / 2)) < s / 4)
    return {"guide_faces": len(ref), "faces": len(other), "both": len(both),
            "iou_ge_0.9": round(float(np.mean([i >= 0.9 for i in ious])) if ious else 0.0, 3),
            "median_iou": round(float(np.median(ious)), 3) if ious else 0.0,
            "centred_on_same_face": round(centred / len(both), 3) if both else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ids", type=int, default=6, help="identities (videos = ids x 5)")
    ap.add_argument("--frames-per-video", type=int, default=300,
                    help="length of each generated video (FF++ videos are mostly 300+ frames)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="dftune worker processes")
    ap.add_argument("--work", default="/tmp/dftune-bench-prepare", help="folder for the tree and outputs")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    ap.add_argument("--detectors", default="dlib,retinaface",
                    help="dftune ways to time, comma-separated (default: dlib,retinaface)")
    ap.add_argument("--detect-width", default="auto",
                    help="dftune prepare's --detect-width for the retinaface way (default: auto = 320, "
                         "again at 640 for small faces; 640 = the single pass of earlier versions)")
    ap.add_argument("--guide-runs", type=int, default=2,
                    help="times the guide's way runs: once before the dftune ways, the rest after; the ratios use "
                         "all of them pooled, so that a load that comes or goes mid-way skews them less (default: 2)")
    ap.add_argument("--one-run", default=None, help=argparse.SUPPRESS)  # internal: one timed prepare.run
    args = ap.parse_args()
    if args.one_run:
        root, out, detector, workers, detect_width = json.loads(args.one_run)
        print(json.dumps(_timed_run(Path(root), Path(out), detector, workers, detect_width)))
        return 0

    from dftune.synthetic import build_ffpp_tree

    work = Path(args.work)
    root = work / f"ffpp-720p-{args.ids}x{args.frames_per_video}"
    t = time.perf_counter()
    info = build_ffpp_tree(root, n_ids=args.ids, frames=args.frames_per_video, width=1280, height=720)
    print(f"tree: {info['videos']} videos of {args.frames_per_video} frames at 1280x720 "
          f"({time.perf_counter() - t:.0f} s to build/check) in {root}", flush=True)
    videos = sorted(root.rglob("*.mp4"))

    res: dict = {"guide_runs": []}

    def run_guide(when: str) -> dict:
        load0 = os.getloadavg()[0]
        n, dt, boxes = guide_way(videos, work / "guide-out")
        g = {"when": when, "frames": n, "s": dt, "loadavg": [load0, os.getloadavg()[0]], "boxes": boxes}
        res["guide_runs"].append(g)
        print(f"guide      {n / dt:7.1f} frames/s  (1 process, seek per frame, dlib HOG; {when}; load average "
              f"{load0:.2f} -> {g['loadavg'][1]:.2f})", flush=True)
        return g

    guide_boxes = run_guide("before the dftune ways")["boxes"]
    n, dt = decode_only(videos)
    res["decode"] = {"frames": n, "s": dt}
    print(f"decode     {n / dt:7.1f} frames/s  (floor: sequential decode only, 1 process)", flush=True)
    ways = []
    for det in [d.strip() for d in args.detectors.split(",") if d.strip()]:
        load0 = os.getloadavg()[0]
        n, dt, boxes, steady = dftune_way(root, work / f"out-{det}", det, args.workers,
                                          args.detect_width if det == "retinaface" else "auto")
        res[det] = {"frames": n, "s": dt, "agreement": agreement(guide_boxes, boxes), "steady_frames_per_s": steady,
                    "loadavg": [load0, os.getloadavg()[0]]}
        ways.append(det)
        print(f"{det:10s} {n / dt:7.1f} frames/s  whole command ({args.workers} workers, fresh process; load average "
              f"{load0:.2f} -> {os.getloadavg()[0]:.2f})", flush=True)
    for _ in range(1, args.guide_runs):
        run_guide("after the dftune ways")
    # the baseline: every guide run of this invocation pooled (the load may drift between them)
    gf, gs = sum(g["frames"] for g in res["guide_runs"]), sum(g["s"] for g in res["guide_runs"])
    guide_rate = gf / gs
    res["guide"] = {"frames": gf, "s": gs, "frames_per_s": guide_rate,
                    "runs_frames_per_s": [g["frames"] / g["s"] for g in res["guide_runs"]]}
    for g in res["guide_runs"]:
        g.pop("boxes")
    print(f"\nratios against the guide's {guide_rate:.2f} frames/s (its {len(res['guide_runs'])} runs pooled: "
          f"{', '.join(f'{r:.2f}' for r in res['guide']['runs_frames_per_s'])}):")
    print(f"decode     x{(res['decode']['frames'] / res['decode']['s']) / guide_rate:.2f}")
    for det in ways:
        r = res[det]
        r["ratio"] = (r["frames"] / r["s"]) / guide_rate
        r["ratio_per_guide_run"] = [(r["frames"] / r["s"]) / x for x in res["guide"]["runs_frames_per_s"]]
        r["steady_ratio"] = r["steady_frames_per_s"] / guide_rate if r["steady_frames_per_s"] else None
        print(f"{det:10s} x{r['ratio']:.2f} vs guide, whole command (against each guide run: "
              f"{', '.join(f'x{x:.2f}' for x in r['ratio_per_guide_run'])})", flush=True)
        if r["steady_ratio"]:
            print(f"{'':10s} x{r['steady_ratio']:.2f} vs guide, steady state ({r['steady_frames_per_s']:.1f} frames/s "
                  f"after each worker's first video: process start, imports, detector built)", flush=True)
        print(f"{'':10s} agreement with the guide's boxes: {json.dumps(r['agreement'])}", flush=True)
    res["cpu_count"] = os.cpu_count()
    res["loadavg_end"] = os.getloadavg()
    print(f"cpus {os.cpu_count()}, load average at the end {os.getloadavg()[0]:.2f} (other work skews the figures)")
    res["workers"] = args.workers
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
