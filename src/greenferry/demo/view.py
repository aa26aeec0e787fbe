"""The demo's live view: a :class:`DemoState` model, a pure :func:`render`, and what fills the state.

The state is plain data, filled from two sides:

- :class:`StatusCollector` reads the nodes' retained status (``greenferry/v1/nodes/+/status``, see
  docs/mqtt.md "Node status (out)": ``state``, ``site``, ``surplus_w``, ``gpu_power_w``, ``stale_signals``,
  and, where the daemon runs jobs, ``jobs`` and ``migrations``) and calls :meth:`DemoState.on_status`;
- job and migration events enter through :meth:`DemoState.on_job_event` and
  :meth:`DemoState.on_migration` (the runner routes the nodes' ``JobProgressed`` and ``MigrationEnded``
  bus events there; in-flight migration progress is for the migration code to report).

:func:`render` draws a state and nothing else (no clock, no I/O), so it is tested by rendering to a
string; :class:`LiveView` redraws it a few times a real second in a ``rich`` Live display.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from greenferry.core.units import format_bytes

__all__ = [
    "DemoState",
    "LiveView",
    "LogEntry",
    "MigrationView",
    "NodeView",
    "StatusCollector",
    "SurplusPoint",
    "Totals",
    "render",
]

logger = logging.getLogger(__name__)

J_PER_KWH = 3.6e6
_SPARK = "▁▂▃▄▅▆▇█"
_BAR_WIDTH = 10
_SPARK_WIDTH = 12
_SPARK_SPAN_S = 6 * 3600.0  # the surplus sparkline shows the last six simulated hours
_LOG_LINES = 8


class SurplusPoint(NamedTuple):
    """One status' surplus: ``stale`` when the node's production signal was stale (it then reports 0)."""

    time_s: float
    surplus_w: float
    stale: bool


@dataclass
class NodeView:
    """What the view knows about one node and its site."""

    node: str
    site: str
    timezone: str  # IANA name
    state: str = "unknown"  # the status' state: "online", "offline"; "unknown" before any status
    reason: str | None = None  # why it is offline ("shutdown", "connection lost")
    seen_online: bool = False
    surplus_w: float | None = None
    gpu_power_w: float | None = None
    host_power_w: float | None = None
    stale_signals: tuple[str, ...] = ()
    status_time_s: float | None = None  # the status' own time (simulated UTC)
    job_id: str | None = None
    job_step: int | None = None
    job_progress: float | None = None  # 0..1 where the job knows its length
    job_state: str | None = None
    reported_migrations: set[str] = field(default_factory=set)  # job ids of its status' migrations
    signals_fresh_once: bool = False  # a status with no stale signal arrived
    stale_logged: bool = False
    surplus_history: deque[SurplusPoint] = field(default_factory=lambda: deque(maxlen=4096))

    @property
    def stale(self) -> bool:
        """True when the node reports a signal older than its maximum age (or never received)."""
        return bool(self.stale_signals)


@dataclass
class MigrationView:
    """A migration in flight."""

    job_id: str
    src: str
    dst: str
    started_s: float
    updated_s: float
    progress: float = 0.0  # 0..1
    bytes_done: int = 0
    size_bytes: int = 0
    phase: str = ""


@dataclass
class Totals:
    """Running totals of the demo (the summary's figures)."""

    migrations: int = 0
    failed_migrations: int = 0
    steps_completed: int = 0
    bytes_transferred: int = 0
    energy_kwh: float = 0.0
    nonrenewable_kwh: float = 0.0
    double_runs: int = 0


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One line of the event log; ``time_s`` is simulated UTC."""

    time_s: float
    text: str
    level: str = "info"  # "info", "warning", "error"


class DemoState:
    """Everything the live view shows: nodes and sites, migrations in flight, an event log, totals.

    Args:
        title: the header line.
        log_size: event-log entries kept.
    """

    def __init__(self, title: str = "greenferry demo", *, log_size: int = 200) -> None:
        self.title = title
        self.now_s: float | None = None  # simulated UTC now
        self.start_s: float | None = None  # simulated span of the demo, for the progress line
        self.end_s: float | None = None
        self.speedup: float | None = None
        self.scenario: str | None = None
        self.nodes: dict[str, NodeView] = {}
        self.migrations: dict[str, MigrationView] = {}
        self.log: deque[LogEntry] = deque(maxlen=log_size)
        self.totals = Totals()
        self.job_steps: dict[str, int] = {}  # highest step each job reported
        self.leader_site: str | None = None  # the site with the most surplus, per the latest statuses

    # -- setup -------------------------------------------------------------------------------------

    def add_node(self, node: str, site: str, timezone: str = "UTC") -> NodeView:
        """Register a node to show (statuses of unregistered nodes are ignored)."""
        view = NodeView(node=node, site=site, timezone=timezone)
        self.nodes[node] = view
        return view

    def log_event(self, time_s: float | None, text: str, level: str = "info") -> None:
        """Append a line to the event log (``time_s`` simulated; ``None``: now)."""
        stamp = time_s if time_s is not None else (self.now_s if self.now_s is not None else 0.0)
        self.log.append(LogEntry(stamp, text, level))

    # -- status in ----------------------------------------------------------------------------------

    def on_status(self, node: str, status: Mapping[str, Any]) -> bool:
        """Merge one retained status message of ``node``; False when the node is not shown.

        Fields of the wrong type are ignored (the status comes from outside). State changes, signals
        going stale (after they were fresh once) and fresh again, and the surplus moving to another site
        are logged.
        """
        view = self.nodes.get(node)
        if view is None:
            return False
        time_s = _time_s(status.get("time"))
        if time_s is not None:
            view.status_time_s = time_s
        when = time_s if time_s is not None else self.now_s
        state = status.get("state")
        if isinstance(state, str) and state != view.state:
            reason = status.get("reason")
            view.reason = reason if isinstance(reason, str) else None
            suffix = f" ({view.reason})" if view.reason else ""
            self.log_event(
                when, f"{node} ({view.site}) {state}{suffix}", "info" if state == "online" else "warning"
            )
            view.state = state
            if state == "online":
                view.seen_online = True
        stale = status.get("stale_signals")
        if isinstance(stale, list) and all(isinstance(s, str) for s in stale):
            self._merge_stale(view, tuple(sorted(stale)), when)
        if "surplus_w" in status:
            surplus = _number(status["surplus_w"])
            if surplus is not None:
                view.surplus_w = surplus
                if time_s is not None:
                    view.surplus_history.append(
                        SurplusPoint(time_s, surplus, "production" in view.stale_signals)
                    )
        if "gpu_power_w" in status:
            view.gpu_power_w = _number(status["gpu_power_w"])
        if "host_power_w" in status:
            view.host_power_w = _number(status["host_power_w"])
        if when is not None:
            if isinstance(status.get("jobs"), list):
                self._merge_jobs(view, status["jobs"], when)
            if isinstance(status.get("migrations"), list):
                self._merge_migrations(view, status["migrations"], when)
        if view.state == "online":
            self._update_leader(when)  # an offline status (shutting down) does not move the surplus
        return True

    def _merge_jobs(self, view: NodeView, jobs: list[Any], time_s: float) -> None:
        """The status' ``jobs`` (``[{"job_id", "state", "step"}]``, the jobs the node hosts now)."""
        hosted = [j for j in jobs if isinstance(j, dict) and isinstance(j.get("job_id"), str)]
        if not hosted:
            if view.job_id is not None:
                view.job_id = view.job_step = view.job_progress = view.job_state = None
            return
        job = hosted[0]  # the view shows one job per node (the demo nodes have one GPU)
        step = job.get("step")
        state = job.get("state")
        self.on_job_event(
            view.node,
            job["job_id"],
            time_s=time_s,
            step=step if isinstance(step, int) and not isinstance(step, bool) else None,
            state=state if isinstance(state, str) else None,
        )

    def _merge_migrations(self, view: NodeView, migrations: list[Any], time_s: float) -> None:
        """The status' ``migrations`` in flight (``[{"job_id", "src", "dst", "phase", "total_bytes",
        "done_bytes"}]``); one the node no longer lists leaves the in-flight list (its outcome is counted
        from the ``MigrationEnded`` event)."""
        listed: set[str] = set()
        for item in migrations:
            if not isinstance(item, dict):
                continue
            job_id, src, dst = item.get("job_id"), item.get("src"), item.get("dst")
            if not (isinstance(job_id, str) and isinstance(src, str) and isinstance(dst, str)):
                continue
            total, done, phase = item.get("total_bytes"), item.get("done_bytes"), item.get("phase")
            listed.add(job_id)
            self.on_migration(
                job_id,
                src,
                dst,
                time_s=time_s,
                size_bytes=_count(total),
                bytes_done=_count(done),
                phase=phase if isinstance(phase, str) else "",
            )
        for job_id in view.reported_migrations - listed:
            self.migrations.pop(job_id, None)
        view.reported_migrations = listed

    def _merge_stale(self, view: NodeView, stale: tuple[str, ...], time_s: float | None) -> None:
        if not stale:
            view.signals_fresh_once = True
        if stale == view.stale_signals:
            return
        went_stale = sorted(set(stale) - set(view.stale_signals))
        # A node's first statuses, before the retained signals arrived, are stale by nature: not news.
        if went_stale and view.signals_fresh_once:
            self.log_event(time_s, f"{view.site}: {', '.join(went_stale)} stale", "warning")
            view.stale_logged = True
        if not stale and view.stale_logged:
            self.log_event(time_s, f"{view.site}: signals fresh again")
            view.stale_logged = False
        view.stale_signals = stale

    def _update_leader(self, time_s: float | None) -> None:
        online = [v for v in self.nodes.values() if v.state == "online"]
        if not online:
            return  # shutting down (or not started): nothing to say about the surplus
        best: NodeView | None = None
        for view in online:
            surplus_w = view.surplus_w
            if surplus_w is None or surplus_w <= 0 or view.stale:
                continue
            if best is None or surplus_w > (best.surplus_w or 0.0):
                best = view
        site = None if best is None else best.site
        if site != self.leader_site:
            if best is not None:
                self.log_event(time_s, f"most surplus now at {best.site} ({_watts(best.surplus_w)})")
            elif self.leader_site is not None:
                self.log_event(time_s, "no site has surplus", "warning")
            self.leader_site = site

    # -- hooks for jobs and migrations ------------------------------------------------------------------

    def on_job_event(
        self,
        node: str,
        job_id: str,
        *,
        time_s: float,
        step: int | None = None,
        progress: float | None = None,
        state: str | None = None,
    ) -> None:
        """A job on ``node`` progressed or changed state (HOOK for the job runner).

        Args:
            node: the node reporting (its daemon's ``JobProgressed`` event, or the job API).
            job_id: the job.
            time_s: simulated UTC time of the event.
            step: the job's training step, if it reports one (``steps_completed`` is the sum over jobs of
                the highest step each reached).
            progress: 0..1 where the job knows its length.
            state: the job state ("running", "paused", "done" ...); "running" when omitted.
        """
        view = self.nodes.get(node)
        if view is None:
            return
        for other in self.nodes.values():
            if other is not view and other.job_id == job_id:
                other.job_id = other.job_step = other.job_progress = other.job_state = None
        new_state = state or "running"
        if view.job_id != job_id or view.job_state != new_state:
            self.log_event(time_s, f"{job_id} {new_state} on {node} ({view.site})")
        view.job_id, view.job_state = job_id, new_state
        if step is not None:
            view.job_step = step
            if step > self.job_steps.get(job_id, -1):
                self.job_steps[job_id] = step
                self.totals.steps_completed = sum(self.job_steps.values())
        if progress is not None and math.isfinite(progress):
            view.job_progress = min(1.0, max(0.0, progress))

    def on_migration(
        self,
        job_id: str,
        src: str,
        dst: str,
        *,
        time_s: float,
        progress: float | None = None,
        bytes_done: int | None = None,
        size_bytes: int | None = None,
        phase: str = "",
        outcome: str | None = None,
        reason: str = "",
    ) -> None:
        """A migration started, progressed (``outcome`` None) or ended (HOOK for the migration code).

        Args:
            job_id: the job that moves.
            src: node it leaves.
            dst: node it goes to.
            time_s: simulated UTC time of the report.
            progress: 0..1 of the whole migration (default: ``bytes_done / size_bytes``).
            bytes_done: checkpoint bytes moved so far.
            size_bytes: checkpoint size.
            phase: what it is doing ("checkpoint", "transfer", "restore" ...), shown as is.
            outcome: None while in flight; "ok", "aborted" or "failed" when it ended (as
                ``MigrationEnded.outcome``); an ended migration leaves the in-flight list and counts in
                the totals (bytes of successful ones only).
            reason: why it aborted or failed.
        """
        current = self.migrations.get(job_id)
        if current is None:
            current = MigrationView(job_id, src, dst, started_s=time_s, updated_s=time_s)
            if outcome is None:
                self.migrations[job_id] = current
                self.log_event(time_s, f"{job_id}: migrating {src} -> {dst}")
        current.updated_s = time_s
        if size_bytes is not None:
            current.size_bytes = size_bytes
        if bytes_done is not None:
            current.bytes_done = bytes_done
        if phase:
            current.phase = phase
        if progress is not None and math.isfinite(progress):
            current.progress = min(1.0, max(0.0, progress))
        elif current.size_bytes > 0:
            current.progress = min(1.0, current.bytes_done / current.size_bytes)
        if outcome is None:
            return
        self.migrations.pop(job_id, None)
        if outcome == "ok":
            self.totals.migrations += 1
            self.totals.bytes_transferred += current.size_bytes or current.bytes_done
            self.log_event(time_s, f"{job_id}: migrated {src} -> {dst} ({format_bytes(current.size_bytes)})")
        else:
            self.totals.failed_migrations += 1
            why = f": {reason}" if reason else ""
            self.log_event(time_s, f"{job_id}: migration {src} -> {dst} {outcome}{why}", "warning")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _count(value: object) -> int | None:
    number = _number(value)
    return None if number is None or number < 0 else int(number)


def _time_s(value: object) -> float | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


# -- rendering --------------------------------------------------------------------------------------


def _watts(power_w: float | None) -> str:
    return "—" if power_w is None else f"{power_w:,.0f} W"


def _zone(name: str) -> dt.tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return dt.UTC


def _local_time(time_s: float | None, zone: str) -> str:
    if time_s is None:
        return "—"
    local = dt.datetime.fromtimestamp(time_s, _zone(zone))
    return f"{local:%a %H:%M} {local.tzname() or ''}".rstrip()


def _utc(time_s: float) -> str:
    return f"{dt.datetime.fromtimestamp(time_s, dt.UTC):%Y-%m-%d %H:%M} UTC"


def _bar(fraction: float, width: int, style: str) -> Text:
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * width)
    bar = Text("█" * filled, style=style)
    bar.append("░" * (width - filled), style="grey30")
    return bar


