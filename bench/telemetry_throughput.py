"""Telemetry throughput, printed as JSON (target: >= 50,000 points/s into VictoriaMetrics; never asserted).

Figures, each for ``--points`` gpu-measurement points (4 fields, 4 tags, distinct timestamps):
- influx_gzip_points_per_s / influx_plain_points_per_s: through InfluxSink (batch 5000, ns line protocol,
  gzip on / off) into a real VictoriaMetrics started here; the clock stops when ``flush()`` returns, i.e.
  every batch was accepted (HTTP 204). ``*_arrived`` is the sample count the server then reports.
- influx_encode_points_per_s: line-protocol encoding alone (the CPU part of the above).
- spool_points_per_s: the same points through the on-disk spool (append + fsync per 5000-point batch,
  then replay-read), i.e. what an outage costs.
- sqlite_points_per_s: through SqliteSink (the embedded default store), committed.

Usage: python bench/telemetry_throughput.py [--points 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from greenferry.adapters.influx import InfluxSink
from greenferry.adapters.sqlite_store import SqliteSink, count_points
from greenferry.config import InfluxTelemetryConfig
from greenferry.core.telemetry import Point
from greenferry.daemon.clock import RealClock
from greenferry.daemon.spool import Spool
from greenferry.daemon.telemetry import GPU, encode_lines
from greenferry.testing.services import VictoriaMetrics

T0_MS = 1_700_000_000_000
CHUNK = 1000  # points per write() call, like a busy recorder


def make_points(n: int, run: str) -> list[Point]:
    """``n`` gpu points: 8 GPUs x n/8 instants 1 ms apart."""
    out = []
    for i in range(n):
        gpu = i % 8
        out.append(
            GPU.point(
                (T0_MS + i // 8) * 1_000_000,
                {"node": run, "site": "bench", "gpu": str(gpu), "name": "NVIDIA H100 80GB HBM3"},
                {
                    "power_w": 400.0 + (i % 300) * 0.5,
                    "energy_j": 1e9 + i,
                    "power_limit_w": 700.0,
                    "utilization": 0.9,
                },
            )
        )
    return out


async def influx(vm: VictoriaMetrics, points: list[Point], gzip: bool, spool_dir: Path) -> float:
    cfg = InfluxTelemetryConfig(type="influxdb", url=vm.url, batch_size=5000, flush_interval_s=1.0, gzip=gzip)
    async with InfluxSink(cfg, spool_dir, RealClock(), CollectorRegistry()) as sink:
        async with asyncio.TaskGroup() as group:
            task = group.create_task(sink.run())
            start = time.perf_counter()
            for i in range(0, len(points), CHUNK):
                await sink.write(points[i : i + CHUNK])
            await sink.flush()
            elapsed = time.perf_counter() - start
            task.cancel()
        if sink.spool.records:
            raise RuntimeError("the server refused writes during the benchmark")
    return len(points) / elapsed


async def sqlite(points: list[Point], path: Path) -> tuple[float, int]:
    async with SqliteSink(path, 365 * 86400.0, CollectorRegistry()) as sink:
        start = time.perf_counter()
        for i in range(0, len(points), CHUNK):
            await sink.write(points[i : i + CHUNK])
        await sink.flush()
        elapsed = time.perf_counter() - start
    return len(points) / elapsed, count_points(path)


def spool(points: list[Point], directory: Path) -> float:
    bodies = [encode_lines(points[i : i + 5000]) for i in range(0, len(points), 5000)]
    start = time.perf_counter()
    with Spool(directory, 1 << 30, CollectorRegistry()) as s:
        for body in bodies:
            s.append(body, body.count(b"\n") + 1)
        while (record := s.peek()) is not None:
            s.ack(record)
    return len(points) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=200_000)
    args = parser.parse_args()
    n = args.points
    result: dict[str, Any] = {"points": n}
    with tempfile.TemporaryDirectory(prefix="gf-bench-") as tmp:
        root = Path(tmp)
        vm = VictoriaMetrics()
        vm.start()
        try:
            for gzip in (True, False):
                run = f"bench-{'gzip' if gzip else 'plain'}"
                points = make_points(n, run)
                key = "influx_gzip" if gzip else "influx_plain"
                result[f"{key}_points_per_s"] = round(
                    asyncio.run(influx(vm, points, gzip, root / f"spool-{run}"))
                )
                # 8 series of power_w: one sample per point.
                result[f"{key}_arrived"] = sum(
                    len(s["values"]) for s in vm.export(f'gpu_power_w{{node="{run}"}}', min_series=8)
                )
        finally:
            vm.close()
        points = make_points(n, "bench-local")
        start = time.perf_counter()
        encode_lines(points)
        result["influx_encode_points_per_s"] = round(n / (time.perf_counter() - start))
        result["spool_points_per_s"] = round(spool(points, root / "spool-bench"))
        rate, stored = asyncio.run(sqlite(points, root / "t.sqlite"))
        result["sqlite_points_per_s"] = round(rate)
        result["sqlite_stored"] = stored
    result["target_influx_points_per_s"] = 50_000
    result["meets_target"] = (
        min(result["influx_gzip_points_per_s"], result["influx_plain_points_per_s"]) >= 50_000
    )
    result["all_arrived"] = result["influx_gzip_arrived"] == n and result["influx_plain_arrived"] == n
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
