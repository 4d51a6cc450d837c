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
