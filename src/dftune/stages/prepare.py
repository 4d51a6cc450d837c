"""Stage ``prepare``: videos and images to face crops plus a manifest.

Flow: index the source -> assign identity-safe splits -> (this shard's share) -> for
each video not already complete, in worker processes: sample frames, detect faces,
crop with the guide's geometry, write JPEGs and a per-video *part* file -> merge all
parts into ``OUT/manifest.csv`` and ``OUT/summary.json``.

Resumability comes from the part files: a video is complete when its part
(``OUT/.parts/<method>/<video_id>.json``) exists; crops and parts are written
atomically, so a killed run redoes at most the videos that were in flight.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dftune.atomic import FolderBusy, WriteError, folder_lock, read_json, write_bytes, write_json
from dftune.geometry import points_to_crop
from dftune.portable.decision import AUTO_FIRST_MIN_FACE as FIRST_MIN_FACE
from dftune.portable.decision import AUTO_FIRST_WIDTH as FIRST_WIDTH
from dftune.prepared import PARTS, Row, counts, load_parts, write_manifest
from dftune.sources import Item, SourceError, get_indexer
from dftune.sources.ffpp import DEFAULT_METHODS, load_split_files
from dftune.sources.hf import HfOptions
from dftune.sources.splits import ACTOR_METHODS, assign_actors, assign_generators, assign_official, assign_random

log = logging.getLogger(__name__)

# settings that change the crops or where they go; a re-run must match them
_CROP_KEYS = ("source", "compression", "split", "splits", "seed", "ratios", "frames", "every", "size", "margin",
              "detector", "detect_width", "landmarks", "quality", "no_detect", "detect_every")

# settings.json keys written only when set (earlier folders have none): which rows are where
_SPLIT_KEYS = ("holdout_generators", "hf")

# --detect-width auto: RetinaFace looks at the frame 320 wide first and keeps what it finds there when
# the largest face is at least 32 px of that (a tenth of the width: 128 px of a 1280-wide frame); no
# face, or only smaller ones, and it looks again at 640, the width dlib always uses (the guide's)
# (the values live in portable, which resolves "auto" the same way for dftune.json, predict and the script)


@dataclass
class PrepareConfig:
    root: Path
    out: Path
    source: str = "ffpp"
    splits: str | None = None  # folder with train/val/test.json; None = FF++'s official (shipped)
    split: str = "official"  # official | random | generator (whole generators dealt to train/val/test)
    holdout_generators: tuple[str, ...] = ()  # generators (fake methods) whose fakes all go to test
    hf: HfOptions = field(default_factory=HfOptions)  # --source hf: the dataset's config, columns, sampling
    seed: int = 0
    ratios: tuple[float, float, float] = (0.72, 0.14, 0.14)
    compression: str = "c23"
    methods: tuple[str, ...] = DEFAULT_METHODS
    actors: bool = False
    frames: int = 10
    every: int = 0
    size: int = 224
    margin: float = 1.3
    detector: str = "dlib"
    detect_every: int = 1  # the detector on every K-th sampled frame, boxes interpolated (portable.video_people)
    detect_width: int | str = "auto"  # auto: dlib at 640 (the guide's); retinaface 320, again at 640 for small faces
    landmarks: bool = False
    quality: int = 95
    no_detect: bool = False  # use each frame whole (pre-extracted face frames), no detector
    class_map: str | None = None  # --source deepfakebench: labels -> 0/1 beside DeepfakeBench's label_dict
    frames_root: str | None = None  # --source deepfakebench: where the JSON's frame paths resolve
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    decode_threads: int = 0  # 0: 1 thread per worker when workers > 1, FFmpeg's choice otherwise
    shard: tuple[int, int] | None = None  # (K, N), K in 1..N
    merge_only: bool = False
    progress: bool = True

    def crop_settings(self) -> dict:
        d = {k: getattr(self, k) for k in _CROP_KEYS}
        # the seed deals identities: a random split, FF++'s actors, and every source but ffpp/folders
        by_seed = (self.split in ("random", "generator") or self.actors or "DeepFakeDetection" in self.methods
                   or self.source not in ("ffpp", "folders"))
        d["ratios"] = list(self.ratios) if by_seed else None
        d["seed"] = self.seed if by_seed else None
        d["splits"] = str(self.splits) if self.splits else None
        if self.holdout_generators:  # absent when not set: earlier settings.json stay valid
            d["holdout_generators"] = list(self.holdout_generators)
        if self.source == "hf":
            d["hf"] = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.hf).items()}  # as JSON reads
        if self.no_detect or self.detect_every == 1:
            del d["detect_every"]  # every frame detected, as in earlier versions: their settings.json stay valid
        if not self.no_detect:
            del d["no_detect"]  # settings.json of a detecting run stays as it was
        if self.no_detect or self.detector_kwargs() == {"detect_width": 640}:
            del d["detect_width"]  # the one width of earlier versions: their settings.json stay valid
        elif self.detect_width != "auto":
            d["detect_width"] = int(self.detect_width)
        return d

    def detector_kwargs(self) -> dict:
        """How the detector looks at a frame (see ``--detect-width``)."""
        w = self.detect_width
        if w == "auto":
            if self.detector == "retinaface":
                return {"detect_width": 640, "first_width": FIRST_WIDTH, "first_min_face": FIRST_MIN_FACE}
            return {"detect_width": 640}
        try:
            w = int(w)
        except (TypeError, ValueError):
            w = 0
        if w < 16:
            raise SourceError(f"--detect-width must be auto or a width in pixels (16 or more), "
                              f"got {self.detect_width!r}")
        return {"detect_width": w}


# ---------------------------------------------------------------- indexing and splits

def index_items(cfg: PrepareConfig, warnings: list, info: dict | None = None) -> tuple[list[Item], list[dict]]:
    """All items of the source with their split set; also the excluded ones with reasons. ``info`` receives
    what summary.json keeps of the source (a dataset's licence, where the generators went)."""
    info = info if info is not None else {}
    items, excluded = _index_split(cfg, warnings, info)
    kept, dropped, placement = assign_generators(items, cfg.holdout_generators, cfg.split == "generator",
                                                 cfg.seed, cfg.ratios)
    if placement:
        info["generators"] = placement
    return kept, excluded + dropped


def _index_split(cfg: PrepareConfig, warnings: list, info: dict) -> tuple[list[Item], list[dict]]:
    indexer = get_indexer(cfg.source)
    items = indexer(cfg.root, compression=cfg.compression, methods=cfg.methods, actors=cfg.actors,
                    warnings=warnings, seed=cfg.seed, ratios=cfg.ratios, class_map=cfg.class_map,
                    frames_root=cfg.frames_root, out=cfg.out, hf=cfg.hf, info=info, progress=cfg.progress)
    if cfg.split not in ("official", "random", "generator"):
        raise SourceError(f"--split-by must be official, random or generator, got {cfg.split!r}")
    # DeepFakeDetection and its actors have no official split: deal the actors out
    # (seeded, by the ratios); a fake whose two actors land in different splits is dropped
    dropped: list[dict] = []
    dfd = [it for it in items if it.method in ACTOR_METHODS and not it.preset_split]
    if dfd:
        res = assign_actors(dfd, cfg.seed, cfg.ratios)
        for it in res.kept:
            it.preset_split = it.split
        dropped = res.excluded
        items = [it for it in items if it.method not in ACTOR_METHODS or it.preset_split]
        warnings.append({"file": str(cfg.root), "error": f"{len(dfd)} videos have no official split: {res.message()}",
                         "actor_split": res.counts()})
    # --split-by generator: reals (and the identities) dealt as --split-by random does (FF++: its official pairs),
    # then assign_generators moves whole generators
    if cfg.split == "random" or (cfg.split == "generator" and cfg.source != "ffpp"):
        return assign_random(items, cfg.seed, cfg.ratios), dropped
    if cfg.source == "folders" and not cfg.splits and not all(it.preset_split for it in items):
        raise SourceError(f"{cfg.root}: a folders source has no FF++ ids; lay it out as train/val/test/{{real,fake}} "
                          f"or use --split-by random")
    id_split = load_split_files(cfg.splits)
    kept, excluded = assign_official(items, id_split)
    return kept, excluded + dropped


def in_shard(item: Item, shard: tuple[int, int] | None) -> bool:
    """Stable, listing-independent share: crc32 of the video key modulo N."""
    if not shard:
        return True
    k, n = shard
    return zlib.crc32(item.key.encode()) % n == k - 1


def part_path(out: Path, item: Item) -> Path:
    return out / PARTS / item.method / f"{item.video_id}.json"


def crop_name(item: Item, frame_index: int) -> str:
    """Unique across methods (the guide's ``{video}_frame{i}`` overwrote three methods' fakes)."""
    return f"{item.split}/{'fake' if item.label else 'real'}/{item.method}_{item.video_id}_f{frame_index:05d}.jpg"


# ---------------------------------------------------------------- the per-video work

_WORKER: dict = {}


def _init_worker(cfg: PrepareConfig) -> None:
    """Build the detector once per process (dlib's costs ~0.4 s)."""
    import multiprocessing

    from dftune.portable import get_detector

    if multiprocessing.parent_process() is not None:  # a pool's worker: one per core already
        import cv2

        cv2.setNumThreads(1)  # OpenCV's own pool would only add hand-offs between the workers
    _WORKER["cfg"] = cfg
    _WORKER["detector"] = get_detector("none") if cfg.no_detect else get_detector(cfg.detector,
                                                                                   **cfg.detector_kwargs())
    _WORKER["predictor"] = (_landmark_predictor() if cfg.landmarks and cfg.detector == "dlib" and not cfg.no_detect
                            else None)


def _landmark_predictor():
    try:
        import dlib
        import face_recognition_models
    except ImportError:
        raise SourceError("--landmarks with --detector dlib needs dlib's 68-point model: "
                          "pip install face-recognition-models, or use --detector retinaface (5 points)") from None
    return dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())


