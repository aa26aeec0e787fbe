"""``greenferry demo``'s engine: a broker, three nodes on an accelerated clock, the trace replayer, the view.

:func:`run_demo` does, in one TaskGroup:

1. loads the demo trace (:func:`~greenferry.demo.replayer.load_demo_trace`: by default three ``global-8``
   sites in Tokyo, Frankfurt and San Jose on 2022-06-06);
2. starts the embedded amqtt broker, unless ``options.broker_url`` names one;
3. writes one node config per site into the work dir (own data dir, HTTP on port 0, MQTT to the broker,
   the production/carbon/surplus_forecast topics of its site, power source ``model``) and runs a real
   :class:`~greenferry.daemon.app.NodeDaemon` for each, all on one
   :class:`~greenferry.demo.clock.ScaledClock`;
4. replays the trace over MQTT (:class:`~greenferry.demo.replayer.TraceReplayer`) and collects the nodes'
   retained status into a :class:`~greenferry.demo.view.DemoState`, drawn live unless headless;
5. after ``options.duration_s`` simulated seconds stops the nodes (they publish their offline status),
   then the replayer, the view and the broker, and returns a :class:`DemoSummary`.

Once the nodes are up it submits the numpy example job to the node with the most surplus; from there the
nodes' own policy (``lookahead``) moves it, and the job and migration figures flow in from the nodes'
``JobProgressed`` and ``MigrationEnded`` bus events. A watcher counts any moment a job's process runs on
two nodes at once (``double_runs``, which must stay 0).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import re
import shutil
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from rich.console import Console

from greenferry.adapters.mqtt import MqttLink
from greenferry.config import DaemonConfig, config_from_mapping, load_config
from greenferry.core.events import JobProgressed, MigrationEnded, PowerSample
from greenferry.core.jobs import JobSpec
from greenferry.core.signals import SignalBoard
from greenferry.daemon.app import NodeDaemon
from greenferry.daemon.bus import EventBus, Overflow, Subscription
from greenferry.demo.clock import ScaledClock
from greenferry.demo.replayer import (
    DEFAULT_FORECAST_HORIZON_S,
    DEFAULT_SCENARIO,
    DEFAULT_SITES,
    DEFAULT_START,
    DEFAULT_TOPIC_PREFIX,
    DemoTrace,
    SiteTopics,
    TraceReplayer,
    load_demo_trace,
)
from greenferry.demo.view import J_PER_KWH, DemoState, LiveView, StatusCollector
from greenferry.errors import ConfigError, GreenferryError, ServiceUnavailableError

__all__ = [
    "DemoOptions",
    "DemoSummary",
    "node_configs",
    "node_name",
    "parse_broker_url",
    "run_demo",
    "summary_lines",
]

logger = logging.getLogger(__name__)

DEFAULT_SPEEDUP = 720.0  # one simulated day in two real minutes
HARNESS_TOPIC_PREFIX = "greenferry-demo"  # the harness' own MQTT status; never under greenferry/v1/nodes
_NODE_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
_OFFLINE_WAIT_S = 3.0  # real seconds to wait for the nodes' offline status after they stopped


@dataclass(frozen=True)
class DemoOptions:
    """How to run the demo. Durations and intervals are SIMULATED seconds unless they end in ``_real_s``.

    Attributes:
        scenario: built-in scenario name or scenario file to replay.
        sites: its sites to run a node for, in display order (one node each).
        start: first replayed instant (time-zone aware).
        duration_s: simulated span of the demo (default one day).
        speedup: simulated seconds per real second (default 720: a day in two minutes).
        broker_url: ``mqtt://host[:port]`` of a broker to use; None starts the embedded amqtt broker.
        headless: no live view (logs a line per simulated hour instead).
        work_dir: where node configs and data dirs go; None: a temp dir, removed at the end.
        hardware_profile: the nodes' hardware profile (their modelled GPU power).
        gpu_count: GPUs per node.
        status_interval_s: the nodes' retained-status refresh (>= 1).
        power_interval_s: the nodes' power sampling interval.
        telemetry_interval_s: the nodes' telemetry sample interval (their local SQLite store).
        decision_interval_s: the nodes' policy decision interval.
        forecast_horizon_s: how far ahead the replayed surplus forecast reaches.
        signal_max_age_s: the nodes' signal max age; None: 2.5 scenario steps (a step's value holds
            for a step, so a node goes stale only after missing about two publications).
        signal_topic_prefix: prefix of the replayed signal topics.
        refresh_per_second: live-view redraws per real second.
        ready_timeout_real_s: real seconds the broker connection and the nodes' start may take.
    """

    scenario: str = DEFAULT_SCENARIO
    sites: tuple[str, ...] = DEFAULT_SITES
    start: dt.datetime = DEFAULT_START
    duration_s: float = 86400.0
    speedup: float = DEFAULT_SPEEDUP
    broker_url: str | None = None
    headless: bool = False
    work_dir: Path | None = None
    hardware_profile: str = "a100-80gb"
    gpu_count: int = 1
    status_interval_s: float = 60.0
    power_interval_s: float = 60.0
    telemetry_interval_s: float = 300.0
    decision_interval_s: float = 300.0
    forecast_horizon_s: float = DEFAULT_FORECAST_HORIZON_S
    signal_max_age_s: float | None = None
    signal_topic_prefix: str = DEFAULT_TOPIC_PREFIX
    refresh_per_second: float = 4.0
    ready_timeout_real_s: float = 20.0

    def __post_init__(self) -> None:
        """Check what the config models do not (they check the rest when the node configs load).

        Raises:
            ConfigError: naming the option and what is wrong with it.
        """
        positive = {
            "duration_s": self.duration_s,
            "speedup": self.speedup,
            "power_interval_s": self.power_interval_s,
            "telemetry_interval_s": self.telemetry_interval_s,
            "decision_interval_s": self.decision_interval_s,
            "refresh_per_second": self.refresh_per_second,
            "ready_timeout_real_s": self.ready_timeout_real_s,
        }
        if self.signal_max_age_s is not None:
            positive["signal_max_age_s"] = self.signal_max_age_s
        for name, value in positive.items():
            if isinstance(value, bool) or not (math.isfinite(value) and value > 0):
                raise ConfigError(f"demo option {name}: expected a positive number, got {value!r}")
        if not (math.isfinite(self.status_interval_s) and self.status_interval_s >= 1):
            raise ConfigError(
                f"demo option status_interval_s: must be >= 1 s, got {self.status_interval_s!r}"
            )
        if not (math.isfinite(self.forecast_horizon_s) and self.forecast_horizon_s >= 0):
            raise ConfigError(
                f"demo option forecast_horizon_s: must be >= 0, got {self.forecast_horizon_s!r}"
            )
        if not self.sites:
            raise ConfigError("demo option sites: name at least one site")
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            raise ConfigError(f"demo option start: {self.start.isoformat()} has no time zone")
        if self.broker_url is not None:
            parse_broker_url(self.broker_url)


@dataclass(frozen=True)
class DemoSummary:
    """What a demo run did. Energies in kWh; ``simulated_s`` simulated, ``wall_s`` real seconds.

    ``migrations``, ``failed_migrations``, ``steps_completed``, ``bytes_transferred`` and ``double_runs``
    come from the nodes' job and migration events and the double-run watcher. ``energy_kwh`` and
    ``nonrenewable_kwh`` integrate the nodes' measured power samples, the latter against the replayed
    surplus of each node's site.
    """

    migrations: int
    failed_migrations: int
    steps_completed: int
    bytes_transferred: int
    nonrenewable_kwh: float
    double_runs: int
    energy_kwh: float
    simulated_s: float
    wall_s: float
    steps_replayed: int
    steps_skipped: int  # steps the replayer skipped because it fell behind the clock
    messages_replayed: int
    nodes: tuple[str, ...]
    nodes_online: int  # nodes whose status said "online" at least once
    node_energy_kwh: Mapping[str, float]  # per node, the measured energy
    node_nonrenewable_kwh: Mapping[str, float]  # per node, the part beyond its site's replayed surplus
    broker_url: str
    work_dir: Path | None  # kept only when options.work_dir was given


def parse_broker_url(url: str) -> tuple[str, int]:
    """``mqtt://host[:port]`` as (host, port); the port defaults to 1883.

    Raises:
        ConfigError: another scheme (TLS brokers are not supported by the demo), no host, a bad port.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "mqtt":
        raise ConfigError(f"demo broker URL {url!r}: expected mqtt://host[:port] (no TLS in the demo)")
    try:
        port = parsed.port or 1883
    except ValueError as err:
        raise ConfigError(f"demo broker URL {url!r}: bad port") from err
    if not parsed.hostname:
        raise ConfigError(f"demo broker URL {url!r}: no host")
    if parsed.path not in ("", "/") or parsed.query or parsed.username:
        raise ConfigError(f"demo broker URL {url!r}: only mqtt://host[:port] is supported")
    return parsed.hostname, port


