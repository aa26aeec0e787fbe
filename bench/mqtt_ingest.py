"""MqttLink ingest through a real Mosquitto: messages/s on one core, and publish-to-handled latency, as JSON.

Run: ``.venv/bin/python bench/mqtt_ingest.py [--messages 150000] [--latency-seconds 5]``

1. Ingest: a paho client in a separate process publishes N plain-number payloads (QoS 0) as fast as it can;
   the link in this process parses them and puts them on the board and the bus. The rate is measured from
   the first to the last handled message (the readings' own receive stamps), and the CPU time this process
   used over that span shows the share of one core it took. Target: >= 20,000 msg/s.
2. Latency: the publisher sends greenferry payloads at 1,000 msg/s, each carrying its send time
   (``{"value": 1, "time": <wall clock>}``); latency is the accepted event's wall time minus that (same
   machine, same clock). Target: p99 <= 20 ms.

The publisher turns Nagle's algorithm off on its socket (TCP_NODELAY), as a signal source should;
``--publisher-nagle`` leaves it on (paho's default) to show what that costs in latency.

The broker and the publisher run on the same machine, so on a busy machine they compete with the link for
CPU; ``msgs_per_cpu_s`` (messages per CPU-second of this process) is the link's capacity per core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

from prometheus_client import CollectorRegistry

from greenferry.adapters.mqtt import MqttLink
from greenferry.config import config_from_mapping
from greenferry.core.events import Event, SignalAccepted
from greenferry.core.signals import SignalBoard, SignalKind
from greenferry.daemon.bus import EventBus, Overflow, Subscription
from greenferry.daemon.clock import RealClock
from greenferry.testing.services import Mosquitto

TARGET_MSGS_PER_S = 20_000.0
TARGET_P99_MS = 20.0
LATENCY_RATE_PER_S = 1000.0

# The publisher: paho without its network thread, so each publish() writes straight to the socket.
PUBLISHER = r"""
import json, socket, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

port, topic, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
count, rate = int(sys.argv[4]), float(sys.argv[5])
client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{mode}", protocol=mqtt.MQTTv311)
client.connect("127.0.0.1", port)
if sys.argv[6] == "nodelay":
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while not client.is_connected():
    client.loop(0.1)
if mode == "flood":
    payload = b"1234.5"
    for i in range(count):
        client.publish(topic, payload, qos=0)
        if i % 1000 == 0:
            client.loop(0)
else:
    interval_s = 1.0 / rate
    next_s = time.perf_counter()
    for i in range(count):
        client.publish(topic, json.dumps({"value": 1.0, "time": time.time()}).encode(), qos=0)
        client.loop(0)
        next_s += interval_s
        pause_s = next_s - time.perf_counter()
        if pause_s > 0:
            time.sleep(pause_s)
done = client.publish(topic + "/done", b"", qos=1)
while not done.is_published():
    client.loop(0.1)
