"""Typed events the node publishes on its bus; sinks (telemetry, status, metrics) subscribe. Pure data."""

from __future__ import annotations

from dataclasses import dataclass, field

from greenferry.core.signals import Reading, SignalKind


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU at one instant. Powers in W, energy in J (a counter since an arbitrary origin)."""

    index: int
    name: str
    power_w: float
    energy_j: float
    utilization: float | None  # 0..1, None where unknown
    power_limit_w: float
    power_limit_min_w: float
    power_limit_max_w: float
    energy_from_counter: bool  # True: the hardware counter; False: integrated from power samples


@dataclass(frozen=True, slots=True)
class PowerSample:
    """The node's measured power at ``time_s`` (UTC POSIX s). ``source`` names the meter ("nvml", "model")."""

    time_s: float
    source: str
    gpus: tuple[GpuReading, ...]
    host_power_w: float | None = None  # CPU package power from RAPL, where readable
    host_energy_j: float | None = None

    @property
    def gpu_power_w(self) -> float:
        """Sum of every GPU's power (W)."""
        return sum(g.power_w for g in self.gpus)


@dataclass(frozen=True, slots=True)
class SignalAccepted:
    """A signal payload parsed and accepted; ``time_s`` is the UTC time it arrived."""

    reading: Reading
    time_s: float


@dataclass(frozen=True, slots=True)
class SignalRejected:
    """A payload on a signal topic that could not be accepted, and why."""

    topic: str
    kind: SignalKind | None
    reason: str
    time_s: float
    payload_bytes: int = 0


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """The node's lifecycle state ("starting", "online", "stopping", "offline") with details."""

    state: str
    time_s: float
    details: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JobProgressed:
    """A job on this node reported progress (``progress`` 0..1 where the job knows its length)."""

    time_s: float
    job_id: str
    step: int
    progress: float | None
    power_w: float


@dataclass(frozen=True, slots=True)
class MigrationEnded:
    """A migration this node took part in ended: ``outcome`` is "ok", "aborted" or "failed"."""

    time_s: float
    job_id: str
    src: str
    dst: str
    outcome: str
    size_bytes: int
    duration_s: float
    reason: str = ""


Event = SignalAccepted | SignalRejected | PowerSample | NodeStatus | JobProgressed | MigrationEnded
