"""Helpers to build tiny simulator worlds and scripted policies for the engine/policy tests."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from greenferry.core.feasibility import MigrationParams
from greenferry.core.forecast import PerfectForecast
from greenferry.core.policy import ClusterView, Decision, JobView, Policy
from greenferry.sim.engine import Engine, JobModel, SiteModel, World
from greenferry.sim.results import RunResult

FloatArray = npt.NDArray[np.float64]

STEP_S = 300.0
# Small fixed overheads so that migrations take a predictable handful of 5-minute steps.
PARAMS = MigrationParams(
    checkpoint_write_s=30.0,
    restore_s=30.0,
    transfer_efficiency=0.9,
    alpha=0.1,
    network_energy_j_per_byte=8e-8,
    idle_power_src_w=60.0,
    idle_power_dst_w=60.0,
)


def t_mig_s(checkpoint_bytes: float, bandwidth_bps: float, params: MigrationParams = PARAMS) -> float:
    """T_mig = T_ckpt + 8*S/(eta*B) + T_restore, written out from DOMAIN.md (not from the library)."""
    return (
        params.checkpoint_write_s
        + 8.0 * checkpoint_bytes / (params.transfer_efficiency * bandwidth_bps)
        + params.restore_s
    )


def mig_steps(
    checkpoint_bytes: float, bandwidth_bps: float, step_s: float = STEP_S, params: MigrationParams = PARAMS
) -> int:
    """Whole steps a migration occupies: ceil(T_mig / step), at least one."""
    return max(1, math.ceil(t_mig_s(checkpoint_bytes, bandwidth_bps, params) / step_s - 1e-9))


def job(
    job_id: int,
    arrival: int,
    work: int,
    home: int,
    *,
    power_w: float = 400.0,
    checkpoint_bytes: float = 1e9,
) -> JobModel:
    """A job model with sensible defaults."""
    return JobModel(
        job_id=job_id,
        arrival_step=arrival,
        work_steps=work,
        power_w=power_w,
        checkpoint_bytes=checkpoint_bytes,
        home_site=home,
    )


def make_world(
    surplus_w: npt.ArrayLike,
    jobs: Sequence[JobModel],
    *,
    step_s: float = STEP_S,
    slots: int | Sequence[int] = 4,
    bandwidth_bps: float | npt.ArrayLike = 10e9,
    params: MigrationParams = PARAMS,
    epoch_steps: int = 1,
    isolated: bool = False,
    carbon_g_per_kwh: float = 300.0,
) -> World:
    """A world from an (S, T) surplus array; a scalar bandwidth links every pair of sites."""
    surplus = np.asarray(surplus_w, dtype=np.float64)
    n_sites, n_steps = surplus.shape
    slot_list = [slots] * n_sites if isinstance(slots, int) else list(slots)
    if np.ndim(bandwidth_bps) == 0:
        bw = np.full((n_sites, n_sites), float(bandwidth_bps))  # type: ignore[arg-type]
    else:
        bw = np.array(bandwidth_bps, dtype=np.float64)
    np.fill_diagonal(bw, 0.0)
    sites = tuple(
        SiteModel(f"s{i}", surplus[i].copy(), np.full(n_steps, carbon_g_per_kwh), slot_list[i])
        for i in range(n_sites)
    )
    return World(
        name="tiny",
        start_s=1_700_000_000.0,
        step_s=step_s,
        n_steps=n_steps,
        sites=sites,
        bandwidth_bps=bw,
        jobs=tuple(jobs),
        params=params,
        epoch_steps=epoch_steps,
        isolated=isolated,
    )


@dataclass
class Scripted:
    """A policy that migrates/pauses jobs at given steps and otherwise runs them.

    ``script[(step, job_id)]`` is the decision at the epoch starting at ``step``; ``asked`` records every
    (step, job_id, site, running) the policy was asked about.
    """

    world: World
    script: Mapping[tuple[int, int], Decision] = field(default_factory=dict)
    default: Callable[[int, JobView], Decision] = field(default=lambda step, job: Decision.run())
    name: str = "scripted"
    asked: list[tuple[int, int, int, bool]] = field(default_factory=list)

    def decide(self, now_s: float, view: ClusterView) -> dict[int, Decision]:
        step = round((now_s - self.world.start_s) / self.world.step_s)
        out: dict[int, Decision] = {}
        for jv in view.jobs:
            self.asked.append((step, jv.job_id, jv.site, jv.running))
            out[jv.job_id] = self.script.get((step, jv.job_id), self.default(step, jv))
        return out


def random_windows_world(
    seed: int,
    *,
    n_steps: int,
    window_steps: tuple[int, int],
    surplus_w: tuple[float, float],
    ckpt_mid_bytes: float,
    arrival_before: int,
    slots: int,
    isolated: bool = False,
    epoch_steps: int = 1,
) -> World:
    """Three sites with random surplus windows, four single-GPU jobs with overlapping lifetimes."""
    rng = np.random.default_rng(seed)
    surplus = np.zeros((3, n_steps))
    for s in range(3):
        t = int(rng.integers(0, 8))
        while t < n_steps:
            length = int(rng.integers(*window_steps))
            surplus[s, t : t + length] = rng.uniform(*surplus_w)
            t += length + int(rng.integers(2, 12))
    jobs = [
        job(
            i,
            int(rng.integers(0, arrival_before)),
            int(rng.integers(8, 40)),
            int(rng.integers(3)),
            power_w=float(rng.choice([280.0, 440.0])),
            checkpoint_bytes=float(rng.choice([1e9, ckpt_mid_bytes, 1e11])),
        )
        for i in range(4)
    ]
    bw = np.array([[0, 1e9, 10e9], [1e9, 0, 2.5e9], [10e9, 2.5e9, 0]])
    return make_world(
        surplus, jobs, bandwidth_bps=bw, isolated=isolated, epoch_steps=epoch_steps, slots=slots
    )


def run(world: World, policy: Policy, *, keep_timeline: bool = True) -> tuple[RunResult, Engine]:
    """Run ``policy`` on ``world`` with a perfect forecast."""
    engine = Engine(world, PerfectForecast(world.epoch_surplus_w), keep_timeline=keep_timeline)
    return engine.run(policy, seed=0), engine


def job_view(
    job_id: int,
    site: int,
    *,
    power_w: float = 400.0,
    running: bool = True,
    checkpoint_bytes: float = 1e9,
    remaining_work_s: float = 86_400.0,
    since_migration_s: float = math.inf,
    params: MigrationParams = PARAMS,
) -> JobView:
    """A job as a policy sees it (params carry the job's power)."""
    return JobView(
        job_id=job_id,
        site=site,
        running=running,
        power_w=power_w,
        checkpoint_bytes=checkpoint_bytes,
        remaining_work_s=remaining_work_s,
        since_migration_s=since_migration_s,
        params=params.model_copy(update={"job_power_w": power_w}),
    )


def cluster_view(
    surplus_w: Sequence[float],
    jobs: Sequence[JobView],
    *,
    forecast_w: npt.ArrayLike | None = None,
    epoch_s: float = 3600.0,
    now_s: float = 0.0,
    bandwidth_bps: float | npt.ArrayLike = 10e9,
    slots: int | Sequence[int] = 4,
    link_busy: npt.ArrayLike | None = None,
    include_job_load: bool = True,
) -> ClusterView:
    """A view whose site load is the running jobs' power and free slots are slots minus hosted jobs.

    ``forecast_w`` is (S, H); when None the forecast must not be read (reading it raises).
    """
    surplus = np.asarray(surplus_w, dtype=np.float64)
    n = surplus.size
    load = np.zeros(n)
    hosted = np.zeros(n, dtype=np.int64)
    for jv in jobs:
        hosted[jv.site] += 1
        if jv.running and include_job_load:
            load[jv.site] += jv.power_w
    slot_arr = np.full(n, slots, dtype=np.int64) if isinstance(slots, int) else np.array(slots, np.int64)
    if np.ndim(bandwidth_bps) == 0:
        bw = np.full((n, n), float(bandwidth_bps))  # type: ignore[arg-type]
    else:
        bw = np.array(bandwidth_bps, dtype=np.float64)
    np.fill_diagonal(bw, 0.0)
    busy = np.zeros((n, n), dtype=np.bool_) if link_busy is None else np.array(link_busy, dtype=np.bool_)

    if forecast_w is None:

        def forecast() -> FloatArray:
            raise AssertionError("this policy must not read the forecast")

    else:
        fc = np.array(forecast_w, dtype=np.float64)

        def forecast() -> FloatArray:
            return fc.copy()

    return ClusterView(
        now_s=now_s,
        epoch_s=epoch_s,
        surplus_w=surplus,
        forecast_fn=forecast,
        site_load_w=load,
        free_slots=slot_arr - hosted,
        bandwidth_bps=bw,
        link_busy=busy,
        jobs=list(jobs),
    )


# --- the development data set, and a tiny two-site scenario ------------------------------------------------

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def shared_file(*parts: str) -> Path:
    """A file of the development data set next to the repository; skipped if absent (failed in CI)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        message = f"development data set file not present: {path}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


TINY_CSV = "time,power\n" + "".join(f"2024-01-01T{h:02d}:00:00Z,{(h % 5) * 300}\n" for h in range(12))


def tiny_scenario(
    tmp_path: Path,
    name: str,
    *,
    decision_interval: str = "30min",
    gpu_slots: int = 4,
    jobs: int = 2,
    spacing: str = "2h",
    description: str = "two sites, one CSV trace",
) -> Path:
    """Write a 12 h two-site scenario (one CSV, the second site 3 h later) and its trace; return its path."""
    (tmp_path / "gen.csv").write_text(TINY_CSV, encoding="utf-8")
    site = """
[[sites]]
name = "{site}"
gpu_slots = {slots}
[[sites.sources]]
type = "csv"
path = "gen.csv"
time_column = "time"
value_column = "power"
unit = "W"
"""
    text = f"""\
name = "{name}"
description = "{description}"
start = 2024-01-01T00:00:00Z
duration = "12h"
step = "15min"
decision_interval = "{decision_interval}"
{site.format(site="east", slots=gpu_slots)}{site.format(site="west", slots=gpu_slots)}shift = "3h"

[jobs]
count = {jobs}
spacing = "{spacing}"
work = ["1h", "3h"]
checkpoint = ["1GB", "10GB"]
"""
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path
