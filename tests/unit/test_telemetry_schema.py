"""Telemetry schemas (the names a dashboard queries), line protocol, and the recorder's event conversion."""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path

import pytest
from influxdb_client import Point as InfluxPoint
from prometheus_client import CollectorRegistry

from greenferry.adapters.sqlite_store import SqliteSink, read_points
from greenferry.config import DaemonConfig, config_from_mapping
from greenferry.core.dr import DemandResponseEvent, DrInterval, DrPayload
from greenferry.core.events import GpuReading, NodeStatus, PowerSample, SignalAccepted, SignalRejected
from greenferry.core.signals import Reading, SignalKind, SurplusWindow
from greenferry.core.telemetry import Point
from greenferry.daemon.bus import EventBus
from greenferry.daemon.telemetry import (
    GPU,
    JOB_PROGRESS,
    MEASUREMENTS,
    MIGRATION,
    NODE_POWER,
    SIGNAL,
    SchemaError,
    TelemetryRecorder,
    encode_line,
    open_sink,
    time_ns_from_s,
    validate_point,
)
from greenferry.testing.clock import ManualClock

T0 = 1_700_000_000.0
TAGS = {"node": "n1", "site": "s1"}

# The contract with the Grafana dashboard and docs/telemetry.md: measurement -> (tags, {field: type}).
EXPECTED = {
    "gpu": (
        ["node", "site", "gpu", "name"],
        {"power_w": float, "energy_j": float, "utilization": float, "power_limit_w": float},
    ),
    "node_power": (
        ["node", "site", "source"],
        {"gpu_power_w": float, "host_power_w": float, "host_energy_j": float},
    ),
    "signal": (
        ["node", "site", "kind"],
        {"value": float, "windows": int, "active": int, "age_s": float},
    ),
    "signal_rejected": (["node", "site", "kind", "reason"], {"count": int}),
    "job_progress": (["node", "site", "job"], {"step": int, "progress": float, "power_w": float}),
    "migration": (
        ["node", "site", "job", "src", "dst", "outcome"],
        {"bytes": int, "duration_s": float},
    ),
    "telemetry": (["node", "site"], {"spooled_bytes": int, "dropped_points": int}),
}


def test_declared_measurements_are_exactly_the_dashboard_contract() -> None:
    assert set(MEASUREMENTS) == set(EXPECTED)
    for name, (tags, fields) in EXPECTED.items():
        schema = MEASUREMENTS[name]
        assert [t.name for t in schema.tags] == tags, name
        assert {f.name: f.type for f in schema.fields} == fields, name
        assert all(f.unit for f in schema.fields), name
        assert schema.written, name
    optional = {(m.name, f.name) for m in MEASUREMENTS.values() for f in m.fields if not f.required}
    assert optional == {
        ("gpu", "utilization"),
        ("node_power", "host_power_w"),
        ("node_power", "host_energy_j"),
        ("signal", "windows"),
        ("signal", "active"),
        ("job_progress", "progress"),
        ("job_progress", "power_w"),
        ("migration", "duration_s"),
    }


def _gpu_fields() -> dict[str, float | int]:
    return {"power_w": 300.0, "energy_j": 1e6, "power_limit_w": 350.0}


def _gpu_tags() -> dict[str, str]:
    return {**TAGS, "gpu": "0", "name": "NVIDIA L4"}


def test_a_valid_point_passes_and_ints_are_promoted_for_float_fields() -> None:
    point = GPU.point(5, _gpu_tags(), {**_gpu_fields(), "power_w": 300})
    assert point.fields["power_w"] == 300.0
    assert isinstance(point.fields["power_w"], float)
    assert "utilization" not in point.fields
    assert validate_point(point) == point


