"""``greenferry profiles``: the shipped hardware profiles (typical power, memory, relative throughput)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from greenferry.hardware_profiles import HardwareProfile, list_profiles, resolve_profile

__all__ = ["register", "run_list", "run_show"]


def register(subparsers: Any) -> None:
    """Add ``profiles list`` and ``profiles show NAME`` to the CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "profiles",
        help="list or show hardware profiles",
        description="Shipped accelerator hardware profiles.",
    )
    actions = parser.add_subparsers(dest="profiles_action", metavar="ACTION")
    list_parser = actions.add_parser("list", help="table of every shipped profile")
    list_parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    list_parser.set_defaults(func=run_list)
    show_parser = actions.add_parser("show", help="every field of one profile")
    show_parser.add_argument("name", metavar="NAME|FILE", help="profile name (e.g. h100-sxm) or a YAML file")
    show_parser.add_argument("--json", action="store_true", help="print one JSON object")
    show_parser.set_defaults(func=run_show)

    def usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)


def _profile_json(profile: HardwareProfile) -> dict[str, Any]:
    return {
        **profile.model_dump(),
        "memory_bytes": profile.memory_bytes,
        "job_power_w": profile.job_power_w,
        "idle_site_power_w": profile.idle_site_power_w,
    }


def run_list(args: argparse.Namespace) -> int:
    """Print every shipped profile as a table (or JSON list); returns 0."""
    profiles = list_profiles()
    if args.json:
        print(json.dumps([_profile_json(profile) for profile in profiles]))
        return 0
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="Hardware profiles (throughput relative to H100 SXM = 1)",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
    )
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("category", no_wrap=True)
    table.add_column("memory", justify="right", no_wrap=True)
    table.add_column("power W\nidle/train/max", justify="right", no_wrap=True)
    table.add_column("cap W\nmin–max", justify="right", no_wrap=True)
    table.add_column("relative\nthroughput", justify="right", no_wrap=True)
    for profile in profiles:
        table.add_row(
            profile.name,
            profile.category,
            f"{profile.memory_gib:g} GiB",
            f"{profile.idle_power_w:g}/{profile.train_power_w:g}/{profile.max_power_w:g}",
            f"{profile.power_limit_min_w:g}–{profile.power_limit_max_w:g}",
            f"{profile.relative_throughput:g}",
        )
    Console(highlight=False).print(table)
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Print one profile (by name or file) as a field list (or JSON object); returns 0.

    Raises:
        ConfigError: unknown profile name or a file that does not validate.
    """
    profile = resolve_profile(args.name)
    if args.json:
        print(json.dumps(_profile_json(profile)))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=profile.display_name, show_header=False, box=None)
    table.add_column("field", style="bold")
    table.add_column("value")
    for field, value in _profile_json(profile).items():
        table.add_row(field, str(value))
    Console(highlight=False).print(table)
    return 0
