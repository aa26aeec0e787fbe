"""The built-in online policies (core/policies.py), on hand-built cluster views."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from worlds import PARAMS, cluster_view, job_view, t_mig_s

from greenferry.core.policies import (
    ONLINE_POLICIES,
    EnergyGreedy,
    FeasibilityAware,
    Lookahead,
    PauseWhenDirty,
)
from greenferry.core.policy import Action, ClusterView, Decision, make_policy, policy_names, register_policy
from greenferry.errors import ConfigError

HOUR = 3600.0
P = 400.0


def forecast_windows(
    n_sites: int, horizon: int, windows: dict[int, tuple[int, int]], level: float = 1000.0
) -> npt.NDArray[np.float64]:
    """(S, H) forecast: site s carries ``level`` W over epochs [a, b) for windows[s] = (a, b), else 0."""
    fc = np.zeros((n_sites, horizon))
    for s, (a, b) in windows.items():
        fc[s, a:b] = level
    return fc


# --- registry ----------------------------------------------------------------------------------------


def test_registry_lists_the_online_policies() -> None:
    names = policy_names()
    for name in (
        "static",
        "pause-when-dirty",
        "energy-greedy",
        "energy-greedy-uncovered",
        "feasibility-aware",
        "lookahead",
    ):
        assert name in names
        assert make_policy(name).name == name
    assert set(ONLINE_POLICIES) <= set(names)


def test_unknown_policy_names_the_known_ones() -> None:
    with pytest.raises(ConfigError) as err:
        make_policy("nope")
    message = str(err.value)
    assert "'nope'" in message
    for name in ONLINE_POLICIES:
        assert name in message


def test_make_policy_gives_fresh_instances_and_names_are_unique() -> None:
    assert make_policy("lookahead") is not make_policy("lookahead")
    with pytest.raises(ValueError, match="already registered"):
        register_policy("static", lambda: make_policy("static"))


# --- static, pause-when-dirty --------------------------------------------------------------------------


def test_static_never_moves_or_pauses() -> None:
    rng = np.random.default_rng(0)
    policy = make_policy("static")
    for _ in range(20):
        jobs = [job_view(j, int(rng.integers(3)), running=bool(rng.integers(2))) for j in range(4)]
        view = cluster_view(rng.uniform(0, 3000, 3).tolist(), jobs)
        decisions = policy.decide(0.0, view)
        assert decisions == {j.job_id: Decision.run() for j in jobs}


@pytest.mark.parametrize(
    ("surplus", "running", "other_load", "expected"),
    [
        (P, True, 0.0, Action.RUN),  # exactly covered
        (P - 1e-6, True, 0.0, Action.PAUSE),
        (P, False, 0.0, Action.RUN),  # a paused job resumes once covered
        (P - 1e-6, False, 0.0, Action.PAUSE),
        (2 * P, True, P, Action.RUN),  # another job at the site uses part of the surplus
        (2 * P - 1e-6, True, P, Action.PAUSE),
        (2 * P - 1e-6, False, P, Action.PAUSE),
    ],
)
def test_pause_when_dirty_pauses_exactly_when_headroom_is_short(
    surplus: float, running: bool, other_load: float, expected: Action
) -> None:
    me = job_view(0, 0, running=running)
    jobs = [me]
    if other_load:
        jobs.append(job_view(1, 0, power_w=other_load, running=True))
    view = cluster_view([surplus, 10 * P], jobs)
    view.jobs = [me]  # the other job's load is there, but it is not being decided (e.g. in flight)
    decisions = PauseWhenDirty().decide(0.0, view)
    assert decisions[0].action is expected  # and never migrates, even with a better site next door


# --- energy-greedy -------------------------------------------------------------------------------------


def test_energy_greedy_follows_the_largest_surplus_for_any_difference() -> None:
    me = job_view(0, 0)
    # Own power is added back at its own site: headroom here = 1000, at site 1 = 1000.001.
    view = cluster_view([1000.0, 1000.001, 200.0], [me])
    assert EnergyGreedy().decide(0.0, view)[0] == Decision.migrate(1)
    view = cluster_view([1000.0, 999.999, 200.0], [me])
    assert EnergyGreedy().decide(0.0, view)[0] == Decision.run()


def test_energy_greedy_ignores_windows_and_coverage() -> None:
    # Neither site covers the job; the forecast (unread: reading it raises) would say site 1 closes now.
    view = cluster_view([10.0, 20.0], [job_view(0, 0)])
    assert EnergyGreedy().decide(0.0, view)[0] == Decision.migrate(1)


def test_energy_greedy_skips_full_and_unlinked_sites() -> None:
    bw = np.array([[0, 1e9, 0], [1e9, 0, 1e9], [0, 1e9, 0]])  # no link 0-2
    me = job_view(0, 0)
    view = cluster_view([100.0, 500.0, 9000.0], [me], bandwidth_bps=bw)
    assert EnergyGreedy().decide(0.0, view)[0] == Decision.migrate(1)
    view = cluster_view([100.0, 500.0, 300.0], [me], slots=[4, 0, 4])
    assert EnergyGreedy().decide(0.0, view)[0] == Decision.migrate(2)


def test_energy_greedy_counts_slots_it_hands_out() -> None:
    jobs = [job_view(0, 0), job_view(1, 0)]
    view = cluster_view([0.0, 5000.0, 0.0], jobs, slots=[4, 1, 4])
    decisions = EnergyGreedy().decide(0.0, view)
    moved = [d for d in decisions.values() if d.action is Action.MIGRATE and d.dst_site == 1]
    assert len(moved) == 1


def test_energy_greedy_uncovered_stays_while_covered() -> None:
    policy = EnergyGreedy(only_when_uncovered=True)
    assert policy.name == "energy-greedy-uncovered"
    me = job_view(0, 0)
    assert policy.decide(0.0, cluster_view([P, 50 * P], [me]))[0] == Decision.run()
    # Uncovered here; site 1 has more but still not enough, site 2 covers.
    view = cluster_view([P - 1.0, P - 0.5, P + 1.0], [me])
    assert policy.decide(0.0, view)[0] == Decision.migrate(2)
    view = cluster_view([P - 1.0, P - 0.5, 10.0], [me])
    assert policy.decide(0.0, view)[0] == Decision.run()


# --- feasibility-aware ---------------------------------------------------------------------------------

H = 24


def _fa_view(
    window_epochs: int, checkpoint_bytes: float, *, bandwidth: float = 1e9, since: float = np.inf
) -> ClusterView:
    """Job dark at site 0; site 1 covered now and for ``window_epochs`` one-hour epochs."""
    me = job_view(0, 0, checkpoint_bytes=checkpoint_bytes, since_migration_s=since)
    fc = forecast_windows(2, H, {1: (0, window_epochs)})
    return cluster_view([0.0, 1000.0], [me], forecast_w=fc, epoch_s=HOUR, bandwidth_bps=bandwidth)


def _bytes_for_tmig(t_mig: float, bandwidth: float = 1e9) -> float:
    """Checkpoint size whose T_mig is ``t_mig`` (DOMAIN.md formula solved for S)."""
    transfer = t_mig - PARAMS.checkpoint_write_s - PARAMS.restore_s
    return transfer * PARAMS.transfer_efficiency * bandwidth / 8.0


@pytest.mark.parametrize("window_epochs", [2, 3, 8])
def test_feasibility_aware_time_check_on_both_sides(window_epochs: int) -> None:
    budget = PARAMS.alpha * window_epochs * HOUR
    below, above = _bytes_for_tmig(budget - 1.0), _bytes_for_tmig(budget + 1.0)
    assert t_mig_s(below, 1e9) < budget < t_mig_s(above, 1e9)
    assert FeasibilityAware().decide(0.0, _fa_view(window_epochs, below))[0] == Decision.migrate(1)
    assert FeasibilityAware().decide(0.0, _fa_view(window_epochs, above))[0] == Decision.run()


def test_feasibility_aware_lands_inside_the_window() -> None:
    """A move takes whole epochs (as in lookahead and the simulator): one that passes ``alpha`` of a
    one-epoch window still lands as that window closes, so it is not made; a two-epoch window is enough."""
    tiny = _bytes_for_tmig(0.5 * PARAMS.alpha * HOUR)
    assert FeasibilityAware().decide(0.0, _fa_view(1, tiny))[0] == Decision.run()
    assert FeasibilityAware().decide(0.0, _fa_view(2, tiny))[0] == Decision.migrate(1)


def test_feasibility_aware_leaves_a_window_to_the_job_already_heading_for_it() -> None:
    """Site 1's surplus covers one job: two dark jobs deciding together send one, and a job in flight to
    site 1 (``inbound_w``) takes it from a job deciding later."""
    fc = forecast_windows(3, H, {1: (0, H)}, level=1.5 * P)
    jobs = [job_view(0, 0, power_w=P), job_view(1, 2, power_w=P)]
    view = cluster_view([0.0, 1.5 * P, 0.0], jobs, forecast_w=fc, epoch_s=HOUR)
    decisions = FeasibilityAware().decide(0.0, view)
    assert [decisions[j].action for j in (0, 1)].count(Action.MIGRATE) == 1
    view = cluster_view([0.0, 1.5 * P, 0.0], jobs[:1], forecast_w=fc, epoch_s=HOUR)
    assert FeasibilityAware().decide(0.0, view)[0] == Decision.migrate(1)
    view.inbound_w = np.array([0.0, P, 0.0])
    assert FeasibilityAware().decide(0.0, view)[0] == Decision.run()


def test_feasibility_aware_needs_the_window_open_now() -> None:
    me = job_view(0, 0, checkpoint_bytes=1e9)
    fc = forecast_windows(2, H, {1: (0, H)})
    view = cluster_view([0.0, 0.0], [me], forecast_w=fc, epoch_s=HOUR)  # measured: site 1 dark now
    assert FeasibilityAware().decide(0.0, view)[0] == Decision.run()


def test_feasibility_aware_respects_min_dwell() -> None:
    policy = FeasibilityAware(min_dwell_s=HOUR)
    assert policy.decide(0.0, _fa_view(8, 1e9, since=HOUR - 1))[0] == Decision.run()
    assert policy.decide(0.0, _fa_view(8, 1e9, since=HOUR + 1))[0] == Decision.migrate(1)


def test_feasibility_aware_one_transfer_per_link() -> None:
    fc = forecast_windows(3, H, {1: (0, H)})
    jobs = [job_view(0, 0), job_view(1, 0), job_view(2, 2)]
    view = cluster_view([0.0, 5000.0, 0.0], jobs, forecast_w=fc, epoch_s=HOUR)
    decisions = FeasibilityAware().decide(0.0, view)
    assert [decisions[j].action for j in (0, 1)].count(Action.MIGRATE) == 1
    assert decisions[2] == Decision.migrate(1)  # another link is free
    # A transfer already on the link blocks it.
    busy = np.zeros((3, 3), dtype=bool)
    busy[0, 1] = busy[1, 0] = True
    view = cluster_view([0.0, 5000.0, 0.0], jobs[:1], forecast_w=fc, epoch_s=HOUR, link_busy=busy)
    assert FeasibilityAware().decide(0.0, view)[0] == Decision.run()


def test_feasibility_aware_stays_while_home_covers_the_dwell_horizon() -> None:
    me = job_view(0, 0, checkpoint_bytes=1e9)
    fc = forecast_windows(2, H, {0: (0, 1), 1: (0, H)})  # home covered for one hour only
    view = cluster_view([1000.0, 1000.0], [me], forecast_w=fc, epoch_s=HOUR)
    assert FeasibilityAware(dwell_horizon_s=HOUR).decide(0.0, view)[0] == Decision.run()
    view = cluster_view([1000.0, 1000.0], [me], forecast_w=fc, epoch_s=HOUR)
    assert FeasibilityAware(dwell_horizon_s=2 * HOUR).decide(0.0, view)[0] == Decision.migrate(1)


def test_feasibility_aware_picks_the_best_gain() -> None:
    me = job_view(0, 0, checkpoint_bytes=1e9)
    fc = forecast_windows(3, H, {1: (0, 3), 2: (0, 10)})
    view = cluster_view([0.0, 1000.0, 1000.0], [me], forecast_w=fc, epoch_s=HOUR)
    assert FeasibilityAware().decide(0.0, view)[0] == Decision.migrate(2)


def test_feasibility_aware_counts_what_a_cached_move_sends() -> None:
    """Site 1's chunk cache holds most of the checkpoint: the time check uses the bytes the move sends."""
    window_epochs = 2
    budget = PARAMS.alpha * window_epochs * HOUR
    whole, sent = _bytes_for_tmig(budget + 60.0), _bytes_for_tmig(budget - 60.0)
    view = _fa_view(window_epochs, whole)
    assert FeasibilityAware().decide(0.0, view)[0] == Decision.run()
    view.jobs[0].send_bytes = np.array([whole, sent])
    assert FeasibilityAware().decide(0.0, view)[0] == Decision.migrate(1)
    view.jobs[0].send_bytes = np.array([whole, 2 * whole])  # never more than the whole checkpoint
    assert FeasibilityAware().decide(0.0, view)[0] == Decision.run()


