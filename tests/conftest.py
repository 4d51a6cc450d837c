"""Shared fixtures: data the tests make themselves (no downloads)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ffpp_tree(tmp_path_factory) -> Path:
    """A small FF++-shaped tree: 6 identities (3 pairs: train/val/test), 4 methods, 12-frame H.264 videos.

    Read-only for tests: copy it (``ffpp_copy``) before changing anything.
    """
    from dftune.synthetic import build_ffpp_tree

    root = tmp_path_factory.mktemp("ffpp") / "FaceForensics++"
    build_ffpp_tree(root, n_ids=6, frames=12, width=320, height=240)
    return root


@pytest.fixture
def ffpp_copy(ffpp_tree, tmp_path) -> Path:
    dst = tmp_path / "ffpp"
    shutil.copytree(ffpp_tree, dst)
    return dst


@pytest.fixture(scope="session")
def face_photo() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


@pytest.fixture(scope="session")
def make_crops(tmp_path_factory):
    """``make_crops(**kwargs)`` -> a new prepared folder of :func:`dftune.synthetic.make_crops` (face crops +
    manifest from the renderer, no video, no detector). Each call writes its own folder: a module's fixture
    calls it once, as tests that change their data need."""
    from dftune import synthetic

    def make(name: str = "crops", **kwargs) -> Path:
        out = tmp_path_factory.mktemp(name)
        synthetic.make_crops(out, **kwargs)
        return out

    return make


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory):
    """``tiny_vit(id2label=None, name="vit", **kwargs)`` -> the path (str) of a new small random ViT classifier
    and its processor, built from a config (:func:`dftune.model.load.build_tiny_vit`), as a hub model is saved."""
    from dftune.model.load import build_tiny_vit

    def make(id2label: dict | None = None, name: str = "vit", **kwargs) -> str:
        return str(build_tiny_vit(tmp_path_factory.mktemp(name), id2label or {0: "Realism", 1: "Deepfake"},
                                  **kwargs))

    return make


# runs a script (argv[1:]) in a fresh interpreter where `import dftune` fails: what a submission machine sees
NO_DFTUNE = ("import sys, runpy; sys.modules['dftune'] = None; sys.argv = sys.argv[1:]; "
             "runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.fixture(scope="session")
def without_dftune() -> list[str]:
    """The command prefix that runs a script with `import dftune` made impossible: ``[*without_dftune, script,
    args...]``."""
    import sys

    return [sys.executable, "-c", NO_DFTUNE]


def encode_h264(path, frames, fmt=None, bframes: int = 2, gop: int = 12, fps: int = 25, qp: int = 10):
    """Frames (RGB arrays, even sides) as H.264 with B-frames in any container PyAV writes (``fmt="avi"``...)."""
    import av
    import numpy as np

    c = av.open(str(path), "w", format=fmt)
    s = c.add_stream("libx264", rate=fps)
    s.height, s.width = frames[0].shape[:2]
    s.pix_fmt = "yuv420p"
    s.options = {"bf": str(bframes), "g": str(gop), "keyint_min": str(gop), "qp": str(qp)}
    for i, a in enumerate(frames):
        f = av.VideoFrame.from_ndarray(np.ascontiguousarray(a), format="rgb24")
        f.pts = i
        for p in s.encode(f):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return Path(path)


def trim_mp4(src, out, cut: int, fps: int = 25):
    """``src`` with its first ``cut`` frames trimmed by an edit list, as ``ffmpeg -ss ... -c copy`` leaves a
    file: their packets stay (later frames reference them) with negative pts, which the demuxer marks discard."""
    import av

    i, o = av.open(str(src)), av.open(str(out), "w")
    ist = i.streams.video[0]
    ost = o.add_stream_from_template(ist)
    shift = int(round(cut / fps / ist.time_base))
    for p in i.demux(ist):
        if p.dts is None:
            continue
        p.pts -= shift
        p.dts -= shift
        p.stream = ost
        o.mux(p)
    o.close()
    i.close()
    return Path(out)


class Killed(Exception):
    """Raised from ``on_epoch_end`` to stand for a run killed after an epoch's checkpoint."""


def train_killed_after(epoch: int, data, model, out, cfg, **kwargs) -> None:
    """``train.run`` killed right after epoch ``epoch``'s checkpoint (what ``--resume`` then continues)."""
    from dftune.stages import train

    def kill(e, record):
        if e == epoch:
            raise Killed

    with pytest.raises(Killed):
        train.run(data, model, out, cfg, progress=False, on_epoch_end=kill, **kwargs)


def assert_same_tensors(a_dir, b_dir, files) -> None:
    """Each safetensors file of ``files`` holds bit-equal tensors under ``a_dir`` and ``b_dir``."""
    import torch
    from safetensors.torch import load_file

    for f in files:
        a, b = load_file(str(Path(a_dir) / f)), load_file(str(Path(b_dir) / f))
        assert a.keys() == b.keys(), f
        for k in a:
            assert torch.equal(a[k], b[k]), (f, k)


def hub_cache_entry(cache: Path, repo: str, files: dict[str, str]) -> Path:
    """A model in a Hugging Face cache laid out as huggingface_hub writes it (refs/main -> snapshots/COMMIT)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (snap / name).write_text(text)
    return snap
