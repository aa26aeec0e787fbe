"""MQTT demand-response event to GPU power cap applied, through a real Mosquitto, as JSON.

Run: ``.venv/bin/python bench/dr_latency.py [--events 200] [--quick]``

A real node daemon (NodeDaemon, in this process) runs the numpy example job on two GPUs. NVML is faked at the
library boundary (greenferry.testing.fake_nvml: there is no GPU here); on a lent GPU machine
``--real-nvml`` uses the real pynvml instead (needs root to change power limits). For each event a separate
client publishes an OpenADR-3 SIMPLE level-1 event, in force now, to the broker; the latency is from just
before that publish to the moment the daemon's NVML call setting the first power limit returns (measured in
the fake, or around the real call). The event is then cancelled and the limits restored before the next one.

Target: p99 <= 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

from greenferry.adapters.nvml import NvmlPowerMeter, load_nvml_module
from greenferry.config import config_from_mapping
from greenferry.daemon.app import NodeDaemon, running_daemon
from greenferry.daemon.clock import RealClock
from greenferry.testing.cluster import run_example_job
from greenferry.testing.dr_events import simple_event
from greenferry.testing.fake_nvml import FakeDevice, FakeNvml
from greenferry.testing.services import Mosquitto
from greenferry.testing.wait import until

TARGET_P99_MS = 20.0
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "numpy_job.py"


class _TimedNvml:
    """Wraps a pynvml module: remembers when each power-limit call returned."""

    def __init__(self, module: Any) -> None:
        self._module = module
        self.set_times: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def nvmlDeviceSetPowerManagementLimit(self, handle: Any, limit_mw: int) -> None:  # noqa: N802
        self._module.nvmlDeviceSetPowerManagementLimit(handle, limit_mw)
        self.set_times.append(time.perf_counter())


async def main(events: int, real_nvml: bool, broker_nagle: bool = False) -> dict[str, Any]:
    broker = Mosquitto(tcp_nodelay=not broker_nagle)
    broker.start()
    try:
        with tempfile.TemporaryDirectory(prefix="gf-bench-dr-") as tmp:
            out = await _run(broker, Path(tmp), events, real_nvml)
            out["broker_set_tcp_nodelay"] = not broker_nagle
            return out
    finally:
        broker.close()


async def _run(broker: Mosquitto, tmp: Path, events: int, real_nvml: bool) -> dict[str, Any]:
    prefix = "bench-dr"
    config = config_from_mapping(
        {
            "node": {
                "name": "bench",
                "site": "bench",
                "hardware_profile": "h100-sxm",
                "gpu_count": 2,
                "data_dir": str(tmp / "data"),
                "policy": "static",
                "decision_interval_s": 0.5,
            },
            "mqtt": {"port": broker.port, "topic_prefix": prefix, "status_interval_s": 5},
            "signals": {"demand_response": {"topic": f"{prefix}/dr", "format": "greenferry"}},
            "power": {"source": "nvml", "interval_s": 0.2, "rapl": False},
            "http": {"enabled": False},
        },
        environ={},
    )
    module: Any = (
        load_nvml_module()
        if real_nvml
        else FakeNvml([FakeDevice(power_mw=600_000, follows_limit=True) for _ in range(2)])
    )
    nvml = _TimedNvml(module)
    clock = RealClock()
    meter = NvmlPowerMeter(clock, nvml=nvml)
    daemon = NodeDaemon(config, clock=clock, meter=meter)
    latencies_ms: list[float] = []
    opted_in = 0
    reasons: list[str] = []
    try:
        async with running_daemon(daemon), aiomqtt.Client("127.0.0.1", broker.port) as client:
            # A signal source should send at once: Nagle's algorithm on the publisher adds up to 40 ms.
            client._client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            dr = daemon._components["dr"]
            await run_example_job(daemon, "bench", gpu_count=2)
            for i in range(events):
                event_id = f"ev-{i}"
                calls = len(nvml.set_times)
                sent = time.perf_counter()
                await client.publish(f"{prefix}/dr", simple_event(event_id, time.time() - 1, 1), qos=1)
                await until(
                    lambda n=calls: len(nvml.set_times) > n, 10, f"the cap for {event_id}", poll_s=0.0005
                )
                latencies_ms.append((nvml.set_times[calls] - sent) * 1e3)
                decision = dr.decision(event_id)
                if decision is not None and decision.opt_in:
                    opted_in += 1
                elif decision is not None:
                    reasons.append(decision.reason)
                await client.publish(
                    f"{prefix}/dr", simple_event(event_id, time.time() - 1, 1, cancelled=True), qos=1
                )
                await until(
                    lambda: not dr.status()["journaled_gpus"], 10, "the limits restored", poll_s=0.001
                )
    finally:
        await meter.close()
    latencies_ms.sort()
    p99 = latencies_ms[max(0, round(0.99 * len(latencies_ms)) - 1)]
    return {
        "benchmark": "dr_latency",
        "nvml": "real" if real_nvml else "fake (library boundary)",
        "events": events,
        "opted_in": opted_in,
        "opt_out_reasons": sorted(set(reasons)),
        "latency_ms": {
            "p50": round(statistics.median(latencies_ms), 3),
            "p99": round(p99, 3),
            "max": round(latencies_ms[-1], 3),
        },
        "target_p99_ms": TARGET_P99_MS,
        "target_met": p99 <= TARGET_P99_MS,
    }


def cli() -> None:
    """Parse the arguments, run, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200, help="events to time (default 200)")
    parser.add_argument("--quick", action="store_true", help="20 events")
    parser.add_argument(
        "--broker-nagle", action="store_true", help="leave mosquitto's set_tcp_nodelay off (its default)"
    )
    parser.add_argument("--real-nvml", action="store_true", help="the real pynvml (a GPU machine, root)")
    args = parser.parse_args()
    out = asyncio.run(main(20 if args.quick else args.events, args.real_nvml, args.broker_nagle))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    cli()