# --- lookahead -------------------------------------------------------------------------------------------


def test_lookahead_moves_to_a_long_window_when_dark() -> None:
    me = job_view(0, 0, checkpoint_bytes=1e9)
    fc = forecast_windows(3, H, {1: (0, H), 2: (0, 2)})
    view = cluster_view([0.0, 1000.0, 1000.0], [me], forecast_w=fc, epoch_s=HOUR)
    assert Lookahead().decide(0.0, view)[0] == Decision.migrate(1)


@pytest.mark.parametrize(("window_epochs", "moves"), [(2, False), (3, False), (6, True)])
def test_lookahead_does_not_move_into_a_window_shorter_than_the_move(window_epochs: int, moves: bool) -> None:
    ckpt = _bytes_for_tmig(2.5 * HOUR)  # three one-hour epochs in flight
    me = job_view(0, 0, checkpoint_bytes=ckpt)
    fc = forecast_windows(2, H, {1: (0, window_epochs)})
    view = cluster_view([0.0, 1000.0], [me], forecast_w=fc, epoch_s=HOUR, bandwidth_bps=1e9)
    expected = Decision.migrate(1) if moves else Decision.run()
    assert Lookahead().decide(0.0, view)[0] == expected


def test_lookahead_plans_with_what_a_cached_move_sends_and_replans_when_it_learns_it() -> None:
    """A move of the whole checkpoint takes three epochs and does not fit a two-epoch window; site 1's
    chunk cache holds most of it, and the move it leaves (half an hour) does. The same policy instance,
    told this between two decisions of one epoch, remakes its plan."""
    whole, sent = _bytes_for_tmig(2.5 * HOUR), _bytes_for_tmig(0.5 * HOUR)
    me = job_view(0, 0, checkpoint_bytes=whole)
    fc = forecast_windows(2, H, {1: (0, 2)})
    policy = Lookahead()
    view = cluster_view([0.0, 1000.0], [me], forecast_w=fc, epoch_s=HOUR, bandwidth_bps=1e9)
    assert policy.decide(0.0, view)[0] == Decision.run()
    me.send_bytes = np.array([whole, sent])
    view = cluster_view([0.0, 1000.0], [me], forecast_w=fc, epoch_s=HOUR, bandwidth_bps=1e9)
    assert policy.decide(60.0, view)[0] == Decision.migrate(1)


