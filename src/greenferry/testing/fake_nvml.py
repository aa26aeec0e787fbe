"""A fake ``pynvml`` for tests and benches: the one hardware boundary that cannot exist on a machine without
an NVIDIA GPU. Same function names, same units (mW, mJ, percent) and the same error classes as nvidia-ml-py.

``FakeDevice.follows_limit`` makes the reported power never exceed the power limit in force, as a real card
under a cap behaves.
"""

# ruff: noqa: N802  (the fake's method names are pynvml's)

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace

__all__ = [
    "FakeDevice",
    "FakeNvml",
    "GpuIsLostError",
    "InvalidArgumentError",
    "LibraryNotFoundError",
    "NVMLError",
    "NoPermissionError",
    "NotSupportedError",
    "UninitializedError",
]


class NVMLError(Exception):
    """Like pynvml.NVMLError: carries NVML's return code in ``value``."""

    message = "Unknown Error"

    def __init__(self, value: int = 999) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return self.message


class NotSupportedError(NVMLError):
    message = "Not Supported"


class NoPermissionError(NVMLError):
    message = "Insufficient Permissions"


class LibraryNotFoundError(NVMLError):
    message = "NVML Shared Library Not Found"


class UninitializedError(NVMLError):
    message = "Uninitialized"


class GpuIsLostError(NVMLError):
    message = "GPU is lost"


class InvalidArgumentError(NVMLError):
    message = "Invalid Argument"


@dataclass
class FakeDevice:
    """One GPU as NVML reports it, in NVML's units (mW, mJ, percent)."""

    name: str = "NVIDIA H100 80GB HBM3"
    power_mw: int = 350_000
    energy_mj: int | None = 1_000_000  # None: no energy counter (pre-Volta)
    utilization_percent: int | None = 50  # None: not supported
    limit_mw: int = 700_000
    min_mw: int = 200_000
    max_mw: int = 700_000
    default_mw: int = 700_000
    limits_supported: bool = True
    may_set_limit: bool = True
    lost: bool = False
    follows_limit: bool = False


@dataclass
class FakeNvml:
    """The subset of pynvml the adapter calls, with the same names and error classes."""

    devices: list[FakeDevice] = field(default_factory=lambda: [FakeDevice()])
    init_error: NVMLError | None = None
    initialized: int = 0
    init_calls: int = 0
    call_threads: set[int] = field(default_factory=set)
    set_calls: list[tuple[int, int]] = field(default_factory=list)

    NVMLError = NVMLError
    NVMLError_NotSupported = NotSupportedError
    NVMLError_NoPermission = NoPermissionError
    NVMLError_LibraryNotFound = LibraryNotFoundError
    NVMLError_Uninitialized = UninitializedError
    NVMLError_GpuIsLost = GpuIsLostError

    def _enter(self) -> None:
        self.call_threads.add(threading.get_ident())
        if self.initialized <= 0:
            raise UninitializedError(1)

    def _device(self, handle: int) -> FakeDevice:
        self._enter()
        device = self.devices[handle]
        if device.lost:
            raise GpuIsLostError(15)
        return device

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise self.init_error
        self.initialized += 1

    def nvmlShutdown(self) -> None:
        self._enter()
        self.initialized -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter()
        return "550.54.15"

    def nvmlDeviceGetCount(self) -> int:
        self._enter()
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._enter()
        if not 0 <= index < len(self.devices):
            raise InvalidArgumentError(2)
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return self._device(handle).name.encode()  # older nvidia-ml-py returns bytes

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        device = self._device(handle)
        return min(device.power_mw, device.limit_mw) if device.follows_limit else device.power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        device = self._device(handle)
        if device.energy_mj is None:
            raise NotSupportedError(3)
        return device.energy_mj

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        device = self._device(handle)
        if device.utilization_percent is None:
            raise NotSupportedError(3)
        return SimpleNamespace(gpu=device.utilization_percent, memory=10)

    def _limits(self, handle: int) -> FakeDevice:
        device = self._device(handle)
        if not device.limits_supported:
            raise NotSupportedError(3)
        return device

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return self._limits(handle).limit_mw

    def nvmlDeviceGetPowerManagementLimit(self, handle: int) -> int:
        return self._limits(handle).limit_mw

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: int) -> list[int]:
        device = self._limits(handle)
        return [device.min_mw, device.max_mw]

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: int) -> int:
        return self._limits(handle).default_mw

    def nvmlDeviceSetPowerManagementLimit(self, handle: int, limit_mw: int) -> None:
        device = self._limits(handle)
        if not device.may_set_limit:
            raise NoPermissionError(4)
        if not device.min_mw <= limit_mw <= device.max_mw:
            raise InvalidArgumentError(2)
        self.set_calls.append((handle, limit_mw))
        device.limit_mw = limit_mw
