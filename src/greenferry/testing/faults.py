"""Seeded, randomized fault injection over real daemons in one process: crash them, cut them off, lie to them.

A trial is two nodes, ``a`` and ``b``, each the daemon's real job pieces (JobSupervisor, Orchestrator,
PeerServer with the chunk routes, PeerClient: wired as daemon/app.py wires them, without MQTT, telemetry or
power sampling; adverts go from node to node directly) talking real HTTP on loopback, each with its own
data directory and a port it keeps across restarts. The job is :mod:`greenferry.testing.fault_job`, a
real subprocess. Node ``a`` runs the job and the trial moves it to ``b`` (or first moves it ``a -> b``
cleanly and then back), while the trial's :class:`FaultPlan`, drawn from its seed, strikes that move:

======================  =============================================================================
``crash``               a node dies at a protocol point (before or after a request, or after the
                        destination handled one and before its answer left); restarted on the same
                        data directory after a delay (none, short, or past the source's fence time),
                        so ``recover()`` runs. Soft: its jobs learn the daemon is gone and checkpoint;
                        hard (node power loss): they are killed.
``drop``                requests of one kind are lost before they arrive, or their answers after.
``partition``           every request between the nodes fails for a while (short, or past the fence).
``delay``               a request is held back (past the deadline, or not), or its answer.
``corrupt``             chunk bodies are damaged on the wire (a few times, or every time).
``second_offer``        a second offer for the same job reaches the destination concurrently.
``disk_full``           the destination's chunk store has room for only part of the checkpoint (ENOSPC).
``replay_commit``       the commit is sent again once the move is over.
======================  =============================================================================

What a crash is here: the node's journal is closed at once (nothing it does later is durable), every task
its code started is cancelled (a task factory tags each task with the node incarnation that created it;
its peer server's connection tasks are left to the server's teardown, and the handlers they run find the
node dead), its sockets close, its job processes get SIGTERM (what the SDK does when its daemon is gone:
checkpoint and exit) or SIGKILL and are left to finish on their own, and a fresh incarnation starts on
the same data directory and port. The hooks sit at the network and protocol boundary only: an aiohttp
client middleware on each node's peer session, a wrapper around the node's
:class:`~greenferry.daemon.peer.PeerHandler`, and (disk full) the chunk store the transfer routes write
to. Production code has no test branches.

Once the move has come to rest (no node down, no request or migration task in flight, no open
migration, one owner running the job) the trial checks, from the journals, the process table and the
checkpoint files:

- at most one process of the job at every observation (sampled every 20 ms), exactly one at the end, at
  the node that owns the job, at the epoch the journals say;
- no checkpoint lost: the last process resumed from the newest checkpoint a legitimate owner saved (a
  destination's run that was rolled back is not one), and that checkpoint is at the owner;
- the job runs again within the move's deadline plus 60 s of the last fault (a condition wait);
- and when the move was rolled back, a clean move afterwards commits (nothing the faults left behind, a
  reservation or a spent epoch, blocks the job), and the job stays where it is once every doubt is over.

Used by tests/integration/test_fault_injection.py (200 trials) and bench/fault_injection.py (1,000).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import json
import logging
import math
import os
import random
import shutil
import signal
import socket
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import aiohttp
from aiohttp import web

from greenferry.config import DaemonConfig, config_from_mapping
from greenferry.core import protocol
from greenferry.core.jobs import TERMINAL_STATES, JobInfo, JobSpec, JobState
from greenferry.core.signals import Reading, SignalBoard, SignalKind, SurplusWindow
from greenferry.daemon.bus import EventBus
from greenferry.daemon.clock import RealClock
from greenferry.daemon.jobs import JobEvent, JobEventKind, JobStartError, JobSupervisor
from greenferry.daemon.journal import MigrationRecord, MigrationRole, MigrationStep
from greenferry.daemon.orchestrator import Orchestrator
from greenferry.daemon.peer import NODE_HEADER, PeerClient, PeerRequestError, PeerServer, caller_node
from greenferry.daemon.transfer import ChunkStore, transfer_routes
from greenferry.errors import GreenferryError, ServiceUnavailableError
from greenferry.job import read_meta

__all__ = [
    "ENV_SEED",
    "ENV_TRIALS",
    "FAULT_KINDS",
    "NOMINAL_DEADLINE_S",
    "NOMINAL_FENCE_S",
    "Fault",
    "FaultPlan",
    "ProcessTable",
    "TrialResult",
    "run_trials",
    "summarize",
]

logger = logging.getLogger(__name__)

ENV_SEED = "GREENFERRY_FAULT_SEED"
ENV_TRIALS = "GREENFERRY_FAULT_TRIALS"

FAULT_KINDS = (
    "none",
    "crash",
    "drop",
    "partition",
    "delay",
    "corrupt",
    "second_offer",
    "disk_full",
    "replay_commit",
)
_KIND_WEIGHTS = (3, 36, 18, 8, 8, 8, 7, 6, 6)

NODES = ("a", "b")
ROLES = ("src", "dst")  # a fault names a role of the faulty move: a -> b, or b -> a after a clean move
_T = TypeVar("_T")

# The protocol's time limits, small so that a trial takes seconds (docs/peer-protocol.md has the rules).
REQUEST_TIMEOUT_S = 2.0
CONFIRM_TIMEOUT_S = 1.0
CHECKPOINT_TIMEOUT_S = 1.0
SLACK_S = 1.0
_MIGRATION = {
    "checkpoint_write_s": 0.2,
    "restore_s": 0.2,
    "deadline_factor": 2.0,
    "slack_s": SLACK_S,
    "confirm_timeout_s": CONFIRM_TIMEOUT_S,
    "forecast_step_s": 300,
    "horizon_s": 6 * 3600,
}
# Offer deadline before any measurement: (checkpoint_write_s + restore_s) * deadline_factor + slack_s.
NOMINAL_DEADLINE_S = 1.8
# Source's fence after the offer: deadline + request timeout + confirm timeout + checkpoint timeout + slack.
NOMINAL_FENCE_S = NOMINAL_DEADLINE_S + REQUEST_TIMEOUT_S + CONFIRM_TIMEOUT_S + CHECKPOINT_TIMEOUT_S + SLACK_S
RECOVERY_BUDGET_S = 60.0  # the job runs again within the move's deadline plus this
_JOB_FILES = 3
_JOB_FILE_BYTES = 8192
_CHECKPOINT_BYTES = (_JOB_FILES + 1) * _JOB_FILE_BYTES
_POINTS = ("offer", "have", "chunk", "prepare", "commit", "confirm", "abort", "status")
_OBSERVE_S = 0.02
# Orchestrator task names (its _spawn): a migration is at rest only once none of these runs at either end.
_SOURCE_TASKS = ("greenferry-migrate-", "greenferry-resolve-", "greenferry-abort")
_PROTOCOL_TASKS = (*_SOURCE_TASKS, "greenferry-doubt-", "greenferry-confirm-")
_MAX_BODY_BYTES = 16 * 2**20


# ------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault of a trial's plan.

    Attributes:
        kind: one of :data:`FAULT_KINDS`.
        node: the role (``src``, ``dst``) of the node that crashes, or whose requests fail (drop).
        point: the protocol request that triggers it (offer, have, chunk, prepare, commit, confirm, abort,
            status), counted at the requesting node; for a crash at ``when="handled"``, the request the
            destination handled.
        when: ``before`` the request leaves, ``after`` its answer came back, or ``handled`` (crash only):
            the destination did what the request asked and dies before answering.
        nth: the occurrence of ``point`` that triggers it (chunks: after ``nth - 1`` chunks went through).
        count: how many requests are dropped or delayed, or chunks damaged (99: every one).
        duration_s: a partition's length, or a request's delay.
        restart_after_s: how long a crashed node stays down.
        hard: a crash that kills the node's job processes too (no checkpoint on the way out).
        capacity_bytes: the destination's free chunk space (disk_full).
    """

    kind: str
    node: str = "src"
    point: str = "offer"
    when: str = "before"
    nth: int = 1
    count: int = 1
    duration_s: float = 0.0
    restart_after_s: float = 0.0
    hard: bool = False
    capacity_bytes: int = 0

    def describe(self) -> str:
        """A short human-readable form (what a failing trial prints)."""
        if self.kind == "crash":
            how = "hard " if self.hard else ""
            return (
                f"{how}crash {self.node} {self.when} {self.point}#{self.nth}, "
                f"back after {self.restart_after_s:.2f} s"
            )
        if self.kind == "drop":
            return (
                f"drop {self.count} {self.point} request(s) from {self.node} ({self.when}) from #{self.nth}"
            )
        if self.kind == "partition":
            return f"partition for {self.duration_s:.2f} s at {self.point}#{self.nth}"
        if self.kind == "delay":
            where = f"{self.count} {self.point} from {self.node} ({self.when}) from #{self.nth}"
            return f"delay {where} by {self.duration_s:.2f} s"
        if self.kind == "corrupt":
            return f"corrupt {self.count} chunk(s) from #{self.nth}"
        if self.kind == "second_offer":
            return f"second offer at {self.point}#{self.nth}"
        if self.kind == "disk_full":
            return f"destination chunk space {self.capacity_bytes} bytes"
        return self.kind