def test_lookahead_replans_when_the_job_is_not_where_planned() -> None:
    policy = Lookahead(replan_interval_s=24 * HOUR)
    bw = np.array([[0, 0, 0], [0, 0, 1e9], [0, 1e9, 0]])  # site 0 has no links: its plan is to stay
    fc = forecast_windows(3, H, {1: (0, H)})
    first = cluster_view([0.0, 1000.0, 0.0], [job_view(0, 0)], forecast_w=fc, epoch_s=HOUR, bandwidth_bps=bw)
    assert policy.decide(0.0, first)[0] == Decision.run()
    # One epoch later the job is at site 2 (dark, as site 0 was planned to be): a stale plan says stay.
    second = cluster_view(
        [0.0, 1000.0, 0.0], [job_view(0, 2)], forecast_w=fc, epoch_s=HOUR, now_s=HOUR, bandwidth_bps=bw
    )
    assert policy.decide(HOUR, second)[0] == Decision.migrate(1)


def _follow_views() -> tuple[ClusterView, ClusterView]:
    """Home covered for two epochs, then site 1; a later forecast wrongly says site 1 stays dark."""
    first = cluster_view(
        [1000.0, 0.0],
        [job_view(0, 0)],
        forecast_w=forecast_windows(2, H, {0: (0, 2), 1: (2, H)}),
        epoch_s=HOUR,
    )
    second = cluster_view(
        [1000.0, 0.0],
        [job_view(0, 0)],
        forecast_w=forecast_windows(2, H, {0: (0, 1)}),
        epoch_s=HOUR,
        now_s=HOUR,
    )
    return first, second


