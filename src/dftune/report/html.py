"""``report.html``: one self-contained page a person looks at (figures inline, no network).

What it shows, for every model side by side: the summary and per-method tables, ROC and
precision-recall curves, score histograms per class and per method with the threshold
drawn in, a calibration curve, the confusion matrices, and a gallery of the errors at the threshold
predict applies (every misclassified video, worst first, with its worst crops) with a heat map of what
the model looked at:
attention rollout for ViT-style models (the attention of every layer, with the residual,
multiplied through), the gradient of the fake score with respect to the input otherwise.

A small inline script counts the images that loaded and writes the count on ``<body>``
(``data-images``), so a headless browser's DOM dump shows whether the page rendered.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dftune.plots import _plt, draw_confusion, draw_histogram, draw_roc
from dftune.report.markdown import (
    CROSS_HEADER,
    FILES_HEADER,
    FRAMING_HEADER,
    METHOD_HEADER,
    SEEN_HEADER,
    THRESHOLD_HEADER,
    cross_cells,
    cross_notes,
    files_rows,
    files_settings,
    framing_rows,
    method_rows,
    seen_rows,
    summary_header,
    summary_rows,
    threshold_rows,
)

if TYPE_CHECKING:  # the types only; a component never imports a stage at run time
    from dftune.prepared import Row
    from dftune.scoring import LoadedModel
    from dftune.stages.evaluate import CrossResult, EvalResult, FilesResult

log = logging.getLogger(__name__)


def _png(fig) -> str:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img_uri(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def curves_figure(y, scored: Mapping[str, np.ndarray], title: str) -> str:
    """ROC and precision-recall side by side, one line per model."""
    from sklearn.metrics import precision_recall_curve

    from dftune import metrics

    fig, (a, b) = _plt().subplots(1, 2, figsize=(9, 4))
    roc = {}
    for name, p in scored.items():
        fpr, tpr, _ = metrics.roc_points(y, p)
        roc[name] = (fpr, tpr, metrics.roc_auc(y, p))
        if len(fpr):
            pr, rc, _ = precision_recall_curve(y, p)
            b.plot(rc, pr, lw=1.5, label=name)
    draw_roc(a, roc, f"ROC — {title}")
    b.set(xlabel="recall (fakes caught)", ylabel="precision", title=f"precision-recall — {title}", ylim=(0, 1.02))
    b.grid(alpha=0.3)
    b.legend(fontsize=7, loc="lower left")
    return _png(fig)


def histogram_figure(y, p, methods: Sequence[str], threshold: float | None, title: str,
                     threshold_label: str = "val threshold") -> str:
    """Score histograms: reals, then each method's fakes; the threshold as a line (``plots.draw_histogram``)."""
    fig, ax = _plt().subplots(figsize=(9, 3.6))
    draw_histogram(ax, y, p, methods, threshold, title, threshold_label)
    return _png(fig)


def roc_only_figure(y, scored: Mapping[str, np.ndarray], title: str) -> str:
    """One ROC panel, one line per model (``plots.draw_roc``)."""
    from dftune import metrics

    fig, ax = _plt().subplots(figsize=(4.6, 4.2))
    roc = {}
    for name, p in scored.items():
        fpr, tpr, _ = metrics.roc_points(y, p)
        roc[name] = (fpr, tpr, metrics.roc_auc(y, p))
    draw_roc(ax, roc, title)
    return _png(fig)


def one_class_note(y, what: str) -> str | None:
    """``"AUC undefined: one class (only the 12 real crops) ..."`` when ``y`` holds one class, else None."""
    y = np.asarray(y)
    if len(y) and y.min() != y.max():
        return None
    if not len(y):
        return f"nothing to draw: no {what}"
    cls = "real" if int(y[0]) == 0 else "fake"
    return (f"AUC undefined: one class (only the {len(y)} {cls} {what}), so no ROC or precision-recall curve "
            "and no AUC, AP or EER")


