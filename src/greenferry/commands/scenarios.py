"""``greenferry scenarios list|show``: the built-in scenarios."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from greenferry.sim.scenario import builtin_scenarios, describe, load_scenario


def register(subparsers: Any) -> None:
    """Add the ``scenarios`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "scenarios", help="list or show built-in scenarios"
    )
    sub = parser.add_subparsers(dest="scenarios_command", metavar="ACTION", required=True)
    list_parser = sub.add_parser("list", help="list the built-in scenarios")
    list_parser.add_argument("--json", action="store_true", help="print JSON")
    list_parser.set_defaults(func=run_list)
    show = sub.add_parser("show", help="show one scenario (a built-in name or a TOML file)")
    show.add_argument("scenario")
    show.set_defaults(func=run_show)


def run_list(args: argparse.Namespace) -> int:
    """Print every built-in scenario with its sites and period."""
    rows = [describe(load_scenario(path)[0]) | {"file": str(path)} for path in builtin_scenarios().values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="Built-in scenarios")
    for column in ("name", "period", "sites", "jobs", "description"):
        table.add_column(column)
    for row in rows:
        period = f"{row['start'][:10]} + {row['duration']} @ {row['step']}"
        table.add_row(row["name"], period, str(len(row["sites"])), str(row["jobs"]), row["description"])
    Console().print(table)
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Print one scenario's validated content as JSON."""
    spec, base = load_scenario(args.scenario)
    print(json.dumps(spec.model_dump(mode="json") | {"base_dir": str(base)}, indent=2))
    return 0
