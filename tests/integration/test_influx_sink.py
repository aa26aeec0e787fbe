"""InfluxSink against a real VictoriaMetrics: exact values, zero loss across an outage, spool bound, 4xx.

VictoriaMetrics names a line-protocol field ``<measurement>_<field>`` and turns tags into labels; it
keeps milliseconds, so the timestamps here are whole milliseconds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from greenferry.adapters.influx import InfluxSink, probe_influx
from greenferry.config import InfluxTelemetryConfig, config_from_mapping
from greenferry.core.events import GpuReading, PowerSample, SignalAccepted
from greenferry.core.signals import Reading, SignalKind
from greenferry.core.telemetry import Point
from greenferry.daemon.backoff import Backoff
from greenferry.daemon.bus import EventBus
from greenferry.daemon.clock import RealClock
from greenferry.daemon.telemetry import GPU, TELEMETRY, TelemetryRecorder
from greenferry.errors import ServiceUnavailableError
from greenferry.testing.services import VictoriaMetrics, free_port

pytestmark = pytest.mark.integration

MS = 1_000_000  # ns per ms
T0_MS = 1_700_000_000_000


def _uid() -> str:
    return uuid.uuid4().hex[:10]


def _cfg(url: str, **overrides: Any) -> InfluxTelemetryConfig:
    values: dict[str, Any] = {
        "type": "influxdb",
        "url": url,
        "batch_size": 50,
        "flush_interval_s": 0.05,
        "timeout_s": 2.0,
    }
    values.update(overrides)
    return InfluxTelemetryConfig(**values)


class RecordingSink(InfluxSink):
    """The real sink, noting which bodies the server accepted, in the order it accepted them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.accepted: list[bytes] = []

    async def _post(self, body: bytes, points: int) -> Any:
        outcome = await super()._post(body, points)
        if outcome.value == "sent":
            self.accepted.append(body)
        return outcome


@asynccontextmanager
async def running(sink: InfluxSink) -> AsyncIterator[InfluxSink]:
    """Enter the sink and run its loop in a TaskGroup of the test's own; cancel the loop on exit."""
    async with sink, asyncio.TaskGroup() as group:
        task = group.create_task(sink.run())
        try:
            yield sink
        finally:
            task.cancel()


