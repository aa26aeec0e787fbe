"""Energy per unit of training work, per platform (hardware profile), from a simulated run.

Work is counted two ways: GPU-hours (hours a job's GPUs trained) and H100-hours (GPU-hours times the
profile's ``relative_throughput``: the same training work on any platform). Energy is the job's power (GPU
training power plus its host share) over the steps it ran, plus the energy of its migrations. The
non-renewable part of a running step is the job's share of what the site's surplus did not cover in that step
(every job at a site gets the same uncovered fraction); a migration's energy counts as non-renewable in the
fraction its source site was uncovered when it left.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from greenferry.hardware_profiles import get_profile
from greenferry.sim.engine import World
from greenferry.sim.results import JobState, RunResult

__all__ = ["PlatformFigures", "main", "platform_breakdown"]

J_PER_KWH = 3.6e6


@dataclass(frozen=True, slots=True)
class PlatformFigures:
    """One platform's totals over a run."""

    profile: str
    category: str
    jobs: int
    gpu_h: float
    h100_h: float
    energy_kwh: float
    nonrenewable_kwh: float

    @property
    def kwh_per_h100_h(self) -> float:
        """Energy per H100-hour of training work."""
        return self.energy_kwh / self.h100_h if self.h100_h > 0 else math.nan

    @property
    def nonrenewable_kwh_per_h100_h(self) -> float:
        """Non-renewable energy per H100-hour of training work."""
        return self.nonrenewable_kwh / self.h100_h if self.h100_h > 0 else math.nan

    @property
    def renewable_share(self) -> float:
        """Share of the energy the sites' surplus covered."""
        return 1.0 - self.nonrenewable_kwh / self.energy_kwh if self.energy_kwh > 0 else math.nan

    def to_json(self) -> dict[str, object]:
        """JSON-ready form (NaN as None)."""

        def num(value: float, digits: int = 4) -> float | None:
            return None if math.isnan(value) else round(value, digits)

        return {
            "profile": self.profile,
            "category": self.category,
            "jobs": self.jobs,
            "gpu_h": num(self.gpu_h, 2),
            "h100_h": num(self.h100_h, 3),
            "energy_kwh": num(self.energy_kwh, 3),
            "nonrenewable_kwh": num(self.nonrenewable_kwh, 3),
            "renewable_share": num(self.renewable_share),
            "kwh_per_h100_h": num(self.kwh_per_h100_h),
            "nonrenewable_kwh_per_h100_h": num(self.nonrenewable_kwh_per_h100_h),
        }


def platform_breakdown(world: World, result: RunResult) -> list[PlatformFigures]:
    """Per-profile work and energy of ``result`` (a run of ``world``), by profile name."""
    hours = world.step_s / 3600.0
    load = np.asarray(result.site_load_w, dtype=np.float64)
    surplus = np.asarray(result.surplus_w, dtype=np.float64)
    uncovered = np.divide(
        np.maximum(load - np.maximum(surplus, 0.0), 0.0), load, out=np.zeros_like(load), where=load > 0
    )
    rows: dict[str, list[float]] = {}
    for j, job in enumerate(world.jobs):
        name = job.profile or "a100-80gb"
        running = result.job_state[j] == JobState.RUNNING
        steps = np.nonzero(running)[0]
        sites = result.job_site[j, steps]
        run_h = float(len(steps)) * hours * job.slots
        energy_kwh = job.power_w * float(len(steps)) * hours / 1000.0
        nonrenewable_kwh = job.power_w * float(uncovered[sites, steps].sum()) * hours / 1000.0
        row = rows.setdefault(name, [0.0, 0.0, 0.0, 0.0])
        row[0] += 1
        row[1] += run_h
        row[2] += energy_kwh
        row[3] += nonrenewable_kwh
    names = {s: i for i, s in enumerate(result.site_names)}
    for record in result.migrations:
        job = world.jobs[record.job_id]
        name = job.profile or "a100-80gb"
        step = min(world.n_steps - 1, max(0, int((record.start_s - world.start_s) // world.step_s)))
        fraction = float(uncovered[names[record.src_site], step]) if record.src_site in names else 1.0
        rows[name][2] += record.energy_j / J_PER_KWH
        rows[name][3] += fraction * record.energy_j / J_PER_KWH
    out = []
    for name in sorted(rows, key=lambda n: (get_profile(n).relative_throughput, n)):
        jobs, gpu_h, energy, nonrenewable = rows[name]
        profile = get_profile(name)
        out.append(
            PlatformFigures(
                name,
                profile.category,
                int(jobs),
                gpu_h,
                gpu_h * profile.relative_throughput,
                energy,
                nonrenewable,
            )
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m greenferry.sim.platforms``: the per-platform table for a scenario's policy runs."""
    import argparse
    import json

    from greenferry.sim.runner import compare
    from greenferry.sim.scenario import build_world, load_scenario

    parser = argparse.ArgumentParser(
        prog="python -m greenferry.sim.platforms", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--scenario", default="edge-mix", help="built-in name or TOML path")
    parser.add_argument("--policies", default="static,lookahead", help="comma-separated policy names")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    spec, base = load_scenario(args.scenario)
    comparison = compare(spec, base, [p for p in args.policies.split(",") if p], seeds=1)
    world = build_world(spec, base, 0)
    out = {
        policy: [f.to_json() for f in platform_breakdown(world, runs[0])]
        for policy, runs in comparison.runs.items()
    }
    if args.json:
        print(json.dumps({"scenario": args.scenario, "policies": out}, indent=2))
        return 0
    print(
        f"{'policy':<18} {'profile':<17} {'jobs':>4} {'GPU-h':>8} {'H100-h':>8} {'kWh':>8} "
        f"{'non-ren kWh':>11} {'renew %':>7} {'kWh/H100-h':>10} {'non-ren/H100-h':>14}"
    )
    for policy, rows in out.items():
        for r in rows:
            print(
                f"{policy:<18} {r['profile']!s:<17} {r['jobs']:>4} {r['gpu_h']:>8} {r['h100_h']:>8} "
                f"{r['energy_kwh']:>8} {r['nonrenewable_kwh']:>11} "
                f"{100 * _num(r['renewable_share']):>7.1f} {r['kwh_per_h100_h']!s:>10} "
                f"{r['nonrenewable_kwh_per_h100_h']!s:>14}"
            )
    return 0


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


if __name__ == "__main__":
    raise SystemExit(main())
