"""The other datasets' sources (celebdf, dfdc, dfdcp, frames, list): each layout indexed with the
right labels/methods/splits/identities, the official test sets kept, identities never crossing
splits, and one `dftune prepare --source NAME` run per source on tiny real videos/frames."""

import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from dftune.cli import main
from dftune.prepared import read_manifest
from dftune.sources import SOURCES, SourceError, celebdf, dfdc, frames, get_indexer, listfile

FAST = ["--detector", "retinaface", "--frames", "2", "--size", "64", "--workers", "1", "--no-progress"]


def _touch(path: Path, src: Path | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if src is None:
        path.write_bytes(b"")
    else:
        shutil.copy(src, path)
    return path


def _ids_by_split(items) -> dict[str, set]:
    out = defaultdict(set)
    for it in items:
        for i in it.identities or [it.key]:
            out[i].add(it.preset_split)
    return out


def _assert_identity_disjoint(items):
    assert all(it.preset_split in ("train", "val", "test") for it in items)
    crossing = {i: s for i, s in _ids_by_split(items).items() if len(s) > 1}
    assert not crossing, crossing


def _real(tree: Path, i: int) -> Path:
    return tree / f"original_sequences/youtube/c23/videos/{i:03d}.mp4"


def _fake(tree: Path, t: int, s: int) -> Path:
    return tree / f"manipulated_sequences/Deepfakes/c23/videos/{t:03d}_{s:03d}.mp4"


def test_every_source_is_registered():
    for name in ("celebdf", "dfdc", "dfdcp", "frames", "list"):
        assert name in SOURCES and callable(get_indexer(name))


# ---------------------------------------------------------------- Celeb-DF

CELEB_REAL = ["id0_0000", "id1_0000", "id2_0000", "id3_0000", "id4_0000", "id5_0000", "id6_0000", "id7_0000"]
CELEB_FAKE = ["id0_id1_0000", "id1_id0_0000", "id2_id0_0000", "id2_id3_0000", "id3_id2_0000", "id4_id5_0000",
              "id6_id7_0000"]
YOUTUBE = ["00000", "00001", "00002", "00003"]
TEST_LIST = ["1 Celeb-real/id0_0000.mp4", "0 Celeb-synthesis/id0_id1_0000.mp4", "1 YouTube-real/00000.mp4",
             "0 Celeb-synthesis/id9_id8_0000.mp4"]  # the last one is not on disk


def _celebdf_tree(root: Path, videos_subdir: bool, src=None, youtube="YouTube-real") -> Path:
    sub = "videos/" if videos_subdir else ""
    for n in CELEB_REAL:
        _touch(root / f"Celeb-real/{sub}{n}.mp4", src and src(n))
    for n in CELEB_FAKE:
        _touch(root / f"Celeb-synthesis/{sub}{n}.mp4", src and src(n))
    for n in YOUTUBE:
        _touch(root / f"{youtube}/{sub}{n}.mp4", src and src(n))
    (root / celebdf.LIST_NAME).write_text("\n".join(TEST_LIST) + "\n")
    return root


@pytest.mark.parametrize("videos_subdir,youtube", [(False, "YouTube-real"), (True, "Youtube-real")])
def test_celebdf_official_test_list_and_identity_disjoint_train_val(tmp_path, videos_subdir, youtube):
    root = _celebdf_tree(tmp_path / "Celeb-DF-v2", videos_subdir, youtube=youtube)
    warnings = []
    items = celebdf.index(root, warnings=warnings)
    by = {it.key: it for it in items}
    # the list is the test set, read with Celeb-DF's own convention: 1 = real, 0 = fake
    assert {k for k, it in by.items() if it.preset_split == "test"} == {
        "Celeb-real/id0_0000", "Celeb-synthesis/id0_id1_0000", "YouTube-real/00000"}
    assert by["Celeb-real/id0_0000"].label == 0 and by["YouTube-real/00000"].label == 0
    assert by["Celeb-synthesis/id0_id1_0000"].label == 1
    # target A, source B from idA_idB_NNNN
    f = by["Celeb-synthesis/id0_id1_0000"]
    assert (f.target_id, f.source_id, f.video_id) == ("id0", "id1", "id0_id1_0000")
    assert by["Celeb-real/id0_0000"].identities == ["id0"] and by["YouTube-real/00000"].identities == []
    # videos of test identities (id0, id1) are dropped from train/val, and counted
    for k in ("Celeb-real/id1_0000", "Celeb-synthesis/id1_id0_0000", "Celeb-synthesis/id2_id0_0000"):
        assert k not in by
    counts = [w["split_counts"] for w in warnings if "split_counts" in w][0]
    assert counts["dropped_identity_in_test"] == 3
    assert {by[k].preset_split for k in by if k.startswith("YouTube-real/") and k != "YouTube-real/00000"} <= {
        "train", "val"}
    _assert_identity_disjoint(items)
    assert {"train", "val", "test"} == {it.preset_split for it in items}
    # the missing listed video is reported, not fatal
    assert any("not on disk" in w["error"] and "id9_id8_0000" in w["error"] for w in warnings)
    # the same seed gives the same split; the methods are the folders
    again = {it.key: it.preset_split for it in celebdf.index(root)}
    assert again == {k: it.preset_split for k, it in by.items()}
    assert {it.method for it in items} == {"Celeb-real", "Celeb-synthesis", "YouTube-real"}


def test_celebdf_flat_and_videos_variants_index_the_same(tmp_path):
    flat = {(it.key, it.label, it.preset_split) for it in celebdf.index(_celebdf_tree(tmp_path / "a", False))}
    nested = {(it.key, it.label, it.preset_split) for it in celebdf.index(_celebdf_tree(tmp_path / "b", True))}
    assert flat == nested


def test_celebdf_needs_the_test_list_and_checks_its_labels(tmp_path):
    root = _celebdf_tree(tmp_path / "c", False)
    (root / celebdf.LIST_NAME).write_text("0 Celeb-real/id0_0000.mp4\n1 Celeb-synthesis/id0_id1_0000.mp4\n")
    warnings = []
    items = celebdf.index(root, warnings=warnings)
    assert {it.key: it.label for it in items if it.preset_split == "test"} == {
        "Celeb-real/id0_0000": 0, "Celeb-synthesis/id0_id1_0000": 1}  # the folder decides
    assert sum("the folder's label is used" in w["error"] for w in warnings) == 2
    (root / celebdf.LIST_NAME).unlink()
    with pytest.raises(SourceError, match="List_of_testing_videos.txt"):
        celebdf.index(root)
    with pytest.raises(SourceError, match="not a Celeb-DF root"):
        celebdf.index(tmp_path)


# ---------------------------------------------------------------- DFDC

def _dfdc_tree(root: Path, src=None, meta_release=False) -> Path:
    parts = {
        "dfdc_train_part_0": {"r1.mp4": {"label": "REAL", "split": "train", "original": None},
                              "f1.mp4": {"label": "FAKE", "split": "train", "original": "r1.mp4"},
                              "f2.mp4": {"label": "FAKE", "split": "train", "original": "r1.mp4"},
                              "r2.mp4": {"label": "REAL", "split": "train", "original": None},
                              "f3.mp4": {"label": "FAKE", "split": "train", "original": "r2.mp4"}},
        "dfdc_train_part_1": {"r3.mp4": {"label": "REAL", "split": "train", "original": None},
                              "f4.mp4": {"label": "FAKE", "split": "train", "original": "r3.mp4"},
                              "r4.mp4": {"label": "REAL", "split": "train", "original": None}},
    }
    base = root / "train" if meta_release else root
    for part, meta in parts.items():
        for name in meta:
            _touch(base / part / name, src and src(name))
        (base / part / "metadata.json").write_text(json.dumps(meta))
    for name in ("t1.mp4", "t2.mp4"):
        _touch(root / "test" / name, src and src(name))
    if meta_release:  # Meta's release: test/metadata.json (is_fake) and validation/labels.csv
        (root / "test" / "metadata.json").write_text(json.dumps({"t1.mp4": {"is_fake": 0}, "t2.mp4": {"is_fake": 1}}))
        for name in ("v1.mp4", "v2.mp4"):
            _touch(root / "validation" / name, src and src(name))
        (root / "validation" / "labels.csv").write_text("filename,label\nv1.mp4,1\nv2.mp4,0\n")
    else:
        (root / "test" / "labels.csv").write_text("filename,label\nt1.mp4,0\nt2.mp4,1\n")
    return root


def test_dfdc_parts_and_public_test_set(tmp_path):
    items = dfdc.index(_dfdc_tree(tmp_path / "dfdc"))
    by = {it.video_id: it for it in items}
    assert set(by) == {"r1", "f1", "f2", "r2", "f3", "r3", "f4", "r4", "t1", "t2"}
    assert (by["t1"].label, by["t2"].label) == (0, 1)  # labels.csv: 1 = fake
    assert by["t1"].preset_split == by["t2"].preset_split == "test"
    assert {it.preset_split for it in items if not it.video_id.startswith("t")} <= {"train", "val"}
    assert {it.preset_split for it in items} == {"train", "val", "test"}
    # a fake is grouped with its original: same identity, same split
    assert by["f1"].target_id == by["f2"].target_id == by["r1"].target_id == "r1"
    assert by["f1"].preset_split == by["f2"].preset_split == by["r1"].preset_split
    assert by["f4"].preset_split == by["r3"].preset_split
    assert (by["f1"].method, by["r1"].method) == ("DFDC", "original")
    _assert_identity_disjoint(items)


def test_dfdc_meta_release_has_val_and_test(tmp_path):
    items = dfdc.index(_dfdc_tree(tmp_path / "dfdc", meta_release=True))
    split = {it.video_id: it.preset_split for it in items}
    label = {it.video_id: it.label for it in items}
    assert split["t1"] == split["t2"] == "test" and split["v1"] == split["v2"] == "val"
    assert (label["t1"], label["t2"], label["v1"], label["v2"]) == (0, 1, 1, 0)
    assert {split[k] for k in ("r1", "f1", "f2", "r2", "f3", "r3", "f4", "r4")} == {"train"}


def _dfdcp_tree(root: Path, src=None) -> Path:
    meta = {
        "original_videos/100/100_A/a.mp4": {"label": "real", "set": "train", "target_id": "100"},
        "method_A/100/100_A/a.mp4": {"label": "fake", "set": "train", "target_id": "100", "swapped_id": "200"},
        "original_videos/200/200_B/b.mp4": {"label": "real", "set": "train", "target_id": "200"},
        "original_videos/400/400_A/d.mp4": {"label": "real", "set": "train", "target_id": "400"},
        "original_videos/500/500_A/e.mp4": {"label": "real", "set": "train", "target_id": "500"},
        "method_B/500/500_A/e.mp4": {"label": "fake", "set": "train", "target_id": "500", "swapped_id": "400"},
        "original_videos/300/300_A/c.mp4": {"label": "real", "set": "test", "target_id": "300"},
        "method_B/300/300_A/c.mp4": {"label": "fake", "set": "test", "target_id": "300", "swapped_id": "301"},
        "method_A/200/200_B/x.mp4": {"label": "fake", "set": "train", "target_id": "200", "swapped_id": "300"},
    }
    for rel in meta:
        _touch(root / rel, src and src(rel))
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_dfdc_preview_sets_methods_and_identities(tmp_path):
    warnings = []
    items = dfdc.index_preview(_dfdcp_tree(tmp_path / "dfdcp"), warnings=warnings)
    by = {it.key: it for it in items}
    assert {k for k, it in by.items() if it.preset_split == "test"} == {"original_videos/300__300_A__c",
                                                                         "method_B/300__300_A__c"}
    assert {it.method for it in items} == {"original_videos", "method_A", "method_B"}
    fake = by["method_A/100__100_A__a"]
    assert (fake.label, fake.target_id, fake.source_id) == (1, "100", "200")
    # a train fake with the face of a test identity (300) is dropped
    assert "method_A/200__200_B__x" not in by
    _assert_identity_disjoint(items)
    # --methods picks among the source's methods
    only_a = dfdc.index_preview(tmp_path / "dfdcp", methods=("method_A",))
    assert {it.method for it in only_a} == {"original_videos", "method_A"}
    with pytest.raises(SourceError, match="method_C"):
        dfdc.index_preview(tmp_path / "dfdcp", methods=("method_C",))


# ---------------------------------------------------------------- frames

def _png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _face(i: int, side: int = 96) -> np.ndarray:
    from dftune.synthetic import identity

    ph = identity(i)
    x1, y1, x2, y2 = ph.face
    s = int(max(x2 - x1, y2 - y1) * 1.3)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    crop = ph.rgb[max(cy - s // 2, 0):cy + s // 2, max(cx - s // 2, 0):cx + s // 2]
    return cv2.resize(crop, (side, side + 8))  # not square: --detector none takes the centred square


def _wild_tree(root: Path, n_frames: int = 3) -> Path:
    """WildDeepfake's names: {real,fake}_{train,test}/<video>/<seq>/<frame>.png."""
    k = 0
    for cls in ("real", "fake"):
        for split, videos in (("train", ("1", "2", "3", "4")), ("test", ("1",))):
            for v in videos:
                k += 1
                for f in range(n_frames):
                    _png(root / f"{cls}_{split}" / v / cls / "0" / f"{f * 5}.png", _face(k))
    return root


def test_frames_wilddeepfake_layout_and_natural_frame_order(tmp_path):
    root = _wild_tree(tmp_path / "wdf")
    items = frames.index(root)
    assert len(items) == 10 and {it.kind for it in items} == {"frames"}
    by = {it.key: it for it in items}
    assert by["fake/test__1__fake__0"].preset_split == "test" and by["fake/test__1__fake__0"].label == 1
    assert by["real/train__1__real__0"].label == 0
    train = {it.preset_split for it in items if "train__" in it.video_id}
    assert train == {"train", "val"}  # no val folder: train videos dealt to train/val
    _assert_identity_disjoint(items)
    # frames in natural order: 0, 5, 10 (not 0, 10, 5); --frames 2 -> the first and the last
    it = by["real/test__1__real__0"]
    assert [p.name for p in frames.frame_files(it)] == ["0.png", "5.png", "10.png"]
    assert [i for i, _ in frames.read_frames(it, frames=2)] == [0, 2]


def test_frames_split_folders_are_kept(tmp_path):
    root = tmp_path / "f"
    for s in ("train", "val", "test"):
        for cls in ("real", "fake"):
            _png(root / s / cls / "v" / "0.png", _face(1))
    items = frames.index(root)
    assert {(it.preset_split, it.method) for it in items} == {(s, c) for s in ("train", "val", "test")
                                                              for c in ("real", "fake")}
    assert len({it.key for it in items}) == 6  # train/real/v and test/real/v are two videos


# ---------------------------------------------------------------- list

def test_list_file_rows_frames_and_dealing(tmp_path):
    root = tmp_path / "mine"
    for n in ("a", "b", "c", "d"):
        _touch(root / "videos" / f"{n}.mp4")
    for f in range(3):
        _png(root / "frames" / "x" / f"{f}.png", _face(2, 32))
    _png(root / "crops" / "y" / "0.png", _face(3, 32))
    (root / "list.csv").write_text(
        "path,label,split,method,video,identity\n"
        "videos/a.mp4,real,test,,,p1\n"
        "videos/b.mp4,FAKE,,gan,,p1;p2\n"  # shares p1 with the test set: dropped
        "videos/c.mp4,0,,,,p3\n"
        "videos/d.mp4,1,train,swap,,p4\n"
        "frames/x/10.png,fake,test,gan,x,\n"  # not on disk: skipped with a warning
        + "".join(f"frames/x/{f}.png,fake,test,gan,x,\n" for f in range(3))
        + "crops/y/,real,val,,,\n")
    warnings = []
    items = listfile.index(root, warnings=warnings)
    by = {it.key: it for it in items}
    assert set(by) == {"real/videos__a", "real/videos__c", "swap/videos__d", "gan/x", "real/crops__y"}
    assert by["real/videos__a"].preset_split == "test" and by["swap/videos__d"].preset_split == "train"
    assert by["real/videos__c"].preset_split in ("train",)  # the list has val rows: the rest is train
    x = by["gan/x"]
    assert x.kind == "frames" and x.label == 1 and [p.name for p in frames.frame_files(x)] == [
        "0.png", "1.png", "2.png"]
    assert by["real/crops__y"].kind == "frames"
    assert any("not found" in w["error"] for w in warnings)
    _assert_identity_disjoint(items)
    # a header-less list: path,label[,split][,method][,video]
    (tmp_path / "plain.csv").write_text("mine/videos/a.mp4,1,test\nmine/videos/c.mp4,real\nmine/videos/d.mp4,0\n")
    plain = listfile.index(tmp_path / "plain.csv")
    assert {it.key: it.label for it in plain} == {"fake/mine__videos__a": 1, "real/mine__videos__c": 0,
                                                  "real/mine__videos__d": 0}
    assert {it.key: it.preset_split for it in plain}["fake/mine__videos__a"] == "test"
    with pytest.raises(SourceError, match="label"):
        (tmp_path / "bad.csv").write_text("mine/videos/a.mp4,maybe\n")
        listfile.index(tmp_path / "bad.csv")


# ---------------------------------------------------------------- end to end

def _run(root, out, source, *extra):
    return main(["prepare", str(root), "--source", source, "--out", str(out), *FAST, *extra])


def _check_manifest(out: Path, size: int = 64):
    rows = read_manifest(out)
    assert rows
    for r in rows[:4]:
        img = cv2.imread(str(out / r.path))
        assert img is not None and img.shape == (size, size, 3)
    return rows


def test_prepare_celebdf_end_to_end(ffpp_tree, tmp_path):
    root = tmp_path / "celeb"
    for n, i in (("id0_0000", 0), ("id2_0000", 2), ("id4_0000", 4)):
        _touch(root / "Celeb-real" / "videos" / f"{n}.mp4", _real(ffpp_tree, i))
    for n, (t, s) in (("id0_id1_0000", (0, 1)), ("id2_id3_0000", (2, 3))):
        _touch(root / "Celeb-synthesis" / "videos" / f"{n}.mp4", _fake(ffpp_tree, t, s))
    _touch(root / "YouTube-real" / "videos" / "00001.mp4", _real(ffpp_tree, 1))
    (root / celebdf.LIST_NAME).write_text("1 Celeb-real/id0_0000.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n")
    out = tmp_path / "out"
    assert _run(root, out, "celebdf") == 0
    rows = _check_manifest(out)
    test = {r.video for r in rows if r.split == "test"}
    assert test == {"Celeb-real/id0_0000", "Celeb-synthesis/id0_id1_0000"}
    fake = [r for r in rows if r.video == "Celeb-synthesis/id0_id1_0000"][0]
    assert (fake.label, fake.target_id, fake.source_id, fake.method) == (1, "id0", "id1", "Celeb-synthesis")


def test_prepare_dfdc_and_preview_end_to_end(ffpp_tree, tmp_path):
    vids = {"r": _real(ffpp_tree, 0), "f": _fake(ffpp_tree, 0, 1), "t": _real(ffpp_tree, 2),
            "v": _real(ffpp_tree, 4)}
    root = _dfdc_tree(tmp_path / "dfdc", src=lambda name: vids[name[0]])
    out = tmp_path / "out"
    assert _run(root, out, "dfdc") == 0
    rows = _check_manifest(out)
    assert {r.video for r in rows if r.split == "test"} == {"original/t1", "DFDC/t2"}
    f1 = [r for r in rows if r.video_id == "f1"][0]
    assert (f1.label, f1.method, f1.target_id) == (1, "DFDC", "r1")

    pre = _dfdcp_tree(tmp_path / "dfdcp", src=lambda rel: vids["r" if rel.startswith("orig") else "f"])
    out2 = tmp_path / "out2"
    assert _run(pre, out2, "dfdcp") == 0
    rows = _check_manifest(out2)
    assert {r.method for r in rows} == {"original_videos", "method_A", "method_B"}
    assert {r.video for r in rows if r.split == "test"} == {"original_videos/300__300_A__c", "method_B/300__300_A__c"}


def test_prepare_frames_with_no_detect_uses_each_frame_whole(tmp_path):
    root = _wild_tree(tmp_path / "wdf")
    out = tmp_path / "out"
    assert _run(root, out, "frames", "--detector", "none") == 0
    rows = _check_manifest(out)
    assert len(rows) == 10 * 2 and {r.detector for r in rows} == {"none"}
    # the centred square of each 96x104 frame, resized to --size like any crop
    from dftune.portable import crop_square, load_image, whole_image_box

    r = [r for r in rows if r.video == "real/test__1__real__0" and r.frame_index == 2][0]
    assert (r.box_x, r.box_y, r.box_size, r.frame_width, r.frame_height) == (0, 4, 96, 96, 104)
    want = crop_square(load_image(root / "real_test/1/real/0/10.png"), whole_image_box(96, 104), 64)
    got = cv2.cvtColor(cv2.imread(str(out / r.path)), cv2.COLOR_BGR2RGB)
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 3  # JPEG q95
    assert json.loads((out / "settings.json").read_text())["no_detect"] is True
    assert {r.split for r in rows} == {"train", "val", "test"}
    # crops made whole are not mixed with detected ones in one folder
    assert _run(root, out, "frames") == 2


def test_prepare_list_end_to_end_with_detection(ffpp_tree, tmp_path):
    root = tmp_path / "mine"
    _touch(root / "a.mp4", _real(ffpp_tree, 0))
    _touch(root / "b.mp4", _fake(ffpp_tree, 2, 3))
    _touch(root / "c.mp4", _real(ffpp_tree, 4))
    from dftune.portable import sample_frames

    for f, (_, rgb) in enumerate(sample_frames(_fake(ffpp_tree, 0, 1), frames=3)):  # 320x240 frames with a face
        _png(root / "x" / f"{f}.png", rgb)
    with open(root / "list.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerows([["path", "label", "split", "method", "video"], ["a.mp4", "real", "test", "", ""],
                     ["b.mp4", "fake", "", "swap", ""], ["c.mp4", "0", "", "", ""]]
                    + [[f"x/{f}.png", "1", "test", "swap", "x"] for f in range(3)])
    out = tmp_path / "out"
    assert _run(root / "list.csv", out, "list") == 0
    rows = _check_manifest(out)
    x = [r for r in rows if r.video == "swap/x"]
    assert {r.frame_index for r in x} == {0, 2} and {r.split for r in x} == {"test"}
    assert {r.detector for r in rows} == {"retinaface"}
    assert {r.video for r in rows if r.split == "test"} == {"real/a", "swap/x"}

