"""prepare --source hf (Hugging Face datasets built here with the ``datasets`` library), generators held out
(--holdout-generators, --split generator) and evaluate's seen / held-out rows."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

from dftune import synthetic  # noqa: E402
from dftune.cli import main  # noqa: E402
from dftune.sources import Item, SourceError  # noqa: E402

GENERATORS = ("sd", "mj", "flux")


def _png(rgb) -> bytes:
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(rgb).save(b, "PNG")
    return b.getvalue()


def face_rows(n_ids: int = 8, generators=GENERATORS, bad: int = 0) -> dict:
    """One real portrait per identity and one fake of it per generator (synthetic's faces); ``bad`` rows whose
    bytes are no image."""
    rows = {"image": [], "label": [], "model": [], "person": []}
    for i in range(n_ids):
        t = synthetic.identity(i)
        for gen in ("real",) + tuple(generators):
            rgb = t.rgb if gen == "real" else synthetic.manipulate("FaceSwap", t, synthetic.identity(i + 1), seed=i)
            rows["image"].append({"bytes": _png(rgb[::3, ::3].copy()), "path": None})
            rows["label"].append(0 if gen == "real" else 1)
            rows["model"].append(gen)
            rows["person"].append(f"p{i}")
    for j in range(bad):
        rows["image"].append({"bytes": b"not an image at all", "path": None})
        rows["label"].append(1)
        rows["model"].append("sd")
        rows["person"].append(f"bad{j}")
    return rows


FEATURES = {"image": datasets.Image(), "label": datasets.ClassLabel(names=["real", "fake"]),
            "model": datasets.Value("string"), "person": datasets.Value("string")}


def make_dataset(**kw):
    feat = datasets.Features(FEATURES)
    return datasets.Dataset.from_dict(face_rows(**kw), features=feat,
                                      info=datasets.DatasetInfo(license="cc-by-nc-4.0", features=feat))


def prepare(root, out, *extra) -> int:
    return main(["prepare", str(root), "--source", "hf", "--out", str(out), "--detector", "none", "--size", "32",
                 "--workers", "1", "--no-progress", *extra])


def manifest(out) -> list[dict]:
    with open(Path(out) / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A save_to_disk folder: one split, a generator column, an identity column, a licence in its info."""
    root = tmp_path_factory.mktemp("hf") / "saved"
    make_dataset().save_to_disk(str(root))
    return root


def test_save_to_disk_prepare_train_evaluate_holds_generators_out(saved, tmp_path, tiny_vit, capsys):
    out = tmp_path / "data"
    assert prepare(saved, out, "--holdout-generators", "flux") == 0
    rows = manifest(out)
    by_split = {s: Counter(r["method"] for r in rows if r["split"] == s) for s in ("train", "val", "test")}
    assert by_split["train"]["flux"] == by_split["val"]["flux"] == 0 and by_split["test"]["flux"] > 0
    assert by_split["train"]["sd"] and by_split["train"]["real"] and by_split["val"]["mj"]
    # one person never crosses splits: reals and fakes of p3 all in one split
    persons: dict[str, set] = {}
    for r in rows:
        persons.setdefault(r["target_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in persons.values()), persons
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"]["license"] == "cc-by-nc-4.0"
    assert summary["dataset"]["columns"] == {"image": "image", "kind": "image", "label": "label",
                                             "generator": "model", "group": "person", "split": None}
    assert summary["generators"]["held_out"] == ["flux"] and summary["generators"]["test"] == ["flux", "mj", "sd"]

    run = tmp_path / "run"
    vit = tiny_vit()
    assert main(["train", "--data", str(out), "--model", vit, "--out", str(run), "--epochs", "1", "--threads", "1",
                 "--workers", "0", "--batch-size", "8", "--no-progress"]) == 0
    meta = json.loads((run / "best" / "dftune.json").read_text())
    assert meta["extra"]["train_methods"] == ["mj", "sd"]
    capsys.readouterr()
    ev = tmp_path / "eval"
    assert main(["evaluate", "--model", str(run / "best"), "--data", str(out), "--out", str(ev), "--no-progress"]) == 0
    shown = capsys.readouterr().out
    assert "held out" in shown and "seen in training" in shown
    m = json.loads((ev / "metrics.json").read_text())
    e = next(iter(m["models"].values()))
    groups = e["video"]["seen_held_out"]
    assert groups["seen"]["generators"] == ["mj", "sd"] and groups["held_out"]["generators"] == ["flux"]
    n_real = sum(1 for r in rows if r["split"] == "test" and r["label"] == "0")
    assert groups["held_out"]["at_0.5"]["n"] == n_real + by_split["test"]["flux"]
    assert "held out" in (ev / "report.html").read_text() and "flux (held out)" in (ev / "report.md").read_text()

    # a model trained before train_methods existed: its dftune.json's data folder says what it saw
    import shutil

    old = tmp_path / "old-model"
    shutil.copytree(run / "best", old)
    meta["extra"].pop("train_methods")
    (old / "dftune.json").write_text(json.dumps(meta))
    assert main(["evaluate", "--model", str(old), "--data", str(out), "--out", str(tmp_path / "ev-old"),
                 "--no-progress", "--no-plots"]) == 0
    e_old = next(iter(json.loads((tmp_path / "ev-old" / "metrics.json").read_text())["models"].values()))
    assert e_old["video"]["seen_held_out"]["held_out"]["generators"] == ["flux"]

    # the cross-dataset page: a set of unseen generators only is marked held out, FF++-like seen ones seen
    only_flux = tmp_path / "only-flux"
    datasets.load_from_disk(str(saved)).filter(lambda r: r["model"] in ("real", "flux")).save_to_disk(str(only_flux))
    flux_data = tmp_path / "flux-data"
    assert prepare(only_flux, flux_data) == 0
    cross = tmp_path / "cross"
    assert main(["evaluate", "--model", str(run / "best"), "--data", str(out), "--data", str(flux_data),
                 "--out", str(cross), "--no-progress"]) == 0
    table = json.loads((cross / "metrics.json").read_text())["table"]
    marks = {r["dataset"]: r.get("generators") for r in table}
    assert marks == {"data": "seen + held out", "flux-data": "held out", "mean": None}
    assert "flux-data (held out)" in (cross / "report.html").read_text()


def test_parquet_streaming_balanced_sample(tmp_path):
    """The streaming path on a local dataset loaded with streaming=True: --per-generator caps each generator,
    --limit the rows per split, and the stream keeps the dataset's splits (train / test)."""
    src = tmp_path / "pq"
    ds = make_dataset(n_ids=6)
    ds.select(range(0, 16)).to_parquet(str(src / "train.parquet"))
    ds.select(range(16, 24)).to_parquet(str(src / "test.parquet"))
    out = tmp_path / "sample"
    assert prepare(src, out, "--streaming", "--per-generator", "2") == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["dataset"]["streaming"] is True and s["dataset"]["splits"] == ["train", "test"]
    assert s["dataset"]["generators"] == {"real": 4, "sd": 4, "mj": 4, "flux": 4}  # 2 per generator in each split
    test_rows = [r for r in manifest(out) if r["video_id"].startswith("test-")]
    assert test_rows and {r["split"] for r in test_rows} == {"test"}  # the dataset's own test split kept
    out2 = tmp_path / "limited"
    assert prepare(src, out2, "--streaming", "--limit", "5") == 0
    assert json.loads((out2 / "summary.json").read_text())["dataset"]["rows_kept"] == 10


def test_interrupted_stream_resumes_without_duplicates(tmp_path, monkeypatch):
    from dftune.sources import hf

    src = tmp_path / "pq"
    make_dataset(n_ids=4).to_parquet(str(src / "train.parquet"))
    whole = tmp_path / "whole"
    assert prepare(src, whole, "--streaming") == 0
    out = tmp_path / "stopped"
    real_store, calls = hf._store_file, []

    def stop_after_five(dest, data):
        calls.append(dest)
        if len(calls) == 6:
            raise KeyboardInterrupt
        real_store(dest, data)

    monkeypatch.setattr(hf, "_store_file", stop_after_five)
    assert prepare(src, out, "--streaming") == 130
    assert not (out / "manifest.csv").exists()
    monkeypatch.setattr(hf, "_store_file", real_store)
    assert prepare(src, out, "--streaming") == 0
    a, b = manifest(whole), manifest(out)
    assert len(b) == len({r["path"] for r in b}) == 16
    assert sorted(r["path"] for r in a) == sorted(r["path"] for r in b)
    files = list((out / ".hf").rglob("files/*/*"))
    assert len(files) == 16  # each row's image once
    # the same command once more: the finished index and every crop are reused (settings.json agrees)
    assert prepare(src, out, "--streaming", "--fake-values", "fake") == 2  # other column settings: refused
    assert prepare(src, out, "--streaming") == 0
    again = json.loads((out / "summary.json").read_text())["this_run"]
    assert (again["todo"], again["skipped_complete"]) == (0, 16)


def test_bad_rows_and_bad_columns(tmp_path, capsys):
    src = tmp_path / "bad"
    make_dataset(n_ids=4, bad=2).save_to_disk(str(src))
    out = tmp_path / "out"
    assert prepare(src, out) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["videos"]["failed"] == 2
    # named by the dataset's row: split "all" (one split), rows 16 and 17
    assert sorted(Path(f["file"]).stem for f in s["failures"]) == ["all-00000016", "all-00000017"]
    assert all("cannot read as an image" in f["error"] for f in s["failures"])
    assert len(manifest(out)) == 16
    # the same folder with generators held out would mix two splits: refused, naming the setting
    assert main(["prepare", str(src), "--source", "hf", "--out", str(out), "--detector", "none", "--size", "32",
                 "--holdout-generators", "sd", "--no-progress"]) == 2
    assert "already prepared with other settings (holdout_generators: None there, ['sd'] now" in capsys.readouterr().err
    assert (out / "manifest.csv").exists() and len(manifest(out)) == 16

    no_image = tmp_path / "noimg"
    datasets.Dataset.from_dict({"caption": ["a", "b"], "label": [0, 1]}).save_to_disk(str(no_image))
    with pytest.raises(SourceError, match=r"no image column found \(columns: caption, label\)"):
        _index(no_image, tmp_path / "o1")

    odd = tmp_path / "odd"
    datasets.Dataset.from_dict({"image": [{"bytes": _png(synthetic.identity(0).rgb), "path": None}] * 3,
                                "label": ["cat", "dog", "dog"]},
                               features=datasets.Features({"image": datasets.Image(),
                                                           "label": datasets.Value("string")})).save_to_disk(str(odd))
    with pytest.raises(SourceError, match=r"column 'label': value '(cat|dog)' is neither.*values seen: .*'dog'"):
        _index(odd, tmp_path / "o2")
    items = _index(odd, tmp_path / "o3", fake_values=("dog",))
    assert sorted(it.label for it in items) == [0, 1, 1]

    assert main(["prepare", str(src), "--source", "hf", "--out", str(tmp_path / "o4"), "--detector", "none",
                 "--holdout-generators", "dalle", "--no-progress"]) == 2
    with pytest.raises(SourceError, match="--holdout-generators dalle: not in the data; its generators are flux, mj, "
                                          "sd"):
        from dftune.stages.prepare import PrepareConfig, index_items

        index_items(PrepareConfig(root=src, out=tmp_path / "o5", source="hf", holdout_generators=("dalle",),
                                  progress=False), [])


def _index(root, out, **opts):
    from dftune.sources import hf

    return hf.index(root, [], out=out, hf=hf.HfOptions(**opts), progress=False)


def test_offline_hub_id_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with pytest.raises(SourceError) as e:
        _index("nobody-here/no-such-set", tmp_path / "o")
    assert "not in the local Hugging Face cache" in str(e.value) and "\n" not in str(e.value)


def test_imagefolder_with_detection(tmp_path):
    """An imagefolder (real/, fake/ of whole portraits): rows go through prepare's detect + guide crop."""
    from PIL import Image

    root = tmp_path / "faces"
    for i in range(4):
        t = synthetic.identity(i)
        for cls, rgb in (("real", t.rgb), ("fake", synthetic.manipulate("Face2Face", t, t, seed=i))):
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(root / cls / f"{i}.png")
    out = tmp_path / "out"
    assert main(["prepare", str(root), "--source", "hf", "--out", str(out), "--size", "32", "--workers", "1",
                 "--no-progress"]) == 0
    rows = manifest(out)
    assert len(rows) == 8 and {r["detector"] for r in rows} == {"dlib"}
    assert {r["method"] for r in rows} == {"real", "fake"}
    assert not list((out / ".hf").rglob("files/*/*"))  # local image files are read where they are


def _item(method, label, vid, target="", split="train"):
    return Item(Path(f"/x/{method}/{vid}.mp4"), "video", label, method, vid, target_id=target, split=split,
                preset_split=split)


def test_split_by_generator_deals_whole_generators_and_keeps_identities_apart():
    from dftune.sources.splits import assign_generators

    items = []
    for i in range(30):
        split = "train" if i < 20 else "val" if i < 25 else "test"
        items.append(_item("real", 0, f"r{i}", f"id{i}", split))
        for g in ("A", "B", "C", "D", "E"):
            items.append(_item(g, 1, f"{g}{i}", f"id{i}", split))
    kept, excluded, placement = assign_generators(items, holdout=("E",), by_generator=True, seed=3)
    fake_split = {}
    for it in kept:
        if it.label:
            fake_split.setdefault(it.method, set()).add(it.split)
    assert all(len(s) == 1 for s in fake_split.values()), fake_split  # each generator whole in one split
    assert fake_split["E"] == {"test"} and placement["held_out"] == ["E"]
    real_split = {it.target_id: it.split for it in kept if not it.label}
    assert all(real_split[it.target_id] == it.split for it in kept)  # no identity crosses splits
    assert len(excluded) == placement["fakes_dropped"] > 0
    assert {s for ss in fake_split.values() for s in ss} == {"train", "val", "test"}


def test_holdout_generators_on_ffpp(ffpp_tree, tmp_path):
    from dftune.stages.prepare import PrepareConfig, index_items

    info: dict = {}
    cfg = PrepareConfig(root=ffpp_tree, out=tmp_path, splits=ffpp_tree / "splits", progress=False)
    before, _ = index_items(cfg, [])
    cfg.holdout_generators = ("Deepfakes",)
    kept, excluded = index_items(cfg, [], info)
    assert {it.split for it in before if it.method == "Deepfakes"} == {"train", "val", "test"}
    assert {it.split for it in kept if it.method == "Deepfakes"} == {"test"}
    assert {it.key for it in kept} == {it.key for it in before if it.method != "Deepfakes" or it.split == "test"}
    assert len(excluded) == sum(1 for it in before if it.method == "Deepfakes" and it.split != "test")
    assert info["generators"]["held_out"] == ["Deepfakes"] and "Deepfakes" not in info["generators"]["train"]


def test_split_by_generator_on_ffpp_and_holdout_on_deepfakebench(ffpp_tree, tmp_path):
    from dftune.stages.prepare import PrepareConfig, index_items
    from test_deepfakebench import _bench

    info: dict = {}
    cfg = PrepareConfig(root=ffpp_tree, out=tmp_path / "f", splits=ffpp_tree / "splits", split="generator", seed=1,
                        progress=False)
    kept, _ = index_items(cfg, [], info)
    where = {}
    for it in kept:
        where.setdefault(it.method, set()).add(it.split)
    fakes = {m: s for m, s in where.items() if m != "original"}
    assert all(len(s) == 1 for s in fakes.values()) and len(fakes) == 4  # each generator whole, in one split
    assert {s for ss in fakes.values() for s in ss} == {"train", "val", "test"}
    assert where["original"] == {"train", "val", "test"}  # the reals keep the official pairs' splits
    assert cfg.crop_settings()["seed"] == 1  # the seed deals: recorded, so a re-run with another is refused

    js = _bench(tmp_path / "bench")
    cfg = PrepareConfig(root=js, out=tmp_path / "b", source="deepfakebench", frames_root=str(tmp_path / "bench" /
                        "datasets"), holdout_generators=("FF-DF",), progress=False)
    kept, excluded = index_items(cfg, [])
    assert {it.key for it in kept if it.label} == {"FF-DF/003_004"}  # its train/val fakes share reals' identities
    assert sum("generator FF-DF is dealt to test" in e["error"] for e in excluded) == 3


def test_video_column(tmp_path):
    """A Video feature: each row's video is sampled and framed as prepare frames any video."""
    t = synthetic.identity(0)
    bg = synthetic._background(0, 160, 120)
    seq = [synthetic.render_frame(t.rgb, t.face, bg, k / 7, motion_seed=0)[0] for k in range(8)]
    synthetic.write_video(tmp_path / "v.mp4", seq)
    data = (tmp_path / "v.mp4").read_bytes()
    feat = datasets.Features({"video": datasets.Video(), "label": datasets.Value("int64"),
                              "generator": datasets.Value("string")})
    datasets.Dataset.from_dict({"video": [{"bytes": data, "path": None}] * 2, "label": [0, 1],
                                "generator": ["real", "sora"]}, features=feat).save_to_disk(str(tmp_path / "vids"))
    out = tmp_path / "out"
    assert main(["prepare", str(tmp_path / "vids"), "--source", "hf", "--out", str(out), "--frames", "3",
                 "--size", "32", "--workers", "1", "--no-progress"]) == 0
    rows = manifest(out)
    assert Counter(r["method"] for r in rows) == {"real": 3, "sora": 3}
    assert sorted({r["frame_index"] for r in rows}) == ["0", "3", "7"]
    s = json.loads((out / "summary.json").read_text())
    assert s["dataset"]["columns"]["kind"] == "video" and s["dataset"]["license"] is None
