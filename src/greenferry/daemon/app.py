"""The node daemon: one TaskGroup owns every component; an AsyncExitStack tears them down in order.

Start order: telemetry sink and recorder, power meter and sampler, MQTT link, HTTP endpoint, then
READY=1 to systemd. Shutdown (SIGTERM/SIGINT, or ``stop`` set by a caller): STOPPING=1, the run loops are
cancelled, then the stack unwinds in reverse: HTTP stops, the MQTT link publishes its retained offline
status and disconnects, the power meter restores any power limits it set, and telemetry is flushed (to the
server or the durable spool) last. The whole teardown is bounded by ``shutdown_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge, Info

from greenferry import __version__
from greenferry.config import DaemonConfig
from greenferry.core.clock import Clock
from greenferry.core.events import NodeStatus
from greenferry.core.signals import SignalBoard
from greenferry.daemon.bus import EventBus
from greenferry.daemon.clock import RealClock
from greenferry.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["NodeDaemon", "running_daemon", "writable_dir_problem"]


class _Runnable(Protocol):
    def run(self) -> Awaitable[None]: ...


def writable_dir_problem(path: Path) -> str | None:
    """Create ``path`` if needed and prove it writable; None if it is, else what is wrong."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".greenferry-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        return f"not writable: {err.strerror or err}"
    return None


class _ShutdownRequestedError(Exception):
    """Raised inside the TaskGroup to stop every run loop."""


