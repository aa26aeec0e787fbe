"""Power in: a small meter protocol, the hardware-profile model, host power from RAPL, and the sampler.

A :class:`PowerMeter` reads every GPU of the node at once (W, J, 0..1) and can cap a GPU's board power.
Three sources exist: NVML on real NVIDIA GPUs (:mod:`greenferry.adapters.nvml`), the node's hardware
profile (:class:`ModelPowerMeter`, for machines without NVML, the demo and tests), and either of those with
the host CPU's package power from RAPL added (:class:`HostPowerMeter`). :func:`open_power_meter` picks one
from the config. :class:`PowerSampler` reads the meter every ``interval_s``, publishes each
:class:`~greenferry.core.events.PowerSample` on the bus and exports the latest one to Prometheus.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from greenferry.adapters.nvml import NvmlModule, NvmlPowerMeter
from greenferry.adapters.rapl import DEFAULT_POWERCAP_ROOT, RaplReader
from greenferry.config import DaemonConfig
from greenferry.core.clock import Clock
from greenferry.core.events import GpuReading, PowerSample
from greenferry.daemon.bus import EventBus
from greenferry.errors import HardwareError, ServiceUnavailableError
from greenferry.hardware_profiles import HardwareProfile, resolve_profile

logger = logging.getLogger(__name__)

__all__ = [
    "HostPowerMeter",
    "ModelPowerMeter",
    "PowerMeter",
    "PowerSampler",
    "open_power_meter",
]


@runtime_checkable
class PowerMeter(Protocol):
    """Reads the node's GPUs and caps their power. Powers in W, energy in J, utilisation 0..1."""

    async def read(self) -> PowerSample:
        """One reading of every GPU.

        Raises:
            HardwareError: the hardware could not be read.
        """
        ...

    async def set_power_limit_w(self, gpu_index: int, limit_w: float) -> float:
        """Cap GPU ``gpu_index`` at ``limit_w``; returns the limit applied (W).

        Raises:
            HardwareError: outside the card's allowed range, unknown GPU, or refused by the hardware.
        """
        ...

    async def restore_power_limits(self) -> None:
        """Put every GPU this meter capped back to its default limit."""
        ...

    def describe(self) -> dict[str, object]:
        """What this meter is and sees, JSON-ready (for /v1/status)."""
        ...

    async def close(self) -> None:
        """Release the hardware (idempotent)."""
        ...


