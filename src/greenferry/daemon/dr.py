"""The node's answer to demand response: events in, a plan (caps, pauses, moves) applied, delivery measured.

:class:`DrController` keeps a :class:`~greenferry.core.dr.DrEventBook` fed by the MQTT ``demand_response``
signal (through the bus) and by the OpenADR VEN (:meth:`DrController.on_openadr_event`). Whenever what is
in force changes (an event arrives, is modified or cancelled, an interval starts or ends, jobs come or go)
it plans with :func:`greenferry.core.dr_plan.plan_dr` and applies the difference:

- GPU power caps through the node's power meter (NVML on real GPUs). Before the first cap on a GPU its
  original limit is written to a small SQLite journal (``<data_dir>/dr.sqlite``, synchronous writes);
  the limit is restored when no event needs it any more, at shutdown, and at the next start after a crash.
  A restore that fails stays journaled and is retried every tick: no GPU is left capped after an event.
  A cap the hardware refuses marks that GPU uncappable for the event and the plan is made again without it.
- pausing jobs at a checkpoint (:meth:`Orchestrator.hold`), released when the event ends;
- migrating jobs away (:meth:`Orchestrator.migrate`) when a peer with surplus can take them in time.

Every event gets a decision (opt in or out, with the reason). With several events in force the node meets
the strictest one it can; the ones it cannot meet are opted out. Delivery is measured, not assumed: the
node's power averaged over ``baseline_window_s`` before the event against the mean while it is in force.
The state is in :meth:`DrController.status`, the retained MQTT topic ``<prefix>/nodes/<node>/dr``, and
Prometheus gauges.

GPUs are attributed to running jobs in job-id order (the supervisor does not pin jobs to devices yet), which
is exact for one job per node and a planning approximation beyond.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from prometheus_client import CollectorRegistry, Counter, Gauge

from greenferry.config import DaemonConfig
from greenferry.core.clock import Clock
from greenferry.core.dr import DemandResponseEvent, DrEventBook
from greenferry.core.dr_plan import DrPlan, DrRules, DrTarget, JobLoad, plan_dr, target_for
from greenferry.core.events import PowerSample, SignalAccepted
from greenferry.core.jobs import ACTIVE_STATES, JobInfo
from greenferry.core.signals import SignalKind
from greenferry.daemon.bus import EventBus
from greenferry.errors import GreenferryError

__all__ = ["CapJournal", "DrController", "EventDecision"]

logger = logging.getLogger(__name__)

_TICK_S = 1.0  # interval boundaries and restore retries are checked this often (clock time)
_HISTORY_S = 86400.0  # power history kept for baselines at most
_MAX_DECISIONS = 1000
_MAX_REPLANS = 4  # plans in a row when caps are refused
_ELASTIC = "elastic:"  # job ids of elastic shares in plans


class CapJournal:
    """GPU power limits as they were before greenferry capped them, on disk until they are restored.

    Writes are synchronous (``synchronous=FULL``): a cap is on disk before the GPU sees it. Reads come from
    an in-memory copy.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS power_caps ("
            "gpu_index INTEGER PRIMARY KEY, original_limit_w REAL NOT NULL, "
            "limit_w REAL NOT NULL, event_id TEXT NOT NULL, time_s REAL NOT NULL)"
        )
        rows = self._db.execute("SELECT gpu_index, original_limit_w FROM power_caps ORDER BY gpu_index")
        self._originals = {int(i): float(w) for i, w in rows}

    def record(self, caps: Sequence[tuple[int, float, float]], event_id: str, now_s: float) -> None:
        """Note caps (GPU, original limit, new limit) before they are applied, in one transaction; the first
        original limit of a GPU is kept."""
        if not caps:
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO power_caps VALUES (?, ?, ?, ?, ?) ON CONFLICT(gpu_index) DO UPDATE SET "
                "limit_w = excluded.limit_w, event_id = excluded.event_id, time_s = excluded.time_s",
                [(index, original, limit, event_id, now_s) for index, original, limit in caps],
            )
        for index, original, _ in caps:
            self._originals.setdefault(index, original)

    def forget(self, gpu_index: int) -> None:
        """The GPU is back at its original limit."""
        self._db.execute("DELETE FROM power_caps WHERE gpu_index = ?", (gpu_index,))
        self._originals.pop(gpu_index, None)

    def originals(self) -> dict[int, float]:
        """GPU index -> the limit to restore."""
        return dict(self._originals)

    def original(self, gpu_index: int) -> float | None:
        """The limit to restore on ``gpu_index``, if it is journaled."""
        return self._originals.get(gpu_index)

    def close(self) -> None:
        """Close the database."""
        self._db.close()