@pytest.mark.parametrize(
    ("tags", "fields", "message"),
    [
        ({**_gpu_tags(), "rack": "r1"}, _gpu_fields(), "unknown tag"),
        ({**TAGS, "gpu": "0"}, _gpu_fields(), "tag 'name' is missing"),
        (_gpu_tags(), {**_gpu_fields(), "temperature_c": 40.0}, "unknown field"),
        (_gpu_tags(), {"power_w": 1.0, "energy_j": 1.0}, "field 'power_limit_w' is missing"),
        (_gpu_tags(), {**_gpu_fields(), "power_w": "300"}, "must be float, got str"),
        (_gpu_tags(), {**_gpu_fields(), "power_w": True}, "got bool"),
        (_gpu_tags(), {**_gpu_fields(), "power_w": math.nan}, "must be finite"),
        ({**_gpu_tags(), "name": ""}, _gpu_fields(), "non-empty str"),
    ],
)
def test_schema_violations_raise(tags: dict[str, str], fields: dict[str, object], message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        GPU.point(1, tags, fields)  # type: ignore[arg-type]


def test_int_fields_refuse_floats_and_closed_tag_sets_refuse_other_values() -> None:
    with pytest.raises(SchemaError, match="'step' must be int, got float"):
        JOB_PROGRESS.point(1, {**TAGS, "job": "j"}, {"step": 3.0, "progress": 0.5, "power_w": 1.0})
    with pytest.raises(SchemaError, match="not one of"):
        SIGNAL.point(1, {**TAGS, "kind": "wind"}, {"value": 1.0, "age_s": 0.0})
    with pytest.raises(SchemaError, match="non-negative int"):
        MIGRATION.point(
            -1,
            {**TAGS, "job": "j", "src": "a", "dst": "b", "outcome": "ok"},
            {"bytes": 1, "duration_s": 1.0},
        )
    with pytest.raises(SchemaError, match="undeclared measurement"):
        validate_point(Point("gpus", {"x": 1.0}, 1, {}))


def test_line_protocol_matches_the_reference_client() -> None:
    tags = {**TAGS, "gpu": "0", "name": "NVIDIA H100 80GB, SXM=5"}
    point = GPU.point(1_700_000_000_123_456_000, tags, {**_gpu_fields(), "utilization": 0.25})
    line = encode_line(point)
    assert line == (
        r"gpu,gpu=0,name=NVIDIA\ H100\ 80GB\,\ SXM\=5,node=n1,site=s1 "
        "power_w=300.0,energy_j=1000000.0,power_limit_w=350.0,utilization=0.25 1700000000123456000"
    )
    reference = InfluxPoint("gpu").time(point.time_ns)
    for key, value in tags.items():
        reference.tag(key, value)
    for key, field_value in point.fields.items():
        reference.field(key, field_value)
    ours, theirs = _split_line(line), _split_line(reference.to_line_protocol())
    assert ours[0] == theirs[0]  # measurement and tags, escaped and sorted alike
    assert ours[1] == theirs[1]  # the same field values (the reference writes 300.0 as 300)
    assert ours[2] == theirs[2]


def _split_line(line: str) -> tuple[str, dict[str, float], int]:
    head, fields, stamp = re.split(r"(?<!\\) ", line)
    values = {key: float(value) for key, value in (item.split("=") for item in fields.split(","))}
    return head, values, int(stamp)


def test_line_protocol_types_and_string_escapes() -> None:
    point = Point("m x,y", {"i": 42, "f": 1e-07, "b": False, "s": 'say "hi" \\ now'}, 7, {"k=1": "v 2"})
    assert encode_line(point) == r'm\ x\,y,k\=1=v\ 2 i=42i,f=1e-07,b=false,s="say \"hi\" \\ now" 7'
    with pytest.raises(SchemaError):
        encode_line(Point("m", {"f": math.inf}, 1, {}))
    with pytest.raises(SchemaError):
        encode_line(Point("m", {}, 1, {}))


def test_time_ns_from_s_rounds_to_the_microsecond() -> None:
    assert time_ns_from_s(1_700_000_000.123) == 1_700_000_000_123_000_000
    assert time_ns_from_s(0.0) == 0


# -- the recorder, into the real SQLite sink ---------------------------------------------------------


def _config(tmp_path: Path, sample_interval_s: float = 5.0) -> DaemonConfig:
    return config_from_mapping(
        {
            "node": {"name": "n1", "site": "s1", "data_dir": str(tmp_path / "data")},
            "telemetry": {
                "type": "sqlite",
                "path": str(tmp_path / "t.sqlite"),
                "sample_interval_s": sample_interval_s,
            },
        },
        environ={},
    )


def _gpu(index: int, power_w: float, utilization: float | None = 0.5) -> GpuReading:
    return GpuReading(
        index=index,
        name="NVIDIA L4",
        power_w=power_w,
        energy_j=1000.0 * (index + 1),
        utilization=utilization,
        power_limit_w=72.0,
        power_limit_min_w=40.0,
        power_limit_max_w=72.0,
        energy_from_counter=True,
    )


async def _settle() -> None:
    """Let every ready task run until it waits again (no real time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def _record(tmp_path: Path, events: list[object], sample_interval_s: float = 5.0) -> list[Point]:
    """Publish ``events`` on a bus, run the recorder into a real SQLite sink, return what was stored."""
    config = _config(tmp_path, sample_interval_s)
    clock = ManualClock(T0)
    registry = CollectorRegistry()
    bus = EventBus()
    async with (
        SqliteSink(config.telemetry_sqlite_path, 86400.0, registry, clock=clock) as sink,
        TelemetryRecorder(config, bus, sink, clock, registry) as recorder,
        asyncio.TaskGroup() as group,
    ):
        task = group.create_task(recorder.run())
        for event in events:
            bus.publish(event)  # type: ignore[arg-type]
            await _settle()
        task.cancel()
    return list(read_points(config.telemetry_sqlite_path))


async def test_power_sample_becomes_gpu_and_node_power_points(tmp_path: Path) -> None:
    sample = PowerSample(T0, "nvml", (_gpu(0, 60.5), _gpu(1, 30.25, utilization=None)), host_power_w=None)
    points = await _record(tmp_path, [sample])
    by_name = {(p.measurement, p.tags.get("gpu")): p for p in points}
    gpu0 = by_name[("gpu", "0")]
    assert gpu0.tags == {"node": "n1", "site": "s1", "gpu": "0", "name": "NVIDIA L4"}
    assert gpu0.fields == {"power_w": 60.5, "energy_j": 1000.0, "power_limit_w": 72.0, "utilization": 0.5}
    assert gpu0.time_ns == time_ns_from_s(T0)
    assert "utilization" not in by_name[("gpu", "1")].fields  # unknown: omitted, not 0
    node = by_name[("node_power", None)]
    assert node.tags == {"node": "n1", "site": "s1", "source": "nvml"}
    assert node.fields == {"gpu_power_w": 90.75}  # host power unknown: omitted
    assert len(points) == 3


async def test_power_is_recorded_once_per_sample_interval(tmp_path: Path) -> None:
    samples = [PowerSample(T0 + s, "model", (_gpu(0, 10.0 + s),), 20.0, 500.0 + s) for s in range(12)]
    points = await _record(tmp_path, samples, sample_interval_s=5.0)
    node = [p for p in points if p.measurement == "node_power"]
    assert [p.time_ns for p in node] == [time_ns_from_s(T0 + s) for s in (0, 5, 10)]
    assert node[1].fields == {"gpu_power_w": 15.0, "host_power_w": 20.0, "host_energy_j": 505.0}


async def test_non_finite_power_is_left_out_not_recorded_as_garbage(tmp_path: Path) -> None:
    sample = PowerSample(T0, "nvml", (_gpu(0, math.nan), _gpu(1, 30.0)), host_power_w=math.inf)
    points = await _record(tmp_path, [sample])
    assert [(p.measurement, p.tags.get("gpu")) for p in points] == [("gpu", "1")]


def _dr_event(start_s: float, duration_s: float) -> DemandResponseEvent:
    payload = DrPayload("SIMPLE", (1,))
    return DemandResponseEvent("e1", "p1", None, 0, (DrInterval(start_s, duration_s, (payload,)),))


async def test_signals_become_signal_points(tmp_path: Path) -> None:
    windows = (SurplusWindow(T0 - 60, T0 + 600, 2500.0), SurplusWindow(T0 + 3600, T0 + 7200, 900.0))
    events = [
        SignalAccepted(Reading(SignalKind.CARBON_G_PER_KWH, 212.5, 5.0, "t/c", source_time_s=T0 - 30), T0),
        SignalAccepted(Reading(SignalKind.SURPLUS_FORECAST, windows, 5.0), T0 + 1),
        SignalAccepted(Reading(SignalKind.SURPLUS_FORECAST, windows[1:], 5.0), T0 + 2),
        SignalAccepted(Reading(SignalKind.DEMAND_RESPONSE, _dr_event(T0, 60.0), 5.0), T0 + 3),
        SignalAccepted(Reading(SignalKind.DEMAND_RESPONSE, _dr_event(T0 + 90, 9.0), 5.0), T0 + 4),
        SignalAccepted(Reading(SignalKind.PRICE_PER_MWH, -12, 5.0), T0 + 5),
        NodeStatus("online", T0 + 6),  # not telemetry
    ]
    points = await _record(tmp_path, events)
    assert [(p.tags["kind"], dict(p.fields)) for p in points if p.measurement == "signal"] == [
        ("carbon", {"value": 212.5, "age_s": 30.0}),
        ("surplus_forecast", {"value": 2500.0, "windows": 2, "age_s": 0.0}),
        ("surplus_forecast", {"value": 0.0, "windows": 1, "age_s": 0.0}),
        ("demand_response", {"value": 1.0, "active": 1, "age_s": 0.0}),
        ("demand_response", {"value": 0.0, "active": 0, "age_s": 0.0}),
        ("price", {"value": -12.0, "age_s": 0.0}),
    ]
    assert all(p.measurement == "signal" for p in points)


async def test_rejected_signals_count_one_per_message(tmp_path: Path) -> None:
    events = [
        SignalRejected("t/c", SignalKind.CARBON_G_PER_KWH, "not_json", T0),
        SignalRejected("t/x", None, "unknown_topic", T0 + 1),
    ]
    points = await _record(tmp_path, events)
    assert [(p.tags, dict(p.fields)) for p in points] == [
        ({"node": "n1", "site": "s1", "kind": "carbon", "reason": "not_json"}, {"count": 1}),
        ({"node": "n1", "site": "s1", "kind": "unknown", "reason": "unknown_topic"}, {"count": 1}),
    ]


async def test_a_full_queue_drops_the_newest_and_counts_it(tmp_path: Path) -> None:
    config = _config(tmp_path)
    clock = ManualClock(T0)
    registry = CollectorRegistry()
    bus = EventBus()
    async with SqliteSink(config.telemetry_sqlite_path, 86400.0, registry, clock=clock) as sink:
        async with TelemetryRecorder(config, bus, sink, clock, registry, queue_size=3):
            for i in range(5):  # nothing consumes yet: the queue holds 3
                bus.publish(SignalRejected("t", None, f"r{i}", T0 + i))
        # __aexit__ drained the queue and flushed the sink.
        assert registry.get_sample_value("greenferry_telemetry_events_dropped_total") == 2.0
    reasons = [p.tags["reason"] for p in read_points(config.telemetry_sqlite_path)]
    assert reasons == ["r0", "r1", "r2"]


async def test_self_monitoring_point_every_interval(tmp_path: Path) -> None:
    config = _config(tmp_path, sample_interval_s=10.0)
    clock = ManualClock(T0)
    registry = CollectorRegistry()
    async with (
        SqliteSink(config.telemetry_sqlite_path, 86400.0, registry, clock=clock) as sink,
        TelemetryRecorder(config, EventBus(), sink, clock, registry) as recorder,
        asyncio.TaskGroup() as group,
    ):
        task = group.create_task(recorder.run())
        for _ in range(3):
            await _settle()
            clock.advance(10.0)
        await _settle()
        task.cancel()
    points = list(read_points(config.telemetry_sqlite_path))
    assert [p.measurement for p in points] == ["telemetry"] * 3
    assert points[0].fields == {"spooled_bytes": 0, "dropped_points": 0}
    assert registry.get_sample_value("greenferry_telemetry_points_total", {"measurement": "telemetry"}) == 3.0


def test_open_sink_follows_the_config(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    sqlite = open_sink(_config(tmp_path), ManualClock(), registry)
    assert isinstance(sqlite, SqliteSink)
    assert sqlite.path == tmp_path / "t.sqlite"
    influx_config = config_from_mapping(
        {
            "node": {"name": "n1", "site": "s1", "data_dir": str(tmp_path / "d")},
            "telemetry": {"type": "influxdb", "url": "http://127.0.0.1:1"},
        },
        environ={},
    )
    from greenferry.adapters.influx import InfluxSink

    influx = open_sink(influx_config, ManualClock(), CollectorRegistry())
    assert isinstance(influx, InfluxSink)
    assert influx.spool.directory == tmp_path / "d" / "spool"


def test_node_power_schema_needs_gpu_power() -> None:
    with pytest.raises(SchemaError, match="gpu_power_w"):
        NODE_POWER.point(1, {**TAGS, "source": "nvml"}, {"host_power_w": 1.0})


def test_docs_describe_every_measurement_tag_and_field() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "telemetry.md").read_text()
    for schema in MEASUREMENTS.values():
        assert f"### `{schema.name}`" in docs, schema.name
        section = docs.split(f"### `{schema.name}`", 1)[1].split("\n### ", 1)[0]
        for name in [t.name for t in schema.tags] + [f.name for f in schema.fields]:
            assert f"`{name}`" in section, (schema.name, name)


async def test_job_progress_and_migrations_become_points(tmp_path: Path) -> None:
    from greenferry.core.events import JobProgressed, MigrationEnded

    events = [
        JobProgressed(T0, "train-1", 120, None, 310.0),
        JobProgressed(T0 + 1, "train-1", 121, 0.5, float("nan")),
        MigrationEnded(T0 + 2, "train-1", "n1", "n2", "ok", 10**9, 42.5),
    ]
    points = await _record(tmp_path, events)
    jobs = [p for p in points if p.measurement == "job_progress"]
    assert [p.fields for p in jobs] == [{"step": 120, "power_w": 310.0}, {"step": 121, "progress": 0.5}]
    assert jobs[0].tags == {"node": "n1", "site": "s1", "job": "train-1"}
    (migration,) = [p for p in points if p.measurement == "migration"]
    assert migration.tags == {
        "node": "n1",
        "site": "s1",
        "job": "train-1",
        "src": "n1",
        "dst": "n2",
        "outcome": "ok",
    }
    assert migration.fields == {"bytes": 10**9, "duration_s": 42.5}