class ModelPowerMeter:
    """GPU power from the node's hardware profile: what the node would draw, where nothing can be measured.

    Each GPU draws ``idle_power_w + u * (train_power_w - idle_power_w)`` for utilisation ``u``, never more
    than its power cap. Energy is that power integrated over ``clock`` time, holding the power between
    observations (each read and each cap change).

    Args:
        profile: the node's accelerator (powers and the settable cap range).
        gpu_count: GPUs on the node.
        clock: time for timestamps and the energy integral.
        utilization_fn: utilisation 0..1 of every GPU right now (e.g. 1.0 while a job runs); default idle.
    """

    source = "model"

    def __init__(
        self,
        profile: HardwareProfile,
        gpu_count: int,
        clock: Clock,
        utilization_fn: Callable[[], float] | None = None,
    ) -> None:
        if gpu_count < 0:
            raise ValueError(f"gpu_count must be >= 0, got {gpu_count}")
        self.profile = profile
        self._clock = clock
        self._utilization_fn = utilization_fn
        self._limits_w = [profile.power_limit_max_w] * gpu_count
        self._energy_j = [0.0] * gpu_count
        self._last_s = clock.monotonic_s()
        self._utilization = self._current_utilization()

    @property
    def gpu_count(self) -> int:
        """GPUs this meter models."""
        return len(self._limits_w)

    def _current_utilization(self) -> float:
        if self._utilization_fn is None:
            return 0.0
        value = float(self._utilization_fn())
        if not math.isfinite(value):
            return 0.0
        return min(1.0, max(0.0, value))

    def _power_w(self, index: int) -> float:
        p = self.profile
        model_w = p.idle_power_w + self._utilization * (p.train_power_w - p.idle_power_w)
        return min(model_w, self._limits_w[index])

    def _integrate(self) -> None:
        """Add the energy drawn since the last observation at the power then in force, and re-observe."""
        now_s = self._clock.monotonic_s()
        elapsed_s = max(0.0, now_s - self._last_s)
        for i in range(self.gpu_count):
            self._energy_j[i] += self._power_w(i) * elapsed_s
        self._last_s = now_s
        self._utilization = self._current_utilization()

    async def read(self) -> PowerSample:
        """The modelled power, energy and limits of every GPU."""
        self._integrate()
        p = self.profile
        gpus = tuple(
            GpuReading(
                index=i,
                name=p.display_name,
                power_w=self._power_w(i),
                energy_j=self._energy_j[i],
                utilization=self._utilization,
                power_limit_w=self._limits_w[i],
                power_limit_min_w=p.power_limit_min_w,
                power_limit_max_w=p.power_limit_max_w,
                energy_from_counter=False,
            )
            for i in range(self.gpu_count)
        )
        return PowerSample(time_s=self._clock.now_s(), source=self.source, gpus=gpus)

    async def set_power_limit_w(self, gpu_index: int, limit_w: float) -> float:
        """Cap one modelled GPU.

        Raises:
            HardwareError: unknown GPU, or ``limit_w`` outside the profile's power_limit_min_w..max_w.
        """
        if not 0 <= gpu_index < self.gpu_count:
            raise HardwareError(f"no GPU {gpu_index}: the model has {self.gpu_count} GPU(s)")
        low, high = self.profile.power_limit_min_w, self.profile.power_limit_max_w
        if not (math.isfinite(limit_w) and low <= limit_w <= high):
            raise HardwareError(
                f"GPU {gpu_index} power limit {limit_w} W is outside the {self.profile.name} range "
                f"{low:g}..{high:g} W"
            )
        self._integrate()
        self._limits_w[gpu_index] = float(limit_w)
        return float(limit_w)

    async def restore_power_limits(self) -> None:
        """Every GPU back to the profile's highest limit (the default)."""
        self._integrate()
        self._limits_w = [self.profile.power_limit_max_w] * self.gpu_count

    def describe(self) -> dict[str, object]:
        """The profile and the caps in force."""
        return {
            "source": self.source,
            "profile": self.profile.name,
            "gpu_count": self.gpu_count,
            "power_limits_w": list(self._limits_w),
            "power_limit_min_w": self.profile.power_limit_min_w,
            "power_limit_max_w": self.profile.power_limit_max_w,
        }

    async def close(self) -> None:
        """Nothing to release."""


class HostPowerMeter:
    """A GPU meter with the host CPU's package power from RAPL added to each sample.

    Args:
        meter: the GPU meter (NVML or the model).
        rapl: the RAPL reader; a read it cannot make leaves the host fields None.
        clock: for the RAPL power rate.
    """

    def __init__(self, meter: PowerMeter, rapl: RaplReader, clock: Clock) -> None:
        self.meter = meter
        self.rapl = rapl
        self._clock = clock

    async def read(self) -> PowerSample:
        """The GPU sample with ``host_power_w`` / ``host_energy_j`` filled in where RAPL is readable."""
        sample = await self.meter.read()
        host = await asyncio.to_thread(self.rapl.read, self._clock.monotonic_s())
        if host is None:
            return sample
        return dataclasses.replace(sample, host_power_w=host.power_w, host_energy_j=host.energy_j)

    async def set_power_limit_w(self, gpu_index: int, limit_w: float) -> float:
        """See :meth:`PowerMeter.set_power_limit_w`."""
        return await self.meter.set_power_limit_w(gpu_index, limit_w)

    async def restore_power_limits(self) -> None:
        """See :meth:`PowerMeter.restore_power_limits`."""
        await self.meter.restore_power_limits()

    def describe(self) -> dict[str, object]:
        """The GPU meter's description plus the RAPL packages."""
        return {**self.meter.describe(), "rapl": self.rapl.describe()}

    async def close(self) -> None:
        """Close the GPU meter."""
        await self.meter.close()


