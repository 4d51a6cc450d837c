"""``dftune tune``: search training settings with Optuna, each trial a real ``dftune train`` run."""

from __future__ import annotations

import sys

from dftune.commands import add_parser, add_progress, check_path, group

DESCRIPTION = """\
Hyper-parameter search on Optuna: every trial is a real `dftune train` run on --data with
the defaults, your --set values and the trial's sampled settings; the objective is one val
metric (read at the epoch the run keeps as best/), reported each epoch so a pruner can stop
weak trials early. With --check PATH the objective is that metric's mean over the check sets
(data from outside --data), and every trial selects its best/ epoch on them. Failed trials
(out of memory, NaN, bad settings) are recorded with their reason and the study goes on.

The study lives in STUDY_DIR/study.journal (or --storage): run the same command again to
continue it (only the missing trials run), or start it in several processes / on several
machines to share the work. Writes STUDY_DIR/trials.csv, best.yaml (`dftune train --config
STUDY_DIR/best.yaml ...` reproduces the best trial), report.md, history.png, intermediate.png,
importance.png and trials/trial_NNNN/ (model weights kept for the best trial only).

Search-space file (--space, YAML): entries replace or add to the default space, e.g.
  lr: {type: float, low: 1.0e-6, high: 1.0e-4, log: true}
  batch_size: {type: categorical, choices: [8, 16, 32]}   # grad_accum keeps the effective batch
  balance: loss                                           # a plain value: fixed, not searched
Default space: lr (log 1e-6..1e-3), weight_decay 0..0.1, warmup_ratio 0..0.2, schedule,
balance, aug on/off, sbi 0..0.4. --set KEY=VALUE fixes a setting and takes it out of the search.
"""


