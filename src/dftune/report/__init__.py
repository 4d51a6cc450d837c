"""What ``evaluate`` shows a person: the terminal's tables, ``report.md`` and ``report.html``.

- :mod:`dftune.report.markdown`: every table as a header and rows of strings (shared by the
  terminal, the markdown and the HTML page), ``report.md`` of one split, across datasets and of
  ``--files``; ``fmt``, the one way a metric is printed.
- :mod:`dftune.report.html`: ``report.html``, one self-contained page (figures inline, no network),
  and the cross-dataset page; figures and heat maps of what the model looked at.

The stage computes the numbers; this package only lays them out.
"""

from dftune.report.html import (
    HtmlReport,
    auc_bars_figure,
    calibration_figure,
    confusion_figure,
    curves_figure,
    heat_map,
    histogram_figure,
    one_class_note,
    overlay,
    roc_only_figure,
    worst_crops,
    write_cross_html,
    write_files_html,
    write_html,
)
from dftune.report.markdown import (
    CROSS_HEADER,
    FILES_HEADER,
    FRAMING_HEADER,
    FROM_VIDEOS_HEADER,
    METHOD_HEADER,
    SEEN_HEADER,
    SUMMARY_HEADER,
    THRESHOLD_HEADER,
    cross_cells,
    cross_md,
    cross_notes,
    files_md,
    files_rows,
    files_settings,
    fmt,
    framing_rows,
    from_videos_rows,
    md_table,
    method_rows,
    report_md,
    seen_rows,
    summary_header,
    summary_rows,
    threshold_rows,
)

__all__ = [
    "CROSS_HEADER", "FILES_HEADER", "FROM_VIDEOS_HEADER", "METHOD_HEADER", "SUMMARY_HEADER", "HtmlReport",
    "auc_bars_figure", "calibration_figure", "confusion_figure", "cross_cells", "cross_md", "curves_figure",
    "files_md", "files_rows", "fmt", "from_videos_rows", "heat_map", "histogram_figure", "md_table", "method_rows",
    "overlay", "report_md", "summary_header", "summary_rows", "write_cross_html", "write_html",
    "FRAMING_HEADER", "files_settings", "framing_rows",
    "cross_notes", "one_class_note", "roc_only_figure", "worst_crops", "write_files_html",
    "SEEN_HEADER", "seen_rows", "THRESHOLD_HEADER", "threshold_rows",
]