def test_lookahead_follows_its_plan_between_replans() -> None:
    policy = Lookahead(replan_interval_s=6 * HOUR)
    first, second = _follow_views()
    assert policy.decide(0.0, first)[0] == Decision.run()  # plan: stay now, move next epoch
    assert policy.decide(HOUR, second)[0] == Decision.migrate(1)  # no re-plan inside the interval
    # With a re-plan every epoch the new forecast wins.
    policy = Lookahead(replan_interval_s=HOUR)
    first, second = _follow_views()
    policy.decide(0.0, first)
    assert policy.decide(HOUR, second)[0] == Decision.run()


def test_lookahead_keeps_plans_of_jobs_asked_in_separate_views() -> None:
    policy = Lookahead(replan_interval_s=6 * HOUR)
    first, second = _follow_views()
    assert policy.decide(0.0, first)[0] == Decision.run()
    other = cluster_view([0.0, 0.0], [job_view(7, 1)], forecast_w=np.zeros((2, H)), epoch_s=HOUR)
    policy.decide(0.0, other)  # the engine's isolated mode: another job, its own view
    assert policy.decide(HOUR, second)[0] == Decision.migrate(1)


def test_lookahead_min_dwell_blocks_new_moves() -> None:
    me = job_view(0, 0, checkpoint_bytes=1e9, since_migration_s=HOUR)
    fc = forecast_windows(2, H, {1: (0, H)})
    view = cluster_view([0.0, 1000.0], [me], forecast_w=fc, epoch_s=HOUR)
    assert Lookahead(min_dwell_s=2 * HOUR).decide(0.0, view)[0] == Decision.run()
    view = cluster_view([0.0, 1000.0], [me], forecast_w=fc, epoch_s=HOUR)
    assert Lookahead(min_dwell_s=0.5 * HOUR).decide(0.0, view)[0] == Decision.migrate(1)


