"""Run several policies over several seeds of a scenario and compare them with the oracle.

``ratio_to_oracle`` compares like with like: a run's non-renewable energy divided by the least
non-renewable energy of any plan that does the SAME work on every job by the SAME completion times (the
oracle's exact per-job dynamic programme, core/oracle.py, asked at each run's own deadlines). Where jobs
share sites (``world.isolated`` False) that sum ignores that they share surplus and slots: a valid but
loose lower bound. With ``coupled_bound`` the denominator is the larger of it and the LP relaxation of
the coupled problem (core/coupled_bound.py), also a valid lower bound and much tighter, at the price of
minutes per seed on a year of global-8. The denominator is reported as ``oracle_bound_kwh``. The
``oracle`` row itself is the optimal plan for finishing every job at most ``oracle_slack`` after it
would finish running non-stop, each job alone, replayed through the same engine.

A data-parallel job (made of parts) is solved by the oracle as one unit, every part together: the oracle
is then the best all-or-nothing plan, which a policy that moves part of a job may beat (a ratio below 1).
The coupled bound counts one GPU slot per job, so it refuses such jobs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from greenferry.core.coupled_bound import BoundJob, CoupledProblem, coupled_lower_bound
from greenferry.core.forecast import ForecastKind, make_forecaster
from greenferry.core.lookahead import MigrationCosts
from greenferry.core.oracle import IN_FLIGHT, MIGRATE, PAUSE, JobProblem, OracleSolution, solve
from greenferry.core.policies import ONLINE_POLICIES, PARTIAL_POLICIES
from greenferry.core.policy import ClusterView, Decision, make_policy, policy_names
from greenferry.core.units import parse_duration_s
from greenferry.errors import ConfigError
from greenferry.sim.engine import J_PER_KWH, Engine, JobModel, World
from greenferry.sim.results import METRIC_NAMES, Comparison, RunResult
from greenferry.sim.scenario import ScenarioSpec, build_world, provided_forecast_w, window_lengths_s

FloatArray = npt.NDArray[np.float64]
ORACLE = "oracle"
logger = logging.getLogger(__name__)
Progress = Callable[[str], None]


def all_policy_names() -> list[str]:
    """Online policies plus the oracle, in report order."""
    return [*policy_names(), ORACLE]


def default_policy_names(spec: ScenarioSpec) -> list[str]:
    """What ``compare`` runs when no policy is named: every policy, but the partial-move variants only
    where the scenario has data-parallel jobs (elsewhere their runs are their all-or-nothing versions')."""
    with_parts = spec.jobs.parts is not None
    return [name for name in all_policy_names() if with_parts or name not in PARTIAL_POLICIES]


def job_problem(world: World, job: JobModel, n_steps: int) -> JobProblem:
    """The oracle's cost arrays for one job over ``n_steps`` from its arrival, matching the engine's model."""
    dt = world.step_s
    costs = world.job_migration_costs(job)
    max_m = int(costs.epochs.max())
    a = job.arrival_step
    span = n_steps + max_m
    surplus = np.zeros((len(world.sites), span))
    avail = min(span, world.n_steps - a)
    surplus[:, :avail] = world.surplus_w[:, a : a + avail]
    run_cost = np.maximum(job.power_w - surplus[:, :n_steps], 0.0) * dt
    n_sites = len(world.sites)
    mig = np.full((n_sites, n_sites, n_steps), np.inf)
    for o in range(n_sites):
        for d in range(n_sites):
            m = int(costs.epochs[o, d])
            if o == d or m == 0:
                continue
            p_src = costs.src_energy_j[o, d] / (m * dt)
            p_dst = costs.dst_energy_j[o, d] / (m * dt)
            uncovered = np.maximum(p_src - surplus[o], 0.0) + np.maximum(p_dst - surplus[d], 0.0)
            cum = np.concatenate(([0.0], np.cumsum(uncovered)))
            mig[o, d] = (cum[m : m + n_steps] - cum[:n_steps]) * dt + costs.network_energy_j[o, d]
    return JobProblem(run_cost, costs.epochs, mig, job.home_site, job.work_steps)


def coupled_problem(
    world: World, targets: Sequence[tuple[int, int]], costs: Sequence[MigrationCosts] | None = None
) -> CoupledProblem:
    """The coupled bound's input for ``world`` with per-job (work steps, deadline steps from arrival) targets.

    ``costs`` are the jobs' ``world.job_migration_costs`` when already computed.
    """
    costs = costs if costs is not None else [world.job_migration_costs(job) for job in world.jobs]
    jobs = tuple(
        BoundJob(
            arrival_step=job.arrival_step,
            power_w=job.power_w,
            home_site=job.home_site,
            work_steps=work,
            deadline_steps=deadline,
            migration_steps=cost.epochs,
            src_energy_j=cost.src_energy_j,
            dst_energy_j=cost.dst_energy_j,
            network_energy_j=cost.network_energy_j,
        )
        for job, cost, (work, deadline) in zip(world.jobs, costs, targets, strict=True)
    )
    slots = np.array([site.gpu_slots for site in world.sites], dtype=np.int64)
    return CoupledProblem(world.surplus_w, slots, world.step_s, jobs)


def _shared_bound_j(
    world: World,
    targets: Sequence[tuple[int, int]],
    per_job_j: Sequence[float],
    costs: Sequence[MigrationCosts],
) -> float:
    """max(sum of per-job bounds, coupled LP bound) for a shared world (J); the first if the LP fails."""
    dp_j = float(sum(per_job_j))
    bound = coupled_lower_bound(coupled_problem(world, targets, costs), separate_bounds_j=per_job_j)
    if not math.isfinite(bound.value_j):
        logger.warning("coupled bound not solved (%s); using the per-job bound", bound.status)
        return dp_j
    return max(dp_j, bound.value_j)


@dataclass
class PlanPolicy:
    """Replays precomputed per-job plans step by step (used to run the oracle's plans in the engine)."""

    plans: dict[int, tuple[int, OracleSolution]]  # job_id -> (arrival step, solution)
    world: World
    name: str = ORACLE

    def decide(self, now_s: float, view: ClusterView) -> dict[int, Decision]:
        """The planned action for each job at this step."""
        step = round((now_s - self.world.start_s) / self.world.step_s)
        out: dict[int, Decision] = {}
        for job in view.jobs:
            arrival, sol = self.plans[job.job_id]
            rel = step - arrival
            if rel >= sol.plan_actions.size:
                out[job.job_id] = Decision.run()
                continue
            action = int(sol.plan_actions[rel])
            if action == MIGRATE:
                out[job.job_id] = Decision.migrate(int(sol.plan_sites[rel]))
            elif action in (PAUSE, IN_FLIGHT):
                out[job.job_id] = Decision.pause()
            else:
                out[job.job_id] = Decision.run()
        return out


def _aggregate(runs: Sequence[RunResult]) -> dict[str, float]:
    keys = list(dict.fromkeys([*METRIC_NAMES, *runs[0].metrics]))
    out: dict[str, float] = {}
    for key in keys:
        values = np.array([run.metrics.get(key, math.nan) for run in runs], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[key] = float(finite.mean()) if finite.size else (float(values[0]) if values.size else math.nan)
        if len(runs) > 1:
            out[f"{key}_std"] = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
    return out


def _ratio(policy_kwh: float, oracle_kwh: float) -> float:
    if oracle_kwh > 1e-9:
        return policy_kwh / oracle_kwh
    return 1.0 if policy_kwh <= 1e-9 else math.inf


def run_seed(
    spec: ScenarioSpec,
    world: World,
    policies: Sequence[str],
    seed: int,
    *,
    forecast: ForecastKind,
    keep_timeline: bool,
    progress: Progress | None = None,
    coupled_bound: bool = False,
) -> list[RunResult]:
    """Run every policy on one seed's world and fill in ``ratio_to_oracle``."""
    forecaster = make_forecaster(
        forecast,
        world.epoch_surplus_w,
        world.epoch_s,
        sigma=spec.forecast.sigma,
        seed=seed,
        provided_w=provided_forecast_w(spec, world, forecast),
    )
    results: list[RunResult] = []
    outcomes: list[list[tuple[int, int, int]]] = []
    for name in policies:
        if name == ORACLE:
            continue
        engine = Engine(world, forecaster, keep_timeline=keep_timeline)
        results.append(engine.run(make_policy(name), seed))
        outcomes.append(engine.job_outcomes())
        if progress:
            progress(f"{name} (seed {seed})")
    slack_steps = round(parse_duration_s(spec.oracle_slack) / world.step_s)
    oracle_targets = []
    for job in world.jobs:
        limit = world.n_steps - job.arrival_step
        deadline = min(job.work_steps + slack_steps, limit)
        oracle_targets.append((min(job.work_steps, deadline), deadline))
    solutions: list[OracleSolution] = []
    for j, job in enumerate(world.jobs):
        deadlines = sorted({run[j][1] for run in outcomes} | {oracle_targets[j][1]})
        problem = job_problem(world, job, max(deadlines))
        work, deadline = oracle_targets[j]
        solutions.append(solve(problem, deadlines, plan_deadline=deadline, plan_work=work))
    if progress:
        progress(f"oracle (seed {seed})")
    network_bound = 0.0
    coupled = coupled_bound and not world.isolated
    costs = [world.job_migration_costs(job) for job in world.jobs] if coupled else []
    for result, run in zip(results, outcomes, strict=True):
        per_job_j = [0.0] * len(world.jobs)
        targets = [(0, 0)] * len(world.jobs)
        for done, deadline, j in run:
            per_job_j[j] = solutions[j].value_j(deadline, done)
            targets[j] = (done, deadline)
        bound_j = _shared_bound_j(world, targets, per_job_j, costs) if coupled else sum(per_job_j)
        result.metrics["ratio_to_oracle"] = _ratio(result.metrics["nonrenewable_kwh"], bound_j / J_PER_KWH)
        result.metrics["oracle_bound_kwh"] = bound_j / J_PER_KWH
        if progress and coupled:
            progress(f"coupled bound for {result.policy} (seed {seed})")
    if ORACLE in policies:
        # The per-job optima are replayed each on sites of its own: exact for isolated worlds, and the
        # lower bound's own plans (not jointly executable) where jobs share sites.
        replay_world = dataclasses.replace(world, epoch_steps=1, isolated=True)
        plans = {job.job_id: (job.arrival_step, sol) for job, sol in zip(world.jobs, solutions, strict=True)}
        engine = Engine(replay_world, forecaster, keep_timeline=keep_timeline)
        oracle_run = engine.run(PlanPolicy(plans, replay_world), seed)
        network_bound = sum(sol.plan_cost_j for sol in solutions) / J_PER_KWH
        oracle_run.metrics["ratio_to_oracle"] = _ratio(oracle_run.metrics["nonrenewable_kwh"], network_bound)
        oracle_run.metrics["oracle_bound_kwh"] = network_bound
        results.append(oracle_run)
    order = {name: i for i, name in enumerate(policies)}
    results.sort(key=lambda r: order[r.policy])
    return results


def compare(
    spec: ScenarioSpec,
    base_dir: object,
    policies: Sequence[str] | None = None,
    seeds: int = 1,
    *,
    forecast: ForecastKind | None = None,
    progress: Progress | None = None,
    coupled_bound: bool = False,
) -> Comparison:
    """Run ``policies`` (default: all, oracle included) over ``seeds`` seeds of a scenario.

    ``coupled_bound``: in worlds where jobs share sites, tighten ``ratio_to_oracle``'s denominator with
    the coupled LP bound (slow: minutes per seed for a year of global-8).
    """
    from pathlib import Path

    names = list(policies) if policies else default_policy_names(spec)
    known = all_policy_names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"unknown policy {', '.join(map(repr, unknown))}; known policies: {', '.join(known)}"
        )
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if coupled_bound and spec.jobs.parts is not None and not spec.jobs.isolated:
        raise ConfigError(
            "--coupled-bound counts one GPU slot per job and cannot bound jobs made of parts (jobs.parts)"
        )
    kind = forecast or spec.forecast.type
    runs: dict[str, list[RunResult]] = {name: [] for name in names}
    windows: dict[str, FloatArray] = {}
    extra: dict[str, object] = {}
    for seed in range(seeds):
        world = build_world(spec, Path(str(base_dir)), seed)
        if seed == 0:
            reference_w = float(np.median([job.power_w for job in world.jobs]))
            windows = window_lengths_s(world, reference_w)
            extra["migration_params"] = world.params.model_copy(update={"job_power_w": reference_w})
        for result in run_seed(
            spec,
            world,
            names,
            seed,
            forecast=kind,
            keep_timeline=seed == 0,
            progress=progress,
            coupled_bound=coupled_bound,
        ):
            runs[result.policy].append(result)
    summary = {name: _aggregate(runs[name]) for name in names}
    return Comparison(
        scenario=spec.name,
        description=spec.description,
        policies=names,
        seeds=list(range(seeds)),
        runs=runs,
        summary=summary,
        window_lengths_s=windows,
        forecast=kind,
        extra=extra
        | {"online_policies": [n for n in names if n in ONLINE_POLICIES or n in PARTIAL_POLICIES]},
    )
