"""Telemetry out: the declared measurement schemas, line protocol, and the recorder that feeds a sink.

Every point greenferry writes belongs to one of the measurements declared here, with explicit tags and
typed fields (no reflection over event classes: a renamed attribute cannot silently become a new column).
A Grafana dashboard queries exactly these names; change them only together with it and docs/telemetry.md.

The :class:`TelemetryRecorder` subscribes to the node's event bus and turns events into validated points:
``PowerSample`` -> ``gpu`` (one per GPU) + ``node_power``; ``SignalAccepted`` -> ``signal``;
``SignalRejected`` -> ``signal_rejected``; plus its own ``telemetry`` point every sample interval.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

from prometheus_client import CollectorRegistry, Counter

from greenferry.core.clock import Clock
from greenferry.core.dr import DemandResponseEvent
from greenferry.core.events import (
    Event,
    JobProgressed,
    MigrationEnded,
    PowerSample,
    SignalAccepted,
    SignalRejected,
)
from greenferry.core.signals import SignalKind, SurplusWindow
from greenferry.core.telemetry import FieldValue, Point
from greenferry.daemon.bus import EventBus, Overflow, Subscription

if TYPE_CHECKING:
    from greenferry.config import DaemonConfig

logger = logging.getLogger(__name__)

__all__ = [
    "GPU",
    "JOB_PROGRESS",
    "MEASUREMENTS",
    "MIGRATION",
    "NODE_POWER",
    "SIGNAL",
    "SIGNAL_REJECTED",
    "TELEMETRY",
    "FieldSpec",
    "ManagedTelemetrySink",
    "Measurement",
    "SchemaError",
    "SinkStats",
    "TagSpec",
    "TelemetryRecorder",
    "TelemetrySink",
    "encode_line",
    "encode_lines",
    "open_sink",
    "time_ns_from_s",
    "validate_point",
]


class SchemaError(ValueError):
    """A point that does not match its declared measurement: a programming error, not bad input."""


# -- schemas ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TagSpec:
    """One tag of a measurement. ``values``: the allowed values, where the set is closed."""

    name: str
    description: str
    values: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field: its Python type (float or int), unit, and whether every point carries it."""

    name: str
    type: type[float] | type[int]
    unit: str
    description: str
    required: bool = True


@dataclass(frozen=True, slots=True)
class Measurement:
    """A declared measurement: its name, tags, typed fields, and when it is written."""

    name: str
    tags: tuple[TagSpec, ...]
    fields: tuple[FieldSpec, ...]
    written: str

    def tag(self, name: str) -> TagSpec:
        """The tag spec called ``name``; raises KeyError."""
        for spec in self.tags:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def field(self, name: str) -> FieldSpec:
        """The field spec called ``name``; raises KeyError."""
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def point(self, time_ns: int, tags: Mapping[str, str], fields: Mapping[str, FieldValue]) -> Point:
        """A validated point of this measurement.

        Float fields accept an int (promoted); int fields accept only an int; booleans never pass.

        Raises:
            SchemaError: a missing or unknown tag or field, a wrong type, an empty tag value, a value
                outside a closed tag set, a non-finite float, or a negative timestamp.
        """
        point = Point(self.name, dict(fields), time_ns, dict(tags))
        return self.validate(point)

    def validate(self, point: Point) -> Point:
        """Check ``point`` against this schema; returns it with float fields promoted from int.

        Raises:
            SchemaError: see :meth:`point`.
        """
        where = f"measurement {self.name!r}"
        if point.measurement != self.name:
            raise SchemaError(f"{where}: point is for {point.measurement!r}")
        if type(point.time_ns) is not int or point.time_ns < 0:
            raise SchemaError(f"{where}: time_ns must be a non-negative int, got {point.time_ns!r}")
        declared_tags = {spec.name: spec for spec in self.tags}
        unknown = sorted(set(point.tags) - set(declared_tags))
        if unknown:
            raise SchemaError(f"{where}: unknown tag(s) {', '.join(unknown)}")
        for name, spec in declared_tags.items():
            value = point.tags.get(name)
            if value is None:
                raise SchemaError(f"{where}: tag {name!r} is missing")
            if not isinstance(value, str) or not value:
                raise SchemaError(f"{where}: tag {name!r} must be a non-empty str, got {value!r}")
            if spec.values is not None and value not in spec.values:
                raise SchemaError(f"{where}: tag {name}={value!r} is not one of {sorted(spec.values)}")
        declared_fields = {field_spec.name: field_spec for field_spec in self.fields}
        unknown = sorted(set(point.fields) - set(declared_fields))
        if unknown:
            raise SchemaError(f"{where}: unknown field(s) {', '.join(unknown)}")
        fields: dict[str, FieldValue] = {}
        for name, field_spec in declared_fields.items():
            if name not in point.fields:
                if field_spec.required:
                    raise SchemaError(f"{where}: field {name!r} is missing")
                continue
            fields[name] = _check_field(where, field_spec, point.fields[name])
        if not fields:
            raise SchemaError(f"{where}: a point needs at least one field")
        if all(type(fields[name]) is type(point.fields[name]) for name in fields):
            return point
        return Point(point.measurement, fields, point.time_ns, point.tags)


