"""The demand-response planner: targets from payloads, least-cost plans, honest opt-outs."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenferry.core.dr import DrPayload
from greenferry.core.dr_plan import (
    DrRules,
    DrTarget,
    JobLoad,
    capped_throughput,
    combine_targets,
    plan_dr,
    target_for,
)

RULES = DrRules()


def h100_job(job_id: str, gpus: int = 1, rate: float = 1.0, **kw: object) -> JobLoad:
    first = {"a": 0, "b": 4, "c": 8}.get(job_id, 0)
    return JobLoad(
        job_id=job_id,
        gpu_indices=tuple(range(first, first + gpus)),
        gpu_power_w=600.0,
        idle_power_w=70.0,
        host_power_w=90.0,
        limit_min_w=200.0,
        limit_max_w=700.0,
        rate=rate * gpus,
        stop_lead_s=30.0,
        restart_s=30.0,
        **kw,  # type: ignore[arg-type]
    )


def test_simple_levels_shed_their_share_of_the_flexible_power() -> None:
    for level, share in enumerate(RULES.simple_shed_fractions):
        target = target_for(
            [DrPayload("SIMPLE", (float(level),))],
            baseline_w=2000.0,
            flexible_w=1600.0,
            max_power_w=3000.0,
            rules=RULES,
        )
        assert target is not None
        assert target.shed_w == pytest.approx(share * 1600.0)
        assert f"level {level}" in target.reason


@pytest.mark.parametrize(
    ("payload", "shed_w"),
    [
        (DrPayload("IMPORT_CAPACITY_LIMIT", (1500.0,), "W"), 500.0),
        (DrPayload("DISPATCH_SETPOINT", (1200.0,), "W"), 800.0),
        (DrPayload("DISPATCH_SETPOINT_RELATIVE", (-300.0,), "W"), 300.0),
        (DrPayload("DISPATCH_SETPOINT_RELATIVE", (300.0,), "W"), 0.0),  # asks for more: nothing to shed
        (DrPayload("OLS", (0.5,)), 500.0),  # half of 3000 W rated: 2000 -> 1500
        (DrPayload("ALERT_GRID_EMERGENCY", ("storm",)), 1600.0),
        (DrPayload("IMPORT_CAPACITY_LIMIT", (5000.0,), "W"), 0.0),  # already below the limit
    ],
)
def test_power_payloads_become_a_reduction_below_the_baseline(payload: DrPayload, shed_w: float) -> None:
    target = target_for([payload], baseline_w=2000.0, flexible_w=1600.0, max_power_w=3000.0, rules=RULES)
    assert target is not None
    assert target.shed_w == pytest.approx(shed_w)


def test_payloads_that_ask_nothing_of_a_consumer_give_no_target() -> None:
    payloads = [DrPayload("GHG", (300.0,)), DrPayload("EXPORT_CAPACITY_LIMIT", (10.0,), "W")]
    assert target_for(payloads, baseline_w=1, flexible_w=1, max_power_w=1, rules=RULES) is None
    # A price without a configured threshold is information, not a request.
    assert (
        target_for([DrPayload("PRICE", (9.0,))], baseline_w=1, flexible_w=1, max_power_w=1, rules=RULES)
        is None
    )


def test_price_above_the_threshold_counts_as_the_configured_level() -> None:
    rules = DrRules(price_threshold_per_kwh=0.30, price_level=2)
    high = target_for(
        [DrPayload("PRICE", (0.31,))], baseline_w=0, flexible_w=1000, max_power_w=0, rules=rules
    )
    low = target_for([DrPayload("PRICE", (0.29,))], baseline_w=0, flexible_w=1000, max_power_w=0, rules=rules)
    assert high is not None
    assert high.shed_w == pytest.approx(500.0)
    assert low is not None
    assert low.shed_w == 0.0


def test_the_strictest_payload_and_the_strictest_event_win() -> None:
    payloads = [DrPayload("SIMPLE", (1.0,)), DrPayload("IMPORT_CAPACITY_LIMIT", (1000.0,), "W")]
    target = target_for(payloads, baseline_w=2000.0, flexible_w=1600.0, max_power_w=3000.0, rules=RULES)
    assert target is not None
    assert target.shed_w == pytest.approx(1000.0)
    combined = combine_targets([DrTarget(100, "a"), None, DrTarget(700, "b"), DrTarget(300, "c")])
    assert combined == DrTarget(700, "b")
    assert combine_targets([None, None]) is None


def test_caps_cost_throughput_along_the_cube_law() -> None:
    assert capped_throughput(700, 600, 70, 1 / 3) == 1.0  # the cap does not bite
    half = capped_throughput(335, 600, 70, 1 / 3)  # halfway between idle and training power
    assert half == pytest.approx(0.5 ** (1 / 3))
    assert capped_throughput(70, 600, 70, 1 / 3) == 0.0


def test_a_small_request_is_met_by_caps_alone_within_the_cards_range() -> None:
    jobs = [h100_job("a", gpus=2)]
    plan = plan_dr(DrTarget(200.0, "t"), 3600.0, jobs, RULES)
    assert plan.opt_in
    assert plan.jobs_in("cap") == ("a",)
    assert set(plan.caps) == {0, 1}
    for limit_w in plan.caps.values():
        assert 200.0 <= limit_w < 600.0
    assert plan.planned_shed_w == pytest.approx(200.0, abs=1e-3)
    assert 0 < plan.cost_work_s < 2 * 3600 * 0.1


def test_caps_are_spread_so_the_marginal_cost_is_equal() -> None:
    # Two identical jobs: the cheapest split of a convex cost is an even one.
    jobs = [h100_job("a"), h100_job("b")]
    plan = plan_dr(DrTarget(300.0, "t"), 3600.0, jobs, DrRules(allow_pause=False, allow_migrate=False))
    limits = sorted(plan.caps.values())
    assert limits[0] == pytest.approx(limits[1], abs=0.5)
    assert plan.planned_shed_w == pytest.approx(300.0, abs=1e-3)


def test_a_request_beyond_caps_pauses_a_job() -> None:
    jobs = [h100_job("a", gpus=2)]
    plan = plan_dr(DrTarget(1000.0, "t"), 3600.0, jobs, RULES)
    assert plan.opt_in
    assert plan.jobs_in("pause") == ("a",)
    assert plan.caps == {}
    # Pausing: both GPUs to idle and the host share, less the checkpoint's 30 s of the hour.
    assert plan.planned_shed_w == pytest.approx((2 * 530 + 90) * (3570 / 3600))
    assert plan.cost_work_s == pytest.approx(2.0 * (3600 + 30))


def test_a_feasible_migration_is_cheaper_than_a_pause() -> None:
    job = h100_job("a", migration_s=300.0, migration_dst="node-b")
    plan = plan_dr(DrTarget(600.0, "t"), 3600.0, [job], RULES)
    assert plan.jobs_in("migrate") == ("a",)
    assert plan.actions[0].destination == "node-b"
    assert plan.cost_work_s == pytest.approx(300.0)


def test_a_migration_that_does_not_finish_within_the_event_is_never_chosen() -> None:
    job = h100_job("a", migration_s=5000.0, migration_dst="node-b")
    plan = plan_dr(DrTarget(600.0, "t"), 3600.0, [job], RULES)
    assert plan.jobs_in("migrate") == ()
    assert plan.jobs_in("pause") == ("a",)


def test_when_nothing_suffices_the_node_opts_out_and_does_nothing() -> None:
    jobs = [h100_job("a")]
    plan = plan_dr(DrTarget(5000.0, "SIMPLE: level 3"), 3600.0, jobs, RULES)
    assert not plan.opt_in
    assert plan.actions == ()
    assert plan.planned_shed_w == 0.0
    assert "5000 W" in plan.reason
    assert "at most" in plan.reason
    assert plan.max_shed_w == pytest.approx(620 * 3570 / 3600)


def test_most_of_a_request_is_still_an_opt_in_with_all_the_node_can_shed() -> None:
    jobs = [h100_job("a")]
    reachable = 620 * 3570 / 3600
    plan = plan_dr(DrTarget(reachable / 0.97, "t"), 3600.0, jobs, RULES)
    assert plan.opt_in
    assert plan.planned_shed_w == pytest.approx(reachable)


def test_only_the_allowed_actions_are_used() -> None:
    jobs = [h100_job("a", migration_s=60.0, migration_dst="b")]
    caps_only = DrRules(allow_pause=False, allow_migrate=False)
    assert not plan_dr(DrTarget(500.0, "t"), 3600.0, jobs, caps_only).opt_in  # caps shed 400 W at most
    assert plan_dr(DrTarget(300.0, "t"), 3600.0, jobs, caps_only).jobs_in("cap") == ("a",)
    no_caps = DrRules(allow_power_cap=False, allow_migrate=False)
    assert plan_dr(DrTarget(50.0, "t"), 3600.0, jobs, no_caps).jobs_in("pause") == ("a",)
    assert not plan_dr(DrTarget(50.0, "t"), 3600.0, [h100_job("x", pausable=False)], no_caps).opt_in


def test_disabled_demand_response_always_opts_out() -> None:
    plan = plan_dr(DrTarget(10.0, "t"), 60.0, [h100_job("a")], DrRules(enabled=False))
    assert not plan.opt_in
    assert plan.actions == ()
    assert "disabled" in plan.reason


def test_no_target_or_a_zero_target_is_an_opt_in_that_changes_nothing() -> None:
    for target in (None, DrTarget(0.0, "t")):
        plan = plan_dr(target, 60.0, [h100_job("a")], RULES)
        assert plan.opt_in
        assert plan.caps == {}
        assert plan.jobs_in("pause") == ()


def test_an_open_ended_event_is_planned_without_overflow() -> None:
    plan = plan_dr(DrTarget(300.0, "t"), math.inf, [h100_job("a")], RULES)
    assert plan.opt_in
    assert math.isfinite(plan.cost_work_s)
    assert plan.to_json()["duration_s"] is None


def test_bad_job_loads_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="gpu_power_w"):
        JobLoad("x", (0,), math.nan, 70, 90, 200, 700, 1.0)
    with pytest.raises(ValueError, match="limit_min_w"):
        JobLoad("x", (0,), 600, 70, 90, 800, 700, 1.0)
    with pytest.raises(ValueError, match="simple_shed_fractions"):
        DrRules(simple_shed_fractions=(0.0, 0.5, 1.5, 1.0))


def _brute_force_cost(jobs: list[JobLoad], need_w: float, duration_s: float) -> float:
    """Least cost over a grid of caps and every stop option (an upper bound on the true optimum)."""
    options: list[list[tuple[float, float]]] = []
    for job in jobs:
        choices = []
        floor = max(job.limit_min_w, job.idle_power_w)
        for k in range(201):
            limit = job.gpu_power_w - k * (job.gpu_power_w - floor) / 200
            shed = job.gpu_count * (job.gpu_power_w - limit)
            keep = capped_throughput(limit, job.gpu_power_w, job.idle_power_w, job.cap_exponent)
            choices.append((shed, job.rate * duration_s * (1 - keep)))
        active = (duration_s - job.stop_lead_s) / duration_s
        choices.append((job.stop_shed_w * active, job.rate * (duration_s + job.restart_s)))
        if job.migration_s is not None and job.migration_s <= duration_s:
            choices.append((job.stop_shed_w * active, job.rate * job.migration_s))
        options.append(choices)
    best = math.inf
    for combo in itertools.product(*options):
        if sum(s for s, _ in combo) >= need_w - 1e-6:
            best = min(best, sum(c for _, c in combo))
    return best


@settings(max_examples=40, deadline=None)
@given(
    gpus=st.lists(st.integers(1, 4), min_size=1, max_size=2),
    rates=st.lists(st.floats(0.1, 3.0), min_size=2, max_size=2),
    moves=st.lists(st.one_of(st.none(), st.floats(10.0, 4000.0)), min_size=2, max_size=2),
    share=st.floats(0.01, 1.0),
)
def test_the_plan_is_no_costlier_than_a_brute_force_search(
    gpus: list[int], rates: list[float], moves: list[float | None], share: float
) -> None:
    jobs = [
        h100_job(name, gpus=n, rate=rate, migration_s=move, migration_dst=None if move is None else "peer")
        for name, n, rate, move in zip("ab", gpus, rates, moves, strict=False)
    ]
    duration_s = 1800.0
    reachable = sum(max(j.max_cap_shed_w, j.stop_shed_w * (duration_s - 30) / duration_s) for j in jobs)
    need = share * reachable
    plan = plan_dr(DrTarget(need, "t"), duration_s, jobs, RULES)
    assert plan.opt_in
    assert plan.planned_shed_w >= need - 1e-3
    assert plan.cost_work_s <= _brute_force_cost(jobs, need, duration_s) + 1e-6 * duration_s
    for limit in plan.caps.values():
        assert 200.0 - 1e-9 <= limit <= 600.0
