"""``greenferry feasibility``: can this checkpoint move over this link within this renewable window?

With ``--parts`` (the states of a data-parallel job's workers) it also says which of them can move: the
largest set whose move fits in the window's budget (``core.feasibility.largest_movable_parts``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from greenferry.core.feasibility import (
    FeasibilityVerdict,
    MigrationParams,
    MovableParts,
    assess,
    largest_movable_parts,
)
from greenferry.core.jobs import MAX_JOB_PARTS
from greenferry.core.units import (
    format_bandwidth,
    format_bytes,
    format_duration,
    format_energy,
    parse_bandwidth_bps,
    parse_duration_s,
    parse_energy_per_byte_j,
    parse_power_w,
    parse_size_bytes,
)
from greenferry.errors import ConfigError, GreenferryError, UnitError
from greenferry.hardware_profiles import resolve_profile

__all__ = ["register", "run"]

# MigrationParams field -> the flag that sets it, for error messages.
_FIELD_FLAGS = {
    "alpha": "--alpha",
    "transfer_efficiency": "--efficiency",
    "checkpoint_write_s": "--checkpoint-write",
    "restore_s": "--restore",
    "network_energy_j_per_byte": "--network-energy",
    "job_power_w": "--job-power",
    "idle_power_src_w": "--profile",
    "idle_power_dst_w": "--profile",
}


def register(subparsers: Any) -> None:
    """Add the ``feasibility`` subcommand to the CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "feasibility",
        help="check whether a checkpoint can migrate within a renewable window",
        description=(
            "Evaluate the feasibility-domain model: the time check T_mig <= alpha*T_w and the energy check "
            "E_mig < P_job*(T_w - T_mig), with margins, break-even time and the domain's boundaries."
        ),
    )
    parser.add_argument("--checkpoint", metavar="SIZE", help="checkpoint size S, e.g. 100GB, 1.5GiB")
    parser.add_argument("--bandwidth", metavar="RATE", help="usable WAN bandwidth B, e.g. 1Gbps, 10Gbit/s")
    parser.add_argument("--window", metavar="DURATION", help="renewable window ahead T_w, e.g. 2.5h, 1h30min")
    parser.add_argument("--alpha", metavar="FRACTION", help="share of the window a migration may use (0.1)")
    parser.add_argument("--efficiency", metavar="FRACTION", help="transfer efficiency eta (0.9)")
    parser.add_argument("--checkpoint-write", metavar="DURATION", help="T_ckpt, quiesce + write (30s)")
    parser.add_argument("--restore", metavar="DURATION", help="T_restore, load + warm-up (30s)")
    parser.add_argument(
        "--network-energy", metavar="ENERGY/AMOUNT", help="e_net, e.g. 10nJ/bit (default) or 0.06kWh/GB"
    )
    parser.add_argument("--job-power", metavar="POWER", help="P_job while training, e.g. 400W (default)")
    parser.add_argument(
        "--profile",
        metavar="NAME|FILE",
        help="hardware profile: P_job = train + host power, idle ends = idle + host power (--job-power wins)",
    )
    parser.add_argument(
        "--parts",
        metavar="SIZES",
        help="a data-parallel job's workers, e.g. 4x40GB,60GB: which can move? (--checkpoint: their sum)",
    )
    parser.add_argument(
        "--pinned-parts", metavar="SIZES", help="workers that must stay, e.g. 10GB (count in the sum only)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument(
        "--plot", metavar="FILE", help="draw the feasibility domain to FILE (PNG); S/B/T_w become optional"
    )
    # A value such as "-1h" must reach our parser (which explains why it is wrong) instead of being taken for
    # an unknown option; newer Pythons' argparse already treats any "-<digit>..." argument this way.
    parser._negative_number_matcher = re.compile(r"^-\.?\d")
    parser.set_defaults(func=run)


def _flag_value(flag: str, text: str, parse: Callable[[str], float]) -> float:
    try:
        return parse(text)
    except UnitError as err:
        raise UnitError(f"{flag}: {err}") from err


def _parse_fraction(text: str) -> float:
    """A fraction as ``0.1`` or ``10%``."""
    stripped = text.strip()
    scale = 1.0
    if stripped.endswith("%"):
        stripped, scale = stripped[:-1], 0.01
    try:
        value = float(stripped) * scale
    except ValueError:
        raise UnitError(f"invalid fraction {text!r}: expected a number such as 0.1 or 10%") from None
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise UnitError(f"invalid fraction {text!r}: must be in (0, 1]")
    return value