async def _until(condition: Any, timeout_s: float = 30.0, what: str = "condition") -> None:
    """Wait (polling) until ``condition()`` holds; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _seq_point(run: str, i: int) -> Point:
    return Point("zl", {"seq": float(i)}, (T0_MS + 10 * i) * MS, {"run": run})


def _seqs(bodies: list[bytes]) -> list[int]:
    out = []
    for body in bodies:
        for line in body.decode().splitlines():
            out.append(int(float(line.split(" ")[1].removeprefix("seq="))))
    return out


@pytest.mark.parametrize("gzip", [True, False])
async def test_points_arrive_with_exact_values_and_timestamps(
    victoria: VictoriaMetrics, tmp_path: Path, gzip: bool
) -> None:
    node = f"n-{_uid()}"
    tags = {"node": node, "site": "caiso"}
    points = [
        GPU.point(
            (T0_MS + 1000 * i) * MS,
            {**tags, "gpu": str(g), "name": "NVIDIA L4, PCIe"},
            {
                "power_w": 60.5 + i + g,
                "energy_j": 1e9 + 123.25 * i,
                "power_limit_w": 72.0,
                "utilization": 0.5,
            },
        )
        for i in range(5)
        for g in range(2)
    ]
    points.append(TELEMETRY.point((T0_MS + 7000) * MS, tags, {"spooled_bytes": 4096, "dropped_points": 3}))
    async with running(
        InfluxSink(_cfg(victoria.url, gzip=gzip), tmp_path / "spool", RealClock(), CollectorRegistry())
    ) as sink:
        await sink.write(points)
        await sink.flush()
    series = victoria.export(f'gpu_power_w{{node="{node}"}}', min_series=2)
    by_gpu = {s["metric"]["gpu"]: s for s in series}
    assert set(by_gpu) == {"0", "1"}
    assert by_gpu["1"]["metric"] == {
        "__name__": "gpu_power_w",
        "node": node,
        "site": "caiso",
        "gpu": "1",
        "name": "NVIDIA L4, PCIe",
    }
    assert by_gpu["1"]["values"] == [61.5, 62.5, 63.5, 64.5, 65.5]
    assert by_gpu["1"]["timestamps"] == [T0_MS + 1000 * i for i in range(5)]
    (energy,) = victoria.export(f'gpu_energy_j{{node="{node}",gpu="0"}}')
    assert energy["values"] == [1e9 + 123.25 * i for i in range(5)]
    (spooled,) = victoria.export(f'telemetry_spooled_bytes{{node="{node}"}}')
    assert (spooled["values"], spooled["timestamps"]) == ([4096], [T0_MS + 7000])


async def test_zero_loss_in_order_while_the_server_is_down(
    fresh_victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    """~100 points/s flow for ~4 s; the server is down for ~2 s of it; afterwards every point is there."""
    run = _uid()
    registry = CollectorRegistry()
    sink = RecordingSink(
        _cfg(fresh_victoria.url), tmp_path / "spool", RealClock(), registry, backoff=Backoff(0.05, 0.3)
    )
    written = 0
    spooled_during_outage = 0

    async def writer(stop: asyncio.Event) -> None:
        nonlocal written
        while not stop.is_set():
            await sink.write([_seq_point(run, written)])
            written += 1
            await asyncio.sleep(0.01)

    async with running(sink), asyncio.TaskGroup() as group:
        stop = asyncio.Event()
        group.create_task(writer(stop))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(fresh_victoria.stop)
        await asyncio.sleep(2.0)
        spooled_during_outage = sink.spool.points
        assert not sink.server_up
        await asyncio.to_thread(fresh_victoria.start)
        await asyncio.sleep(1.0)
        stop.set()
        await _until(lambda: sink.spool.records == 0, what="the spool to drain")
        await sink.flush()
    total = written
    assert total > 250
    assert spooled_during_outage > 50  # the outage really happened while points flowed

    match = f'zl_seq{{run="{run}"}}'
    await _until(lambda: fresh_victoria.count_samples(match) >= total, what=f"{total} samples in the server")
    assert fresh_victoria.count_samples(match) == total  # zero missing, none twice
    (series,) = fresh_victoria.export(match)
    assert series["values"] == [float(i) for i in range(total)]
    assert series["timestamps"] == [T0_MS + 10 * i for i in range(total)]
    # ... and the server received them in order: spooled batches were replayed before newer ones.
    assert _seqs(sink.accepted) == list(range(total))
    assert registry.get_sample_value("greenferry_telemetry_write_failures_total", {"kind": "transient"}) >= 1
    assert (
        registry.get_sample_value("greenferry_telemetry_dropped_points_total", {"reason": "spool_full"}) == 0
    )


async def test_spool_overflow_drops_the_oldest_and_counts_them(
    fresh_victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    run = _uid()
    registry = CollectorRegistry()
    cfg = _cfg(fresh_victoria.url, batch_size=100, spool_max_bytes=64 * 1024)
    fresh_victoria.stop()
    total = 3000  # ~50 bytes a line: about twice what a 64 KiB spool holds
    async with InfluxSink(cfg, tmp_path / "spool", RealClock(), registry, backoff=Backoff(0.05, 0.1)) as sink:
        for start in range(0, total, 100):
            await sink.write([_seq_point(run, i) for i in range(start, start + 100)])
            await sink.flush()
        dropped = sink.spool.dropped_points
        assert 0 < dropped < total
        assert sink.spool.size_bytes <= 64 * 1024
        assert sink.stats().dropped_points == dropped
        assert (
            registry.get_sample_value("greenferry_telemetry_dropped_points_total", {"reason": "spool_full"})
            == dropped
        )
        await asyncio.to_thread(fresh_victoria.start)

        async def drained() -> None:
            while sink.spool.records:
                await sink.flush()
                await asyncio.sleep(0.05)

        await asyncio.wait_for(drained(), 30)
    match = f'zl_seq{{run="{run}"}}'
    await _until(lambda: fresh_victoria.count_samples(match) >= total - dropped, what="the kept points")
    (series,) = fresh_victoria.export(match)
    # Exactly the newest total - dropped points are in the server; the oldest went, counted.
    assert series["values"] == [float(i) for i in range(dropped, total)]


async def test_a_new_process_replays_the_spool_of_the_last_one(
    fresh_victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    run = _uid()
    fresh_victoria.stop()
    cfg = _cfg(fresh_victoria.url)
    async with InfluxSink(cfg, tmp_path / "spool", RealClock(), CollectorRegistry()) as first:
        await first.write([_seq_point(run, i) for i in range(120)])
        await first.flush()  # the server is down: two full batches are spooled on this flush
        await first.write([_seq_point(run, i) for i in range(120, 130)])
    # close() spooled the rest without touching the network; a new process takes over.
    await asyncio.to_thread(fresh_victoria.start)
    second = InfluxSink(cfg, tmp_path / "spool", RealClock(), CollectorRegistry())
    async with running(second):
        assert second.spool.points == 130
        await _until(lambda: second.spool.records == 0, what="the replay")
    (series,) = fresh_victoria.export(f'zl_seq{{run="{run}"}}')
    assert series["values"] == [float(i) for i in range(130)]


async def test_bad_data_is_dropped_and_counted_not_retried(victoria: VictoriaMetrics, tmp_path: Path) -> None:
    run = _uid()
    registry = CollectorRegistry()
    async with InfluxSink(_cfg(victoria.url, gzip=False), tmp_path / "spool", RealClock(), registry) as sink:
        # VictoriaMetrics answers 400 to a line longer than 256 KiB.
        await sink.write([Point("zl", {"seq": 0.0, "blob": "x" * 300_000}, T0_MS * MS, {"run": run})])
        await sink.flush()
        await sink.write([_seq_point(run, 1)])
        await sink.flush()
        assert sink.spool.records == 0  # not spooled for a retry that can never succeed
        assert sink.server_up
    assert registry.get_sample_value("greenferry_telemetry_dropped_points_total", {"reason": "rejected"}) == 1
    assert registry.get_sample_value("greenferry_telemetry_write_failures_total", {"kind": "rejected"}) == 1
    (series,) = victoria.export(f'zl_seq{{run="{run}"}}')
    assert series["values"] == [1.0]


async def test_recorder_events_reach_the_server_under_the_schema_names(
    victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    node = f"n-{_uid()}"
    config = config_from_mapping(
        {
            "node": {"name": node, "site": "caiso", "data_dir": str(tmp_path)},
            "telemetry": {"type": "influxdb", "url": victoria.url, "flush_interval_s": 0.05},
        },
        environ={},
    )
    registry = CollectorRegistry()
    bus = EventBus()
    clock = RealClock()
    gpu = GpuReading(0, "NVIDIA L4", 55.0, 1234.0, None, 72.0, 40.0, 72.0, True)
    assert isinstance(config.telemetry, InfluxTelemetryConfig)
    async with (
        InfluxSink(config.telemetry, tmp_path / "spool", clock, registry) as sink,
        TelemetryRecorder(config, bus, sink, clock, registry),
    ):
        bus.publish(PowerSample(T0_MS / 1000, "model", (gpu,), host_power_w=20.5))
        bus.publish(SignalAccepted(Reading(SignalKind.CARBON_G_PER_KWH, 212.5, 0.0), T0_MS / 1000 + 1))
    (power,) = victoria.export(f'node_power_host_power_w{{node="{node}"}}')
    assert (power["metric"]["source"], power["values"], power["timestamps"]) == ("model", [20.5], [T0_MS])
    (carbon,) = victoria.export(f'signal_value{{node="{node}",kind="carbon"}}')
    assert (carbon["values"], carbon["timestamps"]) == ([212.5], [T0_MS + 1000])
    (gpu_power,) = victoria.export(f'gpu_power_w{{node="{node}",gpu="0"}}')
    assert gpu_power["values"] == [55.0]


async def test_probe(victoria: VictoriaMetrics) -> None:
    await probe_influx(_cfg(victoria.url), 2.0)
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServiceUnavailableError, match=f"InfluxDB at {dead}"):
        await probe_influx(_cfg(dead), 2.0)
