"""Training runs as things to name, re-run, resume, list and compare.

- :func:`next_run_dir`: ``--name NAME`` without ``--out``: ``runs/NAME``, then ``runs/NAME2``, ``runs/NAME3``...
  (the first free one, as Ultralytics numbers ``runs/train/expN``).
- :func:`sources`: what a run was started from (its ``--data``, each folder of a mix, and its ``--model``), read
  from its ``settings.yaml``, so ``train --resume RUN`` and ``train --config RUN/settings.yaml`` need no other flag.
- :func:`model_files` / :func:`same_content`: a starting model folder's files and their SHA-256 (recorded at the
  run's start), so a resume accepts a copy of that folder elsewhere, identical in content.
- :func:`history_rows` / :func:`write_history`: ``history.csv`` (one row an epoch: train loss and lr, val and every
  set validated beside it), rewritten every epoch, and ``history.png`` (:func:`dftune.plots.history_figure`),
  redrawn at most once a minute and after the last epoch.
- :func:`contest_number`: macro F1 at the threshold ``best/`` stores, as ``predict`` applies it (each crop, each
  pooled video), on the data it can be measured on: val (threshold 0.5, untuned), the check sets (``--threshold-on
  check``) or the split ``evaluate --write-threshold`` measured at the threshold it wrote.
- :func:`list_runs` / :func:`runs_csv`: ``dftune runs [DIR]``'s table.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from dftune.atomic import file_sha256, read_json, write_text

log = logging.getLogger(__name__)

ROOT = "runs"  # where --name puts runs
SETTINGS = "settings.yaml"
HISTORY_CSV = "history.csv"
HISTORY_PNG = "history.png"
# what history.csv keeps of each validated set's metrics, per level
KEEP = ("loss", "macro_f1", "auc", "accuracy")


# ---------------------------------------------------------------- naming and re-running


def next_run_dir(name: str, root: str | os.PathLike = ROOT) -> Path:
    """``root/name`` when free, else ``root/name2``, ``root/name3``... (the first that does not exist)."""
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"--name {name!r}: a run's name is one folder name (no '/'); --out takes a path")
    base = Path(root)
    if not (base / name).exists():
        return base / name
    i = 2
    while (base / f"{name}{i}").exists():
        i += 1
    return base / f"{name}{i}"


def read_settings(path: str | os.PathLike) -> tuple[dict, dict]:
    """A run's ``settings.yaml``: ``(settings, run metadata)`` (the ``_`` keys, without the underscore)."""
    from dftune.training.config import read_yaml_mapping

    raw = read_yaml_mapping(path, "run settings")
    return ({k: v for k, v in raw.items() if not str(k).startswith("_")},
            {str(k)[1:]: v for k, v in raw.items() if str(k).startswith("_")})


def sources(settings_file: str | os.PathLike) -> tuple[list[str], str]:
    """``(data folders, model)`` a run was started from, by its ``settings.yaml``: a mix's own folders (its
    ``RUN/data/settings.json``), and the model's folder where it was one and still is, else what ``--model`` said."""
    p = Path(settings_file)
    _, meta = read_settings(p)
    if not meta.get("data") or not meta.get("model"):
        raise ValueError(f"{p}: records no _data / _model (a settings file of a run made before they were "
                         f"recorded, or not a run's): give --data and --model")
    data = Path(str(meta["data"]))
    folders = [str(data)]
    mix = data / "settings.json"
    if mix.exists():
        had = list(((read_json(mix).get("mix") or {}).get("folders") or {}).values())
        folders = [str(f) for f in had] or folders
    model = str(meta["model"])
    folder = meta.get("model_dir")
    if folder and Path(str(folder)).is_dir():
        model = str(folder)
    return folders, model


def write_command_settings(folder: str | os.PathLike, data, model: str, settings: dict) -> None:
    """``FOLDER/settings.yaml`` of a command that is not train's (tune's study): its settings and, as train's
    records them, ``_data`` and ``_model`` (absolute where they are folders), so ``--resume FOLDER`` needs
    nothing else."""
    import yaml

    def absolute(p):
        return str(Path(p).resolve()) if Path(p).exists() else str(p)

    raw = {**settings, "_data": absolute(data), "_model": absolute(model)}
    if Path(model).is_dir():
        raw["_model_dir"] = absolute(model)
    write_text(Path(folder) / SETTINGS, yaml.safe_dump(json.loads(json.dumps(raw, default=str)), sort_keys=False))


# ---------------------------------------------------------------- the starting model's content


