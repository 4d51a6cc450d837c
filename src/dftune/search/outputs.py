"""What a study leaves in STUDY_DIR, rewritten from the storage after every run (and after Ctrl-C):
trials.csv, best.yaml, history.png, intermediate.png, importance.png (or importance.txt: why not),
report.md; and the trials' weights, deleted but for the best trial's."""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from dftune import plots
from dftune.atomic import write_text
from dftune.search.metric import Metric
from dftune.search.study import COUNTED
from dftune.training.config import build, save_yaml

log = logging.getLogger(__name__)


@dataclass
class TuneSummary:
    """A study as the outputs show it; ``rows`` one dict a reported trial (number, state, value, params,
    epochs_run, reason), ``best`` the best trial's number, value, params and run_dir (None before one completes)."""

    study: str
    metric: str
    metric_description: str
    direction: str
    trials: int
    by_state: dict[str, int]
    best: dict | None
    best_yaml: str | None
    retrain: str | None  # the command that retrains the best trial's settings
    epochs_run: int
    epochs_saved_by_pruning: int
    plots: list[str]
    rows: list[dict]
    ran_here: int = 0  # trials this process ran (set by the stage)
    wanted: int = 0  # --trials (set by the stage)
    importance_note: str | None = None  # why importance.png was not drawn (None when it was)
    data: str | None = None  # the data the trials trained on (STUDY_DIR/data when --fraction < 1)
    retrain_data: str | None = None  # the data to retrain on: the original --data

    @property
    def failed(self) -> int:
        """Trials that failed on their own (they count toward --trials)."""
        return self.by_state.get("FAIL", 0)


def trial_dir(study_dir: Path, number: int) -> Path:
    return study_dir / "trials" / f"trial_{number:04d}"


def reported(study) -> list:
    """The trials the outputs show: all but surplus ones and the ASK/WAITING kind."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False)
            if not t.user_attrs.get("surplus") and t.state != TrialState.WAITING]


def state_name(t) -> str:
    """Optuna's state, but INTERRUPTED for a FAIL that is not the trial's own (killed, Ctrl-C)."""
    if t.state.name == "FAIL" and COUNTED not in t.user_attrs:
        return "INTERRUPTED"
    return t.state.name


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def clean_weights(study, study_dir: Path, keep_all: bool) -> None:
    """Delete best/, last/ and wise/ of every finished trial but the study's best (history.json etc. stay)."""
    from optuna.trial import TrialState

    if keep_all:
        return
    try:
        best = study.best_trial.number
    except ValueError:
        best = None
    for t in study.get_trials(deepcopy=False):
        if t.number == best or t.state == TrialState.RUNNING:
            continue
        d = trial_dir(study_dir, t.number)
        for sub in ("best", "last", "wise"):
            if (d / sub).is_dir():
                shutil.rmtree(d / sub, ignore_errors=True)


def write_outputs(study, study_dir: Path, metric: Metric, data: Path, model_source: str, keep_all: bool,
                  fraction: float, source_data: Path | str | None = None) -> TuneSummary:
    """Every output file from the study's trials; the summary they show. ``data`` is what the trials trained on,
    ``source_data`` the original --data (the retrain command's: the best settings are retrained on all of it)."""
    from optuna.trial import TrialState

    trials = reported(study)
    params = sorted({k for t in trials for k in t.params})
    write_trials_csv(study_dir / "trials.csv", trials, metric, params)

    best = None
    if any(t.state == TrialState.COMPLETE for t in trials):
        best = study.best_trial
        clean_weights(study, study_dir, keep_all)
    best_dir = trial_dir(study_dir, best.number) if best else None
    cmd = None
    if best is not None and best.user_attrs.get("config"):
        cmd = write_best_yaml(study_dir / "best.yaml", study.study_name, best, best_dir, metric, data, model_source,
                              source_data)

    # pruning: epochs that pruned trials did not run
    planned = sum(int(t.user_attrs.get("epochs_planned", 0) or 0) for t in trials if t.state == TrialState.PRUNED)
    run_pruned = sum(int(t.user_attrs.get("epochs_run", 0) or 0) for t in trials if t.state == TrialState.PRUNED)
    all_run = sum(int(t.user_attrs.get("epochs_run", 0) or 0) for t in trials)
    figures = write_plots(study, trials, study_dir, metric, params)
    by_state: dict[str, int] = {}
    for t in trials:
        by_state[state_name(t)] = by_state.get(state_name(t), 0) + 1
    summary = TuneSummary(
        study=study.study_name, metric=metric.name, metric_description=metric.describe,
        direction=metric.direction, trials=len(trials), by_state=by_state,
        best=None if best is None else {"number": best.number, "value": best.value, "params": best.params,
                                        "run_dir": str(best_dir)},
        best_yaml=str(study_dir / "best.yaml") if cmd else None, retrain=cmd,
        epochs_run=all_run, epochs_saved_by_pruning=planned - run_pruned, plots=figures,
        importance_note=None if "importance.png" in figures else importance_note(study_dir),
        data=str(data), retrain_data=str(source_data if source_data is not None else data),
        rows=[{"number": t.number, "state": state_name(t),
               "value": t.value if t.state == TrialState.COMPLETE else None, "params": t.params,
               "epochs_run": t.user_attrs.get("epochs_run"), "reason": t.user_attrs.get(COUNTED, ""),
               **({"val_value": t.user_attrs.get("val_value")} if metric.on == "check" else {})}
              for t in trials],
    )
    write_report(study_dir, summary, metric, fraction, data, model_source, source_data)
    return summary


