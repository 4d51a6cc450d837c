"""``dftune runs``: the training runs under a folder, side by side (a table to stdout, and a CSV)."""

from __future__ import annotations

from dftune.commands import add_parser, add_progress, group

DESCRIPTION = """\
List the training runs under DIR (folders holding settings.yaml and history.json, up to three levels
down): what each trained on and from, its epochs and best epoch, val and check-set metrics at the best
epoch, the threshold best/ stores now and the contest's number: macro F1 at that threshold as predict
applies it (each crop, each pooled video), on val (0.5, untuned), on the check sets (--threshold-on
check), or on the split `dftune evaluate --write-threshold` measured when it wrote the threshold.
"""


def register(sub) -> None:
    from dftune import runs

    p = add_parser(sub, "runs", "list and compare training runs (table + CSV)", DESCRIPTION,
                   examples=("dftune runs", "dftune runs experiments/ --csv runs.csv"))
    p.add_argument("dir", nargs="?", default=runs.ROOT, metavar="DIR",
                   help="folder to look for runs in (default: %(default)s, where `train --name` puts them)")
    p.add_argument("--csv", default=None, metavar="FILE", help="also write the table as CSV (default: not set)")
    add_progress(p, default_text="on; listing runs takes a moment and prints no bar, accepted as every command "
                                 "takes it")
    group(p, {"where it goes": ["--csv"]})
    p.set_defaults(func=run)


def run(args) -> int:
    from rich.table import Table

    from dftune import runs
    from dftune.atomic import write_text
    from dftune.progress import console

    rows = runs.list_runs(args.dir)
    t = Table(title=f"dftune runs: {args.dir} ({len(rows)} run{'s' if len(rows) != 1 else ''})")
    for c in runs.COLUMNS:
        t.add_column(c, justify="left" if c in ("run", "data", "model", "threshold by", "contest on") else "right",
                     overflow="fold")
    for r in rows:
        t.add_row(*(runs.cell(r.get(c)) for c in runs.COLUMNS))
    console().print(t)
    if args.csv:
        write_text(args.csv, runs.runs_csv(rows))
        console().print(f"written: {args.csv}")
    if not rows:
        console(stderr=True).print(f"no runs under {args.dir} (a run is a folder with settings.yaml and history.json)")
    return 0
