"""The largest set of a job's parts that moves within alpha * T_w (core/feasibility.py) vs brute force."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenferry.cli import main
from greenferry.core.feasibility import (
    MigrationParams,
    largest_movable_parts,
    max_checkpoint_bytes,
    migration_time_s,
    movable_part_counts,
    time_feasible,
)

PARAMS = MigrationParams()
GB = 10**9


def brute_force(
    sizes: list[int], pinned: list[bool], bandwidth_bps: float, window_s: float, params: MigrationParams
) -> tuple[int, int]:
    """(most parts, fewest bytes among sets of that many) over every subset of the unpinned parts."""
    free = [i for i, stays in enumerate(pinned) if not stays]
    best = (0, 0)
    for k in range(1, len(free) + 1):
        for subset in itertools.combinations(free, k):
            total = sum(sizes[i] for i in subset)
            if time_feasible(float(total), bandwidth_bps, window_s, params) and (
                k > best[0] or (k == best[0] and total < best[1])
            ):
                best = (k, total)
    return best


# Integer sizes keep every subset sum exact, so the brute force and the prefix sums agree to the byte.
SIZES = st.lists(st.integers(min_value=0, max_value=300 * GB), min_size=0, max_size=9)


@settings(max_examples=300, deadline=None)
@given(
    sizes=SIZES,
    pinned_seed=st.integers(min_value=0, max_value=2**9 - 1),
    bandwidth_bps=st.sampled_from([1e8, 1e9, 2.5e9, 1e10]),
    window_s=st.floats(min_value=0.0, max_value=12 * 3600.0),
    overhead_s=st.sampled_from([0.0, 30.0, 300.0]),
)
def test_largest_movable_parts_is_optimal_against_brute_force(
    sizes: list[int], pinned_seed: int, bandwidth_bps: float, window_s: float, overhead_s: float
) -> None:
    params = MigrationParams(checkpoint_write_s=overhead_s, restore_s=overhead_s)
    pinned = [bool(pinned_seed >> i & 1) for i in range(len(sizes))]
    got = largest_movable_parts(sizes, bandwidth_bps, window_s, params, pinned=pinned)
    most, fewest_bytes = brute_force(sizes, pinned, bandwidth_bps, window_s, params)
    assert got.count == most
    assert got.size_bytes == fewest_bytes
    assert got.size_bytes == sum(sizes[i] for i in got.indices)
    assert len(set(got.indices)) == got.count
    assert not any(pinned[i] for i in got.indices)
    assert got.movable_parts == pinned.count(False)
    if got.count:
        assert time_feasible(got.size_bytes, bandwidth_bps, window_s, params)
        assert got.migration_time_s == pytest.approx(migration_time_s(got.size_bytes, bandwidth_bps, params))
    # Smallest first, ties by index.
    assert [(sizes[i], i) for i in got.indices] == sorted((sizes[i], i) for i in got.indices)
    assert got.budget_s == pytest.approx(params.alpha * window_s)
    assert movable_part_counts(sizes, bandwidth_bps, window_s, params, pinned=pinned) == got.count


@settings(max_examples=100, deadline=None)
@given(
    n_parts=st.integers(min_value=1, max_value=64),
    size=st.integers(min_value=1, max_value=200 * GB),
    bandwidth_bps=st.sampled_from([1e9, 2.5e9, 1e10]),
    window_s=st.floats(min_value=0.0, max_value=12 * 3600.0),
)
def test_equal_parts_are_a_count_under_the_largest_checkpoint(
    n_parts: int, size: int, bandwidth_bps: float, window_s: float
) -> None:
    got = largest_movable_parts([size] * n_parts, bandwidth_bps, window_s, PARAMS)
    limit = max_checkpoint_bytes(window_s, bandwidth_bps, PARAMS)
    expected = min(n_parts, math.floor(limit / size))
    # At the boundary itself the 1e-9 slack may let one more part in.
    assert got.count in (expected, min(n_parts, expected + 1))
    assert got.count * size <= limit * (1 + 1e-9)


def test_the_whole_set_moves_exactly_when_the_whole_checkpoint_does() -> None:
    sizes = [40 * GB] * 4
    for window_h in (1.0, 2.0, 3.0, 4.0, 4.2, 5.0, 9.0):
        whole = time_feasible(float(sum(sizes)), 1e9, window_h * 3600, PARAMS)
        assert largest_movable_parts(sizes, 1e9, window_h * 3600, PARAMS).all_movable == whole


def test_worked_example_two_of_four_workers_fit_a_three_hour_window() -> None:
    # 4 x 40 GB over 1 Gbit/s: the whole job takes 60 s + 1422 s, 3 h allows 1080 s; two workers take 771 s.
    got = largest_movable_parts([40 * GB, 60 * GB, 40 * GB, 10 * GB], 1e9, 3 * 3600, PARAMS)
    assert got.indices == (3, 0, 2)  # 10 + 40 + 40 GB = 860 s
    assert got.migration_time_s == pytest.approx(60 + 8 * 90e9 / 0.9e9)
    assert got.to_dict()["count"] == 3


def test_nothing_moves_when_the_budget_does_not_cover_the_overheads() -> None:
    got = largest_movable_parts([0, 0, 1], 1e9, 10 * 60, PARAMS)  # 60 s budget = the overheads
    assert got.count == 3  # empty states: only the overheads, which just fit
    assert largest_movable_parts([0, 1], 1e9, 9 * 60, PARAMS).count == 0
    assert largest_movable_parts([5 * GB], 0.0, 9 * 3600, PARAMS).count == 0  # no link


def test_counts_broadcast_over_bandwidths_and_windows() -> None:
    sizes = [30 * GB, 10 * GB, 20 * GB, 50 * GB]
    bandwidths = np.array([1e9, 2.5e9, 10e9])
    windows = np.array([[1800.0], [3 * 3600.0], [8 * 3600.0]])
    counts = movable_part_counts(sizes, bandwidths, windows, PARAMS)
    assert counts.shape == (3, 3)
    for i in range(3):
        for j in range(3):
            assert counts[i, j] == largest_movable_parts(sizes, bandwidths[j], windows[i, 0], PARAMS).count
    assert np.all(np.diff(counts, axis=0) >= 0)
    assert np.all(np.diff(counts, axis=1) >= 0)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"part_bytes": [1, -1]}, "part sizes"),
        ({"part_bytes": [1, math.nan]}, "part sizes"),
        ({"part_bytes": [1, math.inf]}, "part sizes"),
        ({"part_bytes": [1, 2], "pinned": [True]}, "pinned has 1 entries for 2 parts"),
        ({"bandwidth_bps": -1.0}, "bandwidth_bps"),
        ({"window_s": math.nan}, "window_s"),
    ],
)
def test_bad_inputs_are_refused(kwargs: dict[str, Any], says: str) -> None:
    call: dict[str, Any] = {"part_bytes": [1, 2], "bandwidth_bps": 1e9, "window_s": 3600.0} | kwargs
    with pytest.raises(ValueError, match=says):
        largest_movable_parts(
            call["part_bytes"], call["bandwidth_bps"], call["window_s"], PARAMS, pinned=call.get("pinned")
        )


# --- the CLI -------------------------------------------------------------------------------------------


def test_cli_parts_json_keeps_the_contract_and_adds_the_movable_set(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["feasibility", "--parts", "3x40GB,10GB", "--pinned-parts", "5GB", "--bandwidth", "1Gbps"]
    assert main([*argv, "--window", "3h", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["checkpoint_bytes"] == 135e9  # the whole job, pinned part included
    assert document["feasible"] is False
    assert document["binding_constraint"] == "time"
    parts = document["parts"]
    assert parts["indices"] == [3, 0, 1]
    assert parts["count"] == 3
    assert parts["movable_parts"] == 4
    assert parts["pinned"] == [False] * 4 + [True]
    assert parts["budget_s"] == pytest.approx(1080.0)


def test_cli_parts_table_line(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["feasibility", "--parts", "4x40GB", "--bandwidth", "1Gbps", "--window", "3h"]
    assert main(argv) == 0
    assert "parts: 2 of the 4 movable parts can go together" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--parts", "0x4GB"], "--parts: '0x4GB': the count must be 1 to 64"),
        (["--parts", "65x4GB"], "--parts: '65x4GB'"),
        (["--parts", "40x4GB,40x4GB"], "--parts: more than 64 parts"),
        (["--parts", "4x-1GB"], "--parts: invalid size '-1GB'"),
        (["--parts", ",,"], "--parts: empty size"),
        (["--parts", "60x1GB", "--pinned-parts", "5x1GB"], "more than 64 parts in all"),
        (["--pinned-parts", "1GB"], "--pinned-parts needs --parts"),
    ],
)
def test_cli_bad_parts_exit_2_naming_the_flag(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["feasibility", *argv, "--bandwidth", "1Gbps", "--window", "3h"]) == 2
    assert says in capsys.readouterr().err
