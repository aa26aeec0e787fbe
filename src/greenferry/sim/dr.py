"""Demand response in the simulator: the daemon's planner (core.dr_plan) answering events on real traces.

Events: every day, at each site, the grid asks for a reduction over the ``event_hours`` when its carbon
intensity (the shipped Electricity Maps traces) peaks: the hours when a grid most needs load to go down. The
request is a SIMPLE level (``level``) in force over that span, exactly as an OpenADR event would carry it.

For each event the planner sees the jobs the policy run placed at that site when the event starts (from the
run's timeline), each with its hardware profile (GPU training, idle and host power, the settable cap range,
relative throughput: datacenter and Jetson-class profiles alike), and what a move would take (the world's
bandwidth to every other site with surplus to cover the job and a free slot then, through the same migration
model the policies use). It answers with the same :func:`~greenferry.core.dr_plan.plan_dr` the daemon runs.

The overlay reports, per rule set (caps only, pause only, the full planner): events that found jobs, opt-ins,
energy asked and delivered (kWh) and the training progress it cost (work-hours: relative throughput times
hours). It is an overlay: the run's own schedule is not changed by what the events cost, so the progress
cost is reported next to the run's metrics rather than taken out of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from greenferry.core.dr import DrPayload
from greenferry.core.dr_plan import DrRules, JobLoad, plan_dr, target_for
from greenferry.core.feasibility import migration_time_s
from greenferry.hardware_profiles import get_profile
from greenferry.sim.engine import World
from greenferry.sim.results import JobState, RunResult

__all__ = ["RULE_SETS", "DrEventSpec", "DrOverlay", "daily_peak_events", "dr_overlay"]

J_PER_KWH = 3.6e6

RULE_SETS: Mapping[str, DrRules] = {
    "caps-only": DrRules(allow_pause=False, allow_migrate=False),
    "pause-only": DrRules(allow_power_cap=False, allow_migrate=False),
    "planner": DrRules(),
}


@dataclass(frozen=True, slots=True)
class DrEventSpec:
    """One event at one site: steps [start_step, end_step) at a SIMPLE level."""

    site: int
    start_step: int
    end_step: int
    level: int


@dataclass(frozen=True, slots=True)
class DrOverlay:
    """What one rule set delivered over a run's events."""

    rules: str
    events: int
    events_with_jobs: int
    opted_in: int
    requested_kwh: float
    delivered_kwh: float
    cost_work_h: float
    actions: Mapping[str, int]

    @property
    def delivered_share(self) -> float:
        """Delivered over requested energy, over the events that found jobs."""
        return self.delivered_kwh / self.requested_kwh if self.requested_kwh > 0 else math.nan

    @property
    def cost_work_h_per_kwh(self) -> float:
        """Training progress given up per kWh delivered."""
        return self.cost_work_h / self.delivered_kwh if self.delivered_kwh > 0 else math.nan

    def to_json(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "rules": self.rules,
            "events": self.events,
            "events_with_jobs": self.events_with_jobs,
            "opted_in": self.opted_in,
            "requested_kwh": round(self.requested_kwh, 3),
            "delivered_kwh": round(self.delivered_kwh, 3),
            "delivered_share": None if math.isnan(self.delivered_share) else round(self.delivered_share, 4),
            "cost_work_h": round(self.cost_work_h, 3),
            "cost_work_h_per_kwh": None
            if math.isnan(self.cost_work_h_per_kwh)
            else round(self.cost_work_h_per_kwh, 4),
            "actions": dict(self.actions),
        }


def daily_peak_events(world: World, *, event_hours: float = 2.0, level: int = 2) -> list[DrEventSpec]:
    """One event per site and day over the contiguous ``event_hours`` of highest mean carbon intensity."""
    if not 0 <= level <= 3:
        raise ValueError(f"level must be 0..3, got {level}")
    if not 0 < event_hours <= 24:
        raise ValueError(f"event_hours must be in (0, 24], got {event_hours}")
    steps_per_day = round(86400.0 / world.step_s)
    width = max(1, round(event_hours * 3600.0 / world.step_s))
    events: list[DrEventSpec] = []
    for site_index, site in enumerate(world.sites):
        carbon = np.asarray(site.carbon_g_per_kwh, dtype=np.float64)
        for day_start in range(0, world.n_steps - width + 1, steps_per_day):
            day = carbon[day_start : min(day_start + steps_per_day, world.n_steps)]
            if len(day) < width or not np.all(np.isfinite(day)):
                continue
            sums = np.convolve(day, np.ones(width), mode="valid")
            start = day_start + int(np.argmax(sums))
            events.append(DrEventSpec(site_index, start, start + width, level))
    return events


