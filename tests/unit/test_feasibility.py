"""The feasibility-domain model: worked numbers, closed forms against direct evaluation, broadcasting."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import ValidationError

from greenferry.core.feasibility import (
    MigrationParams,
    assess,
    break_even_s,
    energy_feasible,
    max_checkpoint_bytes,
    max_checkpoint_bytes_energy,
    migration_energy_j,
    migration_time_s,
    min_bandwidth_bps,
    min_bandwidth_bps_energy,
    time_budget_s,
    time_feasible,
    transfer_time_s,
)

GB = 1e9
GBPS = 1e9
HOUR_S = 3600.0
IDEAL = MigrationParams(transfer_efficiency=1.0, checkpoint_write_s=0.0, restore_s=0.0)
INTERNET_AVERAGE = MigrationParams(network_energy_j_per_byte=0.06 * 3.6e6 / 1e9)  # 0.06 kWh/GB

sizes = st.floats(min_value=1e6, max_value=1e13)
bandwidths = st.floats(min_value=1e6, max_value=1e12)
windows = st.floats(min_value=0.0, max_value=48 * HOUR_S)
params_st = st.builds(
    MigrationParams,
    checkpoint_write_s=st.floats(0.0, 600.0),
    restore_s=st.floats(0.0, 600.0),
    transfer_efficiency=st.floats(0.05, 1.0),
    alpha=st.floats(0.01, 1.0),
    network_energy_j_per_byte=st.floats(0.0, 1e-3),
    job_power_w=st.floats(1.0, 2000.0),
    idle_power_src_w=st.floats(0.0, 500.0),
    idle_power_dst_w=st.floats(0.0, 500.0),
)


# --- DOMAIN.md worked numbers ---------------------------------------------------------------------------


def test_worked_numbers_from_the_domain_notes() -> None:
    assert transfer_time_s(100 * GB, 1 * GBPS, IDEAL) == pytest.approx(800.0)
    assert transfer_time_s(10 * GB, 1 * GBPS, IDEAL) == pytest.approx(80.0)
    assert time_budget_s(2.5 * HOUR_S, MigrationParams(alpha=0.1)) == pytest.approx(900.0)
    # 800 s of transfer in a 900 s budget: it just fits ...
    assert time_feasible(100 * GB, 1 * GBPS, 2.5 * HOUR_S, IDEAL) is True
    # ... but not once eta = 0.9 and 60 s of checkpoint + restore are counted (948.9 s > 900 s).
    verdict = assess(100 * GB, 1 * GBPS, 2.5 * HOUR_S, MigrationParams())
    assert verdict.migration_time_s == pytest.approx(30 + 8e11 / 0.9e9 + 30)
    assert verdict.time_margin_s == pytest.approx(900 - verdict.migration_time_s)
    assert not verdict.feasible
    assert verdict.binding_constraint == "time"


def test_network_energy_decides_whether_break_even_is_minutes_or_hours() -> None:
    equipment = break_even_s(100 * GB, 1 * GBPS, MigrationParams())
    internet = break_even_s(100 * GB, 1 * GBPS, INTERNET_AVERAGE)
    assert INTERNET_AVERAGE.network_energy_j_per_byte == pytest.approx(2.16e-4)
    assert 60.0 < equipment < 10 * 60.0  # minutes (paper's conclusion with ~10 nJ/bit)
    assert internet > 10 * HOUR_S  # 2.16e7 J of network energy alone is 15 h at 400 W
    assert internet - equipment == pytest.approx((2.16e-4 - 8e-8) * 100 * GB / 400.0)


def test_migration_energy_matches_the_formula_term_by_term() -> None:
    params = MigrationParams(
        checkpoint_write_s=20.0,
        restore_s=40.0,
        transfer_efficiency=0.8,
        network_energy_j_per_byte=1e-7,
        job_power_w=300.0,
        idle_power_src_w=50.0,
        idle_power_dst_w=70.0,
    )
    transfer = 8 * 40 * GB / (0.8 * 10 * GBPS)
    expected_j = 300.0 * (20.0 + 40.0) + (50.0 + 70.0) * transfer + 1e-7 * 40 * GB
    assert transfer_time_s(40 * GB, 10 * GBPS, params) == pytest.approx(transfer)
    assert migration_time_s(40 * GB, 10 * GBPS, params) == pytest.approx(60.0 + transfer)
    assert migration_energy_j(40 * GB, 10 * GBPS, params) == pytest.approx(expected_j)
    assert break_even_s(40 * GB, 10 * GBPS, params) == pytest.approx(expected_j / 300.0)


# --- closed forms sit on the boundary of the direct checks ----------------------------------------------


@given(window_s=st.floats(600.0, 48 * HOUR_S), bandwidth_bps=bandwidths, params=params_st)
def test_max_checkpoint_bytes_sits_on_the_time_boundary(
    window_s: float, bandwidth_bps: float, params: MigrationParams
) -> None:
    s_max = max_checkpoint_bytes(window_s, bandwidth_bps, params)
    assume(s_max > 0)
    assert time_feasible(s_max, bandwidth_bps, window_s, params)
    assert not time_feasible(s_max * 1.01, bandwidth_bps, window_s, params)


@given(window_s=st.floats(600.0, 48 * HOUR_S), bandwidth_bps=bandwidths, params=params_st)
def test_max_checkpoint_bytes_energy_sits_on_the_energy_boundary(
    window_s: float, bandwidth_bps: float, params: MigrationParams
) -> None:
    s_max = max_checkpoint_bytes_energy(window_s, bandwidth_bps, params)
    assume(0 < s_max < math.inf)
    assert energy_feasible(s_max, bandwidth_bps, window_s, params)
    assert energy_feasible(s_max * 0.99, bandwidth_bps, window_s, params)
    assert not energy_feasible(s_max * 1.01, bandwidth_bps, window_s, params)


@given(size_bytes=sizes, window_s=windows, params=params_st)
def test_min_bandwidth_sits_on_the_time_boundary(
    size_bytes: float, window_s: float, params: MigrationParams
) -> None:
    b_min = min_bandwidth_bps(size_bytes, window_s, params)
    if math.isinf(b_min):
        # No bandwidth helps: even an instant transfer exceeds the budget.
        assert not time_feasible(size_bytes, 1e30, window_s, params)
        return
    assert time_feasible(size_bytes, b_min, window_s, params)
    assert not time_feasible(size_bytes, b_min * 0.99, window_s, params)


@given(size_bytes=sizes, window_s=windows, params=params_st)
def test_min_bandwidth_energy_sits_on_the_energy_boundary(
    size_bytes: float, window_s: float, params: MigrationParams
) -> None:
    b_min = min_bandwidth_bps_energy(size_bytes, window_s, params)
    if math.isinf(b_min):
        assert not energy_feasible(size_bytes, 1e30, window_s, params)
        return
    assert energy_feasible(size_bytes, b_min * 1.01, window_s, params)
    assert not energy_feasible(size_bytes, b_min * 0.99, window_s, params)


def test_nothing_fits_when_the_budget_does_not_cover_the_overheads() -> None:
    params = MigrationParams(checkpoint_write_s=300.0, restore_s=300.0, alpha=0.1)
    window_s = 1.5 * HOUR_S  # budget 540 s < 600 s of overheads
    assert max_checkpoint_bytes(window_s, 100 * GBPS, params) == 0.0
    assert min_bandwidth_bps(1 * GB, window_s, params) == math.inf
    assert not time_feasible(0.0, 100 * GBPS, window_s, params)
    # The energy check needs T_w > 2*(T_ckpt + T_restore) even for an empty checkpoint.
    assert max_checkpoint_bytes_energy(1000.0, 1 * GBPS, params) == 0.0
    assert min_bandwidth_bps_energy(0.0, 1000.0, params) == math.inf
    assert min_bandwidth_bps_energy(0.0, 2 * HOUR_S, params) == 0.0


def test_free_bytes_make_the_energy_boundary_infinite() -> None:
    params = MigrationParams(network_energy_j_per_byte=0.0)
    assert max_checkpoint_bytes_energy(HOUR_S, math.inf, params) == math.inf


# --- vectorisation --------------------------------------------------------------------------------------


def test_scalars_in_python_scalars_out() -> None:
    assert type(transfer_time_s(1 * GB, 1 * GBPS)) is float
    assert type(max_checkpoint_bytes(HOUR_S, GBPS)) is float
    assert type(time_feasible(1 * GB, 1 * GBPS, HOUR_S)) is bool
    assert type(energy_feasible(1 * GB, 1 * GBPS, HOUR_S)) is bool
    assert type(time_budget_s(np.float64(HOUR_S))) is float


def test_arrays_broadcast_against_each_other() -> None:
    size = np.array([1, 10, 100], dtype=np.float64)[:, None] * GB  # (3, 1)
    bandwidth = np.array([0.1, 1, 10, 100])[None, :] * GBPS  # (1, 4)
    window = np.array([1.0, 2.5])[:, None, None] * HOUR_S  # (2, 1, 1)
    assert transfer_time_s(size, bandwidth).shape == (3, 4)
    assert migration_energy_j(size, 1 * GBPS).shape == (3, 1)
    ok = time_feasible(size, bandwidth, window)
    assert ok.shape == (2, 3, 4)
    assert ok.dtype == np.bool_
    assert energy_feasible(size, bandwidth, window).shape == (2, 3, 4)
    assert max_checkpoint_bytes(window, bandwidth).shape == (2, 1, 4)
    assert min_bandwidth_bps(size, window).shape == (2, 3, 1)
    # Every element equals the scalar evaluation.
    for k, i, j in np.ndindex(ok.shape):
        expected = time_feasible(float(size[i, 0]), float(bandwidth[0, j]), float(window[k, 0, 0]))
        assert ok[k, i, j] == expected


def test_integer_and_list_inputs_are_accepted() -> None:
    times = transfer_time_s(np.array([10 * 10**9, 100 * 10**9]), 10**9, IDEAL)
    np.testing.assert_allclose(times, [80.0, 800.0])


def test_zero_bandwidth_means_an_endless_transfer_without_warnings() -> None:
    # filterwarnings=error turns any numpy divide warning into a failure.
    assert transfer_time_s(1 * GB, 0.0) == math.inf
    assert transfer_time_s(0.0, 0.0) == 0.0
    assert not time_feasible(np.array([1 * GB]), 0.0, HOUR_S)[0]


# --- monotonicity ---------------------------------------------------------------------------------------


@given(size=sizes, bandwidth=bandwidths, window=windows, factor=st.floats(1.0, 100.0), params=params_st)
def test_feasibility_is_monotone(
    size: float, bandwidth: float, window: float, factor: float, params: MigrationParams
) -> None:
    """Smaller checkpoints, faster links and longer windows never turn a feasible move infeasible."""
    for check in (time_feasible, energy_feasible):
        if check(size, bandwidth, window, params):
            assert check(size / factor, bandwidth, window, params)
            assert check(size, bandwidth * factor, window, params)
            assert check(size, bandwidth, window * factor, params)


@given(size=sizes, bandwidth=bandwidths, factor=st.floats(1.001, 100.0), params=params_st)
def test_costs_grow_with_size_and_shrink_with_bandwidth(
    size: float, bandwidth: float, factor: float, params: MigrationParams
) -> None:
    assert migration_time_s(size * factor, bandwidth, params) > migration_time_s(size, bandwidth, params)
    assert migration_time_s(size, bandwidth * factor, params) < migration_time_s(size, bandwidth, params)
    assert migration_energy_j(size * factor, bandwidth, params) >= migration_energy_j(size, bandwidth, params)
    assert migration_energy_j(size, bandwidth * factor, params) <= migration_energy_j(size, bandwidth, params)


@given(window=windows, bandwidth=bandwidths, factor=st.floats(1.0, 100.0), params=params_st)
def test_boundaries_grow_with_window_and_bandwidth(
    window: float, bandwidth: float, factor: float, params: MigrationParams
) -> None:
    for boundary in (max_checkpoint_bytes, max_checkpoint_bytes_energy):
        base = boundary(window, bandwidth, params)
        assert boundary(window * factor, bandwidth, params) >= base
        assert boundary(window, bandwidth * factor, params) >= base * (1 - 1e-12)


# --- verdict --------------------------------------------------------------------------------------------


def test_verdict_when_feasible() -> None:
    verdict = assess(10 * GB, 1 * GBPS, 2.5 * HOUR_S)
    assert verdict.feasible
    assert verdict.time_feasible
    assert verdict.energy_feasible
    assert verdict.binding_constraint == "none"
    assert verdict.limiting_constraint == "time"  # the paper's conclusion with ~10 nJ/bit
    assert verdict.max_checkpoint_bytes == verdict.max_checkpoint_bytes_time
    assert verdict.budget_s == pytest.approx(900.0)
    assert verdict.energy_gain_j == pytest.approx(
        400.0 * (2.5 * HOUR_S - verdict.migration_time_s) - verdict.migration_energy_j
    )
    assert verdict.break_even_s == pytest.approx(verdict.migration_energy_j / 400.0)


def test_verdict_when_only_energy_fails() -> None:
    verdict = assess(50 * GB, 100 * GBPS, 2.5 * HOUR_S, INTERNET_AVERAGE)
    assert verdict.time_feasible
    assert not verdict.energy_feasible
    assert not verdict.feasible
    assert verdict.binding_constraint == "energy"
    assert verdict.limiting_constraint == "energy"
    assert verdict.energy_gain_j < 0
    assert verdict.max_checkpoint_bytes == verdict.max_checkpoint_bytes_energy < 50 * GB


def test_verdict_when_both_fail_blames_time() -> None:
    verdict = assess(100 * GB, 1 * GBPS, 2.5 * HOUR_S, INTERNET_AVERAGE)
    assert not verdict.time_feasible
    assert not verdict.energy_feasible
    assert verdict.binding_constraint == "time"


def test_verdict_to_dict_is_json_safe() -> None:
    params = MigrationParams(checkpoint_write_s=600.0, restore_s=600.0)
    verdict = assess(1 * GB, 1 * GBPS, HOUR_S, params)  # budget 360 s < overheads: no bandwidth helps
    assert verdict.min_bandwidth_bps == math.inf
    document = verdict.to_dict()
    assert document["min_bandwidth_bps"] is None
    assert document["max_checkpoint_bytes"] == 0.0
    assert json.loads(json.dumps(document, allow_nan=False)) == document


@pytest.mark.parametrize(
    ("size", "bandwidth", "window"),
    [(-1.0, GBPS, HOUR_S), (GB, 0.0, HOUR_S), (GB, GBPS, math.nan), (math.inf, GBPS, HOUR_S)],
)
def test_assess_rejects_bad_inputs(size: float, bandwidth: float, window: float) -> None:
    with pytest.raises(ValueError, match="must be a finite number"):
        assess(size, bandwidth, window)


# --- parameters -----------------------------------------------------------------------------------------


def test_migration_params_defaults() -> None:
    params = MigrationParams()
    assert params.network_energy_j_per_byte == pytest.approx(10e-9 * 8)  # 10 nJ/bit
    assert params.overhead_s == 60.0
    assert params.idle_power_w == 120.0


@pytest.mark.parametrize(
    "bad",
    [
        {"transfer_efficiency": 0.0},
        {"transfer_efficiency": 1.2},
        {"alpha": 0.0},
        {"alpha": 1.5},
        {"checkpoint_write_s": -1.0},
        {"restore_s": math.nan},
        {"network_energy_j_per_byte": math.inf},
        {"job_power_w": 0.0},
        {"idle_power_src_w": -5.0},
        {"unknown_field": 1.0},
    ],
)
def test_migration_params_validation(bad: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        MigrationParams(**bad)


def test_migration_params_are_frozen() -> None:
    params = MigrationParams()
    with pytest.raises(ValidationError):
        params.alpha = 0.5  # type: ignore[misc]
