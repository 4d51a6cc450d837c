"""The search space: which TrainConfig settings a study samples and how, and each trial's seed."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from dftune.training.config import FIELDS, TrainConfig, build

# Settings TrainConfig really has. lr spans the guide's 1e-5 both ways; the rest brackets each default.
DEFAULT_SPACE: dict[str, dict] = {
    "lr": {"type": "float", "low": 1e-6, "high": 1e-3, "log": True},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
    "schedule": {"type": "categorical", "choices": ["constant", "cosine"]},
    "balance": {"type": "categorical", "choices": ["loss", "sampler", "none"]},
    "aug": {"type": "categorical", "choices": [True, False]},
    "sbi": {"type": "float", "low": 0.0, "high": 0.4},
}
# never searched: the trial seed comes from the study seed; these do not change what is learned
_NOT_SEARCHABLE = {"seed", "num_workers", "tensorboard", "max_train_batches", "fake_label", "reinit_head",
                   "precision", "micro_batch", "threads"}
_TYPES = ("float", "int", "categorical")


class SpaceError(ValueError):
    """A search-space entry that cannot be used; the message names the key."""


def load_space(path: str | os.PathLike | None) -> dict:
    """The default space with a YAML file's entries replacing or adding to it.

    An entry is ``{type: float|int|categorical, low, high, log, choices}`` or a plain value (fixed,
    taken out of the search).
    """
    space = {k: dict(v) for k, v in DEFAULT_SPACE.items()}
    if path is None:
        return space
    from dftune.training.config import read_yaml_mapping

    data = read_yaml_mapping(path, "search-space file", "setting: {type, low, high, log, choices} or setting: value",
                             SpaceError)
    for k, v in data.items():
        space[str(k).replace("-", "_")] = v
    return space


def check_space(space: dict, base: TrainConfig, where: str = "search space") -> tuple[dict, dict]:
    """Validate; return (searched, fixed). Errors name the key."""
    searched, fixed = {}, {}
    for key, spec in space.items():
        def bad(msg: str, key: str = key) -> SpaceError:
            return SpaceError(f"{where}: {key!r}: {msg}")

        if key not in FIELDS:
            close = [k for k in FIELDS if key in k or k in key]
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
            raise bad(f"not a training setting{hint}; settings are: {', '.join(FIELDS)}")
        if key in _NOT_SEARCHABLE:
            raise bad(f"cannot be searched (fix it with --set {key}=VALUE instead)")
        if not isinstance(spec, dict):
            fixed[key] = spec
            _try(base, {key: spec}, bad)
            continue
        unknown = set(spec) - {"type", "low", "high", "log", "choices", "step"}
        if unknown:
            raise bad(f"unknown field(s) {', '.join(sorted(map(str, unknown)))}; "
                      f"use type, low, high, log, step, choices")
        typ = spec.get("type")
        if typ not in _TYPES:
            raise bad(f"type must be one of {', '.join(_TYPES)}; got {typ!r}")
        if typ == "categorical":
            ch = spec.get("choices")
            if not isinstance(ch, list) or not ch:
                raise bad("categorical needs a non-empty list of choices")
            for c in ch:
                _try(base, {key: c}, bad)
            searched[key] = {"type": typ, "choices": ch}
            continue
        # YAML 1.1 reads 1e-6 (no dot) as a string: a number written that way is still a number
        lo, hi = _number(spec.get("low")), _number(spec.get("high"))
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (lo, hi)):
            raise bad(f"{typ} needs numeric low and high; got low={lo!r} high={hi!r}")
        if typ == "int" and not all(float(x).is_integer() for x in (lo, hi)):
            raise bad(f"int needs whole-number low and high; got low={lo!r} high={hi!r}")
        if not lo < hi:
            raise bad(f"low must be below high; got low={lo} high={hi}")
        log_ = bool(spec.get("log", False))
        if log_ and lo <= 0:
            raise bad(f"log scale needs low > 0; got low={lo}")
        for x in (lo, hi):
            _try(base, {key: int(x) if typ == "int" else float(x)}, bad)
        out = {"type": typ, "low": lo, "high": hi, "log": log_}
        if spec.get("step") is not None:
            out["step"] = _number(spec["step"])
            if isinstance(out["step"], str) or isinstance(out["step"], bool) or not out["step"] > 0:
                raise bad(f"step must be a number above 0; got {spec['step']!r}")
        searched[key] = out
    return searched, fixed


def _number(x):
    """A numeric string (``"1e-6"``, as YAML 1.1 reads it) as its number; anything else unchanged."""
    if isinstance(x, str):
        try:
            f = float(x.strip())
        except ValueError:
            return x
        return int(f) if f.is_integer() and not any(c in x for c in ".eE") else f
    return x


def _try(base: TrainConfig, values: dict, bad: Callable[[str], Exception]) -> None:
    try:
        build(base, values)
    except ValueError as e:
        raise bad(str(e)) from None


def sample(trial, searched: dict) -> dict:
    out = {}
    for key, s in searched.items():
        if s["type"] == "categorical":
            out[key] = trial.suggest_categorical(key, s["choices"])
        elif s["type"] == "int":
            out[key] = trial.suggest_int(key, int(s["low"]), int(s["high"]), log=s["log"], step=int(s.get("step") or 1))
        else:
            out[key] = trial.suggest_float(key, float(s["low"]), float(s["high"]), log=s["log"], step=s.get("step"))
    return out


def keep_effective_batch(base: TrainConfig, values: dict, searched: dict) -> dict:
    """When batch_size is searched (and grad_accum is not), scale grad_accum so the effective batch stays."""
    if "batch_size" not in values or "grad_accum" in values:
        return values
    effective = base.batch_size * base.grad_accum
    return {**values, "grad_accum": max(1, round(effective / int(values["batch_size"])))}


def trial_seed(study_seed: int, number: int) -> int:
    h = hashlib.sha256(f"dftune-tune:{study_seed}:{number}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF
