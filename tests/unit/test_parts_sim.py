"""Jobs made of parts in the engine and policies: partial moves, pinned parts, work and energy conserved."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from worlds import (
    PARAMS,
    STEP_S,
    Scripted,
    cluster_view,
    job,
    make_world,
    mig_steps,
    random_windows_world,
    run,
    tiny_scenario,
)

from greenferry.core.policies import PARTIAL_POLICIES
from greenferry.core.policy import Action, ClusterView, Decision, JobView, PartsView, Policy, make_policy
from greenferry.errors import ConfigError
from greenferry.sim.engine import JobModel, PartsModel, World
from greenferry.sim.results import JobState, RunResult
from greenferry.sim.runner import compare, default_policy_names
from greenferry.sim.scenario import load_scenario

J_PER_KWH = 3.6e6
GB = 1e9
PART_W = 400.0
ALL_OR_NOTHING = ["static", "pause-when-dirty", "energy-greedy", "feasibility-aware", "lookahead"]
EVERY_POLICY = [*ALL_OR_NOTHING, *PARTIAL_POLICIES]


def parts_job(
    job_id: int,
    arrival: int,
    work: int,
    home: int,
    sizes: tuple[float, ...],
    pinned: tuple[bool, ...] | None = None,
    *,
    efficiency: float = 0.8,
) -> JobModel:
    """A data-parallel job of ``len(sizes)`` parts of ``PART_W`` each."""
    flags = pinned if pinned is not None else (False,) * len(sizes)
    return JobModel(
        job_id=job_id,
        arrival_step=arrival,
        work_steps=work,
        power_w=PART_W * len(sizes),
        checkpoint_bytes=float(sum(sizes)),
        home_site=home,
        parts=PartsModel(sizes, flags, efficiency),
    )


def window_world(pinned: tuple[bool, ...] = (False,) * 4) -> World:
    """Site 0 dark; site 1 covers the job for 3 h from the first hour; 1 Gbit/s between them.

    The whole job (4 x 40 GB) takes 60 s + 1422 s to move; alpha = 0.1 of a 3 h window allows 1080 s,
    two parts (80 GB, 771 s) fit.
    """
    n_steps = 12 * 12
    surplus = np.zeros((2, n_steps))
    surplus[1, 12 : 12 + 36] = 2000.0
    return make_world(surplus, [parts_job(0, 0, 8 * 12, 0, (40 * GB,) * 4, pinned)], bandwidth_bps=1e9)


def network_kwh(result: RunResult) -> float:
    return sum(PARAMS.network_energy_j_per_byte * m.checkpoint_bytes for m in result.migrations) / J_PER_KWH


# --- partial moves beat all-or-nothing where the whole job cannot move in time ---------------------------


@pytest.mark.parametrize(
    ("whole", "partial", "pinned"),
    [
        ("feasibility-aware", "feasibility-aware-partial", (False,) * 4),
        ("feasibility-aware", "feasibility-aware-partial", (True, False, False, False)),
        ("lookahead", "lookahead-partial", (True, False, False, False)),
    ],
)
def test_partial_moves_beat_all_or_nothing_on_a_constructed_trace(
    whole: str, partial: str, pinned: tuple[bool, ...]
) -> None:
    world = window_world(pinned)
    all_or_nothing, _ = run(world, make_policy(whole))
    split, _ = run(world, make_policy(partial))
    a, b = all_or_nothing.metrics, split.metrics
    assert a["migrations"] == 0.0  # the whole job cannot reach the window in time (or at all)
    assert b["migrations"] >= 1.0
    assert b["nonrenewable_kwh"] < a["nonrenewable_kwh"] - 1.0  # by more than a kWh of 12.8
    assert b["renewable_kwh"] > 2.0
    # Work is conserved: both finish the job's 4 parts x 8 h, the partial run somewhat later.
    for m in (a, b):
        assert m["work_done_gpu_h"] == pytest.approx(4 * 8.0)
        assert m["unfinished_jobs"] == 0.0
    assert b["mean_jct_h"] >= a["mean_jct_h"]
    # The first move is the largest subset the feasibility model allows: two of the four workers.
    first = split.migrations[0]
    assert first.checkpoint_bytes == pytest.approx(80 * GB)
    assert first.src_site == "s0"
    assert first.dst_site == "s1"


def test_lookahead_partial_still_moves_a_job_whole_ahead_of_a_window() -> None:
    # Nothing pinned: lookahead's planner sends the whole job ahead of the window (alpha does not bind
    # it), and its partial version keeps that plan rather than splitting the job.
    world = window_world()
    whole, _ = run(world, make_policy("lookahead"))
    partial, _ = run(world, make_policy("lookahead-partial"))
    assert [m.checkpoint_bytes for m in whole.migrations] == [pytest.approx(160 * GB)]
    assert [m.checkpoint_bytes for m in partial.migrations] == [pytest.approx(160 * GB)]
    assert partial.metrics["nonrenewable_kwh"] == pytest.approx(whole.metrics["nonrenewable_kwh"])


def test_all_or_nothing_is_the_default_and_moves_a_job_that_fits_whole() -> None:
    surplus = np.zeros((2, 100))
    surplus[1, 6:90] = 2000.0  # a 7 h window: 160 GB fits (1482 s <= 2520 s)
    world = make_world(surplus, [parts_job(0, 0, 60, 0, (40 * GB,) * 4)], bandwidth_bps=1e9)
    result, _ = run(world, make_policy("feasibility-aware"))
    assert result.metrics["migrations"] == 1.0
    assert result.migrations[0].checkpoint_bytes == pytest.approx(160 * GB)
    assert make_policy("feasibility-aware").name == "feasibility-aware"
    assert make_policy("lookahead-partial").name == "lookahead-partial"


# --- pinned parts never move --------------------------------------------------------------------------


@dataclass
class Watching:
    """Wraps a policy; records every part's site at every decision and every free-slot count."""

    inner: Policy
    name: str = "watching"
    seen: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)
    free: list[int] = field(default_factory=list)

    def decide(self, now_s: float, view: ClusterView) -> dict[int, Decision]:
        self.free.append(int(view.free_slots.min()))
        for jv in view.jobs:
            if jv.parts is not None:
                self.seen.append((jv.job_id, jv.parts.site.copy(), jv.parts.pinned.copy()))
        return self.inner.decide(now_s, view)


