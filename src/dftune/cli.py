"""The ``dftune`` command: one subcommand per stage, no logic here.

Each subcommand lives in ``dftune/commands/<name>.py`` and exposes
``register(subparsers)`` (adds its parser, options with their defaults) and
``run(args) -> int``. Heavy imports (torch, transformers) happen inside ``run`` so
``dftune --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Pipeline order; the help lists them in this order.
COMMANDS = ["prepare", "train", "evaluate", "predict", "export", "demo", "synth"]
COMMANDS.append("tune")
COMMANDS.append("merge")
COMMANDS.append("runs")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps the descriptions' line breaks; a help text that
    states its default itself, and an on/off switch (off unless given), get no second one."""

    def _get_help_string(self, action):
        text = action.help or ""
        auto = " (default: %(default)s)"  # what BooleanOptionalAction appends itself: True / False
        if isinstance(action, argparse.BooleanOptionalAction) and text.endswith(auto):
            text = text[:-len(auto)]
            return text if "default:" in text else f"{text} (default: {'on' if action.default else 'off'})"
        if "default:" in text or "(default" in text or "%(default)" in text:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) or action.required:
            return text
        if action.default is None and action.option_strings:
            return text + " (default: not set)"
        if isinstance(action.default, (list, tuple)):  # as typed: --methods A B, --ratios 0.72,0.14,0.14
            sep = " " if action.nargs in ("+", "*") else ","
            shown = sep.join(f"{v:g}" if isinstance(v, float) else str(v) for v in action.default) or "none"
            return f"{text} (default: {shown.replace('%', '%%')})"
        return super()._get_help_string(action)


def add_verbosity(p: argparse.ArgumentParser, default) -> None:
    """-v / -q: on dftune itself and on every subcommand, so they work before or after it."""
    g = p.add_argument_group("output")
    g.add_argument("-v", "--verbose", action="count", default=default,
                   help="more log output, -vv for debug (default: warnings and errors)")
    g.add_argument("-q", "--quiet", action="count", default=default, help="less log output: errors only (default: off)")


def build_parser() -> argparse.ArgumentParser:
    from dftune import __version__

    parser = argparse.ArgumentParser(
        prog="dftune",
        description="FaceForensics++ videos to a fine-tuned, evaluated, submission-ready deepfake detector.\n"
        "Stages: prepare -> train -> evaluate -> predict -> export; `dftune demo` runs them all on data it makes.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dftune {__version__}")
    add_verbosity(parser, 0)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"dftune.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"dftune.commands.{name}":
                continue  # stage not built in this version
            raise
        mod.register(sub)
    return parser


def cpu_process_group() -> None:
    """Several processes (torchrun, accelerate launch) on a machine without CUDA: tell Accelerate so it forms
    one gloo process group; unasked it starts N independent single-process runs that race on one --out."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and "ACCELERATE_USE_CPU" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["ACCELERATE_USE_CPU"] = "true"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING + 10 * min(args.quiet, 1) - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from dftune.progress import quiet_third_party

    quiet_third_party()
    cpu_process_group()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"\ninterrupted; completed work is kept, "
              f"{getattr(args, 'interrupted_hint', None) or 'run the same command again to continue'}", file=sys.stderr)
        return 130
    except (FileNotFoundError, NotADirectoryError, ValueError, OSError) as e:
        # user-facing errors (bad paths, bad manifests, ambiguous labels) carry their own message
        if args.verbose >= 2:
            raise
        print(f"dftune {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
