"""What a shipped model may be used for: the starting model's licence, carried through dftune, and the Hugging
Face model card ``export`` writes.

**Provenance** (``dftune.json``'s ``extra.licence`` and ``extra.base_model``): a model's licence is the one its
``dftune.json`` carries (a dftune model inherits its start's), else the one its own model card states
(``README.md``'s YAML front matter: ``license``, with ``license_name``/``license_link`` for ``other``), else
unknown. ``base_model`` is the hub model the chain started from: the one a ``dftune.json`` records, else the hub
id the run was given. ``train`` records both from its starting model; ``merge`` from its first input that has
them (WiSE-FT's start).

**The model card** (:func:`model_card`, the ``README.md`` of an exported folder): YAML front matter with
``license``, ``base_model``, ``datasets`` (the prepared data's folder names), ``pipeline_tag:
image-classification``, ``library_name``, ``tags`` and ``model-index`` (the metrics dftune measured: the
validation of the epoch saved, the check sets'), then the numbers as a table and the submission folder's own
instructions. It is built with ``huggingface_hub``'s ``ModelCardData``, so ``ModelCard`` parses it back; one
function, so that ``export`` and a later upload write the same card.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

CARD_NAME = "README.md"
# the metrics a card lists, from dftune.json's validation record: (key, name in the card)
CARD_METRICS = (("auc", "roc_auc"), ("macro_f1", "f1"), ("accuracy", "accuracy"))


def card_licence(folder: str | Path) -> dict | None:
    """The licence a model folder's own model card (``README.md``'s front matter) states, or None:
    ``{"license": id}`` plus ``license_name`` / ``license_link`` where the card gives them."""
    p = Path(folder) / CARD_NAME
    if not p.is_file():
        return None
    from huggingface_hub.repocard import metadata_load

    try:
        meta = metadata_load(p) or {}
    except Exception as e:  # noqa: BLE001 - a malformed card: the licence is unknown, said so
        log.warning("%s: could not read its front matter (%s); its licence is unknown", p, e)
        return None
    lic = meta.get("license")
    if not lic:
        return None
    out = {"license": str(lic[0] if isinstance(lic, list) else lic)}
    for k in ("license_name", "license_link"):
        if meta.get(k):
            out[k] = str(meta[k])
    return out


def _hub_card(repo_id: str) -> Path | None:
    """The folder holding hub model ``repo_id``'s ``README.md``: from the cache, else fetched (online only)."""
    from huggingface_hub import constants, hf_hub_download

    for online in (False, True):
        if online and constants.HF_HUB_OFFLINE:
            break
        try:
            return Path(hf_hub_download(repo_id, CARD_NAME, local_files_only=not online)).parent
        except Exception as e:  # noqa: BLE001 - no card, not cached, no network: the licence stays unknown
            log.debug("%s: no model card (%s)", repo_id, e)
    return None


def provenance(folder: str | Path | None, source: str) -> dict:
    """``{"licence": {...}, "base_model": id}`` (each only where known) of the starting model ``source`` whose
    files are in ``folder`` (a hub id's cache snapshot, or the folder itself): what its ``dftune.json`` carries,
    else its own card's licence and, for a hub id, the id itself."""
    from dftune.model import meta as modelmeta
    from dftune.model.load import looks_local

    out: dict = {}
    extra = {}
    if folder is not None and modelmeta.meta_path(folder).exists():
        extra = modelmeta.load(folder).extra or {}
    if extra.get("licence"):
        out["licence"] = dict(extra["licence"])
    else:
        lic = card_licence(folder) if folder is not None else None
        if lic is None and not looks_local(source):  # a hub model's card, which from_pretrained does not fetch
            card_dir = _hub_card(str(source))
            lic = card_licence(card_dir) if card_dir is not None else None
        if lic:
            out["licence"] = {**lic, "from": str(source)}
    base = extra.get("base_model") or (None if looks_local(source) else str(source))
    if base:
        out["base_model"] = str(base)
    return out