def parse_part_sizes(flag: str, text: str) -> list[float]:
    """Part sizes from ``SIZE[,SIZE...]``, where an item ``Nx SIZE`` stands for N parts of that size.

    Raises:
        UnitError: an empty item, a bad count or size, or more than ``MAX_JOB_PARTS`` parts (names the flag).
    """
    sizes: list[float] = []
    for item in text.split(","):
        count_text, sep, size_text = item.strip().partition("x")
        if not sep or not count_text.strip().isdigit():
            count_text, size_text = "1", item.strip()
        count = int(count_text)
        if not 1 <= count <= MAX_JOB_PARTS:
            raise UnitError(f"{flag}: {item.strip()!r}: the count must be 1 to {MAX_JOB_PARTS}")
        sizes += [_flag_value(flag, size_text.strip(), parse_size_bytes)] * count
        if len(sizes) > MAX_JOB_PARTS:
            raise UnitError(f"{flag}: more than {MAX_JOB_PARTS} parts")
    return sizes


def build_params(args: argparse.Namespace) -> MigrationParams:
    """MigrationParams from the flags; unset flags keep the model's defaults.

    Raises:
        UnitError: a flag value with a bad unit or number (names the flag).
        ConfigError: an unknown profile or values the model rejects.
    """
    values: dict[str, float] = {}
    if args.profile is not None:
        profile = resolve_profile(args.profile)
        values["job_power_w"] = profile.job_power_w
        values["idle_power_src_w"] = values["idle_power_dst_w"] = profile.idle_site_power_w
    parsers: tuple[tuple[str, str, Callable[[str], float]], ...] = (
        ("alpha", "--alpha", _parse_fraction),
        ("efficiency", "--efficiency", _parse_fraction),
        ("checkpoint_write", "--checkpoint-write", parse_duration_s),
        ("restore", "--restore", parse_duration_s),
        ("network_energy", "--network-energy", parse_energy_per_byte_j),
        ("job_power", "--job-power", parse_power_w),
    )
    fields = {
        "alpha": "alpha",
        "efficiency": "transfer_efficiency",
        "checkpoint_write": "checkpoint_write_s",
        "restore": "restore_s",
        "network_energy": "network_energy_j_per_byte",
        "job_power": "job_power_w",
    }
    for attribute, flag, parse in parsers:
        text = getattr(args, attribute)
        if text is not None:
            values[fields[attribute]] = _flag_value(flag, text, parse)
    try:
        return MigrationParams(**values)
    except ValidationError as err:
        problems = "; ".join(
            f"{_FIELD_FLAGS.get(str(item['loc'][0]), str(item['loc'][0]))}: {item['msg']}"
            for item in err.errors()
        )
        raise ConfigError(problems) from err


def _verdict_json(
    verdict: FeasibilityVerdict,
    size_bytes: float,
    bandwidth_bps: float,
    window_s: float,
    params: MigrationParams,
) -> dict[str, Any]:
    return {
        **verdict.to_dict(),
        "checkpoint_bytes": size_bytes,
        "bandwidth_bps": bandwidth_bps,
        "window_s": window_s,
        "params": params.model_dump(),
    }


def _print_table(
    verdict: FeasibilityVerdict,
    size_bytes: float,
    bandwidth_bps: float,
    window_s: float,
    params: MigrationParams,
) -> None:
    from rich.console import Console
    from rich.table import Table

    def mark(ok: bool) -> str:
        return "[green]pass[/green]" if ok else "[red]FAIL[/red]"

    def signed_duration(seconds: float) -> str:
        return ("+" if seconds >= 0 else "") + format_duration(seconds)

    console = Console(highlight=False)
    heading = (
        "[bold green]FEASIBLE[/bold green]"
        if verdict.feasible
        else f"[bold red]NOT FEASIBLE[/bold red] ({verdict.binding_constraint} check fails)"
    )
    console.print(
        f"{format_bytes(size_bytes)} over {format_bandwidth(bandwidth_bps)}, {format_duration(window_s)} "
        f"window, α {params.alpha:g}: {heading}"
    )
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("check", style="bold")
    table.add_column("test")
    table.add_column("margin", justify="right")
    table.add_column("result")
    table.add_row(
        "time",
        f"T_mig {format_duration(verdict.migration_time_s)} ≤ α·T_w {format_duration(verdict.budget_s)}",
        signed_duration(verdict.time_margin_s),
        mark(verdict.time_feasible),
    )
    table.add_row(
        "",
        f"[dim]= write {format_duration(params.checkpoint_write_s)} + transfer "
        f"{format_duration(verdict.transfer_time_s)} + restore {format_duration(params.restore_s)}[/dim]",
        "",
        "",
    )
    table.add_row(
        "energy",
        f"E_mig {format_energy(verdict.migration_energy_j)} < avoided "
        f"{format_energy(verdict.migration_energy_j + verdict.energy_gain_j)}",
        ("+" if verdict.energy_gain_j >= 0 else "") + format_energy(verdict.energy_gain_j),
        mark(verdict.energy_feasible),
    )
    table.add_row(
        "",
        f"[dim]avoided = P_job × (T_w − T_mig) = {params.job_power_w:g} W × "
        f"{format_duration(window_s - verdict.migration_time_s)}[/dim]",
        "",
        "",
    )
    console.print(table)
    console.print(
        f"break-even after {format_duration(verdict.break_even_s)} of running "
        f"(P_job {params.job_power_w:g} W, e_net {params.network_energy_j_per_byte * 1e9 / 8:.3g} nJ/bit)"
    )
    console.print(
        f"largest checkpoint at {format_bandwidth(bandwidth_bps)}: "
        f"{format_bytes(verdict.max_checkpoint_bytes)} "
        f"(time {format_bytes(verdict.max_checkpoint_bytes_time)}, "
        f"energy {format_bytes(verdict.max_checkpoint_bytes_energy)})"
    )
    console.print(
        f"smallest bandwidth for {format_bytes(size_bytes)}: {format_bandwidth(verdict.min_bandwidth_bps)} "
        f"(time {format_bandwidth(verdict.min_bandwidth_bps_time)}, "
        f"energy {format_bandwidth(verdict.min_bandwidth_bps_energy)})"
    )
    console.print(f"as the checkpoint grows, the {verdict.limiting_constraint} check binds first")