def dr_overlay(
    world: World,
    result: RunResult,
    events: Sequence[DrEventSpec],
    rule_sets: Mapping[str, DrRules] = RULE_SETS,
) -> list[DrOverlay]:
    """The planner's answer to ``events`` at the jobs ``result`` placed, under each rule set."""
    overlays = []
    for name, rules in rule_sets.items():
        counts: dict[str, int] = {"cap": 0, "pause": 0, "migrate": 0}
        with_jobs = opted = 0
        requested_j = delivered_j = cost_work_s = 0.0
        for event in events:
            loads = _loads_at(world, result, event)
            if not loads:
                continue
            with_jobs += 1
            duration_s = (event.end_step - event.start_step) * world.step_s
            flexible = sum(max(j.stop_shed_w, j.max_cap_shed_w) for j in loads)
            target = target_for(
                [DrPayload("SIMPLE", (float(event.level),))],
                baseline_w=0.0,
                flexible_w=flexible,
                max_power_w=0.0,
                rules=rules,
            )
            plan = plan_dr(target, duration_s, loads, rules)
            requested_j += plan.requested_shed_w * duration_s
            if plan.opt_in:
                opted += 1
                delivered_j += plan.planned_shed_w * duration_s
                cost_work_s += plan.cost_work_s
                for action in plan.actions:
                    if action.mode in counts:
                        counts[action.mode] += 1
        overlays.append(
            DrOverlay(
                name,
                len(events),
                with_jobs,
                opted,
                requested_j / J_PER_KWH,
                delivered_j / J_PER_KWH,
                cost_work_s / 3600.0,
                counts,
            )
        )
    return overlays


def _loads_at(world: World, result: RunResult, event: DrEventSpec) -> list[JobLoad]:
    step = event.start_step
    duration_s = (event.end_step - event.start_step) * world.step_s
    loads = []
    occupancy = np.zeros(len(world.sites), dtype=np.int64)
    running = result.job_state[:, step] == JobState.RUNNING
    for j in np.nonzero(running)[0]:
        occupancy[result.job_site[j, step]] += 1
    for j in np.nonzero(running & (result.job_site[:, step] == event.site))[0]:
        job = world.jobs[int(j)]
        profile = get_profile(job.profile) if job.profile else get_profile("a100-80gb")
        gpus = job.slots
        option = _move(world, int(j), event.site, step, duration_s, occupancy)
        loads.append(
            JobLoad(
                job_id=str(job.job_id),
                gpu_indices=tuple(range(gpus)),
                gpu_power_w=profile.train_power_w,
                idle_power_w=profile.idle_power_w,
                host_power_w=max(0.0, job.power_w - gpus * profile.train_power_w),
                limit_min_w=profile.power_limit_min_w,
                limit_max_w=profile.power_limit_max_w,
                rate=profile.relative_throughput * gpus,
                stop_lead_s=world.params.checkpoint_write_s,
                restart_s=world.params.restore_s,
                migration_s=None if option is None else option[0],
                migration_dst=None if option is None else option[1],
            )
        )
    return loads


def _move(
    world: World,
    job_index: int,
    site: int,
    step: int,
    duration_s: float,
    occupancy: npt.NDArray[np.int64],
) -> tuple[float, str] | None:
    """The quickest feasible move of a job away from ``site`` at ``step``: (seconds, destination)."""
    job = world.jobs[job_index]
    if not job.moves_whole:
        return None
    best: tuple[float, str] | None = None
    for dst, other in enumerate(world.sites):
        bandwidth = float(world.bandwidth_bps[site, dst])
        if dst == site or bandwidth <= 0:
            continue
        if other.surplus_w[step] < job.power_w or occupancy[dst] + job.slots > other.gpu_slots:
            continue
        seconds = float(migration_time_s(job.checkpoint_bytes, bandwidth, world.params))
        if seconds <= duration_s and (best is None or seconds < best[0]):
            best = (seconds, other.name)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m greenferry.sim.dr``: the overlay for a scenario's policy runs, as a table or JSON."""
    import argparse
    import json

    from greenferry.sim.runner import compare
    from greenferry.sim.scenario import build_world, load_scenario

    parser = argparse.ArgumentParser(prog="python -m greenferry.sim.dr", description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="global-8", help="built-in name or TOML path")
    parser.add_argument("--policies", default="static,lookahead", help="comma-separated policy names")
    parser.add_argument(
        "--level", type=int, default=2, choices=range(4), help="SIMPLE level of the events (0..3)"
    )
    parser.add_argument("--hours", type=float, default=2.0, help="length of each daily event (h)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    spec, base = load_scenario(args.scenario)
    policies = [p for p in args.policies.split(",") if p]
    comparison = compare(spec, base, policies, seeds=1)
    world = build_world(spec, base, 0)
    events = daily_peak_events(world, event_hours=args.hours, level=args.level)
    out = {
        "scenario": args.scenario,
        "level": args.level,
        "event_hours": args.hours,
        "events": len(events),
        "policies": {
            policy: [o.to_json() for o in dr_overlay(world, runs[0], events)]
            for policy, runs in comparison.runs.items()
        },
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{args.scenario}: {len(events)} events, SIMPLE level {args.level}, {args.hours:g} h each")
    print(
        f"{'policy':<20} {'rules':<11} {'with jobs':>9} {'opt-in':>6} {'asked kWh':>10} "
        f"{'delivered':>10} {'cost work-h':>11} {'caps/pauses/moves':>18}"
    )
    for policy, overlays in out["policies"].items():
        for o in overlays:
            a = o["actions"]
            print(
                f"{policy:<20} {o['rules']:<11} {o['events_with_jobs']:>9} {o['opted_in']:>6} "
                f"{o['requested_kwh']:>10.1f} {o['delivered_kwh']:>10.1f} {o['cost_work_h']:>11.1f} "
                f"{a['cap']:>6}/{a['pause']}/{a['migrate']}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
