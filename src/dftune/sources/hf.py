"""Hugging Face datasets (``--source hf NAME_OR_PATH``), read through the ``datasets`` library.

ROOT is one of:

- a hub id (``org/name``; ``--hf-config NAME``, ``--revision REV``), from the hub or its local cache;
- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
- parquet / arrow / csv / json files, or a folder of them, or an imagefolder (``real/``, ``fake/``
  folders of images; their names become the label column).

Columns (each guessed when its flag is not given; the guess is said in summary.json):

- ``--image-column``: the first ``Image`` / ``Video`` feature, else a column named image/img/video/file/path
  (a string column holds file paths, relative to the dataset's folder). No image column: an error naming
  the columns there are.
- ``--label-column`` (label, labels, is_fake, fake, class, target): a ``ClassLabel``'s names, numbers or
  words; ``--fake-values a,b`` / ``--real-values c,d`` or ``--class-map FILE`` say which is which; without
  them 0/1 and real/fake words (real, fake, original, deepfake, ...) are understood. A value that is none
  of these: an error naming the column and the values seen.
- ``--generator-column`` (generator, model, method, source_model, manipulation): becomes the manifest's
  ``method``; a row without one is ``real`` or ``fake`` by its label.
- ``--group-column`` (identity, subject, person, source_video, video_id): rows sharing a value (a person,
  a source video) never cross splits; without one each row is its own.
- ``--split-column`` (split): train/val/test per row; else the dataset's own splits (train, validation,
  test, ...). A set with a test split keeps it and deals train to train/val by group; with none, every
  row is dealt to train/val/test (with a warning), as for every source.

Sampling: ``--limit N`` (at most N rows of each of the dataset's splits) and ``--per-generator N`` (at
most N rows of each generator in each split), in the dataset's order; with ``--streaming`` nothing is
downloaded beyond the rows read, so a balanced sample of a terabyte set costs its size (the stream stops
once ``--limit`` is reached, or every generator a ``ClassLabel`` names is full).

Each kept row's image is written as the dataset holds it (its bytes, not re-encoded) to
``OUT/.hf/<settings hash>/files/``, and from there it is an ordinary image or video item: prepare's one
framing path (``portable.load_image``, detect + the guide's crop, or ``--no-detect`` for face-cropped
sets) makes its crops. Row ``i`` of split ``s`` is ``video_id`` ``s-<i>`` under its generator, so a run
stopped half way (also while streaming) reads the same rows again and skips the files already written,
never duplicating one; ``index.json`` there records the finished index, so a complete run is re-read
without touching the dataset. A row whose image is empty is skipped and counted; one whose bytes do not
decode fails in the crop step, counted and named in summary.json like any unreadable file.

The dataset's licence (its info, else its card's ``license:``) goes into summary.json's ``dataset``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from dftune.atomic import read_json, write_bytes, write_json
from dftune.sources import Item, SourceError
from dftune.sources.heldout import SPLIT_WORDS, split_around_test
from dftune.sources.splits import RATIOS

log = logging.getLogger(__name__)

STORE = ".hf"
IMAGE_NAMES = ("image", "images", "img", "jpg", "png", "picture", "video", "file", "file_path", "path",
               "image_path", "filepath")
LABEL_NAMES = ("label", "labels", "is_fake", "fake", "class", "target", "is_real")
GENERATOR_NAMES = ("generator", "model", "method", "source_model", "generator_name", "manipulation", "model_name")
GROUP_NAMES = ("identity", "subject", "person", "person_id", "source_video", "video_id", "id_source")
SPLIT_NAMES = ("split",)
_FILES = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


@dataclass
class HfOptions:
    """``prepare --source hf``'s own flags."""

    hf_config: str | None = None
    revision: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    fake_values: tuple[str, ...] = ()
    real_values: tuple[str, ...] = ()
    generator_column: str | None = None
    group_column: str | None = None
    split_column: str | None = None
    streaming: bool = False
    limit: int = 0
    per_generator: int = 0


def safe_name(name: str) -> str:
    """A generator's name as a folder and file-name part (``stabilityai/sdxl`` -> ``stabilityai_sdxl``)."""
    return re.sub(r"[^\w.+-]+", "_", str(name)).strip("_") or "unnamed"


# ---------------------------------------------------------------- loading

