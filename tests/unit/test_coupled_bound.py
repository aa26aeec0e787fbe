"""The coupled LP bound (core/coupled_bound.py): valid below every engine run, tighter than the per-job DP."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from worlds import job, make_world, random_windows_world, run, tiny_scenario

from greenferry.core.coupled_bound import CoupledProblem, coupled_lower_bound
from greenferry.core.oracle import solve
from greenferry.core.policies import ONLINE_POLICIES
from greenferry.core.policy import make_policy
from greenferry.sim.engine import J_PER_KWH, World
from greenferry.sim.runner import compare, coupled_problem, job_problem
from greenferry.sim.scenario import load_scenario

DT = 300.0  # worlds.py's step


def _bound_j(world: World, targets: list[tuple[int, int]]) -> float:
    bound = coupled_lower_bound(coupled_problem(world, targets))
    assert bound.status == "Optimal"
    return bound.value_j


def _dp_j(world: World, index: int, work: int, deadline: int) -> float:
    problem = job_problem(world, world.jobs[index], deadline)
    return solve(problem, [deadline], plan_deadline=deadline, plan_work=work).value_j(deadline, work)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("slots", [1, 2])
def test_bound_is_below_every_online_run(seed: int, slots: int) -> None:
    world = random_windows_world(
        seed,
        n_steps=60,
        window_steps=(4, 14),
        surplus_w=(250.0, 700.0),
        ckpt_mid_bytes=1e10,
        arrival_before=12,
        slots=slots,
    )
    for name in ONLINE_POLICIES:
        result, engine = run(world, make_policy(name), keep_timeline=False)
        targets = [
            (done, deadline) for done, deadline, _ in sorted(engine.job_outcomes(), key=lambda o: o[2])
        ]
        bound_j = _bound_j(world, targets)
        energy_j = result.metrics["nonrenewable_kwh"] * J_PER_KWH
        assert bound_j <= energy_j * (1 + 1e-6) + 1e-6, (name, bound_j, energy_j)


def test_single_job_lp_is_below_the_dp_and_integral_without_links() -> None:
    surplus = np.array([[0, 500, 500, 0, 0, 500, 0, 0], [500, 0, 0, 500, 500, 0, 0, 500.0]])
    linked = make_world(surplus, [job(0, 0, 4, 0)], bandwidth_bps=10e9)
    unlinked = make_world(surplus, [job(0, 0, 4, 0)], bandwidth_bps=0.0)
    for world in (linked, unlinked):
        for work, deadline in [(4, 8), (3, 6), (2, 4), (4, 4)]:
            lp_j = _bound_j(world, [(work, deadline)])
            assert lp_j <= _dp_j(world, 0, work, deadline) + 1e-6
    for work, deadline in [(4, 8), (3, 6), (2, 4)]:
        # One site reachable: pick the covered steps at home, an integral LP optimum.
        assert _bound_j(unlinked, [(work, deadline)]) == pytest.approx(
            _dp_j(unlinked, 0, work, deadline), rel=1e-9, abs=1e-6
        )
    # Four steps of work in eight at home (covered only at steps 1, 2, 5): one uncovered step.
    assert _bound_j(unlinked, [(4, 8)]) == pytest.approx(400.0 * DT, rel=1e-9)


def test_sharing_one_site_costs_more_than_the_per_job_bound() -> None:
    # One site, covered for one 400 W job during steps 0-1 only; two jobs each need 2 steps in 4.
    surplus = np.array([[400.0, 400.0, 0.0, 0.0]])
    world = make_world(surplus, [job(0, 0, 2, 0), job(1, 0, 2, 0)])
    per_job_j = _dp_j(world, 0, 2, 4) + _dp_j(world, 1, 2, 4)
    coupled_j = _bound_j(world, [(2, 4), (2, 4)])
    assert per_job_j == pytest.approx(0.0, abs=1e-9)
    # 4 running steps of 400 W against 2 steps of 400 W surplus: 2 uncovered steps of 400 W.
    assert coupled_j == pytest.approx(2 * 400.0 * DT, rel=1e-9)
    assert coupled_j > per_job_j


@pytest.mark.parametrize(("slots", "expected_j"), [(1, 2 * 400.0 * DT), (2, 0.0)])
def test_slots_keep_jobs_from_running_together(slots: int, expected_j: float) -> None:
    # Site 0 covers both jobs during steps 0-1, but holds ``slots`` of them; site 1 has no surplus.
    surplus = np.array([[800.0, 800.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    world = make_world(surplus, [job(0, 0, 2, 0), job(1, 0, 2, 0)], slots=[slots, 4])
    assert _bound_j(world, [(2, 4), (2, 4)]) == pytest.approx(expected_j, rel=1e-9, abs=1e-6)


def test_jobs_without_slack_are_fixed_loads() -> None:
    surplus = np.array([[300.0, 500.0, 100.0], [900.0, 900.0, 900.0]])
    world = make_world(surplus, [job(0, 0, 3, 0), job(1, 0, 3, 0)])
    # Both run at home every step: load 800 W against 300, 500, 100 W.
    assert _bound_j(world, [(3, 3), (3, 3)]) == pytest.approx((500 + 300 + 700) * DT, rel=1e-9)
    one_slot = make_world(surplus, [job(0, 0, 3, 0), job(1, 0, 3, 0)], slots=[1, 4])
    bound = coupled_lower_bound(coupled_problem(one_slot, [(3, 3), (3, 3)]))
    assert bound.status == "Infeasible"


def test_clusters_and_separate_bounds() -> None:
    surplus = np.full((1, 20), 100.0)
    world = make_world(surplus, [job(0, 0, 2, 0), job(1, 10, 2, 0), job(2, 11, 2, 0)])
    targets = [(2, 4), (2, 4), (2, 4)]
    bound = coupled_lower_bound(coupled_problem(world, targets))
    assert bound.value_j == pytest.approx(3 * 2 * 300.0 * DT, rel=1e-9)
    assert bound.n_lps == 2
    # A single job's own bound is taken as given; a split-off job's too.
    given = coupled_lower_bound(coupled_problem(world, targets), separate_bounds_j=[1.0, 2.0, 3.0])
    assert given.value_j == pytest.approx(1.0 + 2 * 2 * 300.0 * DT, rel=1e-9)
    split = coupled_lower_bound(
        coupled_problem(world, targets), separate_bounds_j=[1.0, 2.0, 3.0], max_columns=1
    )
    assert split.separated_jobs == (2,)  # the later of two equal windows
    assert split.value_j == pytest.approx(1.0 + 2.0 + 3.0)


def _problem() -> CoupledProblem:
    world = make_world(np.zeros((2, 6)), [job(0, 0, 2, 0)])
    return coupled_problem(world, [(2, 4)])


@pytest.mark.parametrize(
    ("change", "mentions"),
    [
        (lambda p: {"jobs": (dataclasses.replace(p.jobs[0], power_w=-1.0),)}, "power_w"),
        (lambda p: {"jobs": (dataclasses.replace(p.jobs[0], deadline_steps=1),)}, "shorter than work_steps"),
        (lambda p: {"jobs": (dataclasses.replace(p.jobs[0], arrival_step=4),)}, "outside"),
        (lambda p: {"jobs": (dataclasses.replace(p.jobs[0], home_site=5),)}, "home_site"),
        (lambda p: {"gpu_slots": np.array([1, 2, 3])}, "gpu_slots"),
        (lambda p: {"surplus_w": np.zeros(6)}, "surplus_w"),
        (lambda p: {"surplus_w": -np.ones((2, 6))}, "non-negative"),
        (
            lambda p: {"jobs": (dataclasses.replace(p.jobs[0], migration_steps=np.zeros((3, 3), np.int64)),)},
            "migration_steps",
        ),
    ],
    ids=[
        "negative-power",
        "short-deadline",
        "window-outside",
        "home",
        "slots-shape",
        "surplus-1d",
        "negative",
        "link-shape",
    ],
)
def test_bad_input_raises(change: Callable[[CoupledProblem], dict[str, object]], mentions: str) -> None:
    problem = _problem()
    bad = dataclasses.replace(problem, **change(problem))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=mentions):
        coupled_lower_bound(bad)


def test_compare_uses_the_coupled_bound(tmp_path: Path) -> None:
    path = tiny_scenario(
        tmp_path, "tiny-shared", decision_interval="15min", gpu_slots=1, jobs=3, spacing="1h"
    )
    spec, base = load_scenario(path)
    comparison = compare(spec, base, [*ONLINE_POLICIES, "oracle"], 1, coupled_bound=True)
    loose = compare(spec, base, [*ONLINE_POLICIES, "oracle"], 1)
    for name in ONLINE_POLICIES:
        metrics = comparison.runs[name][0].metrics
        assert metrics["ratio_to_oracle"] >= 1 - 1e-9, (name, metrics["ratio_to_oracle"])
        assert metrics["oracle_bound_kwh"] >= 0
        assert metrics["nonrenewable_kwh"] >= metrics["oracle_bound_kwh"] * (1 - 1e-9)
        # The coupled bound only ever tightens the per-job one.
        assert metrics["oracle_bound_kwh"] >= loose.runs[name][0].metrics["oracle_bound_kwh"] * (1 - 1e-9)
    assert "oracle_bound_kwh" in comparison.runs["oracle"][0].metrics