def importance_note(study_dir: Path) -> str:
    """Why importance.png is missing: importance.txt's line, or the rule that was not met."""
    why = study_dir / "importance.txt"
    return why.read_text().strip() if why.exists() else \
        "parameter importances: need at least 2 complete trials and 2 searched settings"


def write_trials_csv(path: Path, trials: list, metric: Metric, params: list[str]) -> None:
    """One row a trial: state, value, the metric at each epoch, epochs, duration, seed, why it failed, settings."""
    from optuna.trial import TrialState

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    on_check = metric.on == "check"  # value: the check sets' mean; val_value: the same metric on val
    w.writerow(["number", "state", "value", *(["val_value"] if on_check else []), f"{metric.name}_per_epoch",
                "epochs_run", "duration_s", "seed", "fail_reason", "params"] + params)
    for t in trials:
        dur = t.user_attrs.get("duration_s")
        if dur is None and t.datetime_start and t.datetime_complete:
            dur = round((t.datetime_complete - t.datetime_start).total_seconds(), 2)
        reason = t.user_attrs.get(COUNTED) or t.user_attrs.get("interrupted") or ""
        value = t.value if t.state == TrialState.COMPLETE else None  # a pruned trial's is its last epoch's
        val = t.user_attrs.get("val_value")
        w.writerow([t.number, state_name(t), "" if value is None else value,
                    *(["" if val is None else val] if on_check else []), json.dumps(t.user_attrs.get("curve", [])),
                    t.user_attrs.get("epochs_run", ""), "" if dur is None else dur, t.user_attrs.get("seed", ""),
                    reason, json.dumps(t.params, default=str)] + [t.params.get(p, "") for p in params])
    write_text(path, buf.getvalue())


def write_best_yaml(path: Path, study_name: str, best, best_dir: Path, metric: Metric, data: Path,
                    model_source: str, source_data: Path | str | None = None) -> str:
    """The best trial's full TrainConfig (from its ``config`` attribute: any machine can write it) in
    settings.yaml's format, with a ``_tune`` section naming where it came from (with ``tune --check``: that the
    check sets' mean was optimised, which ones, and the trial's val value; the settings keep ``checks`` and
    ``select_on``, so the retrain command scores and selects on them as the trial did); returns the retrain command.

    ``_tune.data`` is the data the trial trained on and was scored on (with --fraction < 1, the subset in
    STUDY_DIR/data); ``_tune.retrain_data`` and the command name the original --data: retrain on all of it."""
    cfg = build(None, best.user_attrs["config"])
    full = Path(source_data if source_data is not None else data)
    save_yaml(path, cfg, {
        "tune": {"study": study_name, "trial": best.number, "metric": metric.name,
                 "optimised": metric.describe, "optimised_on": metric.on,
                 **({"checks": list(metric.checks), "val_value": best.user_attrs.get("val_value")}
                    if metric.on == "check" else {}),
                 "value": best.value, "params": best.params, "data": str(Path(data).resolve()),
                 "model": str(model_source), "run_dir": str(best_dir), "host": best.user_attrs.get("host"),
                 "retrain_data": str(full.resolve())}})
    return f"dftune train --data {full} --model {model_source} --config {path} --out runs/best"


