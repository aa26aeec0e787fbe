"""GPU power, energy, utilisation and power limits through NVML (nvidia-ml-py, module ``pynvml``).

Vendor units are converted here, once: NVML reports power and limits in milliwatts, energy in millijoules
and utilisation in percent; everything leaving this module is W, J and 0..1. NVML errors are translated at
this edge into :class:`~greenferry.errors.ServiceUnavailableError` (NVML does not load) and
:class:`~greenferry.errors.HardwareError` (a GPU refused or failed an operation).

Every NVML call after start-up runs in a worker thread (``asyncio.to_thread``) under one lock, because NVML
calls can block for milliseconds and its handles are not meant for concurrent use from many threads.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from greenferry.core.clock import Clock
from greenferry.core.events import GpuReading, PowerSample
from greenferry.errors import HardwareError, ServiceUnavailableError

logger = logging.getLogger(__name__)

__all__ = ["NvmlModule", "NvmlPowerMeter", "load_nvml_module", "probe_nvml"]

NvmlModule = Any
"""The ``pynvml`` module, or an object with the same functions and ``NVMLError*`` classes (tests)."""

_MW_PER_W = 1000.0
_MJ_PER_J = 1000.0
T = TypeVar("T")


def load_nvml_module() -> NvmlModule:
    """Import nvidia-ml-py's ``pynvml``.

    Raises:
        ServiceUnavailableError: nvidia-ml-py is not installed.
    """
    try:
        import pynvml  # type: ignore[import-untyped]  # nvidia-ml-py ships no type information
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ServiceUnavailableError(f"NVML: nvidia-ml-py is not installed ({err})") from err
    return pynvml


def _init(nvml: NvmlModule) -> None:
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as err:
        raise ServiceUnavailableError(f"NVML does not load: {err}") from err


def probe_nvml(nvml: NvmlModule | None = None) -> str:
    """Load NVML once and say what it sees (for ``check-config``).

    Args:
        nvml: the module to use (default: the real ``pynvml``).

    Returns:
        e.g. ``"NVML 550.54.15: 2 GPU(s): 0 NVIDIA H100 80GB HBM3, 1 NVIDIA H100 80GB HBM3"``.

    Raises:
        ServiceUnavailableError: NVML does not load (message from NVML, e.g. "NVML Shared Library Not Found").
    """
    module = nvml if nvml is not None else load_nvml_module()
    _init(module)
    try:
        count = int(module.nvmlDeviceGetCount())
        names = [
            f"{i} {_text(module.nvmlDeviceGetName(module.nvmlDeviceGetHandleByIndex(i)))}"
            for i in range(count)
        ]
        try:
            driver = f"driver {_text(module.nvmlSystemGetDriverVersion())}: "
        except module.NVMLError:
            driver = ""
    except module.NVMLError as err:
        raise ServiceUnavailableError(f"NVML loaded but cannot list GPUs: {err}") from err
    finally:
        _shutdown_quietly(module)
    return f"NVML {driver}{count} GPU(s)" + (": " + ", ".join(names) if names else "")


@dataclass(slots=True)
class _Gpu:
    """One device as this meter tracks it (limits in W, energy in J)."""

    index: int
    handle: Any
    name: str
    limit_min_w: float
    limit_max_w: float
    default_limit_w: float
    limits_supported: bool
    counter_supported: bool = True
    utilization_supported: bool = True
    integrated_energy_j: float = 0.0
    last_power_w: float | None = None
    last_s: float | None = None
    limit_changed: bool = False


class NvmlPowerMeter:
    """A :class:`~greenferry.daemon.power.PowerMeter` reading real NVIDIA GPUs through NVML.

    Opening loads NVML and reads each device's name and power-limit range (once, synchronously: call it
    through ``asyncio.to_thread`` from async code when start-up latency matters).

    Args:
        clock: for sample timestamps and, where a GPU has no energy counter, integrating its power.
        gpu_indices: NVML device indices to use (default: every device).
        nvml: the ``pynvml`` module (default: the real one; tests pass a fake at this hardware boundary).

    Raises:
        ServiceUnavailableError: NVML does not load, or cannot list devices.
        HardwareError: a requested index is not a device on this node.
    """

    source = "nvml"

    def __init__(
        self, clock: Clock, gpu_indices: Sequence[int] | None = None, nvml: NvmlModule | None = None
    ) -> None:
        self._nvml = nvml if nvml is not None else load_nvml_module()
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False
        _init(self._nvml)
        try:
            self._gpus = self._open_devices(gpu_indices)
        except BaseException:
            _shutdown_quietly(self._nvml)
            raise
        if not self._gpus:
            logger.warning("NVML loaded but sees no GPU; power samples will be empty")

    def _open_devices(self, gpu_indices: Sequence[int] | None) -> list[_Gpu]:
        nvml = self._nvml
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as err:
            raise ServiceUnavailableError(f"NVML cannot count GPUs: {err}") from err
        indices = list(range(count)) if gpu_indices is None else list(gpu_indices)
        missing = [i for i in indices if not 0 <= i < count]
        if missing:
            raise HardwareError(
                f"power.gpu_indices {missing} not on this node: NVML sees {count} GPU(s) (0..{count - 1})"
            )
        gpus: list[_Gpu] = []
        for index in indices:
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = _text(nvml.nvmlDeviceGetName(handle))
            except nvml.NVMLError as err:
                raise HardwareError(f"GPU {index}: NVML cannot open the device: {err}") from err
            try:
                low_mw, high_mw = nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
                default_mw = nvml.nvmlDeviceGetPowerManagementDefaultLimit(handle)
                limits_supported = True
            except nvml.NVMLError_NotSupported:
                low_mw = high_mw = default_mw = 0
                limits_supported = False
            except nvml.NVMLError as err:
                raise HardwareError(f"GPU {index}: NVML cannot read power limits: {err}") from err
            gpus.append(
                _Gpu(
                    index=index,
                    handle=handle,
                    name=name,
                    limit_min_w=low_mw / _MW_PER_W,
                    limit_max_w=high_mw / _MW_PER_W,
                    default_limit_w=default_mw / _MW_PER_W,
                    limits_supported=limits_supported,
                )
            )
        return gpus

    async def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a worker thread holding the NVML lock."""

        def locked() -> T:
            with self._lock:
                if self._closed:
                    raise HardwareError("the NVML power meter is closed")
                return fn()

        return await asyncio.to_thread(locked)

    async def read(self) -> PowerSample:
        """Power, energy, utilisation and limits of every GPU.

        Raises:
            HardwareError: NVML failed to read a GPU (e.g. the GPU fell off the bus).
        """
        readings = await self._call(self._read_all)
        return PowerSample(time_s=self._clock.now_s(), source=self.source, gpus=tuple(readings))

    def _read_all(self) -> list[GpuReading]:
        return [self._read_one(gpu) for gpu in self._gpus]

    def _read_one(self, gpu: _Gpu) -> GpuReading:
        nvml = self._nvml
        try:
            power_w = nvml.nvmlDeviceGetPowerUsage(gpu.handle) / _MW_PER_W
        except nvml.NVMLError as err:
            raise HardwareError(f"GPU {gpu.index}: NVML cannot read power: {err}") from err
        now_s = self._clock.monotonic_s()
        energy_j = self._energy_j(gpu, power_w, now_s)
        utilization: float | None = None
        if gpu.utilization_supported:
            try:
                utilization = min(1.0, max(0.0, nvml.nvmlDeviceGetUtilizationRates(gpu.handle).gpu / 100.0))
            except nvml.NVMLError_NotSupported:
                gpu.utilization_supported = False
            except nvml.NVMLError as err:
                raise HardwareError(f"GPU {gpu.index}: NVML cannot read utilisation: {err}") from err
        limit_w = 0.0
        if gpu.limits_supported:
            try:
                limit_w = nvml.nvmlDeviceGetEnforcedPowerLimit(gpu.handle) / _MW_PER_W
            except nvml.NVMLError as err:
                raise HardwareError(f"GPU {gpu.index}: NVML cannot read the power limit: {err}") from err
        return GpuReading(
            index=gpu.index,
            name=gpu.name,
            power_w=power_w,
            energy_j=energy_j,
            utilization=utilization,
            power_limit_w=limit_w,
            power_limit_min_w=gpu.limit_min_w,
            power_limit_max_w=gpu.limit_max_w,
            energy_from_counter=gpu.counter_supported,
        )

    def _energy_j(self, gpu: _Gpu, power_w: float, now_s: float) -> float:
        """The hardware energy counter (Volta and newer), else power integrated with the trapezoid rule."""
        nvml = self._nvml
        if gpu.counter_supported:
            try:
                return float(nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle)) / _MJ_PER_J
            except nvml.NVMLError_NotSupported:
                gpu.counter_supported = False
                logger.info("GPU %d has no NVML energy counter; integrating its power instead", gpu.index)
            except nvml.NVMLError as err:
                raise HardwareError(f"GPU {gpu.index}: NVML cannot read the energy counter: {err}") from err
        if gpu.last_power_w is not None and gpu.last_s is not None and now_s > gpu.last_s:
            gpu.integrated_energy_j += 0.5 * (gpu.last_power_w + power_w) * (now_s - gpu.last_s)
        gpu.last_power_w = power_w
        gpu.last_s = now_s
        return gpu.integrated_energy_j

    def _gpu(self, gpu_index: int) -> _Gpu:
        for gpu in self._gpus:
            if gpu.index == gpu_index:
                return gpu
        known = ", ".join(str(g.index) for g in self._gpus) or "none"
        raise HardwareError(f"no GPU {gpu_index} in this meter (GPUs: {known})")

    async def set_power_limit_w(self, gpu_index: int, limit_w: float) -> float:
        """Cap one GPU's board power.

        Args:
            gpu_index: the NVML index (``GpuReading.index``).
            limit_w: the cap (W), within the card's range.

        Returns:
            The limit NVML now holds (W); NVML rounds to whole milliwatts.

        Raises:
            HardwareError: unknown GPU, a limit outside the card's range, no power management, or refused
                (setting limits needs root or CAP_SYS_ADMIN).
        """
        gpu = self._gpu(gpu_index)
        if not gpu.limits_supported:
            raise HardwareError(f"GPU {gpu_index} ({gpu.name}) does not support power limits")
        if not (math.isfinite(limit_w) and gpu.limit_min_w <= limit_w <= gpu.limit_max_w):
            raise HardwareError(
                f"GPU {gpu_index} power limit {limit_w} W is outside the card's range "
                f"{gpu.limit_min_w:g}..{gpu.limit_max_w:g} W"
            )
        applied_w = await self._call(functools.partial(self._set_limit, gpu, limit_w))
        logger.info("GPU %d power limit set to %.1f W", gpu_index, applied_w)
        return applied_w

    def _set_limit(self, gpu: _Gpu, limit_w: float) -> float:
        nvml = self._nvml
        try:
            nvml.nvmlDeviceSetPowerManagementLimit(gpu.handle, round(limit_w * _MW_PER_W))
        except nvml.NVMLError_NoPermission as err:
            raise HardwareError(
                f"GPU {gpu.index}: setting the power limit needs root or CAP_SYS_ADMIN ({err})"
            ) from err
        except nvml.NVMLError as err:
            raise HardwareError(f"GPU {gpu.index}: NVML refused power limit {limit_w} W: {err}") from err
        gpu.limit_changed = True
        try:
            return float(nvml.nvmlDeviceGetPowerManagementLimit(gpu.handle)) / _MW_PER_W
        except nvml.NVMLError as err:
            raise HardwareError(f"GPU {gpu.index}: NVML cannot read back the power limit: {err}") from err

    async def restore_power_limits(self) -> None:
        """Put every GPU whose limit this meter changed back to its default limit.

        GPUs this meter never capped are left alone (so a daemon without root never needs the permission).

        Raises:
            HardwareError: some GPUs could not be restored (each is still tried; the message lists them).
        """
        changed = [gpu for gpu in self._gpus if gpu.limit_changed]
        failures: list[str] = []
        for gpu in changed:
            try:
                await self._call(functools.partial(self._set_limit, gpu, gpu.default_limit_w))
            except HardwareError as err:
                failures.append(str(err))
                continue
            gpu.limit_changed = False
            logger.info("GPU %d power limit restored to its default %.1f W", gpu.index, gpu.default_limit_w)
        if failures:
            raise HardwareError("could not restore power limits: " + "; ".join(failures))

    def describe(self) -> dict[str, object]:
        """The meter, its GPUs and their limit ranges (for /v1/status)."""
        return {
            "source": self.source,
            "gpus": [
                {
                    "index": gpu.index,
                    "name": gpu.name,
                    "power_limit_min_w": gpu.limit_min_w,
                    "power_limit_max_w": gpu.limit_max_w,
                    "power_limit_default_w": gpu.default_limit_w,
                    "power_limits_supported": gpu.limits_supported,
                    "energy_from_counter": gpu.counter_supported,
                }
                for gpu in self._gpus
            ],
        }

    async def close(self) -> None:
        """Shut NVML down (idempotent). Limits are not restored here: see :meth:`restore_power_limits`."""
        if self._closed:
            return

        def shutdown() -> None:
            with self._lock:
                if not self._closed:
                    self._closed = True
                    _shutdown_quietly(self._nvml)

        await asyncio.to_thread(shutdown)


def _shutdown_quietly(nvml: NvmlModule) -> None:
    try:
        nvml.nvmlShutdown()
    except nvml.NVMLError as err:
        logger.warning("NVML shutdown failed: %s", err)


def _text(value: object) -> str:
    """NVML strings are bytes in older nvidia-ml-py releases and str in newer ones."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