@dataclass(slots=True)
class EventDecision:
    """What the node decided for one event, and what it measured."""

    event_id: str
    opt_in: bool
    reason: str
    requested_shed_w: float = 0.0
    planned_shed_w: float = 0.0
    baseline_w: float | None = None
    during_sum_w: float = 0.0
    during_samples: int = 0
    cost_work_s: float = 0.0
    active: bool = False
    ended: bool = False

    @property
    def delivered_w(self) -> float | None:
        """Measured reduction: baseline minus the mean power while the event was in force."""
        if self.baseline_w is None or self.during_samples == 0:
            return None
        return self.baseline_w - self.during_sum_w / self.during_samples

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        delivered = self.delivered_w
        return {
            "event_id": self.event_id,
            "opt_in": self.opt_in,
            "reason": self.reason,
            "requested_shed_w": round(self.requested_shed_w, 3),
            "planned_shed_w": round(self.planned_shed_w, 3),
            "baseline_w": None if self.baseline_w is None else round(self.baseline_w, 3),
            "delivered_w": None if delivered is None else round(delivered, 3),
            "cost_work_s": round(self.cost_work_s, 3),
            "active": self.active,
            "ended": self.ended,
        }


@dataclass(slots=True)
class _Applied:
    """What the controller has put in force."""

    caps_w: dict[int, float] = field(default_factory=dict)  # GPU -> limit set by us
    held: set[str] = field(default_factory=set)
    migrated: set[str] = field(default_factory=set)
    key: tuple[Any, ...] | None = None
    plan: DrPlan | None = None