class NodeDaemon:
    """One node: signals in, power measured, telemetry out, status over MQTT and HTTP.

    Args:
        config: the validated node configuration.
        clock: time source (a ManualClock in tests; default the real clock).
        registry: Prometheus registry of this daemon (default: a new one, never the global registry).
        meter: a power meter to use instead of the configured one (tests, the demo).
        environ: environment for systemd's $NOTIFY_SOCKET/$WATCHDOG_USEC (default ``os.environ``).
    """

    def __init__(
        self,
        config: DaemonConfig,
        *,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
        meter: Any | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or RealClock()
        self.registry = registry or CollectorRegistry()
        self.bus = EventBus()
        self.board = SignalBoard({kind: s.max_age_s for kind, s in config.signals.configured().items()})
        self.state = "created"
        self.started_s: float | None = None
        self.http_port: int | None = None
        self._meter_override = meter
        self._environ = dict(os.environ if environ is None else environ)
        self._components: dict[str, Any] = {}
        self._ready = asyncio.Event()
        self._state_gauge = Gauge(
            "greenferry_daemon_up", "1 while the daemon is online", registry=self.registry
        )
        Info("greenferry_build", "greenferry version", registry=self.registry).info(
            {"version": __version__, "node": config.node.name, "site": config.node.site}
        )

    # -- what HTTP and systemd see -------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        """JSON-ready node status for /v1/status."""
        now_m = self.clock.monotonic_s()
        mqtt = self._components.get("mqtt")
        sampler = self._components.get("sampler")
        sample = getattr(sampler, "latest", None)
        meter = self._components.get("meter")
        out: dict[str, object] = {
            "node": self.config.node.name,
            "site": self.config.node.site,
            "version": __version__,
            "state": self.state,
            "uptime_s": None if self.started_s is None else now_m - self.started_s,
            "policy": self.config.node.policy,
            "mqtt": None
            if self.config.mqtt is None
            else {"connected": bool(getattr(mqtt, "connected", False))},
            "signals": self.board.snapshot(now_m),
            "surplus_w": self.board.surplus_w(now_m),
            "power": None
            if sample is None
            else {
                "source": sample.source,
                "gpu_power_w": sample.gpu_power_w,
                "host_power_w": sample.host_power_w,
                "gpus": [
                    {
                        "index": g.index,
                        "name": g.name,
                        "power_w": g.power_w,
                        "energy_j": g.energy_j,
                        "utilization": g.utilization,
                        "power_limit_w": g.power_limit_w,
                    }
                    for g in sample.gpus
                ],
            },
            "meter": meter.describe() if meter is not None and hasattr(meter, "describe") else None,
            "telemetry": {"type": self.config.telemetry.type},
            "dr": None if "dr" not in self._components else self._components["dr"].status(),
            "openadr": None if "openadr" not in self._components else self._components["openadr"].status(),
            "elastic": None if "elastic" not in self._components else self._components["elastic"].status(),
            **self._jobs_status(),
        }
        return out

    def _jobs_utilization(self) -> float:
        """Share of this node's GPU slots its running jobs hold (drives the model power meter)."""
        orchestrator = self._components.get("orchestrator")
        if orchestrator is None or self.config.node.gpu_count == 0:
            return 0.0
        return min(1.0, float(orchestrator.running_slots()) / self.config.node.gpu_count)

    def _jobs_status(self) -> dict[str, object]:
        """Jobs hosted here and migrations in flight (status, retained MQTT status, the demo view)."""
        orchestrator = self._components.get("orchestrator")
        if orchestrator is None or orchestrator.closed:
            return {"jobs": [], "migrations": [], "free_gpu_slots": None}
        jobs = [
            {"job_id": j.job_id, "state": j.state.value, "step": j.step, "epoch": j.epoch}
            for j in orchestrator.jobs()
            if j.node == self.config.node.name and j.state.value not in ("completed", "failed", "cancelled")
        ]
        migrations = [
            {
                "migration_id": m.migration_id,
                "job_id": m.job_id,
                "src": m.src,
                "dst": m.dst,
                "phase": m.phase,
                "total_bytes": m.total_bytes,
                "done_bytes": m.done_bytes,
            }
            for m in orchestrator.in_flight.values()
        ]
        return {"jobs": jobs, "migrations": migrations, "free_gpu_slots": orchestrator.free_slots()}

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Ready when every component started and the broker (if configured) is connected."""
        reasons: dict[str, object] = {}
        if self.state != "online":
            reasons["state"] = self.state
        if self.config.mqtt is not None and not getattr(self._components.get("mqtt"), "connected", False):
            reasons["mqtt"] = "not connected"
        return (not reasons, reasons or {"state": self.state})

    async def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Wait until the daemon has started every component (tests, the demo)."""
        await asyncio.wait_for(self._ready.wait(), timeout_s)

    def status_summary(self) -> dict[str, object]:
        """What the retained MQTT status carries besides its state: surplus, power, stale signals."""
        now_m = self.clock.monotonic_s()
        sampler = self._components.get("sampler")
        sample = getattr(sampler, "latest", None)
        return {
            "site": self.config.node.site,
            "surplus_w": self.board.surplus_w(now_m),
            "gpu_power_w": None if sample is None else sample.gpu_power_w,
            "host_power_w": None if sample is None else sample.host_power_w,
            "stale_signals": sorted(
                kind.value for kind in self.config.signals.configured() if self.board.is_stale(kind, now_m)
            ),
            **self._jobs_status(),
        }

    # -- lifecycle ------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down gracefully within ``shutdown_timeout_s``."""
        from greenferry.adapters.systemd import SystemdNotifier, WatchdogPinger

        notifier = SystemdNotifier.from_env(self._environ)
        self._prepare_data_dir()
        self.state = "starting"
        stack = AsyncExitStack()
        runners: dict[str, _Runnable] = {}
        try:
            await self._start_components(stack, runners)
            if notifier is not None:
                stack.callback(notifier.close)
                if notifier.watchdog_interval_s is not None:
                    runners["watchdog"] = await stack.enter_async_context(
                        WatchdogPinger(notifier, self.clock, self._healthy)
                    )
            self.state = "online"
            self.started_s = self.clock.monotonic_s()
            self._state_gauge.set(1)
            self.bus.publish(NodeStatus("online", self.clock.now_s()))
            self._ready.set()
            if notifier is not None:
                notifier.ready(status=f"online: node {self.config.node.name}")
            logger.info("node %s online (%s)", self.config.node.name, ", ".join(sorted(runners)))
            try:
                async with asyncio.TaskGroup() as group:
                    for name, component in runners.items():
                        group.create_task(_supervised(name, component.run), name=f"greenferry-{name}")
                    group.create_task(_raise_when_set(stop), name="greenferry-stop")
            except* _ShutdownRequestedError:
                pass
        finally:
            self.state = "stopping"
            self._state_gauge.set(0)
            if notifier is not None:
                notifier.stopping()
            self.bus.publish(NodeStatus("stopping", self.clock.now_s()))
            await self._teardown(stack)
            self.state = "offline"
            logger.info("node %s offline", self.config.node.name)

    async def _teardown(self, stack: AsyncExitStack) -> None:
        try:
            async with asyncio.timeout(self.config.shutdown_timeout_s):
                await stack.aclose()
        except TimeoutError:
            logger.error(
                "shutdown took longer than %.1f s; some components were not closed cleanly",
                self.config.shutdown_timeout_s,
            )

    def _healthy(self) -> bool:
        return self.state == "online"

    def _prepare_data_dir(self) -> None:
        data_dir = self.config.node.data_dir
        problem = writable_dir_problem(data_dir)
        if problem is not None:
            raise ConfigError(f"node.data_dir {data_dir}: {problem}")

    async def _start_components(self, stack: AsyncExitStack, runners: dict[str, _Runnable]) -> None:
        from greenferry.adapters.http import NodeHttpServer
        from greenferry.daemon.power import PowerMeter, PowerSampler, open_power_meter
        from greenferry.daemon.telemetry import TelemetryRecorder, open_sink

        config = self.config
        # Telemetry first in, last out: everything else may still produce points while it closes.
        sink = open_sink(config, self.clock, self.registry)
        sink = await _enter(stack, sink)
        self._components["sink"] = sink
        if hasattr(sink, "run"):
            runners["sink"] = sink
        recorder = await stack.enter_async_context(
            TelemetryRecorder(config, self.bus, sink, self.clock, self.registry)
        )
        self._components["recorder"] = recorder
        runners["recorder"] = recorder

        meter = self._meter_override
        if meter is None:
            opened: PowerMeter = await asyncio.to_thread(
                functools.partial(open_power_meter, config, self.clock, utilization_fn=self._jobs_utilization)
            )
            stack.push_async_callback(opened.close)
            meter = opened
        self._components["meter"] = meter
        stack.push_async_callback(_restore_limits, meter)
        sampler = await stack.enter_async_context(
            PowerSampler(meter, self.bus, self.clock, config.power.interval_s, self.registry)
        )
        self._components["sampler"] = sampler
        runners["sampler"] = sampler

        if config.mqtt is not None:
            from greenferry.adapters.mqtt import MqttLink

            mqtt = await stack.enter_async_context(
                MqttLink(config, self.bus, self.board, self.clock, self.registry)
            )
            self._components["mqtt"] = mqtt
            runners["mqtt"] = mqtt
            runners["status"] = _StatusReporter(self, mqtt, config.mqtt.status_interval_s)

        await self._start_jobs(stack, runners)
        await self._start_elastic(stack, runners)
        await self._start_dr(stack, runners)

        if config.http.enabled:
            http = await stack.enter_async_context(
                NodeHttpServer(config.http.host, config.http.port, self.registry, self.status, self.readiness)
            )
            self.http_port = http.port
            self._components["http"] = http
            runners["http"] = http

    async def _start_jobs(self, stack: AsyncExitStack, runners: dict[str, _Runnable]) -> None:
        """Job supervisor, orchestrator, peer API and local API (in that order in, reverse order out)."""
        from greenferry.adapters.local_api import LocalApiServer
        from greenferry.daemon.jobs import JobSupervisor
        from greenferry.daemon.orchestrator import Orchestrator
        from greenferry.daemon.peer import PeerClient

        config = self.config
        supervisor = await stack.enter_async_context(
            JobSupervisor(clock=self.clock, shutdown_timeout_s=max(1.0, config.shutdown_timeout_s / 2))
        )
        peer = config.peer
        peer_client: PeerClient | None = None
        server_ssl = None
        signing_key = None
        if peer is not None:
            client_ssl = None
            if peer.tls is not None:
                from greenferry.adapters.pki import (
                    NodeCertPaths,
                    client_ssl_context,
                    load_private_key,
                    server_ssl_context,
                )

                paths = NodeCertPaths(peer.tls.ca_file, peer.tls.cert_file, peer.tls.key_file)
                server_ssl = server_ssl_context(paths)
                client_ssl = client_ssl_context(paths)
                signing_key = load_private_key(peer.tls.key_file)
            peer_client = await stack.enter_async_context(PeerClient(config.node.name, client_ssl))
        mqtt = self._components.get("mqtt")
        orchestrator = Orchestrator(
            config,
            self.clock,
            self.bus,
            self.board,
            supervisor,
            peer_client=peer_client,
            signing_key=signing_key,
            publish_advert=None if mqtt is None or peer is None else self._advert_publisher(mqtt),
        )
        stack.push_async_callback(orchestrator.close)  # checkpoints the jobs before the supervisor closes
        self._components["orchestrator"] = orchestrator
        if peer is not None:
            server = await stack.enter_async_context(self._peer_server(orchestrator, server_ssl))
            orchestrator.peer_url = peer.advertise_url or server.url
            self._components["peer"] = server
            if mqtt is not None:
                mqtt.add_handler(f"{config.mqtt_prefix}/nodes/+/state", orchestrator.on_advert)
        api = await stack.enter_async_context(LocalApiServer(orchestrator, config.node.data_dir))
        self._components["api"] = api
        await orchestrator.recover()
        runners["orchestrator"] = orchestrator

    async def _start_dr(self, stack: AsyncExitStack, runners: dict[str, _Runnable]) -> None:
        """The demand-response controller (restores limits a crash left first), and the OpenADR VEN."""
        from greenferry.daemon.dr import DrController

        mqtt = self._components.get("mqtt")
        controller = await stack.enter_async_context(
            DrController(
                self.config,
                self.clock,
                self.bus,
                self._components["meter"],
                self._components.get("orchestrator"),
                registry=self.registry,
                publish=None if mqtt is None else self._retained_publisher(mqtt, "dr"),
                elastic=self._components.get("elastic"),
            )
        )
        self._components["dr"] = controller
        runners["dr"] = controller
        if self.config.openadr is not None:
            from greenferry.adapters.openadr import OpenAdrVen

            ven = OpenAdrVen(
                self.config.openadr, self.clock, controller.on_openadr_event, controller.measured_load_w
            )
            self._components["openadr"] = ven
            runners["openadr"] = ven

    async def _start_elastic(self, stack: AsyncExitStack, runners: dict[str, _Runnable]) -> None:
        """This node's shares of elastic jobs ([[elastic]]), if any."""
        if not self.config.elastic:
            return
        from greenferry.daemon.elastic import ElasticMembers

        members = await stack.enter_async_context(
            ElasticMembers(self.config, self.clock, self.board, self._components.get("mqtt"))
        )
        self._components["elastic"] = members
        runners["elastic"] = members

    def _advert_publisher(self, mqtt: Any) -> Callable[[bytes], Awaitable[None]]:
        return self._retained_publisher(mqtt, "state")

    def _retained_publisher(self, mqtt: Any, leaf: str) -> Callable[[bytes], Awaitable[None]]:
        """Publishes retained, QoS 1, to ``<prefix>/nodes/<node>/<leaf>``."""
        topic = f"{self.config.mqtt_prefix}/nodes/{self.config.node.name}/{leaf}"

        async def publish(payload: bytes) -> None:
            await mqtt.publish(topic, payload, qos=1, retain=True)

        return publish

    def _peer_server(self, orchestrator: Any, server_ssl: Any) -> Any:
        from aiohttp import web

        from greenferry.daemon.peer import PeerRequestError, PeerServer, caller_node
        from greenferry.daemon.transfer import transfer_routes

        peer = self.config.peer
        assert peer is not None

        def authorize(request: web.Request, transfer_id: str) -> None:
            caller = caller_node(request, peer.insecure)
            try:
                orchestrator.authorize_transfer(caller, transfer_id)
            except PeerRequestError as err:
                raise web.HTTPNotFound(text=err.message) from None

        store = orchestrator.chunks
        routes = transfer_routes(
            store,
            max_chunk_bytes=min(store.max_chunk_bytes, peer.max_body_bytes),
            authorize=authorize,
            accept_zstd=peer.compress,
        )
        return PeerServer(
            orchestrator,
            peer.host,
            peer.port,
            ssl_context=server_ssl,
            insecure=peer.insecure,
            max_body_bytes=peer.max_body_bytes,
            extra_routes=routes,
        )


class _StatusReporter:
    """Refreshes the retained status with :meth:`NodeDaemon.status_summary` every ``interval_s``."""

    def __init__(self, daemon: NodeDaemon, mqtt: Any, interval_s: float) -> None:
        self._daemon = daemon
        self._mqtt = mqtt
        self._interval_s = interval_s

    async def run(self) -> None:
        while True:
            await self._mqtt.publish_status(self._daemon.status_summary())
            await self._daemon.clock.sleep(self._interval_s)


async def _enter(stack: AsyncExitStack, component: Any) -> Any:
    """Enter ``component`` as an async context manager if it is one, else register its close()."""
    if hasattr(component, "__aenter__"):
        return await stack.enter_async_context(component)
    stack.push_async_callback(component.close)
    return component


async def _restore_limits(meter: Any) -> None:
    """Never leave a GPU capped: restore default power limits at shutdown."""
    try:
        await meter.restore_power_limits()
    except Exception:
        logger.exception("could not restore GPU power limits at shutdown")


async def _supervised(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run a component loop; a crash is logged with its traceback and stops the daemon (systemd restarts)."""
    try:
        await run()
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("component %s crashed; shutting the node down", name)
        raise
    logger.debug("component %s finished", name)
    # A run loop that returns on its own is done; keep the others running.


async def _raise_when_set(stop: asyncio.Event) -> None:
    await stop.wait()
    raise _ShutdownRequestedError


@contextlib.asynccontextmanager
async def running_daemon(daemon: NodeDaemon, timeout_s: float = 10.0) -> AsyncIterator[NodeDaemon]:
    """Run ``daemon`` in the background of a ``with`` block (tests, the demo); stops it on exit."""
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        task = group.create_task(daemon.run(stop))
        ready = asyncio.ensure_future(daemon.wait_ready(timeout_s))
        done, _ = await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            await task  # re-raises what stopped the daemon before it was ready
        try:
            yield daemon
        finally:
            stop.set()
