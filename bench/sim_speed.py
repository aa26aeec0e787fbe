"""Simulator speed and memory, printed as JSON (targets in docs/evaluation.md; never asserted in tests).

Figures:
- site_steps_per_s: 10 sites x 30 days at 60 s steps (432,000 site-steps), feasibility-aware policy,
  decisions every 5 min, 20 jobs; the best of ``--repeat`` runs.
- global8_year_s: year-long global-8 at 5 min steps, every online policy except lookahead, one seed.
- lookahead_global8_year_s: the same world under lookahead alone.
- oracle_paper_s: the exact oracle for every job of the built-in paper scenario (all its deadlines).
- peak_rss_mb: the process's peak resident memory at the end.

Usage: python bench/sim_speed.py --json [--repeat 3] [--skip-year]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from collections.abc import Callable

import numpy as np

from greenferry.core.forecast import make_forecaster
from greenferry.core.policy import make_policy
from greenferry.sim.engine import Engine, SiteModel, World
from greenferry.sim.runner import run_seed
from greenferry.sim.scenario import build_world, load_scenario


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ten_site_world() -> World:
    """10 sites (global-8 plus two shifted copies), 30 days at 60 s, decisions every 5 min, 20 jobs."""
    spec, base = load_scenario("global-8")
    spec = spec.model_copy(update={"step": "60s", "decision_interval": "5min", "duration": "30d"})
    spec = spec.model_copy(update={"jobs": spec.jobs.model_copy(update={"count": 20, "spacing": "36h"})})
    world = build_world(spec, base, seed=0)
    extra = [
        SiteModel(
            f"{site.name}-shifted", np.roll(site.surplus_w, 4 * 60), site.carbon_g_per_kwh, site.gpu_slots
        )
        for site in world.sites[:2]
    ]
    sites = (*world.sites, *extra)
    n = len(sites)
    bandwidth = np.full((n, n), 10e9)
    np.fill_diagonal(bandwidth, 0.0)
    return dataclasses.replace(world, sites=sites, bandwidth_bps=bandwidth)


def site_steps_per_s(repeat: int) -> dict[str, float]:
    """Best-of-``repeat`` throughput of the feasibility-aware policy on the 10-site world."""
    world = ten_site_world()
    forecaster = make_forecaster("perfect", world.epoch_surplus_w, world.epoch_s)
    times = [
        _timed(lambda: Engine(world, forecaster, keep_timeline=False).run(make_policy("feasibility-aware")))
        for _ in range(repeat)
    ]
    best = min(times)
    site_steps = len(world.sites) * world.n_steps
    return {"site_steps": float(site_steps), "run_s": best, "site_steps_per_s": site_steps / best}


def global8_year() -> dict[str, float]:
    """Year-long global-8 at 5 min: all online policies but lookahead, then lookahead alone."""
    spec, base = load_scenario("global-8")
    spec = spec.model_copy(update={"step": "5min", "decision_interval": "5min"})
    world = build_world(spec, base, seed=0)
    forecaster = make_forecaster("perfect", world.epoch_surplus_w, world.epoch_s)
    policies = ["static", "pause-when-dirty", "energy-greedy", "energy-greedy-uncovered", "feasibility-aware"]
    online_s = _timed(
        lambda: [Engine(world, forecaster, keep_timeline=False).run(make_policy(p)) for p in policies]
    )
    lookahead_s = _timed(lambda: Engine(world, forecaster, keep_timeline=False).run(make_policy("lookahead")))
    return {
        "global8_steps": float(world.n_steps),
        "global8_year_s": online_s,
        "lookahead_global8_year_s": lookahead_s,
    }


def oracle_paper() -> dict[str, float]:
    """Time for the paper scenario's oracle (and the online runs whose deadlines it answers)."""
    spec, base = load_scenario("paper")
    world = build_world(spec, base, seed=0)
    total = _timed(
        lambda: run_seed(spec, world, ["static", "oracle"], 0, forecast="perfect", keep_timeline=False)
    )
    static_only = _timed(
        lambda: run_seed(spec, world, ["static"], 0, forecast="perfect", keep_timeline=False)
    )
    return {"oracle_paper_s": total, "oracle_paper_excl_static_s": max(0.0, total - static_only)}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-year", action="store_true", help="skip the year-long global-8 runs")
    args = parser.parse_args(argv)
    figures: dict[str, float] = {}
    figures |= site_steps_per_s(args.repeat)
    figures |= oracle_paper()
    if not args.skip_year:
        figures |= global8_year()
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    figures["target_site_steps_per_s"] = 1_500_000.0
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:32s} {value:,.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