def node_name(site: str) -> str:
    """The demo node's name for ``site`` (``node-jp-tk``)."""
    return "node-" + (_NODE_NAME_BAD.sub("-", site).strip("-").lower() or "site")


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value!r} cannot be written to TOML")
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    raise TypeError(f"{where}: cannot write {type(value).__name__} to TOML")


def _toml(data: Mapping[str, Any]) -> str:
    """Nested mappings of str/int/float/bool/Path as TOML (what the node configs need, nothing more)."""
    lines: list[str] = []

    def table(prefix: str, body: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, Mapping)}
        tables = {k: v for k, v in body.items() if isinstance(v, Mapping)}
        if prefix and scalars:
            lines.append(f"[{prefix}]")
        for key, value in scalars.items():
            lines.append(f"{key} = {_toml_value(value, f'{prefix}.{key}'.lstrip('.'))}")
        if prefix and scalars:
            lines.append("")
        for key, value in tables.items():
            table(f"{prefix}.{key}" if prefix else key, value)

    table("", data)
    return "\n".join(lines).rstrip() + "\n"


def _node_mapping(
    options: DemoOptions, site: str, topics: SiteTopics, host: str, port: int, data_dir: Path, step_s: float
) -> dict[str, Any]:
    max_age_s = options.signal_max_age_s or max(300.0, 2.5 * step_s)
    # Backoff between reconnects runs on the demo clock: scale it so a missing broker is retried a few
    # times a real second, not hundreds.
    reconnect_min_s = min(60.0, 0.2 * options.speedup)
    reconnect_max_s = min(600.0, max(reconnect_min_s, 5.0 * options.speedup))
    return {
        "shutdown_timeout_s": 10.0,
        "node": {
            "name": node_name(site),
            "site": site,
            "hardware_profile": options.hardware_profile,
            "gpu_count": options.gpu_count,
            "data_dir": data_dir,
            "decision_interval_s": options.decision_interval_s,
        },
        "mqtt": {
            "host": host,
            "port": port,
            "status_interval_s": options.status_interval_s,
            "reconnect_min_s": reconnect_min_s,
            "reconnect_max_s": reconnect_max_s,
        },
        "signals": {
            "production": {"topic": topics.production, "format": "number", "max_age_s": max_age_s},
            "carbon": {"topic": topics.carbon, "format": "number", "max_age_s": max_age_s},
            "surplus_forecast": {
                "topic": topics.surplus_forecast,
                "format": "greenferry",
                "max_age_s": max_age_s,
            },
        },
        "telemetry": {"type": "sqlite", "sample_interval_s": options.telemetry_interval_s},
        "power": {"source": "model", "interval_s": options.power_interval_s, "rapl": False},
        "http": {"enabled": True, "host": "127.0.0.1", "port": 0},
        # Local demo only: plain HTTP between the nodes on loopback, no mTLS (docs/security.md).
        "peer": {
            "insecure": True,
            "host": "127.0.0.1",
            "port": 0,
            "advert_interval_s": options.status_interval_s,
            "advert_max_age_s": 10 * options.status_interval_s,
        },
        # The job and the transfers run in real time while the clock runs `speedup` times faster: the
        # deadlines and the confirmation wait get room for a few real seconds each.
        "migration": {
            "slack_s": min(3600.0, 5.0 * options.speedup),
            "confirm_timeout_s": min(3600.0, 10.0 * options.speedup),
        },
    }