def model_files(folder: str | os.PathLike) -> dict[str, str]:
    """Each file of a model folder (relative path -> SHA-256), hidden ones (``.cache``, ``.lock``) left out."""
    root = Path(folder)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            out[rel.as_posix()] = file_sha256(p)
    return out


def same_content(folder: str | os.PathLike, recorded: dict | None = None,
                 other: str | os.PathLike | None = None) -> bool:
    """Whether ``folder`` holds the same files with the same bytes as the run's starting model: the
    ``recorded`` hashes, or (none recorded) the folder ``other`` where it still exists."""
    if not Path(folder).is_dir():
        return False
    if recorded:
        return model_files(folder) == dict(recorded)
    if other is not None and Path(other).is_dir():
        return model_files(folder) == model_files(other)
    return False


# ---------------------------------------------------------------- history.csv and history.png


def _sets(rec: dict) -> dict:
    """The sets a record validated: val, the check sets' mean and each, a mix's datasets: name -> metrics."""
    chk = rec.get("check") or {}
    out = {"val": rec.get("val")}
    if chk:
        out["check_mean"] = chk.get("mean")
        if len(chk.get("sets") or {}) > 1:
            out.update({f"check_{n}": m for n, m in chk["sets"].items()})
    out.update({f"val_{n}": m for n, m in (rec.get("datasets") or {}).items()})
    return out


def history_rows(history: Sequence[dict]) -> list[dict]:
    """history.json's records as flat rows (history.csv): epoch, time, best, the monitored value, the stored
    threshold, train loss / macro F1 / lr, then ``SET_LEVEL_METRIC`` for val and every set beside it."""
    rows = []
    for rec in history:
        tr = rec.get("train") or {}
        thr = rec.get("threshold") or {}
        row = {"epoch": rec["epoch"], "time_s": rec.get("time_s"), "best": int(bool(rec.get("best"))),
               "monitor": rec.get("monitor"), "threshold": thr.get("value"),
               "train_loss": tr.get("loss"), "train_macro_f1": tr.get("macro_f1"), "lr": tr.get("lr")}
        for name, m in _sets(rec).items():
            for level in ("frame", "video"):
                for k in KEEP:
                    v = ((m or {}).get(level) or {}).get(k)
                    if v is not None or m is not None:
                        row[f"{name}_{level}_{k}"] = v
        rows.append(row)
    return rows


_drawn: dict[str, float] = {}  # run folder -> when this process last drew its history.png (or first wrote)
DRAW_EVERY_S = 60.0


def write_history(run_dir: str | os.PathLike, history: Sequence[dict], final: bool = True) -> None:
    """``history.csv`` of the epochs so far, every call, and ``history.png``: at the run's last epoch (``final``)
    and otherwise at most once a minute (a figure costs ~0.3 s, a short epoch less). Atomic; a figure that
    fails is a warning, never the run's end."""
    import time

    rows = history_rows(history)
    write_text(Path(run_dir) / HISTORY_CSV, _csv(rows))
    key, now = str(Path(run_dir).resolve()), time.monotonic()
    if not final and now - _drawn.setdefault(key, now) < DRAW_EVERY_S:
        return
    _drawn[key] = now
    try:
        from dftune import plots

        plots.history_figure(rows, Path(run_dir) / HISTORY_PNG, title=Path(run_dir).name)
    except Exception as e:  # a plotting backend problem: the curves are in history.csv
        log.warning("%s: history.png not drawn (%s)", run_dir, e)


def _csv(rows: Sequence[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k])
                    for k in cols})
    return buf.getvalue()


# ---------------------------------------------------------------- the number the contest scores


def contest_number(record: dict | None, stored: dict | None = None) -> dict | None:
    """Macro F1 at the threshold ``best/`` stores, as ``predict`` applies it: ``{"threshold", "on", "frame",
    "video"}`` (a level it could not be measured at is None), or None.

    ``stored``: ``best/dftune.json`` as read now; when ``evaluate --write-threshold`` wrote its threshold it also
    wrote the figure it measured there (``extra.contest``), which wins. Otherwise the best epoch's ``record``:
    threshold 0.5 (untuned): val's macro F1 at 0.5, frame and video; ``--threshold-on check``: the check sets'
    pooled macro F1 at the level it was tuned at."""
    if stored and (stored.get("extra") or {}).get("contest"):
        return dict(stored["extra"]["contest"])
    if not record or record.get("val") is None:
        return None
    thr = record.get("threshold") or {"value": 0.5, "source": {"by": "default"}}
    src = thr.get("source") or {}
    if stored is not None and abs(float(stored.get("threshold", 0.5)) - float(thr["value"])) > 1e-12:
        return {"threshold": float(stored.get("threshold", 0.5)), "on": "not measured (threshold changed since "
                "training; `dftune evaluate --write-threshold` records it)", "frame": None, "video": None}
    if src.get("by") in (None, "default"):
        v = record["val"]
        return {"threshold": float(thr["value"]), "on": "val", "frame": v["frame"].get("macro_f1"),
                "video": v["video"].get("macro_f1")}
    level = src.get("level", "frame")
    t = ((record.get("check") or {}).get("threshold") or {}).get(level) or {}
    out = {"threshold": float(thr["value"]), "on": "check sets (pooled)", "frame": None, "video": None}
    out[level] = t.get("macro_f1")
    return out


