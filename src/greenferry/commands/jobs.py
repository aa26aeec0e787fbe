"""``greenferry jobs submit|list|show|cancel|migrate``: manage training jobs through the local daemon.

The daemon listens on ``<node.data_dir>/api.sock`` (adapters/local_api.py); ``--config`` finds it from the
node config, ``--socket`` names it. Exit codes: 0 done, 2 bad input (a spec file or argument that does not
validate, an unknown job), 1 the daemon failed or refused (not running, a conflict with the job's state).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from greenferry.core.jobs import JobInfo, JobSpec, JobState
from greenferry.errors import GreenferryError

__all__ = [
    "EXIT_DAEMON_FAILED",
    "EXIT_USAGE",
    "MAX_SPEC_FILE_BYTES",
    "JobFileError",
    "load_job_spec",
    "register",
]

EXIT_DAEMON_FAILED = 1
EXIT_USAGE = 2
MAX_SPEC_FILE_BYTES = 1024 * 1024  # the local API's body limit: a larger spec could not be submitted anyway

_T = TypeVar("_T")
# C0 and C1 control characters (ESC included) and DEL: a job's message may carry a process's stderr, which
# must not drive the user's terminal.
_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if code != 0x0A}


class JobFileError(GreenferryError, ValueError):
    """A job spec file that cannot be read or parsed; names the file and where it failed."""


def register(subparsers: Any) -> None:
    """Add ``jobs submit|list|show|cancel|migrate`` to the CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "jobs",
        help="submit and manage training jobs on the local daemon",
        description="Submit, list, show, cancel and migrate training jobs through the local daemon's API "
        "(its Unix socket, <node.data_dir>/api.sock). Exit 2 for bad input, 1 when the daemon fails or "
        "refuses.",
    )
    where = argparse.ArgumentParser(add_help=False)
    group = where.add_mutually_exclusive_group()
    group.add_argument(
        "--config", type=Path, metavar="FILE", help="node config: its node.data_dir has the socket"
    )
    group.add_argument("--socket", type=Path, metavar="PATH", help="the daemon's API socket itself")

    actions = parser.add_subparsers(dest="jobs_action", metavar="ACTION")
    submit = actions.add_parser(
        "submit",
        parents=[where],
        help="submit a job from a TOML or JSON spec",
        description="Validate a job spec (TOML or JSON: the JobSpec fields at the top level, see "
        "docs/examples/job.toml) and submit it to the daemon.",
    )
    submit.add_argument("file", type=Path, metavar="FILE", help="job spec, FILE.toml or FILE.json")
    submit.add_argument("--json", action="store_true", help="print the accepted job as JSON")
    submit.set_defaults(func=run_submit)

    list_parser = actions.add_parser("list", parents=[where], help="list the node's jobs")
    list_parser.add_argument("--json", action="store_true", help='print {"jobs": [...]} as JSON')
    list_parser.set_defaults(func=run_list)

    show = actions.add_parser("show", parents=[where], help="show one job")
    show.add_argument("job_id", metavar="ID", help="the job's id (its name)")
    show.add_argument("--json", action="store_true", help="print the job as JSON")
    show.set_defaults(func=run_show)

    cancel = actions.add_parser("cancel", parents=[where], help="cancel a job")
    cancel.add_argument("job_id", metavar="ID", help="the job's id (its name)")
    cancel.set_defaults(func=run_cancel)

    migrate = actions.add_parser(
        "migrate",
        parents=[where],
        help="move a job to another node now",
        description="Checkpoint the job and move it to NODE (a peer with a fresh advert), whatever the "
        "policy would decide.",
    )
    migrate.add_argument("job_id", metavar="ID", help="the job's id (its name)")
    migrate.add_argument("--to", required=True, metavar="NODE", help="the destination node's name")
    migrate.set_defaults(func=run_migrate)

    def usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return EXIT_USAGE

    parser.set_defaults(func=usage)


# --- spec files