def node_configs(
    options: DemoOptions, trace: DemoTrace, work_dir: Path, host: str, port: int
) -> dict[str, tuple[Path, DaemonConfig]]:
    """Write one ``node.toml`` per site under ``work_dir/<node>/`` and load it back (validated).

    Args:
        options: the demo options (intervals, profile, topics).
        trace: the replayed trace (its sites and step).
        work_dir: parent of the node directories (each holds ``node.toml`` and ``data/``).
        host: the broker's host.
        port: the broker's port.

    Returns:
        Per node name, the config file and the loaded config.

    Raises:
        ConfigError: a config does not validate (e.g. an unknown hardware profile).
    """
    out: dict[str, tuple[Path, DaemonConfig]] = {}
    for site in trace.sites:
        name = node_name(site.name)
        node_dir = work_dir / name
        node_dir.mkdir(parents=True, exist_ok=True)
        topics = SiteTopics.for_site(site.name, options.signal_topic_prefix)
        mapping = _node_mapping(options, site.name, topics, host, port, node_dir / "data", trace.step_s)
        path = node_dir / "node.toml"
        path.write_text(
            f"# greenferry demo node for site {site.name} ({site.timezone}); written by the demo runner\n"
            + _toml(mapping),
            encoding="utf-8",
        )
        # environ={}: the demo's nodes do not pick up GREENFERRY_* overrides meant for a real node.
        out[name] = (path, load_config(path, environ={}))
    return out


