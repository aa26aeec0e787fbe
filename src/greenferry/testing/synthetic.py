"""A small, realistic synthetic :class:`~greenferry.sim.results.Comparison` for tests and docs.

Three sites with day/night renewable surplus (two solar sites in different time zones, one solar site with
gusty night wind), two training jobs, and three toy policies (``static``, ``energy-greedy``, ``oracle``) on
two seeds. The policies here are deliberately simple stand-ins that produce plausible arrays, migrations
(including failed ones that chase short wind gusts) and metrics; they are not the real policies in
``greenferry.core``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from greenferry.sim.results import (
    METRIC_NAMES,
    Comparison,
    FloatArray,
    IntArray,
    JobState,
    MigrationRecord,
    RunResult,
)

__all__ = ["SYNTHETIC_POLICIES", "synthetic_comparison"]

BoolArray = npt.NDArray[np.bool_]

SYNTHETIC_POLICIES: tuple[str, ...] = ("static", "energy-greedy", "oracle")

_START_S = 1_717_372_800.0  # 2024-06-03T00:00:00Z, a Monday
_CO2_KG_PER_KWH = 0.35  # grid carbon intensity used for non-renewable energy
_MIGRATION_POWER_W = 150.0  # host + NIC power while a checkpoint is in flight
# After pausing this long a policy runs on grid power for at least _MIN_GRID_RUN_S (progress guarantee).
_MAX_PAUSE_S = {"energy-greedy": 3 * 3600.0, "oracle": 4 * 3600.0}
_MIN_GRID_RUN_S = 2 * 3600.0


@dataclass(frozen=True)
class _Site:
    name: str
    peak_solar_w: float
    solar_noon_utc_h: float
    night_wind: bool


@dataclass(frozen=True)
class _Job:
    arrival_s: float  # offset from the start of the trace
    gpus: int
    power_w: float
    work_s: float  # running time needed to finish
    checkpoint_bytes: float
    home_site: int


_SITES = (
    _Site("lisbon-pv", peak_solar_w=9_000.0, solar_noon_utc_h=13.5, night_wind=False),
    _Site("athens-pv", peak_solar_w=7_000.0, solar_noon_utc_h=10.5, night_wind=False),
    _Site("denver-pv-wind", peak_solar_w=8_000.0, solar_noon_utc_h=19.0, night_wind=True),
)
_JOBS = (
    _Job(0.0, gpus=8, power_w=3_200.0, work_s=20 * 3600.0, checkpoint_bytes=40e9, home_site=0),
    _Job(8 * 3600.0, gpus=4, power_w=1_800.0, work_s=16 * 3600.0, checkpoint_bytes=12e9, home_site=1),
)
# Link bandwidth between sites (bit/s); the transatlantic links to the wind site are the slow ones.
_BANDWIDTH_BPS = np.array(
    [
        [0.0, 1e9, 200e6],
        [1e9, 0.0, 200e6],
        [200e6, 200e6, 0.0],
    ]
)


def synthetic_comparison(
    *,
    seeds: Sequence[int] = (0, 1),
    days: float = 3.0,
    step_s: float = 300.0,
    scenario: str = "synthetic-3site",
    description: str = "Three micro-datacenters (two solar, one solar + wind), two training jobs.",
) -> Comparison:
    """Build a deterministic synthetic comparison of three toy policies.

    Args:
        seeds: Seeds to run; each seed jitters job arrival times and link bandwidth.
        days: Length of the trace.
        step_s: Simulation step.
        scenario: Scenario name stored in the comparison.
        description: Scenario description stored in the comparison.

    Returns:
        A :class:`Comparison` with ``summary`` means (and ``_std`` keys when more than one seed).
    """
    n_steps = round(days * 86_400.0 / step_s)
    times_s = _START_S + step_s * np.arange(n_steps, dtype=np.float64)
    surplus_w = _surplus_w(times_s, step_s)

    runs: dict[str, list[RunResult]] = {p: [] for p in SYNTHETIC_POLICIES}
    for policy in SYNTHETIC_POLICIES:
        for seed in seeds:
            runs[policy].append(_simulate(policy, int(seed), times_s, step_s, surplus_w))

    for seed_index in range(len(seeds)):
        oracle_kwh = runs["oracle"][seed_index].metrics["nonrenewable_kwh"]
        for policy in SYNTHETIC_POLICIES:
            metrics = runs[policy][seed_index].metrics
            metrics["ratio_to_oracle"] = metrics["nonrenewable_kwh"] / oracle_kwh

    summary: dict[str, dict[str, float]] = {}
    for policy in SYNTHETIC_POLICIES:
        stats: dict[str, float] = {}
        for name in METRIC_NAMES:
            values = np.array([r.metrics[name] for r in runs[policy]])
            stats[name] = float(values.mean())
            if len(seeds) > 1:
                stats[f"{name}_std"] = float(values.std(ddof=1))
        summary[policy] = stats

    min_job_power_w = min(j.power_w for j in _JOBS)
    windows = {
        site.name: _window_lengths_s(surplus_w[i] >= min_job_power_w, step_s) for i, site in enumerate(_SITES)
    }
    return Comparison(
        scenario=scenario,
        description=description,
        policies=list(SYNTHETIC_POLICIES),
        seeds=[int(s) for s in seeds],
        runs=runs,
        summary=summary,
        window_lengths_s=windows,
        forecast="perfect",
        extra={"command": f"greenferry simulate --scenario {scenario} --seeds {len(seeds)}"},
    )


def _surplus_w(times_s: FloatArray, step_s: float) -> FloatArray:
    """Renewable surplus per site: clear-sky solar with daily cloudiness, plus night wind gusts."""
    rng = np.random.default_rng(20240603)  # the trace is the same for every seed
    hours_utc = ((times_s - _START_S) / 3600.0) % 24.0
    day_index = ((times_s - _START_S) // 86_400.0).astype(np.int64)
    n_days = int(day_index[-1]) + 1
    surplus = np.zeros((len(_SITES), len(times_s)))
    for i, site in enumerate(_SITES):
        local_h = (hours_utc - site.solar_noon_utc_h + 12.0) % 24.0  # 12.0 == solar noon
        clear_sky = np.clip(np.sin(np.pi * (local_h - 5.5) / 13.0), 0.0, None) ** 1.3
        cloudiness = rng.uniform(0.75, 1.0, n_days)[day_index]
        flicker = 1.0 + 0.06 * rng.standard_normal(len(times_s))
        solar_w = site.peak_solar_w * clear_sky * cloudiness * flicker
        local_load_w = 600.0  # the site's own base load comes first
        surplus[i] = np.clip(solar_w - local_load_w, 0.0, None)
        if site.night_wind:
            surplus[i] += _wind_gusts_w(rng, hours_utc, step_s, site.solar_noon_utc_h)
    return surplus


def _wind_gusts_w(
    rng: np.random.Generator, hours_utc: FloatArray, step_s: float, solar_noon_utc_h: float
) -> FloatArray:
    """Short night-time wind gusts: 15 min to 2 h bursts of 3.5-5 kW, about two per night."""
    wind = np.zeros(len(hours_utc))
    local_h = (hours_utc - solar_noon_utc_h + 12.0) % 24.0
    night = (local_h < 5.0) | (local_h > 20.0)
    step = 0
    while step < len(wind):
        if night[step] and rng.random() < 2.0 / (9.0 * 3600.0 / step_s):
            length = max(3, round(rng.uniform(0.25, 2.0) * 3600.0 / step_s))
            wind[step : step + length] = rng.uniform(3_500.0, 5_000.0)
            step += length
        step += 1
    return wind


def _window_lengths_s(green: BoolArray, step_s: float) -> FloatArray:
    """Lengths (s) of the maximal runs of True in ``green``."""
    padded = np.concatenate(([False], green, [False])).astype(np.int8)
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return ((ends - starts) * step_s).astype(np.float64)


def _remaining_window_s(green: BoolArray, step: int, step_s: float) -> float:
    """How long the window open at ``step`` stays open (0 when closed)."""
    closed = np.flatnonzero(~green[step:])
    run = len(green) - step if len(closed) == 0 else int(closed[0])
    return run * step_s


def _simulate(policy: str, seed: int, times_s: FloatArray, step_s: float, surplus_w: FloatArray) -> RunResult:
    """Run one toy policy over the trace and derive its arrays, migrations and metrics."""
    rng = np.random.default_rng(1000 + seed)
    n_sites, n_steps = surplus_w.shape
    n_jobs = len(_JOBS)
    arrival_step = [
        round((job.arrival_s + rng.uniform(0.0, 3.0) * 3600.0 * (j > 0)) / step_s)
        for j, job in enumerate(_JOBS)
    ]
    bandwidth_bps = _BANDWIDTH_BPS * rng.uniform(0.8, 1.2)

    job_site: IntArray = np.full((n_jobs, n_steps), -1, dtype=np.int64)
    job_state: IntArray = np.full((n_jobs, n_steps), int(JobState.ABSENT), dtype=np.int64)
    site_load_w = np.zeros((n_sites, n_steps))
    migrations: list[MigrationRecord] = []
    done_s = [0.0] * n_jobs
    site = [job.home_site for job in _JOBS]
    paused_s = [0.0] * n_jobs
    migrating_until = [-1] * n_jobs
    grid_run_until = [-1] * n_jobs

    for t in range(n_steps):
        for j, job in enumerate(_JOBS):
            if t < arrival_step[j] or done_s[j] >= job.work_s:
                continue
            if t < migrating_until[j]:
                job_site[j, t], job_state[j, t] = site[j], JobState.MIGRATING
                site_load_w[site[j], t] += _MIGRATION_POWER_W
                continue
            available_w = surplus_w[:, t] - site_load_w[:, t]
            state = JobState.RUNNING
            if policy != "static" and available_w[site[j]] < job.power_w:
                best = int(np.argmax(available_w))
                green = surplus_w[best] - site_load_w[best] >= job.power_w
                window_s = _remaining_window_s(green, t, step_s)
                duration_s = (
                    job.checkpoint_bytes * 8.0 / bandwidth_bps[site[j], best] if best != site[j] else 0
                )
                worth_it = window_s >= duration_s + 1800.0 if policy == "oracle" else True
                if available_w[best] >= job.power_w and best != site[j] and worth_it:
                    end_s = float(times_s[t]) + duration_s
                    migrations.append(
                        MigrationRecord(
                            job_id=j,
                            src_site=_SITES[site[j]].name,
                            dst_site=_SITES[best].name,
                            start_s=float(times_s[t]),
                            end_s=end_s,
                            checkpoint_bytes=job.checkpoint_bytes,
                            bandwidth_bps=float(bandwidth_bps[site[j], best]),
                            window_s=window_s,
                            failed=duration_s > window_s,
                            energy_j=_MIGRATION_POWER_W * duration_s,
                            uncovered_landing=duration_s > window_s,
                        )
                    )
                    site[j] = best
                    migrating_until[j] = t + math.ceil(duration_s / step_s)
                    job_site[j, t], job_state[j, t] = best, JobState.MIGRATING
                    site_load_w[best, t] += _MIGRATION_POWER_W
                    continue
                if t < grid_run_until[j]:
                    pass
                elif paused_s[j] < _MAX_PAUSE_S[policy]:
                    state = JobState.PAUSED
                else:
                    grid_run_until[j] = t + round(_MIN_GRID_RUN_S / step_s)
            job_site[j, t], job_state[j, t] = site[j], state
            if state == JobState.RUNNING:
                site_load_w[site[j], t] += job.power_w
                done_s[j] += step_s
                paused_s[j] = 0.0
            else:
                paused_s[j] += step_s

    metrics = _metrics(step_s, surplus_w, site_load_w, job_state, migrations, arrival_step=arrival_step)
    return RunResult(
        policy=policy,
        seed=seed,
        metrics=metrics,
        times_s=times_s,
        step_s=step_s,
        site_names=[s.name for s in _SITES],
        surplus_w=surplus_w,
        site_load_w=site_load_w,
        job_site=job_site,
        job_state=job_state,
        migrations=migrations,
    )


def _metrics(
    step_s: float,
    surplus_w: FloatArray,
    site_load_w: FloatArray,
    job_state: IntArray,
    migrations: list[MigrationRecord],
    *,
    arrival_step: list[int],
) -> dict[str, float]:
    """The METRIC_NAMES values of one run (``ratio_to_oracle`` is filled in by the caller)."""
    j_per_kwh = 3.6e6
    nonrenewable_kwh = float(np.clip(site_load_w - surplus_w, 0.0, None).sum() * step_s / j_per_kwh)
    renewable_kwh = float(np.minimum(site_load_w, surplus_w).sum() * step_s / j_per_kwh)
    running = job_state == JobState.RUNNING
    idle = (job_state == JobState.PAUSED) | (job_state == JobState.MIGRATING)
    gpus = np.array([job.gpus for job in _JOBS], dtype=np.float64)

    jct_h = []
    for j in range(job_state.shape[0]):
        present = np.flatnonzero(job_state[j] != JobState.ABSENT)
        last = int(present[-1]) + 1 if len(present) else arrival_step[j]
        jct_h.append((last - arrival_step[j]) * step_s / 3600.0)

    steps_per_hour = max(1, round(3600.0 / step_s))
    progress = running.sum(axis=0).astype(np.float64)
    n_hours = len(progress) // steps_per_hour
    hourly = progress[: n_hours * steps_per_hour].reshape(n_hours, steps_per_hour).sum(axis=1)
    active = hourly[: int(np.flatnonzero(hourly)[-1]) + 1] if hourly.any() else hourly
    progress_cv = float(active.std() / active.mean()) if active.size and active.mean() > 0 else math.nan

    return {
        "nonrenewable_kwh": nonrenewable_kwh,
        "renewable_kwh": renewable_kwh,
        "migration_kwh": sum(m.energy_j for m in migrations) / j_per_kwh,
        "co2_kg": nonrenewable_kwh * _CO2_KG_PER_KWH,
        "migrations": float(len(migrations)),
        "failed_migrations": float(sum(m.failed for m in migrations)),
        "uncovered_landings": float(sum(m.uncovered_landing for m in migrations)),
        "downtime_s": float(idle.sum() * step_s),
        "work_done_gpu_h": float((running.sum(axis=1) * gpus).sum() * step_s / 3600.0),
        "mean_jct_h": float(np.mean(jct_h)),
        "p95_jct_h": float(np.percentile(jct_h, 95)),
        "progress_cv": progress_cv,
        "ratio_to_oracle": math.nan,
    }