def load_job_spec(path: Path) -> JobSpec:
    """Read and validate a job spec file: TOML (``.toml``) or JSON (``.json``), JobSpec fields at the top.

    Raises:
        JobFileError: the file is missing, too large, not UTF-8, or not valid TOML/JSON; names the file.
        JobValidationError: the spec does not validate; names the file and each field.
    """
    from greenferry.adapters.local_api import parse_json, validate_job_spec

    suffix = path.suffix.lower()
    if suffix not in {".toml", ".json"}:
        raise JobFileError(f"{path}: a job spec is a .toml or a .json file")
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_FILE_BYTES:
            raise JobFileError(f"{path}: {size} bytes is too large for a job spec (limit 1 MiB)")
        raw = path.read_bytes()
    except OSError as err:
        raise JobFileError(f"{path}: cannot read: {err.strerror or err}") from err
    data: object
    if suffix == ".json":
        try:
            data = parse_json(raw, source="the file")
        except ValueError as err:
            raise JobFileError(f"{path}: {err}") from None
    else:
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise JobFileError(f"{path}: not UTF-8 text (byte {err.start})") from None
        except tomllib.TOMLDecodeError as err:
            raise JobFileError(f"{path}: not valid TOML: {err}") from None
    return validate_job_spec(data, source=str(path))


# --- talking to the daemon


def _socket_path(args: argparse.Namespace) -> Path:
    if args.socket is not None:
        path: Path = args.socket
        return path
    from greenferry.adapters.local_api import SOCKET_NAME
    from greenferry.config import NodeConfig, load_config

    if args.config is not None:
        data_dir: Path = load_config(args.config).node.data_dir  # ConfigError -> exit 2
    else:
        data_dir = NodeConfig.model_fields["data_dir"].default
    return data_dir / SOCKET_NAME


def _call(args: argparse.Namespace, op: Callable[[Any], Awaitable[_T]]) -> _T | int:
    """Run ``op(client)`` against the daemon: its result, or the exit code after printing the error.

    Unknown jobs and refused arguments exit 2 (bad input); everything else the daemon refuses or fails,
    and a daemon that is not running, exit 1.
    """
    from greenferry.adapters.local_api import (
        DaemonNotRunningError,
        JobConflictError,
        JobNotFoundError,
        JobValidationError,
        LocalApiClient,
        LocalApiError,
    )

    socket_path = _socket_path(args)

    async def call() -> _T:
        async with LocalApiClient(socket_path=socket_path) as client:
            return await op(client)

    try:
        return asyncio.run(call())
    except DaemonNotRunningError:
        config = str(args.config) if args.config is not None else "node.toml"
        _fail(f"no daemon listening on {socket_path}: start it with greenferry daemon --config {config}")
    except (JobNotFoundError, JobValidationError) as err:  # the id or node named does not fit: bad input
        _fail(str(err))
        return EXIT_USAGE
    except (JobConflictError, LocalApiError) as err:
        _fail(str(err))
    return EXIT_DAEMON_FAILED


def _fail(message: str) -> None:
    print(f"greenferry: error: {_safe(message)}", file=sys.stderr)