_CRASH_POINTS = (
    ("offer", "before"),
    ("offer", "after"),
    ("offer", "handled"),
    ("have", "before"),
    ("chunk", "before"),
    ("chunk", "after"),
    ("prepare", "before"),
    ("prepare", "handled"),
    ("prepare", "after"),
    ("commit", "before"),
    ("commit", "handled"),
    ("commit", "after"),
    ("confirm", "before"),
    ("confirm", "handled"),
    ("confirm", "after"),
)


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What goes wrong in one trial: one or two faults, drawn from the trial's seed.

    Attributes:
        seed: the trial's seed.
        faults: what strikes the faulty move.
        pre_hop: the job first moves a -> b without faults; the faulty move is then b -> a (the job comes
            back to a node that had it, at epoch 1).
    """

    seed: int
    faults: tuple[Fault, ...]
    pre_hop: bool = False

    @classmethod
    def draw(cls, seed: int) -> FaultPlan:
        """The plan of trial ``seed`` (the same seed always gives the same plan)."""
        rng = random.Random(seed)
        first = _draw_fault(rng, allow_none=True)
        faults = [first]
        if first.kind != "none" and rng.random() < 0.3:
            faults.append(_draw_fault(rng, allow_none=False))
        return cls(seed, tuple(faults), pre_hop=rng.random() < 0.3)

    def describe(self) -> str:
        """The faults, in words."""
        move = "b -> a after a clean a -> b" if self.pre_hop else "a -> b"
        return f"{move}: " + "; ".join(f.describe() for f in self.faults)


def _restart_delay_s(rng: random.Random) -> float:
    roll = rng.random()
    if roll < 0.55:
        return 0.0
    if roll < 0.9:
        return rng.uniform(0.05, 1.5)
    return NOMINAL_FENCE_S + rng.uniform(0.5, 2.5)  # down past the source's fence time


def _draw_fault(rng: random.Random, *, allow_none: bool) -> Fault:
    kinds = FAULT_KINDS if allow_none else FAULT_KINDS[1:]
    weights = _KIND_WEIGHTS if allow_none else _KIND_WEIGHTS[1:]
    kind = rng.choices(kinds, weights)[0]
    chunk_nth = rng.randint(1, _JOB_FILES + 1)
    if kind == "crash":
        point, when = rng.choice(_CRASH_POINTS)
        return Fault(
            "crash",
            node=rng.choice(ROLES),
            point=point,
            when=when,
            nth=chunk_nth if point == "chunk" else 1,
            restart_after_s=_restart_delay_s(rng),
            hard=rng.random() < 0.25,
        )
    if kind == "drop":
        if rng.random() < 0.15:
            node, point = "dst", "status"
        else:
            node, point = "src", rng.choice(_POINTS)
        return Fault(
            "drop",
            node=node,
            point=point,
            when=rng.choice(("before", "after")),
            nth=chunk_nth if point == "chunk" else 1,
            count=rng.randint(1, 3),
        )
    if kind == "partition":
        long = rng.random() < 0.2
        point = rng.choice(("have", "chunk", "prepare", "commit", "confirm"))
        return Fault(
            "partition",
            point=point,
            nth=chunk_nth if point == "chunk" else 1,
            duration_s=NOMINAL_FENCE_S + rng.uniform(0.5, 2.0) if long else rng.uniform(0.2, 2.5),
        )
    if kind == "delay":
        point = rng.choice(("offer", "have", "chunk", "prepare", "commit", "confirm"))
        return Fault(
            "delay",
            point=point,
            nth=chunk_nth if point == "chunk" else 1,
            duration_s=rng.uniform(0.1, 2.5) * NOMINAL_DEADLINE_S,
        )
    if kind == "corrupt":
        return Fault(
            "corrupt", point="chunk", nth=chunk_nth, count=99 if rng.random() < 0.3 else rng.randint(1, 3)
        )
    if kind == "second_offer":
        point = rng.choice(("offer", "have", "prepare", "commit", "confirm"))
        return Fault("second_offer", point=point, when=rng.choice(("before", "after")))
    if kind == "disk_full":
        return Fault("disk_full", node="dst", capacity_bytes=rng.randrange(0, _CHECKPOINT_BYTES))
    return Fault(kind)


# ------------------------------------------------------------------------------------ the process table


class ProcessTable:
    """This process's live children that carry a job id (``GREENFERRY_JOB_ID``): the one-runner check.

    Linux ``/proc`` only. A zombie (exited, not yet reaped) does not count.
    """

    def __init__(self) -> None:
        self._me = os.getpid()
        self._known: dict[tuple[int, str], tuple[str, str] | None] = {}  # (pid, start time) -> job, ckpt dir

    def jobs(self) -> dict[str, list[tuple[int, str]]]:
        """Job id -> [(pid, checkpoint directory), ...] of the live job processes."""
        out: dict[str, list[tuple[int, str]]] = {}
        seen: set[tuple[int, str]] = set()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as handle:
                    stat = handle.read().decode(errors="replace")
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) < 20 or int(fields[1]) != self._me or fields[0] in ("Z", "X"):
                continue
            key = (int(entry.name), fields[19])
            seen.add(key)
            job = self._known.get(key)
            if job is None:  # read again until it has one: between fork and exec it has our environment
                job = self._known[key] = _job_of(key[0])
            if job is not None:
                out.setdefault(job[0], []).append((key[0], job[1]))
        for key in [k for k in self._known if k not in seen]:
            del self._known[key]
        return out


def _job_of(pid: int) -> tuple[str, str] | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environ = handle.read().split(b"\0")
    except OSError:
        return None
    values = dict(item.split(b"=", 1) for item in environ if b"=" in item)
    job = values.get(b"GREENFERRY_JOB_ID")
    if job is None:
        return None
    return job.decode(), values.get(b"GREENFERRY_JOB_CHECKPOINT_DIR", b"").decode()


# ------------------------------------------------------------------------------------- incarnations

_INCARNATION: contextvars.ContextVar[_Incarnation | None] = contextvars.ContextVar(
    "greenferry_fault_incarnation", default=None
)
_JOB_WATCH: contextvars.ContextVar[bool] = contextvars.ContextVar("greenferry_fault_job_watch", default=False)
# The peer server's own connection and request tasks: a crash leaves them to the server's teardown (cancelled
# half-way, asyncio and aiohttp leak the connection); the handlers they run find the node dead and fail.
_SERVER_COROUTINES = frozenset(
    {"BaseSelectorEventLoop._accept_connection2", "RequestHandler.start", "RequestHandler._handle_request"}
)


def _task_factory(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
    context: contextvars.Context | None = None,
) -> asyncio.Task[Any]:
    """Every task, tagged with the node incarnation whose code created it (so a crash can end them all)."""
    ctx = context if context is not None else contextvars.copy_context()
    task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, context=ctx)
    incarnation = ctx.get(_INCARNATION)
    if incarnation is not None:
        if ctx.get(_JOB_WATCH, False):
            incarnation.track(task, incarnation.job_tasks)
        elif getattr(coro, "__qualname__", "") in _SERVER_COROUTINES:
            incarnation.track(task, incarnation.server_tasks)
        else:
            incarnation.track(task, incarnation.tasks)
    return task


@contextlib.contextmanager
def _tagging_tasks(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    previous = loop.get_task_factory()
    if previous is not None:
        raise RuntimeError("the fault harness needs the event loop's task factory, and one is set")
    loop.set_task_factory(_task_factory)
    try:
        yield
    finally:
        loop.set_task_factory(None)


class NodeDownError(GreenferryError):
    """The node is crashed (between incarnations)."""


class _CrashableSupervisor(JobSupervisor):
    """The real supervisor; after a crash its watchers only reap, as init would reap the daemon's orphans."""

    detached = False

    async def start(self, spec: JobSpec, job_dir: Path, *, resume: bool) -> None:
        """As JobSupervisor.start; the job's watcher outlives a crash of the node (as its process does)."""
        if self.detached:
            raise JobStartError(f"job {spec.job_id}: the daemon is dead")
        token = _JOB_WATCH.set(True)
        try:
            await super().start(spec, job_dir, resume=resume)
        finally:
            _JOB_WATCH.reset(token)
        pid = self.pid(spec.job_id)
        if self.detached and pid is not None:
            # Started while its daemon died (a request it was handling): it finds its daemon gone.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    async def _outcome(self, job: Any, returncode: int) -> JobEvent:
        if self.detached:  # the daemon is dead: nobody repairs the checkpoint area behind its successor
            return JobEvent(JobEventKind.STOPPED, job.job_id, self.clock.now_s(), exit_code=returncode)
        return await super()._outcome(job, returncode)