def random_parts_world(seed: int, *, isolated: bool = False) -> World:
    """Three sites with random windows; three data-parallel jobs (two with a pinned part) and a plain one."""
    windows = random_windows_world(
        seed,
        n_steps=160,
        window_steps=(6, 30),
        surplus_w=(500.0, 2500.0),
        ckpt_mid_bytes=3e10,
        arrival_before=20,
        slots=6,
        isolated=isolated,
    )
    rng = np.random.default_rng(seed)
    jobs: list[JobModel] = []
    for i in range(3):
        n = int(rng.integers(2, 5))
        sizes = tuple(float(x) for x in rng.uniform(5 * GB, 120 * GB, n))
        pinned = tuple(k == 0 and i != 1 for k in range(n))
        jobs.append(parts_job(i, int(rng.integers(0, 20)), int(rng.integers(20, 60)), i % 3, sizes, pinned))
    jobs.append(job(3, 5, 30, 1, checkpoint_bytes=2e10))
    return dataclasses.replace(windows, jobs=tuple(jobs))


@pytest.mark.parametrize("policy", PARTIAL_POLICIES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pinned_parts_never_move(policy: str, seed: int) -> None:
    world = random_parts_world(seed)
    watcher = Watching(make_policy(policy))
    result, engine = run(world, watcher)
    assert watcher.seen
    homes = {j.job_id: j.home_site for j in world.jobs}
    for job_id, sites, pinned in watcher.seen:
        assert np.all(sites[pinned] == homes[job_id])
    for j in engine._jobs:  # after the run too
        if j.parts is not None:
            assert np.all(j.parts.site[j.parts.pinned] == j.model.home_site)
    assert min(watcher.free) >= 0
    assert result.metrics["unfinished_jobs"] == 0.0


def test_scripted_moves_of_pinned_or_invalid_parts_are_ignored() -> None:
    bw = np.array([[0, 1e9, 0], [1e9, 0, 1e9], [0, 1e9, 0]])  # sites 0 and 2 are not linked
    world = make_world(
        np.full((3, 40), 5000.0),
        [parts_job(0, 0, 20, 0, (GB, GB, GB), (True, False, False))],
        bandwidth_bps=bw,
        slots=[3, 3, 1],
    )
    script = {
        (1, 0): Decision.migrate(1, (0,)),  # pinned
        (2, 0): Decision.migrate(1, (0, 1)),  # one of them pinned
        (3, 0): Decision.migrate(1),  # the whole job: it has a pinned part
        (4, 0): Decision.migrate(1, (3,)),  # no such part
        (5, 0): Decision.migrate(1, (1, 1)),  # twice the same part
        (6, 0): Decision.migrate(1, ()),  # nothing
        (7, 0): Decision.migrate(2, (1,)),  # no link
        (8, 0): Decision.migrate(0, (1,)),  # where it already is
        (9, 0): Decision.migrate(9, (1,)),  # no such site
        (10, 0): Decision.migrate(1, (-1,)),  # negative index
    }
    result, _ = run(world, Scripted(world, script))
    assert result.metrics["migrations"] == 0.0
    assert result.metrics["mean_jct_h"] == pytest.approx(20 * STEP_S / 3600.0)


def test_a_move_needs_a_slot_per_part_and_parts_must_share_a_site() -> None:
    world = make_world(
        np.full((3, 60), 5000.0),
        [parts_job(0, 0, 40, 0, (GB, GB, GB))],
        bandwidth_bps=10e9,
        slots=[3, 2, 3],
    )
    script = {
        (1, 0): Decision.migrate(1, (0, 1, 2)),  # three parts, two slots: ignored
        (2, 0): Decision.migrate(1, (0, 1)),  # fits
        (6, 0): Decision.migrate(2, (0, 2)),  # parts 0 (at site 1) and 2 (at site 0): ignored
        (7, 0): Decision.migrate(2, (0,)),
    }
    result, _ = run(world, Scripted(world, script))
    assert [(m.src_site, m.dst_site) for m in result.migrations] == [("s0", "s1"), ("s1", "s2")]
    assert result.migrations[0].checkpoint_bytes == pytest.approx(2 * GB)


# --- the progress model ------------------------------------------------------------------------------


def test_parts_that_stay_keep_running_and_a_split_job_runs_at_the_cross_site_efficiency() -> None:
    size, bw, eff = 30 * GB, 1e9, 0.8
    m = mig_steps(2 * size, bw)
    work, depart = 40, 2
    world = make_world(
        np.zeros((2, 200)),
        [parts_job(0, 0, work, 0, (size,) * 4, efficiency=eff)],
        bandwidth_bps=bw,
    )
    result, _ = run(world, Scripted(world, {(depart, 0): Decision.migrate(1, (0, 1))}))
    # Part-steps: 4 per step before the move, 2 while two parts fly, 4 x 0.8 once split.
    left = 4 * work - 4 * depart - 2 * m
    finish = depart + m + math.ceil(left / (4 * eff) - 1e-9)
    assert result.metrics["mean_jct_h"] == pytest.approx(finish * STEP_S / 3600.0)
    assert result.metrics["work_done_gpu_h"] == pytest.approx(4 * work * STEP_S / 3600.0)
    assert result.metrics["downtime_s"] == pytest.approx(m * STEP_S / 2)  # half the parts in flight
    load = result.site_load_w
    assert np.allclose(load[0, depart + m : finish], 2 * PART_W)  # two parts at home ...
    assert np.allclose(load[1, depart + m : finish], 2 * PART_W)  # ... two at site 1
    assert np.all(result.job_state[0, depart : depart + m] == JobState.RUNNING)  # the stayers ran


def test_a_job_finished_by_the_parts_that_stayed_completes_while_the_others_fly() -> None:
    size, bw = 200 * GB, 1e9
    m = mig_steps(size, bw)
    world = make_world(
        np.zeros((2, 100)), [parts_job(0, 0, 4, 0, (GB, size), efficiency=0.5)], bandwidth_bps=bw
    )
    result, engine = run(world, Scripted(world, {(1, 0): Decision.migrate(1, (1,))}))
    # 8 part-steps: 2 in step 0, then one part alone (one site: full rate) for 6 steps while the other
    # flies (m >= 7 steps).
    assert m >= 7
    assert result.metrics["mean_jct_h"] == pytest.approx(7 * STEP_S / 3600.0)
    assert result.metrics["work_done_gpu_h"] == pytest.approx(8 * STEP_S / 3600.0)
    assert result.metrics["migrations"] == 1.0
    assert engine._jobs[0].parts is not None
    assert engine._jobs[0].parts.work_left == 0.0


def test_a_one_part_job_runs_exactly_like_a_plain_job() -> None:
    world = random_parts_world(5)
    plain = dataclasses.replace(
        world,
        jobs=tuple(
            job(
                j.job_id,
                j.arrival_step,
                j.work_steps,
                j.home_site,
                power_w=700.0,
                checkpoint_bytes=j.checkpoint_bytes,
            )
            for j in world.jobs
        ),
    )
    one_part = dataclasses.replace(
        world,
        jobs=tuple(
            dataclasses.replace(j, parts=PartsModel((j.checkpoint_bytes,), (False,), 0.5)) for j in plain.jobs
        ),
    )
    for policy in EVERY_POLICY:
        a, _ = run(plain, make_policy(policy))
        b, _ = run(one_part, make_policy(policy))
        for key, value in a.metrics.items():
            assert b.metrics[key] == pytest.approx(value, rel=1e-9, nan_ok=True), (policy, key)


@pytest.mark.parametrize("policy", EVERY_POLICY)
@pytest.mark.parametrize("isolated", [False, True])
def test_energy_and_work_are_conserved_with_parts(policy: str, isolated: bool) -> None:
    world = random_parts_world(7, isolated=isolated)
    result, engine = run(world, make_policy(policy))
    m = result.metrics
    load_kwh = float(result.site_load_w.sum()) * world.step_s / J_PER_KWH
    site_nonrenewable = m["nonrenewable_kwh"] - network_kwh(result)
    assert site_nonrenewable + m["renewable_kwh"] == pytest.approx(load_kwh, rel=1e-9)
    assert m["migration_kwh"] == pytest.approx(sum(r.energy_j for r in result.migrations) / J_PER_KWH)
    # Every finished job did exactly its work: parts x work steps for a job made of parts.
    full_gpu_h = sum(j.slots * j.work_steps for j in world.jobs) * world.step_s / 3600.0
    if m["unfinished_jobs"] == 0.0:
        assert m["work_done_gpu_h"] == pytest.approx(full_gpu_h)
    for j in engine._jobs:
        if j.parts is not None and j.completion is not None:
            assert j.parts.work_left == 0.0


def test_slots_hold_every_part_and_arrivals_wait_for_enough_of_them() -> None:
    jobs = [parts_job(0, 0, 10, 0, (GB,) * 3), job(1, 1, 5, 0)]
    world = make_world(np.full((2, 40), 5000.0), jobs, slots=[3, 3])
    watcher = Watching(make_policy("static"))
    result, _ = run(world, watcher)
    assert min(watcher.free) >= 0
    # The one-part job waits for the three-part job to free its home's slots.
    assert int(np.argmax(result.job_state[1] == JobState.RUNNING)) == 10


# --- the policies on hand-built views ------------------------------------------------------------------


def parts_view(site: list[int], pinned: list[bool], sizes: list[float]) -> JobView:
    n = len(site)
    return JobView(
        job_id=0,
        site=int(np.bincount(site).argmax()),
        running=True,
        power_w=PART_W * n,
        checkpoint_bytes=float(sum(sizes)),
        remaining_work_s=86_400.0,
        since_migration_s=math.inf,
        params=PARAMS.model_copy(update={"job_power_w": PART_W * n}),
        parts=PartsView(np.array(sizes), np.array(pinned), np.array(site, dtype=np.int64), PART_W, 0.8),
        slots=n,
    )


@pytest.mark.parametrize(
    "policy", ["energy-greedy", "energy-greedy-uncovered", "feasibility-aware", "lookahead"]
)
def test_all_or_nothing_policies_never_move_a_job_with_a_pinned_part(policy: str) -> None:
    jv = parts_view([0, 0, 0], [True, False, False], [GB, GB, GB])
    forecast = np.zeros((2, 24))
    forecast[1] = 10_000.0
    view = cluster_view([0.0, 10_000.0], [jv], forecast_w=forecast, epoch_s=3600.0, bandwidth_bps=10e9)
    decision = make_policy(policy).decide(0.0, view)[0]
    assert decision.action is not Action.MIGRATE


@pytest.mark.parametrize("policy", PARTIAL_POLICIES)
def test_partial_policies_move_the_largest_subset_that_fits(policy: str) -> None:
    # 3 h window at site 1 (alpha: 1080 s) over 1 Gbit/s: parts of 10, 40, 40 and 60 GB; 10 + 40 + 40 fit.
    jv = parts_view(
        [0, 0, 0, 0, 0], [False, False, False, False, True], [40 * GB, 60 * GB, 40 * GB, 10 * GB, GB]
    )
    forecast = np.zeros((2, 24))
    forecast[1, :3] = 10_000.0
    view = cluster_view(
        [0.0, 10_000.0], [jv], forecast_w=forecast, epoch_s=3600.0, bandwidth_bps=1e9, slots=8
    )
    decision = make_policy(policy).decide(0.0, view)[0]
    assert decision.action is Action.MIGRATE
    assert decision.dst_site == 1
    assert decision.parts is not None
    assert sorted(decision.parts) == [0, 2, 3]


# --- the runner --------------------------------------------------------------------------------------


def test_partial_variants_run_by_default_only_where_jobs_have_parts(tmp_path: Path) -> None:
    plain, base = load_scenario(tiny_scenario(tmp_path, "tiny-plain"))
    assert not set(PARTIAL_POLICIES) & set(default_policy_names(plain))
    with_parts, _ = load_scenario(
        tiny_scenario(tmp_path, "tiny-dp"), overrides=["jobs.parts={workers=[2, 2]}"]
    )
    names = default_policy_names(with_parts)
    assert set(PARTIAL_POLICIES) <= set(names)
    comparison = compare(with_parts, base, seeds=1)
    assert comparison.policies == names
    for name in names:
        assert math.isfinite(comparison.summary[name]["nonrenewable_kwh"])
        assert math.isfinite(comparison.summary[name]["ratio_to_oracle"])
    with pytest.raises(ConfigError, match="cannot bound jobs made of parts"):
        compare(with_parts, base, ["static"], 1, coupled_bound=True)
