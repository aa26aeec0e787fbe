"""``greenferry simulate``: compare orchestration policies on a scenario's traces."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from greenferry.core.forecast import FORECAST_KINDS
from greenferry.errors import ConfigError
from greenferry.sim.runner import ORACLE, compare, default_policy_names
from greenferry.sim.scenario import load_scenario


def register(subparsers: Any) -> None:
    """Add the ``simulate`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "simulate", help="compare orchestration policies on a scenario's traces"
    )
    parser.add_argument(
        "--scenario", default="paper", help="built-in scenario name or TOML file (default: paper)"
    )
    parser.add_argument("--policies", help="comma-separated policy names (default: all, oracle included)")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds (job mixes) to average over")
    parser.add_argument("--forecast", choices=FORECAST_KINDS, help="override the scenario's forecast")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario field before validation, e.g. migration.network_energy_j_per_byte=2.16e-4"
        " or sites.0.gpu_slots=1 (repeatable)",
    )
    parser.add_argument(
        "--coupled-bound",
        action="store_true",
        help="where jobs share sites, divide by the coupled LP lower bound as well (tighter ratio_to_oracle;"
        " slow: minutes per seed for a year of global-8)",
    )
    parser.add_argument("--out", type=Path, help="output directory (default: out/<scenario>)")
    parser.add_argument(
        "--json", action="store_true", help="print summary.json to stdout instead of the table"
    )
    parser.add_argument(
        "--no-plots", action="store_true", help="skip the PNG plots and their part of the report"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the comparison, write the outputs, print the table (or JSON)."""
    from greenferry.sim.report import comparison_table, summary_dict, write_outputs

    spec, base = load_scenario(args.scenario, args.overrides)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()] if args.policies else None
    if policies is not None and not policies:
        raise ConfigError("--policies names no policy")
    if args.seeds < 1 or args.seeds > 1000:
        raise ConfigError(f"--seeds must be between 1 and 1000, got {args.seeds}")
    n_tasks = args.seeds * len(policies or default_policy_names(spec))
    if policies is not None and ORACLE not in policies:
        n_tasks += args.seeds  # the oracle bound is computed for ratio_to_oracle anyway
    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=args.json or not console.is_terminal,
    ) as bar:
        task = bar.add_task(f"simulating {spec.name}", total=n_tasks)

        def advance(label: str) -> None:
            bar.update(task, advance=1, description=f"{spec.name}: {label}")

        comparison = compare(
            spec,
            base,
            policies,
            args.seeds,
            forecast=args.forecast,
            progress=advance,
            coupled_bound=args.coupled_bound,
        )
    comparison.extra["command"] = "greenferry " + shlex.join(
        sys.argv[1:] if sys.argv[0].endswith("greenferry") else []
    )
    out = args.out or Path("out") / spec.name
    write_outputs(comparison, out, plots=not args.no_plots)
    if args.json:
        print(json.dumps(summary_dict(comparison), indent=2, allow_nan=False))
        return 0
    out_console = Console()
    if not out_console.is_terminal:
        out_console = Console(width=160)  # a log or a pipe: keep every column readable
    out_console.print(comparison_table(comparison))
    out_console.print(f"wrote {out / 'report.html'} (and summary.json, timeline.csv, migrations.csv, plots)")
    return 0