def open_power_meter(
    config: DaemonConfig,
    clock: Clock,
    *,
    nvml: NvmlModule | None = None,
    powercap_root: Path = DEFAULT_POWERCAP_ROOT,
    utilization_fn: Callable[[], float] | None = None,
) -> PowerMeter:
    """The meter ``config.power`` asks for, with RAPL host power when enabled and readable.

    Loads NVML synchronously (a one-off at start-up; it can take a second on a GPU node without persistence
    mode, so async callers may run this through ``asyncio.to_thread``).

    Args:
        config: the node config (``power.source``, ``power.gpu_indices``, ``power.rapl``, the node's
            hardware profile and GPU count for the model).
        clock: the daemon's clock.
        nvml: the ``pynvml`` module to use (default: the real one).
        powercap_root: where RAPL lives (tests point it at a fake tree).
        utilization_fn: for the model meter, the GPUs' utilisation now (the daemon passes the share of its
            GPU slots its jobs hold); default idle.

    Raises:
        ServiceUnavailableError: source "nvml" and NVML does not load.
        HardwareError: a configured GPU index is not on this node.
    """
    source = config.power.source
    meter: PowerMeter
    if source == "model":
        meter = _model_meter(config, clock, utilization_fn)
    else:
        try:
            meter = NvmlPowerMeter(clock, config.power.gpu_indices, nvml=nvml)
        except ServiceUnavailableError as err:
            if source == "nvml":
                raise
            logger.warning(
                "power.source=auto: %s; using the %s hardware-profile model for %d GPU(s)",
                err,
                config.node.hardware_profile,
                config.node.gpu_count,
            )
            meter = _model_meter(config, clock, utilization_fn)
    if config.power.rapl:
        rapl = RaplReader(powercap_root)
        if rapl.available():  # when not, the reader has logged why (one line)
            return HostPowerMeter(meter, rapl, clock)
    return meter


def _model_meter(
    config: DaemonConfig, clock: Clock, utilization_fn: Callable[[], float] | None
) -> ModelPowerMeter:
    return ModelPowerMeter(
        resolve_profile(config.node.hardware_profile),
        config.node.gpu_count,
        clock,
        utilization_fn=utilization_fn,
    )


class _SampleCollector:
    """Exports the sampler's latest sample at scrape time (so values and timestamps always match)."""

    def __init__(self, sampler: PowerSampler) -> None:
        self._sampler = sampler

    def describe(self) -> Iterable[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self._sampler.latest))

    @staticmethod
    def _families(sample: PowerSample | None) -> Iterator[Metric]:
        power = GaugeMetricFamily("greenferry_gpu_power_watts", "GPU board power (W).", labels=["gpu"])
        energy = CounterMetricFamily(
            "greenferry_gpu_energy_joules", "GPU energy since an arbitrary origin (J).", labels=["gpu"]
        )
        limit = GaugeMetricFamily(
            "greenferry_gpu_power_limit_watts", "GPU power cap in force (W).", labels=["gpu"]
        )
        utilization = GaugeMetricFamily(
            "greenferry_gpu_utilization_ratio", "GPU utilisation 0..1 where known.", labels=["gpu"]
        )
        host_power = GaugeMetricFamily("greenferry_host_power_watts", "Host CPU package power from RAPL (W).")
        host_energy = CounterMetricFamily(
            "greenferry_host_energy_joules", "Host CPU package energy from RAPL (J)."
        )
        stamp = GaugeMetricFamily(
            "greenferry_power_sample_timestamp_seconds", "UTC time of the latest power sample (POSIX s)."
        )
        if sample is not None:
            for gpu in sample.gpus:
                label = [str(gpu.index)]
                power.add_metric(label, gpu.power_w)
                energy.add_metric(label, gpu.energy_j)
                if gpu.power_limit_w > 0:  # 0: the GPU has no power management
                    limit.add_metric(label, gpu.power_limit_w)
                if gpu.utilization is not None:
                    utilization.add_metric(label, gpu.utilization)
            if sample.host_power_w is not None:
                host_power.add_metric([], sample.host_power_w)
            if sample.host_energy_j is not None:
                host_energy.add_metric([], sample.host_energy_j)
            stamp.add_metric([], sample.time_s)
        yield from (power, energy, limit, utilization, host_power, host_energy, stamp)


