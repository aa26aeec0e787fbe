"""Property tests for resample: energy is conserved by "mean"; hold/linear stay inside the data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenferry.sim.traces import Trace, resample

T0 = 1_656_633_600  # 2022-07-01T00:00Z
TRACE_STEPS_S = (60, 300, 900, 1800, 3600)

values_strategy = st.lists(
    st.floats(min_value=0.0, max_value=1e7, allow_nan=False, allow_infinity=False), min_size=2, max_size=60
)


def make_trace(values: list[float], step_s: int) -> Trace:
    return Trace("p", T0 + step_s * np.arange(len(values)), np.asarray(values), "W", "property")


@settings(max_examples=150, deadline=None)
@given(
    values=values_strategy,
    trace_step_s=st.sampled_from(TRACE_STEPS_S),
    divisor=st.sampled_from((1, 2, 3, 4, 5, 6)),
)
def test_mean_on_a_finer_grid_conserves_energy(values: list[float], trace_step_s: int, divisor: int) -> None:
    trace = make_trace(values, trace_step_s)
    step_s = trace_step_s // divisor
    n_steps = len(values) * divisor
    out = resample(trace, T0, step_s, n_steps, method="mean")
    assert out.sum() * step_s == pytest.approx(sum(values) * trace_step_s, rel=1e-9, abs=1e-3)
    assert out.mean() == pytest.approx(np.mean(values), rel=1e-9, abs=1e-6)


@settings(max_examples=150, deadline=None)
@given(
    groups=st.integers(min_value=2, max_value=12),
    factor=st.integers(min_value=1, max_value=6),
    trace_step_s=st.sampled_from(TRACE_STEPS_S),
    data=st.data(),
)
def test_mean_on_a_coarser_grid_conserves_energy(
    groups: int, factor: int, trace_step_s: int, data: st.DataObject
) -> None:
    values = data.draw(
        st.lists(st.floats(min_value=0, max_value=1e7), min_size=groups * factor, max_size=groups * factor)
    )
    trace = make_trace(values, trace_step_s)
    out = resample(trace, T0, trace_step_s * factor, groups, method="mean")
    assert out.sum() * factor == pytest.approx(sum(values), rel=1e-9, abs=1e-3)
    assert out.min() >= min(values) - 1e-6
    assert out.max() <= max(values) + 1e-6


@settings(max_examples=150, deadline=None)
@given(
    values=values_strategy,
    trace_step_s=st.sampled_from(TRACE_STEPS_S),
    step_s=st.integers(min_value=1, max_value=7200),
    method=st.sampled_from(("hold", "linear", "mean")),
    data=st.data(),
)
def test_resampled_values_stay_within_the_data(
    values: list[float], trace_step_s: int, step_s: int, method: str, data: st.DataObject
) -> None:
    trace = make_trace(values, trace_step_s)
    span_s = len(values) * trace_step_s
    max_steps = span_s // step_s
    if max_steps == 0:
        return
    n_steps = data.draw(st.integers(min_value=1, max_value=max_steps))
    start_offset_s = data.draw(st.integers(min_value=0, max_value=span_s - n_steps * step_s))
    out = resample(trace, T0 + start_offset_s, step_s, n_steps, method=method)  # type: ignore[arg-type]
    assert out.shape == (n_steps,)
    tolerance = 1e-9 * max(1.0, *values)
    assert out.min() >= min(values) - tolerance
    assert out.max() <= max(values) + tolerance