def run(args: argparse.Namespace) -> int:
    """Run ``greenferry feasibility``; returns the exit code (0, also for an infeasible verdict)."""
    params = build_params(args)
    part_bytes = None if args.parts is None else parse_part_sizes("--parts", args.parts)
    pinned_bytes = [] if args.pinned_parts is None else parse_part_sizes("--pinned-parts", args.pinned_parts)
    if pinned_bytes and part_bytes is None:
        raise GreenferryError("feasibility: --pinned-parts needs --parts (the workers that may move)")
    if part_bytes is not None and len(part_bytes) + len(pinned_bytes) > MAX_JOB_PARTS:
        raise UnitError(f"--parts, --pinned-parts: more than {MAX_JOB_PARTS} parts in all")
    size_bytes = (
        None if args.checkpoint is None else _flag_value("--checkpoint", args.checkpoint, parse_size_bytes)
    )
    if size_bytes is None and part_bytes is not None:
        size_bytes = float(sum(part_bytes) + sum(pinned_bytes))
    bandwidth_bps = (
        None if args.bandwidth is None else _flag_value("--bandwidth", args.bandwidth, parse_bandwidth_bps)
    )
    window_s = None if args.window is None else _flag_value("--window", args.window, parse_duration_s)
    missing = [
        flag
        for flag, value in (
            ("--checkpoint", size_bytes),
            ("--bandwidth", bandwidth_bps),
            ("--window", window_s),
        )
        if value is None
    ]
    if args.plot is None and missing:
        raise GreenferryError(
            f"feasibility: missing {', '.join(missing)} (all three are needed without --plot)"
        )

    if args.plot is not None:
        from greenferry.sim.feasibility_plot import DEFAULT_WINDOWS_S, plot_feasibility_domain

        windows_s = tuple(sorted({*DEFAULT_WINDOWS_S, *([window_s] if window_s else [])}))
        highlight = None if size_bytes is None or bandwidth_bps is None else (bandwidth_bps, size_bytes)
        try:
            written = plot_feasibility_domain(
                Path(args.plot), params, windows_s=windows_s, highlight=highlight
            )
        except (OSError, ValueError) as err:
            raise ConfigError(f"--plot {args.plot!r}: cannot write the plot: {err}") from err
        if missing:
            if args.json:
                print(json.dumps({"plot": str(written)}))
            else:
                print(f"wrote {written}")
            return 0

    assert size_bytes is not None
    assert bandwidth_bps is not None
    assert window_s is not None
    verdict = assess(size_bytes, bandwidth_bps, window_s, params)
    movable = None
    all_parts = [*(part_bytes or []), *pinned_bytes]
    pinned = [False] * len(part_bytes or []) + [True] * len(pinned_bytes)
    if part_bytes is not None:
        movable = largest_movable_parts(all_parts, bandwidth_bps, window_s, params, pinned=pinned)
    if args.json:
        document = _verdict_json(verdict, size_bytes, bandwidth_bps, window_s, params)
        if movable is not None:
            document["parts"] = {**movable.to_dict(), "part_bytes": all_parts, "pinned": pinned}
        if args.plot is not None:
            document["plot"] = str(args.plot)
        print(json.dumps(document, allow_nan=False))
    else:
        _print_table(verdict, size_bytes, bandwidth_bps, window_s, params)
        if movable is not None:
            print(_parts_line(movable, len(pinned_bytes)))
        if args.plot is not None:
            print(f"wrote {args.plot}")
    return 0


def _parts_line(movable: MovableParts, n_pinned: int) -> str:
    """One line on which parts can move."""
    pinned = f" ({n_pinned} more pinned)" if n_pinned else ""
    budget = format_duration(movable.budget_s)
    if movable.count == 0:
        return f"parts: none of the {movable.movable_parts} movable parts fits in α·T_w {budget}{pinned}"
    which = ", ".join(str(i) for i in movable.indices)
    return (
        f"parts: {movable.count} of the {movable.movable_parts} movable parts can go together{pinned} "
        f"(parts {which}, "
        f"{format_bytes(movable.size_bytes)}, T_mig {format_duration(movable.migration_time_s)} "
        f"≤ α·T_w {budget})"
    )
