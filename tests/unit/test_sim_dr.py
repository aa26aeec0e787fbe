"""The simulator's demand-response overlay: the daemon's planner answering carbon-peak events on a run."""

from __future__ import annotations

import numpy as np
import pytest

from greenferry.core.feasibility import MigrationParams
from greenferry.hardware_profiles import get_profile
from greenferry.sim.dr import RULE_SETS, DrEventSpec, daily_peak_events, dr_overlay
from greenferry.sim.engine import JobModel, SiteModel, World
from greenferry.sim.results import JobState, RunResult

STEP_S = 3600.0
N = 48


def _world(bandwidth_bps: float, profile: str = "h100-sxm", surplus_b_w: float = 5000.0) -> World:
    carbon = np.full(N, 200.0)
    carbon[18:20] = 600.0  # the evening peak of day one
    carbon[24 + 19 : 24 + 21] = 650.0  # and of day two, an hour later
    p = get_profile(profile)
    job = JobModel(0, 0, N, p.train_power_w + p.host_power_w, 10e9, 0, profile=profile)
    return World(
        name="t",
        start_s=0.0,
        step_s=STEP_S,
        n_steps=N,
        sites=(
            SiteModel("a", np.zeros(N), carbon, 4),
            SiteModel("b", np.full(N, surplus_b_w), np.full(N, 100.0), 4),
        ),
        bandwidth_bps=np.array([[0.0, bandwidth_bps], [bandwidth_bps, 0.0]]),
        jobs=(job,),
        params=MigrationParams(),
    )


def _run(world: World, site: int = 0) -> RunResult:
    return RunResult(
        policy="static",
        seed=0,
        metrics={},
        times_s=world.times_s(),
        step_s=STEP_S,
        site_names=[s.name for s in world.sites],
        surplus_w=world.surplus_w,
        site_load_w=np.zeros((2, N)),
        job_site=np.full((1, N), site, dtype=np.int64),
        job_state=np.full((1, N), int(JobState.RUNNING), dtype=np.int64),
    )


def test_events_sit_on_each_days_carbon_peak() -> None:
    events = daily_peak_events(_world(1e9), event_hours=2, level=2)
    site_a = [e for e in events if e.site == 0]
    assert [(e.start_step, e.end_step) for e in site_a] == [(18, 20), (43, 45)]
    assert all(e.level == 2 for e in events)
    with pytest.raises(ValueError, match="level"):
        daily_peak_events(_world(1e9), level=4)


def test_caps_deliver_a_partial_request_exactly_and_pausing_overshoots_at_a_higher_cost() -> None:
    world = _world(0.0)  # no link: nothing can move
    events = [DrEventSpec(0, 18, 20, 1)]
    by_rules = {o.rules: o for o in dr_overlay(world, _run(world), events)}
    caps, pause, planner = by_rules["caps-only"], by_rules["pause-only"], by_rules["planner"]
    assert caps.events_with_jobs == 1
    assert caps.opted_in == 1
    assert caps.delivered_kwh == pytest.approx(caps.requested_kwh)
    assert caps.actions["cap"] == 1
    assert pause.delivered_kwh > pause.requested_kwh  # all or nothing
    assert pause.cost_work_h > caps.cost_work_h
    assert planner.cost_work_h <= min(caps.cost_work_h, pause.cost_work_h) + 1e-9
    assert planner.actions["migrate"] == 0


def test_a_fast_link_to_a_site_with_surplus_makes_moving_the_cheapest_answer() -> None:
    world = _world(10e9)
    events = [DrEventSpec(0, 18, 20, 3)]
    planner = {o.rules: o for o in dr_overlay(world, _run(world), events)}["planner"]
    assert planner.actions["migrate"] == 1
    pause = {o.rules: o for o in dr_overlay(world, _run(world), events)}["pause-only"]
    assert planner.cost_work_h < pause.cost_work_h
    # Without surplus at the other site there is nowhere green to go: the planner pauses instead.
    dirty = _world(10e9, surplus_b_w=0.0)
    planner = {o.rules: o for o in dr_overlay(dirty, _run(dirty), events)}["planner"]
    assert planner.actions["migrate"] == 0
    assert planner.actions["pause"] == 1


def test_jetson_profiles_drive_the_plan_with_their_own_power_range() -> None:
    world = _world(0.0, profile="jetson-agx-orin")
    caps = dr_overlay(world, _run(world), [DrEventSpec(0, 18, 20, 1)], {"caps": RULE_SETS["caps-only"]})[0]
    orin = get_profile("jetson-agx-orin")
    # A quarter of (45 - 7 W + 5 W host) for two hours: tens of Wh, not kWh.
    assert caps.requested_kwh == pytest.approx(0.25 * (orin.train_power_w - orin.idle_power_w + 5) * 2 / 1000)
    assert caps.opted_in == 1


def test_events_where_no_job_runs_cost_nothing() -> None:
    world = _world(1e9)
    overlay = dr_overlay(world, _run(world, site=1), [DrEventSpec(0, 18, 20, 3)])
    for o in overlay:
        assert o.events_with_jobs == 0
        assert o.delivered_kwh == 0.0
        assert o.cost_work_h == 0.0


def test_the_overlay_command_on_a_built_in_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from greenferry.sim.dr import main

    assert main(["--scenario", "paper", "--policies", "static", "--level", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    overlays = {o["rules"]: o for o in out["policies"]["static"]}
    assert set(overlays) == set(RULE_SETS)
    assert overlays["caps-only"]["opted_in"] == 0  # level 3 asks for more than caps can shed
    assert overlays["planner"]["opted_in"] == overlays["planner"]["events_with_jobs"] > 0
    with pytest.raises(SystemExit) as exit_info:
        main(["--scenario", "paper", "--level", "7"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