def register(sub) -> None:
    from dftune.search.metric import METRIC_KEYS, METRICS
    from dftune.stages.tune import TuneSettings
    from dftune.training.config import TrainConfig

    d = TuneSettings()  # the defaults, shown in --help
    p = add_parser(sub, "tune", "search training settings (Optuna) with real train runs", DESCRIPTION, examples=(
        "dftune tune --data data/ffpp-c23 --model ./baseline --out runs/study --trials 20",
        "dftune tune --data data/ffpp-c23 --model ./baseline --out runs/study --metric auc --level video"))
    p.add_argument("--data", default=None,
                   help="prepared folder (holds manifest.csv) from `dftune prepare` (default: with --resume, the "
                        "study's)")
    p.add_argument("--model", default=None,
                   help="model folder or Hugging Face hub id each trial starts from (default: with --resume, the "
                        "study's)")
    p.add_argument("--out", default=None, metavar="STUDY_DIR",
                   help="study folder: journal, trial runs, trials.csv, best.yaml, report.md, plots, settings.yaml")
    p.add_argument("--resume", default=None, metavar="STUDY_DIR",
                   help="continue the study in STUDY_DIR with the data, model and settings its settings.yaml "
                        "records; options given now replace those (e.g. --trials 40) (default: not set)")
    p.add_argument("--trials", type=int, default=d.trials,
                   help="finished trials the study should hold (complete, pruned or failed); a re-run only runs "
                        "the missing ones, and parallel processes share the count")
    p.add_argument("--timeout", type=float, default=d.timeout,
                   help="seconds after which this process starts no new trial (default: none)")
    p.add_argument("--metric", default=d.metric.split("_", 1)[1], choices=(*METRIC_KEYS, *METRICS),
                   metavar="METRIC",
                   help="val metric to optimise: f1 (macro F1 at the val-optimal threshold), f1_05 (macro F1 at 0.5), "
                        "auc, loss (minimised), accuracy or balanced_accuracy; LEVEL_METRIC (frame_f1) is short for "
                        "--metric METRIC --level LEVEL")
    p.add_argument("--level", default=None, choices=("frame", "video"),
                   help=f"the level of --metric (default: {d.metric.split('_', 1)[0]})")
    p.add_argument("--check", dest="checks", action="append", type=check_path, default=list(d.checks), metavar="PATH",
                   help="check set from outside --data: a prepared folder (its val+test, or PATH:SPLIT) or a labels "
                        "CSV of raw images and videos (framed as predict frames them); repeat for several. The study "
                        "then optimises --metric's mean over the check sets (the val metric is "
                        "still recorded per trial), and each trial selects its best/ epoch on them "
                        "(select_on=check, unless --set select_on=val) (default: none: the val metric)")
    p.add_argument("--space", default=d.space,
                   help="YAML search-space file; its entries replace or add to the default space (default: the "
                        "built-in space, see above)")
    p.add_argument("--pruner", default=d.pruner, choices=("median", "hyperband", "none"),
                   help="stop weak trials early: median (below the median of earlier trials at the same epoch, from "
                        "epoch 2 and after 3 trials), hyperband, or none")
    p.add_argument("--epochs", type=int, default=d.epochs,
                   help=f"epochs per trial (default: train's default, {TrainConfig().epochs}; same as --set epochs=E)")
    p.add_argument("--fraction", type=float, default=d.fraction,
                   help="train each trial on this share of the train videos (whole videos, per method; val stays full)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="study seed: trial N trains with seed hash(seed, N); also picks the --fraction subset")
    p.add_argument("--storage", default=d.storage,
                   help="Optuna storage URL shared by machines, e.g. postgresql://user:pw@host/db or "
                        "sqlite:///study.db (default: the journal file STUDY_DIR/study.journal)")
    p.add_argument("--study-name", default=d.study_name,
                   help="study name in the storage (default: STUDY_DIR's folder name)")
    p.add_argument("--keep-all", action="store_true", default=d.keep_all,
                   help="keep every trial's best/ and last/ weights (default: only the best trial's)")
    p.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE", default=[],
                   help="fix any training setting for all trials, repeatable; a key set here is not searched")
    add_progress(p, default=False, default_text="off: one line a trial; --progress shows each trial's bars")
    group(p, {"data, model and study": ["--data", "--model", "--out", "--storage", "--study-name", "--keep-all"],
              "the objective": ["--metric", "--level", "--check"],
              "the search": ["--trials", "--timeout", "--space", "--set", "--pruner", "--epochs", "--fraction",
                             "--seed"]})
    p.set_defaults(func=run)


def metric_name(metric: str, level: str | None) -> str:
    """--metric and --level as the study's metric name, LEVEL_METRIC; a LEVEL_METRIC --metric stays itself
    (an error when --level says another level)."""
    from dftune.search.metric import METRICS

    if metric in METRICS:
        if level and not metric.startswith(level + "_"):
            raise ValueError(f"--metric {metric} is at {metric.split('_', 1)[0]} level; --level {level} says "
                             f"otherwise: give --metric {metric.split('_', 1)[1]} --level {level}")
        return metric
    return f"{level or 'frame'}_{metric}"


def run(args) -> int:
    from dataclasses import fields

    from dftune.stages import tune
    from dftune.stages.tune import TuneSettings
    from dftune.training.config import parse_sets

    # every TuneSettings field but sets has a flag of its name (checks: --check, repeatable)
    given = {f.name: getattr(args, f.name) for f in fields(TuneSettings) if f.name not in ("sets", "checks", "metric")}
    given.update(metric=metric_name(args.metric, args.level), checks=tuple(args.checks), sets=parse_sets(args.sets))
    if args.resume:
        given = _resumed(args, given)
    elif not (args.data and args.model and args.out):
        raise ValueError("give --data PREPARED_DIR, --model MODEL and --out STUDY_DIR (or --resume STUDY_DIR)")
    s = TuneSettings(**given)
    summary = tune.run(args.data, args.model, args.out, s, progress=args.progress,
                       say=lambda m: print(m, file=sys.stderr, flush=True))  # a line a trial: progress
    print_summary(summary)
    return 0 if summary.best else 1  # no trial completed: nothing usable (no best.yaml, no model)