def test_lookahead_one_departure_per_link() -> None:
    fc = forecast_windows(2, H, {1: (0, H)})
    jobs = [job_view(0, 0), job_view(1, 0)]
    view = cluster_view([0.0, 5000.0], jobs, forecast_w=fc, epoch_s=HOUR)
    decisions = Lookahead().decide(0.0, view)
    assert [d.action for d in decisions.values()].count(Action.MIGRATE) == 1


@pytest.mark.parametrize("name", ["static", "pause-when-dirty", "energy-greedy", "energy-greedy-uncovered"])
def test_memoryless_policies_never_read_the_forecast(name: str) -> None:
    view = cluster_view([0.0, 300.0, 900.0], [job_view(0, 0), job_view(1, 1, running=False)])
    decisions = make_policy(name).decide(0.0, view)  # reading the forecast would raise
    assert set(decisions) == {0, 1}


@pytest.mark.parametrize("running", [False, True])
def test_pause_when_dirty_shares_a_site_between_jobs(running: bool) -> None:
    jobs = [job_view(0, 0, running=running), job_view(1, 0, running=running)]
    view = cluster_view([1.5 * P], jobs)  # covers one job, not two
    decisions = PauseWhenDirty().decide(0.0, view)
    assert sorted(d.action.value for d in decisions.values()) == ["pause", "run"]