def _harness_config(host: str, port: int) -> DaemonConfig:
    """The harness' own MQTT identity: publishes the replayed signals, reads the node statuses."""
    return config_from_mapping(
        {
            "node": {"name": "demo-harness", "site": "demo"},
            "mqtt": {"host": host, "port": port, "topic_prefix": HARNESS_TOPIC_PREFIX},
            "http": {"enabled": False},
        },
        source="<demo harness>",
        environ={},
    )


@dataclass
class _EnergyAccount:
    """Integrates one node's measured power (held between samples) against its site's replayed surplus.

    Nothing after ``end_s`` counts (the samples a node takes while it shuts down are not the demo's).
    """

    trace: DemoTrace
    site: int
    last: tuple[float, float] | None = None  # (time_s, power_w) of the latest sample
    energy_j: float = 0.0
    nonrenewable_j: float = 0.0
    end_s: float = math.inf

    def sample(self, time_s: float, power_w: float) -> None:
        self.until(time_s)
        if time_s <= self.end_s:
            self.last = (time_s, power_w)

    def until(self, time_s: float) -> None:
        if self.last is None:
            return
        t0_s, power_w = self.last
        t1_s = min(time_s, self.end_s)
        if t1_s > t0_s:
            self.energy_j += power_w * (t1_s - t0_s)
            self.nonrenewable_j += self.trace.nonrenewable_j(self.site, t0_s, t1_s, power_w)
            self.last = (t1_s, power_w)


