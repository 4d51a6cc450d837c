"""Scores: TTA views, prob_fake of a batch, and the model runners (torch, int8, ONNX)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .labels import LabelMappingError, resolve_labels
from .preprocess import Preprocess, normalise, stack_inputs


def parse_tta(spec) -> tuple:
    """``"flip,crop0.9"`` -> ``("flip", "crop0.9")``; ``"none"`` or empty -> no TTA.

    ``flip`` mirrors every view; ``cropF`` (0 < F < 1) is a centre crop of that fraction,
    resized back. The original view is always included.
    """
    if spec is None:
        return ()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for it in (str(s).strip().lower() for s in items):
        if not it or it == "none":
            continue
        if it == "flip":
            out.append("flip")
        elif it.startswith("crop"):
            try:
                f = float(it[4:])
            except ValueError:
                raise ValueError(f"TTA view {it!r}: expected cropF with a fraction F, e.g. crop0.9") from None
            if not 0.0 < f < 1.0:
                raise ValueError(f"TTA view {it!r}: the crop fraction must be between 0 and 1")
            out.append(f"crop{f:g}")
        else:
            raise ValueError(f"unknown TTA view {it!r}; use flip, cropF (e.g. crop0.9) or none")
    return tuple(dict.fromkeys(out))


def tta_views(x, tta: Sequence[str]):
    """The TTA views of a normalised batch: the batch, its centre crops, and their mirrors."""
    import torch.nn.functional as F

    views = [x]
    h, w = x.shape[-2:]
    for t in tta:
        if t.startswith("crop"):
            f = float(t[4:])
            ch, cw = max(1, int(round(h * f))), max(1, int(round(w * f)))
            y0, x0 = (h - ch) // 2, (w - cw) // 2
            views.append(F.interpolate(x[..., y0:y0 + ch, x0:x0 + cw], size=(h, w), mode="bilinear",
                                       align_corners=False, antialias=False))
    if "flip" in tta:
        views += [v.flip(-1) for v in views]
    return views


def prob_fake(run: Callable, pre: Preprocess, fake_index: int, images: Sequence[np.ndarray],
              tta: Sequence[str] = (), device="cpu") -> np.ndarray:
    """``prob_fake`` of one model (``run``: normalised batch -> logits) for RGB uint8 images of any
    size: the softmax of its fake output, averaged over the TTA views."""
    import torch

    if len(images) == 0:
        return np.zeros(0, dtype=np.float64)
    with torch.inference_mode():
        views = tta_views(normalise(stack_inputs(images, pre), pre, device), tta)
        p = sum(torch.softmax(run(v).float(), dim=-1)[:, fake_index] for v in views) / len(views)
    return p.double().cpu().numpy()


INT8_NAME = "model_int8.pt"


ONNX_NAME = "model.onnx"


META_NAME = "dftune.json"


BACKENDS = ("torch", "int8", "onnx")


def quantize_int8(model):
    """Dynamic int8 quantization of the ``nn.Linear`` layers (the guide's answer to slow inference)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notes on eager-mode quantization
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


CARRIED_CODE = {"dftune_normalised": "normalised"}  # model_type -> the module dftune writes into such a folder


def code_kwargs(model_dir) -> dict:
    """``from_pretrained``'s ``trust_remote_code`` for a folder: ``{"trust_remote_code": True}`` only for a model
    dftune wrote with its own carried code (``CARRIED_CODE``: the normalised head's ``normalised.py``, which the
    folder must hold, and to which every ``auto_map`` entry points) and only when no class is registered for its
    ``model_type`` in this process (dftune registers its own, so inside dftune the folder's copy is never run).
    Any other folder's code is never run: ``{}``."""
    import json

    d = os.fspath(model_dir)
    try:
        with open(os.path.join(d, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return {}
    module = CARRIED_CODE.get(cfg.get("model_type"))
    auto_map = cfg.get("auto_map") or {}
    if module is None or not auto_map or not isinstance(auto_map, dict):
        return {}
    if {str(v).rsplit(".", 1)[0] for v in auto_map.values()} != {module} \
            or not os.path.isfile(os.path.join(d, module + ".py")):
        return {}
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return {} if cfg.get("model_type") in CONFIG_MAPPING else {"trust_remote_code": True}


def load_runner(model_dir, backend: str = "torch", device: str = "cpu", threads: int = 0):
    """``(run, module, device)``: ``run`` maps a normalised (N, 3, H, W) tensor to logits.

    ``torch``: the Hugging Face folder; ``int8``: ``model_int8.pt`` (a state dict of the
    dynamically quantized model, rebuilt from ``config.json``; CPU only, one image at a
    time, since dynamic quantization scales activations over the whole input); ``onnx``:
    ``model.onnx`` on onnxruntime.
    """
    import torch

    d = os.fspath(model_dir)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "onnx":
        import onnxruntime as ort

        p = os.path.join(d, ONNX_NAME)
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p}: no ONNX model here; run `dftune export --model MODEL --out DIR --onnx` "
                                    "first")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        want = ["CUDAExecutionProvider", "CPUExecutionProvider"] if str(device).startswith("cuda") \
            else ["CPUExecutionProvider"]
        sess = ort.InferenceSession(p, opts, providers=[x for x in want if x in ort.get_available_providers()])
        name = sess.get_inputs()[0].name

        def run_onnx(x):
            return torch.from_numpy(sess.run(None, {name: x.detach().cpu().numpy().astype(np.float32)})[0])

        return run_onnx, None, device
    from transformers import AutoConfig, AutoModelForImageClassification

    if backend == "int8":
        if str(device) != "cpu":
            raise ValueError("the int8 backend (dynamic quantization) runs on the CPU only; use --device cpu")
        p = os.path.join(d, INT8_NAME)
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p}: no int8 model here; run `dftune export --model MODEL --out DIR --int8` "
                                    "first")
        code = code_kwargs(d)
        module = quantize_int8(AutoModelForImageClassification.from_config(
            AutoConfig.from_pretrained(d, **code), **code).eval())
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module.load_state_dict(torch.load(p, map_location="cpu", weights_only=True))
        module.eval()

        def run_int8(x):
            return torch.cat([module(pixel_values=x[i:i + 1]).logits for i in range(x.shape[0])])

        return run_int8, module, "cpu"
    module = AutoModelForImageClassification.from_pretrained(d, **code_kwargs(d)).to(device).eval()

    def run_torch(x):
        return module(pixel_values=x).logits

    return run_torch, module, device