def describe_contest(c: dict | None) -> str:
    """The contest number in words, as train's summary and the runs table print it."""
    if not c:
        return "not measured"

    def f(x):
        return "-" if x is None else f"{x:.4f}"

    return f"frame {f(c.get('frame'))}, video {f(c.get('video'))} at threshold {c['threshold']:.4f} on {c['on']}"


# ---------------------------------------------------------------- dftune runs


COLUMNS = ["run", "data", "model", "epochs", "best epoch", "val frame F1", "val frame AUC", "val video F1",
           "val video AUC", "check frame AUC", "check video AUC", "threshold", "threshold by", "contest frame F1",
           "contest video F1", "contest on"]


def find_runs(root: str | os.PathLike, depth: int = 3) -> list[Path]:
    """Folders under ``root`` (``root`` itself included, ``depth`` levels down) holding a training run's
    ``settings.yaml`` and ``history.json``; a run's own sub-folders (best/, last/, wise/, data/) and prepared
    folders (their crops) are not searched."""
    root = Path(root)
    found = []

    def walk(d: Path, left: int):
        if (d / SETTINGS).is_file() and (d / "history.json").is_file():
            found.append(d)
            return
        if left == 0 or (d / "manifest.csv").is_file():  # a prepared folder: crops, no runs
            return
        try:
            subs = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return
        for p in subs:
            walk(p, left - 1)

    walk(root, depth)
    return found


def describe_run(run: Path, root: Path) -> dict:
    """One row of ``dftune runs``: what a run was trained on, its best epoch, val and check-set metrics there, the
    threshold best/ stores now and the contest number. A run it cannot read gets a row saying why."""
    name = str(run.relative_to(root)) if run != root else run.name
    row: dict = dict.fromkeys(COLUMNS)
    row["run"] = name
    try:
        settings, meta = read_settings(run / SETTINGS)
        history = read_json(run / "history.json")
    except (OSError, ValueError) as e:
        row["data"] = f"unreadable: {e}"
        return row
    data = Path(str(meta.get("data") or ""))
    mixed = data / "settings.json"
    if mixed.is_file():
        folders = list(((read_json(mixed).get("mix") or {}).get("folders") or {}).values())
        row["data"] = " + ".join(folders) if folders else str(data)
    else:
        row["data"] = str(data) if meta.get("data") else None
    row["model"] = meta.get("model")
    best = [h for h in history if h.get("best")]
    rec = best[-1] if best else None
    row["epochs"] = f"{len(history)}/{settings.get('epochs')}"
    row["best epoch"] = rec["epoch"] if rec else None
    if rec and rec.get("val"):
        v = rec["val"]
        row.update({"val frame F1": v["frame"].get("macro_f1"), "val frame AUC": v["frame"].get("auc"),
                    "val video F1": v["video"].get("macro_f1"), "val video AUC": v["video"].get("auc")})
    chk = (rec or {}).get("check") or {}
    if chk.get("mean"):
        m = chk["mean"]
        row.update({"check frame AUC": m["frame"].get("auc"), "check video AUC": m["video"].get("auc")})
    stored = None
    if (run / "best" / "dftune.json").is_file():
        stored = read_json(run / "best" / "dftune.json")
        row["threshold"] = float(stored.get("threshold", 0.5))
        row["threshold by"] = (stored.get("threshold_source") or {}).get("by", "default")
    c = contest_number(rec, stored)
    if c:
        row.update({"contest frame F1": c.get("frame"), "contest video F1": c.get("video"), "contest on": c.get("on")})
    return row


def list_runs(root: str | os.PathLike = ROOT) -> list[dict]:
    """``dftune runs``' rows: every run under ``root``, in path order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (runs are listed from where train wrote them: `train --name` "
                                f"puts them under {ROOT}/)")
    return [describe_run(r, root) for r in find_runs(root)]


def cell(v) -> str:
    """A value as the table and the CSV show it."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def runs_csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([cell(r.get(c)) for c in COLUMNS])
    return buf.getvalue()