def _offline() -> bool:
    return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def load(root: str | Path, opts: HfOptions):
    """The dataset ROOT names, as ``datasets`` loads it (a dict of splits, or one split)."""
    try:
        import datasets
    except ImportError:
        raise SourceError("--source hf needs the datasets library: pip install datasets") from None
    path = Path(root)
    kw = {"streaming": opts.streaming}
    try:
        if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(str(path))  # save_to_disk's folder
            if opts.streaming:
                ds = (datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in ds.items()})
                      if isinstance(ds, datasets.DatasetDict) else ds.to_iterable_dataset())
            return ds
        if path.is_file():
            builder = _FILES.get(path.suffix.lower())
            if builder is None:
                raise SourceError(f"{path}: not a dataset file ({', '.join(_FILES)}) nor a dataset folder")
            return datasets.load_dataset(builder, data_files=str(path), **kw)
        if path.is_dir():
            return datasets.load_dataset(str(path), name=opts.hf_config, **kw)
        return datasets.load_dataset(str(root), name=opts.hf_config, revision=opts.revision, **kw)
    except SourceError:
        raise
    except (ConnectionError, FileNotFoundError) as e:
        if not path.exists() and _offline():
            raise SourceError(f"{root}: not in the local Hugging Face cache, and the hub is offline "
                              f"(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set): download it once online, or give "
                              f"a local copy (save_to_disk folder or parquet files)") from None
        raise SourceError(f"{root}: cannot load the dataset ({type(e).__name__}: {e})") from None
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds: say which dataset
        raise SourceError(f"{root}: cannot load the dataset ({type(e).__name__}: {e})") from None


def _splits(ds) -> list[tuple[str, object]]:
    """``[(name, split)]``, train first then val then test, then the rest."""
    if isinstance(ds, dict):  # DatasetDict, IterableDatasetDict
        names = list(ds.keys())
        return [(n, ds[n]) for n in sorted(names, key=lambda n: (_SPLIT_ORDER.get(SPLIT_WORDS.get(n.lower(), ""), 3),
                                                                  n))]
    return [(str(getattr(ds, "split", "") or ""), ds)]


def licence(root: str | Path, ds_info, opts: HfOptions) -> tuple[str | None, str | None]:
    """``(licence, where it was read)`` from the dataset's info, else its card (local README.md, or the
    hub's / cache's); ``(None, None)`` when neither says."""
    lic = getattr(ds_info, "license", None) if ds_info is not None else None
    if lic:
        return str(lic), "dataset info"
    path = Path(root)
    try:
        from huggingface_hub import DatasetCard

        if path.exists():
            readme = (path if path.is_dir() else path.parent) / "README.md"
            if not readme.is_file():
                return None, None
            card = DatasetCard.load(readme)
        else:
            from huggingface_hub import hf_hub_download

            card = DatasetCard.load(hf_hub_download(str(root), "README.md", repo_type="dataset",
                                                    revision=opts.revision))
        lic = card.data.to_dict().get("license")
    except Exception as e:  # noqa: BLE001 - a card that cannot be read leaves the licence unknown
        log.info("%s: no dataset card read (%s)", root, e)
        return None, None
    if isinstance(lic, (list, tuple)):
        lic = ", ".join(str(x) for x in lic)
    return (str(lic), "dataset card") if lic else (None, None)


# ---------------------------------------------------------------- columns

def _pick(names, given: str | None, guesses, what: str, root, required: bool = False) -> str | None:
    if given:
        if given not in names:
            raise SourceError(f"{root}: no column {given!r} for {what} (columns: {', '.join(names)})")
        return given
    low = {n.lower(): n for n in names}
    for g in guesses:
        if g in low:
            return low[g]
    if required:
        raise SourceError(f"{root}: no {what} column found (columns: {', '.join(names)}); name it with "
                          f"--{what.split()[0]}-column")
    return None


def _media_types() -> tuple:
    """``datasets``' Image feature, and its Video feature where the installed version has one."""
    import datasets

    return tuple(t for t in (datasets.Image, getattr(datasets, "Video", None)) if t is not None)


def image_column(features, given: str | None, root) -> tuple[str, str]:
    """``(column, kind)``: kind ``image`` or ``video`` (by the feature, or a path column's name)."""
    import datasets

    names = list(features)
    if given:
        _pick(names, given, (), "image", root)
        col = given
    else:
        typed = [n for n in names if isinstance(features[n], _media_types())]
        col = typed[0] if typed else _pick(names, None, IMAGE_NAMES, "image", root, required=True)
    f = features[col]
    if (not isinstance(f, datasets.Image) and isinstance(f, _media_types())) or (
            not isinstance(f, _media_types()) and "video" in col.lower()):
        return col, "video"
    return col, "image"


