"""`greenferry demo`: three real node daemons follow a day of real surplus with the example training job."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

from greenferry.errors import ConfigError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``demo`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run three live nodes on a day of real traces, with a job that follows the surplus",
        description=(
            "Starts an embedded MQTT broker (unless --broker), three node daemons on loopback for sites "
            "in different time zones, a replayer publishing a built-in scenario's real surplus and carbon "
            "traces on an accelerated clock, and the numpy example job, which the nodes' policy moves to "
            "where the surplus is. Prints a summary at the end."
        ),
    )
    parser.add_argument(
        "--broker", metavar="URL", help="use this broker (mqtt://host[:port]) instead of amqtt"
    )
    parser.add_argument("--headless", action="store_true", help="no live view: a log line per simulated hour")
    parser.add_argument("--duration", default="1d", help="simulated span, e.g. 1d, 6h (default 1d)")
    parser.add_argument(
        "--speedup", type=float, default=720.0, help="simulated seconds per real second (default 720)"
    )
    parser.add_argument("--json-summary", type=Path, metavar="FILE", help="write the summary as JSON")
    parser.add_argument("--work-dir", type=Path, metavar="DIR", help="keep node configs and data here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 when no job ever ran twice."""
    from rich.console import Console
    from rich.logging import RichHandler

    from greenferry.core.units import parse_duration_s
    from greenferry.demo.runner import DemoOptions, run_demo, summary_lines

    try:
        duration_s = parse_duration_s(args.duration)
    except ValueError as err:
        raise ConfigError(f"--duration: {err}") from None
    if not math.isfinite(args.speedup) or args.speedup <= 0:
        raise ConfigError(f"--speedup must be a positive number, got {args.speedup}")
    options = DemoOptions(
        duration_s=duration_s,
        speedup=args.speedup,
        broker_url=args.broker,
        headless=args.headless,
        work_dir=args.work_dir,
    )
    console = Console()
    # Log through the live view's console so that log lines do not tear the display.
    root = logging.getLogger()
    handler = RichHandler(console=console, show_path=False, markup=False)
    previous = list(root.handlers)
    root.handlers = [handler]
    root.setLevel(logging.INFO if args.headless else logging.WARNING)
    try:
        summary = asyncio.run(run_demo(options, console=console))
    finally:
        root.handlers = previous
    for line in summary_lines(summary):
        console.print(line, markup=False, highlight=False)
    if args.json_summary is not None:
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(summary).items()}
        args.json_summary.parent.mkdir(parents=True, exist_ok=True)
        args.json_summary.write_text(json.dumps(data, indent=2, default=list) + "\n")
    return 0 if summary.double_runs == 0 else 1
