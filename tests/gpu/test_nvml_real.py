"""NvmlPowerMeter on a real NVIDIA GPU: readings, and a power cap set, verified and restored."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from greenferry.adapters.nvml import NvmlPowerMeter, load_nvml_module, probe_nvml
from greenferry.config import config_from_mapping
from greenferry.daemon.clock import RealClock
from greenferry.daemon.power import open_power_meter
from greenferry.errors import HardwareError

pytestmark = pytest.mark.gpu


@pytest.fixture
async def meter() -> AsyncIterator[NvmlPowerMeter]:
    nvml_meter = NvmlPowerMeter(RealClock(), gpu_indices=[0])
    yield nvml_meter
    await nvml_meter.close()


def test_probe_names_the_devices() -> None:
    found = probe_nvml()
    assert "GPU(s): 0 " in found


async def test_reads_power_energy_and_limits(meter: NvmlPowerMeter) -> None:
    first = await meter.read()
    await asyncio.sleep(0.2)
    second = await meter.read()
    (gpu,) = second.gpus
    assert gpu.index == 0
    assert gpu.name
    assert 0 < gpu.power_w < 2000  # W, not mW
    assert gpu.energy_j >= first.gpus[0].energy_j >= 0
    assert gpu.utilization is None or 0.0 <= gpu.utilization <= 1.0
    assert 0 < gpu.power_limit_min_w <= gpu.power_limit_w <= gpu.power_limit_max_w < 2000


async def test_auto_picks_nvml_on_a_gpu_node(tmp_path: Path) -> None:
    config = config_from_mapping(
        {"node": {"name": "n1", "site": "s1", "data_dir": str(tmp_path)}, "power": {"rapl": False}},
        environ={},
    )
    auto = open_power_meter(config, RealClock())
    try:
        assert isinstance(auto, NvmlPowerMeter)
        assert (await auto.read()).source == "nvml"
    finally:
        await auto.close()


async def test_set_a_limit_verify_it_with_nvml_and_restore_it(meter: NvmlPowerMeter) -> None:
    nvml = load_nvml_module()
    nvml.nvmlInit()  # our own reference, to check what the meter did independently of it
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(0)
        original_mw = nvml.nvmlDeviceGetPowerManagementLimit(handle)
        default_mw = nvml.nvmlDeviceGetPowerManagementDefaultLimit(handle)
        (gpu,) = (await meter.read()).gpus
        target_w = max(gpu.power_limit_min_w, gpu.power_limit_w - 10.0)
        try:
            applied_w = await meter.set_power_limit_w(0, target_w)
        except HardwareError as err:
            if "CAP_SYS_ADMIN" in str(err):  # not root, or a container without the capability
                pytest.skip(f"this process may not set power limits (uid {os.geteuid()}): {err}")
            raise
        try:
            assert applied_w == pytest.approx(target_w, abs=0.001)
            assert nvml.nvmlDeviceGetPowerManagementLimit(handle) == round(target_w * 1000)
            with pytest.raises(HardwareError, match="outside the card's range"):
                await meter.set_power_limit_w(0, gpu.power_limit_max_w + 1.0)
        finally:
            await meter.restore_power_limits()
        assert nvml.nvmlDeviceGetPowerManagementLimit(handle) == default_mw
        if original_mw != default_mw:  # leave the card as we found it
            nvml.nvmlDeviceSetPowerManagementLimit(handle, original_mw)
    finally:
        nvml.nvmlShutdown()
