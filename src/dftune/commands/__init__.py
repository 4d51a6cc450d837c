"""One module per subcommand: ``register(subparsers)`` and ``run(args)``; see dftune.cli."""

from __future__ import annotations

import argparse


def add_parser(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subparser that shows every option's default in --help."""
    from dftune.cli import HelpFormatter

    return sub.add_parser(name, help=help, description=description or help, formatter_class=HelpFormatter)
