"""NvmlPowerMeter against a fake ``pynvml`` (the one hardware boundary that cannot exist here), and the
real pynvml's "no NVML" path, which does exist here."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from greenferry.adapters.nvml import NvmlPowerMeter, load_nvml_module, probe_nvml
from greenferry.config import DaemonConfig, config_from_mapping
from greenferry.daemon.power import HostPowerMeter, ModelPowerMeter, open_power_meter
from greenferry.errors import HardwareError, ServiceUnavailableError
from greenferry.testing.clock import ManualClock
from greenferry.testing.fake_nvml import FakeDevice, FakeNvml
from greenferry.testing.fake_nvml import GpuIsLostError as _GpuIsLostError
from greenferry.testing.fake_nvml import LibraryNotFoundError as _LibraryNotFoundError
from greenferry.testing.fake_nvml import NoPermissionError as _NoPermissionError


def _meter(nvml: FakeNvml, clock: ManualClock | None = None, **kwargs: object) -> NvmlPowerMeter:
    return NvmlPowerMeter(clock or ManualClock(), nvml=nvml, **kwargs)  # type: ignore[arg-type]


def _real_nvml_loads() -> bool:
    try:
        probe_nvml()
    except ServiceUnavailableError:
        return False
    return True


async def test_units_are_converted_once_to_si() -> None:
    nvml = FakeNvml(
        [FakeDevice(power_mw=123_456, energy_mj=5_000_250, utilization_percent=87, limit_mw=650_000)]
    )
    clock = ManualClock()
    meter = _meter(nvml, clock)
    sample = await meter.read()
    (gpu,) = sample.gpus
    assert sample.source == "nvml"
    assert sample.time_s == clock.now_s()
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.power_w == pytest.approx(123.456)
    assert gpu.energy_j == pytest.approx(5000.25)
    assert gpu.energy_from_counter is True
    assert gpu.utilization == pytest.approx(0.87)
    assert gpu.power_limit_w == pytest.approx(650.0)
    assert (gpu.power_limit_min_w, gpu.power_limit_max_w) == (200.0, 700.0)
    await meter.close()


async def test_nvml_calls_run_off_the_event_loop_thread() -> None:
    nvml = FakeNvml()
    meter = _meter(nvml)
    nvml.call_threads.clear()
    await meter.read()
    await meter.set_power_limit_w(0, 300.0)
    assert nvml.call_threads
    assert threading.get_ident() not in nvml.call_threads
    await meter.close()


async def test_energy_is_integrated_when_the_counter_is_not_supported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    device = FakeDevice(energy_mj=None, power_mw=100_000)
    nvml = FakeNvml([device])
    clock = ManualClock()
    meter = _meter(nvml, clock)
    with caplog.at_level(logging.INFO, logger="greenferry"):
        first = (await meter.read()).gpus[0]
        clock.advance(10.0)
        device.power_mw = 200_000
        second = (await meter.read()).gpus[0]
        clock.advance(5.0)
        third = (await meter.read()).gpus[0]
    assert first.energy_from_counter is False
    assert first.energy_j == 0.0
    assert second.energy_j == pytest.approx(0.5 * (100 + 200) * 10)  # trapezoid over the interval
    assert third.energy_j == pytest.approx(1500 + 200 * 5)
    counter_lines = [r for r in caplog.records if "energy counter" in r.getMessage()]
    assert len(counter_lines) == 1
    await meter.close()


async def test_unsupported_utilisation_is_none_and_power_limits_unsupported_refuse_caps() -> None:
    nvml = FakeNvml([FakeDevice(utilization_percent=None, limits_supported=False)])
    meter = _meter(nvml)
    (gpu,) = (await meter.read()).gpus
    assert gpu.utilization is None
    assert gpu.power_limit_w == 0.0
    with pytest.raises(HardwareError, match="does not support power limits"):
        await meter.set_power_limit_w(0, 300.0)
    assert meter.describe()["gpus"] == [
        {
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "power_limit_min_w": 0.0,
            "power_limit_max_w": 0.0,
            "power_limit_default_w": 0.0,
            "power_limits_supported": False,
            "energy_from_counter": True,
        }
    ]
    await meter.close()


async def test_gpu_indices_select_devices_and_unknown_ones_fail() -> None:
    nvml = FakeNvml([FakeDevice(name="A"), FakeDevice(name="B"), FakeDevice(name="C")])
    meter = _meter(nvml, gpu_indices=[2, 0])
    sample = await meter.read()
    assert [(g.index, g.name) for g in sample.gpus] == [(2, "C"), (0, "A")]
    await meter.close()
    with pytest.raises(HardwareError, match=r"gpu_indices \[5\].*3 GPU"):
        _meter(nvml, gpu_indices=[0, 5])
    assert nvml.initialized == 0  # the failed open shut NVML down again


async def test_set_power_limit_converts_to_milliwatts_and_reads_back() -> None:
    nvml = FakeNvml()
    meter = _meter(nvml)
    applied_w = await meter.set_power_limit_w(0, 412.5)
    assert applied_w == 412.5
    assert nvml.set_calls == [(0, 412_500)]
    assert (await meter.read()).gpus[0].power_limit_w == 412.5
    await meter.close()


@pytest.mark.parametrize("limit_w", [199.9, 700.1, float("nan"), float("inf")])
async def test_limits_outside_the_range_are_refused_without_calling_nvml(limit_w: float) -> None:
    nvml = FakeNvml()
    meter = _meter(nvml)
    with pytest.raises(HardwareError, match=r"outside the card's range 200\.\.700 W"):
        await meter.set_power_limit_w(0, limit_w)
    assert nvml.set_calls == []
    with pytest.raises(HardwareError, match="no GPU 3"):
        await meter.set_power_limit_w(3, 300.0)
    await meter.close()


async def test_no_permission_becomes_a_hardware_error_naming_the_capability() -> None:
    nvml = FakeNvml([FakeDevice(may_set_limit=False)])
    meter = _meter(nvml)
    with pytest.raises(HardwareError, match="needs root or CAP_SYS_ADMIN") as info:
        await meter.set_power_limit_w(0, 300.0)
    assert isinstance(info.value.__cause__, _NoPermissionError)
    await meter.restore_power_limits()  # nothing was changed, so nothing needs the permission
    await meter.close()


async def test_restore_puts_only_changed_gpus_back_to_their_default() -> None:
    locked = FakeDevice(may_set_limit=False, limit_mw=650_000)
    nvml = FakeNvml([FakeDevice(default_mw=690_000), locked, FakeDevice(default_mw=700_000)])
    meter = _meter(nvml)
    await meter.set_power_limit_w(0, 300.0)
    await meter.set_power_limit_w(2, 250.0)
    nvml.set_calls.clear()
    await meter.restore_power_limits()
    assert sorted(nvml.set_calls) == [(0, 690_000), (2, 700_000)]
    assert locked.limit_mw == 650_000
    nvml.set_calls.clear()
    await meter.restore_power_limits()  # already restored: nothing to do
    assert nvml.set_calls == []
    await meter.close()


async def test_restore_tries_every_gpu_and_reports_the_failures() -> None:
    first, second = FakeDevice(), FakeDevice()
    nvml = FakeNvml([first, second])
    meter = _meter(nvml)
    await meter.set_power_limit_w(0, 300.0)
    await meter.set_power_limit_w(1, 300.0)
    first.may_set_limit = False
    with pytest.raises(HardwareError, match=r"GPU 0.*CAP_SYS_ADMIN"):
        await meter.restore_power_limits()
    assert second.limit_mw == second.default_mw
    await meter.close()


async def test_a_lost_gpu_is_a_hardware_error_with_the_nvml_cause() -> None:
    device = FakeDevice()
    nvml = FakeNvml([device])
    meter = _meter(nvml)
    device.lost = True
    with pytest.raises(HardwareError, match="GPU 0: NVML cannot read power: GPU is lost") as info:
        await meter.read()
    assert isinstance(info.value.__cause__, _GpuIsLostError)
    await meter.close()


async def test_close_shuts_nvml_down_once_and_later_reads_fail_clearly() -> None:
    nvml = FakeNvml()
    meter = _meter(nvml)
    assert nvml.initialized == 1
    await meter.close()
    await meter.close()
    assert nvml.initialized == 0
    with pytest.raises(HardwareError, match="closed"):
        await meter.read()


def test_init_failure_is_service_unavailable_with_nvmls_message() -> None:
    nvml = FakeNvml(init_error=_LibraryNotFoundError(12))
    with pytest.raises(ServiceUnavailableError, match="NVML does not load: NVML Shared Library Not Found"):
        _meter(nvml)
    with pytest.raises(ServiceUnavailableError, match="NVML Shared Library Not Found"):
        probe_nvml(nvml)


def test_probe_lists_devices_and_shuts_down() -> None:
    nvml = FakeNvml([FakeDevice(name="NVIDIA L4"), FakeDevice(name="NVIDIA L4")])
    assert probe_nvml(nvml) == "NVML driver 550.54.15: 2 GPU(s): 0 NVIDIA L4, 1 NVIDIA L4"
    assert nvml.initialized == 0


# -- the real pynvml on this machine (no driver, no library) ------------------------------------------------


def _config(tmp_path: Path, **power: object) -> DaemonConfig:
    return config_from_mapping(
        {
            "node": {"name": "n1", "site": "s1", "gpu_count": 2, "data_dir": str(tmp_path)},
            "power": {"rapl": False, **power},
        },
        environ={},
    )


@pytest.mark.skipif(_real_nvml_loads(), reason="NVML loads here: the no-NVML path cannot be seen")
def test_real_pynvml_without_a_gpu_raises_service_unavailable() -> None:
    module = load_nvml_module()
    with pytest.raises(ServiceUnavailableError, match="NVML Shared Library Not Found") as info:
        probe_nvml()
    assert isinstance(info.value.__cause__, module.NVMLError_LibraryNotFound)


@pytest.mark.skipif(_real_nvml_loads(), reason="NVML loads here: the no-NVML path cannot be seen")
async def test_auto_falls_back_to_the_model_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="greenferry"):
        meter = open_power_meter(_config(tmp_path, source="auto"), ManualClock())
    assert isinstance(meter, ModelPowerMeter)
    assert meter.gpu_count == 2
    assert meter.profile.name == "h100-sxm"
    lines = [r for r in caplog.records if r.name.startswith("greenferry")]
    assert len(lines) == 1
    assert lines[0].levelno == logging.WARNING
    assert "NVML Shared Library Not Found" in lines[0].getMessage()
    assert "model" in lines[0].getMessage()
    await meter.close()


@pytest.mark.skipif(_real_nvml_loads(), reason="NVML loads here: the no-NVML path cannot be seen")
def test_source_nvml_fails_when_nvml_does_not_load(tmp_path: Path) -> None:
    with pytest.raises(ServiceUnavailableError, match="NVML Shared Library Not Found"):
        open_power_meter(_config(tmp_path, source="nvml"), ManualClock())


async def test_open_power_meter_uses_nvml_when_it_loads(tmp_path: Path) -> None:
    nvml = FakeNvml([FakeDevice(), FakeDevice()])
    meter = open_power_meter(_config(tmp_path, source="auto", gpu_indices=[1]), ManualClock(), nvml=nvml)
    assert isinstance(meter, NvmlPowerMeter)
    assert [g.index for g in (await meter.read()).gpus] == [1]
    await meter.close()


async def test_source_model_never_touches_nvml(tmp_path: Path) -> None:
    nvml = FakeNvml()
    meter = open_power_meter(_config(tmp_path, source="model"), ManualClock(), nvml=nvml)
    assert isinstance(meter, ModelPowerMeter)
    assert nvml.init_calls == 0
    assert not isinstance(meter, HostPowerMeter)
