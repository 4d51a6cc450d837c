"""Several people in a video: follow one person, or score every face and take the max? (issue 18, item 3)

    dftune demo --out demo/                                  # once: data + a trained model (~2 min)
    python benchmarks/bench_faces.py --demo demo/ --out bench_faces.json

DFDC-style videos made from the demo's held-out (val + test) videos: two people side by side, one of them
drawn at ``--scale`` of the other (which one is larger, and on which side, drawn at random per video). A fake
video holds one manipulated person (a fake of the demo's four methods) beside an untouched person of another
identity; a real video holds two real people. Each video is scored by ``dftune predict`` with the demo's
trained model under each ``--faces`` rule:

* ``all`` (predict's default): every person's track pooled apart, the video's score the max (DFDC's winners')
* ``follow``: one person followed across the frames (the track with the largest mean box), as prepare does
* ``largest``: the largest face of each frame (the old per-frame rule)

and the same videos with one person only (the fake or real one alone) as the reference. Prints macro F1 at the
model's stored threshold and at the best threshold on these videos, ROC AUC, and mean prob_fake of reals and
fakes. Writes the numbers to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import tempfile
from pathlib import Path

import numpy as np


def _frames(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def _side_by_side(a: list, b: list, scale_b: float, b_left: bool) -> list[np.ndarray]:
    import cv2

    n = min(len(a), len(b))
    h, w = a[0].shape[:2]
    out = []
    for fa, fb in zip(a[:n], b[:n], strict=True):
        sb = cv2.resize(fb, (int(w * scale_b) // 2 * 2, int(h * scale_b) // 2 * 2), interpolation=cv2.INTER_AREA)
        H = max(h, sb.shape[0])
        canvas = np.full((H, w + sb.shape[1], 3), 90, np.uint8)
        (xa, xb) = (sb.shape[1], 0) if b_left else (0, w)
        canvas[(H - h) // 2:(H - h) // 2 + h, xa:xa + w] = fa
        canvas[(H - sb.shape[0]) // 2:(H - sb.shape[0]) // 2 + sb.shape[0], xb:xb + sb.shape[1]] = sb
        out.append(canvas)
    return out


def build(demo: Path, out: Path, scale: float, seed: int) -> dict[str, int]:
    """``out/two/*.mp4`` (two people) and ``out/one/*.mp4`` (the same scored person alone) -> labels by name."""
    from dftune.synthetic import write_video

    tree = demo / "FaceForensics++"
    pairs = [tuple(p) for s in ("val", "test") for p in json.loads((tree / "splits" / f"{s}.json").read_text())]
    ids = sorted({i for p in pairs for i in p})
    real = {i: tree / "original_sequences" / "youtube" / "c23" / "videos" / f"{i}.mp4" for i in ids}
    fakes = sorted(p for p in (tree / "manipulated_sequences").glob("*/c23/videos/*.mp4")
                   if p.stem.split("_")[0] in ids)
    rng = random.Random(seed)
    labels: dict[str, int] = {}
    (out / "two").mkdir(parents=True, exist_ok=True)
    (out / "one").mkdir(parents=True, exist_ok=True)
    jobs = [(f"real_{i}", real[i], 0, i) for i in ids]
    jobs += [(f"fake_{p.parts[-4]}_{p.stem}", p, 1, p.stem.split("_")[0]) for p in fakes]
    for name, path, label, target in jobs:
        used = set(Path(path).stem.split("_"))
        other = rng.choice([i for i in ids if i not in used and i != target])
        main, beside = _frames(path), _frames(real[other])
        big_main = rng.random() < 0.5  # which person is larger: the scored one or the untouched one
        frames = _side_by_side(main, beside, 1 / scale if big_main else scale, rng.random() < 0.5)
        write_video(out / "two" / f"{name}.mp4", frames, crf=18)
        write_video(out / "one" / f"{name}.mp4", main, crf=18)
        labels[name] = label
    return labels


def score(folder: Path, model: Path, faces: str, labels: dict[str, int]) -> dict:
    from dftune import metrics
    from dftune.cli import main

    csv_path = folder.parent / f"{folder.name}_{faces}.csv"
    assert main(["predict", str(folder), "--model", str(model), "--csv", str(csv_path), "--faces", faces,
                 "--no-progress"]) == 0
    with open(csv_path, newline="") as f:
        rows = {Path(r["filename"]).stem: r for r in csv.DictReader(f)}
    names = sorted(labels)
    y = np.array([labels[n] for n in names])
    p = np.array([float(rows[n]["prob_fake"]) for n in names])
    lab = np.array([int(rows[n]["label"]) for n in names])
    m = metrics.binary_metrics(y, p)
    best_t, best_f1 = metrics.best_threshold(y, p)
    from sklearn.metrics import f1_score

    return {"f1_stored": float(f1_score(y, lab, average="macro")), "f1_best": float(best_f1),
            "best_threshold": float(best_t), "auc": float(m["auc"]), "mean_p_real": float(p[y == 0].mean()),
            "mean_p_fake": float(p[y == 1].mean()), "n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--demo", type=Path, required=True, help="a kept `dftune demo --out DIR` folder")
    ap.add_argument("--scale", type=float, default=0.85, help="the smaller person's size relative to the larger")
    ap.add_argument("--seed", type=int, default=0, help="which person is larger / on the left")
    ap.add_argument("--work", type=Path, default=None, help="folder for the videos (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=Path("bench_faces.json"), help="JSON of the numbers")
    a = ap.parse_args()
    model = a.demo / "run" / "best"
    work = a.work or Path(tempfile.mkdtemp(prefix="bench_faces_"))
    labels = build(a.demo, work, a.scale, a.seed)
    res = {f"one person, --faces {f}": score(work / "one", model, f, labels) for f in ("follow", "all")}
    for faces in ("follow", "all", "largest"):
        res[f"two people, --faces {faces}"] = score(work / "two", model, faces, labels)
    print(f"{len(labels)} videos ({sum(labels.values())} fake), model {model}, scale {a.scale}, seed {a.seed}\n")
    print("| videos, rule | macro F1 at the stored threshold | macro F1 at the best threshold | AUC | "
          "mean prob real / fake |")
    print("|---|---|---|---|---|")
    for k, r in res.items():
        print(f"| {k} | {r['f1_stored']:.3f} | {r['f1_best']:.3f} (t {r['best_threshold']:.2f}) | {r['auc']:.3f} | "
              f"{r['mean_p_real']:.3f} / {r['mean_p_fake']:.3f} |")
    a.out.write_text(json.dumps({"scale": a.scale, "seed": a.seed, "results": res}, indent=1))


if __name__ == "__main__":
    main()