def process_item(item: Item, cfg: PrepareConfig, detector, predictor=None) -> dict:
    """Crops for one video or image; never raises for bad input (errors go in the part)."""
    import cv2

    from dftune.portable import (
        Face,
        FaceCrop,
        VideoError,
        crop_square,
        frame_face,
        load_image,
        sample_frames,
        video_people,
        whole_image_box,
    )
    from dftune.sources.deepfakebench import landmarks_of
    from dftune.sources.frames import KIND as FRAMES
    from dftune.sources.frames import read_frames

    rows: list[dict] = []
    sampled = no_face = 0
    error = ""
    threads = cfg.decode_threads or (1 if cfg.workers > 1 else 0)
    # RetinaFace's two passes look at small frames and the crop at one square: the frames stay
    # YUV and convert only those (dlib keeps the guide's resize of the whole RGB frame)
    lazy = not cfg.no_detect and "first_width" in cfg.detector_kwargs()
    try:
        if item.kind == "video":
            frames: Iterable = sample_frames(item.path, cfg.frames, cfg.every, threads=threads, lazy=lazy)
        elif item.kind == FRAMES:  # a folder of frame images (--source frames, list)
            frames = read_frames(item, cfg.frames, cfg.every)
        else:
            frames = [(0, load_image(item.path))]
        still = item.kind not in ("video", FRAMES)
        chosen = None
        if not cfg.no_detect:
            # every frame's faces first, then one person followed across the file (portable.follow, as
            # predict does); a still image: its largest face
            frames = list(frames)
            chosen = video_people([rgb for _, rgb in frames], detector, "follow", cfg.detect_every, still)[0]
        for n, (fi, rgb) in enumerate(frames):
            sampled += 1
            h, w = rgb.shape[:2]
            if cfg.no_detect:  # a pre-extracted face frame: used whole, resized like a crop
                box = whole_image_box(w, h)
                whole = Face(box[0], box[1], box[0] + box[2], box[1] + box[2])
                fc = FaceCrop(crop_square(rgb, box, cfg.size), box, whole)
            elif chosen[n] is None:
                fc = None
            else:
                # the framing predict applies (portable.frame_face): a still image's guide square when it
                # fits, padded out to it when it would leave the image; a frame's, clamped as the guide's
                crop, how, box = frame_face(rgb, chosen[n], cfg.margin, cfg.size, still=still)
                fc = FaceCrop(crop, box, chosen[n]) if how != "whole:no-face" else None
            if fc is None:
                no_face += 1
                continue
            face, box, crop = fc.face, fc.box, fc.crop
            rel = crop_name(item, fi)
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, cfg.quality])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            write_bytes(cfg.out / rel, buf.tobytes())
            marks = ""
            given = landmarks_of(item, fi) if cfg.no_detect else None  # DeepfakeBench's .npy beside the frame
            if cfg.landmarks or given:
                pts = given or face.landmarks
                if predictor is not None:
                    import dlib

                    shape = predictor(rgb, dlib.rectangle(face.x1, face.y1, face.x2, face.y2))
                    pts = [(p.x, p.y) for p in shape.parts()]
                if pts:
                    import json

                    marks = json.dumps(points_to_crop(pts, box, cfg.size))
            rows.append(asdict(Row(
                path=rel, label=item.label, method=item.method, video=item.key, video_id=item.video_id,
                target_id=item.target_id, source_id=item.source_id, frame_index=fi, split=item.split,
                box_x=box[0], box_y=box[1], box_size=box[2], frame_width=w, frame_height=h,
                detector="none" if cfg.no_detect else cfg.detector, score=round(face.score, 4), landmarks=marks,
            )))
    except VideoError as e:
        error = str(e)
    except WriteError:
        raise  # a full disk or a read-only --out is no bad input: stop, and resume when it is fixed
    except Exception as e:  # one bad file never stops the batch
        error = f"{item.path}: {type(e).__name__}: {e}"
    if error and not rows:
        status = "failed"
    else:
        status = "done"
    return {"key": item.key, "file": str(item.path), "split": item.split, "label": item.label,
            "method": item.method, "status": status, "error": error, "frames_sampled": sampled,
            "frames_no_face": no_face, "rows": rows}