def _resumed(args, given: dict) -> dict:
    """``--resume STUDY_DIR``: its settings.yaml under the options given now (an option left at its default
    takes the study's value); ``args.data``/``model``/``out`` filled in."""
    import os

    from dftune import runs
    from dftune.stages.tune import TuneSettings

    if args.out and os.path.abspath(args.out) != os.path.abspath(args.resume):
        raise ValueError(f"--resume {args.resume} and --out {args.out} name two studies; give the study once")
    path = os.path.join(args.resume, runs.SETTINGS)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no settings.yaml to resume from (a study started before tune wrote it: "
                                f"run the command it was started with again)")
    saved, meta = runs.read_settings(path)
    _, model = runs.sources(path)
    # tune takes one prepared folder: the one recorded, as it is (a mix too: not expanded into its folders)
    args.out, args.data, args.model = args.resume, args.data or str(meta["data"]), args.model or model
    d = TuneSettings()
    out = dict(given)
    for k, v in given.items():
        default = {"checks": tuple(d.checks), "sets": {}}.get(k, getattr(d, k))
        if v == default and k in saved:
            out[k] = tuple(saved[k]) if k == "checks" else saved[k]
    if saved.get("storage_redacted") and not given.get("storage"):
        raise ValueError(f"{path}: the study's --storage held a password, which settings.yaml does not keep: give "
                         f"--storage again")
    return out


def print_summary(sm) -> None:
    """The trials table (complete ones best first) and the best trial: ``sm`` a stages.tune.TuneSummary."""
    from rich.table import Table

    from dftune.progress import console

    rows = sm.rows
    params = sorted({k for r in rows for k in r["params"]})
    maximize = sm.direction == "maximize"
    comp = sorted((r for r in rows if r["value"] is not None), key=lambda r: r["value"], reverse=maximize)
    t = Table(title=f"dftune tune: {sm.study} — {sm.metric} ({sm.metric_description})",
              show_header=True, header_style="bold")
    on_check = any("val_value" in r for r in rows)  # --check: the objective is theirs, val's beside it
    for c in ["#", "state", sm.metric, *([f"val {sm.metric}"] if on_check else []), "epochs"] + params + ["note"]:
        t.add_column(c)

    def f(v):
        return "" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    best = (sm.best or {}).get("number")
    for r in comp + [r for r in rows if r["value"] is None]:
        t.add_row(f"{r['number']}{' *' if r['number'] == best else ''}", r["state"],
                  "" if r["value"] is None else f"{r['value']:.4f}",
                  *([f(r.get("val_value"))] if on_check else []), f(r["epochs_run"]),
                  *[f(r["params"].get(p)) for p in params], (r["reason"] or "")[:60])
    c = console()
    c.print(t)
    states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(sm.by_state.items()))
    failed = ""
    if sm.failed:  # they count toward --trials: say how to run replacements
        finished = sum(sm.by_state.get(k, 0) for k in ("COMPLETE", "PRUNED", "FAIL"))
        target = max(sm.wanted, finished) + sm.failed
        failed = (f"; {sm.failed} failed and count toward --trials (see the note column; "
                  f"--trials {target} runs {sm.failed} more)")
    c.print(f"{sm.trials} trials ({states}); {sm.epochs_run} epochs run, "
            f"{sm.epochs_saved_by_pruning} saved by pruning{failed}")
    if sm.importance_note and sm.trials:
        c.print(f"importance.png not drawn: {sm.importance_note}")
    if sm.best:
        b = sm.best
        c.print(f"best: trial {b['number']} {sm.metric} = {b['value']:.4f}; model in {b['run_dir']}/best")
        c.print(f"settings: {sm.best_yaml}\nretrain: {sm.retrain}")
    else:
        c.print("no trial completed yet")
