"""ScaledClock: simulated time runs `speedup` times a real clock; sleeps are scaled and never end early.

Most tests inject a fake real clock and a fake real sleep, so nothing depends on how fast the machine is.
"""

from __future__ import annotations

import math

import pytest

from greenferry.core.clock import Clock
from greenferry.demo.clock import ScaledClock
from greenferry.errors import ConfigError


class FakeReal:
    """A real clock that moves only when slept on.

    ``wake_early_s`` ends each sleep that much early (as an event loop may, by up to its clock resolution),
    except sleeps no longer than that, which end on time.
    """

    def __init__(self, start_s: float = 5000.0, wake_early_s: float = 0.0) -> None:
        self.now_s = start_s
        self.wake_early_s = wake_early_s
        self.sleeps: list[float] = []

    def monotonic_s(self) -> float:
        return self.now_s

    async def sleep(self, duration_s: float) -> None:
        self.sleeps.append(duration_s)
        early_s = self.wake_early_s if duration_s > self.wake_early_s else 0.0
        self.now_s += duration_s - early_s


def _clock(
    speedup: float = 720.0, start_s: float = 1_654_473_600.0, **fake: float
) -> tuple[ScaledClock, FakeReal]:
    real = FakeReal(**fake)
    return ScaledClock(speedup, start_s, real_monotonic_s=real.monotonic_s, real_sleep=real.sleep), real


def test_simulated_time_is_start_plus_speedup_times_real_elapsed() -> None:
    clock, real = _clock(speedup=720.0, start_s=1_654_473_600.0)
    assert clock.now_s() == 1_654_473_600.0
    assert clock.monotonic_s() == 0.0
    real.now_s += 2.5
    assert clock.now_s() == pytest.approx(1_654_473_600.0 + 1800.0)
    assert clock.monotonic_s() == pytest.approx(1800.0)
    assert clock.elapsed_s() == pytest.approx(1800.0)
    real.now_s += 120.0  # two real minutes: one simulated day after the start
    assert clock.now_s() - clock.start_s == pytest.approx(86400.0 + 1800.0)
    assert clock.speedup == 720.0


async def test_sleep_waits_duration_over_speedup_real_seconds() -> None:
    clock, real = _clock(speedup=720.0)
    await clock.sleep(900.0)  # one 15-minute scenario step
    assert real.sleeps[0] == pytest.approx(1.25)
    assert sum(real.sleeps) == pytest.approx(1.25)
    assert clock.monotonic_s() == pytest.approx(900.0)
    assert clock.real_s(900.0) == pytest.approx(1.25)


async def test_a_sleep_that_wakes_early_sleeps_the_rest_and_never_returns_before_the_deadline() -> None:
    clock, real = _clock(speedup=100.0, wake_early_s=0.001)
    before = clock.monotonic_s()
    await clock.sleep(60.0)
    assert clock.monotonic_s() >= before + 60.0
    assert real.sleeps[0] == pytest.approx(0.6)
    assert real.sleeps[1] == pytest.approx(0.001)  # the part it woke early by
    assert sum(real.sleeps) == pytest.approx(0.601)


@pytest.mark.parametrize("duration_s", [0.0, -5.0, math.nan])
async def test_a_non_positive_sleep_only_yields(duration_s: float) -> None:
    clock, real = _clock()
    await clock.sleep(duration_s)
    assert real.sleeps == [0.0]
    assert clock.monotonic_s() == 0.0


async def test_monotonic_time_never_goes_backwards_across_sleeps() -> None:
    clock, _ = _clock(speedup=3600.0)
    seen = [clock.monotonic_s()]
    for duration_s in (1.0, 30.0, 0.0, 900.0, 5.0):
        await clock.sleep(duration_s)
        seen.append(clock.monotonic_s())
    assert seen == sorted(seen)
    assert seen[-1] == pytest.approx(936.0)


async def test_on_the_real_event_loop_a_sleep_ends_after_its_simulated_deadline() -> None:
    clock: Clock = ScaledClock(10_000.0, 0.0)
    start = clock.monotonic_s()
    await clock.sleep(50.0)  # 5 ms real
    assert clock.monotonic_s() >= start + 50.0


@pytest.mark.parametrize("speedup", [0.0, -1.0, math.inf, math.nan, True])
def test_a_bad_speedup_is_refused_by_name(speedup: float) -> None:
    with pytest.raises(ConfigError, match="speedup"):
        ScaledClock(speedup, 0.0)


@pytest.mark.parametrize("start_s", [math.inf, math.nan])
def test_a_non_finite_start_is_refused(start_s: float) -> None:
    with pytest.raises(ConfigError, match="start_s"):
        ScaledClock(720.0, start_s)
