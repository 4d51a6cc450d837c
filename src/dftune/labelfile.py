"""A labelled folder's ``filename,label`` CSV (``evaluate --files DIR --labels CSV``): one label per file."""

from __future__ import annotations

import csv
import os


def read_labels(path: str | os.PathLike) -> dict[str, int]:
    """``filename,label`` CSV (label 0/1 or real/fake words) -> {filename: 0/1}; errors name the line."""
    return read_labels_counted(path)[0]


def read_labels_counted(path: str | os.PathLike) -> tuple[dict[str, int], int]:
    """``(labels, rows repeating an earlier row exactly)``. A UTF-8 byte-order mark is read past (as prepare
    does); a file separated by ';' is named as such; one file given two different labels is an error naming
    the file and every line that labels it."""
    from dftune.portable import label_from_word

    out: dict[str, int] = {}
    lines: dict[str, list[tuple[int, str]]] = {}
    dupes = 0
    hint = "separated by ';'? use commas (filename,label)"
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = [c.strip().lower() for c in (reader.fieldnames or [])]
        if reader.fieldnames is None:
            raise ValueError(f"{path}: is empty (no header line); a labels CSV starts with the line filename,label "
                             f"and has one file,label row per file")
        if "filename" not in cols or "label" not in cols:
            semi = len(cols) == 1 and ";" in cols[0]
            raise ValueError(f"{path}: needs a header with 'filename' and 'label' columns, got {reader.fieldnames}"
                             + (f"; {hint}" if semi else ""))
        for rec in reader:
            lineno = reader.line_num
            raw = rec
            rec = {k.strip().lower(): (v or "").strip() for k, v in rec.items() if k}
            label = label_from_word(rec["label"])
            if label is None:
                semi = ";" in (raw.get(None) and ",".join(raw[None]) or "") or ";" in rec["filename"]
                raise ValueError(f"{path}, line {lineno}: label {rec['label']!r} is neither 0/1 nor a real/fake word"
                                 + (f"; {hint}" if semi else ""))
            name = rec["filename"]
            seen = lines.setdefault(name, [])
            if seen and out[name] == label:
                dupes += 1
            seen.append((lineno, rec["label"]))
            if name not in out or out[name] == label:
                out[name] = label
            else:
                out[name] = -1  # conflicting: reported below with every line
    bad = {n: ls for n, ls in lines.items() if out[n] == -1}
    if bad:
        said = "; ".join(f"{n!r} on lines " + ", ".join(f"{ln} ({w})" for ln, w in ls)
                         for n, ls in list(bad.items())[:10])
        raise ValueError(f"{path}: {len(bad)} file(s) given different labels: {said}"
                         + (f" (and {len(bad) - 10} more)" if len(bad) > 10 else "")
                         + "; keep one label per file")
    return out, dupes