def _check_field(where: str, spec: FieldSpec, value: object) -> FieldValue:
    if isinstance(value, bool):
        raise SchemaError(f"{where}: field {spec.name!r} must be {spec.type.__name__}, got bool")
    if spec.type is int:
        if not isinstance(value, int):
            raise SchemaError(f"{where}: field {spec.name!r} must be int, got {type(value).__name__}")
        return value
    if isinstance(value, int):
        return float(value)
    if not isinstance(value, float):
        raise SchemaError(f"{where}: field {spec.name!r} must be float, got {type(value).__name__}")
    if not math.isfinite(value):
        raise SchemaError(f"{where}: field {spec.name!r} must be finite, got {value!r}")
    return value


_NODE = TagSpec("node", "node name ([node] name)")
_SITE = TagSpec("site", "site (micro-datacenter) name ([node] site)")

GPU = Measurement(
    "gpu",
    tags=(
        _NODE,
        _SITE,
        TagSpec("gpu", "GPU index on the node, as a string"),
        TagSpec("name", "GPU model name as the driver reports it"),
    ),
    fields=(
        FieldSpec("power_w", float, "W", "board power"),
        FieldSpec("energy_j", float, "J", "energy counter since an arbitrary origin (monotonic per boot)"),
        FieldSpec("utilization", float, "1", "GPU utilization 0..1", required=False),
        FieldSpec("power_limit_w", float, "W", "enforced power limit"),
    ),
    written="per GPU for each recorded power sample (every telemetry sample_interval_s)",
)

NODE_POWER = Measurement(
    "node_power",
    tags=(_NODE, _SITE, TagSpec("source", "power meter: nvml (measured) or model (hardware profile)")),
    fields=(
        FieldSpec("gpu_power_w", float, "W", "sum of every GPU's power"),
        FieldSpec("host_power_w", float, "W", "host CPU package power (RAPL)", required=False),
        FieldSpec("host_energy_j", float, "J", "host CPU energy counter (RAPL)", required=False),
    ),
    written="for each recorded power sample (every telemetry sample_interval_s)",
)

SIGNAL = Measurement(
    "signal",
    tags=(
        _NODE,
        _SITE,
        TagSpec("kind", "signal kind", frozenset(kind.value for kind in SignalKind)),
    ),
    fields=(
        FieldSpec(
            "value",
            float,
            "SI of the kind",
            "production/load W, carbon gCO2/kWh, price per MWh; surplus_forecast: power of the window "
            "covering the arrival time (0 if none); demand_response: 1.0 while an event is active",
        ),
        FieldSpec("windows", int, "1", "surplus_forecast only: number of forecast windows", required=False),
        FieldSpec(
            "active", int, "1", "demand_response only: 1 while an event is active, else 0", required=False
        ),
        FieldSpec("age_s", float, "s", "age of the reading on arrival (0 when the payload has no timestamp)"),
    ),
    written="for every accepted signal message",
)

SIGNAL_REJECTED = Measurement(
    "signal_rejected",
    tags=(
        _NODE,
        _SITE,
        TagSpec("kind", "signal kind, or 'unknown' when the topic matched no kind"),
        TagSpec("reason", "short, stable rejection reason (PayloadError.reason)"),
    ),
    fields=(FieldSpec("count", int, "1", "always 1: one point per rejected message (sum to count)"),),
    written="for every rejected signal message",
)