def write_plots(study, trials: list, study_dir: Path, metric: Metric, params: list[str]) -> list[str]:
    """history.png, intermediate.png, and importance.png (fANOVA) when 2 trials completed over 2 settings;
    the names written."""
    from optuna.trial import TrialState

    out = []
    comp = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [(t.number, t.intermediate_values[max(t.intermediate_values)]) for t in trials
              if t.state == TrialState.PRUNED and t.intermediate_values]
    plots.tune_history_figure([(t.number, t.value) for t in comp], pruned, study_dir / "history.png", metric.name,
                              f"optimisation history: {metric.describe}", metric.direction == "maximize")
    out.append("history.png")
    plots.tune_curves_figure([(t.number, t.intermediate_values, t.state == TrialState.PRUNED) for t in trials],
                             study_dir / "intermediate.png", metric.name, "per-epoch metric (dashed: pruned)")
    out.append("intermediate.png")
    if len(comp) >= 2 and len(params) >= 2:
        try:
            import optuna

            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
            if imp:
                plots.importance_figure(imp, study_dir / "importance.png", "importance (fANOVA)",
                                        f"parameter importances for {metric.name} ({len(comp)} complete trials)")
                out.append("importance.png")
                (study_dir / "importance.txt").unlink(missing_ok=True)
        except Exception as e:  # e.g. every complete trial has the same value
            log.info("parameter importances skipped: %s", e)
            write_text(study_dir / "importance.txt", f"parameter importances not computed: {e}\n")
            (study_dir / "importance.png").unlink(missing_ok=True)  # an earlier run's would show other trials
    return out


def write_report(study_dir: Path, sm: TuneSummary, metric: Metric, fraction: float, data: Path,
                 model_source: str, source_data: Path | str | None = None) -> None:
    """report.md: the objective and data, the best trial and how to retrain it, every trial, the figures."""
    part = f" (train fraction {fraction} of the videos, per method; val full)" if fraction < 1 else ""
    if fraction < 1 and source_data is not None:
        part = f" (train fraction {fraction} of the videos, per method, in `{data}`; val full)"
        data = Path(source_data)
    L = [f"# dftune tune: {sm.study}", "",
         f"- objective: **{metric.name}** = {metric.describe}, read at the epoch each run keeps as `best/`",
         f"- data: `{data}`{part}",
         f"- model: `{model_source}`",
         f"- trials: {sm.trials} ({', '.join(f'{v} {k.lower()}' for k, v in sorted(sm.by_state.items()))})",
         f"- epochs run in all: {sm.epochs_run}; saved by pruning: {sm.epochs_saved_by_pruning}", ""]
    if sm.best:
        b = sm.best
        L += ["## Best trial", "", f"trial {b['number']}: {metric.name} = {b['value']:.4f}", "",
              "| setting | value |", "|---|---|"] + [f"| {k} | {fmt(v)} |" for k, v in b["params"].items()]
        L += ["", f"Run folder (model kept): `{b['run_dir']}`", "", "Retrain with these settings:", "", "```",
              sm.retrain or "", "```", ""]
    else:
        L += ["No trial completed yet.", ""]
    rows = sm.rows
    comp = sorted((r for r in rows if r["value"] is not None), key=lambda r: r["value"],
                  reverse=metric.direction == "maximize")
    on_check = metric.on == "check"
    L += ["## Trials (complete ones best first, then the rest)", "",
          f"| # | state | value |{' val |' if on_check else ''} epochs | params | note |",
          f"|---|---|---|{'---|' if on_check else ''}---|---|---|"]
    for r in comp + [r for r in rows if r["value"] is None]:
        val = "" if r["value"] is None else f"{r['value']:.4f}"
        if on_check:
            val += " | " + ("" if r.get("val_value") is None else f"{r['val_value']:.4f}")
        L.append(f"| {r['number']} | {r['state']} | {val} | "
                 f"{r['epochs_run'] or ''} | {', '.join(f'{k}={fmt(v)}' for k, v in r['params'].items())} | "
                 f"{(r['reason'] or '').replace('|', '/')[:120]} |")
    L.append("")
    for p in sm.plots:
        L += [f"![{p}]({p})", ""]
    if "importance.png" not in sm.plots:
        L += [importance_note(study_dir), ""]
    write_text(study_dir / "report.md", "\n".join(L))