def run_submit(args: argparse.Namespace) -> int:
    """Validate the spec file, submit it, print the accepted job.

    Raises:
        JobFileError, JobValidationError, ConfigError: bad input (exit 2 through the CLI).
    """
    spec = load_job_spec(args.file)
    result = _call(args, lambda client: client.submit(spec))
    if isinstance(result, int):
        return result
    if args.json:
        _print_json(result.model_dump(mode="json"))
    else:
        print(f"submitted job {result.job_id}: {result.state.value} on {_safe(result.node)}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Print the daemon's jobs as a table (or JSON)."""
    result = _call(args, lambda client: client.list_jobs())
    if isinstance(result, int):
        return result
    if args.json:
        _print_json({"jobs": [info.model_dump(mode="json") for info in result]})
        return 0
    if not result:
        print("no jobs")
        return 0
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    headers = ("JOB", "STATE", "NODE", "STEP", "CHECKPOINT", "MIGR.")
    rows = [
        (
            info.job_id,
            info.state.value,
            _safe(info.node),
            _opt(info.step),
            _checkpoint(info),
            str(info.migrations),
            _safe(info.message),
        )
        for info in result
    ]
    # Every column but the message keeps its full width (ids and states must never be cut); the message
    # folds into what is left, and a terminal too narrow for that gets a wider table, not a truncated one.
    widths = [max(len(header), *(len(row[index]) for row in rows)) for index, header in enumerate(headers)]
    table = Table(box=None, header_style="bold", pad_edge=False)
    for index, header in enumerate(headers):
        table.add_column(
            header, justify="right" if index >= 3 else "left", no_wrap=True, min_width=widths[index]
        )
    table.add_column("MESSAGE", overflow="fold", min_width=7)
    for row in rows:
        styled = [Text(cell) for cell in row]
        styled[1].stylize(_STATE_STYLE.get(row[1], ""))
        table.add_row(*styled)
    console = Console(highlight=False)
    needed_width = sum(widths) + 2 * len(widths) + 20
    if console.width < needed_width:
        console = Console(highlight=False, width=needed_width)
    console.print(table)
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Print one job, field by field (or as JSON).

    Returns:
        0, 2 for an unknown job or a bad id, 1 when the daemon fails or refuses.
    """
    result = _call(args, lambda client: client.get(args.job_id))
    if isinstance(result, int):
        return result
    if args.json:
        _print_json(result.model_dump(mode="json"))
        return 0
    spec = result.spec
    rows = [
        ("job", result.job_id),
        ("state", result.state.value),
        ("node", result.node),
        ("epoch", str(result.epoch)),
        ("step", _opt(result.step)),
        ("checkpoint", _checkpoint(result)),
        ("migrations", str(result.migrations)),
        ("command", shlex.join(spec.command)),
        ("working dir", spec.working_dir or "(the job's directory on the node)"),
        ("env", " ".join(sorted(spec.env)) or "-"),
        ("gpus", str(spec.gpu_count)),
        ("power", f"{spec.power_w:g} W" if spec.power_w is not None else "(from the hardware profile)"),
        ("checkpoint size", f"{_size(spec.checkpoint_size_bytes)} expected"),
        ("migratable", "yes" if spec.migratable else "no (pinned to its node)"),
        ("message", result.message or "-"),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {_safe(value)}")
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    """Cancel a job and print its state.

    Returns:
        0, 2 for an unknown job or a bad id, 1 when the daemon fails or refuses.
    """
    result = _call(args, lambda client: client.cancel(args.job_id))
    if isinstance(result, int):
        return result
    note = f" ({_safe(result.message)})" if result.message else ""
    print(f"job {result.job_id}: {result.state.value}{note}")
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    """Ask the daemon to move a job to ``--to`` and print its state.

    Returns:
        0, 2 for an unknown job, a bad id or a node the daemon refuses, 1 when the daemon fails or refuses.
    """
    result = _call(args, lambda client: client.migrate(args.job_id, args.to))
    if isinstance(result, int):
        return result
    note = f" ({_safe(result.message)})" if result.message else ""
    if result.state is JobState.MIGRATING:
        print(f"job {result.job_id}: migrating to {_safe(args.to)}{note}")
    else:  # e.g. still checkpointing: the move follows
        print(f"job {result.job_id}: {result.state.value}, migration to {_safe(args.to)} requested{note}")
    return 0


# --- output


_STATE_STYLE = {
    "running": "green",
    "completed": "bold green",
    "failed": "red",
    "cancelled": "dim",
    "migrating": "yellow",
    "checkpointing": "yellow",
    "migrated": "cyan",
    "paused": "blue",
}


def _safe(text: str) -> str:
    """``text`` with control characters (ESC included) shown as ``\\xNN`` escapes, newlines kept."""
    return text.translate(_CONTROL)


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)


def _size(size_bytes: int) -> str:
    if size_bytes < 1024:
        return f"{size_bytes} B"
    value = size_bytes / 1024
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.1f} {unit}"


def _checkpoint(info: JobInfo) -> str:
    if info.checkpoint_step is None:
        return "-"
    size = f", {_size(info.checkpoint_bytes)}" if info.checkpoint_bytes is not None else ""
    return f"step {info.checkpoint_step}{size}"


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, allow_nan=False))