class DrController:
    """Plans and applies the node's answer to demand-response events (see the module docstring).

    Args:
        config: the node configuration (``[dr]``, ``node.data_dir``, the hardware profile).
        clock: time (events are in UTC POSIX seconds).
        bus: where DR readings and power samples arrive.
        meter: the power meter whose ``set_power_limit_w`` caps GPUs.
        orchestrator: the node's jobs (None: caps only, nothing to pause or move).
        registry: Prometheus registry for the gauges.
        publish: publishes the retained DR state (MQTT), or None.
    """

    def __init__(
        self,
        config: DaemonConfig,
        clock: Clock,
        bus: EventBus,
        meter: Any,
        orchestrator: Any | None = None,
        *,
        registry: CollectorRegistry | None = None,
        publish: Callable[[bytes], Awaitable[None]] | None = None,
        elastic: Any | None = None,
    ) -> None:
        from greenferry.hardware_profiles import resolve_profile

        self.config = config
        self.rules = DrRules.from_config(config.dr)
        self.clock = clock
        self.book = DrEventBook()
        self._bus = bus
        self._meter = meter
        self._orchestrator = orchestrator
        self._elastic = elastic
        self._publish = publish
        self._profile = resolve_profile(config.node.hardware_profile)
        self._journal: CapJournal | None = None
        self._subscription: Any = None
        self._wake = asyncio.Event()
        self._applied = _Applied()
        self._decisions: dict[str, EventDecision] = {}
        self._history: deque[tuple[float, float]] = deque()
        self._latest: PowerSample | None = None
        self._uncappable: set[int] = set()
        self._uncapped_w: dict[str, float] = {}
        self._pending_restore: dict[int, float] = {}
        self._m_requested = Gauge(
            "greenferry_dr_requested_shed_w", "Reduction the events in force ask for (W).", registry=registry
        )
        self._m_planned = Gauge(
            "greenferry_dr_planned_shed_w", "Reduction the plan in force delivers (W).", registry=registry
        )
        self._m_caps = Gauge(
            "greenferry_dr_capped_gpus", "GPUs capped for demand response.", registry=registry
        )
        self._m_held = Gauge(
            "greenferry_dr_paused_jobs", "Jobs paused for demand response.", registry=registry
        )
        self._m_decisions = Counter(
            "greenferry_dr_decisions", "Demand-response decisions, by answer.", ["answer"], registry=registry
        )

    # ------------------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        self._journal = CapJournal(self.config.node.data_dir / "dr.sqlite")
        self._pending_restore = self._journal.originals()
        if self._pending_restore:
            logger.warning(
                "restoring GPU power limits left by an earlier run: %s",
                ", ".join(f"GPU {i} -> {w:g} W" for i, w in sorted(self._pending_restore.items())),
            )
            await self._restore_pending()
        self._subscription = self._bus.subscribe("dr", maxsize=10_000)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._subscription is not None:
            self._bus.unsubscribe(self._subscription)
            self._subscription = None
        try:
            await self._stand_down()
        finally:
            if self._journal is not None:
                self._journal.close()
                self._journal = None

    async def run(self) -> None:
        """Consume the bus and re-plan whenever what is in force may have changed, until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._consume(), name="greenferry-dr-bus")
            group.create_task(self._tick(), name="greenferry-dr-tick")
            while True:
                await self._wake.wait()
                self._wake.clear()
                try:
                    await self.evaluate()
                except Exception:  # the top of a supervised loop: log and keep answering
                    logger.exception("demand-response evaluation failed")

    async def _consume(self) -> None:
        assert self._subscription is not None
        async for event in self._subscription:
            if isinstance(event, PowerSample):
                self._observe(event)
            elif (
                isinstance(event, SignalAccepted)
                and event.reading.kind is SignalKind.DEMAND_RESPONSE
                and isinstance(event.reading.value, DemandResponseEvent)
            ):
                self.submit(event.reading.value)

    async def _tick(self) -> None:
        while True:
            await self.clock.sleep(_TICK_S)
            self._wake.set()

    # ------------------------------------------------------------------------------ inputs

    def submit(self, event: DemandResponseEvent) -> bool:
        """Take one event version (new, modified or cancelled); True when the book changed."""
        changed = self.book.apply(event)
        if changed:
            logger.info(
                "demand-response event %s %s (modification %d)",
                event.id,
                "cancelled" if event.cancelled else "received",
                event.modification_number,
            )
            self._wake.set()
        return changed

    async def on_openadr_event(self, event: DemandResponseEvent) -> bool:
        """The VEN's callback: take the event and answer opt in (True) or out (False) now."""
        self.submit(event)
        if event.cancelled:
            await self.evaluate()
            return True
        now_s = self.clock.now_s()
        end_s = event.end_s
        if end_s is not None and end_s <= now_s:
            self._decide(event.id, False, "the event is already over", None)
            return False
        await self.evaluate()
        decision = self._decisions.get(event.id)
        if (
            decision is None
        ):  # not in force yet: answer from a plan for its first interval against today's load
            decision = self._forecast_decision(event, now_s)
        return decision.opt_in

    def measured_load_w(self) -> float | None:
        """The node's latest measured power (GPUs plus host where measured), for OpenADR reports."""
        sample = self._latest
        if sample is None:
            return None
        return sample.gpu_power_w + (sample.host_power_w or 0.0)

    def _observe(self, sample: PowerSample) -> None:
        self._latest = sample
        total_w = sample.gpu_power_w + (sample.host_power_w or 0.0)
        self._history.append((sample.time_s, total_w))
        while self._history and self._history[0][0] < sample.time_s - _HISTORY_S:
            self._history.popleft()
        for decision in self._decisions.values():
            if decision.active and decision.opt_in:
                decision.during_sum_w += total_w
                decision.during_samples += 1

    # ------------------------------------------------------------------------------ planning

    def _baseline_w(self, start_s: float) -> float:
        """Mean power over ``baseline_window_s`` before ``start_s`` (the latest sample when none)."""
        window = self.config.dr.baseline_window_s
        values = [w for t, w in self._history if start_s - window <= t < start_s]
        if values:
            return sum(values) / len(values)
        latest = self.measured_load_w()
        return latest if latest is not None else self._modelled_load_w()

    def _modelled_load_w(self) -> float:
        return sum(j.stop_shed_w + j.gpu_count * j.idle_power_w for j in self._job_loads())

    def _jobs(self) -> list[JobInfo]:
        """Running jobs and the ones this controller holds, in id order."""
        if self._orchestrator is None:
            return []
        node = self.config.node.name
        return [
            j
            for j in self._orchestrator.jobs()
            if j.node == node and (j.state in ACTIVE_STATES or j.job_id in self._applied.held)
        ]

    def _job_loads(self) -> list[JobLoad]:
        from greenferry.hardware_profiles import resolve_profile

        orchestrator = self._orchestrator
        sample = self._latest
        readings = {g.index: g for g in sample.gpus} if sample is not None else {}
        free = sorted(readings) if readings else list(range(self.config.node.gpu_count))
        loads: list[JobLoad] = []
        free = self._elastic_loads(loads, free)
        if orchestrator is None:
            return loads
        for info in self._jobs():
            spec = info.spec
            profile = resolve_profile(spec.hardware_profile) if spec.hardware_profile else self._profile
            count = min(spec.gpu_count, len(free))
            gpus, free = tuple(free[:count]), free[count:]
            own = [readings[i] for i in gpus if i in readings]
            measured = [g.power_w for g in own if g.index not in self._applied.caps_w]
            uncapped = self._uncapped_w.get(info.job_id)
            if uncapped is None:
                uncapped = (
                    sum(measured) / len(measured)
                    if measured and len(measured) == len(own) and info.job_id not in self._applied.held
                    else profile.train_power_w
                )
                if uncapped <= profile.idle_power_w:
                    uncapped = profile.train_power_w
            limit_min = max((g.power_limit_min_w for g in own), default=profile.power_limit_min_w)
            limit_max = min((g.power_limit_max_w for g in own), default=profile.power_limit_max_w)
            if any(i in self._uncappable for i in gpus):
                limit_min = max(limit_min, uncapped)
            limit_min = min(limit_min, limit_max)
            checkpoint_s, restore_s = orchestrator.job_timings_s(info.job_id)
            option = None
            if self.rules.allow_migrate and spec.moves_whole:
                job_power = spec.power_w if spec.power_w is not None else uncapped * max(1, count)
                option = orchestrator.migration_option(info.job_id, min_surplus_w=job_power)
            loads.append(
                JobLoad(
                    job_id=info.job_id,
                    gpu_indices=gpus,
                    gpu_power_w=uncapped,
                    idle_power_w=profile.idle_power_w,
                    host_power_w=profile.host_power_w,
                    limit_min_w=limit_min,
                    limit_max_w=limit_max,
                    rate=profile.relative_throughput * max(1, count),
                    stop_lead_s=checkpoint_s,
                    restart_s=restore_s,
                    migration_s=None if option is None else option[0],
                    migration_dst=None if option is None else option[1],
                )
            )
        return loads

    def _elastic_loads(self, loads: list[JobLoad], free: list[int]) -> list[int]:
        """Elastic shares that run here (or that this controller holds out) as loads the plan may stop."""
        if self._elastic is None:
            return free
        p = self._profile
        checkpoint_s, restore_s = self.config.migration.checkpoint_write_s, self.config.migration.restore_s
        for name, member in sorted(self._elastic.members.items()):
            job_id = f"{_ELASTIC}{name}"
            if member.state != "joined" and job_id not in self._applied.held:
                continue
            count = min(member.group.nproc_per_node, len(free))
            gpus, free = tuple(free[:count]), free[count:]
            loads.append(
                JobLoad(
                    job_id=job_id,
                    gpu_indices=gpus,
                    gpu_power_w=self._uncapped_w.get(job_id, p.train_power_w),
                    idle_power_w=p.idle_power_w,
                    host_power_w=p.host_power_w,
                    # A GPU that refused a cap is not capped again during the event.
                    limit_min_w=p.train_power_w
                    if any(i in self._uncappable for i in gpus)
                    else p.power_limit_min_w,
                    limit_max_w=max(p.power_limit_max_w, p.train_power_w),
                    rate=p.relative_throughput * max(1, count),
                    stop_lead_s=checkpoint_s,
                    restart_s=restore_s,
                )
            )
        return free

    def _target(
        self, event: DemandResponseEvent, now_s: float, loads: Sequence[JobLoad], baseline_w: float
    ) -> DrTarget | None:
        flexible = sum(max(j.stop_shed_w, j.max_cap_shed_w) for j in loads)
        rated = self.config.node.gpu_count * self._profile.max_power_w + self._profile.host_power_w
        return target_for(
            event.payloads_at(now_s) or (event.intervals[0].payloads if event.intervals else ()),
            baseline_w=baseline_w,
            flexible_w=flexible,
            max_power_w=rated,
            rules=self.rules,
        )

    def _forecast_decision(self, event: DemandResponseEvent, now_s: float) -> EventDecision:
        loads = self._job_loads()
        target = self._target(event, now_s, loads, self._baseline_w(now_s))
        duration = (event.end_s or now_s) - (event.start_s or now_s)
        plan = plan_dr(target, max(duration, 0.0), loads, self.rules)
        return self._decide(event.id, plan.opt_in, plan.reason, plan)

    def _decide(self, event_id: str, opt_in: bool, reason: str, plan: DrPlan | None) -> EventDecision:
        decision = self._decisions.get(event_id)
        if decision is None or decision.opt_in != opt_in:  # a first answer, or a changed one
            self._m_decisions.labels(answer="opt_in" if opt_in else "opt_out").inc()
        if decision is None:
            decision = self._decisions[event_id] = EventDecision(event_id, opt_in, reason)
            while len(self._decisions) > _MAX_DECISIONS:
                oldest = next(iter(self._decisions))
                del self._decisions[oldest]
        decision.opt_in, decision.reason = opt_in, reason
        if plan is not None:
            decision.requested_shed_w = plan.requested_shed_w
            decision.planned_shed_w = plan.planned_shed_w if opt_in else 0.0
            decision.cost_work_s = plan.cost_work_s if opt_in else 0.0
        return decision

    async def evaluate(self) -> None:
        """Plan for what is in force now and apply the difference (idempotent)."""
        await self._restore_pending()
        now_s = self.clock.now_s()
        self.book.prune(now_s)
        for _ in range(_MAX_REPLANS):
            active = self.book.active(now_s)
            live = {e.id for e in active}
            for decision in self._decisions.values():
                if decision.active and decision.event_id not in live:
                    decision.active, decision.ended = False, True
            if not active:
                if self._applied.key is not None or self._applied.caps_w or self._applied.held:
                    logger.info("no demand-response event in force: restoring limits and releasing jobs")
                    await self._stand_down()
                    self._uncappable.clear()
                    self._uncapped_w.clear()
                    self._update_gauges(None)
                return
            loads = self._job_loads()
            key = (
                tuple((e.id, e.version, e.interval_at(now_s)) for e in active),
                tuple(j.job_id for j in loads),
                frozenset(self._uncappable),
            )
            if key == self._applied.key:
                return
            plan, chosen = self._plan(active, now_s, loads)
            refused = await self._apply(plan, chosen, loads)
            self._applied.key = key
            self._applied.plan = plan
            self._update_gauges(plan)
            await self._publish_state()
            if not refused:
                return

    def _plan(
        self, active: Sequence[DemandResponseEvent], now_s: float, loads: Sequence[JobLoad]
    ) -> tuple[DrPlan, str]:
        """The plan for the strictest event the node can meet; every active event gets its decision."""
        for job in loads:
            self._uncapped_w.setdefault(job.job_id, job.gpu_power_w)
        candidates: list[tuple[float, str, DrPlan]] = []
        for event in active:
            known = self._decisions.get(event.id)
            baseline = known.baseline_w if known is not None else None
            if baseline is None:  # frozen at the first plan of the event
                baseline = self._baseline_w(min(event.start_s or now_s, now_s))
            end_s = event.end_s if event.end_s is not None else now_s
            plan = plan_dr(
                self._target(event, now_s, loads, baseline), max(0.0, end_s - now_s), loads, self.rules
            )
            decision = self._decide(event.id, plan.opt_in, plan.reason, plan)
            decision.baseline_w, decision.active = baseline, True
            if plan.opt_in:
                candidates.append((plan.requested_shed_w, event.id, plan))
        if not candidates:
            return DrPlan(0.0, 0.0, False, "opted out of every event in force", 0.0), ""
        _, event_id, plan = max(candidates, key=lambda c: (c[0], c[1]))
        for shed, other, _ in candidates:
            if other != event_id:
                decision = self._decisions[other]
                decision.reason = (
                    f"met by the plan for event {event_id} ({shed:.0f} W of {plan.planned_shed_w:.0f} W)"
                )
        return plan, event_id

    # ------------------------------------------------------------------------------ actions

    async def _apply(self, plan: DrPlan, event_id: str, loads: Sequence[JobLoad]) -> bool:
        """Put ``plan`` in force; True when a cap was refused (the caller plans again without it)."""
        refused = False
        wanted = plan.caps
        readings = {g.index: g for g in self._latest.gpus} if self._latest is not None else {}
        changes: list[tuple[int, float, float]] = []
        for index, planned_w in sorted(wanted.items()):
            reading = readings.get(index)
            limit_w = planned_w
            if reading is not None:
                limit_w = min(max(planned_w, reading.power_limit_min_w), reading.power_limit_max_w)
            if self._applied.caps_w.get(index) != limit_w:
                changes.append((index, self._original_limit(index, reading), limit_w))
        assert self._journal is not None
        self._journal.record(changes, event_id, self.clock.now_s())
        for index, _, limit_w in changes:
            try:
                applied = await self._meter.set_power_limit_w(index, limit_w)
            except GreenferryError as err:
                logger.warning(
                    "GPU %d refused a %.0f W power limit (%s); planning without it", index, limit_w, err
                )
                self._uncappable.add(index)
                refused = True
                if index not in self._applied.caps_w:
                    self._journal.forget(index)
                continue
            self._applied.caps_w[index] = float(applied)
        for index in sorted(set(self._applied.caps_w) - set(wanted)):
            await self._restore_one(index)
        await self._apply_jobs(plan)
        return refused

    def _original_limit(self, index: int, reading: Any) -> float:
        assert self._journal is not None
        journaled = self._journal.original(index)
        if journaled is not None:
            return journaled
        if reading is not None:
            return float(reading.power_limit_w)
        return float(self._profile.power_limit_max_w)

    async def _apply_jobs(self, plan: DrPlan) -> None:
        pause = set(plan.jobs_in("pause"))
        for job_id in sorted(pause - self._applied.held):
            if job_id.startswith(_ELASTIC) and self._elastic is not None:
                self._applied.held.add(job_id)
                logger.info("elastic share %s leaves for demand response", job_id)
                self._elastic.members[job_id.removeprefix(_ELASTIC)].hold("paused for demand response")
        orchestrator = self._orchestrator
        if orchestrator is None:
            self._release_elastic(pause)
            return
        for action in plan.actions:
            if action.job_id.startswith(_ELASTIC):
                continue
            if action.mode == "pause" and action.job_id not in self._applied.held:
                if await orchestrator.hold(action.job_id, "paused for demand response"):
                    self._applied.held.add(action.job_id)
                    logger.info("job %s paused for demand response", action.job_id)
            elif action.mode == "migrate" and action.job_id not in self._applied.migrated:
                self._applied.migrated.add(action.job_id)
                try:
                    await orchestrator.migrate(action.job_id, action.destination)
                    logger.info("job %s moving to %s for demand response", action.job_id, action.destination)
                except GreenferryError as err:
                    logger.warning("job %s: demand-response move refused: %s", action.job_id, err)
        self._release_elastic(pause)
        for job_id in sorted(self._applied.held - pause):
            orchestrator.release(job_id)
            self._applied.held.discard(job_id)
            logger.info("job %s released: demand response no longer needs it paused", job_id)

    def _release_elastic(self, keep: set[str]) -> None:
        for job_id in sorted(j for j in self._applied.held - keep if j.startswith(_ELASTIC)):
            if self._elastic is not None:
                self._elastic.members[job_id.removeprefix(_ELASTIC)].release()
            self._applied.held.discard(job_id)
            logger.info("elastic share %s may rejoin: demand response no longer needs it out", job_id)

    async def _restore_one(self, index: int) -> None:
        assert self._journal is not None
        original = self._journal.original(index)
        self._applied.caps_w.pop(index, None)
        if original is None:
            return
        try:
            await self._meter.set_power_limit_w(index, original)
        except GreenferryError as err:
            logger.error(
                "GPU %d: restoring its %.0f W power limit failed (%s); retrying", index, original, err
            )
            self._pending_restore[index] = original
            return
        self._journal.forget(index)

    async def _restore_pending(self) -> None:
        assert self._journal is not None
        for index, original in sorted(self._pending_restore.items()):
            try:
                await self._meter.set_power_limit_w(index, original)
            except GreenferryError as err:
                logger.error(
                    "GPU %d: restoring its %.0f W power limit failed (%s); retrying", index, original, err
                )
                continue
            self._journal.forget(index)
            del self._pending_restore[index]

    async def _stand_down(self) -> None:
        """No event in force: every cap restored, every held job released."""
        if self._journal is not None:
            for index in sorted(self._applied.caps_w):
                await self._restore_one(index)
            await self._restore_pending()
        self._release_elastic(set())
        if self._orchestrator is not None:
            for job_id in sorted(self._applied.held):
                self._orchestrator.release(job_id)
        changed = self._applied.key is not None
        self._applied = _Applied()
        if changed:
            await self._publish_state()

    # ------------------------------------------------------------------------------ reporting

    def _update_gauges(self, plan: DrPlan | None) -> None:
        self._m_requested.set(0.0 if plan is None else plan.requested_shed_w)
        self._m_planned.set(0.0 if plan is None else plan.planned_shed_w)
        self._m_caps.set(len(self._applied.caps_w))
        self._m_held.set(len(self._applied.held))

    def status(self) -> dict[str, Any]:
        """JSON-ready state: events and decisions, the plan in force, caps and held jobs."""
        now_s = self.clock.now_s()
        plan = self._applied.plan
        return {
            "enabled": self.rules.enabled,
            "events": self.book.to_json(now_s),
            "decisions": [d.to_json() for d in self._decisions.values()][-100:],
            "plan": None if plan is None else plan.to_json(),
            "power_caps_w": {str(i): w for i, w in sorted(self._applied.caps_w.items())},
            "paused_jobs": sorted(self._applied.held),
            "pending_restores": sorted(self._pending_restore),
            "journaled_gpus": [] if self._journal is None else sorted(self._journal.originals()),
        }

    def decision(self, event_id: str) -> EventDecision | None:
        """The decision taken for ``event_id``, if any."""
        return self._decisions.get(event_id)

    async def _publish_state(self) -> None:
        if self._publish is None:
            return
        try:
            await self._publish(json.dumps(self.status(), allow_nan=False).encode())
        except (GreenferryError, ValueError) as err:
            logger.debug("demand-response state not published: %s", err)
