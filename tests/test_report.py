"""report.html: one self-contained page (figures inline) that renders in a real browser with every
image loaded and no console errors; the gallery shows what the model looked at."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("torch")

from dftune.model.load import build_tiny_vit  # noqa: E402
from dftune.stages import evaluate  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from dftune.synthetic import make_crops

    root = tmp_path_factory.mktemp("report")
    data = make_crops(root / "data", n_videos=4, frames=3, size=32).parent
    a = build_tiny_vit(root / "a", image_size=32, seed=0)
    b = build_tiny_vit(root / "b", {0: "Deepfake", 1: "Real"}, image_size=32, seed=3)
    evaluate.run([str(a), str(b)], data, root / "ev", evaluate.EvalSettings(ensemble=True, progress=False))
    return root / "ev" / "report.html"


@pytest.fixture(scope="module")
def cross(report):
    """A cross-dataset evaluation (two prepared sets, the training one and another), with its report.html."""
    from dftune.synthetic import make_crops

    root = report.parent.parent
    other = make_crops(root / "other", n_videos=4, frames=3, size=32, seed=5, methods=("Face2Face",)).parent
    evaluate.cross_dataset([str(root / "a"), str(root / "b")], [str(root / "data"), str(other)], root / "cross",
                    evaluate.EvalSettings(progress=False))
    return root / "cross" / "report.html"


def test_the_cross_dataset_page_holds_the_table_and_links_each_datasets_report(cross):
    text = cross.read_text()
    assert "Cross-dataset table" in text and "<td>mean</td>" in text
    assert text.count("<td>a</td>") == 3 and text.count("<td>b</td>") == 3  # 2 datasets + the mean, per model
    for href in re.findall(r"<a href='([^']*)'>", text):
        assert (cross.parent / href).exists(), href
    assert len(re.findall(r"<a href='([^']*)'>", text)) == 2
    assert all(s.startswith("data:image/png;base64,") for s in re.findall(r"<img[^>]*src='([^']*)'", text))


def test_the_page_holds_every_part_inline(report):
    text = report.read_text()
    for part in ("Summary", "Per manipulation method", "ROC", "precision-recall", "calibration",
                 "Scores per class and method", "Confusion matrices", "Macro F1 at the threshold predict applies",
                 "misclassified video(s) at threshold", "attention rollout"):
        assert part in text, part
    srcs = re.findall(r"<img[^>]*src='([^']*)'", text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)  # nothing fetched
    assert "http://" not in text and "https://" not in text
    # models side by side: both models and the ensemble in the summary
    assert text.count("<td>ensemble</td>") >= 2 and text.count("<td>a</td>") >= 2


def test_heat_map_is_attention_rollout_for_a_vit_and_a_gradient_otherwise():
    import torch

    from dftune import report
    from dftune.scoring import load_model

    tmp = __import__("tempfile").mkdtemp()
    build_tiny_vit(tmp, image_size=32, patch_size=8)
    m = load_model(tmp, device="cpu")
    img = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    heat, how = report.heat_map(m, img)
    assert how == "attention rollout" and heat.shape == (32, 32) and 0 <= heat.min() and heat.max() <= 1
    assert torch.is_grad_enabled()  # left as it was

    class NoAttentions:  # a model that returns no attentions: the input gradient is used
        def __init__(self, mod):
            self.mod = mod

        def __call__(self, pixel_values, output_attentions=False):
            out = self.mod(pixel_values=pixel_values)
            out.attentions = None
            return out

    m.module = NoAttentions(m.module)
    heat, how = report.heat_map(m, img)
    assert how == "input gradient" and heat.shape == (32, 32) and heat.max() == pytest.approx(1.0, abs=0.01)


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Debian's chromium is not installed (.ci/run installs it): the page is not opened")
@pytest.mark.parametrize("page", ["report", "cross"])
def test_the_page_renders_in_chromium_with_no_console_errors(page, request, tmp_path):
    path = request.getfixturevalue(page)
    n_imgs = path.read_text().count("<img ")
    r = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                        "--v=0", "--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'profile'}",
                        "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f'data-images="ok {n_imgs}"' in r.stdout, re.findall(r'data-images="[^"]*"', r.stdout)
    console = [ln for ln in r.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console
    assert "<table>" in r.stdout
    assert ("Per manipulation method" if page == "report" else "Cross-dataset table") in r.stdout