def _sparkline(history: Sequence[SurplusPoint], now_s: float | None, scale_w: float) -> Text:
    """The surplus over the last :data:`_SPARK_SPAN_S`, one column per slot (the latest status in each);
    a slot whose status had stale production is drawn as a red ``!``."""
    if not history or now_s is None or scale_w <= 0:
        return Text(" " * _SPARK_WIDTH)
    slot_s = _SPARK_SPAN_S / _SPARK_WIDTH
    first_s = now_s - _SPARK_SPAN_S
    slots: list[SurplusPoint | None] = [None] * _SPARK_WIDTH
    for point in history:
        index = math.floor((point.time_s - first_s) / slot_s)
        if 0 <= index < _SPARK_WIDTH:
            slots[index] = point
    out = Text()
    for slot in slots:
        if slot is None:
            out.append(" ")
        elif slot.stale:
            out.append("!", style="bold red")
        else:
            level = min(len(_SPARK) - 1, max(0, round(slot.surplus_w / scale_w * (len(_SPARK) - 1))))
            out.append(_SPARK[level], style="green" if slot.surplus_w > 0 else "grey50")
    return out


def _site_text(view: NodeView, leader: bool) -> Text:
    text = Text(view.site, style="bold green" if leader else "bold")
    text.append(f"\n{view.node}", style="dim")
    return text


