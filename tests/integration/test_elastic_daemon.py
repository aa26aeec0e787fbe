"""Two real daemons share an elastic torchrun job: each node's share joins while its surplus lasts and leaves
when it ends, and the job keeps training through both changes with every step committed once.

Surplus comes from production signals on a real Mosquitto; node a hosts the rendezvous store. The job is
examples/elastic_torch_job.py (gloo on CPU).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from greenferry.config import DaemonConfig, config_from_mapping
from greenferry.daemon.app import NodeDaemon, running_daemon
from greenferry.testing.dr_events import simple_event
from greenferry.testing.services import Mosquitto, free_port

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "elastic_torch_job.py"
HAS_TORCH = importlib.util.find_spec("torch") is not None
IN_CI = os.environ.get("CI") == "true"
STEPS = 1500
WAIT_S = 120.0  # against hangs only


def _config(tmp_path: Path, broker: Mosquitto, prefix: str, name: str, store_port: int) -> DaemonConfig:
    return config_from_mapping(
        {
            "node": {"name": name, "site": f"site-{name}", "hardware_profile": "l4", "gpu_count": 1}
            | {"data_dir": str(tmp_path / name)},
            "mqtt": {"port": broker.port, "topic_prefix": prefix, "reconnect_min_s": 0.05},
            "signals": {
                "production": {"topic": f"{prefix}/sites/{name}/production_w", "max_age_s": 3600},
                "demand_response": {"topic": f"{prefix}/sites/{name}/dr", "format": "greenferry"},
            },
            "power": {"source": "model", "interval_s": 1},
            "http": {"enabled": False},
            "elastic": [
                {
                    "name": "elastic-it",
                    "command": [
                        str(EXAMPLE),
                        "--steps",
                        str(STEPS),
                        "--checkpoint-every",
                        "10",
                        "--step-time-s",
                        "0.02",
                        "--log-every",
                        "0",
                        "--events",
                        "events.jsonl",
                        "--collective-timeout-s",
                        "30",
                    ],
                    "nproc_per_node": 1,
                    "max_nodes": 2,
                    "rendezvous_endpoint": f"127.0.0.1:{store_port}",
                    "host_store": name == "a",
                    "join_delay_s": 0,
                    "leave_delay_s": 0,
                    "stop_timeout_s": 60,
                    "rdzv_conf": {
                        "last_call_timeout": 1,
                        "keep_alive_interval": 1,
                        "keep_alive_max_attempt": 5,
                        "join_timeout": 60,
                    },
                    "env": {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"},
                }
            ],
        },
        environ={},
    )


async def _production(broker: Mosquitto, prefix: str, node: str, watts: float) -> None:
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.publish(f"{prefix}/sites/{node}/production_w", str(watts).encode(), qos=1, retain=True)


async def _dr(broker: Mosquitto, prefix: str, node: str, *, cancelled: bool) -> None:
    import aiomqtt

    payload = simple_event("elastic-dr", time.time() - 1, 3, cancelled=cancelled)
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.publish(f"{prefix}/sites/{node}/dr", payload, qos=1)


def _history(daemon: NodeDaemon) -> list[tuple[int, float, int]]:
    """The committed history in this node's checkpoint directory: (step, loss, world size) per step."""
    root = daemon.config.node.data_dir / "elastic" / "elastic-it" / "checkpoint"
    files = sorted(root.rglob("history.jsonl"), key=lambda p: p.stat().st_mtime)
    if not files:
        return []
    with contextlib.suppress(OSError, ValueError):
        lines = [json.loads(line) for line in files[-1].read_text().splitlines() if line]
        return [(int(x["step"]), float(x["loss"]), int(x["world_size"])) for x in lines]
    return []


def _member(daemon: NodeDaemon) -> Any:
    return daemon._components["elastic"].members["elastic-it"]


async def _until(predicate: Callable[[], Any], what: str, daemons: tuple[NodeDaemon, ...]) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.2)
    logs = "\n".join(
        (d.config.node.data_dir / "elastic" / "elastic-it" / "agent.log").read_text(errors="replace")[-3000:]
        for d in daemons
        if (d.config.node.data_dir / "elastic" / "elastic-it" / "agent.log").exists()
    )
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


@pytest.fixture
async def nodes(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[tuple[NodeDaemon, NodeDaemon, str]]:
    if not HAS_TORCH:
        if IN_CI:
            pytest.fail("torch is required in CI: .ci/run installs torch==2.13.0 (the CPU build)")
        pytest.skip("torch not installed")
    prefix = f"gfe/{uuid.uuid4().hex[:10]}"
    port = free_port()
    await _production(mosquitto, prefix, "a", 5000)
    await _production(mosquitto, prefix, "b", 0)
    a = NodeDaemon(_config(tmp_path, mosquitto, prefix, "a", port))
    b = NodeDaemon(_config(tmp_path, mosquitto, prefix, "b", port))
    async with running_daemon(a), running_daemon(b):
        yield a, b, prefix


async def test_an_elastic_job_follows_the_surplus_across_two_daemons(
    nodes: tuple[NodeDaemon, NodeDaemon, str], mosquitto: Mosquitto
) -> None:
    a, b, prefix = nodes
    both = (a, b)
    # a has surplus: its share joins and trains alone; b has none and waits.
    await _until(lambda: len(_history(a)) >= 20, "a training alone", both)
    assert _member(b).state == "waiting"
    assert _member(a).status()["store_running"]

    # b's surplus begins: b joins and the job trains on both nodes.
    await _production(mosquitto, prefix, "b", 5000)
    await _until(lambda: any(w == 2 for _, _, w in _history(b)), "a two-node world", both)
    assert _member(b).joins == 1

    # a's surplus ends: a leaves after a committed step; b trains on alone to the end.
    await _production(mosquitto, prefix, "a", 0)
    await _until(lambda: _member(a).leaves == 1, "a leaving", both)
    assert _member(a).state == "waiting"

    # A grid event at b asks for everything: b's share leaves too (the job waits, checkpointed), and
    # rejoins when the event is cancelled.
    left = len(_history(b))
    await _dr(mosquitto, prefix, "b", cancelled=False)
    await _until(lambda: _member(b).leaves == 1, "b leaving for the grid event", both)
    assert _member(b).held is not None
    decision = b._components["dr"].decision("elastic-dr")
    assert decision.opt_in
    assert b.status()["dr"]["paused_jobs"] == ["elastic:elastic-it"]
    await _dr(mosquitto, prefix, "b", cancelled=True)
    await _until(lambda: _member(b).joins == 2, "b rejoining after the event", both)
    assert len(_history(b)) >= left
    await _until(lambda: _member(b).state == "done", "the job completing on b", both)
    await _until(lambda: _member(a).state == "done", "a hearing that the job is done", both)

    history = _history(b)
    steps = [step for step, _, _ in history]
    assert steps == list(range(1, STEPS + 1))  # every step committed exactly once, none lost
    worlds = [w for _, _, w in history]
    changes = [w for i, w in enumerate(worlds) if i == 0 or w != worlds[i - 1]]
    assert changes == [1, 2, 1]  # a alone, then a and b, then b alone
    assert b.status()["elastic"][0]["last_exit"] == 0
    # No worker outlives its agent (the store stays while its daemon runs).
    store_pid = _member(a)._store.pid
    for daemon in both:
        group_dir = (daemon.config.node.data_dir / "elastic" / "elastic-it").resolve()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != store_pid:
                with contextlib.suppress(OSError):
                    assert Path(entry, "cwd").resolve() != group_dir, f"process {entry.name} left behind"