@dataclass
class _Run:
    """The moving parts of one demo run."""

    options: DemoOptions
    trace: DemoTrace
    state: DemoState
    clock: ScaledClock
    daemons: dict[str, NodeDaemon] = field(default_factory=dict)
    accounts: dict[str, _EnergyAccount] = field(default_factory=dict)

    def end(self) -> float:
        """Close the energy accounts now (simulated time) and return that time."""
        end_s = self.clock.now_s()
        for account in self.accounts.values():
            account.until(end_s)
            account.end_s = end_s
        self.update_totals()
        return end_s

    def update_totals(self) -> None:
        now_s = self.clock.now_s()
        self.state.now_s = min(now_s, min((a.end_s for a in self.accounts.values()), default=now_s))
        for account in self.accounts.values():
            account.until(now_s)
        self.state.totals.energy_kwh = sum(a.energy_j for a in self.accounts.values()) / J_PER_KWH
        self.state.totals.nonrenewable_kwh = sum(a.nonrenewable_j for a in self.accounts.values()) / J_PER_KWH

    async def route_events(self, node: str, events: Subscription[Any]) -> None:
        """Feed one node's bus events into the energy account and the view state."""
        account = self.accounts[node]
        async for event in events:
            if isinstance(event, PowerSample):
                account.sample(event.time_s, event.gpu_power_w + (event.host_power_w or 0.0))
            elif isinstance(event, JobProgressed):
                self.state.on_job_event(
                    node, event.job_id, time_s=event.time_s, step=event.step, progress=event.progress
                )
            elif isinstance(event, MigrationEnded) and event.src == node:
                # Both ends publish MigrationEnded; count it once, at the source.
                self.state.on_migration(
                    event.job_id,
                    event.src,
                    event.dst,
                    time_s=event.time_s,
                    size_bytes=event.size_bytes,
                    outcome=event.outcome,
                    reason=event.reason,
                )

    def on_step(self, step: int, time_s: float) -> None:
        self.state.now_s = time_s
        steps_per_hour = max(1, round(3600.0 / self.trace.step_s))
        if self.options.headless and step % steps_per_hour == 0:
            parts = [f"{site.name} {float(site.surplus_w[step]):,.0f} W" for site in self.trace.sites]
            logger.info(
                "demo %s: surplus %s", dt.datetime.fromtimestamp(time_s, dt.UTC).isoformat(), ", ".join(parts)
            )


DEMO_JOB = "demo-train"


def demo_job_spec(state_mb: int = 32, frozen_mb: int = 96) -> JobSpec:
    """The example numpy job the demo runs: steps forever (until the demo ends), a 128 MiB checkpoint of
    which three quarters never change (a fine-tuning job's frozen base), so later moves send little."""
    example = Path(__file__).resolve().parents[3] / "examples" / "numpy_job.py"
    if not example.is_file():
        raise ConfigError(f"demo: the example job {example} is missing (run the demo from a source checkout)")
    return JobSpec(
        name=DEMO_JOB,
        command=[
            sys.executable,
            str(example),
            "--steps",
            "100000000",
            "--step-time-s",
            "0.02",
            "--state-mb",
            str(state_mb),
            "--frozen-mb",
            str(frozen_mb),
            "--report-interval-s",
            "0.25",
        ],
        checkpoint_size_bytes=(state_mb + frozen_mb) * 2**20,
        checkpoint_timeout_s=60.0,
    )


async def _submit_demo_job(run: _Run) -> None:
    """Submit the numpy example job to the node whose site has the most surplus now."""
    now_s = run.clock.now_s()
    best = max(
        run.daemons,
        key=lambda name: run.trace.surplus_at(
            run.trace.site_index(run.daemons[name].config.node.site), now_s
        ),
    )
    await run.daemons[best]._components["orchestrator"].submit(demo_job_spec())
    run.state.log_event(now_s, f"submitted {DEMO_JOB} to {best}")