@pytest.mark.parametrize(("error_decay_s", "moves"), [(0.0, False), (6 * HOUR, True)])
def test_lookahead_carries_the_measured_forecast_error_forward(error_decay_s: float, moves: bool) -> None:
    # Yesterday (the forecast) site 1 had nothing; today it has 1 kW now. Trusting the forecast, the
    # surplus is gone by the time a move lands; carrying today's error forward, it lasts a few hours.
    me = job_view(0, 0, checkpoint_bytes=1e9, remaining_work_s=12 * HOUR)
    view = cluster_view([0.0, 1000.0], [me], forecast_w=np.zeros((2, H)), epoch_s=HOUR / 4)
    decision = Lookahead(error_decay_s=error_decay_s).decide(0.0, view)[0]
    assert decision == (Decision.migrate(1) if moves else Decision.run())


def test_lookahead_error_correction_leaves_a_forecast_that_starts_from_the_measurement_alone() -> None:
    fc = forecast_windows(2, H, {1: (0, 3)})
    view = cluster_view([0.0, 1000.0], [job_view(0, 0)], forecast_w=fc, epoch_s=HOUR)
    np.testing.assert_array_equal(Lookahead()._corrected_forecast_w(view), fc)


@pytest.mark.parametrize(("surprise_fraction", "moves"), [(0.25, True), (2.0, False)])
def test_lookahead_replans_on_a_surprise_at_another_site(surprise_fraction: float, moves: bool) -> None:
    # Forecast skill off: one bad hour would otherwise (rightly) make it wait an epoch to be sure.
    policy = Lookahead(replan_interval_s=6 * HOUR, surprise_fraction=surprise_fraction, skill_aware=False)
    me = job_view(0, 0, checkpoint_bytes=1e9)
    first = cluster_view([0.0, 0.0], [me], forecast_w=np.zeros((2, H)), epoch_s=HOUR)
    assert policy.decide(0.0, first)[0] == Decision.run()  # nothing anywhere: stay
    # An hour later site 1 has surplus nobody forecast; the current site is as dark as planned.
    second = cluster_view([0.0, 1000.0], [me], forecast_w=forecast_windows(2, H, {1: (0, H)}), epoch_s=HOUR)
    assert policy.decide(HOUR, second)[0] == (Decision.migrate(1) if moves else Decision.run())


def test_lookahead_shrinks_leads_its_forecast_got_wrong() -> None:
    policy = Lookahead(error_decay_s=0.0)
    me = job_view(0, 0)
    promise = forecast_windows(2, H, {1: (0, H)})  # site 1 covered all day, says the forecast
    for epoch in range(3):  # ... and it never is
        view = cluster_view([0.0, 0.0], [me], forecast_w=promise, epoch_s=HOUR, now_s=epoch * HOUR)
        policy.decide(epoch * HOUR, view)
    view = cluster_view([0.0, 0.0], [me], forecast_w=promise, epoch_s=HOUR, now_s=3 * HOUR)
    trusted = policy._trusted_forecast_w(view, me)
    assert trusted[1, 1] == 0.0  # a lead that was off by more than the job's power is not believed
    assert Lookahead(error_decay_s=0.0, skill_aware=False)._trusted_forecast_w(view, me)[1, 1] == 1000.0
