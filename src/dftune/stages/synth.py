"""Stage ``synth``: self-blended pseudo-fakes written to disk as a prepared dataset.

Reads a prepared folder (``manifest.csv`` + crops), makes ``per_real`` pseudo-fakes
(:func:`dftune.sbi.self_blend`) from every real crop of the chosen splits (default:
train only; evaluation data is never altered), and writes a new prepared folder:

- ``OUT/<split>/fake/SBI_<video_id>_f<frame>_<k>.jpg``: the pseudo-fakes (label 1,
  method ``SBI``, one pseudo-video per real video and k);
- every row of the input it keeps, its crop hard-linked (copied across file systems)
  under the same relative path, so OUT is self-contained and can be moved;
- ``OUT/manifest.csv``, ``OUT/settings.json`` (the input's crop settings, so training
  records the right preprocessing) and ``OUT/synth.json`` (this stage's settings and counts).

``OUT`` goes straight into ``dftune train --data OUT``. Randomness is a function of
(seed, crop path, k), so a crop's pseudo-fake does not depend on the order or on the
number of workers, and a re-run with the same settings only does what is missing.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dftune.atomic import read_json, write_bytes, write_json
from dftune.prepared import SPLITS, Row, counts, image_path, manifest_file, read_manifest, write_manifest

log = logging.getLogger(__name__)

METHOD = "SBI"


@dataclass
class SynthConfig:
    data: Path
    out: Path
    splits: tuple[str, ...] = ("train",)
    per_real: int = 1
    seed: int = 0
    keep_fakes: bool = True  # keep the input's fakes in the synthesised splits (False: reals + SBI only)
    quality: int = 95
    workers: int = 1
    sbi: dict = field(default_factory=dict)  # SBISettings overrides
    progress: bool = True

    def identity(self) -> dict:
        """What decides the output; a re-run into the same folder must match it."""
        from dftune.sbi import SBISettings

        return {"data": str(Path(self.data).resolve()), "splits": list(self.splits), "per_real": self.per_real,
                "seed": self.seed, "keep_fakes": self.keep_fakes, "quality": self.quality,
                "sbi": SBISettings.make(**self.sbi).to_dict()}


def pseudo_name(row: Row, k: int) -> str:
    return f"{row.split}/fake/{METHOD}_{row.video_id}_f{row.frame_index:05d}_{k}.jpg"


def pseudo_row(row: Row, k: int, per_real: int) -> Row:
    vid = row.video_id if per_real == 1 else f"{row.video_id}~{k}"
    return Row(path=pseudo_name(row, k), label=1, method=METHOD, video=f"{METHOD}/{vid}", video_id=vid,
               target_id=row.target_id or row.video_id, source_id=row.target_id or row.video_id,
               frame_index=row.frame_index, split=row.split, box_x=row.box_x, box_y=row.box_y,
               box_size=row.box_size, frame_width=row.frame_width, frame_height=row.frame_height,
               detector=row.detector, score=row.score, landmarks=row.landmarks)


def row_rng(seed: int, row: Row, k: int) -> np.random.Generator:
    return np.random.default_rng((int(seed), zlib.crc32(row.path.encode()), int(k)))


def make_pseudo_fake(src: Path, row: Row, k: int, seed: int, settings=None) -> np.ndarray:
    """Read one real crop and return its k-th pseudo-fake (uint8 RGB); raises ValueError naming the file."""
    import cv2

    from dftune.sbi import self_blend

    bgr = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ValueError(f"{src}: cannot decode as an image")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    try:
        marks = row.landmark_points()
    except ValueError:
        log.warning("%s: unreadable landmarks %r; using the crop geometry", src, row.landmarks[:40])
        marks = None
    out, _ = self_blend(rgb, marks, row_rng(seed, row, k), settings=settings)
    return out


def _link(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


_W: dict = {}


def _init(cfg: SynthConfig) -> None:
    from dftune.sbi import SBISettings

    _W["cfg"], _W["settings"] = cfg, SBISettings.make(**cfg.sbi)
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # pragma: no cover
        pass


def _job(job: tuple[Row, int]) -> tuple[str, str]:
    """Write one pseudo-fake; returns (path, error or '')."""
    import cv2

    row, k = job
    cfg = _W["cfg"]
    rel = pseudo_name(row, k)
    dst = Path(cfg.out) / rel
    if dst.exists() and dst.stat().st_size > 0:
        return rel, ""
    try:
        img = make_pseudo_fake(image_path(cfg.data, row), row, k, cfg.seed, _W["settings"])
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, cfg.quality])
        if not ok:
            raise ValueError(f"{dst}: JPEG encoding failed")
        write_bytes(dst, buf.tobytes())
        return rel, ""
    except Exception as e:  # one bad crop never stops the batch
        return rel, f"{image_path(cfg.data, row)}: {e}"


def run(cfg: SynthConfig) -> dict:
    """Write the pseudo-fakes and the combined manifest; returns the summary (also in OUT/synth.json)."""
    cfg.data, cfg.out = Path(cfg.data), Path(cfg.out)
    bad = [s for s in cfg.splits if s not in SPLITS]
    if bad:
        raise ValueError(f"--split: unknown split(s) {', '.join(bad)}; choose from {', '.join(SPLITS)}")
    if cfg.per_real < 1:
        raise ValueError(f"--per-real must be at least 1; got {cfg.per_real}")
    src_manifest = manifest_file(cfg.data)
    if cfg.out.resolve() == src_manifest.parent.resolve():
        raise ValueError(f"{cfg.out}: --out must be a new folder, not the prepared input itself")
    ident = cfg.identity()
    state = cfg.out / "synth.json"
    if state.exists():
        have = read_json(state).get("settings", {})
        diff = [k for k in ident if have.get(k) != ident[k]]
        if diff:
            raise ValueError(f"{cfg.out}: already holds synth output made with other settings "
                             f"({', '.join(diff)}); use another --out, or the same settings to resume")
    rows = read_manifest(src_manifest)
    synth_splits = set(cfg.splits)
    reals = [r for r in rows if r.split in synth_splits and r.label == 0]
    if not reals:
        raise ValueError(f"{src_manifest}: no real crop in split(s) {', '.join(cfg.splits)} to self-blend")
    kept = [r for r in rows if not (r.split in synth_splits and r.label == 1 and not cfg.keep_fakes)]
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_json(state, {"settings": ident, "complete": False})

    t0 = time.perf_counter()
    problems: list[str] = []
    for r in kept:
        try:
            _link(image_path(cfg.data, r), cfg.out / r.path)
        except OSError as e:
            problems.append(f"{image_path(cfg.data, r)}: {e}")
    done: set[str] = set()
    jobs = [(r, k) for r in reals for k in range(cfg.per_real)]
    for rel, err in _execute(cfg, jobs):
        if err:
            problems.append(err)
            log.warning("%s", err)
        else:
            done.add(rel)
    new_rows = [pseudo_row(r, k, cfg.per_real) for r, k in jobs if pseudo_name(r, k) in done]
    linked = [r for r in kept if (cfg.out / r.path).exists()]
    all_rows = linked + new_rows
    write_manifest(cfg.out / "manifest.csv", all_rows)
    src_settings = src_manifest.parent / "settings.json"
    if src_settings.exists():
        shutil.copyfile(src_settings, cfg.out / "settings.json")
    elapsed = time.perf_counter() - t0
    summary = {
        "settings": ident,
        "complete": not problems,
        "input": str(src_manifest),
        "out": str(cfg.out),
        "pseudo_fakes": len(new_rows),
        "from_reals": len(reals),
        "kept_rows": len(linked),
        "dropped_fakes": len(rows) - len(kept),
        "problems": problems[:100],
        "n_problems": len(problems),
        "elapsed_s": round(elapsed, 2),
        "crops": counts(all_rows),
    }
    write_json(state, summary)
    return summary


def _execute(cfg: SynthConfig, jobs: list):
    from dftune.parallel import imap_progress

    yield from imap_progress(_job, jobs, initializer=_init, initargs=(cfg,), workers=cfg.workers, desc="synth",
                             unit="crop", progress=cfg.progress, chunksize=16, serial_below=64)
