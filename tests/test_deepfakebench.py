"""DeepfakeBench's preprocessed layout (the dataset JSON over face frames and landmarks) as a source, and
several prepared folders mixed into one manifest (links, no copies), on tiny trees the tests make."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dftune.cli import main
from dftune.prepared import read_manifest
from dftune.sources import SourceError, deepfakebench


def _frame(path: Path, seed: int, with_landmarks: bool = True) -> str:
    from PIL import Image

    from dftune.synthetic import identity

    path.parent.mkdir(parents=True, exist_ok=True)
    face = identity(seed).rgb
    Image.fromarray(np.ascontiguousarray(face)).resize((64, 64)).save(path)
    if with_landmarks:  # 81 points, as DeepfakeBench's landmarks/ hold, in the frame's pixels
        lm = path.parents[2] / "landmarks" / path.parent.name / (path.stem + ".npy")
        lm.parent.mkdir(parents=True, exist_ok=True)
        ang = np.linspace(0, 2 * np.pi, 81, endpoint=False)
        np.save(lm, np.stack([32 + 20 * np.cos(ang), 34 + 24 * np.sin(ang)], 1).astype(np.float32))
    return str(path)


def _bench(root: Path, absolute_from: str | None = None) -> Path:
    """A DeepfakeBench tree: FaceForensics++ frames of 6 identities, FF-real and FF-DF, c23, train/val/test."""
    ds = root / "datasets" / "FaceForensics++"
    videos = {"train": ["000", "001"], "val": ["002"], "test": ["003"]}
    pairs = {"train": ["000_001", "001_000"], "val": ["002_005"], "test": ["003_004"]}
    data: dict = {"FaceForensics++": {"FF-real": {}, "FF-DF": {}}}

    def frames(kind: str, name: str, seed: int) -> list[str]:
        out = []
        for k in range(3):
            p = ds / kind / "c23" / "frames" / name / f"{k:03d}.png"
            _frame(p, seed, with_landmarks=k != 2)
            rel = p.relative_to(root / "datasets").as_posix()
            out.append(f"{absolute_from}/{rel}" if absolute_from else rel)
        return out

    for split in ("train", "val", "test"):
        data["FaceForensics++"]["FF-real"][split] = {"c23": {
            v: {"label": "FF-real", "frames": frames("original_sequences/youtube", v, int(v))} for v in videos[split]}}
        data["FaceForensics++"]["FF-DF"][split] = {"c23": {
            v: {"label": "FF-DF", "frames": frames("manipulated_sequences/Deepfakes", v, int(v[:3]) + 7)}
            for v in pairs[split]}}
    js = root / "dataset_json" / "FaceForensics++.json"
    js.parent.mkdir(parents=True)
    js.write_text(json.dumps(data))
    return js


def test_index_reads_labels_splits_identities_and_landmarks(tmp_path):
    js = _bench(tmp_path)
    warnings = []
    items = deepfakebench.index(js, frames_root=tmp_path / "datasets", warnings=warnings)
    by = {it.key: it for it in items}
    assert set(by) == {"FF-real/000", "FF-real/001", "FF-real/002", "FF-real/003",
                       "FF-DF/000_001", "FF-DF/001_000", "FF-DF/002_005", "FF-DF/003_004"}
    assert {k: it.preset_split for k, it in by.items() if k.endswith("003") or k.endswith("004")} == {
        "FF-real/003": "test", "FF-DF/003_004": "test"}
    assert (by["FF-DF/000_001"].label, by["FF-real/000"].label) == (1, 0)
    assert (by["FF-DF/000_001"].target_id, by["FF-DF/000_001"].source_id) == ("000", "001")
    assert len(by["FF-real/000"].files) == 3
    assert [bool(f) for f in by["FF-real/000"].landmark_files] == [True, True, False]
    pts = deepfakebench.landmarks_of(by["FF-real/000"], 0)
    assert len(pts) == 81 and deepfakebench.landmarks_of(by["FF-real/000"], 2) is None


def test_paths_of_another_machine_resolve_from_the_dataset_folder_down(tmp_path):
    js = _bench(tmp_path, absolute_from="/mnt/lab/someone/datasets")
    items = deepfakebench.index(js, frames_root=tmp_path / "datasets")
    assert len(items) == 8 and all(Path(f).is_file() for it in items for f in it.files)
    # without --frames-root, the folder above the JSON's (DeepfakeBench's own layout) holds datasets/...
    assert len(deepfakebench.index(js)) == 8
    away = tmp_path / "elsewhere" / "json" / js.name  # a JSON copied where no frame is: the error names the search
    away.parent.mkdir(parents=True)
    away.write_text(js.read_text())
    with pytest.raises(SourceError, match=r"none of its frames is on disk .*was looked for as .*elsewhere.*"
                                          r"FaceForensics\+\+.*--frames-root"):
        deepfakebench.index(away)


def test_a_dataset_key_that_is_no_folder_of_the_paths_resolves_by_the_paths_tail(tmp_path):
    """DF40's JSON keys (simswap_ff) are not folders of its frame paths (.../FaceForensics++/...): written on another
    machine, the paths resolve under --frames-root by their tail, whichever folder --frames-root is."""
    js = _bench(tmp_path, absolute_from="/mnt/lab/someone/datasets")
    data = json.loads(js.read_text())
    js.write_text(json.dumps({"simswap_ff": data["FaceForensics++"]}))
    for root in (tmp_path / "datasets", tmp_path / "datasets" / "FaceForensics++"):
        items = deepfakebench.index(js, frames_root=root)
        assert len(items) == 8 and all(Path(f).is_file() for it in items for f in it.files)
        assert all(str(f).startswith(str(tmp_path / "datasets" / "FaceForensics++")) for it in items for f in it.files)
    with pytest.raises(SourceError,
                       match=r"looked for as .*nowhere/mnt/.*FaceForensics\+\+/.*000\.png and as each shorter tail"):
        (tmp_path / "nowhere").mkdir()
        deepfakebench.index(js, frames_root=tmp_path / "nowhere")


def test_a_video_whose_own_label_is_not_its_method_key_is_counted_and_named(tmp_path):
    js = _bench(tmp_path)
    data = json.loads(js.read_text())
    data["FaceForensics++"]["FF-DF"]["train"]["c23"]["000_001"]["label"] = "FF-real"  # the JSON contradicts itself
    js.write_text(json.dumps(data))
    warnings = []
    items = deepfakebench.index(js, frames_root=tmp_path / "datasets", warnings=warnings)
    w = next(w for w in warnings if "differs from the method" in w["error"])
    assert w["error"].startswith("1 videos carry a label") and "FaceForensics++/FF-DF/train/000_001 says 'FF-real'" \
        in w["error"]
    assert next(it for it in items if it.key == "FF-DF/000_001").label == 1  # taken as its key says, and said


def test_missing_frames_are_counted_listed_and_the_rest_goes_on(tmp_path):
    js = _bench(tmp_path)
    gone = tmp_path / "datasets/FaceForensics++/original_sequences/youtube/c23/frames/001/001.png"
    gone.unlink()
    for f in (tmp_path / "datasets/FaceForensics++/original_sequences/youtube/c23/frames/002").iterdir():
        f.unlink()
    warnings = []
    items = deepfakebench.index(js, frames_root=tmp_path / "datasets", warnings=warnings)
    by = {it.key: it for it in items}
    assert len(by["FF-real/001"].files) == 2 and "FF-real/002" not in by
    w = next(w for w in warnings if "not on disk" in w["error"])
    assert w["error"].startswith("4 frames named in FaceForensics++.json are not on disk")
    assert any(m.endswith("frames/001/001.png") for m in w["missing"])
    assert any("FF-real/002" in x for x in next(w for w in warnings if "no frame on disk" in w["error"])["videos"])


def test_a_video_in_several_splits_is_kept_once_in_the_most_held_out(tmp_path):
    js = _bench(tmp_path)
    data = json.loads(js.read_text())
    real = data["FaceForensics++"]["FF-real"]
    real["train"]["c23"]["003"] = real["test"]["c23"]["003"]  # DFD-style: listed in train and test
    js.write_text(json.dumps(data))
    warnings = []
    items = deepfakebench.index(js, frames_root=tmp_path / "datasets", warnings=warnings)
    assert [it.preset_split for it in items if it.key == "FF-real/003"] == ["test"]
    assert any("more than one split" in w["error"] for w in warnings)


def test_a_label_missing_from_the_class_map_is_an_error_naming_it_and_a_file_adds_it(tmp_path):
    js = _bench(tmp_path)
    data = json.loads(js.read_text())
    data["FaceForensics++"]["MyGen"] = data["FaceForensics++"].pop("FF-DF")
    js.write_text(json.dumps(data))
    with pytest.raises(SourceError, match=r"label 'MyGen' is not in DeepfakeBench's label_dict.*--class-map"):
        deepfakebench.index(js, frames_root=tmp_path / "datasets")
    cm = tmp_path / "train_config.yaml"
    cm.write_text("mode: train\nlabel_dict:\n  MyGen: 1\n  FF-real: 0\n")
    items = deepfakebench.index(js, frames_root=tmp_path / "datasets", class_map=cm)
    assert {it.method for it in items if it.label == 1} == {"MyGen"}
    # DF40's names follow <method>_Fake / <method>_Real
    assert deepfakebench.class_of("simswap_Fake", {}, "x") == 1 and deepfakebench.class_of("heygen_Real", {}, "x") == 0


def _prepare(js: Path, out: Path, *extra: str) -> int:
    return main(["prepare", str(js), "--source", "deepfakebench", "--out", str(out), "--size", "32", "--frames", "3",
                 "--workers", "1", "--no-progress", *extra])


def test_prepare_from_deepfakebench_end_to_end(tmp_path):
    js = _bench(tmp_path)
    out = tmp_path / "dfb"
    assert _prepare(js, out, "--frames-root", str(tmp_path / "datasets")) == 0
    rows = read_manifest(out)
    assert {r.split for r in rows} == {"train", "val", "test"} and len(rows) == 8 * 3
    assert {r.method for r in rows} == {"FF-real", "FF-DF"}
    assert all(r.detector == "none" for r in rows)  # DeepfakeBench's frames are crops: used whole
    with_marks = [r for r in rows if r.landmarks]
    assert len(with_marks) == 8 * 2  # frames with a .npy; their points are in crop pixels (64 -> 32)
    pts = np.array(with_marks[0].landmark_points())
    assert pts.shape == (81, 2) and 0 <= pts.min() and pts.max() <= 32
    settings = json.loads((out / "settings.json").read_text())
    assert settings["no_detect"] is True


def test_mix_of_prepared_folders_links_drops_cross_identity_leaks_and_trains(tmp_path, capsys):
    js = _bench(tmp_path)
    a = tmp_path / "a"
    assert _prepare(js, a, "--frames-root", str(tmp_path / "datasets")) == 0
    # a second folder naming identities the same way, whose test identity 000 is a train identity of a
    from dftune.synthetic import make_crops

    b = make_crops(tmp_path / "b", n_videos=4, frames=2, size=32).parent
    held_a = {i for r in read_manifest(a) if r.split != "train" for i in (r.target_id, r.source_id) if i}
    assert held_a == {"002", "003", "004", "005"}  # b trains on 000-003: its rows of 002 and 003 must go
    mix = tmp_path / "mix"
    assert main(["prepare", str(a), str(b), "--merge-into", str(mix)]) == 0
    rows = read_manifest(mix)
    assert {r.dataset for r in rows} == {"a", "b"}
    assert all((mix / r.path).is_file() for r in rows) and (mix / "data" / "a").is_symlink()
    import os

    written = sorted(f for _, _, files in os.walk(mix) for f in files)  # os.walk does not follow the links
    assert written == ["manifest.csv", "settings.json", "summary.json"]  # no copies of the crops
    kept_b_train = {i for r in rows if r.dataset == "b" and r.split == "train" for i in (r.target_id, r.source_id)}
    assert kept_b_train - {""} == {"000", "001"}
    summary = json.loads((mix / "summary.json").read_text())
    assert summary["mix"]["dropped_train_rows_sharing_an_identity"]["b"] > 0
    assert "share an identity with another folder's val/test rows" in capsys.readouterr().err
    assert summary["mix"]["rows"]["a"] + summary["mix"]["rows"]["b"] == len(rows)
    with pytest.raises(Exception, match="given twice"):
        from dftune.mix import write_mix

        write_mix([a, a], tmp_path / "mix2")
    # a mix trains like any prepared folder
    from dftune.model.load import build_tiny_vit

    vit = build_tiny_vit(tmp_path / "vit", image_size=32)
    assert main(["train", "--data", str(mix), "--model", str(vit), "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--no-progress", "--batch-size", "8"]) == 0
    assert (tmp_path / "run" / "best" / "config.json").exists()