async def _watch_double_runs(run: _Run) -> None:
    """Count every moment a job's process runs on two nodes at once (the protocol says: never)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    while True:
        running: dict[str, set[str]] = {}
        for name, daemon in run.daemons.items():
            orchestrator = daemon._components.get("orchestrator")
            if orchestrator is None:
                continue
            for job_id in orchestrator.supervisor.running():
                running.setdefault(job_id, set()).add(name)
        for job_id, nodes in running.items():
            key = (job_id, frozenset(nodes))
            if len(nodes) > 1 and key not in seen:
                seen.add(key)
                run.state.totals.double_runs += 1
                logger.error("demo: %s runs on %s at once", job_id, ", ".join(sorted(nodes)))
        await asyncio.sleep(0.05)


async def _wait_connected(link: MqttLink, where: str, timeout_s: float) -> None:
    deadline_s = time.monotonic() + timeout_s
    while not link.connected:
        if time.monotonic() > deadline_s:
            raise ServiceUnavailableError(
                f"demo: the MQTT broker {where} did not accept a connection within {timeout_s:g} s"
            )
        await asyncio.sleep(0.01)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def run_demo(
    options: DemoOptions | None = None,
    *,
    state: DemoState | None = None,
    console: Console | None = None,
) -> DemoSummary:
    """Run the live demo until ``options.duration_s`` simulated seconds have passed, then stop cleanly.

    Args:
        options: what to run (default :class:`DemoOptions`).
        state: a state to fill (callers and tests read it afterwards); default a new one.
        console: the live view's console (default stdout); unused when headless.

    Returns:
        The run's summary.

    Raises:
        ConfigError: bad options, an unknown scenario or site, traces that do not cover the window.
        ServiceUnavailableError: amqtt missing for the embedded broker, the broker unreachable, or a node
            that did not start within ``ready_timeout_real_s``.
    """
    options = options or DemoOptions()
    wall_start_s = time.monotonic()
    trace = await asyncio.to_thread(
        load_demo_trace,
        options.scenario,
        options.sites,
        options.start,
        options.duration_s,
        options.forecast_horizon_s,
    )
    state = state if state is not None else DemoState()
    state.scenario = trace.scenario
    state.start_s, state.end_s = trace.start_s, trace.start_s + options.duration_s
    state.speedup = options.speedup
    for site in trace.sites:
        if node_name(site.name) not in state.nodes:
            state.add_node(node_name(site.name), site.name, site.timezone)
    try:
        return await _run(options, trace, state, console, wall_start_s)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        errors = [e for e in leaves if isinstance(e, GreenferryError)]
        if len(leaves) == 1 or (errors and len(errors) == len(leaves)):
            raise (errors or leaves)[0] from group
        raise


async def _run(
    options: DemoOptions, trace: DemoTrace, state: DemoState, console: Console | None, wall_start_s: float
) -> DemoSummary:
    async with AsyncExitStack() as stack:
        if options.work_dir is None:
            work_dir = Path(tempfile.mkdtemp(prefix="greenferry-demo-"))
            stack.callback(shutil.rmtree, work_dir, True)
        else:
            work_dir = options.work_dir
            work_dir.mkdir(parents=True, exist_ok=True)
        if options.broker_url is None:
            from greenferry.adapters.embedded_broker import EmbeddedBroker

            broker = await stack.enter_async_context(EmbeddedBroker())
            host, port, broker_url = broker.host, broker.port, broker.url
        else:
            host, port = parse_broker_url(options.broker_url)
            broker_url = options.broker_url
        configs = node_configs(options, trace, work_dir, host, port)

        clock = ScaledClock(options.speedup, trace.start_s)
        run = _Run(options, trace, state, clock)
        collector = StatusCollector(state)
        link = await stack.enter_async_context(
            MqttLink(_harness_config(host, port), EventBus(), SignalBoard({}), clock, CollectorRegistry())
        )
        link.add_handler(collector.topic_filter, collector.handle)
        replayer = TraceReplayer(
            trace,
            clock,
            link,
            topic_prefix=options.signal_topic_prefix,
            forecast_horizon_s=options.forecast_horizon_s,
            on_step=run.on_step,
        )
        subscriptions: dict[str, Subscription[Any]] = {}
        for name, (_, config) in configs.items():
            daemon = NodeDaemon(config, clock=clock, environ={})
            run.daemons[name] = daemon
            run.accounts[name] = _EnergyAccount(trace, trace.site_index(config.node.site))
            subscriptions[name] = daemon.bus.subscribe("demo", maxsize=10_000, overflow=Overflow.DROP_OLDEST)
        view = None
        if not options.headless:
            view = await stack.enter_async_context(
                LiveView(
                    state,
                    console,
                    refresh_per_second=options.refresh_per_second,
                    before_render=run.update_totals,
                )
            )
        state.log_event(
            clock.now_s(), f"broker {broker_url}{' (embedded)' if options.broker_url is None else ''}"
        )

        stop = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            background = [group.create_task(link.run(), name="demo-mqtt")]
            await _wait_connected(link, broker_url, options.ready_timeout_real_s)
            background.append(group.create_task(replayer.run(), name="demo-replayer"))
            for name, events in subscriptions.items():
                background.append(
                    group.create_task(run.route_events(name, events), name=f"demo-events-{name}")
                )
            if view is not None:
                background.append(group.create_task(view.run(), name="demo-view"))
            nodes = [
                group.create_task(daemon.run(stop), name=f"demo-{name}")
                for name, daemon in run.daemons.items()
            ]
            try:
                async with asyncio.timeout(options.ready_timeout_real_s):
                    await asyncio.gather(*(d.wait_ready(math.inf) for d in run.daemons.values()))
            except TimeoutError as err:
                late = [n for n, d in run.daemons.items() if d.state != "online"]
                raise ServiceUnavailableError(
                    f"demo: node(s) {', '.join(late)} did not start within {options.ready_timeout_real_s:g} s"
                ) from err
            for name, daemon in run.daemons.items():
                state.log_event(clock.now_s(), f"{name}: http://127.0.0.1:{daemon.http_port}/v1/status")

            await _submit_demo_job(run)
            background.append(group.create_task(_watch_double_runs(run), name="demo-double-runs"))

            await clock.sleep(trace.start_s + options.duration_s - clock.now_s())
            end_s = run.end()
            stop.set()
            await asyncio.gather(*nodes)
            if not await collector.wait_until(
                lambda s: all(v.state == "offline" for v in s.nodes.values()), _OFFLINE_WAIT_S
            ):
                logger.warning("demo: not every node's offline status arrived")
            for task in background:
                task.cancel()
        state.now_s = end_s

    totals = state.totals
    return DemoSummary(
        migrations=totals.migrations,
        failed_migrations=totals.failed_migrations,
        steps_completed=totals.steps_completed,
        bytes_transferred=totals.bytes_transferred,
        nonrenewable_kwh=totals.nonrenewable_kwh,
        double_runs=totals.double_runs,
        energy_kwh=totals.energy_kwh,
        simulated_s=end_s - trace.start_s,
        wall_s=time.monotonic() - wall_start_s,
        steps_replayed=replayer.steps_published,
        steps_skipped=replayer.steps_skipped,
        messages_replayed=replayer.messages_published,
        nodes=tuple(run.daemons),
        nodes_online=sum(1 for v in state.nodes.values() if v.node in run.daemons and v.seen_online),
        node_energy_kwh={n: a.energy_j / J_PER_KWH for n, a in run.accounts.items()},
        node_nonrenewable_kwh={n: a.nonrenewable_j / J_PER_KWH for n, a in run.accounts.items()},
        broker_url=broker_url,
        work_dir=options.work_dir,
    )


def summary_lines(summary: DemoSummary) -> Sequence[str]:
    """The summary as short lines for a terminal."""
    share = summary.nonrenewable_kwh / summary.energy_kwh if summary.energy_kwh > 0 else 0.0
    return (
        f"simulated {summary.simulated_s / 3600:.1f} h in {summary.wall_s:.1f} s on {summary.broker_url}",
        f"nodes {summary.nodes_online}/{len(summary.nodes)} online; {summary.steps_replayed} steps replayed",
        f"migrations {summary.migrations} ({summary.failed_migrations} failed), "
        f"{summary.bytes_transferred} bytes moved, {summary.steps_completed} steps, "
        f"{summary.double_runs} double runs",
        f"energy {summary.energy_kwh:.3f} kWh, "
        f"non-renewable {summary.nonrenewable_kwh:.3f} kWh ({share:.0%})",
    )