def fake_index_of(id2label: Mapping, meta: Mapping | None = None, fake_label=None, where: str = "model") -> int:
    """The model's fake output. ``config.json``'s label names are the truth: a ``dftune.json``
    whose ``fake_index`` disagrees with them is an error naming both; its index is used only
    when the names say nothing (a model trained with ``--fake-label``)."""
    if fake_label is not None:
        return resolve_labels(id2label, fake_label, where).fake_index
    saved = None if not meta or meta.get("fake_index") is None else int(meta["fake_index"])
    try:
        by_name = resolve_labels(id2label, None, where).fake_index
    except LabelMappingError:
        if saved is None:
            raise
        return saved
    if saved is not None and saved != by_name:
        names = {int(k): v for k, v in id2label.items()}
        raise LabelMappingError(
            f"{where}: {META_NAME} says output {saved} ({names.get(saved)!r}) is fake, but config.json's labels "
            f"{names} say output {by_name} ({names.get(by_name)!r}) is; the {META_NAME} is stale. Delete its "
            f"fake_index/real_index (or the file), or pass --fake-label to say which output is fake")
    return by_name


def score_across(loaded: Iterable, score: Callable, batch_size: int, rows: int = 1) -> Iterator:
    """Crops batched across items, as ``dftune predict`` and the exported script both score them.

    ``loaded`` yields ``(item, crops, info)`` in item order; ``score(chunk) -> (K, n)`` scores a batch of at
    most ``batch_size`` crops (K = ``rows``: the ensemble's and each model's, say). Yields ``(item, info,
    scores (K, n_item))`` in item order, each item as soon as all its crops are scored. One file's ten frames
    and the next file's one image share a batch, so the batches (and so the scores, to the last bit) do not
    depend on which program framed the files or how many processes did."""
    pending: list = []  # (item, info, n_crops) not yet yielded
    buf: list = []  # crops not scored yet
    scored = np.zeros((rows, 0))  # scores of the pending items' crops, in order

    def drain(final: bool):
        nonlocal buf, scored, pending
        while len(buf) >= batch_size or (final and buf):
            chunk, buf = buf[:batch_size], buf[batch_size:]
            scored = np.hstack([scored, np.asarray(score(chunk)).reshape(rows, -1)])
        used, j = 0, 0
        while j < len(pending) and used + pending[j][2] <= scored.shape[1]:
            item, info, n = pending[j]
            yield item, info, scored[:, used:used + n]
            used, j = used + n, j + 1
        pending, scored = pending[j:], scored[:, used:]

    for item, crops, info in loaded:
        pending.append((item, info, len(crops)))
        buf.extend(crops)
        yield from drain(False)
    yield from drain(True)
    if pending:
        raise RuntimeError("internal error: crops left unscored")
