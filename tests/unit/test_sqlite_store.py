"""The embedded SQLite telemetry store: exact round trip, time windows, retention, WAL, reader errors."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from greenferry.adapters.sqlite_store import (
    SqliteSink,
    TelemetryStoreError,
    count_points,
    measurements_in,
    read_points,
)
from greenferry.core.telemetry import Point
from greenferry.testing.clock import ManualClock

S = 1_000_000_000  # ns per second
T0 = 1_700_000_000 * S


def _p(measurement: str, t_s: float, **fields: float | int | bool | str) -> Point:
    return Point(measurement, fields, T0 + int(t_s * S), {"node": "n1", "site": "s1"})


async def test_points_round_trip_exactly_with_their_types(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "t.sqlite"
    points = [
        Point(
            "gpu", {"power_w": 61.25, "energy_j": 1e12}, T0 + 123, {"node": "n1", "gpu": "0", "name": "L4"}
        ),
        Point("telemetry", {"spooled_bytes": 7, "dropped_points": 0}, T0 + 124, {"node": "n1"}),
        Point("custom", {"ok": True, "note": 'a "quoted" ☀'}, T0 + 125, {}),
    ]
    async with SqliteSink(db, 86400.0, CollectorRegistry()) as sink:
        await sink.write(points)
        await sink.flush()
        assert list(read_points(db)) == points  # readable while the writer is open (WAL)
    back = list(read_points(db))
    assert back == points
    assert isinstance(back[1].fields["spooled_bytes"], int)
    assert isinstance(back[0].fields["energy_j"], float)


async def test_close_commits_what_is_buffered_and_the_table_is_indexed_on_time(tmp_path: Path) -> None:
    db = tmp_path / "t.sqlite"
    registry = CollectorRegistry()
    async with SqliteSink(db, 86400.0, registry) as sink:
        await sink.write([_p("signal", i, value=float(i), age_s=0.0) for i in range(10)])
    assert count_points(db) == 10
    assert registry.get_sample_value("greenferry_telemetry_stored_points_total") == 10.0
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        indexes = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'index'").fetchall()
    assert any("time_ns" in sql for (sql,) in indexes)


async def test_time_window_is_half_open_ordered_and_filters_by_measurement(tmp_path: Path) -> None:
    db = tmp_path / "t.sqlite"
    async with SqliteSink(db, 86400.0, CollectorRegistry()) as sink:
        # Written out of order: the reader returns time order.
        await sink.write([_p("gpu", t, power_w=float(t)) for t in (5, 1, 3)])
        await sink.write([_p("signal", t, value=float(t), age_s=0.0) for t in (2, 4)])
    window = list(read_points(db, T0 + 1 * S, T0 + 5 * S))
    assert [(p.measurement, p.time_ns) for p in window] == [
        ("gpu", T0 + 1 * S),
        ("signal", T0 + 2 * S),
        ("gpu", T0 + 3 * S),
        ("signal", T0 + 4 * S),
    ]
    assert [p.fields["power_w"] for p in read_points(db, measurement="gpu")] == [1.0, 3.0, 5.0]
    assert count_points(db, T0 + 3 * S, None, "signal") == 1
    assert measurements_in(db) == ["gpu", "signal"]
    assert measurements_in(db, T0 + 5 * S) == ["gpu"]


async def test_retention_prunes_points_older_than_the_newest_minus_retention(tmp_path: Path) -> None:
    db = tmp_path / "t.sqlite"
    registry = CollectorRegistry()
    async with SqliteSink(db, 3600.0, registry, batch_points=1) as sink:
        await sink.write([_p("gpu", 0, power_w=1.0)])
        await sink.write([_p("gpu", 1800, power_w=2.0)])
        await sink.write([_p("gpu", 7200, power_w=3.0)])  # an hour of retention back from here: 3600 s
    assert [p.fields["power_w"] for p in read_points(db)] == [3.0]
    assert registry.get_sample_value("greenferry_telemetry_pruned_points_total") == 2.0


async def test_run_commits_every_flush_interval(tmp_path: Path) -> None:
    db = tmp_path / "t.sqlite"
    clock = ManualClock()
    async with (
        SqliteSink(db, 86400.0, CollectorRegistry(), clock=clock, flush_interval_s=2.0) as sink,
        asyncio.TaskGroup() as group,
    ):
        task = group.create_task(sink.run())
        await sink.write([_p("gpu", 0, power_w=1.0)])
        await asyncio.sleep(0)
        assert count_points(db) == 0  # buffered, not committed yet
        clock.advance(2.0)
        for _ in range(200):
            if count_points(db) == 1:
                break
            await asyncio.sleep(0.01)
        assert count_points(db) == 1
        task.cancel()


def test_reader_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.sqlite"
    with pytest.raises(TelemetryStoreError, match=r"no telemetry store at .*nope\.sqlite"):
        list(read_points(missing))
    assert not missing.exists()  # the reader never creates a store
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(
        TelemetryStoreError, match=r"garbage\.sqlite: not a readable greenferry telemetry store"
    ):
        count_points(garbage)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE something (x)")
    conn.close()
    with pytest.raises(TelemetryStoreError, match=r"other\.sqlite"):
        list(read_points(other))