def _local_text(time_s: float | None, zone: str) -> Text:
    text = Text(_local_time(time_s, zone))
    if time_s is not None:
        offset = dt.datetime.fromtimestamp(time_s, _zone(zone)).strftime("%z")
        text.append(f"\nUTC{offset[:3]}:{offset[3:]}", style="dim")
    return text


def _surplus_text(view: NodeView, scale_w: float) -> Text:
    text = Text(_watts(view.surplus_w), style="bold" if (view.surplus_w or 0.0) > 0 else "")
    text.append("\n")
    text.append_text(_bar((view.surplus_w or 0.0) / scale_w, _BAR_WIDTH, "green"))
    return text


def _state_text(view: NodeView) -> Text:
    style = {"online": "bold green", "offline": "bold red"}.get(view.state, "dim")
    text = Text(view.state, style=style)
    if view.state != "online" and view.reason:
        text.append(f"\n{view.reason}", style="dim")
    return text


def _signals_text(view: NodeView) -> Text:
    if view.state == "unknown":
        return Text("—", style="dim")
    if view.stale:
        text = Text("STALE", style="bold red")
        text.append("\n" + ",".join(view.stale_signals), style="red")
        return text
    return Text("fresh", style="green")


def _job_text(view: NodeView) -> Text:
    if view.job_id is None:
        return Text("idle", style="dim")
    text = Text(view.job_id, style="bold cyan")
    if view.job_state and view.job_state != "running":
        text.append(f" {view.job_state}", style="yellow")
    details = []
    if view.job_step is not None:
        details.append(f"step {view.job_step:,}")
    if view.job_progress is not None:
        details.append(f"{view.job_progress:.0%}")
    if details:
        text.append("\n" + " ".join(details), style="dim")
    return text