JOB_PROGRESS = Measurement(
    "job_progress",
    tags=(_NODE, _SITE, TagSpec("job", "job id")),
    fields=(
        FieldSpec("step", int, "1", "training step reached"),
        FieldSpec(
            "progress", float, "1", "fraction of the job done, 0..1 (when the job knows)", required=False
        ),
        FieldSpec("power_w", float, "W", "power the job draws", required=False),
    ),
    written="by the job runner while a job runs",
)

MIGRATION = Measurement(
    "migration",
    tags=(
        _NODE,
        _SITE,
        TagSpec("job", "job id"),
        TagSpec("src", "source node"),
        TagSpec("dst", "destination node"),
        TagSpec("outcome", "how the migration ended (e.g. ok, failed, aborted)"),
    ),
    fields=(
        FieldSpec("bytes", int, "B", "checkpoint bytes moved"),
        FieldSpec("duration_s", float, "s", "checkpoint + transfer + restore time", required=False),
    ),
    written="by the migration protocol when a migration ends",
)

TELEMETRY = Measurement(
    "telemetry",
    tags=(_NODE, _SITE),
    fields=(
        FieldSpec("spooled_bytes", int, "B", "bytes waiting in the on-disk spool"),
        FieldSpec("dropped_points", int, "1", "points lost since start (spool overflow, server rejections)"),
    ),
    written="by the recorder every telemetry sample_interval_s (self-monitoring)",
)

MEASUREMENTS: Mapping[str, Measurement] = {
    m.name: m for m in (GPU, NODE_POWER, SIGNAL, SIGNAL_REJECTED, JOB_PROGRESS, MIGRATION, TELEMETRY)
}


def validate_point(point: Point) -> Point:
    """Validate ``point`` against its declared measurement.

    Raises:
        SchemaError: an undeclared measurement, or see :meth:`Measurement.point`.
    """
    schema = MEASUREMENTS.get(point.measurement)
    if schema is None:
        raise SchemaError(
            f"undeclared measurement {point.measurement!r}; declared: {', '.join(MEASUREMENTS)}"
        )
    return schema.validate(point)


def time_ns_from_s(time_s: float) -> int:
    """UTC POSIX seconds to integer nanoseconds, rounded to the microsecond (a float's honest precision)."""
    return round(time_s * 1_000_000) * 1000


# -- line protocol ----------------------------------------------------------------------------------

_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"})
_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n"})
_STRING_ESCAPES = str.maketrans({'"': r"\"", "\\": "\\\\"})


def _encode_field(value: FieldValue) -> str:
    # bool before int: bool is an int subclass.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SchemaError(f"line protocol has no spelling for {value!r}")
        return repr(value)
    return '"' + value.translate(_STRING_ESCAPES) + '"'


def encode_line(point: Point) -> str:
    """One point as an InfluxDB line-protocol line (no newline), timestamp in ns, tags sorted by key.

    Raises:
        SchemaError: a point without fields, or a non-finite float.
    """
    if not point.fields:
        raise SchemaError(f"measurement {point.measurement!r}: a point needs at least one field")
    parts = [point.measurement.translate(_MEASUREMENT_ESCAPES)]
    for key in sorted(point.tags):
        parts.append(f",{key.translate(_KEY_ESCAPES)}={point.tags[key].translate(_KEY_ESCAPES)}")
    fields = ",".join(
        f"{key.translate(_KEY_ESCAPES)}={_encode_field(value)}" for key, value in point.fields.items()
    )
    parts.append(f" {fields} {point.time_ns}")
    return "".join(parts)


def encode_lines(points: Sequence[Point]) -> bytes:
    """Points as a newline-separated line-protocol body (UTF-8, no trailing newline)."""
    return "\n".join(encode_line(point) for point in points).encode()


# -- sinks ------------------------------------------------------------------------------------------


class TelemetrySink(Protocol):
    """Where points go: InfluxDB (or VictoriaMetrics) with a disk spool, or the embedded SQLite store."""

    async def write(self, points: Sequence[Point]) -> None:
        """Accept ``points`` (buffered; they reach the store on the sink's schedule or at flush)."""
        ...

    async def flush(self) -> None:
        """Push everything buffered to the store (or, for InfluxDB while it is down, to the disk spool)."""
        ...

    async def close(self) -> None:
        """Flush and release the sink's resources."""
        ...


