"""One module per subcommand: ``register(subparsers)`` and ``run(args)``; see dftune.cli."""

from __future__ import annotations

import argparse


def add_parser(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subparser that shows every option's default in --help."""
    from dftune.cli import HelpFormatter

    return sub.add_parser(name, help=help, description=description or help, formatter_class=HelpFormatter)


def defaults(settings_class) -> dict:
    """Each field's default of a settings dataclass (``default_factory`` called): the one place a command's
    option defaults come from, so a default is written once, in the settings."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(settings_class):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def say_alpha_curve(print_, curve: dict, out, flag: str = "--alpha auto") -> None:
    """``--alpha auto`` / ``--wise auto``'s curve, a line an alpha (check metric, the fine-tuned data's val
    where known, the chosen one marked), then the choice and where the figure is."""
    for p in curve["points"]:
        print_(f"alpha {p['alpha']:.2f}: check {curve['metric']} {p['check']:.4f}"
               + (f"  val {p['val']:.4f}" if p.get("val") is not None else "")
               + ("  <- chosen" if p["alpha"] == curve["chosen"] else ""))
    print_(f"{flag}: {curve['chosen']:g}, best on {', '.join(curve['checks'])} (curve: {out}/alpha_curve.png)")


def check_path(text: str) -> str:
    """A ``--check`` value made absolute (``PATH`` or ``PATH:SPLIT[+SPLIT]``), so what dftune.json, history.json
    and tune's best.yaml record (and a printed retrain command) works from any folder."""
    import os

    from dftune.checks import CheckError, parse_spec

    try:
        path, splits = parse_spec(text)
    except CheckError as e:  # an unknown split: argparse shows the message itself
        raise argparse.ArgumentTypeError(str(e)) from None
    full = os.path.abspath(os.path.expanduser(str(path)))
    return full if str(path) == text else f"{full}:{'+'.join(splits)}"


def alpha_or_auto(text: str):
    """An option value that is a WiSE-FT alpha in [0, 1] or ``auto`` (chosen on check sets)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or auto, got {text!r}") from None
