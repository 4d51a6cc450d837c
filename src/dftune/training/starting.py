"""The starting model of a run: loaded by label names from a folder or a hub id's cache snapshot, the folder
``--wise`` merges with (refused at the start when there is none), and the crop settings its data records."""

from __future__ import annotations

import logging
from pathlib import Path

from dftune.atomic import read_json
from dftune.model import labels as _labels
from dftune.model import meta as modelmeta
from dftune.training import TrainError
from dftune.training.config import TrainConfig

log = logging.getLogger(__name__)


def wise_base(folder: str, model_source: str, cfg: TrainConfig) -> str | None:
    """``--wise``: the starting model as a local folder for the merge at the end (``folder``, where it was
    loaded from: a hub id's snapshot in the Hugging Face cache); refused now when it is not one, rather than
    after the training. None without --wise."""
    if cfg.wise_alpha <= 0 and not cfg.wise_auto:
        return None
    if not (Path(folder) / "config.json").is_file():
        from huggingface_hub import constants

        raise TrainError(
            f"--wise {'auto' if cfg.wise_auto else f'{cfg.wise_alpha:g}'}: WiSE-FT merges the starting model "
            f"with best/ when the run ends and needs "
            f"it as a local folder; {model_source} has no local copy in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}). Download it first (e.g. `hf download {model_source} --local-dir DIR`) and "
            f"pass --model DIR, or train without --wise (`dftune merge --model {model_source} --model RUN/best "
            f"--alpha A` makes the WiSE-FT model later)")
    return str(folder)


def local_snapshot(repo_id: str) -> str | None:
    """The local folder of hub model ``repo_id`` in the Hugging Face cache (``HF_HUB_CACHE``), the one
    ``from_pretrained`` reads; None when there is none (or ``repo_id`` is not a hub id)."""
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id=str(repo_id), local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached, not a hub id: no local folder
        return None
    return folder if (Path(folder) / "config.json").exists() else None


def load_model(source: str, cfg: TrainConfig, where: str | None = None):
    """(model, processor, LabelMap). Labels by name; a head of another size only with --reinit-head.
    ``where``: the name messages give the model (the hub id ``source``'s snapshot was found for)."""
    from transformers import AutoConfig

    from dftune.model.load import load_classifier, register_families

    where = str(where or source)
    register_families()
    try:
        mcfg = AutoConfig.from_pretrained(source)
    except OSError as e:
        raise OSError(f"{where}: could not read the model's config ({e})") from e
    try:
        lm = _labels.resolve(mcfg.id2label, cfg.fake_label, where=where)
        model, proc = load_classifier(source)
    except _labels.LabelMappingError:
        if not (cfg.reinit_head and mcfg.num_labels != 2):
            raise
        id2label = _labels.dftune_id2label()
        log.warning("%s: %d-class head replaced by a new 2-class head %s (--reinit-head)", where,
                    mcfg.num_labels, id2label)
        model, proc = load_classifier(source, num_labels=2, id2label=id2label,
                                      label2id={v: k for k, v in id2label.items()}, ignore_mismatched_sizes=True)
        lm = _labels.resolve(model.config.id2label)
    if cfg.reinit_head and mcfg.num_labels == 2:
        log.warning("%s: --reinit-head ignored, the head already has 2 outputs", where)
    return model, proc, lm


START_DIR = "start"  # RUN_DIR/start: the starting model under the head --head gave it


def is_normalised(model) -> bool:
    from dftune.model.normalised import NormalisedForImageClassification

    return isinstance(model, NormalisedForImageClassification)


def with_head(model, processor, cfg: TrainConfig, data_dir: Path, run_dir: Path, main: bool, say) -> tuple:
    """``(model, start folder or None)``. ``--head normalised`` on a plain-head model: the model under a normalised
    head (``model.normalised.from_classifier``), its old classifier scaled by the mean length of the pooled
    features of the training crops (``feature_norm``), so it starts near where the stock head was; written to
    ``RUN_DIR/start`` (once; the main process), the starting model ``--wise`` and ``merge`` interpolate with.
    A normalised model, or ``--head linear``: unchanged, None."""
    if cfg.head != "normalised" or is_normalised(model):
        return model, None
    from dftune.model.normalised import copy_head, from_classifier, reads_pooled

    try:
        new = from_classifier(model)
    except ValueError as e:
        raise TrainError(f"--head normalised: {e}") from None
    norm = feature_norm(new, processor, data_dir)
    kept = reads_pooled(model, new) and copy_head(new, getattr(model, "classifier", None), norm)
    start = Path(run_dir) / START_DIR
    if main and not (start / "config.json").exists():
        from dftune.atomic import staged_folder

        lm = _labels.resolve(new.config.id2label, cfg.fake_label, where=str(start))
        with staged_folder(start) as tmp:
            new.save_pretrained(tmp)
            processor.save_pretrained(tmp)
            modelmeta.save(tmp, modelmeta.ModelMeta(fake_index=lm.fake_index, real_index=lm.real_index,
                                                    crop=crop_settings(data_dir),
                                                    extra={"head": "normalised", "feature_norm": norm}))
    say(f"--head normalised: the pooled feature ({new.config.pooling}, {new.config.feature_size} wide) is "
        f"L2-normalised before the classifier; " + (f"the old head kept, scaled by the training crops' mean "
                                                    f"feature length {norm:.3f}" if kept else
                                                    "a new head (the old one reads another feature)")
        + f"; the start under the new head: {start}")
    return new, str(start)


def feature_norm(model, processor, data_dir: Path, n: int = 32) -> float:
    """The mean L2 length of ``model``'s pooled features (``NormalisedForImageClassification.pooled``) over up
    to ``n`` training crops spread over the split, framed as validation frames them (no augmentation)."""
    import numpy as np
    import torch

    from dftune.portable import Preprocess
    from dftune.prepared import read_manifest
    from dftune.training import data

    rows = read_manifest(data_dir, splits=("train",))
    rows = [rows[i] for i in np.linspace(0, len(rows) - 1, min(n, len(rows))).round().astype(int)] if rows else []
    spec = Preprocess.from_processor(processor)
    ds = data.CropDataset(data_dir, rows, data.make_transform(spec, None))
    items = [ds[i] for i in range(len(ds))]
    imgs = [it["image"] for it in items if it["valid"]]
    if not imgs:
        raise TrainError(f"{data_dir}: no readable training crop to measure the features' length on")
    model.eval()
    with torch.inference_mode():
        x = data.Normalize(spec)(torch.from_numpy(np.stack(imgs)))
        lengths = torch.cat([model.pooled(x[i:i + 16])[0].float().norm(dim=-1) for i in range(0, len(x), 16)])
    model.train()
    return float(lengths.mean())


def crop_settings(data_dir: Path) -> modelmeta.CropSettings:
    """The prepared data's crop settings (``settings.json`` written by prepare), or the guide's defaults."""
    p = Path(data_dir) / "settings.json"
    if not p.exists():
        log.info("%s: no settings.json; recording the guide's crop settings in the model", data_dir)
        return modelmeta.CropSettings()
    return modelmeta.CropSettings.from_dict(read_json(p))


def wise_ft(model_source: str, run_dir: Path, alpha: float | str, cfg: TrainConfig) -> dict:
    """``--wise A``: ``RUN_DIR/wise`` = (1 - A) * the starting model + A * ``best/`` (WiSE-FT, averaging.merge), with
    ``--threshold-on check`` the check sets' pooled optimum as its threshold. A failure is reported, never
    raised: the run's own models are complete by then."""
    from dftune.averaging import merge

    best = run_dir / "best"
    if not best.exists():
        return {"wise_error": f"{best} does not exist (no epoch was validated)"}
    try:
        r = merge([str(model_source), str(best)], run_dir / "wise", alpha=alpha, force=True, checks=cfg.checks,
                      threshold_on=cfg.threshold_on, threshold_level=cfg.monitor_level,
                      aggregate=cfg.video_aggregate)
        alpha = r.get("alpha", alpha)
    except Exception as e:  # noqa: BLE001 - the run is done; say why this extra did not happen
        log.warning("%s: WiSE-FT model not written: %s", run_dir, e)
        return {"wise_error": f"{type(e).__name__}: {e}"}
    return {"wise_dir": str(run_dir / "wise"), "wise_alpha": alpha, "wise_threshold": r.get("threshold"),
            "wise_curve": r.get("alpha_auto")}
