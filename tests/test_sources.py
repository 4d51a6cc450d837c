import json
from collections import Counter
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
    for a, b in zip(ids[::2], ids[1::2], strict=False):
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


# ---------------------------------------------------------------- DeepFakeDetection: split by actor

def _dfd_tree(root: Path, n_actors: int = 15) -> Path:
    """Empty files named as FF++ names them: 2 reals per actor, a fake for every ordered actor pair."""
    act = root / "original_sequences/actors/c23/videos"
    dfd = root / "manipulated_sequences/DeepFakeDetection/c23/videos"
    act.mkdir(parents=True)
    dfd.mkdir(parents=True)
    actors = [f"{i:02d}" for i in range(1, n_actors + 1)]
    for a in actors:
        for scene in ("walking_down_street_outside_angry", "kitchen_pan"):
            (act / f"{a}__{scene}.mp4").touch()
        for b in actors:
            if a != b:
                (dfd / f"{a}_{b}__walking_down_street_outside_angry__YVGY8LOK.mp4").touch()
    return root


def _dfd_official(root: Path, seed: int):
    from dftune.stages.prepare import PrepareConfig, index_items

    warnings = []
    cfg = PrepareConfig(root, root.parent / "out", methods=("DeepFakeDetection",), actors=True, seed=seed)
    kept, excluded = index_items(cfg, warnings)
    return kept, excluded, warnings


def test_dfd_official_split_deals_actors_to_every_split(tmp_path):
    root = _dfd_tree(tmp_path / "ffpp")
    kept, excluded, _ = _dfd_official(root, seed=0)
    actor_split = {}
    for it in kept:
        if it.method == "actors":
            assert actor_split.setdefault(it.target_id, it.split) == it.split, f"actor {it.target_id} crosses splits"
    assert len(actor_split) == 15  # every actor's reals are kept, each actor in exactly one split
    assert sum(it.method == "actors" for it in kept) == 30
    # 15 actors by 0.72/0.14/0.14: 11/2/2
    assert sorted(Counter(actor_split.values()).items()) == [("test", 2), ("train", 11), ("val", 2)]


def test_dfd_official_split_keeps_fakes_only_within_a_split(tmp_path):
    root = _dfd_tree(tmp_path / "ffpp")
    kept, excluded, _ = _dfd_official(root, seed=0)
    actor_split = {it.target_id: it.split for it in kept if it.method == "actors"}
    fakes = [it for it in kept if it.method == "DeepFakeDetection"]
    assert fakes
    for it in fakes:
        assert actor_split[it.target_id] == actor_split[it.source_id] == it.split
    assert {it.split for it in fakes} == {"train", "val", "test"}


def test_dfd_official_split_excludes_and_counts_straddling_fakes(tmp_path, caplog):
    root = _dfd_tree(tmp_path / "ffpp")
    with caplog.at_level("WARNING"):
        kept, excluded, warnings = _dfd_official(root, seed=0)
    actor_split = {it.target_id: it.split for it in kept if it.method == "actors"}
    straddling = {f"{a}_{b}" for a in actor_split for b in actor_split if a != b and actor_split[a] != actor_split[b]}
    assert straddling
    assert len(kept) + len(excluded) == 15 * 2 + 15 * 14  # nothing vanishes: kept or excluded with a reason
    assert {Path(e["file"]).name[:5] for e in excluded} == straddling
    assert len(excluded) == len(straddling)
    for e in excluded:
        assert "different splits" in e["error"] and "excluded" in e["error"]
    # the log states the real outcome: per-split counts and the number dropped
    per = {s: sum(1 for it in kept if it.split == s and it.label == 1) for s in ("train", "val", "test")}
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert f"{len(straddling)} fakes dropped" in msg
    assert f"fake videos train {per['train']}, val {per['val']}, test {per['test']}" in msg


def test_dfd_actor_split_is_seeded(tmp_path):
    root = _dfd_tree(tmp_path / "ffpp")

    def splits(seed):
        kept, excluded, _ = _dfd_official(root, seed)
        return {it.key: it.split for it in kept}, sorted(e["file"] for e in excluded)

    assert splits(0) == splits(0)
    assert splits(0) != splits(1)


def test_assign_actors_counts_and_random_split_drops_straddling_fakes(tmp_path):
    from dftune.sources.splits import assign_actors

    root = _dfd_tree(tmp_path / "ffpp", n_actors=6)
    items = index(root, methods=("DeepFakeDetection",), actors=True)
    res = assign_actors(items, seed=3)
    c = res.counts()
    assert sum(c["actors"].values()) == 6 and set(c["actors"]) == {"train", "val", "test"}
    assert sum(c["reals"].values()) == 12
    assert sum(c["fakes"].values()) + c["fakes_dropped"] == 30
    assert c["fakes_dropped"] == len(res.excluded) > 0
    # --split-by random splits them the same way, and leaves the dropped fakes out
    items = index(root, methods=("DeepFakeDetection",), actors=True)
    got = assign_random(items, seed=3)
    assert {it.key: it.split for it in got} == {it.key: it.split for it in res.kept}