class Labels:
    """A label column's values -> 0 real / 1 fake."""

    def __init__(self, column: str, feature, opts: HfOptions, class_map: str | None, root):
        self.column, self.root = column, root
        self.names = list(getattr(feature, "names", None) or [])
        self.fake = {v.strip().lower() for v in opts.fake_values}
        self.real = {v.strip().lower() for v in opts.real_values}
        self.map: dict[str, int] = {}
        if class_map:
            from dftune.sources.deepfakebench import read_class_map

            self.map = {str(k).lower(): v for k, v in read_class_map(class_map).items()}
        self.seen: Counter = Counter()

    def name_of(self, value) -> str:
        if self.names and isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(self.names):
            return self.names[value]
        return str(value)

    def __call__(self, value) -> int | None:
        from dftune.portable import label_from_word

        name = self.name_of(value)
        self.seen[name] += 1
        key = name.strip().lower()
        if key in self.fake or str(value).lower() in self.fake:
            return 1
        if key in self.real or str(value).lower() in self.real:
            return 0
        if self.fake or self.real:  # the user named the values: the other side is what is left
            if self.fake and not self.real:
                return 0
            if self.real and not self.fake:
                return 1
        if key in self.map:
            return self.map[key]
        if isinstance(value, bool):
            return int(value)
        lab = label_from_word(name)
        return lab

    def error(self, value) -> SourceError:
        seen = ", ".join(repr(v) for v, _ in self.seen.most_common(20))
        return SourceError(f"{self.root}: column {self.column!r}: value {self.name_of(value)!r} is neither real nor "
                           f"fake (values seen: {seen}); say which is which with --fake-values / --real-values or "
                           f"--class-map FILE")


# ---------------------------------------------------------------- the index

def _fingerprint(root, opts: HfOptions, class_map: str | None) -> dict:
    return {"dataset": str(root), **asdict(opts), "class_map": str(class_map) if class_map else None}


def store_of(out: str | Path, fp: dict) -> Path:
    digest = hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(out) / STORE / digest


def _sniff(data: bytes, kind: str) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    return ".mp4" if kind == "video" else ".img"


def _store_file(dest: Path, data: bytes) -> None:
    """One row's bytes, written once: a resumed run finds it and leaves it (the write is atomic)."""
    if not dest.is_file():
        write_bytes(dest, data)


def _row_file(cell, kind: str, store: Path, base: Path | None, method: str, key: str) -> tuple[str | None, str]:
    """``(path on disk, "")`` for a row's image/video cell, or ``(None, reason)``."""
    if isinstance(cell, dict):
        data, src = cell.get("bytes"), cell.get("path")
    elif isinstance(cell, (bytes, bytearray)):
        data, src = bytes(cell), None
    elif isinstance(cell, str):
        data, src = None, cell
    elif cell is None:
        return None, "no image"
    else:
        return None, f"an image cell of type {type(cell).__name__}"
    if data:
        ext = Path(src).suffix.lower() if src and Path(src).suffix else _sniff(data, kind)
        dest = store / "files" / safe_name(method) / f"{key}{ext}"
        _store_file(dest, data)
        return str(dest), ""
    if src:
        p = Path(src)
        if not p.is_absolute() and base is not None:
            p = base / p
        if p.is_file():
            return str(p), ""
        return None, f"file {src} not found"
    return None, "empty image"


