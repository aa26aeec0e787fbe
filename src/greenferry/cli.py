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

# Each module registers its subcommands and sets ``func`` on them. Keyed by the subcommand names each
# module registers, so that running one command imports only its module: the daemon's resident memory
# must not pay for the simulator's numpy and HiGHS (bench/daemon_idle.py).
_COMMAND_MODULES: dict[str, str] = {
    "daemon": "greenferry.commands.daemon",
    "check-config": "greenferry.commands.daemon",
    "certs": "greenferry.commands.certs",
    "demo": "greenferry.commands.demo",
    "feasibility": "greenferry.commands.feasibility",
    "jobs": "greenferry.commands.jobs",
    "profiles": "greenferry.commands.profiles",
    "scenarios": "greenferry.commands.scenarios",
    "simulate": "greenferry.commands.simulate",
    "telemetry": "greenferry.commands.telemetry",
}

EXIT_USAGE = 2


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named by ``argv`` (its first word that is not an option), if it is a known one."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word in _COMMAND_MODULES else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Build the argument parser: with every subcommand, or only the one ``argv`` names (faster, leaner)."""
    parser = argparse.ArgumentParser(
        prog="greenferry",
        description="Run AI training jobs that follow surplus renewable energy across sites.",
    )
    parser.add_argument("--version", action="version", version=f"greenferry {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _chosen_command(argv) if argv is not None else None
    modules = [_COMMAND_MODULES[chosen]] if chosen else list(dict.fromkeys(_COMMAND_MODULES.values()))
    for name in modules:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for bad input)."""
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words)
    args = parser.parse_args(words)
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