def _work(item: Item) -> dict:
    cfg = _WORKER["cfg"]
    part = process_item(item, cfg, _WORKER["detector"], _WORKER.get("predictor"))
    write_json(part_path(cfg.out, item), part, indent=None)
    return part


# ---------------------------------------------------------------- merge and summary

def merge(cfg: PrepareConfig, items: list[Item], warnings: list, excluded: list, run_stats: dict,
          info: dict | None = None) -> dict:
    """Manifest and summary from every part in OUT (all shards' work)."""
    parts = load_parts(cfg.out)
    keys = {it.key for it in items}
    rows = [Row(**r) for k, p in parts.items() if k in keys and p["status"] == "done" for r in p["rows"]]
    done = [p for k, p in parts.items() if k in keys and p["status"] == "done"]
    failed = [p for k, p in parts.items() if k in keys and p["status"] == "failed"]
    pending = sorted(k for k in keys if k not in parts)
    write_manifest(cfg.out / "manifest.csv", rows)
    c = counts(rows)
    one_class = one_class_splits(c) if not pending else []
    for msg in one_class:
        log.warning("%s: %s", cfg.out, msg)
    summary = {
        "complete": not pending,
        "root": str(cfg.root),
        "out": str(cfg.out),
        "settings": cfg.crop_settings(),
        "videos": {
            "indexed": len(items) + len(excluded),
            "excluded": len(excluded),
            "in_splits": len(items),
            "done": len(done),
            "failed": len(failed),
            "pending": len(pending),
            "with_no_face": sum(1 for p in done if p["frames_sampled"] and not p["rows"]),
        },
        "frames": {"sampled": sum(p["frames_sampled"] for p in done + failed),
                   "no_face": sum(p["frames_no_face"] for p in done + failed)},
        "crops": {"total": len(rows), "by_split": c},
        "failures": [{"file": p["file"], "error": p["error"]} for p in failed],
        "partial_videos": [{"file": p["file"], "error": p["error"]} for p in done if p["error"]],
        "no_face_videos": [p["file"] for p in done if p["frames_sampled"] and not p["rows"]],
        "excluded": excluded,
        "warnings": warnings,
        "one_class_splits": one_class,
        "pending": pending[:100],
        "this_run": run_stats,
        **(info or {}),  # "dataset" (--source hf: name, licence, columns), "generators" (held out, dealt)
    }
    write_json(cfg.out / "summary.json", summary)
    return summary


