"""Demand response on a real NVIDIA GPU: an event caps the card through NVML, the end of the event restores
it, and a limit a crashed daemon left behind is restored at the next start. Needs root (CAP_SYS_ADMIN)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenferry.adapters.nvml import load_nvml_module
from greenferry.config import DaemonConfig, config_from_mapping
from greenferry.core.dr import parse_dr_event
from greenferry.daemon.app import NodeDaemon, running_daemon
from greenferry.daemon.dr import CapJournal
from greenferry.testing.cluster import run_example_job
from greenferry.testing.dr_events import simple_event
from greenferry.testing.wait import until

pytestmark = pytest.mark.gpu

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "numpy_job.py"


@pytest.fixture
def nvml() -> Iterator[Any]:
    """Our own NVML handle on GPU 0, to check the daemon independently; leaves the card as found."""
    module = load_nvml_module()
    module.nvmlInit()
    handle = module.nvmlDeviceGetHandleByIndex(0)
    original_mw = module.nvmlDeviceGetPowerManagementLimit(handle)
    try:
        module.nvmlDeviceSetPowerManagementLimit(handle, original_mw)
    except module.NVMLError as err:
        module.nvmlShutdown()
        pytest.skip(f"this process may not set power limits (uid {os.geteuid()}): {err}")
    try:
        yield module
    finally:
        module.nvmlDeviceSetPowerManagementLimit(handle, original_mw)
        module.nvmlShutdown()


def _config(tmp_path: Path) -> DaemonConfig:
    return config_from_mapping(
        {
            "node": {
                "name": "gpu-dr",
                "site": "lab",
                "gpu_count": 1,
                "data_dir": str(tmp_path / "data"),
                "policy": "static",
                "decision_interval_s": 0.2,
            },
            "power": {"source": "nvml", "gpu_indices": [0], "interval_s": 0.2},
            "http": {"enabled": False},
            "migration": {"checkpoint_write_s": 0.5, "restore_s": 0.5},
        },
        environ={},
    )


def _event(event_id: str, level: int, *, cancelled: bool = False) -> Any:
    return parse_dr_event(json.loads(simple_event(event_id, time.time() - 1, level, cancelled=cancelled)))


async def test_an_event_caps_the_real_card_and_its_end_restores_it(tmp_path: Path, nvml: Any) -> None:
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    original_mw = nvml.nvmlDeviceGetPowerManagementLimit(handle)
    low_mw, _ = nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
    daemon = NodeDaemon(_config(tmp_path))
    async with running_daemon(daemon):
        dr = daemon._components["dr"]
        await run_example_job(daemon, "gpu")
        dr.submit(_event("gpu-ev", 1))
        await until(lambda: dr.status()["power_caps_w"], 10, "a cap")
        capped_mw = nvml.nvmlDeviceGetPowerManagementLimit(handle)
        assert low_mw <= capped_mw < original_mw
        assert round(dr.status()["power_caps_w"]["0"] * 1000) == capped_mw
        dr.submit(_event("gpu-ev", 1, cancelled=True))
        await until(lambda: not dr.status()["journaled_gpus"], 10, "the limit restored")
        assert nvml.nvmlDeviceGetPowerManagementLimit(handle) == original_mw


async def test_a_limit_left_by_a_crash_is_restored_at_start(tmp_path: Path, nvml: Any) -> None:
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    original_mw = nvml.nvmlDeviceGetPowerManagementLimit(handle)
    low_mw, _ = nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
    config = _config(tmp_path)
    journal = CapJournal(config.node.data_dir / "dr.sqlite")
    journal.record([(0, original_mw / 1000, low_mw / 1000)], "crashed", time.time())
    journal.close()
    nvml.nvmlDeviceSetPowerManagementLimit(handle, low_mw)  # what the crashed daemon left on the card
    async with running_daemon(NodeDaemon(config)):
        assert nvml.nvmlDeviceGetPowerManagementLimit(handle) == original_mw