class PowerSampler:
    """Reads a meter every ``interval_s``, publishes the sample on the bus and keeps the latest for metrics.

    A failing read is counted (``greenferry_power_read_errors_total{error}``), logged once per distinct
    error until a read succeeds again, and the loop carries on.

    Args:
        meter: what to read.
        bus: where each :class:`PowerSample` goes.
        clock: paces the loop.
        interval_s: time between reads (s).
        registry: where the power metrics are registered (on enter; removed on exit).
    """

    def __init__(
        self,
        meter: PowerMeter,
        bus: EventBus,
        clock: Clock,
        interval_s: float,
        registry: CollectorRegistry,
    ) -> None:
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"interval_s must be a positive number of seconds, got {interval_s}")
        self.meter = meter
        self.interval_s = interval_s
        self.latest: PowerSample | None = None
        self.read_errors = 0
        self._bus = bus
        self._clock = clock
        self._registry = registry
        self._collector = _SampleCollector(self)
        self._samples = Counter(
            "greenferry_power_samples", "Power samples read and published.", registry=None
        )
        self._errors = Counter(
            "greenferry_power_read_errors",
            "Power meter reads that failed, by error type.",
            ["error"],
            registry=None,
        )
        self._seen_errors: set[str] = set()
        self._registered = False

    def _collectors(self) -> tuple[Collector, ...]:
        return (self._collector, self._samples, self._errors)

    async def __aenter__(self) -> Self:
        done: list[Collector] = []
        try:
            for collector in self._collectors():
                self._registry.register(collector)
                done.append(collector)
        except BaseException:
            for collector in done:
                self._registry.unregister(collector)
            raise
        self._registered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._registered:
            for collector in self._collectors():
                self._registry.unregister(collector)
            self._registered = False

    async def sample_once(self) -> PowerSample | None:
        """Read the meter once and publish the sample; None when the read failed (counted and logged)."""
        try:
            sample = await self.meter.read()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the top of the sampling loop: one bad read must not stop it
            self._failed(err)
            return None
        if self._seen_errors:
            logger.info("power meter reads work again after %d failure(s)", self.read_errors)
            self._seen_errors.clear()
        self.latest = sample
        self._samples.inc()
        self._bus.publish(sample)
        return sample

    def _failed(self, err: Exception) -> None:
        self.read_errors += 1
        kind = type(err).__name__
        self._errors.labels(error=kind).inc()
        key = f"{kind}: {err}"
        if key in self._seen_errors:
            return
        self._seen_errors.add(key)
        if isinstance(err, HardwareError | ServiceUnavailableError):
            logger.warning("power meter read failed (logged once until it recovers): %s", err)
        else:
            logger.error("power meter read failed unexpectedly (logged once until it recovers)", exc_info=err)

    async def run(self) -> None:
        """Sample every ``interval_s`` until cancelled; a tick missed by a slow read is skipped."""
        next_s = self._clock.monotonic_s()
        while True:
            await self.sample_once()
            now_s = self._clock.monotonic_s()
            next_s += self.interval_s
            if next_s <= now_s:
                next_s += (math.floor((now_s - next_s) / self.interval_s) + 1) * self.interval_s
            await self._clock.sleep(next_s - now_s)