def one_class_splits(by_split: dict) -> list[str]:
    """A line for each split that ended with crops of one class only: its F1 is meaningless (1.0 with one
    class) and its AUC undefined, so a model chosen on it is chosen on nothing."""
    out = []
    for split in ("train", "val", "test"):
        c = by_split.get(split)
        if c and (c["real"] == 0 or c["fake"] == 0):
            have = "real" if c["fake"] == 0 else "fake"
            out.append(f"the {split} split holds {have} crops only ({c['real']} real, {c['fake']} fake): "
                       f"{'train cannot select a model on it' if split == 'val' else 'its metrics mean nothing'}; "
                       f"re-deal the splits (--split-by random, other --ratios or --seed) or add the missing class")
    return out


def _check_settings(cfg: PrepareConfig) -> None:
    path = cfg.out / "settings.json"
    want = cfg.crop_settings()
    if path.exists():
        have = read_json(path)
        diff = {k: (have.get(k), want.get(k)) for k in _CROP_KEYS + _SPLIT_KEYS if have.get(k) != want.get(k)}
        if diff:
            detail = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            hint = (" (a folder prepared before --detect-width existed detected at width 640: resume it with "
                    "--detect-width 640)" if set(diff) == {"detect_width"} and have.get("detect_width") is None
                    else "")
            raise SourceError(f"{cfg.out}: already prepared with other settings ({detail}){hint}; "
                              f"use another --out, or the same settings to resume")
    else:  # with what else the command said, so that `prepare --resume OUT` needs nothing more
        write_json(path, {**want, "command": {"root": str(Path(cfg.root).resolve()), "methods": list(cfg.methods),
                                              "actors": cfg.actors, "class_map": cfg.class_map,
                                              "frames_root": cfg.frames_root}})