def _header(state: DemoState) -> Text:
    text = Text(state.title, style="bold")
    if state.scenario:
        text.append(f"  scenario {state.scenario}", style="dim")
    if state.now_s is not None:
        text.append(f"  {_utc(state.now_s)}", style="bold yellow")
    if state.speedup is not None:
        text.append(f"  ×{state.speedup:g}", style="dim")
    if state.now_s is not None and state.start_s is not None and state.end_s is not None:
        span_s = state.end_s - state.start_s
        if span_s > 0:
            done = (state.now_s - state.start_s) / span_s
            text.append("  ")
            text.append_text(_bar(done, 20, "yellow"))
            text.append(f" {min(1.0, max(0.0, done)):.0%}")
    return text


def _sites_table(state: DemoState) -> Table:
    table = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False)
    table.add_column("site", no_wrap=True)
    table.add_column("local time", no_wrap=True)
    table.add_column("surplus", no_wrap=True)
    table.add_column("last 6 h", no_wrap=True)
    table.add_column("signals", min_width=5)
    table.add_column("state", no_wrap=True)
    table.add_column("GPU", justify="right", no_wrap=True)
    table.add_column("job", min_width=4)
    scale_w = max(
        [1000.0]
        + [v.surplus_w or 0.0 for v in state.nodes.values()]
        + [p.surplus_w for v in state.nodes.values() for p in v.surplus_history]
    )
    for view in state.nodes.values():
        table.add_row(
            _site_text(view, view.site == state.leader_site),
            _local_text(state.now_s, view.timezone),
            _surplus_text(view, scale_w),
            _sparkline(view.surplus_history, state.now_s, scale_w),
            _signals_text(view),
            _state_text(view),
            _watts(view.gpu_power_w),
            _job_text(view),
        )
    return table


