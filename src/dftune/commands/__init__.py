"""One module per subcommand: ``register(subparsers)`` and ``run(args)``; see dftune.cli."""

from __future__ import annotations

import argparse


def add_parser(sub, name: str, help: str, description: str | None = None,
               examples: tuple[str, str] | None = None) -> argparse.ArgumentParser:
    """A subparser that shows every option's default in --help, takes -v/-q after the subcommand as well as
    before it, and ends its help with two example lines."""
    from dftune.cli import HelpFormatter, add_verbosity

    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None
    p = sub.add_parser(name, help=help, description=description or help, formatter_class=HelpFormatter,
                       epilog=epilog)
    add_verbosity(p, argparse.SUPPRESS)  # given after the subcommand it replaces the count given before
    return p


def renamed(p, old: str, new: str, **kw) -> None:
    """``old``, an earlier spelling of ``new``: still accepted (``kw`` as add_argument's: dest, action, nargs,
    type, const), hidden from --help, and saying ``old is now new`` on stderr when used."""
    import sys

    action = kw.pop("action", "store")
    base = p._registry_get("action", action, action)

    class Renamed(base):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"{option_string or old} is now {new}", file=sys.stderr)
            super().__call__(parser, namespace, values, option_string)

    kw.setdefault("default", argparse.SUPPRESS)  # the new option's default stands
    p.add_argument(old, action=Renamed, help=argparse.SUPPRESS, **kw)


def positional_renamed(values, flag: str, say_as: str) -> None:
    """A positional MODEL that is now ``--model``: the one line, as :func:`renamed` says it."""
    import sys

    if values:
        print(f"a positional {say_as} is now {flag} {say_as}", file=sys.stderr)


def workers(text: str):
    """``--workers auto|N``: ``auto`` (the command's measured best, said in its help) or a count >= 0."""
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = -2
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected auto or a number of processes (0 or more), got {text!r}")
    return n


def add_workers(p, auto: str, what: str = "worker processes") -> None:
    """The one ``--workers auto|N`` option; ``auto`` says what the command does for it."""
    p.add_argument("--workers", type=workers, default="auto", metavar="auto|N",
                   help=f"{what} (default: auto = {auto})")


def add_progress(p, default: bool = True, default_text: str | None = None) -> None:
    """The one ``--progress`` / ``--no-progress`` switch (dest ``progress``), beside -v/-q."""
    g = next((x for x in p._action_groups if x.title == "output"), p)
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=default,
                   help="progress on stderr: a bar when stderr is a terminal, a line at each step's start and end "
                        f"when it is not (a log, CI) (default: {default_text or ('on' if default else 'off')})")


def group(p: argparse.ArgumentParser, groups: dict[str, list[str]]) -> None:
    """--help by purpose: each option named in ``groups`` (title -> flags) moved under its title, in that order;
    options not named stay under "options" (so an option added later is listed, if not grouped)."""
    by_flag = {f: a for a in p._actions for f in a.option_strings}
    at = p._action_groups.index(p._optionals) + 1
    for i, (title, flags) in enumerate(groups.items()):
        g = p.add_argument_group(title)
        p._action_groups.insert(at + i, p._action_groups.pop())  # first, after the ungrouped options
        for f in flags:
            a = by_flag[f]
            for old in p._action_groups:
                if a in old._group_actions:
                    old._group_actions.remove(a)
            g._group_actions.append(a)
    out = next(x for x in p._action_groups if x.title == "output")  # -v/-q, --progress last
    p._action_groups.remove(out)
    p._action_groups.append(out)


def one_of(args, *flags: str) -> None:
    """Options that say the same thing two ways: giving more than one is an error naming them."""
    given = [f for f in flags if getattr(args, f.lstrip("-").replace("-", "_"), None) not in (None, [], False)]
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given)} both given: they choose the same thing, give one")


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