def resumed(out: str | os.PathLike) -> dict:
    """``prepare --resume OUT``: the settings OUT was prepared with (``PrepareConfig`` keywords), from its
    settings.json (the root from summary.json for a folder prepared before settings.json recorded it)."""
    out = Path(out)
    path = out / "settings.json"
    if not path.exists():
        raise SourceError(f"{path}: no settings.json: {out} was not prepared (give ROOT and --out to start)")
    saved = read_json(path)
    if "mix" in saved:
        raise SourceError(f"{out}: a mix (--merge-into) of prepared folders, not a prepared folder: nothing to resume")
    cmd = dict(saved.get("command") or {})
    if not cmd.get("root") and (out / "summary.json").exists():
        cmd["root"] = read_json(out / "summary.json").get("root")
    if not cmd.get("root"):
        raise SourceError(f"{out}: settings.json and summary.json name no root: give ROOT and --out to resume")
    d = {k: saved[k] for k in _CROP_KEYS if saved.get(k) is not None}
    if "detect_width" not in d and not saved.get("no_detect"):
        d["detect_width"] = "auto" if saved.get("detector", "dlib") == "dlib" else 640  # what it left out meant
    d["ratios"] = tuple(d["ratios"]) if "ratios" in d else PrepareConfig.ratios
    if saved.get("holdout_generators"):  # the split settings the re-run is checked against, as recorded
        d["holdout_generators"] = tuple(saved["holdout_generators"])
    if saved.get("hf"):
        d["hf"] = HfOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["hf"].items()})
    if "methods" in cmd:
        cmd["methods"] = tuple(cmd["methods"])
    return {**d, **{k: v for k, v in cmd.items() if v is not None}, "out": out}


# ---------------------------------------------------------------- the stage

def run(cfg: PrepareConfig) -> dict:
    """Prepare crops; returns the summary (also at ``OUT/summary.json``)."""
    cfg.out = Path(cfg.out)
    cfg.root = Path(cfg.root)
    if cfg.source == "deepfakebench" and not cfg.no_detect:
        log.info("--source deepfakebench: its frames are face crops already; used whole (--detector none)")
        cfg.no_detect = True
    if cfg.shard:
        k, n = cfg.shard
        if not (1 <= k <= n):
            raise SourceError(f"--shard {k}/{n}: K must be between 1 and N")
    if not cfg.no_detect:
        cfg.detector_kwargs()  # a bad --detect-width stops here, not in every worker
        if not isinstance(cfg.detect_every, int) or cfg.detect_every < 1:
            raise SourceError(f"--detect-every must be a whole number 1 or more, got {cfg.detect_every!r}")
    warnings: list[dict] = []
    info: dict = {}
    items, excluded = index_items(cfg, warnings, info)
    if not items:
        raise SourceError(f"{cfg.root}: no video is in any split ({len(excluded)} excluded; see their reasons with -v)")
    if not cfg.merge_only and cfg.landmarks and cfg.detector == "dlib" and not cfg.no_detect:
        _landmark_predictor()  # fail early with the install hint, not in every worker
    cfg.out.mkdir(parents=True, exist_ok=True)
    workers = _start_workers(cfg, items)
    lock = "lock" if not cfg.shard else f"lock-{cfg.shard[0]}of{cfg.shard[1]}"
    try:
        with folder_lock(cfg.out, lock, "dftune prepare" + (f" --shard {cfg.shard[0]}/{cfg.shard[1]}" if cfg.shard
                                                             else "")):
            return _run_locked(cfg, items, excluded, warnings, workers, info)
    except FolderBusy as e:
        raise SourceError(str(e)) from None
    finally:
        if workers is not None:
            workers.close()


def _preload(cfg: PrepareConfig) -> tuple[str, ...]:
    """What every worker imports: loaded once by the fork server instead (see dftune.parallel)."""
    mods = ["dftune.stages.prepare", "dftune.portable", "dftune.sources.frames", "numpy", "cv2", "av", "PIL.Image"]
    if not cfg.no_detect:
        mods += (["onnxruntime", "retinaface.weights", "retinaface.preprocess", "retinaface.postprocess"]
                 if cfg.detector == "retinaface" else [cfg.detector])
    return tuple(mods)


def _start_workers(cfg: PrepareConfig, items: list[Item]):
    """The worker processes, started while this one takes the lock, cleans up and reads what
    earlier runs left (a resume reads thousands of part files): they spend that time importing
    and building their detectors. None when the work will run in this process."""
    from dftune.parallel import Workers

    if cfg.merge_only or cfg.workers <= 1:
        return None
    mine = sum(1 for it in items if in_shard(it, cfg.shard))
    if mine < 2:
        return None
    return Workers(min(cfg.workers, mine), initializer=_init_worker, initargs=(cfg,), preload=_preload(cfg),
                   background=True)


def _run_locked(cfg: PrepareConfig, items: list, excluded: list, warnings: list, workers=None,
                info: dict | None = None) -> dict:
    _check_settings(cfg)

    if not cfg.shard:
        _remove_stale_temp_files(cfg.out)
    done_keys = {k for k, p in load_parts(cfg.out).items() if p.get("status") == "done"}
    mine = [it for it in items if in_shard(it, cfg.shard)]
    todo = [] if cfg.merge_only else [it for it in mine if it.key not in done_keys]
    stats = {"todo": len(todo), "skipped_complete": len(mine) - len(todo) if not cfg.merge_only else 0,
             "shard": list(cfg.shard) if cfg.shard else None, "workers": cfg.workers, "interrupted": False}
    t0 = time.perf_counter()
    frames = 0
    try:
        for part in _execute(cfg, todo, workers):
            frames += part["frames_sampled"]
            if part["status"] == "failed":
                log.warning("%s", part["error"])
    except KeyboardInterrupt:
        stats["interrupted"] = True
    elapsed = time.perf_counter() - t0
    stats.update(elapsed_s=round(elapsed, 2), frames=frames,
                 frames_per_s=round(frames / elapsed, 2) if elapsed > 0 and frames else 0.0)
    summary = merge(cfg, items, warnings, excluded, stats, info)
    if stats["interrupted"]:
        raise KeyboardInterrupt
    return summary


def _remove_stale_temp_files(out: Path) -> None:
    """Temporary files a killed run left behind (never those of a live shard: shards skip this)."""
    for p in out.rglob(".*.tmp-*"):
        p.unlink(missing_ok=True)


def _execute(cfg: PrepareConfig, todo: list[Item], workers=None):
    """Yield part dicts as videos finish, in one process or a pool (``workers``, started
    already, or one started here), with a progress bar."""
    from dftune.parallel import imap_progress

    frames = 0

    def rate(part: dict, elapsed: float) -> dict:
        nonlocal frames
        frames += part["frames_sampled"]
        return {"frames_s": f"{frames / max(elapsed, 1e-9):.1f}"}

    yield from imap_progress(_work, todo, initializer=_init_worker, initargs=(cfg,), workers=cfg.workers,
                             desc="prepare", unit="video", progress=cfg.progress, postfix=rate,
                             preload=_preload(cfg), pool=workers)
