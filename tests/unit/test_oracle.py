"""The offline oracle (core/oracle.py) against brute force, and against the engine (sim/runner.py)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from worlds import job, make_world, random_windows_world

from greenferry.core.forecast import ForecastKind
from greenferry.core.oracle import IN_FLIGHT, MIGRATE, PAUSE, RUN, JobProblem, OracleSolution, solve
from greenferry.core.policies import ONLINE_POLICIES
from greenferry.sim.engine import World
from greenferry.sim.results import RunResult
from greenferry.sim.runner import job_problem, run_seed
from greenferry.sim.scenario import ScenarioSpec, build_world, load_scenario

FloatArray = npt.NDArray[np.float64]


# --- brute force -----------------------------------------------------------------------------------


def brute_force(problem: JobProblem, horizon: int) -> FloatArray:
    """best[t, w]: least cost of any action sequence that is on a site at time t with exactly w work done.

    Enumerates every sequence of run / pause / migrate choices (no memoisation).
    """
    run_cost = problem.run_cost_j
    steps = problem.migration_steps
    mig = problem.migration_cost_j
    n_sites, work = problem.n_sites, problem.work_steps
    best = np.full((horizon + 1, work + 1), np.inf)

    def rec(t: int, site: int, w: int, cost: float) -> None:
        best[t, w] = min(best[t, w], cost)
        if t == horizon:
            return
        rec(t + 1, site, w, cost)  # pause
        if w < work:
            rec(t + 1, site, w + 1, cost + run_cost[site, t])  # run
        for dst in range(n_sites):
            m = int(steps[site, dst])
            if dst != site and m > 0 and t + m <= horizon:
                rec(t + m, dst, w, cost + mig[site, dst, t])  # migrate: m steps without progress

    rec(0, problem.start_site, 0, 0.0)
    return best


def random_problem(
    rng: np.random.Generator, n_sites: int, n_steps: int, work: int, *, max_m: int = 2, no_link_p: float = 0.2
) -> JobProblem:
    run_cost = rng.uniform(0.0, 10.0, (n_sites, n_steps))
    run_cost[rng.random((n_sites, n_steps)) < 0.4] = 0.0  # covered steps cost nothing
    steps = rng.integers(1, max_m + 1, (n_sites, n_sites)).astype(np.int64)
    steps[rng.random((n_sites, n_sites)) < no_link_p] = 0
    np.fill_diagonal(steps, 0)
    mig = rng.uniform(0.0, 4.0, (n_sites, n_sites, n_steps))
    start = int(rng.integers(n_sites))
    return JobProblem(run_cost, steps, mig, start, work)


def plan_cost(problem: JobProblem, sol: OracleSolution) -> tuple[float, int]:
    """Re-cost a plan step by step, checking it is a valid sequence; returns (cost, work done)."""
    site = problem.start_site
    cost, work, t = 0.0, 0, 0
    actions, sites = sol.plan_actions, sol.plan_sites
    while t < actions.size:
        action = int(actions[t])
        if action == RUN:
            assert sites[t] == site
            cost += problem.run_cost_j[site, t]
            work += 1
            t += 1
        elif action == PAUSE:
            t += 1
        elif action == MIGRATE:
            dst = int(sites[t])
            m = int(problem.migration_steps[site, dst])
            assert dst != site
            assert m >= 1, "the plan uses a link that does not exist"
            assert t + m <= actions.size, "the plan ends in flight"
            assert list(actions[t + 1 : t + m]) == [IN_FLIGHT] * (m - 1)
            assert all(sites[t : t + m] == dst)
            cost += problem.migration_cost_j[site, dst, t]
            site = dst
            t += m
        else:
            raise AssertionError(f"step {t}: IN_FLIGHT without a MIGRATE before it")
    return cost, work


CASES = [
    # (n_sites, lifetime, work, max migration steps)
    (2, 6, 3, 1),
    (2, 7, 4, 2),
    (3, 6, 2, 2),
    (3, 7, 3, 1),
    (3, 8, 4, 2),
]


@pytest.mark.parametrize(("n_sites", "n_steps", "work", "max_m"), CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_values_match_brute_force(n_sites: int, n_steps: int, work: int, max_m: int, seed: int) -> None:
    problem = random_problem(np.random.default_rng(seed), n_sites, n_steps, work, max_m=max_m)
    deadlines = list(range(n_steps + 1))
    sol = solve(problem, deadlines)
    best = brute_force(problem, n_steps)
    for d in deadlines:
        for w in range(work + 1):
            expected = best[d, w]
            if math.isinf(expected):
                assert math.isinf(sol.value_j(d, w)), (d, w)
            else:
                assert sol.value_j(d, w) == pytest.approx(expected, rel=1e-12, abs=1e-12), (d, w)


@pytest.mark.parametrize(("n_sites", "n_steps", "work", "max_m"), CASES)
def test_plan_cost_and_partial_work(n_sites: int, n_steps: int, work: int, max_m: int) -> None:
    problem = random_problem(np.random.default_rng(7), n_sites, n_steps, work, max_m=max_m)
    best = brute_force(problem, n_steps)
    for d in range(1, n_steps + 1):
        for w in range(work + 1):
            if math.isinf(best[d, w]):
                with pytest.raises(ValueError, match="cannot be done"):
                    solve(problem, [d], plan_deadline=d, plan_work=w)
                continue
            sol = solve(problem, [n_steps], plan_deadline=d, plan_work=w)
            assert sol.plan_actions.size == d
            cost, done = plan_cost(problem, sol)
            assert done == w
            assert cost == pytest.approx(sol.plan_cost_j, rel=1e-12, abs=1e-12)
            assert sol.plan_cost_j == pytest.approx(best[d, w], rel=1e-12, abs=1e-12)


def test_hand_made_migration_pays_off() -> None:
    # Site 0 costs 10 per step, site 1 is free; a 1-step migration costs 1. Work 2 by deadline 3:
    # migrate at step 0, run twice at site 1 -> 1. Running at home costs 20.
    run_cost = np.array([[10.0, 10.0, 10.0], [0.0, 0.0, 0.0]])
    steps = np.array([[0, 1], [1, 0]])
    mig = np.ones((2, 2, 3))
    problem = JobProblem(run_cost, steps, mig, 0, 2)
    sol = solve(problem, [2, 3])
    assert sol.value_j(2, 2) == pytest.approx(20.0)  # no time to move
    assert sol.value_j(3, 2) == pytest.approx(1.0)
    assert list(sol.plan_actions) == [MIGRATE, RUN, RUN]
    assert list(sol.plan_sites) == [1, 1, 1]
    # Without a link the job cannot escape the expensive site.
    no_link = JobProblem(run_cost, np.zeros((2, 2), dtype=np.int64), mig, 0, 2)
    assert solve(no_link, [3]).value_j(3, 2) == pytest.approx(20.0)


def test_pausing_is_free_and_used() -> None:
    # One site, expensive now, free later: with a deadline the job waits for the free steps.
    run_cost = np.array([[5.0, 5.0, 0.0, 0.0]])
    problem = JobProblem(run_cost, np.zeros((1, 1), dtype=np.int64), np.zeros((1, 1, 4)), 0, 2)
    sol = solve(problem, [2, 3, 4])
    assert sol.value_j(2, 2) == pytest.approx(10.0)
    assert sol.value_j(3, 2) == pytest.approx(5.0)
    assert sol.value_j(4, 2) == pytest.approx(0.0)
    assert list(sol.plan_actions) == [PAUSE, PAUSE, RUN, RUN]


def test_impossible_deadlines_raise() -> None:
    problem = random_problem(np.random.default_rng(3), 2, 6, 4)
    with pytest.raises(ValueError, match="cannot be done"):
        solve(problem, [6], plan_deadline=3)  # 4 steps of work in 3 steps
    with pytest.raises(ValueError, match="deadlines"):
        solve(problem, [7])  # beyond the cost arrays
    with pytest.raises(ValueError, match="deadlines"):
        solve(problem, [-1, 5])
    with pytest.raises(ValueError, match="plan_work"):
        solve(problem, [6], plan_work=5)  # more work than the job has


@settings(max_examples=40, deadline=None)
@given(
    n_sites=st.integers(1, 3),
    n_steps=st.integers(1, 6),
    work_frac=st.floats(0.0, 1.0),
    max_m=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_random_problems(
    n_sites: int, n_steps: int, work_frac: float, max_m: int, seed: int
) -> None:
    work = max(1, round(work_frac * n_steps))
    problem = random_problem(np.random.default_rng(seed), n_sites, n_steps, work, max_m=max_m)
    deadlines = list(range(n_steps + 1))
    sol = solve(problem, deadlines)
    best = brute_force(problem, n_steps)
    got = np.array([sol.values_j[d] for d in deadlines])
    assert np.array_equal(np.isinf(got), np.isinf(best))
    finite = np.isfinite(best)
    np.testing.assert_allclose(got[finite], best[finite], rtol=1e-12, atol=1e-12)
    # More time never costs more; more work never costs less.
    assert np.all(got[1:] <= got[:-1] + 1e-12)
    for row in got:
        reachable = int(np.isfinite(row).sum())
        assert np.isfinite(row[:reachable]).all()  # doing less work is always possible (pause instead)
        assert np.all(np.diff(row[:reachable]) >= -1e-12)
    if np.isfinite(best[n_steps, work]):
        cost, done = plan_cost(problem, sol)
        assert done == work
        assert cost == pytest.approx(sol.plan_cost_j, abs=1e-9)


# --- oracle vs engine (sim/runner.py) --------------------------------------------------------------

POLICIES = ["static", "energy-greedy", "feasibility-aware", "lookahead", "oracle"]


@pytest.fixture(scope="module")
def paper() -> tuple[ScenarioSpec, World]:
    spec, base = load_scenario("paper")
    return spec, build_world(spec, base, 0)


def _check_lower_bound(results: list[RunResult], names: list[str]) -> None:
    assert [r.policy for r in results] == names
    for r in results:
        assert r.metrics["ratio_to_oracle"] >= 1 - 1e-9, (r.policy, r.metrics["ratio_to_oracle"])


def _check_oracle_row(results: list[RunResult]) -> None:
    oracle = next(r for r in results if r.policy == "oracle")
    assert oracle.metrics["nonrenewable_kwh"] == pytest.approx(oracle.metrics["oracle_bound_kwh"], rel=1e-9)
    assert oracle.metrics["unfinished_jobs"] == 0


def _windows_world(seed: int, *, isolated: bool) -> World:
    """Three sites with random on/off windows; one job whose migrations take 1-4 steps."""
    rng = np.random.default_rng(seed)
    n_steps = 72
    surplus = np.zeros((3, n_steps))
    for s in range(3):
        t = int(rng.integers(0, 6))
        while t < n_steps:
            length = int(rng.integers(3, 12))
            surplus[s, t : t + length] = rng.uniform(200.0, 900.0)
            t += length + int(rng.integers(3, 12))
    checkpoint = float(rng.choice([1e9, 2e10, 1e11]))
    the_job = job(
        0,
        int(rng.integers(0, 6)),
        int(rng.integers(12, 30)),
        int(rng.integers(3)),
        checkpoint_bytes=checkpoint,
    )
    bw = np.array([[0, 1e9, 10e9], [1e9, 0, 2.5e9], [10e9, 2.5e9, 0]])
    return make_world(surplus, [the_job], bandwidth_bps=bw, isolated=isolated)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("isolated", [False, True])
def test_one_job_world_oracle_is_exact_and_a_lower_bound(
    paper: tuple[ScenarioSpec, World], seed: int, isolated: bool
) -> None:
    spec, _ = paper
    world = _windows_world(seed, isolated=isolated)
    results = run_seed(spec, world, POLICIES, 0, forecast="perfect", keep_timeline=True)
    _check_lower_bound(results, POLICIES)
    _check_oracle_row(results)


@pytest.mark.parametrize("forecast", ["persistence", "noisy"])
def test_one_job_lower_bound_holds_for_imperfect_forecasts(
    paper: tuple[ScenarioSpec, World], forecast: ForecastKind
) -> None:
    spec, _ = paper
    world = _windows_world(5, isolated=False)
    results = run_seed(spec, world, POLICIES, 3, forecast=forecast, keep_timeline=False)
    _check_lower_bound(results, POLICIES)


def _multi_job_world(seed: int, *, isolated: bool, epoch_steps: int) -> World:
    """Three sites (two slots each), four jobs with overlapping lifetimes."""
    return random_windows_world(
        seed,
        n_steps=120,
        window_steps=(3, 20),
        surplus_w=(200.0, 1500.0),
        ckpt_mid_bytes=2e10,
        arrival_before=40,
        slots=2,
        isolated=isolated,
        epoch_steps=epoch_steps,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("isolated", [False, True])
@pytest.mark.parametrize("epoch_steps", [1, 3])
@pytest.mark.parametrize("forecast", ["perfect", "noisy", "same-time-yesterday"])
def test_multi_job_worlds_never_beat_the_oracle(
    paper: tuple[ScenarioSpec, World], seed: int, isolated: bool, epoch_steps: int, forecast: ForecastKind
) -> None:
    spec, _ = paper
    world = _multi_job_world(seed, isolated=isolated, epoch_steps=epoch_steps)
    names = [*ONLINE_POLICIES, "oracle"]
    results = run_seed(spec, world, names, seed, forecast=forecast, keep_timeline=False)
    _check_lower_bound(results, names)
    _check_oracle_row(results)


@pytest.mark.parametrize("index", [0, 6])
def test_paper_single_job_oracle_matches_engine(paper: tuple[ScenarioSpec, World], index: int) -> None:
    spec, world = paper
    one = dataclasses.replace(world, jobs=(world.jobs[index],))
    results = run_seed(spec, one, POLICIES, 0, forecast="perfect", keep_timeline=True)
    _check_lower_bound(results, POLICIES)
    _check_oracle_row(results)


def test_oracle_cost_arrays_match_the_engine(paper: tuple[ScenarioSpec, World]) -> None:
    """Static on one job costs exactly the oracle problem's run costs at its home site."""
    spec, world = paper
    one = dataclasses.replace(world, jobs=(world.jobs[2],), isolated=False)
    the_job = one.jobs[0]
    problem = job_problem(one, the_job, the_job.work_steps)
    expected_kwh = float(problem.run_cost_j[the_job.home_site].sum()) / 3.6e6
    results = run_seed(spec, one, ["static"], 0, forecast="perfect", keep_timeline=False)
    assert results[0].metrics["nonrenewable_kwh"] == pytest.approx(expected_kwh, rel=1e-9)
    # Static finishes as early as possible, where the oracle cannot migrate or pause: ratio exactly 1.
    assert results[0].metrics["ratio_to_oracle"] == pytest.approx(1.0, rel=1e-9)


@pytest.mark.parametrize("isolated", [False, True])
def test_paper_online_policies_never_beat_the_oracle(
    paper: tuple[ScenarioSpec, World], isolated: bool
) -> None:
    spec, world = paper
    names = [*ONLINE_POLICIES, "oracle"]
    results = run_seed(
        spec, dataclasses.replace(world, isolated=isolated), names, 0, forecast="perfect", keep_timeline=False
    )
    _check_lower_bound(results, names)
    _check_oracle_row(results)
