import json
from pathlib import Path

import pytest

from dftune.sources import Item, SourceError
from dftune.sources.ffpp import index, load_split_files
from dftune.sources.splits import assign_official, assign_random


def test_official_splits_ship_with_the_package():
    m = load_split_files(None)
    assert len(m) == 1000
    assert sorted(set(m.values())) == ["test", "train", "val"]
    assert sum(1 for s in m.values() if s == "train") == 720
    assert sum(1 for s in m.values() if s == "val") == 140
    # pair ["071", "054"] is the first train pair in the official file
    assert m["071"] == m["054"] == "train"


def _item(method, vid):
    if "_" in vid:
        t, s = vid.split("_")
        return Item(Path(f"{method}/{vid}.mp4"), "video", 1, method, vid, t, s)
    return Item(Path(f"orig/{vid}.mp4"), "video", 0, "original", vid, vid)


def test_official_assignment_keeps_pairs_together(tmp_path):
    for split, pairs in {"train": [["000", "003"]], "val": [["001", "002"]], "test": [["004", "005"]]}.items():
        (tmp_path / f"{split}.json").write_text(json.dumps(pairs))
    m = load_split_files(tmp_path)
    items = [_item("original", "000"), _item("original", "003"), _item("Deepfakes", "000_003"),
             _item("FaceSwap", "003_000"), _item("Face2Face", "001_002"), _item("NeuralTextures", "002_001"),
             _item("Deepfakes", "000_002"),  # crosses train/val: must be excluded
             _item("original", "999")]  # in no split
    kept, excluded = assign_official(items, m)
    got = {it.key: it.split for it in kept}
    assert got == {"original/000": "train", "original/003": "train", "Deepfakes/000_003": "train",
                   "FaceSwap/003_000": "train", "Face2Face/001_002": "val", "NeuralTextures/002_001": "val"}
    reasons = " ".join(e["error"] for e in excluded)
    assert "different splits" in reasons and "no split file" in reasons


def test_missing_or_bad_split_file_is_named(tmp_path):
    (tmp_path / "train.json").write_text("[]")
    with pytest.raises(SourceError, match="val.json"):
        load_split_files(tmp_path)
    (tmp_path / "val.json").write_text("not json")
    (tmp_path / "test.json").write_text("[]")
    with pytest.raises(SourceError, match="val.json"):
        load_split_files(tmp_path)


def test_random_split_is_identity_grouped_and_seeded():
    ids = [f"{i:03d}" for i in range(40)]
    items = [_item("original", i) for i in ids]
    for a, b in zip(ids[::2], ids[1::2]):
        items += [_item("Deepfakes", f"{a}_{b}"), _item("Deepfakes", f"{b}_{a}")]
    assign_random(items, seed=1)
    first = {it.key: it.split for it in items}
    id_split = {}
    for it in items:
        for i in it.identities:
            assert id_split.setdefault(i, it.split) == it.split, f"identity {i} crosses splits"
    assert set(first.values()) == {"train", "val", "test"}
    assign_random(items, seed=1)
    assert {it.key: it.split for it in items} == first
    assign_random(items, seed=2)
    assert {it.key: it.split for it in items} != first


def test_ffpp_layout_errors(tmp_path):
    with pytest.raises(SourceError, match="not a folder"):
        index(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="not a FaceForensics"):
        index(tmp_path / "empty")


def test_ffpp_index(ffpp_tree):
    warnings = []
    items = index(ffpp_tree, methods=("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter"),
                  warnings=warnings)
    assert sum(it.label == 0 for it in items) == 6
    assert sum(it.label == 1 for it in items) == 24
    assert any("FaceShifter" in w["error"] for w in warnings)  # asked for, not present: warned, not fatal
    fake = next(it for it in items if it.key == "FaceSwap/000_001")
    assert (fake.target_id, fake.source_id) == ("000", "001")