class ManagedTelemetrySink(TelemetrySink, Protocol):
    """A sink that is also a long-lived component: enter it, run its loop, exit it (closes)."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def run(self) -> None:
        """Deliver batches (and replay the spool) until cancelled."""
        ...


@dataclass(frozen=True, slots=True)
class SinkStats:
    """A sink's self-monitoring figures, written as the ``telemetry`` measurement."""

    spooled_bytes: int
    dropped_points: int


@runtime_checkable
class _ReportsStats(Protocol):
    def stats(self) -> SinkStats: ...


def open_sink(config: DaemonConfig, clock: Clock, registry: CollectorRegistry) -> ManagedTelemetrySink:
    """The sink ``config.telemetry`` asks for (not yet entered: use it as an async context manager).

    InfluxDB spools to ``<data_dir>/spool``; SQLite writes ``config.telemetry_sqlite_path``.
    """
    from greenferry.config import InfluxTelemetryConfig

    if isinstance(config.telemetry, InfluxTelemetryConfig):
        from greenferry.adapters.influx import InfluxSink

        return InfluxSink(config.telemetry, config.node.data_dir / "spool", clock, registry)
    from greenferry.adapters.sqlite_store import SqliteSink

    return SqliteSink(config.telemetry_sqlite_path, config.telemetry.retention_s, registry)


# -- the recorder -----------------------------------------------------------------------------------


def _dr_active(value: object, now_s: float) -> bool:
    """Whether a demand-response signal value means "an event is in force at ``now_s``"."""
    if isinstance(value, DemandResponseEvent):
        return value.is_active(now_s)
    if isinstance(value, bool | int | float):
        return value != 0
    if isinstance(value, tuple | list):
        return any(_dr_active(item, now_s) for item in value)
    return False