def _migrations(state: DemoState) -> RenderableType:
    if not state.migrations:
        return Text("no migration in flight", style="dim")
    table = Table(expand=True, pad_edge=False, show_edge=False)
    for name in ("job", "route", "phase", "progress", "moved"):
        table.add_column(name, no_wrap=True)
    for migration in state.migrations.values():
        progress = _bar(migration.progress, 20, "cyan")
        progress.append(f" {migration.progress:.0%}")
        moved = format_bytes(migration.bytes_done)
        if migration.size_bytes:
            moved += f" / {format_bytes(migration.size_bytes)}"
        table.add_row(
            migration.job_id, f"{migration.src} -> {migration.dst}", migration.phase, progress, moved
        )
    return table


def _log(state: DemoState) -> Text:
    text = Text()
    entries = list(state.log)[-_LOG_LINES:]
    if not entries:
        return Text("(nothing yet)", style="dim")
    styles = {"warning": "yellow", "error": "bold red"}
    for i, entry in enumerate(entries):
        if i:
            text.append("\n")
        text.append(f"{dt.datetime.fromtimestamp(entry.time_s, dt.UTC):%H:%M} ", style="dim")
        text.append(entry.text, style=styles.get(entry.level, ""))
    return text


def _totals(state: DemoState) -> Text:
    t = state.totals
    text = Text()
    text.append(f"migrations {t.migrations}")
    text.append(f" ({t.failed_migrations} failed)", style="red" if t.failed_migrations else "dim")
    text.append(f" · steps {t.steps_completed:,} · moved {format_bytes(t.bytes_transferred)} · ")
    text.append(f"double runs {t.double_runs}", style="bold red" if t.double_runs else "")
    share = t.nonrenewable_kwh / t.energy_kwh if t.energy_kwh > 0 else 0.0
    text.append(f"\nenergy {t.energy_kwh:.3f} kWh · non-renewable {t.nonrenewable_kwh:.3f} kWh ({share:.0%})")
    return text


