"""``greenferry telemetry export``: points from the embedded SQLite store as CSV or line protocol."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from greenferry.core.telemetry import Point
from greenferry.errors import GreenferryError, UnitError

__all__ = ["ExportError", "export", "parse_time_ns", "register", "run_export"]


class ExportError(GreenferryError):
    """Bad ``telemetry export`` arguments (times, store location); says which and why."""


def register(subparsers: Any) -> None:
    """Add ``telemetry export`` to the CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "telemetry",
        help="read the node's local telemetry store",
        description="Read telemetry the daemon recorded in its embedded SQLite store.",
    )
    actions = parser.add_subparsers(dest="telemetry_action", metavar="ACTION")
    export_parser = actions.add_parser(
        "export",
        help="print points as CSV or InfluxDB line protocol",
        description="Print stored points with since <= time < until, oldest first. Times are a duration "
        "back from now (1h, 30min, 2d, 1h30min), an ISO-8601 time (2026-05-01T12:00:00Z; no zone "
        "means UTC), or 'now'.",
    )
    export_parser.add_argument("--since", required=True, metavar="TIME", help="start (e.g. 1h: an hour ago)")
    export_parser.add_argument("--until", default="now", metavar="TIME", help="end, exclusive (default: now)")
    export_parser.add_argument(
        "--format",
        choices=("csv", "lp"),
        default="csv",
        help="csv: one row per point, a column per tag and field; lp: line protocol (ns), "
        "ready for `influx write`",
    )
    export_parser.add_argument("--measurement", metavar="NAME", help="only this measurement (e.g. gpu)")
    source = export_parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, metavar="FILE", help="node config: use its telemetry store")
    source.add_argument("--db", type=Path, metavar="PATH", help="the SQLite store itself")
    export_parser.set_defaults(func=run_export)

    def usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)


def parse_time_ns(text: str, now_s: float, option: str) -> int:
    """A command-line time as UTC nanoseconds: a duration ago, an ISO-8601 time, or ``now``.

    Raises:
        ExportError: neither a duration nor an ISO-8601 time; names ``option``.
    """
    from greenferry.core.units import parse_duration_s
    from greenferry.daemon.telemetry import time_ns_from_s

    stripped = text.strip()
    if stripped.lower() == "now":
        return time_ns_from_s(now_s)
    try:
        return time_ns_from_s(now_s - parse_duration_s(stripped))
    except UnitError as unit_err:
        try:
            moment = dt.datetime.fromisoformat(stripped.replace("Z", "+00:00"))
        except ValueError:
            raise ExportError(
                f"{option} {text!r}: not a duration back from now (e.g. 1h, 30min, 1h30min) "
                f"nor an ISO-8601 time (e.g. 2026-05-01T12:00:00Z): {unit_err}"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return time_ns_from_s(moment.timestamp())


def _store_path(args: argparse.Namespace) -> Path:
    if args.db is not None:
        path: Path = args.db
        return path
    from greenferry.config import SqliteTelemetryConfig, load_config

    config = load_config(args.config)
    path = config.telemetry_sqlite_path
    if not isinstance(config.telemetry, SqliteTelemetryConfig) and not path.exists():
        raise ExportError(
            f"{args.config}: telemetry goes to {config.telemetry.type} ({config.telemetry.url}), not to a "
            f"local store; query that server (see docs/telemetry.md), or pass --db"
        )
    return path


def run_export(args: argparse.Namespace) -> int:
    """Print the selected points to stdout; returns 0.

    Raises:
        ExportError: bad --since/--until, or since not before until.
        ConfigError: --config does not validate.
        TelemetryStoreError: the store is missing or unreadable.
    """
    from greenferry.daemon.clock import RealClock

    now_s = RealClock().now_s()
    since_ns = parse_time_ns(args.since, now_s, "--since")
    until_ns = parse_time_ns(args.until, now_s, "--until")
    if since_ns >= until_ns:
        raise ExportError(f"--since {args.since!r} is not before --until {args.until!r}")
    path = _store_path(args)
    try:
        export(path, sys.stdout, since_ns, until_ns, measurement=args.measurement, fmt=args.format)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader is gone, which is not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0


def export(
    path: Path,
    out: IO[str],
    since_ns: int | None,
    until_ns: int | None,
    *,
    measurement: str | None = None,
    fmt: str = "csv",
) -> int:
    """Write the store's points in [since_ns, until_ns) to ``out`` as ``fmt`` (csv or lp).

    Returns:
        The number of points written.

    Raises:
        TelemetryStoreError: the store is missing or unreadable.
    """
    from greenferry.adapters.sqlite_store import read_points
    from greenferry.daemon.telemetry import encode_line

    points = read_points(path, since_ns, until_ns, measurement)
    if fmt == "lp":
        count = 0
        for point in points:
            out.write(encode_line(point) + "\n")
            count += 1
        return count
    if fmt != "csv":
        raise ExportError(f"--format {fmt!r}: use csv or lp")
    tags, fields = _columns(path, since_ns, until_ns, measurement)
    return _write_csv(out, points, tags, fields)


def _columns(
    path: Path, since_ns: int | None, until_ns: int | None, measurement: str | None
) -> tuple[list[str], list[str]]:
    """Tag and field columns: the declared schemas of the measurements present, then any other keys."""
    from greenferry.adapters.sqlite_store import measurements_in, read_points
    from greenferry.daemon.telemetry import MEASUREMENTS

    present = [measurement] if measurement is not None else measurements_in(path, since_ns, until_ns)
    tags: dict[str, None] = {}
    fields: dict[str, None] = {}
    undeclared = []
    for name in present:
        schema = MEASUREMENTS.get(name)
        if schema is None:
            undeclared.append(name)
            continue
        tags.update(dict.fromkeys(spec.name for spec in schema.tags))
        fields.update(dict.fromkeys(spec.name for spec in schema.fields))
    for name in undeclared:  # not written by this greenferry version: learn the keys from the rows
        for point in read_points(path, since_ns, until_ns, name):
            tags.update(dict.fromkeys(point.tags))
            fields.update(dict.fromkeys(point.fields))
    return list(tags), [name for name in fields if name not in tags]


def _iso_ns(time_ns: int) -> str:
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int | str):
        return str(value)
    return json.dumps(value)


def _write_csv(out: IO[str], points: Iterable[Point], tags: Sequence[str], fields: Sequence[str]) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["time", "time_ns", "measurement", *tags, *fields])
    count = 0
    for point in points:
        writer.writerow(
            [
                _iso_ns(point.time_ns),
                point.time_ns,
                point.measurement,
                *(_cell(point.tags.get(tag)) for tag in tags),
                *(_cell(point.fields.get(name)) for name in fields),
            ]
        )
        count += 1
    return count