def materialise(root, opts: HfOptions, class_map: str | None, store: Path, progress: bool = True) -> dict:
    """Read the dataset's rows (streaming or not), keep the sample the options ask for, write each kept row's
    image once under ``store``; returns the index (also written to ``store/index.json``)."""

    from dftune.progress import bar

    ds = load(root, opts)
    splits = _splits(ds)
    if not splits:
        raise SourceError(f"{root}: the dataset has no split")
    features = splits[0][1].features
    if features is None:  # a stream whose features are not declared: resolve them from the first rows
        splits = [(n, s._resolve_features() if hasattr(s, "_resolve_features") else s) for n, s in splits]
        features = splits[0][1].features
    names = list(features)
    img_col, kind = image_column(features, opts.image_column, root)
    lab_col = _pick(names, opts.label_column, LABEL_NAMES, "label", root, required=True)
    gen_col = _pick(names, opts.generator_column, GENERATOR_NAMES, "generator", root)
    grp_col = _pick(names, opts.group_column, GROUP_NAMES, "group", root)
    spl_col = _pick(names, opts.split_column, SPLIT_NAMES, "split", root)
    labels = Labels(lab_col, features[lab_col], opts, class_map, root)
    gen_names = list(getattr(features[gen_col], "names", None) or []) if gen_col else []
    base = Path(root) if Path(root).is_dir() else Path(root).parent if Path(root).exists() else None
    cols = [c for c in (img_col, lab_col, gen_col, grp_col, spl_col) if c]
    split_names = [SPLIT_WORDS.get(n.lower(), "") for n, _ in splits]
    has_val = "val" in split_names
    rows: list[dict] = []
    skipped: list[dict] = []
    info = None
    for (name, split), word in zip(splits, split_names, strict=True):
        info = info or getattr(split, "info", None)
        if isinstance(features[img_col], _media_types()):
            split = split.cast_column(img_col, type(features[img_col])(decode=False))
        split = split.select_columns(cols)
        if not opts.streaming:
            _check_labels(split, labels)
        preset = "" if word == "train" and not has_val else word
        tag = safe_name(name or "all")
        per: Counter = Counter()
        kept = 0
        full_at = len(gen_names)  # a ClassLabel names every generator: the stream can stop when all are full
        b = bar(None if opts.streaming else len(split), f"read {name or 'dataset'}", "row", progress)
        try:
            for i, row in enumerate(split):
                b.update(1)
                lab = labels(row[lab_col])
                if lab is None:
                    raise labels.error(row[lab_col])
                gen = row[gen_col] if gen_col else None
                if gen_names and isinstance(gen, int) and 0 <= gen < len(gen_names):
                    gen = gen_names[gen]
                method = str(gen) if gen not in (None, "") else ("fake" if lab else "real")
                if opts.per_generator and per[method] >= opts.per_generator:
                    if full_at and sum(1 for v in per.values() if v >= opts.per_generator) >= full_at:
                        break
                    continue
                key = f"{tag}-{i:08d}"
                path, why = _row_file(row[img_col], kind, store, base, method, key)
                if path is None:
                    skipped.append({"row": f"{name or 'dataset'}[{i}]", "error": why})
                    continue
                split_of = preset
                if spl_col:
                    split_of = SPLIT_WORDS.get(str(row[spl_col]).strip().lower(), None)
                    if split_of is None:
                        raise SourceError(f"{root}: column {spl_col!r}: split {row[spl_col]!r} of row {i} is not "
                                          f"train, val or test")
                rows.append({"path": path, "kind": kind, "label": lab, "method": safe_name(method),
                             "generator": method, "video_id": key,
                             "group": str(row[grp_col]) if grp_col and row[grp_col] not in (None, "") else "",
                             "split": split_of})
                per[method] += 1
                kept += 1
                if opts.limit and kept >= opts.limit:
                    break
        finally:
            b.close()
    lic, lic_from = licence(root, info, opts)
    index = {
        "rows": rows, "skipped": skipped,
        "dataset": {"name": str(root), "hf_config": opts.hf_config, "revision": opts.revision,
                    "streaming": opts.streaming, "license": lic, "license_from": lic_from,
                    "splits": [n for n, _ in splits],
                    "columns": {"image": img_col, "kind": kind, "label": lab_col, "generator": gen_col,
                                "group": grp_col, "split": spl_col},
                    "label_values": dict(labels.seen), "rows_kept": len(rows), "rows_skipped": len(skipped),
                    "generators": dict(Counter(r["generator"] for r in rows))},
    }
    write_json(store / "index.json", index, indent=None)
    return index


def _check_labels(split, labels: Labels) -> None:
    """Every distinct label value of a loaded split, checked before any image is written."""
    try:
        values = split.unique(labels.column)
    except Exception:  # noqa: BLE001 - a column type unique() does not take: rows are checked one by one
        return
    for v in values:
        if labels(v) is None:
            labels.seen.update(str(labels.name_of(x)) for x in values)
            raise labels.error(v)
    labels.seen.clear()


def index(root: str | Path, warnings: list | None = None, seed: int = 0, ratios=RATIOS, class_map: str | None = None,
          out: str | Path | None = None, hf: HfOptions | None = None, info: dict | None = None,
          progress: bool = True, **_ignored) -> list[Item]:
    """Index a Hugging Face dataset into items (every one with ``preset_split`` set)."""
    warnings = warnings if warnings is not None else []
    opts = hf or HfOptions()
    if out is None:
        raise SourceError("--source hf needs --out (the rows' images are kept there)")
    fp = _fingerprint(root, opts, class_map)
    store = store_of(out, fp)
    done = store / "index.json"
    idx = read_json(done) if done.is_file() else None
    if idx is None:
        if opts.streaming and opts.per_generator and not opts.limit:
            log.warning("%s: --per-generator without --limit reads the whole stream unless the generator column "
                        "is a ClassLabel (its names say when every generator is full)", root)
        idx = materialise(root, opts, class_map, store, progress)
    if info is not None:
        info["dataset"] = idx["dataset"]
    if idx["skipped"]:
        shown = ", ".join(f"{s['row']} ({s['error']})" for s in idx["skipped"][:3])
        msg = f"{root}: {len(idx['skipped'])} rows have no readable image and were skipped: {shown}"
        warnings.append({"file": str(root), "error": msg, "rows": idx["skipped"][:1000]})
        log.warning("%s", msg)
    if not idx["rows"]:
        raise SourceError(f"{root}: no row with an image was read")
    items = [Item(Path(r["path"]), r["kind"], r["label"], r["method"], r["video_id"], target_id=r["group"],
                  preset_split=r["split"]) for r in idx["rows"]]
    return split_around_test(items, seed, ratios, warnings, source=str(root), test_name="the dataset's test split")