def provenance_of(paths) -> dict:
    """The provenance of a model made from ``paths`` (``merge``): each key from the first input that has it."""
    out: dict = {}
    for p in paths:
        for k, v in provenance(p, str(p)).items():
            out.setdefault(k, v)
    return out


def licence_line(extra: dict) -> str:
    """One line for a summary: the licence and where it was stated, or that none is known."""
    lic = (extra or {}).get("licence")
    if not lic:
        return ("licence: unknown (no starting model's card stated one): check the terms of every model and "
                "dataset it was made from before shipping it")
    name = lic["license"] + (f" ({lic['license_name']})" if lic.get("license_name") else "")
    return f"licence: {name}, as stated by {lic.get('from', 'its model card')}"


def _results(meta) -> list[tuple[str, str, str, float]]:
    """``(dataset, split/level, metric, value)`` rows of what dftune measured for the model."""
    extra = meta.extra or {}
    rows = []
    data = Path(str(extra["data"])).name if extra.get("data") else "validation data"
    for level, m in (extra.get("metrics") or {}).items():
        for key, name in CARD_METRICS:
            if isinstance(m, dict) and m.get(key) is not None:
                rows.append((data, f"val ({level})", name, float(m[key])))
    for check, levels in ((extra.get("check_metrics") or {}).get("sets") or {}).items():  # {name: val-like}
        for level, m in levels.items() if isinstance(levels, dict) else ():
            for key, name in CARD_METRICS:
                if isinstance(m, dict) and m.get(key) is not None:
                    rows.append((str(check), f"check ({level})", name, float(m[key])))
    return rows


def model_card(meta, body: str = "", model_name: str | None = None, id2label: dict | None = None) -> str:
    """The ``README.md`` text of a model with ``dftune.json`` ``meta``: YAML front matter (licence, base model,
    datasets, pipeline tag, the metrics dftune measured as ``model-index``), the metrics as a table, the decision
    threshold and its provenance, the labels and face crops, then ``body`` (e.g. the submission folder's
    instructions)."""
    from huggingface_hub import EvalResult, ModelCardData

    extra = meta.extra or {}
    lic = extra.get("licence") or {}
    datasets = sorted({Path(str(p)).name for p in [extra.get("data"), *(extra.get("datasets") or {}).values()]
                       if p})
    rows = _results(meta)
    name = model_name or "dftune deepfake detector"
    evals = [EvalResult(task_type="image-classification", task_name="deepfake detection", dataset_type=d,
                        dataset_name=d, dataset_split=split, metric_type=metric, metric_value=round(v, 6))
             for d, split, metric, v in rows]
    data = ModelCardData(license=lic.get("license"), license_name=lic.get("license_name"),
                         license_link=lic.get("license_link"), base_model=extra.get("base_model"),
                         datasets=datasets or None, pipeline_tag="image-classification",
                         library_name="transformers", tags=["deepfake-detection", "dftune"],
                         model_name=name, eval_results=evals or None)
    lines = [f"# {name}", "",
             "A deepfake detector (an image classifier scoring face crops) made with dftune. " + licence_line(extra)
             + ".", ""]
    if extra.get("base_model"):
        lines += [f"Started from `{extra['base_model']}`.", ""]
    if rows:
        lines += ["| data | split | metric | value |", "|---|---|---|---|"]
        lines += [f"| {d} | {s} | {m} | {v:.4f} |" for d, s, m, v in rows]
        lines.append("")
    lines += [f"Decision threshold {meta.threshold_text()}.", ""]
    c = meta.crop
    lines += [f"- labels: {id2label} (fake = output {meta.fake_index})" if id2label else
              f"- fake = output {meta.fake_index}",
              f"- face crops: detector {c.detector}, margin {c.margin}, {c.size} px; a video is the {c.aggregate} of "
              f"{f'every {c.every}th frame' if c.every else f'{c.frames} frames'}"]
    if extra.get("exported_from"):
        lines.append(f"- exported from: {extra['exported_from']}")
    lines.append("")
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + ("\n" + body if body else "")