class _BoundedChunkStore(ChunkStore):
    """A chunk store on a disk with ``capacity_bytes`` free (during the faulty move): then ENOSPC."""

    def __init__(self, root: Path, capacity_bytes: int, injector: _Injector) -> None:
        super().__init__(root)
        self.capacity_bytes = capacity_bytes
        self._injector = injector
        self._used_bytes = 0

    def put(self, data: bytes, expected_sha256: str | None = None) -> str:
        """As ChunkStore.put, until the disk is full."""
        if self._injector.active and self._used_bytes + len(data) > self.capacity_bytes:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        sha = super().put(data, expected_sha256)
        self._used_bytes += len(data)
        return sha


class _FaultyPeerClient(PeerClient):
    """The node's real peer client, whose session sends every request through the trial's injector."""

    def __init__(self, node: str, injector: _Injector) -> None:
        super().__init__(node, None, request_timeout_s=REQUEST_TIMEOUT_S)
        self._injector = injector

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(limit=64)
        self._session = aiohttp.ClientSession(
            connector=connector, headers={NODE_HEADER: self.node}, middlewares=(self._through_faults,)
        )
        return self

    async def _through_faults(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        key = (self.node, _point_of(request.method, request.url.path))
        in_flight = self._injector.in_flight
        in_flight[key] = in_flight.get(key, 0) + 1
        try:
            return await self._injector.client(*key, request, handler)
        finally:
            in_flight[key] -= 1


def _point_of(method: str, path: str) -> str:
    parts = path.strip("/").split("/")
    if parts[:2] == ["v1", "transfers"]:
        return "have" if parts[-1] == "have" else "chunk"
    if parts[:2] == ["v1", "migrations"]:
        if len(parts) == 2:
            return "offer"
        if len(parts) == 3:
            return "status" if method == "GET" else "other"
        return parts[3]
    return "other"


class _FaultyHandler:
    """The node's PeerHandler, with the injector's say after each request it handled; silent when crashed."""

    def __init__(self, incarnation: _Incarnation, orchestrator: Orchestrator, injector: _Injector) -> None:
        self._incarnation = incarnation
        self._orchestrator = orchestrator
        self._injector = injector

    def _alive(self) -> None:
        if self._incarnation.dead:
            raise web.HTTPServiceUnavailable(text="crashed")

    def info(self) -> dict[str, Any]:
        """GET /v1/info."""
        self._alive()
        return self._orchestrator.info()

    async def chunks_held(self, peer: str, query: protocol.HeldQuery) -> protocol.HeldReply:
        """A question about cached chunks (before an offer)."""
        self._alive()
        return await self._orchestrator.chunks_held(peer, query)

    async def on_offer(self, peer: str, offer: protocol.Offer) -> protocol.OfferReply:
        """An offer."""
        self._alive()
        reply = await self._orchestrator.on_offer(peer, offer)
        await self._injector.handled(self._incarnation, "offer")
        return reply

    async def on_prepare(
        self, peer: str, migration_id: str, prepare: protocol.Prepare, peer_key: Any | None
    ) -> None:
        """A prepare."""
        self._alive()
        await self._orchestrator.on_prepare(peer, migration_id, prepare, peer_key)
        await self._injector.handled(self._incarnation, "prepare")

    async def on_commit(self, peer: str, migration_id: str, commit: protocol.Commit) -> protocol.CommitReply:
        """A commit."""
        self._alive()
        reply = await self._orchestrator.on_commit(peer, migration_id, commit)
        await self._injector.handled(self._incarnation, "commit")
        return reply

    async def on_confirm(
        self, peer: str, migration_id: str, confirm: protocol.Confirm
    ) -> protocol.ConfirmReply:
        """A confirmation."""
        self._alive()
        reply = await self._orchestrator.on_confirm(peer, migration_id, confirm)
        await self._injector.handled(self._incarnation, "confirm")
        return reply

    async def on_abort(self, peer: str, migration_id: str, abort: protocol.Abort) -> None:
        """An abort."""
        self._alive()
        await self._orchestrator.on_abort(peer, migration_id, abort)

    def migration_status(self, peer: str, migration_id: str) -> protocol.MigrationStatus:
        """A status question."""
        self._alive()
        return self._orchestrator.migration_status(peer, migration_id)


class _Incarnation:
    """One life of a node's daemon, from boot to crash."""

    def __init__(self, node: _Node) -> None:
        self.node = node
        self.dead = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self.job_tasks: set[asyncio.Task[Any]] = set()
        self.server_tasks: set[asyncio.Task[Any]] = set()
        self.context = contextvars.copy_context()
        self.context.run(_INCARNATION.set, self)
        self.supervisor = _CrashableSupervisor(clock=node.clock, shutdown_timeout_s=CHECKPOINT_TIMEOUT_S)
        self.client = _FaultyPeerClient(node.name, node.trial.injector)
        self.orchestrator: Orchestrator | None = None
        self.server: PeerServer | None = None

    def track(self, task: asyncio.Task[Any], tasks: set[asyncio.Task[Any]]) -> None:
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def call(self, fn: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``fn()`` as this incarnation's code (what it starts belongs to it).

        Raises:
            NodeDownError: the node crashed before or while it ran.
        """
        if self.dead:
            raise NodeDownError(f"node {self.node.name} is down")

        async def body() -> _T:
            return await fn()

        task = asyncio.get_running_loop().create_task(body(), context=self.context.copy())
        await asyncio.wait({task})
        if task.cancelled():
            raise NodeDownError(f"node {self.node.name} crashed")
        return task.result()

    async def boot(self) -> None:
        node = self.node
        await self.supervisor.__aenter__()
        await self.client.__aenter__()
        board = SignalBoard({SignalKind.PRODUCTION_W: 1e9, SignalKind.SURPLUS_FORECAST: 1e9})
        now_m, now_s = node.clock.monotonic_s(), node.clock.now_s()
        board.update(Reading(SignalKind.PRODUCTION_W, 5000.0, now_m))
        window = SurplusWindow(now_s - 60, now_s + 6 * 3600, 5000.0)
        board.update(Reading(SignalKind.SURPLUS_FORECAST, (window,), now_m))
        orchestrator = Orchestrator(
            node.config,
            node.clock,
            EventBus(),
            board,
            self.supervisor,
            peer_client=self.client,
            publish_advert=node.trial.broker.publisher(node.name),
        )
        self.orchestrator = orchestrator
        store: ChunkStore = orchestrator.chunks
        if node.capacity_bytes is not None:
            store = _BoundedChunkStore(store.root, node.capacity_bytes, node.trial.injector)

        def authorize(request: web.Request, transfer_id: str) -> None:
            if self.dead:
                raise web.HTTPServiceUnavailable(text="crashed")
            caller = caller_node(request, True)
            try:
                orchestrator.authorize_transfer(caller, transfer_id)
            except PeerRequestError as err:
                raise web.HTTPNotFound(text=err.message) from None

        server = PeerServer(
            _FaultyHandler(self, orchestrator, node.trial.injector),
            "127.0.0.1",
            node.port,
            ssl_context=None,
            insecure=True,
            max_body_bytes=_MAX_BODY_BYTES,
            extra_routes=transfer_routes(
                store,
                max_chunk_bytes=min(store.max_chunk_bytes, _MAX_BODY_BYTES),
                authorize=authorize,
                accept_zstd=False,
            ),
        )
        for attempt in range(50):  # the previous incarnation's socket may take a moment to let go
            try:
                await server.__aenter__()
                break
            except ServiceUnavailableError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.05)
        self.server = server
        orchestrator.peer_url = server.url
        node.trial.broker.deliver_retained(node.name, orchestrator)
        await orchestrator.recover()
        asyncio.get_running_loop().create_task(orchestrator.run(), name=f"fault-{node.name}-run")

    async def crash(self, *, hard: bool) -> None:
        """Die now: no journal write, no answer, no decision from here on (see the module docstring)."""
        self.dead = True
        self.supervisor.detached = True
        if self.orchestrator is not None:
            self.orchestrator.journal.close()
        processes = [p for p in (self.supervisor.pid(j) for j in self.supervisor.running()) if p is not None]
        for task in list(self.tasks):
            task.cancel()
        for pid in processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if hard:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGTERM)  # the SDK checkpoints and exits, as when its daemon is gone
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=10)
        if self.server is not None:
            await self.server.__aexit__(None, None, None)
        await self.client.__aexit__(None, None, None)

    async def close(self) -> None:
        """End of the trial: kill the jobs and let go of everything (no graceful checkpoint)."""
        if not self.dead:
            await self.crash(hard=True)
        if self.job_tasks:
            await asyncio.wait(list(self.job_tasks), timeout=10)
        await self.supervisor.__aexit__(None, None, None)


class _Node:
    """A node across its incarnations: name, data directory, port, and the incarnation alive now (if any)."""

    def __init__(self, trial: _Trial, name: str, port: int) -> None:
        self.trial = trial
        self.name = name
        self.port = port
        self.clock = RealClock()
        self.data_dir = trial.work / name
        self.capacity_bytes: int | None = None
        self.config = _node_config(name, self.data_dir, port)
        self.current: _Incarnation | None = None
        self.incarnations: list[_Incarnation] = []
        self.restarting = False

    async def start(self) -> None:
        incarnation = _Incarnation(self)
        self.incarnations.append(incarnation)
        task = asyncio.get_running_loop().create_task(incarnation.boot(), context=incarnation.context.copy())
        await task
        self.current = incarnation

    async def crash(self, *, hard: bool) -> bool:
        incarnation, self.current = self.current, None
        if incarnation is None:
            return False
        await incarnation.crash(hard=hard)
        return True

    def protocol_tasks(self, *, full: bool = True) -> list[str]:
        """The orchestrator's migration tasks still running here (by the names it gives them)."""
        if self.current is None:
            return []
        prefixes = _PROTOCOL_TASKS if full else _SOURCE_TASKS
        return sorted(
            t.get_name() for t in self.current.tasks if not t.done() and t.get_name().startswith(prefixes)
        )

    @property
    def orchestrator(self) -> Orchestrator:
        if self.current is None or self.current.orchestrator is None:
            raise NodeDownError(f"node {self.name} is down")
        return self.current.orchestrator

    def job(self, job_id: str) -> JobInfo | None:
        return self.orchestrator.journal.job(job_id)

    def migrations(self, job_id: str) -> list[MigrationRecord]:
        return self.orchestrator.journal.migrations(job_id=job_id)


def _node_config(name: str, data_dir: Path, port: int) -> DaemonConfig:
    return config_from_mapping(
        {
            "node": {
                "name": name,
                "site": f"site-{name}",
                "hardware_profile": "l4",
                "gpu_count": 1,
                "data_dir": str(data_dir),
                "policy": "static",  # jobs stay where they are: only the trial moves them
                "decision_interval_s": 0.1,
            },
            # Never connected: the trial delivers adverts itself (_Broker), so [peer] has its [mqtt].
            "mqtt": {"host": "127.0.0.1", "port": 1, "topic_prefix": "gf"},
            "power": {"source": "model"},
            "http": {"enabled": False},
            "peer": {
                "insecure": True,
                "host": "127.0.0.1",
                "port": port,
                "advert_interval_s": 0.1,
                "default_bandwidth_bps": 1e9,
                "streams": 2,
            },
            "migration": _MIGRATION,
        },
        environ={},
    )


class _Broker:
    """Retained adverts, delivered at once to the live incarnations (the MQTT broker, faked)."""

    def __init__(self, trial: _Trial) -> None:
        self._trial = trial
        self._retained: dict[str, bytes] = {}

    def publisher(self, name: str) -> Callable[[bytes], Awaitable[None]]:
        async def publish(payload: bytes) -> None:
            self._retained[name] = payload
            for node in self._trial.nodes.values():
                if node.name != name and node.current is not None and node.current.orchestrator is not None:
                    node.current.orchestrator.on_advert(f"gf/nodes/{name}/state", payload)

        return publish

    def deliver_retained(self, name: str, orchestrator: Orchestrator) -> None:
        for other, payload in self._retained.items():
            if other != name:
                orchestrator.on_advert(f"gf/nodes/{other}/state", payload)


# ------------------------------------------------------------------------------------------ the injector


@dataclass
class _Armed:
    fault: Fault
    seen: int = 0
    done: bool = False
    fired_s: float | None = None


class _Injector:
    """Applies a trial's faults at the network boundary (client middleware) and after handled requests."""

    def __init__(self, trial: _Trial, plan: FaultPlan) -> None:
        self._trial = trial
        self.armed = [_Armed(f) for f in plan.faults if f.kind not in ("none", "disk_full", "replay_commit")]
        self.partition_until_m = -math.inf
        self.active = False  # only the faulty move is struck
        self.in_flight: dict[tuple[str, str], int] = {}  # (node, point) -> requests not answered yet

    def _fire(self, armed: _Armed) -> None:
        if armed.fired_s is None:
            armed.fired_s = time.time()
            self._trial.fault_event()

    async def client(
        self,
        node: str,
        point: str,
        request: aiohttp.ClientRequest,
        handler: aiohttp.ClientHandlerType,
    ) -> aiohttp.ClientResponse:
        trial = self._trial
        if not self.active:
            return await handler(request)
        if time.monotonic() < self.partition_until_m:
            raise aiohttp.ClientConnectionError("injected: partition")
        after: list[_Armed] = []
        for armed in self.armed:
            fault = armed.fault
            if armed.done or fault.point != point or fault.when == "handled":
                continue
            # Drops and delays strike the requests of the node they name; every other fault, the source's.
            if node != trial.name(fault.node if fault.kind in ("drop", "delay") else "src"):
                continue
            armed.seen += 1
            if armed.seen < fault.nth:
                continue
            armed.done = armed.seen >= fault.nth + fault.count - 1  # count is 1 but for drops, delays, damage
            self._fire(armed)
            if fault.when == "after" and fault.kind in ("crash", "drop", "delay", "second_offer"):
                after.append(armed)
            elif fault.kind == "crash":
                await trial.crash(fault, requester=node)
            elif fault.kind == "drop":
                raise aiohttp.ClientConnectionError(f"injected: {point} request lost")
            elif fault.kind == "partition":
                self.partition_until_m = time.monotonic() + fault.duration_s
                trial.note_fault_until(self.partition_until_m)
                raise aiohttp.ClientConnectionError("injected: partition")
            elif fault.kind == "delay":
                await asyncio.sleep(fault.duration_s)
            elif fault.kind == "corrupt":
                await request.update_body(b"damaged on the wire " + uuid.uuid4().bytes)
            elif fault.kind == "second_offer":
                trial.spawn(trial.second_offer())
        response = await handler(request)
        for armed in after:
            fault = armed.fault
            if fault.kind == "second_offer":
                trial.spawn(trial.second_offer())
            elif fault.kind == "delay":
                await asyncio.sleep(fault.duration_s)  # the answer arrives late
            elif fault.kind == "crash" and trial.name(fault.node) != node:
                await trial.crash(fault, requester=node)  # the answer arrived; then the other node died
            else:
                response.release()
                if fault.kind == "crash":
                    await trial.crash(fault, requester=node)  # dies with the answer in hand
                raise aiohttp.ClientConnectionError(f"injected: the answer to {point} was lost")
        return response

    async def handled(self, incarnation: _Incarnation, point: str) -> None:
        """The destination did what ``point`` asked; a ``handled`` crash strikes before it answers."""
        if not self.active or incarnation.dead:  # (a handler that outlived its node's crash)
            return
        for armed in self.armed:
            fault = armed.fault
            if armed.done or fault.kind != "crash" or fault.when != "handled" or fault.point != point:
                continue
            armed.seen += 1
            if armed.seen < fault.nth:
                continue
            armed.done = True
            self._fire(armed)
            await self._trial.crash(fault, requester=incarnation.node.name)


# --------------------------------------------------------------------------------------------- a trial


@dataclass
class TrialResult:
    """What one trial did and found.

    Attributes:
        seed: the trial's seed (its plan: ``FaultPlan.draw(seed)``).
        plan: the faults, in words.
        kinds: the kinds of the faults that fired.
        outcome: ``moved`` (the job ended at b), ``stayed`` (at a), or ``unsettled``.
        violations: broken invariants (empty: the trial passed).
        recovery_s: from the first fault to the job's last (re)start, or 0 when it never stopped after it;
            None when no fault fired.
        deadline_s: the move's deadline (the offer's ``deadline_in_s``).
        wall_s: how long the trial took.
        max_runners: the most job processes seen at one observation.
    """

    seed: int
    plan: str
    kinds: list[str] = field(default_factory=list)
    outcome: str = "unsettled"
    violations: list[str] = field(default_factory=list)
    recovery_s: float | None = None
    deadline_s: float = NOMINAL_DEADLINE_S
    wall_s: float = 0.0
    max_runners: int = 0

    def repro(self) -> str:
        """The environment that runs this trial alone."""
        return f"{ENV_SEED}={self.seed} {ENV_TRIALS}=1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Trial:
    def __init__(self, work: Path, plan: FaultPlan, table: _SharedTable) -> None:
        self.work = work
        self.plan = plan
        self.table = table
        self.job_id = f"fi-{plan.seed % 10**12:012d}-{uuid.uuid4().hex[:6]}"
        self.events_path = work / "events.jsonl"
        self.result = TrialResult(plan.seed, plan.describe())
        self.broker = _Broker(self)
        self.injector = _Injector(self, plan)
        self.harness_context = contextvars.copy_context()
        self.nodes = {name: _Node(self, name, _free_port()) for name in NODES}
        self.roles = {"src": "b", "dst": "a"} if plan.pre_hop else {"src": "a", "dst": "b"}
        self.base_epoch = 1 if plan.pre_hop else 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.last_fault_m = -math.inf
        self.first_fault_s: float | None = None
        self.pending_restarts = 0
        self.peers: dict[str, PeerClient] = {}
        self.moved_m = math.inf  # when the faulty move was asked for
        self.faulty_from_event = 0  # events before this index happened before the faulty move
        self.earlier_migrations: set[str] = set()  # migration ids of the clean move
        for fault in plan.faults:
            if fault.kind == "disk_full":
                self.nodes[self.name(fault.node)].capacity_bytes = fault.capacity_bytes

    def name(self, role: str) -> str:
        """The node that plays ``role`` (src, dst) in the faulty move."""
        return self.roles[role]

    # -- harness-owned tasks (outside every node, so a crash does not end them) ----------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, context=self.harness_context.copy())
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.result.violations.append(f"harness task failed: {task.exception()!r}")

    def fault_event(self) -> None:
        now_s = time.time()
        if self.first_fault_s is None:
            self.first_fault_s = now_s
        self.last_fault_m = max(self.last_fault_m, time.monotonic())

    def note_fault_until(self, until_m: float) -> None:
        self.last_fault_m = max(self.last_fault_m, until_m)

    async def crash(self, fault: Fault, *, requester: str) -> None:
        """Crash the fault's node; if that is the caller's own node, wait here to be cancelled with it."""
        node = self.nodes[self.name(fault.node)]
        incarnation = node.current
        if incarnation is None:
            return
        self.pending_restarts += 1
        crashed = asyncio.Event()
        self.spawn(self._crash_and_restart(node, fault, crashed))
        if requester != node.name:
            await crashed.wait()  # then the request goes on, to a node that is down (or already back)
            return
        # The crash cancels this task with the rest of the node; a request handler of its peer server it
        # does not (the server's teardown waits for it), and it fails here: the node is dead, and its
        # answer never the one it would have given.
        while not incarnation.dead:
            await asyncio.sleep(0.005)
        raise ConnectionResetError(f"node {node.name} crashed")

    async def _crash_and_restart(self, node: _Node, fault: Fault, crashed: asyncio.Event) -> None:
        try:
            try:
                down = await node.crash(hard=fault.hard)
            finally:
                crashed.set()
            if not down:
                return
            self.fault_event()
            await asyncio.sleep(fault.restart_after_s)
            await node.start()
            self.fault_event()
        finally:
            self.pending_restarts -= 1

    async def second_offer(self) -> None:
        """Another offer for the job, as if a retry or a replay raced the real one: refused, or harmless."""
        src = self.name("src")
        offer = protocol.Offer(
            migration_id=uuid.uuid4().hex,
            source_node=src,
            job=self.spec(),
            epoch=self.base_epoch,
            checkpoint_bytes=_CHECKPOINT_BYTES,
            predicted_migration_s=0.5,
            deadline_in_s=1.0,
        )
        with contextlib.suppress(ServiceUnavailableError, PeerRequestError, GreenferryError):
            reply = await self.peers[src].offer(self.url(self.name("dst")), offer)
            logger.info("trial %d: second offer %s", self.plan.seed, reply)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.nodes[name].port}"

    def spec(self) -> JobSpec:
        return JobSpec(
            name=self.job_id,
            command=[
                sys.executable,
                "-m",
                "greenferry.testing.fault_job",
                "--events",
                str(self.events_path),
                "--files",
                str(_JOB_FILES),
                "--file-bytes",
                str(_JOB_FILE_BYTES),
            ],
            hardware_profile="l4",
            checkpoint_size_bytes=_CHECKPOINT_BYTES,
            checkpoint_timeout_s=CHECKPOINT_TIMEOUT_S,
        )

    # -- the trial ----------------------------------------------------------------------------------

    async def run(self) -> TrialResult:
        started_m = time.monotonic()
        self.work.mkdir(parents=True, exist_ok=True)
        watcher = self.spawn(self._watch_runners())
        try:
            async with contextlib.AsyncExitStack() as stack:
                for name in NODES:
                    client = PeerClient(name, None, request_timeout_s=REQUEST_TIMEOUT_S)
                    self.peers[name] = await stack.enter_async_context(client)
                for node in self.nodes.values():
                    await node.start()
                await self._trial()
        except (AssertionError, GreenferryError) as err:
            self.result.violations.append(f"{type(err).__name__}: {err}")
        finally:
            watcher.cancel()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=30)
            for node in self.nodes.values():
                for incarnation in node.incarnations:
                    await incarnation.close()
            self.result.wall_s = time.monotonic() - started_m
        return self.result

    async def _until(self, predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
            await asyncio.sleep(_OBSERVE_S)

    def _up(self, name: str) -> _Incarnation | None:
        node = self.nodes[name]
        return node.current if node.current is not None and node.current.orchestrator is not None else None

    async def _migrate(self, src: str, dst: str) -> None:
        node = self.nodes[src]
        await self._until(
            lambda: self._up(src) and node.orchestrator.directory.get(dst, node.clock.monotonic_s()),
            10,
            f"{src} to hear {dst}",
        )
        incarnation = node.current
        assert incarnation is not None
        await incarnation.call(lambda: node.orchestrator.migrate(self.job_id, dst))

    async def _trial(self) -> None:
        a = self.nodes["a"]
        incarnation = a.current
        assert incarnation is not None
        await incarnation.call(lambda: a.orchestrator.submit(self.spec()))
        await self._until(
            lambda: (
                (info := a.job(self.job_id)) is not None
                and info.state is JobState.RUNNING
                and (info.step or 0) >= 3
            ),
            30,
            "the job to run at a",
        )
        src, dst = self.name("src"), self.name("dst")
        if self.plan.pre_hop:
            self.moved_m = time.monotonic()
            await self._migrate("a", "b")
            await self._settle()
            if self._owner() != "b":
                raise AssertionError(f"the clean move a -> b did not commit (the job is at {self._owner()})")
            self.earlier_migrations = {m.migration_id for m in self.nodes["a"].migrations(self.job_id)}
        self.faulty_from_event = len(self._events())
        self.injector.active = True
        self.moved_m = time.monotonic()
        await self._migrate(src, dst)
        await self._settle(full=False)
        if any(f.kind == "replay_commit" for f in self.plan.faults):
            await self._replay_commit()
            await self._settle(full=False)
        self.injector.active = False
        self._check()
        if self.result.outcome == "stayed":
            # Liveness: nothing the faults left behind (a reservation, a burnt epoch) stops a clean move.
            # A loaded machine may overrun a move's (short) deadline now and then: five tries.
            for _ in range(5):
                self.moved_m = time.monotonic()
                await self._migrate(src, dst)
                await self._settle()
                if self._owner() == dst:
                    break
            else:
                self.result.violations.append(
                    f"a clean move {src} -> {dst} after the faults did not commit: "
                    f"{[(m.step.value, m.data.get('reason')) for m in self._faulty_migrations(src)]}"
                )
                return
        # At full rest (every doubt over), the job is still where the trial last saw it.
        expected = self._owner()
        await self._settle()
        if self._owner() != expected:
            self.result.violations.append(f"the job left {expected} on its own: now at {self._owner()}")

    async def _watch_runners(self) -> None:
        while True:
            runners = self.table.latest.get(self.job_id, [])
            if len(runners) > self.result.max_runners:
                self.result.max_runners = len(runners)
                if len(runners) > 1:
                    where = ", ".join(f"pid {pid} in {path}" for pid, path in runners)
                    self.result.violations.append(f"{len(runners)} job processes at once: {where}")
            await self.table.changed()

    def _owners(self) -> list[tuple[str, JobInfo]]:
        owners = []
        for name in NODES:
            info = self.nodes[name].job(self.job_id)
            if info is not None and info.node == name and info.state not in TERMINAL_STATES:
                owners.append((name, info))
        return owners

    def _owner(self) -> str:
        owners = self._owners()
        return owners[0][0] if len(owners) == 1 else f"{len(owners)} nodes"

    def _settled(self, *, full: bool = True) -> str:
        """'' when the cluster has come to rest, else what it is waiting for.

        Not ``full``: a destination's doubt or confirmation task whose migration is closed may still run
        (it must end without effect: a move that starts meanwhile is how a stale one was caught).
        """
        if self.pending_restarts or any(self._up(n) is None for n in NODES):
            return "a node is down"
        dst_asks = (self.name("dst"), "status")
        if any(n and (full or key != dst_asks) for key, n in self.injector.in_flight.items()):
            return "a request between the nodes is in flight"
        for name in NODES:
            busy = self.nodes[name].protocol_tasks(full=full)
            if busy:
                return f"{', '.join(busy)} still run at {name}"
        for name in NODES:
            if any(m.open for m in self.nodes[name].migrations(self.job_id)):
                return f"an open migration at {name}"
        owners = self._owners()
        if len(owners) != 1:
            return f"{len(owners)} owners"
        owner, info = owners[0]
        if info.state is not JobState.RUNNING:
            return f"the job is {info.state.value} at {owner}"
        runners = self.table.latest.get(self.job_id, [])
        if len(runners) != 1:
            return f"{len(runners)} job processes"
        start = self._last_start()
        if start is None or start["pid"] != runners[0][0]:
            return "the running process has not said it started"
        if (info.step or 0) <= (start.get("resume_step") or 0):
            return "no step since the (re)start"
        return ""

    async def _settle(self, *, full: bool = True) -> None:
        """Wait for the cluster to rest (three looks in a row), within the deadline + 60 s of the faults."""
        stable = looks = 0
        why = ""
        while stable < 3:
            await asyncio.sleep(0.05)
            budget_s = self._deadline_s() + RECOVERY_BUDGET_S
            if time.monotonic() > max(self.last_fault_m, self.moved_m) + budget_s:
                raise AssertionError(f"not settled {budget_s:.0f} s after the last fault: {why}")
            why = self._settled(full=full)
            stable = stable + 1 if not why else 0
            looks += 1
            if why and looks % 100 == 0:
                logger.info("trial %d: not at rest after %d looks: %s", self.plan.seed, looks, why)

    def _deadline_s(self) -> float:
        src = self.name("src")
        if self._up(src) is not None:
            for record in self.nodes[src].migrations(self.job_id):
                deadline = record.data.get("deadline_in_s")
                if record.migration_id not in self.earlier_migrations and isinstance(deadline, int | float):
                    self.result.deadline_s = float(deadline)
        return self.result.deadline_s

    def _events(self) -> list[dict[str, Any]]:
        try:
            text = self.events_path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def _last_start(self) -> dict[str, Any] | None:
        starts = [e for e in self._events() if e["event"] == "start"]
        return starts[-1] if starts else None

    def _node_of(self, checkpoint_dir: str) -> str:
        for name, node in self.nodes.items():
            if Path(checkpoint_dir).is_relative_to(node.data_dir):
                return name
        return "?"

    def _faulty_migrations(self, name: str) -> list[MigrationRecord]:
        return [
            m
            for m in self.nodes[name].migrations(self.job_id)
            if m.migration_id not in self.earlier_migrations
        ]

    async def _replay_commit(self) -> None:
        src, dst = self.name("src"), self.name("dst")
        released = [m for m in self._faulty_migrations(src) if m.step is MigrationStep.RELEASED]
        if not released:
            return
        self.fault_event()
        self.result.kinds.append("replay_commit")
        try:
            reply = await self.peers[src].commit(
                self.url(dst),
                released[0].migration_id,
                protocol.Commit(epoch=released[0].epoch + 1),
                timeout_s=5,
            )
        except PeerRequestError:
            return
        except ServiceUnavailableError as err:
            self.result.violations.append(f"replayed commit: no answer ({err})")
            return
        self.result.violations.append(f"a replayed commit was accepted: {reply}")

    def _check(self) -> None:
        """The invariants, once the faulty move has settled (see the module docstring)."""
        result = self.result
        violations = result.violations
        result.kinds += [a.fault.kind for a in self.injector.armed if a.fired_s is not None]
        result.kinds += [f.kind for f in self.plan.faults if f.kind == "disk_full"]
        src, dst = self.name("src"), self.name("dst")
        committed = any(m.step is MigrationStep.RELEASED for m in self._faulty_migrations(src))
        owner, info = self._owners()[0]
        result.outcome = "moved" if owner == dst else "stayed"
        if committed != (owner == dst):
            violations.append(f"{src} journaled {'a release' if committed else 'no release'}, owner {owner}")
        epochs = {self.base_epoch + 1} if committed else {self.base_epoch, self.base_epoch + 1}
        if info.epoch not in epochs:
            violations.append(f"epoch {info.epoch} at the owner {owner}, expected {sorted(epochs)}")
        for name in NODES:
            other = self.nodes[name].job(self.job_id)
            if name != owner and other is not None and other.epoch > info.epoch:
                violations.append(f"{name} holds epoch {other.epoch}, above the owner's {info.epoch}")
        for record in self._faulty_migrations(dst):
            if (
                record.role is MigrationRole.DESTINATION
                and record.step is MigrationStep.OWNED
                and not committed
            ):
                violations.append(f"{dst} owns migration {record.migration_id} that {src} did not release")
        events = self._events()
        for event in events:
            if event["event"] == "corrupt":
                violations.append(f"a process found a corrupt checkpoint: {event['detail']}")
        runner_pid = self.table.latest.get(self.job_id, [(0, "")])[0][0]
        final_index = max(
            (i for i, e in enumerate(events) if e["event"] == "start" and e["pid"] == runner_pid), default=-1
        )
        if final_index < 0:
            violations.append("no start event from the running process")
            return
        final = events[final_index]
        # Legitimate checkpoints: everything before the faulty move; during it, the source's, and the
        # destination's only if the move committed (a run it rolled back is not the job's history).
        legit = {src, dst} if committed else {src}
        saves = [
            e
            for index, e in enumerate(events[:final_index])
            if e["event"] == "saved"
            and (index < self.faulty_from_event or self._node_of(e["checkpoint_dir"]) in legit)
        ]
        expected = saves[-1]["step"] if saves else None
        if final.get("resume_step") != expected:
            violations.append(
                f"checkpoint lost: the job resumed from step {final.get('resume_step')} at {owner}, "
                f"the newest legitimate checkpoint is step {expected}"
            )
        if self._node_of(final["checkpoint_dir"]) != owner:
            violations.append(f"the job runs in {final['checkpoint_dir']}, not at its owner {owner}")
        if expected is not None:
            meta = read_meta(Path(final["checkpoint_dir"]))
            if meta is None or meta["step"] != final.get("resume_step"):
                violations.append(
                    f"the owner's checkpoint holds step {meta and meta['step']}, "
                    f"the job resumed from {final.get('resume_step')}"
                )
        if self.first_fault_s is not None:
            result.recovery_s = max(0.0, float(final["time_s"]) - self.first_fault_s)


class _SharedTable:
    """One process-table sampler for every trial running at once."""

    def __init__(self) -> None:
        self._table = ProcessTable()
        self.latest: dict[str, list[tuple[int, str]]] = {}
        self._tick = asyncio.Event()

    async def run(self) -> None:
        while True:
            self.latest = self._table.jobs()
            self._tick.set()
            self._tick = asyncio.Event()
            await asyncio.sleep(_OBSERVE_S)

    async def changed(self) -> None:
        await self._tick.wait()


async def run_trials(
    trials: Sequence[int | FaultPlan],
    work: Path,
    *,
    concurrency: int = 4,
    keep: bool = False,
    on_result: Callable[[TrialResult], None] | None = None,
) -> list[TrialResult]:
    """Run one trial per seed (its plan is ``FaultPlan.draw(seed)``) or plan, ``concurrency`` at a time.

    Args:
        trials: the trials' seeds, or plans written out (the regression tests').
        work: a scratch directory (one subdirectory per trial, removed after a passing trial).
        concurrency: trials at once (they share the machine, not the nodes).
        keep: keep every trial's directory (logs of the jobs, journals).
        on_result: called with each result as it comes.

    Returns:
        The results, by seed.
    """
    plans = [t if isinstance(t, FaultPlan) else FaultPlan.draw(t) for t in trials]
    loop = asyncio.get_running_loop()
    table = _SharedTable()
    gate = asyncio.Semaphore(concurrency)
    results: list[TrialResult] = []

    async def one(index: int, plan: FaultPlan) -> None:
        async with gate:
            trial_dir = work / f"trial-{plan.seed}-{index}"
            result = await _Trial(trial_dir, plan, table).run()
            results.append(result)
            if on_result is not None:
                on_result(result)
            if not keep and not result.violations:
                shutil.rmtree(trial_dir, ignore_errors=True)

    with _tagging_tasks(loop):
        sampler = loop.create_task(table.run())
        try:
            async with asyncio.TaskGroup() as group:
                for index, plan in enumerate(plans):
                    group.create_task(one(index, plan))
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
    return sorted(results, key=lambda r: r.seed)


def summarize(results: Sequence[TrialResult], wall_s: float) -> dict[str, Any]:
    """The figures bench/fault_injection.py prints: trials, faults by kind, violations, recovery times."""
    kinds: dict[str, int] = {}
    for result in results:
        for kind in result.kinds or ["none"]:
            kinds[kind] = kinds.get(kind, 0) + 1
    recoveries = sorted(r.recovery_s for r in results if r.recovery_s is not None)
    return {
        "trials": len(results),
        "faults_by_kind": dict(sorted(kinds.items())),
        "outcomes": {o: sum(1 for r in results if r.outcome == o) for o in ("moved", "stayed", "unsettled")},
        "invariant_violations": sum(len(r.violations) for r in results),
        "failed_seeds": [r.seed for r in results if r.violations],
        "recovery_s": {
            "p50": _quantile(recoveries, 0.5),
            "p99": _quantile(recoveries, 0.99),
            "max": recoveries[-1] if recoveries else None,
        },
        "max_runners_seen": max((r.max_runners for r in results), default=0),
        "wall_s": round(wall_s, 2),
    }


def _quantile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return round(sorted_values[0], 3)
    return round(statistics.quantiles(sorted_values, n=100, method="inclusive")[round(q * 100) - 1], 3)