client.disconnect()
"""


async def _publisher(
    port: int, topic: str, mode: str, count: int, rate: float = 0.0, *, nagle: bool = False
) -> asyncio.subprocess.Process:
    socket_mode = "nagle" if nagle else "nodelay"
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", PUBLISHER, str(port), topic, mode, str(count), str(rate), socket_mode
    )


class _Sink:
    """A bus subscriber that keeps only what the bench needs (a real sink drains the bus the same way)."""

    def __init__(self, bus: EventBus, name: str) -> None:
        self.bus = bus
        self.subscription: Subscription[Event] = bus.subscribe(
            name, maxsize=10_000, overflow=Overflow.DROP_NEWEST
        )
        self.count = 0
        self.first_received_s = self.last_received_s = 0.0
        self.first_cpu_s = self.first_wall_s = 0.0
        self.latencies_ms: list[float] = []

    async def run(self) -> None:
        async for event in self.subscription:
            if not isinstance(event, SignalAccepted):
                continue
            reading = event.reading
            if self.count == 0:
                self.first_cpu_s, self.first_wall_s = time.process_time(), time.monotonic()
                self.first_received_s = reading.received_s
            self.count += 1
            self.last_received_s = reading.received_s
            if reading.source_time_s is not None:
                self.latencies_ms.append((event.time_s - reading.source_time_s) * 1000.0)

    async def wait_for(self, count: int, process: asyncio.subprocess.Process) -> None:
        """Until ``count`` events arrived, or the publisher is done and nothing arrived for 2 s."""
        last_count, last_change_s = -1, time.monotonic()
        while self.count < count:
            if self.count != last_count:
                last_count, last_change_s = self.count, time.monotonic()
            elif process.returncode is not None and time.monotonic() - last_change_s > 2.0:
                return
            await asyncio.sleep(0.005)


async def ingest(bus: EventBus, port: int, topic: str, count: int, nagle: bool) -> dict[str, Any]:
    sink = _Sink(bus, "bench-ingest")
    async with asyncio.TaskGroup() as group:
        drainer = group.create_task(sink.run())
        process = await _publisher(port, topic, "flood", count, nagle=nagle)
        await sink.wait_for(count, process)
        cpu_s, wall_s = time.process_time() - sink.first_cpu_s, time.monotonic() - sink.first_wall_s
        await process.wait()
        drainer.cancel()
    bus.unsubscribe(sink.subscription)
    span_s = sink.last_received_s - sink.first_received_s
    rate = (sink.count - 1) / span_s if span_s > 0 else 0.0
    cpu_share = cpu_s / wall_s
    per_cpu_s = sink.count / cpu_s if cpu_s > 0 else 0.0
    return {
        "messages_sent": count,
        "messages_handled": sink.count,
        "dropped_by_bus": sink.subscription.dropped,
        "seconds": round(span_s, 3),
        "msgs_per_s": round(rate),
        "cpu_cores_used": round(cpu_share, 3),
        "msgs_per_cpu_s": round(per_cpu_s),
        "target_msgs_per_s": TARGET_MSGS_PER_S,
        "pass": rate >= TARGET_MSGS_PER_S and cpu_share <= 1.0,
        "pass_per_cpu_s": per_cpu_s >= TARGET_MSGS_PER_S,
    }


async def latency(bus: EventBus, port: int, topic: str, seconds: float, nagle: bool) -> dict[str, Any]:
    count = int(seconds * LATENCY_RATE_PER_S)
    sink = _Sink(bus, "bench-latency")
    async with asyncio.TaskGroup() as group:
        drainer = group.create_task(sink.run())
        process = await _publisher(port, topic, "paced", count, LATENCY_RATE_PER_S, nagle=nagle)
        await sink.wait_for(count, process)
        await process.wait()
        drainer.cancel()
    bus.unsubscribe(sink.subscription)
    latencies_ms = sorted(sink.latencies_ms)
    p99 = latencies_ms[min(len(latencies_ms) - 1, int(0.99 * len(latencies_ms)))]
    return {
        "rate_per_s": LATENCY_RATE_PER_S,
        "messages_sent": count,
        "messages_handled": len(latencies_ms),
        "p50_ms": round(statistics.median(latencies_ms), 3),
        "p99_ms": round(p99, 3),
        "max_ms": round(latencies_ms[-1], 3),
        "target_p99_ms": TARGET_P99_MS,
        "pass": p99 <= TARGET_P99_MS,
    }


async def main(messages: int, latency_s: float, publisher_nagle: bool = False) -> dict[str, Any]:
    broker = Mosquitto()
    broker.start()
    try:
        config = config_from_mapping(
            {
                "node": {"name": "bench", "site": "bench"},
                "mqtt": {"port": broker.port, "topic_prefix": "bench"},
                "signals": {
                    "production": {"topic": "bench/pv/power", "format": "number", "qos": 0},
                    "price": {"topic": "bench/price", "format": "greenferry", "qos": 0, "max_age_s": 3600},
                },
            },
            environ={},
        )
        bus = EventBus()
        board = SignalBoard({k: s.max_age_s for k, s in config.signals.configured().items()})
        link = MqttLink(config, bus, board, RealClock(), CollectorRegistry())
        async with link, asyncio.TaskGroup() as group:
            runner = group.create_task(link.run())
            while not link.connected:
                await asyncio.sleep(0.01)
            result: dict[str, Any] = {
                "publisher_tcp_nodelay": not publisher_nagle,
                "ingest": await ingest(bus, broker.port, "bench/pv/power", messages, publisher_nagle),
                "latency": await latency(bus, broker.port, "bench/price", latency_s, publisher_nagle),
            }
            runner.cancel()
        assert board.latest(SignalKind.PRICE_PER_MWH) is not None
        return result
    finally:
        broker.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=150_000, help="messages in the ingest run")
    parser.add_argument("--latency-seconds", type=float, default=5.0, help="length of the 1,000 msg/s run")
    parser.add_argument(
        "--publisher-nagle",
        action="store_true",
        help="leave Nagle's algorithm on in the publisher (paho's default)",
    )
    args = parser.parse_args()
    started_s = time.monotonic()
    out = asyncio.run(main(args.messages, args.latency_seconds, args.publisher_nagle))
    out["wall_s"] = round(time.monotonic() - started_s, 1)
    print(json.dumps(out, indent=2))