def render(state: DemoState) -> RenderableType:
    """Draw ``state``: header, sites, migrations in flight, event log, totals. Pure: reads only ``state``."""
    return Group(
        _header(state),
        _sites_table(state),
        Panel(_migrations(state), title="migrations", title_align="left"),
        Panel(_log(state), title="events", title_align="left"),
        _totals(state),
    )


# -- filling the state from MQTT -----------------------------------------------------------------------


class StatusCollector:
    """Fills a :class:`DemoState` from the nodes' retained status messages.

    Hand :meth:`handle` to an MQTT subscription of :attr:`topic_filter`
    (:meth:`~greenferry.adapters.mqtt.MqttLink.add_handler`). Malformed messages are counted in
    ``rejected`` and logged at debug level; they never raise.

    Args:
        state: what to fill.
        topic_prefix: the nodes' ``mqtt.topic_prefix``.
        on_update: called with the node name after each accepted status (tests, the runner).
    """

    def __init__(
        self,
        state: DemoState,
        topic_prefix: str = "greenferry/v1",
        *,
        on_update: Callable[[str], None] | None = None,
    ) -> None:
        self.state = state
        self._prefix = topic_prefix.rstrip("/")
        self._on_update = on_update
        self.accepted = 0
        self.rejected = 0
        self.ignored = 0  # statuses of nodes the state does not show
        self._changed = asyncio.Event()

    @property
    def topic_filter(self) -> str:
        """``<prefix>/nodes/+/status``."""
        return f"{self._prefix}/nodes/+/status"

    def handle(self, topic: str, payload: bytes) -> None:
        """Take one status message (never raises)."""
        head, sep, rest = topic.partition(f"{self._prefix}/nodes/")
        node, _, tail = rest.partition("/")
        if head or not sep or not node or tail != "status":
            self.rejected += 1
            logger.debug("status collector: unexpected topic %r", topic)
            return
        if not payload:  # a cleared retained status
            return
        try:
            status = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            self.rejected += 1
            logger.debug("status collector: %r is not JSON: %s", topic, err)
            return
        if not isinstance(status, dict):
            self.rejected += 1
            logger.debug("status collector: %r is not a JSON object", topic)
            return
        if not self.state.on_status(node, status):
            self.ignored += 1
            return
        self.accepted += 1
        self._changed.set()
        if self._on_update is not None:
            self._on_update(node)

    async def wait_until(self, predicate: Callable[[DemoState], bool], timeout_s: float) -> bool:
        """Wait (real seconds, at most ``timeout_s``) until ``predicate(state)`` holds; its final value."""
        try:
            async with asyncio.timeout(timeout_s):
                while not predicate(self.state):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return predicate(self.state)
        return True


class LiveView:
    """Redraws :func:`render` of a state in a ``rich`` Live display, ``refresh_per_second`` times a second.

    ``async with LiveView(state) as view: await view.run()`` (cancel ``run`` to stop; leaving the block
    draws the final state once more and restores the terminal).

    Args:
        state: what to draw.
        console: where (default: a new stdout console).
        refresh_per_second: redraws per real second.
        before_render: called before each redraw (the runner sets ``state.now_s`` from its clock here).
    """

    def __init__(
        self,
        state: DemoState,
        console: Console | None = None,
        *,
        refresh_per_second: float = 4.0,
        before_render: Callable[[], None] | None = None,
    ) -> None:
        if not (math.isfinite(refresh_per_second) and refresh_per_second > 0):
            raise ValueError(f"refresh_per_second must be positive, got {refresh_per_second!r}")
        self.state = state
        self.console = console or Console()
        self._interval_s = 1.0 / refresh_per_second
        self._before_render = before_render
        self._live: Any = None

    def refresh(self) -> None:
        """Redraw now."""
        if self._before_render is not None:
            self._before_render()
        if self._live is not None:
            self._live.update(render(self.state), refresh=True)

    async def __aenter__(self) -> Self:
        """Start the Live display."""
        from rich.live import Live

        if self._before_render is not None:
            self._before_render()
        self._live = Live(render(self.state), console=self.console, auto_refresh=False, transient=False)
        self._live.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Draw the final state and stop the display."""
        live, self._live = self._live, None
        if live is None:
            return
        try:
            if self._before_render is not None:
                self._before_render()
            live.update(render(self.state), refresh=True)
        finally:
            live.stop()

    async def run(self) -> None:
        """Redraw until cancelled (real-time pacing: the view follows the wall clock, not the demo's)."""
        while True:
            self.refresh()
            await asyncio.sleep(self._interval_s)
