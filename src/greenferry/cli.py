"""The ``greenferry`` command line: one subcommand per module in greenferry.commands."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from greenferry import __version__
from greenferry.errors import GreenferryError

# Each module registers its subcommands and sets ``func`` on them.
_COMMAND_MODULES = (
    "greenferry.commands.daemon",
    "greenferry.commands.feasibility",
    "greenferry.commands.profiles",
    "greenferry.commands.scenarios",
    "greenferry.commands.simulate",
    "greenferry.commands.telemetry",
)

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="greenferry",
        description="Run AI training jobs that follow surplus renewable energy across sites.",
    )
    parser.add_argument("--version", action="version", version=f"greenferry {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    func: Callable[[Any], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return func(args)
    except GreenferryError as err:
        print(f"greenferry: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