def _note(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>"


def calibration_figure(y, scored: Mapping[str, np.ndarray], title: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    edges = np.linspace(0, 1, 11)
    for name, p in scored.items():
        idx = np.clip(np.digitize(p, edges) - 1, 0, 9)
        xs, ys = [], []
        for b in range(10):
            sel = idx == b
            if sel.sum():
                xs.append(p[sel].mean())
                ys.append(y[sel].mean())
        ax.plot(xs, ys, "o-", ms=3, label=name)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(xlabel="mean prob_fake (10 bins)", ylabel="share of fakes", title=f"calibration — {title}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


def confusion_figure(cm, title: str) -> str:
    fig, ax = _plt().subplots(figsize=(3.6, 3.2))
    draw_confusion(ax, cm, title)
    return _png(fig)


# ---------------------------------------------------------------- what the model looked at


def heat_map(model, image: np.ndarray) -> tuple[np.ndarray, str]:
    """``(map in [0, 1] at the model's input size, method)`` for one RGB uint8 crop.

    Attention rollout when the model returns attentions with a CLS token (ViT, DeiT, BEiT…),
    else |gradient of the fake probability w.r.t. the input|, max over colour channels.
    """
    import torch

    from dftune.portable import normalise, resize_crop_uint8

    pre, mod = model.pre, model.module
    x = normalise(resize_crop_uint8(image, pre)[None], pre, model.device)
    if mod is None:
        raise ValueError("heat maps need the torch backend")
    try:
        if hasattr(mod, "set_attn_implementation"):
            mod.set_attn_implementation("eager")
        with torch.no_grad():
            out = mod(pixel_values=x, output_attentions=True)
        att = out.attentions
        if att and att[0] is not None and att[0].shape[-1] > 1:
            n = att[0].shape[-1]
            side = int(round((n - 1) ** 0.5))
            if side * side == n - 1:
                roll = torch.eye(n)
                for a in att:
                    a = a[0].mean(0).float().cpu()
                    a = 0.5 * a + 0.5 * torch.eye(n)
                    roll = (a / a.sum(-1, keepdim=True)) @ roll
                m = roll[0, 1:].reshape(side, side).numpy()
                return _upsample(m, pre.out_height, pre.out_width), "attention rollout"
    except Exception as e:  # models without attentions: fall back to the gradient
        log.debug("attention rollout unavailable (%s); using the input gradient", e)
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        logits = mod(pixel_values=x).logits.float()
        torch.softmax(logits, -1)[0, model.fake_index].backward()
    g = x.grad[0].abs().amax(0).cpu().numpy()
    return _upsample(g, pre.out_height, pre.out_width), "input gradient"


def _upsample(m: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    m = m.astype(np.float32)
    m = (m - m.min()) / (np.ptp(m) + 1e-8)
    return np.asarray(Image.fromarray((m * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)) / 255.0


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps
    from PIL import Image

    base = np.asarray(Image.fromarray(image).resize((heat.shape[1], heat.shape[0]), Image.BILINEAR), np.float32)
    col = colormaps["jet"](heat)[..., :3] * 255
    return np.clip(0.55 * base + 0.45 * col, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- the page


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1f24;max-width:1400px}
h1{font-size:22px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:13px} \
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f5f7} td:first-child,th:first-child,td.l{text-align:left}
.row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start} img.fig{max-width:100%;border:1px solid #eee}
.card{border:1px solid #ddd;border-radius:6px;padding:6px;font-size:12px;width:250px}
.card img{width:120px;height:120px;image-rendering:pixelated} .note{color:#555;font-size:13px}
"""

_CHECK = """
<script>
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0, bad = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; else bad++; }
  document.body.setAttribute('data-images', bad ? ('broken ' + bad + ' of ' + imgs.length) : ('ok ' + ok));
});
</script>
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


@dataclass
class HtmlReport:
    """What ``report.html`` of one prepared split is drawn from.

    ``result``: evaluate's ``EvalResult``; ``rows``: the measured manifest rows; ``scored``: model
    name -> prob_fake per row; ``image``: ``index -> RGB crop`` for the gallery; ``models``: name ->
    loaded model (for heat maps; an ensemble has none); ``video_level(rows, p) -> (keys, p, y, methods)``.
    """

    result: EvalResult
    rows: Sequence[Row]
    scored: Mapping[str, np.ndarray]
    image: Callable[[int], np.ndarray]
    models: Mapping[str, LoadedModel]
    video_level: Callable[[Sequence[Row], np.ndarray], tuple]
    n_gallery: int = 60  # misclassified videos shown with their crops; the others are named
    per_video: int = 3  # each one's worst crops


def write_html(path, page: HtmlReport) -> None:
    """Write ``report.html``: tables, curves, histograms, confusion matrices, the worst-error gallery."""
    from dftune.atomic import write_text

    result, rows, scored = page.result, page.rows, page.scored
    y = np.array([r.label for r in rows], dtype=np.int64)
    methods = [r.method for r in rows]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>dftune evaluate — "
             f"{html.escape(str(result.data))}</title><style>{_CSS}</style></head><body>",
             f"<h1>dftune evaluate: {html.escape(result.split)} split of <code>{html.escape(str(result.data))}"
             f"</code></h1>",
             f"<p class='note'>TTA {html.escape(', '.join(result.tta) or 'none')}; video score = "
             f"{html.escape(result.aggregate)} of its crops; threshold tuned for macro F1 on "
             f"{html.escape(str(result.threshold_split or 'nothing'))}. F1 = macro F1 (the competition's metric).</p>",
             "<h2>Macro F1 at the threshold predict applies</h2>",
             "<p class='note'>First row of each model: its stored threshold, each crop and each pooled video judged "
             "as <code>dftune predict</code> judges them (the number the contest scores).</p>",
             _table(THRESHOLD_HEADER, threshold_rows(result)),
             "<h2>Summary</h2>", _table(summary_header(result), summary_rows(result)),
             *(["<h2>Generators seen in training and held out</h2>", _table(SEEN_HEADER, seen_rows(result))]
               if seen_rows(result) else []),
             "<h2>Per manipulation method (video level)</h2>", _table(METHOD_HEADER, method_rows(result, "video")),
             "<h2>ROC and precision-recall curves, calibration</h2><div class='row'>"]
    video = {nm: page.video_level(rows, p) for nm, p in scored.items()}
    vy = next(iter(video.values()))[2] if video else np.zeros(0)
    frame_note, video_note = one_class_note(y, "crops"), one_class_note(vy, "videos")
    if frame_note:
        parts[-1] = parts[-1].replace("</h2>", f" — {html.escape(frame_note.split(' (')[0])}</h2>")
        parts.append(_note(f"frame level: {frame_note}; video level: {video_note}"))
    else:
        parts.append(f"<img class='fig' alt='curves frame' src='{curves_figure(y, scored, 'frame level')}'>")
        parts.append(f"<img class='fig' alt='curves video' src='"
                     f"{curves_figure(vy, {nm: v[1] for nm, v in video.items()}, 'video level')}'>")
    parts.append(f"<img class='fig' alt='calibration' src='{calibration_figure(y, scored, 'frame level')}'></div>")
    parts.append("<h2>Scores per class and method (frame level)</h2><div class='row'>")
    for nm, p in scored.items():
        thr = (result.models[nm]["frame"].get("at_val_threshold") or {}).get("threshold")
        parts.append(f"<img class='fig' alt='histogram {html.escape(nm)}' "
                     f"src='{histogram_figure(y, p, methods, thr, nm)}'>")
    parts.append("</div><h2>Confusion matrices (at the val threshold; 0.5 without val)</h2><div class='row'>")
    for nm, e in result.models.items():
        for level in ("frame", "video"):
            key = "at_val_threshold" if "at_val_threshold" in e[level] else "at_0.5"
            m = e[level][key]
            caption = "{}, {} @ {:.3f}".format(nm, level, m["threshold"])
            parts.append(f"<img class='fig' alt='confusion {html.escape(nm)} {level}' src='"
                         f"{confusion_figure(m['confusion_matrix'], caption)}'>")
    parts.append("</div><h2>The errors at the stored threshold, and what the model looked at</h2>")
    for nm, p in scored.items():
        model = page.models.get(nm)
        st = result.models[nm].get("at_stored_threshold")
        if model is None or not st:
            continue
        errors = st["errors"]
        parts.append(f"<h3>{html.escape(nm)}: {len(errors)} misclassified video(s) at threshold "
                     f"{st['threshold']:.4f} (video = {html.escape(st['aggregate'])} of its crops)</h3>")
        if len(set(y.tolist())) == 1:
            have, missing = ("real", "fake") if y[0] == 0 else ("fake", "real")
            parts.append(_note(f"none: this split has no {missing} crops (one class): only its {have} videos can "
                               f"be wrong"))
        if not errors:
            parts.append(_note("none: every video is labelled right at this threshold"))
        for err in errors[:page.n_gallery]:
            cls = "real" if err["label"] == 0 else "fake"
            parts.append(f"<p>{html.escape(err['video'])}: {cls}, video prob_fake {err['prob_fake']:.3f} — its "
                         f"{'most fake' if cls == 'real' else 'most real'}-scored crops</p><div class='row'>")
            for i in worst_crops(rows, p, err["video"], err["label"], page.per_video):
                parts.append(_card(page, model, rows[i], i, p[i]))
            parts.append("</div>")
        if len(errors) > page.n_gallery:
            rest = ", ".join(e["video"] for e in errors[page.n_gallery:])
            parts.append(_note(f"{len(errors) - page.n_gallery} more, not drawn: {rest}"))
    parts.append(_CHECK + "</body></html>")
    write_text(path, "\n".join(parts))


def worst_crops(rows: Sequence[Row], p, video: str, label: int, n: int) -> list[int]:
    """The ``n`` crops of ``video`` scored most wrongly for its ``label`` (a real's highest, a fake's lowest)."""
    idx = [i for i, r in enumerate(rows) if r.video == video]
    idx.sort(key=lambda i: -p[i] if label == 0 else p[i])
    return idx[:n]


def _card(page: HtmlReport, model, r: Row, i: int, prob: float) -> str:
    """One crop of the gallery, its heat map beside it (one unreadable crop never stops the report)."""
    try:
        img = page.image(i)
        heat, how = heat_map(model, img)
        pics = f"<img alt='crop' src='{_img_uri(img)}'><img alt='{how}' src='{_img_uri(overlay(img, heat))}'>"
    except Exception as e:
        how, pics = f"unavailable ({e})", ""
    return (f"<div class='card'>{pics}<div>{html.escape(r.video)} frame {r.frame_index}<br>{html.escape(r.method)} "
            f"— prob_fake {prob:.3f}<br><span class='note'>{html.escape(how)}</span></div></div>")


def _page_head(title: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>")


def write_files_html(path, result: FilesResult, y, p, kinds: Sequence[str]) -> None:
    """``report.html`` of ``evaluate --files``: the table, ROC and precision-recall, the score histograms
    per class (the kinds, image / video, in place of methods) with the threshold applied."""
    from dftune.atomic import write_text

    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(p, dtype=float)
    parts = [_page_head(f"dftune evaluate --files — {', '.join(result.inputs)}"),
             f"<h1>dftune evaluate --files: <code>{html.escape(', '.join(result.inputs))}</code></h1>",
             _note(f"Scored exactly as dftune predict does (face crop, pooling; {files_settings(result)}); "
                   f"threshold {result.threshold_source}. Labels: {result.labels}. F1 = macro F1."),
             "<h2>Summary</h2>", _table(FILES_HEADER, files_rows(result)),
             "<h2>Per framing</h2>", _note("the CSV's framing column, at the threshold; a kind of one class has "
                                           "no AUC, F1 or EER"), _table(FRAMING_HEADER, framing_rows(result))]
    for key, what in (("errors", "unreadable"), ("no_face", "no face found"), ("unlabelled", "not in the labels"),
                      ("missing", "in the labels, not found")):
        listed = getattr(result, key)
        if listed:
            items = [e["file"] + ": " + e["error"] if isinstance(e, dict) else str(e) for e in listed]
            parts.append(_note(f"{len(items)} {what}: " + "; ".join(items[:20])))
    parts.append("<h2>ROC and precision-recall curves</h2><div class='row'>")
    note = one_class_note(y, "files")
    if note:
        parts.append(_note(note))
    else:
        parts.append(f"<img class='fig' alt='curves files' src='{curves_figure(y, {'model': p}, 'files')}'>")
    parts.append("</div><h2>Scores per class and kind</h2><div class='row'>")
    if len(y):
        parts.append(f"<img class='fig' alt='histogram files' src='"
                     f"{histogram_figure(y, p, kinds, result.threshold, 'files', 'threshold')}'>")
    else:
        parts.append(_note("no labelled file was scored"))
    parts.append("</div>" + _CHECK + "</body></html>")
    write_text(path, "\n".join(parts))


def auc_bars_figure(table: Sequence[Mapping], title: str) -> str:
    """Frame and video AUC per dataset, one bar per model: where each model holds up and where it does not."""
    plt = _plt()
    datasets = list(dict.fromkeys(r["dataset"] for r in table))
    models = list(dict.fromkeys(r["model"] for r in table))
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.4 * len(datasets) * max(1, len(models)) / 2 + 3), 3.6))
    width = 0.8 / max(1, len(models))
    x = np.arange(len(datasets))
    for ax, key, name in zip(axes, ("frame_auc", "video_auc"), ("frame AUC", "video AUC"), strict=True):
        for j, m in enumerate(models):
            vals = [next((r[key] for r in table if r["model"] == m and r["dataset"] == d), None) for d in datasets]
            ax.bar(x + (j - (len(models) - 1) / 2) * width, [np.nan if v is None else v for v in vals], width,
                   label=m)
        ax.axhline(0.5, color="#999", lw=0.8, ls="--")
        ax.set_xticks(x, datasets, rotation=20, ha="right", fontsize=8)
        ax.set(ylim=(0, 1.02), title=f"{name} — {title}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    return _png(fig)


def write_cross_html(path, result: CrossResult, links: Mapping[str, str],
                     scores: Mapping[str, Mapping[str, tuple]] | None = None) -> None:
    """``report.html`` of a cross-dataset evaluation: the table (the layout of DeepfakeBench's), AUC per
    dataset and model as bars, a link to each dataset's own report (its curves, histograms,
    confusion matrices and gallery), ``links``: dataset name -> relative path.

    With ``scores`` (dataset name -> ``{level: (y, methods, {model: p})}``, what evaluate measured), the
    shift itself, per dataset: the models' video-level ROC curves overlaid, and each model's video score
    histograms per class with the threshold transferred from the training data's val drawn in (the one
    the table's F1@thr applies)."""
    from dftune.atomic import write_text

    items = "".join(f"<li><a href='{html.escape(href)}'>{html.escape(nm)}</a></li>" for nm, href in links.items())
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>dftune evaluate — across datasets</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>dftune evaluate: across datasets ({html.escape(result.split)} split of each)</h1>",
             f"<p class='note'>Threshold tuned for macro F1 on the {html.escape(result.threshold_split)} split of "
             f"<code>{html.escape(str(result.threshold_data))}</code> (the training data), never on a test dataset. "
             "Video level unless named; AUC, AP and EER need no threshold. F1 = macro F1.</p>",
             *(_note(n) for n in cross_notes(result)),
             "<h2>Cross-dataset table</h2>", _table(CROSS_HEADER, [cross_cells(r) for r in result.table]),
             "<h2>AUC per dataset</h2><div class='row'>",
             f"<img class='fig' alt='auc per dataset' src='{auc_bars_figure(result.table, 'per dataset')}'></div>"]
    if scores:
        parts.append("<h2>The shift, per dataset (video level)</h2>")
        parts.append(_note("ROC curves need no threshold; the histograms show where each dataset's scores fall "
                           "against the threshold tuned on the training data's val (solid line), which is the one "
                           "F1@thr applies: a threshold that does not travel shows as classes on the wrong side."))
        for ds, levels in scores.items():
            vy, vm, vscored = levels["video"]
            note = one_class_note(vy, "videos")
            parts.append(f"<h3 id='shift-{html.escape(_anchor(ds))}'>{html.escape(ds)}"
                         + (f" — {html.escape(note.split(' (')[0])}" if note else "") + "</h3><div class='row'>")
            if note:
                parts.append(_note(note))
            else:
                parts.append(f"<img class='fig' alt='roc {html.escape(ds)}' "
                             f"src='{roc_only_figure(vy, vscored, f'ROC — {ds}')}'>")
            for nm, p in vscored.items():
                thr = (result.thresholds.get(nm) or {}).get("video")
                parts.append(f"<img class='fig' alt='histogram {html.escape(ds)} {html.escape(nm)}' src='"
                             f"{histogram_figure(vy, p, vm, thr, f'{nm} on {ds}', 'transferred threshold')}'>")
            parts.append("</div>")
    parts += ["<h2>Each dataset's report</h2>",
              f"<p class='note'>Curves, score histograms, confusion matrices and the worst errors:</p><ul>{items}</ul>",
              _CHECK + "</body></html>"]
    write_text(path, "\n".join(parts))


def _anchor(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
