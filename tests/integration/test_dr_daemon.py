"""Demand response in a real daemon: events over a real Mosquitto, a real training job, GPU caps through the
NVML adapter (pynvml faked at the library boundary: there is no GPU here; tests/gpu has the real call)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from greenferry.adapters.nvml import NvmlPowerMeter
from greenferry.config import DaemonConfig, config_from_mapping
from greenferry.core.jobs import JobState
from greenferry.daemon.app import NodeDaemon, running_daemon
from greenferry.daemon.clock import RealClock
from greenferry.daemon.dr import CapJournal
from greenferry.testing.clock import ManualClock
from greenferry.testing.cluster import run_example_job
from greenferry.testing.dr_events import openadr3_event as event
from greenferry.testing.fake_nvml import FakeDevice, FakeNvml
from greenferry.testing.services import Mosquitto
from greenferry.testing.wait import until as _until

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "numpy_job.py"


def _config(tmp_path: Path, broker: Mosquitto, prefix: str, **dr: Any) -> DaemonConfig:
    return config_from_mapping(
        {
            "node": {
                "name": "dr-node",
                "site": "caiso",
                "hardware_profile": "h100-sxm",
                "gpu_count": 2,
                "data_dir": str(tmp_path / "data"),
                "policy": "static",
                "decision_interval_s": 0.2,
            },
            "mqtt": {
                "port": broker.port,
                "topic_prefix": prefix,
                "reconnect_min_s": 0.05,
                "reconnect_max_s": 0.5,
                "status_interval_s": 1,
            },
            "signals": {"demand_response": {"topic": f"{prefix}/dr", "format": "greenferry"}},
            "power": {"source": "nvml", "interval_s": 0.1, "rapl": False},
            "http": {"enabled": False},
            # The example job checkpoints in well under a second: short events can still be met by pausing.
            "migration": {"checkpoint_write_s": 0.5, "restore_s": 0.5},
            "dr": {"baseline_window_s": 5, **dr},
        },
        environ={},
    )


def _devices(**kw: Any) -> list[FakeDevice]:
    return [FakeDevice(power_mw=600_000, follows_limit=True, **kw) for _ in range(2)]


@pytest.fixture
def prefix() -> str:
    return f"gfdr/{uuid.uuid4().hex[:10]}"


class Node:
    """A running daemon with its fake NVML and helpers to reach its DR state."""

    def __init__(self, daemon: NodeDaemon, nvml: FakeNvml) -> None:
        self.daemon = daemon
        self.nvml = nvml

    @property
    def dr(self) -> Any:
        return self.daemon._components["dr"]

    @property
    def orchestrator(self) -> Any:
        return self.daemon._components["orchestrator"]

    def limits_w(self) -> list[float]:
        return [d.limit_mw / 1000 for d in self.nvml.devices]

    def job_state(self, job_id: str) -> JobState:
        return self.orchestrator._jobs[job_id].state


@pytest.fixture
async def node(
    tmp_path: Path, mosquitto: Mosquitto, prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[Node]:
    marker = request.node.get_closest_marker("dr")
    dr = dict(marker.kwargs) if marker is not None else {}
    devices = dr.pop("devices", None) or _devices()
    nvml = FakeNvml(devices)
    config = _config(tmp_path, mosquitto, prefix, **dr)
    clock = RealClock()
    meter = NvmlPowerMeter(clock, nvml=nvml)
    daemon = NodeDaemon(config, clock=clock, meter=meter)
    async with running_daemon(daemon):
        yield Node(daemon, nvml)
    await meter.close()


async def _publish(broker: Mosquitto, prefix: str, payload: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.publish(f"{prefix}/dr", payload, qos=1)


async def _running_job(node: Node) -> str:
    return await run_example_job(node.daemon, "train", gpu_count=2)


async def test_a_simple_event_caps_the_gpus_and_the_limits_come_back_after_it(
    node: Node, mosquitto: Mosquitto, prefix: str
) -> None:
    await _running_job(node)
    start = time.time()
    await _publish(mosquitto, prefix, event("ev-cap", start - 1, 4, {"type": "SIMPLE", "values": [1]}))
    await _until(lambda: max(node.limits_w()) < 700, 10, "the caps")
    limits = node.limits_w()
    assert all(200 <= w < 700 for w in limits)
    decision = node.dr.decision("ev-cap")
    assert decision.opt_in
    # Level 1 sheds a quarter of what the node could shed, by capping only (the cheapest way).
    assert node.dr.status()["paused_jobs"] == []
    assert decision.planned_shed_w == pytest.approx(decision.requested_shed_w, rel=1e-6)
    assert decision.requested_shed_w > 0
    # Measured: the fake card draws at most its limit, so the node really draws less.
    await _until(lambda: (node.dr.decision("ev-cap").delivered_w or 0) > 0, 10, "a measured reduction")
    await _until(lambda: node.limits_w() == [700.0, 700.0], 15, "the limits restored")
    assert node.dr.decision("ev-cap").ended
    assert CapJournal(node.daemon.config.node.data_dir / "dr.sqlite").originals() == {}


async def test_a_level_3_event_pauses_the_job_at_a_checkpoint_and_resumes_it_after(
    node: Node, mosquitto: Mosquitto, prefix: str
) -> None:
    job_id = await _running_job(node)
    start = time.time()
    # Level 3 asks for everything the node can shed; pausing bites after the checkpoint, so the event must
    # be long enough for the 0.5 s checkpoint to leave 95 % of it.
    await _publish(mosquitto, prefix, event("ev-pause", start - 1, 15, {"type": "SIMPLE", "values": [3]}))
    await _until(lambda: node.job_state(job_id) is JobState.PAUSED, 30, "the job paused")
    info = node.orchestrator._jobs[job_id]
    assert info.checkpoint_step is not None
    assert node.dr.status()["paused_jobs"] == [job_id]
    assert node.limits_w() == [700.0, 700.0]  # nothing capped: the job is not running
    await _until(lambda: node.job_state(job_id) is JobState.RUNNING, 30, "the job resumed after the event")
    assert node.dr.status()["paused_jobs"] == []


async def test_cancelling_an_active_event_restores_at_once(
    node: Node, mosquitto: Mosquitto, prefix: str
) -> None:
    await _running_job(node)
    start = time.time()
    payload = {"type": "SIMPLE", "values": [1]}
    await _publish(mosquitto, prefix, event("ev-x", start - 1, 3600, payload))
    await _until(lambda: max(node.limits_w()) < 700, 10, "the caps")
    await _publish(mosquitto, prefix, event("ev-x", start - 1, 3600, payload, modification=1, cancelled=True))
    await _until(lambda: node.limits_w() == [700.0, 700.0], 10, "the limits restored on cancellation")
    assert node.dr.book.get("ev-x") is None


async def test_a_modification_that_shrinks_an_active_event_replans(
    node: Node, mosquitto: Mosquitto, prefix: str
) -> None:
    await _running_job(node)
    start = time.time()
    await _publish(mosquitto, prefix, event("ev-m", start - 1, 3600, {"type": "SIMPLE", "values": [2]}))
    await _until(lambda: max(node.limits_w()) < 700, 10, "the caps")
    deep = max(node.limits_w())
    await _publish(
        mosquitto, prefix, event("ev-m", start - 1, 3600, {"type": "SIMPLE", "values": [1]}, modification=1)
    )
    await _until(lambda: max(node.limits_w()) > deep, 10, "shallower caps")
    assert max(node.limits_w()) < 700
    # A stale copy of the older version changes nothing.
    await _publish(mosquitto, prefix, event("ev-m", start - 1, 3600, {"type": "SIMPLE", "values": [3]}))
    await asyncio.sleep(0.5)
    assert max(node.limits_w()) > deep
    assert node.dr.book.get("ev-m").modification_number == 1


async def test_overlapping_events_the_node_meets_the_one_it_can_and_opts_out_of_the_other(
    node: Node, mosquitto: Mosquitto, prefix: str
) -> None:
    await _running_job(node)
    start = time.time()
    await _publish(mosquitto, prefix, event("ev-a", start - 1, 3600, {"type": "SIMPLE", "values": [1]}))
    # 100 kW below the baseline: impossible for a two-GPU node.
    await _publish(
        mosquitto,
        prefix,
        event("ev-b", start - 1, 3600, {"type": "DISPATCH_SETPOINT_RELATIVE", "values": [-100]}, units="KW"),
    )
    await _until(lambda: node.dr.decision("ev-b") is not None, 10, "a decision on ev-b")
    await _until(lambda: max(node.limits_w()) < 700, 10, "the caps for ev-a")
    assert node.dr.decision("ev-a").opt_in
    b = node.dr.decision("ev-b")
    assert not b.opt_in
    assert "at most" in b.reason


async def test_events_in_the_past_change_nothing(node: Node, mosquitto: Mosquitto, prefix: str) -> None:
    await _running_job(node)
    now = time.time()
    await _publish(mosquitto, prefix, event("ev-old", now - 7200, 3600, {"type": "SIMPLE", "values": [3]}))
    await _publish(mosquitto, prefix, event("ev-future", now + 3600, 60, {"type": "SIMPLE", "values": [3]}))
    await _until(lambda: node.dr.book.get("ev-future") is not None, 10, "the future event in the book")
    await asyncio.sleep(0.5)
    assert node.limits_w() == [700.0, 700.0]
    assert node.dr.status()["paused_jobs"] == []
    assert node.dr.book.get("ev-old") is None


@pytest.mark.dr(
    devices=[FakeDevice(power_mw=600_000, follows_limit=True, may_set_limit=False) for _ in range(2)]
)
async def test_a_power_limit_nvml_refuses_falls_back_to_pausing(
    node: Node, mosquitto: Mosquitto, prefix: str
) -> None:
    job_id = await _running_job(node)
    start = time.time()
    await _publish(mosquitto, prefix, event("ev-r", start - 1, 4, {"type": "SIMPLE", "values": [1]}))
    await _until(lambda: node.job_state(job_id) is JobState.PAUSED, 30, "the job paused instead")
    assert node.dr.decision("ev-r").opt_in
    assert node.limits_w() == [700.0, 700.0]
    assert CapJournal(node.daemon.config.node.data_dir / "dr.sqlite").originals() == {}
    await _until(lambda: node.job_state(job_id) is JobState.RUNNING, 30, "the job resumed after the event")
    assert node.daemon.state == "online"


async def test_limits_a_crash_left_behind_are_restored_at_the_next_start(
    tmp_path: Path, mosquitto: Mosquitto, prefix: str
) -> None:
    # A daemon capped GPU 1 to 300 W, journaled it, and died (no shutdown ran): the card keeps the cap.
    nvml = FakeNvml(_devices())
    nvml.devices[1].limit_mw = 300_000
    config = _config(tmp_path, mosquitto, prefix)
    journal = CapJournal(config.node.data_dir / "dr.sqlite")
    journal.record([(1, 700.0, 300.0)], "ev-crash", time.time())
    journal.close()
    meter = NvmlPowerMeter(ManualClock(), nvml=nvml)
    daemon = NodeDaemon(config, meter=meter)
    async with running_daemon(daemon):
        assert [d.limit_mw for d in nvml.devices] == [700_000, 700_000]
        assert daemon._components["dr"].status()["pending_restores"] == []
    await meter.close()
    assert CapJournal(config.node.data_dir / "dr.sqlite").originals() == {}


async def test_a_shutdown_mid_event_restores_the_limits(
    tmp_path: Path, mosquitto: Mosquitto, prefix: str
) -> None:
    nvml = FakeNvml(_devices())
    config = _config(tmp_path, mosquitto, prefix)
    meter = NvmlPowerMeter(ManualClock(), nvml=nvml)
    daemon = NodeDaemon(config, meter=meter)
    async with running_daemon(daemon):
        node = Node(daemon, nvml)
        await _running_job(node)
        await _publish(
            mosquitto, prefix, event("ev-s", time.time() - 1, 3600, {"type": "SIMPLE", "values": [1]})
        )
        await _until(lambda: max(node.limits_w()) < 700, 10, "the caps")
    assert [d.limit_mw for d in nvml.devices] == [700_000, 700_000]
    await meter.close()


@pytest.mark.dr(enabled=False)
async def test_disabled_demand_response_opts_out_and_touches_nothing(
    node: Node, mosquitto: Mosquitto, prefix: str
) -> None:
    await _running_job(node)
    await _publish(mosquitto, prefix, event("ev-d", time.time() - 1, 60, {"type": "SIMPLE", "values": [3]}))
    await _until(lambda: node.dr.decision("ev-d") is not None, 10, "a decision")
    assert not node.dr.decision("ev-d").opt_in
    await asyncio.sleep(0.3)
    assert node.limits_w() == [700.0, 700.0]


@pytest.mark.filterwarnings(
    "ignore:It is recommended to use web.AppKey instances for keys:aiohttp.web_exceptions.NotAppKeyWarning"
)
async def test_an_openadr_vtn_event_is_answered_by_the_planner_and_capped(
    tmp_path: Path, mosquitto: Mosquitto, prefix: str
) -> None:
    from test_openadr_ven import VEN_NAME, Vtn, signal_event

    from greenferry.testing.services import free_port

    vtn = Vtn(free_port())
    await vtn.start()
    try:
        nvml = FakeNvml(_devices())
        # Caps only: a request to drop to 0 W is then beyond the node, whatever it measures.
        config = _config(tmp_path, mosquitto, prefix, allow_pause=False, allow_migrate=False)
        data = config.model_dump(mode="json", exclude_none=True)
        data["openadr"] = {"vtn_url": vtn.url, "ven_name": VEN_NAME, "poll_interval_s": 1}
        config = config_from_mapping(data, environ={})
        meter = NvmlPowerMeter(RealClock(), nvml=nvml)
        daemon = NodeDaemon(config, meter=meter)
        async with running_daemon(daemon):
            node = Node(daemon, nvml)
            await _running_job(node)
            # Level 1 now: the node can deliver it with caps, so it opts in and caps.
            met = vtn.add_event(signal_event("vtn-ok", payloads=(1.0,), start_in_s=-1))
            assert await vtn.opt(met) == "optIn"
            await _until(lambda: max(node.limits_w()) < 700, 10, "the caps for the VTN's event")
            # Dispatch to 0 W: caps cannot get there, so the node opts out and changes nothing for it.
            limits = node.limits_w()
            impossible = vtn.add_event(
                signal_event("vtn-no", "LOAD_DISPATCH", "setpoint", payloads=(0.0,), start_in_s=-1)
            )
            assert await vtn.opt(impossible) == "optOut"
            decision = node.dr.decision(impossible)
            assert decision is not None
            assert not decision.opt_in
            assert "at most" in decision.reason
            assert node.limits_w() == limits
            assert daemon.status()["openadr"]["opted_out"] >= 1
        await meter.close()
        assert [d.limit_mw for d in nvml.devices] == [700_000, 700_000]
    finally:
        await vtn.stop()
