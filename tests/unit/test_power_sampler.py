"""PowerSampler: publishes on a real EventBus, exports metrics, counts failed reads and keeps going."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from greenferry.adapters.nvml import NvmlPowerMeter
from greenferry.core.events import PowerSample
from greenferry.daemon.bus import EventBus
from greenferry.daemon.power import ModelPowerMeter, PowerSampler
from greenferry.hardware_profiles import get_profile
from greenferry.testing.clock import ManualClock
from greenferry.testing.fake_nvml import FakeDevice, FakeNvml

H100 = get_profile("h100-sxm")


async def _eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait (generously) for the sampler task to get somewhere; NVML reads go through a worker thread."""
    for _ in range(5000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never happened: {what}")


def _errors(registry: CollectorRegistry, kind: str) -> float | None:
    return registry.get_sample_value("greenferry_power_read_errors_total", {"error": kind})


async def _next(subscription: object) -> PowerSample:
    event = await asyncio.wait_for(subscription.get(), 5)  # type: ignore[attr-defined]
    assert isinstance(event, PowerSample)
    return event


async def test_publishes_a_sample_every_interval_and_exports_it() -> None:
    clock = ManualClock()
    bus = EventBus()
    registry = CollectorRegistry()
    subscription = bus.subscribe("test")
    meter = ModelPowerMeter(H100, 2, clock)
    async with PowerSampler(meter, bus, clock, 2.0, registry) as sampler, asyncio.TaskGroup() as tg:
        task = tg.create_task(sampler.run())
        first = await _next(subscription)
        assert sampler.latest is first
        clock.advance(2.0)
        second = await _next(subscription)
        assert second.time_s - first.time_s == 2.0
        assert second.gpus[1].energy_j == pytest.approx(140.0)
        assert registry.get_sample_value("greenferry_gpu_power_watts", {"gpu": "1"}) == 70.0
        assert registry.get_sample_value("greenferry_gpu_energy_joules_total", {"gpu": "1"}) == pytest.approx(
            140.0
        )
        assert registry.get_sample_value("greenferry_gpu_power_limit_watts", {"gpu": "0"}) == 700.0
        assert registry.get_sample_value("greenferry_gpu_utilization_ratio", {"gpu": "0"}) == 0.0
        assert registry.get_sample_value("greenferry_power_sample_timestamp_seconds") == second.time_s
        assert registry.get_sample_value("greenferry_power_samples_total") == 2.0
        assert registry.get_sample_value("greenferry_host_power_watts") is None  # no RAPL here
        task.cancel()
    assert (
        registry.get_sample_value("greenferry_gpu_power_watts", {"gpu": "1"}) is None
    )  # unregistered on exit


async def test_a_slow_tick_is_skipped_not_bunched() -> None:
    clock = ManualClock()
    bus = EventBus()
    subscription = bus.subscribe("test")
    async with (
        PowerSampler(ModelPowerMeter(H100, 1, clock), bus, clock, 1.0, CollectorRegistry()) as sampler,
        asyncio.TaskGroup() as tg,
    ):
        task = tg.create_task(sampler.run())
        start = (await _next(subscription)).time_s
        clock.advance(3.5)
        assert (await _next(subscription)).time_s == start + 3.5
        for _ in range(10):
            await asyncio.sleep(0)
        assert subscription.qsize() == 0  # one sample for the missed ticks, then back on the 1 s grid
        clock.advance(0.5)
        assert (await _next(subscription)).time_s == start + 4.0
        task.cancel()


async def test_failed_reads_are_counted_logged_once_and_the_loop_continues(
    caplog: pytest.LogCaptureFixture,
) -> None:
    device = FakeDevice(power_mw=300_000)
    clock = ManualClock()
    meter = NvmlPowerMeter(clock, nvml=FakeNvml([device]))
    bus = EventBus()
    registry = CollectorRegistry()
    subscription = bus.subscribe("test")
    device.lost = True
    with caplog.at_level(logging.INFO, logger="greenferry"):
        async with PowerSampler(meter, bus, clock, 1.0, registry) as sampler, asyncio.TaskGroup() as tg:
            task = tg.create_task(sampler.run())
            await _eventually(lambda: sampler.read_errors == 1, "the first failed read")
            clock.advance(1.0)
            await _eventually(lambda: sampler.read_errors == 2, "the second failed read")
            assert sampler.latest is None
            assert subscription.qsize() == 0
            device.lost = False
            clock.advance(1.0)
            sample = await _next(subscription)
            assert sample.gpus[0].power_w == 300.0
            assert sampler.latest is sample
            errors = registry.get_sample_value(
                "greenferry_power_read_errors_total", {"error": "HardwareError"}
            )
            assert errors == 2.0
            task.cancel()
    failures = [r for r in caplog.records if "read failed" in r.getMessage()]
    assert len(failures) == 1  # the same error twice: logged once
    assert failures[0].levelno == logging.WARNING
    assert "GPU is lost" in failures[0].getMessage()
    assert any("work again after 2 failure(s)" in r.getMessage() for r in caplog.records)
    await meter.close()


async def test_error_counter_and_unexpected_errors(caplog: pytest.LogCaptureFixture) -> None:
    device = FakeDevice()
    clock = ManualClock()
    meter = NvmlPowerMeter(clock, nvml=FakeNvml([device]))
    registry = CollectorRegistry()
    async with PowerSampler(meter, EventBus(), clock, 1.0, registry) as sampler:
        device.lost = True
        assert await sampler.sample_once() is None
        assert await sampler.sample_once() is None
        device.lost = False
        device.power_mw = "not a number"  # type: ignore[assignment]  # a driver returning nonsense
        with caplog.at_level(logging.INFO, logger="greenferry"):
            assert await sampler.sample_once() is None
        assert (
            registry.get_sample_value("greenferry_power_read_errors_total", {"error": "HardwareError"}) == 2.0
        )
        assert registry.get_sample_value("greenferry_power_read_errors_total", {"error": "TypeError"}) == 1.0
        assert sampler.read_errors == 3
    (unexpected,) = [r for r in caplog.records if "unexpectedly" in r.getMessage()]
    assert unexpected.levelno == logging.ERROR
    assert unexpected.exc_info is not None
    await meter.close()


async def test_a_registry_can_take_a_new_sampler_after_the_old_one_left() -> None:
    clock = ManualClock()
    registry = CollectorRegistry()
    meter = ModelPowerMeter(H100, 1, clock)
    async with PowerSampler(meter, EventBus(), clock, 1.0, registry):
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            async with PowerSampler(meter, EventBus(), clock, 1.0, registry):
                pass
    async with PowerSampler(meter, EventBus(), clock, 1.0, registry) as sampler:
        assert await sampler.sample_once() is not None
        assert registry.get_sample_value("greenferry_gpu_power_watts", {"gpu": "0"}) == 70.0


@pytest.mark.parametrize("interval_s", [0.0, -1.0, float("nan"), float("inf")])
def test_interval_must_be_positive(interval_s: float) -> None:
    clock = ManualClock()
    with pytest.raises(ValueError, match="interval_s"):
        PowerSampler(ModelPowerMeter(H100, 1, clock), EventBus(), clock, interval_s, CollectorRegistry())