class TelemetryRecorder:
    """Bus events -> validated points -> the sink, in batches.

    The recorder's bus queue (``queue_size`` events) drops the NEWEST event when full: what is queued is
    already in time order, so an overload leaves a gap at the end rather than holes in the middle. Drops
    are counted (``greenferry_telemetry_events_dropped_total``). The queue only fills if the event loop
    is starved, because :meth:`TelemetrySink.write` only buffers (the sink's own loop does the I/O).

    Power samples are recorded at most once per ``sample_interval_s`` of the telemetry config (the meter
    may sample faster for the policies); the energy fields are counters, so no energy is lost by this.

    Args:
        config: node config (node/site tags, telemetry sample interval, shutdown bound).
        bus: the node's event bus (subscribed on ``__aenter__``).
        sink: where points go; flushed on ``__aexit__`` (the caller owns and closes it).
        clock: time source for the self-monitoring point.
        registry: Prometheus registry for the recorder's metrics.
        queue_size: events the bus queue holds.
        flush_timeout_s: bound on the final flush (default: half of ``shutdown_timeout_s``, at most 5 s).
    """

    def __init__(
        self,
        config: DaemonConfig,
        bus: EventBus,
        sink: TelemetrySink,
        clock: Clock,
        registry: CollectorRegistry,
        *,
        queue_size: int = 10_000,
        flush_timeout_s: float | None = None,
        max_batch_events: int = 1000,
    ) -> None:
        self._node = config.node.name
        self._site = config.node.site
        self._interval_s = config.telemetry.sample_interval_s
        self._bus = bus
        self._sink = sink
        self._clock = clock
        self._queue_size = queue_size
        self._max_batch_events = max_batch_events
        self._flush_timeout_s = (
            flush_timeout_s if flush_timeout_s is not None else min(5.0, config.shutdown_timeout_s / 2)
        )
        self._subscription: Subscription[Event] | None = None
        self._last_power_s = -math.inf
        self._dropped_seen = 0
        self._points = Counter(
            "greenferry_telemetry_points",
            "Points the recorder handed to the telemetry sink",
            ["measurement"],
            registry=registry,
        )
        self._events_dropped = Counter(
            "greenferry_telemetry_events_dropped",
            "Bus events the recorder's full queue refused (drop-newest)",
            registry=registry,
        )
        self._invalid = Counter(
            "greenferry_telemetry_invalid_values",
            "Non-finite measured values left out of (or skipping) a point",
            ["measurement"],
            registry=registry,
        )

    async def __aenter__(self) -> Self:
        self._subscription = self._bus.subscribe("telemetry", self._queue_size, Overflow.DROP_NEWEST)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        subscription = self._subscription
        if subscription is None:
            return
        self._subscription = None
        self._bus.unsubscribe(subscription)
        events: list[Event] = []
        while True:
            try:
                events.append(subscription.get_nowait())
            except asyncio.QueueEmpty:
                break
        self._count_drops(subscription)
        try:
            async with asyncio.timeout(self._flush_timeout_s):
                if events:
                    await self._write(self.convert(events))
                await self._sink.flush()
        except TimeoutError:
            logger.warning(
                "telemetry flush did not finish within %.1f s; the sink keeps what is left",
                self._flush_timeout_s,
            )

    async def run(self) -> None:
        """Record events until cancelled (plus a ``telemetry`` self-monitoring point per interval)."""
        if self._subscription is None:
            raise RuntimeError("enter the recorder (async with) before running it")
        async with asyncio.TaskGroup() as group:
            group.create_task(self._consume(self._subscription), name="greenferry-telemetry-consume")
            group.create_task(self._self_monitor(), name="greenferry-telemetry-self")

    async def _consume(self, subscription: Subscription[Event]) -> None:
        while True:
            events = [await subscription.get()]
            while len(events) < self._max_batch_events:
                try:
                    events.append(subscription.get_nowait())
                except asyncio.QueueEmpty:
                    break
            self._count_drops(subscription)
            points = self.convert(events)
            if points:
                await self._write(points)

    async def _self_monitor(self) -> None:
        while True:
            await self._clock.sleep(self._interval_s)
            await self._write([self.self_point()])

    async def _write(self, points: list[Point]) -> None:
        await self._sink.write(points)
        for point in points:
            self._points.labels(point.measurement).inc()

    def _count_drops(self, subscription: Subscription[Event]) -> None:
        new = subscription.dropped - self._dropped_seen
        if new > 0:
            self._events_dropped.inc(new)
            self._dropped_seen = subscription.dropped

    # -- conversion (explicit, one function per event type) -----------------------------------------

    def convert(self, events: Sequence[Event]) -> list[Point]:
        """The points for ``events`` (events without a measurement, e.g. NodeStatus, give none).

        Raises:
            SchemaError: a conversion produced a point that does not match its schema (a bug).
        """
        points: list[Point] = []
        for event in events:
            if isinstance(event, PowerSample):
                points.extend(self._power_points(event))
            elif isinstance(event, SignalAccepted):
                point = self._signal_point(event)
                if point is not None:
                    points.append(point)
            elif isinstance(event, SignalRejected):
                points.append(self._rejected_point(event))
            elif isinstance(event, JobProgressed):
                points.append(self._job_point(event))
            elif isinstance(event, MigrationEnded):
                points.append(self._migration_point(event))
        return points

    def _job_point(self, event: JobProgressed) -> Point:
        fields: dict[str, float | int] = {"step": event.step}
        power_w = self._finite("job_progress", event.power_w)
        if power_w is not None:
            fields["power_w"] = power_w
        progress = self._finite("job_progress", event.progress)
        if progress is not None:
            fields["progress"] = progress
        return JOB_PROGRESS.point(
            time_ns_from_s(event.time_s),
            {"node": self._node, "site": self._site, "job": event.job_id},
            fields,
        )

    def _migration_point(self, event: MigrationEnded) -> Point:
        tags = {
            "node": self._node,
            "site": self._site,
            "job": event.job_id,
            "src": event.src,
            "dst": event.dst,
            "outcome": event.outcome,
        }
        fields: dict[str, float | int] = {"bytes": event.size_bytes}
        duration_s = self._finite("migration", event.duration_s)
        if duration_s is not None:
            fields["duration_s"] = duration_s
        return MIGRATION.point(time_ns_from_s(event.time_s), tags, fields)

    def self_point(self) -> Point:
        """The ``telemetry`` self-monitoring point for now (zeros for sinks that do not spool)."""
        stats = self._sink.stats() if isinstance(self._sink, _ReportsStats) else SinkStats(0, 0)
        return TELEMETRY.point(
            time_ns_from_s(self._clock.now_s()),
            {"node": self._node, "site": self._site},
            {"spooled_bytes": stats.spooled_bytes, "dropped_points": stats.dropped_points},
        )

    def _finite(self, measurement: str, value: float | None) -> float | None:
        if value is None:
            return None
        if math.isfinite(value):
            return float(value)
        self._invalid.labels(measurement).inc()
        return None

    def _power_points(self, sample: PowerSample) -> list[Point]:
        # 5 % tolerance so that a meter ticking at exactly the interval is not skipped by jitter.
        if sample.time_s - self._last_power_s < self._interval_s * 0.95:
            return []
        self._last_power_s = sample.time_s
        time_ns = time_ns_from_s(sample.time_s)
        points: list[Point] = []
        gpu_total_w = 0.0
        gpu_total_ok = True
        for gpu in sample.gpus:
            power_w = self._finite("gpu", gpu.power_w)
            energy_j = self._finite("gpu", gpu.energy_j)
            limit_w = self._finite("gpu", gpu.power_limit_w)
            if power_w is None or energy_j is None or limit_w is None:
                gpu_total_ok = False
                continue
            gpu_total_w += power_w
            fields: dict[str, FieldValue] = {
                "power_w": power_w,
                "energy_j": energy_j,
                "power_limit_w": limit_w,
            }
            utilization = self._finite("gpu", gpu.utilization)
            if utilization is not None:
                fields["utilization"] = utilization
            tags = {
                "node": self._node,
                "site": self._site,
                "gpu": str(gpu.index),
                "name": gpu.name or "unknown",
            }
            points.append(GPU.point(time_ns, tags, fields))
        node_fields: dict[str, FieldValue] = {}
        if gpu_total_ok:
            node_fields["gpu_power_w"] = gpu_total_w
        host_power_w = self._finite("node_power", sample.host_power_w)
        if host_power_w is not None:
            node_fields["host_power_w"] = host_power_w
        host_energy_j = self._finite("node_power", sample.host_energy_j)
        if host_energy_j is not None:
            node_fields["host_energy_j"] = host_energy_j
        if "gpu_power_w" in node_fields:
            tags = {"node": self._node, "site": self._site, "source": sample.source or "unknown"}
            points.append(NODE_POWER.point(time_ns, tags, node_fields))
        return points

    def _signal_point(self, event: SignalAccepted) -> Point | None:
        reading = event.reading
        kind = reading.kind
        fields: dict[str, FieldValue] = {}
        if kind is SignalKind.SURPLUS_FORECAST:
            windows = _windows(reading.value)
            covering = [w.power_w for w in windows if w.start_s <= event.time_s < w.end_s]
            fields["value"] = float(covering[0]) if covering else 0.0
            fields["windows"] = len(windows)
        elif kind is SignalKind.DEMAND_RESPONSE:
            active = _dr_active(reading.value, event.time_s)
            fields["value"] = 1.0 if active else 0.0
            fields["active"] = int(active)
        else:
            value = self._finite("signal", _as_float(reading.value))
            if value is None:
                logger.debug(
                    "signal %s: value %r is not a finite number; not recorded", kind.value, reading.value
                )
                return None
            fields["value"] = value
        age_s = 0.0
        if reading.source_time_s is not None and math.isfinite(reading.source_time_s):
            age_s = max(0.0, event.time_s - reading.source_time_s)
        fields["age_s"] = age_s
        tags = {"node": self._node, "site": self._site, "kind": kind.value}
        return SIGNAL.point(time_ns_from_s(event.time_s), tags, fields)

    def _rejected_point(self, event: SignalRejected) -> Point:
        tags = {
            "node": self._node,
            "site": self._site,
            "kind": event.kind.value if event.kind is not None else "unknown",
            "reason": event.reason or "unknown",
        }
        return SIGNAL_REJECTED.point(time_ns_from_s(event.time_s), tags, {"count": 1})


def _windows(value: Any) -> tuple[SurplusWindow, ...]:
    if isinstance(value, tuple | list):
        return tuple(w for w in value if isinstance(w, SurplusWindow))
    return ()


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
