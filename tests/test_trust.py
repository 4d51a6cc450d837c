"""Numbers a user trusts: training and merging in float32 whatever the checkpoint was saved in, model
folders others can read, a list's own train/val rows never sharing an identity with its test rows, and
the versions CI tested written down."""

from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from dftune import atomic
from dftune.cli import main
from dftune.model.load import build_tiny_vit, load_classifier

ROOT = Path(__file__).resolve().parents[1]


def _half_copy(src: Path, dst: Path, dtype=torch.bfloat16) -> Path:
    """``src`` saved again in ``dtype``, as some hub checkpoints are."""
    import shutil

    from transformers import AutoModelForImageClassification

    AutoModelForImageClassification.from_pretrained(src).to(dtype).save_pretrained(dst)
    shutil.copy(src / "preprocessor_config.json", dst / "preprocessor_config.json")
    return dst


def test_a_half_precision_checkpoint_loads_for_training_in_float32(tmp_path):
    bf = _half_copy(build_tiny_vit(tmp_path / "m", image_size=32), tmp_path / "bf")
    model, _ = load_classifier(bf)
    dtypes = {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}
    assert dtypes == {torch.float32}


def test_merge_of_a_bf16_start_keeps_the_fine_tuned_update_and_saves_float32(tmp_path, capsys):
    from transformers import AutoModelForImageClassification

    from dftune.stages import merge

    base = build_tiny_vit(tmp_path / "base", image_size=32, seed=0)
    start = _half_copy(base, tmp_path / "start_bf16")
    tuned = AutoModelForImageClassification.from_pretrained(start).float()
    with torch.no_grad():  # a fine-tune's small step, below bf16's resolution for most weights
        for p in tuned.parameters():
            p.add_(1e-4 * torch.randn_like(p))
    tuned.save_pretrained(tmp_path / "tuned")
    (tmp_path / "tuned" / "preprocessor_config.json").write_bytes((base / "preprocessor_config.json").read_bytes())
    merge.run([str(start), str(tmp_path / "tuned")], tmp_path / "wise", alpha=0.5)
    a = AutoModelForImageClassification.from_pretrained(start).float().state_dict()
    b = AutoModelForImageClassification.from_pretrained(tmp_path / "tuned").state_dict()
    w = AutoModelForImageClassification.from_pretrained(tmp_path / "wise").state_dict()
    assert {v.dtype for v in w.values() if v.is_floating_point()} == {torch.float32}
    num = sum(float(((w[k] - (a[k] + b[k]) / 2) ** 2).sum()) for k in a if a[k].is_floating_point())
    den = sum(float(((b[k] - a[k]) ** 2).sum()) for k in a if a[k].is_floating_point())
    assert (num / den) ** 0.5 < 1e-3  # the merge is (A + B) / 2 to float32's precision, not bf16's

    # a user who asks for a smaller folder gets it, and is told how much of the update survived
    assert main(["merge", "--model", str(start), "--model", str(tmp_path / "tuned"), "--alpha", "0.5", "--out",
                 str(tmp_path / "w16"), "--dtype", "bfloat16"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    m = re.search(r"saved in bfloat16: ([0-9.]+)% of the weights that differ from .* still differ after the cast; "
                  r"the rounding is ([0-9.]+)% of the update's size", text)
    assert m, text
    assert float(m.group(1)) < 100 and float(m.group(2)) > 1
    w16 = AutoModelForImageClassification.from_pretrained(tmp_path / "w16")
    assert next(w16.parameters()).dtype == torch.bfloat16


def test_model_folders_get_the_mode_the_umask_gives(tmp_path):
    """transformers 5 writes model.safetensors with mode 0600; every folder dftune swaps in is shared."""
    from dftune.stages import merge

    a = build_tiny_vit(tmp_path / "a", image_size=32, seed=0)
    b = build_tiny_vit(tmp_path / "b", image_size=32, seed=1)
    merge.run([str(a), str(b)], tmp_path / "m", alpha=0.5)
    for f in [tmp_path / "m", *(tmp_path / "m").iterdir()]:
        want = atomic.DIR_MODE if f.is_dir() else atomic.FILE_MODE
        assert stat.S_IMODE(f.stat().st_mode) == want, f

    staged = tmp_path / "staged"
    staged.mkdir()
    private = staged / "model.safetensors"
    private.write_bytes(b"x")
    os.chmod(private, 0o600)
    os.chmod(staged, 0o700)
    atomic.replace_folder(staged, tmp_path / "final")
    assert stat.S_IMODE((tmp_path / "final" / "model.safetensors").stat().st_mode) == atomic.FILE_MODE
    assert stat.S_IMODE((tmp_path / "final").stat().st_mode) == atomic.DIR_MODE


def test_a_list_never_keeps_its_own_train_or_val_rows_that_share_an_identity_with_its_test_rows(tmp_path):
    from dftune.sources import listfile

    root = tmp_path / "mine"
    for n in ("a", "b", "c", "d"):
        (root / "videos").mkdir(parents=True, exist_ok=True)
        (root / "videos" / f"{n}.mp4").write_bytes(b"")
    (root / "list.csv").write_text(
        "path,label,split,method,video,identity\n"
        "videos/a.mp4,real,test,,,p1\n"
        "videos/b.mp4,fake,train,gan,,p1;p2\n"  # placed in train by the list, but p1 is a test identity
        "videos/c.mp4,real,val,,,p1\n"  # placed in val, p1 again
        "videos/d.mp4,fake,train,gan,,p4\n")
    warnings = []
    items = listfile.index(root, warnings=warnings)
    assert {it.key: it.preset_split for it in items} == {"real/videos__a": "test", "gan/videos__d": "train"}
    dropped = [d for w in warnings for d in w.get("dropped", [])]
    assert sorted(Path(d["file"]).name for d in dropped) == ["b.mp4", "c.mp4"]
    assert all("p1" in d["error"] and "crosses splits" in d["error"] for d in dropped)


def test_the_versions_ci_tested_are_pinned_for_every_dependency():
    """constraints.txt records what CI installed; the README's two commands and .ci/run install with it."""
    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [Requirement(d) for d in project["dependencies"] + project["optional-dependencies"]["test"]]
    for req in deps:
        name = req.name.lower().replace("_", "-")
        if name == "torch":  # pinned on the install line itself (the CPU build here, a CUDA build on a GPU)
            continue
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} outside {req}"
    for text in ((ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()):
        assert "-c constraints.txt" in text
    assert np.__version__ == pins["numpy"] or os.environ.get("CI") != "true"  # CI installs what is written


def test_dependency_ranges_stay_open_for_users():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if "==" in d]


def test_a_hub_id_is_not_mistaken_for_a_missing_folder(tmp_path, monkeypatch):
    """`org/name` holds a slash: it is a hub id (the README's first train example), not a local folder."""
    from dftune.model.load import looks_local

    monkeypatch.chdir(tmp_path)
    assert not looks_local("prithivMLmods/Deep-Fake-Detector-v2-Model")
    assert looks_local("./runs/best") and looks_local("/abs/model") and looks_local("runs/vit1/best")
    (tmp_path / "runs").mkdir()
    assert looks_local("runs")  # an existing folder is local whatever its name
    with pytest.raises(FileNotFoundError, match="model folder does not exist"):
        load_classifier("./no/such/model")
