"""The node's job orchestration: runs the jobs it owns, asks the policy where they should be, and moves them.

One :class:`Orchestrator` per daemon. It is three things at once:

- the **job service** behind the local API (`greenferry jobs ...`): submit, list, show, cancel, migrate;
- the **decision loop**: every ``node.decision_interval_s`` it builds the same ``ClusterView`` the
  simulator builds (this node is site 0, fresh peers from their MQTT adverts follow) and applies the
  configured policy's decisions (``lookahead`` by default): run, pause at a checkpoint, or migrate;
- both ends of the **migration protocol** (docs/peer-protocol.md): offer, checkpoint, chunked transfer,
  prepare, commit, confirm, with every step journaled first (daemon/journal.py) so a restart finishes or
  rolls back what was in flight.

Exactly one runner: the source stops the job at a checkpoint before anything moves; the destination starts
it only on a commit that arrives before its reservation expires, and stops it again if the source does not
confirm within ``migration.confirm_timeout_s``; the source rolls back only after a fence time later than
anything the destination could still do. The source keeps its checkpoint until it has let go.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from greenferry.adapters.local_api import JobConflictError, JobNotFoundError
from greenferry.config import DaemonConfig
from greenferry.core.clock import Clock
from greenferry.core.events import JobProgressed, MigrationEnded
from greenferry.core.jobs import ACTIVE_STATES, TERMINAL_STATES, JobInfo, JobSpec, JobState, transition
from greenferry.core.manifest import ChunkRef
from greenferry.core.peers import (
    ADVERT_VERSION,
    NodeAdvert,
    PeerDirectory,
    SiteState,
    cluster_view,
    forecast_matrix,
    job_view,
    parse_advert,
)
from greenferry.core.protocol import (
    Abort,
    Commit,
    CommitReply,
    Confirm,
    ConfirmReply,
    HeldQuery,
    HeldReply,
    MigrationStatus,
    Offer,
    OfferReply,
    Prepare,
)
from greenferry.core.signals import SignalBoard, SignalKind, SurplusWindow
from greenferry.daemon.bus import EventBus
from greenferry.daemon.jobs import JobEvent, JobEventKind, JobSupervisor
from greenferry.daemon.journal import Journal, MigrationRecord, MigrationRole, MigrationStep
from greenferry.daemon.peer import PeerClient, PeerRequestError
from greenferry.errors import GreenferryError, PayloadError, ServiceUnavailableError

if TYPE_CHECKING:  # numpy and the policies load with the first decision: an idle node stays small
    from greenferry.core.feasibility import MigrationParams
    from greenferry.core.policy import Policy

__all__ = ["MigrationProgress", "Orchestrator"]

logger = logging.getLogger(__name__)

_BANDWIDTH_EWMA = 0.5  # weight of the newest measured transfer in the bandwidth estimate
_RETRY_AFTER_ABORT_S = 600.0  # a destination that failed a job's move is not tried again for it this long
_MAX_RESUME_WAIT_S = 60.0  # the longest a source waits (in the confirm) to hear that the job resumed
_MAX_MEASURED_S = 86400.0  # measured durations travel in messages that bound them to a day


@dataclass(slots=True)
class MigrationProgress:
    """A migration in flight, as the status and the demo view show it."""

    migration_id: str
    job_id: str
    src: str
    dst: str
    phase: str
    total_bytes: int = 0
    done_bytes: int = 0
    started_s: float = 0.0


@dataclass(slots=True)
class _Reservation:
    migration_id: str
    job_id: str
    peer: str
    gpu_count: int
    offer: Offer
    expires_m: float  # this node's monotonic time
    started: bool = False
    confirm_task: asyncio.Task[None] | None = None
    chunks: tuple[ChunkRef, ...] = ()  # the distinct chunks of the prepared manifest


@dataclass(slots=True)
class _Arrival:
    """A job started here for a commit: its restore is timed until it says it resumed."""

    migration_id: str
    spawn_s: float  # commit received -> its process ran
    restore_s: float | None = None  # commit received -> it said it resumed


@dataclass(slots=True)
class _Local:
    """Per-job runtime state that is not journaled."""

    last_migration_m: float = -math.inf
    busy: bool = False  # a checkpoint or a migration is under way
    progress: float | None = None
    # What the job's moves measured; it travels with the job (Commit) and predicts its next move.
    checkpoint_s: float | None = None  # the job checkpointing
    manifest_s: float | None = None  # the source building the manifest (hashing every chunk)
    rebuild_s: float | None = None  # the prepare: the destination checking and rebuilding the checkpoint
    restore_s: float | None = None  # commit -> the job said it resumed at the destination
    changed_bytes: int | None = None  # chunk bytes of a checkpoint that the one before it did not hold
    chunks: tuple[ChunkRef, ...] = ()  # the distinct chunks of its last checkpoint here (not across restarts)
    arrival: _Arrival | None = None


@dataclass(slots=True)
class _Stats:
    migrations: int = 0
    failed_migrations: int = 0
    aborted_migrations: int = 0
    bytes_sent: int = 0
    bytes_skipped: int = 0
    adverts_rejected: int = 0


class Orchestrator:
    """Jobs, decisions and migrations of one node (see the module docstring).

    Args:
        config: the node configuration (needs [peer] to migrate; without it jobs only run here).
        clock: the daemon's clock.
        bus: where job progress and migration outcomes are published (telemetry subscribes).
        board: the node's signal board (surplus now, forecast windows).
        supervisor: runs job processes (daemon/jobs.py JobSupervisor).
        peer_client: calls peers (None without [peer]).
        signing_key: this node's private key for manifests (None when insecure).
        publish_advert: publishes this node's advert (retained) on MQTT.
    """

    def __init__(
        self,
        config: DaemonConfig,
        clock: Clock,
        bus: EventBus,
        board: SignalBoard,
        supervisor: JobSupervisor,
        *,
        peer_client: PeerClient | None = None,
        peer_url: str | None = None,
        signing_key: Any = None,
        publish_advert: Callable[[bytes], Any] | None = None,
    ) -> None:
        self.config = config
        self.node = config.node.name
        self.clock = clock
        self.bus = bus
        self.board = board
        self.supervisor = supervisor
        self.peer_client = peer_client
        self.peer_url = peer_url
        self._signing_key = signing_key
        self._publish_advert = publish_advert
        data_dir = config.node.data_dir
        self.jobs_root = data_dir / "jobs"
        self.jobs_root.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(data_dir / "journal.sqlite")
        # The journal is written through on every change; reads (every decision, every power sample) come
        # from this copy instead of SQLite.
        self._jobs: dict[str, JobInfo] = {j.job_id: j for j in self.journal.jobs()}
        self._chunks: Any = None
        peer_max_age = config.peer.advert_max_age_s if config.peer is not None else 60.0
        self.directory = PeerDirectory(self.node, peer_max_age)
        self._policy: Policy | None = None
        self._policy_ids: dict[str, int] = {}
        self._site_names: tuple[str, ...] = ()
        self._cooldown_m: dict[tuple[str, str], float] = {}  # (job, destination) -> no retry before
        self._local: dict[str, _Local] = {}
        self._reservations: dict[str, _Reservation] = {}
        self._bandwidth_bps: dict[str, float] = {}
        self.in_flight: dict[str, MigrationProgress] = {}
        self.stats = _Stats()
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False  # after close(): the journal is closed, the node reports no jobs
        self._wake = asyncio.Event()
        self._migration_params: MigrationParams | None = None
        self.held: dict[str, str] = {}  # job -> why it must not start here now (a demand-response pause)

    @property
    def chunks(self) -> Any:
        """The content-addressed chunk store (``<data_dir>/chunks``), opened on first use."""
        if self._chunks is None:
            from greenferry.daemon.transfer import ChunkStore

            self._chunks = ChunkStore(self.config.node.data_dir / "chunks")
        return self._chunks

    @property
    def _params(self) -> MigrationParams:
        """The feasibility model's parameters from [migration] (built on first use)."""
        if self._migration_params is None:
            from greenferry.core.feasibility import MigrationParams

            m = self.config.migration
            self._migration_params = MigrationParams(
                checkpoint_write_s=m.checkpoint_write_s,
                restore_s=m.restore_s,
                transfer_efficiency=m.transfer_efficiency,
                alpha=m.alpha,
                network_energy_j_per_byte=m.network_energy_j_per_byte,
            )
        return self._migration_params

    @property
    def policy(self) -> Policy:
        """The configured policy (built at the first decision)."""
        if self._policy is None:
            from greenferry.core.policy import make_policy

            self._policy = make_policy(self.config.node.policy)
        return self._policy

    # ------------------------------------------------------------------------------------ lifecycle

    async def recover(self) -> None:
        """Finish or roll back what a previous process left in flight (call once, before run())."""
        now = self.clock.now_s()
        for info in self.jobs():
            if info.node == self.node and info.state in ACTIVE_STATES:
                # The process died with the previous daemon (the SDK stops a job whose daemon is gone):
                # it resumes from its last checkpoint.
                self._put(info.model_copy(update={"state": JobState.PAUSED, "message": "daemon restarted"}))
        for record in self.journal.migrations(open_only=True):
            if record.role is MigrationRole.SOURCE:
                if record.step is MigrationStep.COMMITTING:
                    self._spawn(self._resolve_commit(record), f"resolve-{record.migration_id}")
                else:
                    self._spawn(self._abort_source(record, "source restarted before the commit"), "abort")
            elif record.step is MigrationStep.STARTED:
                # Held from now on: the decision loop must not start the job before the source answers.
                self._local_of(record.job_id).busy = True
                self._spawn(self._doubt(record), f"doubt-{record.migration_id}")
            else:
                self.journal.advance(record, MigrationStep.ABORTED, now, reason="destination restarted")
                self._drop_staging(record.migration_id)

    async def run(self) -> None:
        """The decision loop, the advert loop and the job event loop, until cancelled."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._decision_loop(), name="greenferry-decisions")
                group.create_task(self._advert_loop(), name="greenferry-adverts")
                group.create_task(self._job_events(), name="greenferry-job-events")
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Checkpoint every running job (it resumes at the next start), then close the journal."""
        for info in self.jobs():
            if info.node == self.node and info.state in (JobState.RUNNING, JobState.STARTING):
                try:
                    await self._checkpoint(info, JobState.PAUSED, "daemon stopping")
                except GreenferryError as err:
                    logger.warning("job %s: no checkpoint at shutdown: %s", info.job_id, err)
        self.closed = True
        self.journal.close()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=f"greenferry-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("task %s failed", task.get_name(), exc_info=task.exception())

    # ---------------------------------------------------------------------------------- job service

    async def submit(self, spec: JobSpec) -> JobInfo:
        """Accept a new job here (it starts at the next decision)."""
        held = self._jobs.get(spec.job_id)
        if held is not None and held.state not in TERMINAL_STATES:
            raise JobConflictError(f"job {spec.job_id} already exists ({held.state.value} on {held.node})")
        if spec.gpu_count > self.config.node.gpu_count:
            raise JobConflictError(
                f"job {spec.job_id} needs {spec.gpu_count} GPUs; "
                f"node {self.node} has {self.config.node.gpu_count}"
            )
        info = JobInfo(job_id=spec.job_id, spec=spec, state=JobState.PENDING, node=self.node, epoch=0)
        self._put(info)
        self._wake.set()
        return info

    async def list_jobs(self) -> list[JobInfo]:
        """Every job this node knows (including the ones that moved on)."""
        return self.jobs()

    async def get(self, job_id: str) -> JobInfo:
        """One job."""
        info = self._jobs.get(job_id)
        if info is None:
            raise JobNotFoundError(f"no job {job_id!r} on node {self.node}")
        return info

    async def cancel(self, job_id: str) -> JobInfo:
        """Stop a job for good (its checkpoint is kept in its directory)."""
        info = await self.get(job_id)
        if info.node != self.node or info.state in TERMINAL_STATES:
            raise JobConflictError(
                f"job {job_id} is {info.state.value} on {info.node}: nothing to cancel here"
            )
        if self._local_of(job_id).busy or info.state is JobState.MIGRATING:
            raise JobConflictError(f"job {job_id} is checkpointing or migrating; cancel it when that ends")
        if info.state in ACTIVE_STATES:
            await self.supervisor.stop(job_id)
        return self._put(info.model_copy(update={"state": transition(info.state, JobState.CANCELLED)}))

    async def migrate(self, job_id: str, to_node: str) -> JobInfo:
        """Move a job to ``to_node`` now, if the destination accepts (the feasibility check still applies)."""
        info = await self.get(job_id)
        if info.node != self.node or info.state in TERMINAL_STATES:
            raise JobConflictError(f"job {job_id} is {info.state.value} on {info.node}")
        if not info.spec.moves_whole:  # not migratable, or a pinned worker (parts)
            raise JobConflictError(f"job {job_id} is not migratable")
        if self._local_of(job_id).busy:
            raise JobConflictError(f"job {job_id} is already checkpointing or migrating")
        if self.peer_client is None:
            raise JobConflictError(f"node {self.node} has no [peer] section: it cannot migrate jobs")
        advert = self.directory.get(to_node, self.clock.monotonic_s())
        if advert is None or advert.peer_url is None:
            raise JobConflictError(f"no fresh advert from node {to_node!r}; known: {self._peer_names()}")
        self._local_of(job_id).busy = True
        self._spawn(self._migrate(job_id, advert), f"migrate-{job_id}")
        return info

    async def hold(self, job_id: str, why: str) -> bool:
        """Keep ``job_id`` from running here until :meth:`release`: checkpoint and pause it if it runs.

        Returns True when the job is held (paused, pending, or being paused now); False when it cannot be
        (unknown, not on this node, finished, or in the middle of a checkpoint or migration).
        """
        info = self._jobs.get(job_id)
        if info is None or info.node != self.node or info.state in TERMINAL_STATES:
            return False
        if self._local_of(job_id).busy or info.state is JobState.MIGRATING:
            return False
        self.held[job_id] = why
        if info.state in (JobState.RUNNING, JobState.STARTING):
            self._local_of(job_id).busy = True
            self._spawn(self._pause_for(info, why), f"hold-{job_id}")
        return True

    async def _pause_for(self, info: JobInfo, why: str) -> None:
        try:
            await self._checkpoint(info, JobState.PAUSED, why)
        except GreenferryError as err:
            logger.warning("job %s: pause (%s) failed: %s", info.job_id, why, err)
        finally:
            self._local_of(info.job_id).busy = False

    def release(self, job_id: str) -> None:
        """Let a held job run again (the next decision restarts it where the policy says so)."""
        if self.held.pop(job_id, None) is not None:
            self._wake.set()

    def migration_option(self, job_id: str, *, min_surplus_w: float = 0.0) -> tuple[float, str] | None:
        """The quickest move of ``job_id`` now: (predicted total time in s, destination node), or None.

        Only fresh peers with a peer URL, free GPU slots for the job and at least ``min_surplus_w`` of
        surplus count; the time uses the measured bandwidth to each.
        """
        info = self._jobs.get(job_id)
        if info is None or self.peer_client is None or not info.spec.moves_whole:
            return None
        size = float(info.checkpoint_bytes or info.spec.checkpoint_size_bytes)
        best: tuple[float, str] | None = None
        for advert in self.directory.peers(self.clock.monotonic_s()):
            if advert.peer_url is None or advert.free_gpu_slots < info.spec.gpu_count:
                continue
            if advert.surplus_w < min_surplus_w:
                continue
            if self._cooldown_m.get((job_id, advert.node), -math.inf) > self.clock.monotonic_s():
                continue
            option = (self.predicted_migration_s(size, advert.node, job_id), advert.node)
            if best is None or option < best:
                best = option
        return best

    def job_timings_s(self, job_id: str) -> tuple[float, float]:
        """(checkpoint write, restore) seconds of ``job_id``: measured once it had them, else configured."""
        p = self._params
        local = self._local.get(job_id)
        checkpoint_s = local.checkpoint_s if local is not None else None
        restore_s = local.restore_s if local is not None else None
        return (
            p.checkpoint_write_s if checkpoint_s is None else checkpoint_s,
            p.restore_s if restore_s is None else restore_s,
        )

    def _peer_names(self) -> str:
        return ", ".join(a.node for a in self.directory.peers(self.clock.monotonic_s())) or "none"

    # ------------------------------------------------------------------------------------- state

    def _put(self, info: JobInfo) -> JobInfo:
        self.journal.put_job(info, self.clock.now_s())
        self._jobs[info.job_id] = info
        return info

    def jobs(self) -> list[JobInfo]:
        """Every job this node knows, by id (as journaled)."""
        return [self._jobs[k] for k in sorted(self._jobs)]

    def _local_of(self, job_id: str) -> _Local:
        local = self._local.get(job_id)
        if local is None:
            local = self._local[job_id] = _Local()
        return local

    def _owned(self) -> list[JobInfo]:
        if self.closed:
            return []
        return [j for j in self.jobs() if j.node == self.node and j.state not in TERMINAL_STATES]

    def running_slots(self) -> int:
        """GPU slots held by this node's running (or starting, or checkpointing) jobs."""
        return sum(j.spec.gpu_count for j in self._owned() if j.state in ACTIVE_STATES)

    def used_slots(self) -> int:
        """GPU slots held by running jobs and open reservations."""
        running = sum(j.spec.gpu_count for j in self._owned() if j.state in ACTIVE_STATES)
        return running + sum(r.gpu_count for r in self._reservations.values() if not r.started)

    def free_slots(self) -> int:
        """GPU slots a new job could take."""
        return max(0, self.config.node.gpu_count - self.used_slots())

    def job_power_w(self, spec: JobSpec) -> float:
        """Power the job draws while training (its spec, else the hardware profile's)."""
        if spec.power_w is not None:
            return spec.power_w
        from greenferry.hardware_profiles import resolve_profile

        profile = resolve_profile(spec.hardware_profile or self.config.node.hardware_profile)
        return profile.train_power_w * max(1, spec.gpu_count) + profile.host_power_w

    def _load_w(self) -> float:
        return sum(self.job_power_w(j.spec) for j in self._owned() if j.state in ACTIVE_STATES)

    def _windows(self) -> tuple[SurplusWindow, ...]:
        reading = self.board.fresh(SignalKind.SURPLUS_FORECAST, self.clock.monotonic_s())
        if reading is None or not isinstance(reading.value, tuple):
            return ()
        return tuple(w for w in reading.value if isinstance(w, SurplusWindow))

    def advert(self) -> NodeAdvert:
        """This node's advert as it stands."""
        now_m = self.clock.monotonic_s()
        return NodeAdvert(
            version=ADVERT_VERSION,
            node=self.node,
            site=self.config.node.site,
            peer_url=self.peer_url,
            gpu_slots=self.config.node.gpu_count,
            free_gpu_slots=self.free_slots(),
            surplus_w=self.board.surplus_w(now_m),
            load_w=self._load_w(),
            windows=[
                {"start": w.start_s, "end": w.end_s, "power_w": w.power_w} for w in self._windows()[:1000]
            ],
            jobs=[j.job_id for j in self._owned()][:4096],
            time_s=self.clock.now_s(),
        )

    def on_advert(self, topic: str, payload: bytes) -> None:
        """An advert from the MQTT state topic (``<prefix>/nodes/<node>/state``); bad ones are counted."""
        node = topic.rsplit("/", 2)[-2] if topic.count("/") >= 2 else None
        if not payload:
            if node is not None:
                self.directory.forget(node)
            return
        try:
            advert = parse_advert(payload, node)
        except PayloadError as err:
            logger.debug("advert on %s rejected: %s", topic, err)
            self.stats.adverts_rejected += 1
            return
        self.directory.update(advert, self.clock.monotonic_s())

    async def _advert_loop(self) -> None:
        interval = self.config.peer.advert_interval_s if self.config.peer is not None else 30.0
        while True:
            if self._publish_advert is not None:
                try:
                    await self._publish_advert(self.advert().to_json())
                except ServiceUnavailableError as err:
                    logger.debug("advert not published: %s", err)
            await self.clock.sleep(interval)

    async def _job_events(self) -> None:
        stream = self.supervisor.events("orchestrator")
        try:
            while (event := await stream.get()) is not None:
                try:
                    self._on_job_event(event)
                except Exception:  # one bad event must not stop the loop
                    logger.exception("job event %r not handled", event)
        finally:
            self.supervisor.unsubscribe(stream)

    def _on_job_event(self, event: JobEvent) -> None:
        info = self._jobs.get(event.job_id)
        if info is None or info.node != self.node:
            return
        local = self._local_of(event.job_id)
        kind = event.kind
        if kind in (
            JobEventKind.CHECKPOINTED,
            JobEventKind.COMPLETED,
            JobEventKind.FAILED,
            JobEventKind.STOPPED,
        ):
            local.arrival = None  # a restore is timed for the process started for the commit only
        updates: dict[str, Any]
        if kind is JobEventKind.PROGRESS:
            step = int(event.step) if event.step is not None else None
            updates = {"step": step}
            if info.state is JobState.STARTING:
                updates["state"] = transition(info.state, JobState.RUNNING)
            self._put(info.model_copy(update=updates))
            if step is not None:
                progress = None if event.progress is None else float(event.progress)
                local.progress = progress
                self.bus.publish(
                    JobProgressed(
                        self.clock.now_s(), info.job_id, step, progress, self.job_power_w(info.spec)
                    )
                )
        elif kind is JobEventKind.STARTED and info.state is JobState.STARTING:
            self._put(info.model_copy(update={"state": JobState.RUNNING}))
        elif kind is JobEventKind.RESUMED and event.after_s is not None:
            self._note_resumed(event.job_id, event.after_s)
        elif kind is JobEventKind.COMPLETED and info.state in ACTIVE_STATES:
            self._put(
                info.model_copy(
                    update={"state": transition(info.state, JobState.COMPLETED), "step": event.step}
                )
            )
            self._wake.set()
        elif kind in (JobEventKind.CHECKPOINTED, JobEventKind.STOPPED) and not local.busy:
            # It stopped without being asked (SIGTERM from outside, or killed): it resumes from its
            # checkpoint.
            if info.state in ACTIVE_STATES:
                updates = {
                    "state": JobState.PAUSED,
                    "message": f"{kind.value}: {event.detail}"[:4000],
                }
                if event.checkpoint is not None:
                    updates["checkpoint_step"] = event.checkpoint.step
                    updates["checkpoint_bytes"] = event.checkpoint.size_bytes
                self._put(info.model_copy(update=updates))
                self._wake.set()
        elif kind is JobEventKind.FAILED and info.state in ACTIVE_STATES and not local.busy:
            message = f"exit code {event.exit_code}: {event.detail}"[:4000]
            self._put(
                info.model_copy(update={"state": transition(info.state, JobState.FAILED), "message": message})
            )
            self._wake.set()

    # ------------------------------------------------------------------------------------ decisions

    async def _decision_loop(self) -> None:
        while True:
            try:
                await self.decide_once()
            except Exception:  # the top of a supervised loop: log and keep deciding
                logger.exception("decision failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.node.decision_interval_s / _speed(self.clock)):
                    await self._wake.wait()

    def _policy_id(self, job_id: str) -> int:
        if job_id not in self._policy_ids:
            self._policy_ids[job_id] = len(self._policy_ids)
        return self._policy_ids[job_id]

    async def decide_once(self) -> None:
        """One decision epoch: the policy's view of this node and its peers, and its decisions applied."""
        from greenferry.core.policy import Action

        now_m = self.clock.monotonic_s()
        # A source that went away (or whose abort was lost) leaves a reservation behind: it must not hold a
        # slot, and its journal record must not stay open, until some later offer happens to arrive.
        self._expire_reservations(now_m)
        candidates = [
            j
            for j in self._owned()
            if j.state in (JobState.PENDING, JobState.PAUSED, JobState.RUNNING)
            and not self._local_of(j.job_id).busy
        ]
        if not candidates:
            return
        peers = [a for a in self.directory.peers(now_m) if a.peer_url] if self.peer_client is not None else []
        sites = [
            SiteState(
                self.node, self.board.surplus_w(now_m), self._load_w(), self.free_slots(), self._windows()
            )
        ]
        for advert in peers:
            sites.append(
                SiteState(
                    advert.node,
                    advert.surplus_w,
                    advert.load_w,
                    advert.free_gpu_slots,
                    advert.surplus_windows(),
                )
            )
        bandwidth = {}
        busy_links: set[tuple[int, int]] = set()
        for index, advert in enumerate(peers, start=1):
            bandwidth[(0, index)] = self._bandwidth_to(advert.node)
            if any(p.dst == advert.node for p in self.in_flight.values()):
                busy_links.add((0, index))
        views = []
        by_id: dict[int, JobInfo] = {}
        for info in candidates:
            spec = info.spec
            size = float(info.checkpoint_bytes or spec.checkpoint_size_bytes)
            remaining = (
                spec.work_s * (1 - (self._local_of(spec.job_id).progress or 0.0)) if spec.work_s else 86400.0
            )
            since = now_m - self._local_of(spec.job_id).last_migration_m
            pid = self._policy_id(spec.job_id)
            by_id[pid] = info
            views.append(
                job_view(
                    pid,
                    self.job_power_w(spec),
                    size,
                    remaining,
                    since,
                    self._params,
                    running=info.state is JobState.RUNNING,
                )
            )
        view = cluster_view(
            self.clock.now_s(),
            sites,
            bandwidth,
            busy_links,
            views,
            self.config.migration.forecast_step_s,
            self.config.migration.horizon_s,
        )
        names = tuple(site.node for site in sites)
        if names != self._site_names:
            # Site indices name other nodes now: a stateful policy's plans and learnt forecast errors refer
            # to the old list, so it starts afresh.
            self._policy = None
            self._site_names = names
        decisions = self.policy.decide(self.clock.now_s(), view)
        for pid, info in by_id.items():
            decision = decisions.get(pid)
            action = (
                decision.action
                if decision is not None
                else (Action.RUN if info.state is JobState.PENDING else None)
            )
            if action is Action.MIGRATE:
                # A move that cannot start now (a fresh job has nothing to move, a destination that failed
                # this job's move is in its cooldown) leaves the job where it is: running, as the policy
                # wanted it to run. Left as MIGRATE it would stay paused, or pending, until the cooldown ends.
                index = decision.dst_site if decision is not None else 0
                dst = peers[index - 1] if 1 <= index <= len(peers) else None
                movable = info.state is not JobState.PENDING or info.checkpoint_step is not None
                if (
                    dst is not None
                    and info.spec.moves_whole
                    and movable
                    and self._cooldown_m.get((info.job_id, dst.node), -math.inf) <= now_m
                ):
                    self._local_of(info.job_id).busy = True
                    self._spawn(self._migrate(info.job_id, dst), f"migrate-{info.job_id}")
                    continue
                action = Action.RUN
            if action is Action.RUN and info.state in (JobState.PENDING, JobState.PAUSED):
                if info.job_id not in self.held and self.free_slots() >= info.spec.gpu_count:
                    await self._start(
                        info, resume=info.checkpoint_step is not None or info.state is JobState.PAUSED
                    )
            elif action is Action.PAUSE and info.state is JobState.RUNNING:
                self._local_of(info.job_id).busy = True
                self._spawn(self._pause(info), f"pause-{info.job_id}")

    async def _start(self, info: JobInfo, *, resume: bool) -> None:
        job_dir = self.jobs_root / info.job_id
        self._put(info.model_copy(update={"state": transition(info.state, JobState.STARTING), "message": ""}))
        try:
            await self.supervisor.start(info.spec, job_dir, resume=resume)
        except GreenferryError as err:
            self._put(info.model_copy(update={"state": JobState.FAILED, "message": str(err)[:4000]}))
            return
        logger.info("job %s started on %s (%s)", info.job_id, self.node, "resumed" if resume else "fresh")

    async def _pause(self, info: JobInfo) -> None:
        await self._pause_for(info, "paused by the policy")

    async def _checkpoint(self, info: JobInfo, then: JobState, why: str) -> JobInfo:
        """Ask the job to checkpoint and exit; record the checkpoint; the job ends in ``then``."""
        info = self._put(info.model_copy(update={"state": transition(info.state, JobState.CHECKPOINTING)}))
        try:
            result = await self.supervisor.request_checkpoint(info.job_id, info.spec.checkpoint_timeout_s)
            if result.duration_s is not None:
                self._local_of(info.job_id).checkpoint_s = result.duration_s
        except GreenferryError as err:
            event = getattr(err, "event", None)
            kind = getattr(event, "kind", None)
            if kind is JobEventKind.COMPLETED:
                # It finished while asked to save: nothing left to move or resume.
                self._put(info.model_copy(update={"state": JobState.COMPLETED, "message": "completed"}))
            elif kind is JobEventKind.FAILED:
                detail = f"failed while checkpointing: {getattr(event, 'detail', '')}"[:4000]
                self._put(info.model_copy(update={"state": JobState.FAILED, "message": detail}))
            else:
                # No new checkpoint: the previous one (if any) is intact and the job stopped; it resumes
                # from it.
                self._put(info.model_copy(update={"state": JobState.PAUSED, "message": "checkpoint failed"}))
            raise
        return self._put(
            info.model_copy(
                update={
                    "state": transition(JobState.CHECKPOINTING, then),
                    "checkpoint_step": result.step,
                    "checkpoint_bytes": result.size_bytes,
                    "message": why,
                }
            )
        )

    def _bandwidth_to(self, node: str) -> float:
        default = self.config.peer.default_bandwidth_bps if self.config.peer is not None else 100e6
        return self._bandwidth_bps.get(node, default)

    def predicted_migration_s(self, send_bytes: float, node: str, job_id: str | None = None) -> float:
        """T_ckpt + T_manifest + 8 S_send / (eta B) + T_rebuild + T_restore, for sending ``send_bytes``.

        The measured bandwidth to ``node``; the job's own measured checkpoint, manifest, rebuild and restore
        (until it resumed) times once a move of it had them: before, the configured checkpoint and restore
        times, and no manifest or rebuild time.
        """
        p = self._params
        local = self._local.get(job_id) if job_id is not None else None
        checkpoint_s, restore_s = (
            self.job_timings_s(job_id) if job_id is not None else (p.checkpoint_write_s, p.restore_s)
        )
        manifest_s = local.manifest_s if local is not None and local.manifest_s is not None else 0.0
        rebuild_s = local.rebuild_s if local is not None and local.rebuild_s is not None else 0.0
        transfer_s = 8 * send_bytes / (p.transfer_efficiency * self._bandwidth_to(node))
        return checkpoint_s + manifest_s + transfer_s + rebuild_s + restore_s

    async def _bytes_to_send(self, job_id: str, url: str, size_bytes: int) -> tuple[int, int]:
        """(bytes the destination holds of the job's last checkpoint, bytes a move there should send).

        Asks the destination (POST /v1/chunks/held) about the chunks of the job's last checkpoint here. The
        new checkpoint is that one with ``changed_bytes`` changed, as the job's last move measured: the move
        sends what the destination lacks of it, plus what changed. Until a move has measured how much of a
        checkpoint changes (a job's first move, and its second: the first has no earlier checkpoint to
        compare with), all of it may have: the prediction stays conservative, so a feasibility check never
        accepts a window on bytes it only hoped were cached, and the destination is not asked. Without a
        manifest here (the job never moved, or this daemon restarted) or an answer (a peer without the
        route), all.
        """
        local = self._local_of(job_id)
        if not local.chunks or local.changed_bytes is None or self.peer_client is None:
            return 0, size_bytes
        try:
            held_bytes = await self.peer_client.held_bytes(url, local.chunks)
        except (ServiceUnavailableError, PeerRequestError, GreenferryError) as err:
            logger.info(
                "job %s: no answer about cached chunks from %s (%s): predicting all", job_id, url, err
            )
            return 0, size_bytes
        return held_bytes, min(size_bytes, max(0, size_bytes - held_bytes) + local.changed_bytes)

    def _remember_chunks(self, job_id: str, chunks: tuple[ChunkRef, ...], changed_bytes: int | None) -> None:
        local = self._local_of(job_id)
        local.chunks = chunks
        if changed_bytes is not None:
            local.changed_bytes = changed_bytes

    # ------------------------------------------------------------------------------- source side

    async def _migrate(self, job_id: str, advert: NodeAdvert) -> None:
        info = self._jobs.get(job_id)
        local = self._local_of(job_id)
        try:
            if info is None or info.node != self.node or advert.peer_url is None or self.peer_client is None:
                return
            await self._migrate_source(info, advert.node, advert.peer_url)
        finally:
            local.busy = False
            self._wake.set()

    async def _migrate_source(self, info: JobInfo, dst: str, url: str) -> None:
        assert self.peer_client is not None
        client = self.peer_client
        mig = self.config.migration
        size = int(info.checkpoint_bytes or info.spec.checkpoint_size_bytes)
        local = self._local_of(info.job_id)
        held, send = await self._bytes_to_send(info.job_id, url, size)
        predicted = self.predicted_migration_s(send, dst, info.job_id)
        deadline_in = predicted * mig.deadline_factor + mig.slack_s
        mid = uuid.uuid4().hex
        started_m = self.clock.monotonic_s()
        offer = Offer(
            migration_id=mid,
            source_node=self.node,
            job=info.spec,
            epoch=info.epoch,
            step=info.checkpoint_step,
            checkpoint_bytes=size,
            send_bytes=send,
            predicted_migration_s=predicted,
            deadline_in_s=deadline_in,
        )
        try:
            reply = await client.offer(url, offer)
        except (ServiceUnavailableError, PeerRequestError, GreenferryError) as err:
            logger.info("job %s: offer to %s failed: %s", info.job_id, dst, err)
            return
        if not reply.accepted:
            logger.info("job %s: %s declined: %s", info.job_id, dst, reply.reason)
            return
        fence_s = (
            self.clock.now_s()
            + deadline_in
            + client.request_timeout_s
            + mig.confirm_timeout_s
            + info.spec.checkpoint_timeout_s
            + mig.slack_s
        )
        record = self.journal.put_migration(
            MigrationRecord(
                mid,
                info.job_id,
                MigrationRole.SOURCE,
                dst,
                MigrationStep.OFFERED,
                info.epoch,
                fence_s,
                {
                    "url": url,
                    "predicted_s": predicted,
                    "deadline_in_s": deadline_in,
                    "offered_bytes": size,
                    "held_bytes": held,
                    "predicted_send_bytes": send,
                },
            ),
            self.clock.now_s(),
        )
        progress = MigrationProgress(
            mid, info.job_id, self.node, dst, "checkpointing", size, 0, self.clock.now_s()
        )
        self.in_flight[mid] = progress
        try:
            async with asyncio.timeout(deadline_in / _speed(self.clock)):
                t_stop = self.clock.monotonic_s()  # downtime starts: the job is asked to stop
                if info.state in (JobState.RUNNING, JobState.STARTING):
                    info = await self._checkpoint(info, JobState.MIGRATING, f"migrating to {dst}")
                else:
                    info = self._put(
                        info.model_copy(update={"state": transition(info.state, JobState.MIGRATING)})
                    )
                ckpt_dir = self._checkpoint_dir(info.job_id)
                t_ckpt = self.clock.monotonic_s()
                record = self.journal.advance(
                    record, MigrationStep.CHECKPOINTED, self.clock.now_s(), checkpoint_s=t_ckpt - t_stop
                )
                progress.phase = "transferring"
                manifest = await self._build_manifest(ckpt_dir, info)
                progress.total_bytes = int(manifest.total_bytes)
                t_send = self.clock.monotonic_s()
                local.manifest_s = t_send - t_ckpt
                before = {chunk.sha256 for chunk in local.chunks}
                self._remember_chunks(
                    info.job_id,
                    tuple(manifest.distinct_chunks()),
                    manifest.missing_bytes(before) if before else None,
                )
                stats = await self._send(url, mid, manifest, progress)
                record = self.journal.advance(
                    record,
                    MigrationStep.TRANSFERRED,
                    self.clock.now_s(),
                    manifest_s=t_send - t_ckpt,
                    transfer_s=stats.duration_s,
                    total_bytes=manifest.total_bytes,
                    bytes_sent=stats.bytes_sent,
                    bytes_skipped=stats.bytes_skipped,
                    wire_bytes=stats.wire_bytes,
                    goodput_bps=stats.goodput_bps,
                )
                progress.phase = "restoring"
                t_prepare = self.clock.monotonic_s()
                signature = self._sign(manifest)
                await client.prepare(
                    url,
                    mid,
                    Prepare(manifest=manifest.model_dump(mode="json"), signature_b64=signature),
                    timeout_s=max(client.request_timeout_s, deadline_in),
                )
                local.rebuild_s = self.clock.monotonic_s() - t_prepare
                record = self.journal.advance(
                    record,
                    MigrationStep.PREPARED,
                    self.clock.now_s(),
                    prepare_s=self.clock.monotonic_s() - t_send,
                    rebuild_s=local.rebuild_s,
                )
        except (TimeoutError, GreenferryError, PeerRequestError, OSError) as err:
            await self._abort_source(record, f"{type(err).__name__}: {err}", size)
            return
        finally:
            if self.in_flight.get(mid) is progress and progress.phase != "restoring":
                self.in_flight.pop(mid, None)
        # The point of no return: from here the source rolls back only when it knows the destination will not
        # (or can no longer) run the job.
        record = self.journal.advance(record, MigrationStep.COMMITTING, self.clock.now_s())
        try:
            reply_c = await client.commit(
                url,
                mid,
                Commit(
                    epoch=info.epoch + 1,
                    step=info.checkpoint_step,
                    checkpoint_bytes=info.checkpoint_bytes,
                    checkpoint_s=_bounded_s(local.checkpoint_s),
                    restore_s=_bounded_s(local.restore_s),
                    manifest_s=_bounded_s(local.manifest_s),
                    rebuild_s=_bounded_s(local.rebuild_s),
                    changed_bytes=local.changed_bytes,
                ),
                timeout_s=client.request_timeout_s + 4 * self.config.migration.restore_s,
            )
        except PeerRequestError as err:
            await self._abort_source(record, f"commit refused: {err.message}", size)
            return
        except (ServiceUnavailableError, GreenferryError) as err:
            logger.warning("job %s: commit to %s unanswered (%s); asking it", info.job_id, dst, err)
            await self._resolve_commit(record)
            return
        if reply_c.running:
            now_m = self.clock.monotonic_s()
            record = self.journal.advance(
                record,
                MigrationStep.COMMITTING,
                self.clock.now_s(),
                total_s=now_m - started_m,
                downtime_s=now_m - t_stop,
            )
            # The move ends when the job trains again at the destination: the confirm asks it to answer
            # then (bounded), and the record's times run to that answer when it came in time.
            resume_wait_s = min(_MAX_RESUME_WAIT_S, 2 * self.job_timings_s(info.job_id)[1] + 1)
            confirmed = await self._released(record, int(stats.bytes_sent), now_m - started_m, resume_wait_s)
            released = self.journal.migration(mid)
            if confirmed is not None and confirmed.resumed and released is not None:
                now_m = self.clock.monotonic_s()
                self.journal.advance(
                    released,
                    released.step,
                    self.clock.now_s(),
                    total_s=now_m - started_m,
                    downtime_s=now_m - t_stop,
                    restore_s=confirmed.restore_s,
                    resumed=True,
                )
        else:
            await self._abort_source(record, f"destination did not start it: {reply_c.reason}", size)

    def _checkpoint_dir(self, job_id: str) -> Path:
        return self.jobs_root / job_id / "checkpoint"

    async def _build_manifest(self, ckpt_dir: Path, info: JobInfo) -> Any:
        from greenferry.daemon.transfer import build_manifest

        return await build_manifest(
            ckpt_dir,
            store=self.chunks,
            job_id=info.job_id,
            epoch=info.epoch,
            source_node=self.node,
            now_s=self.clock.now_s(),
        )

    def _sign(self, manifest: Any) -> str:
        if self._signing_key is None:
            return "unsigned"
        from greenferry.daemon.transfer import sign_manifest

        return base64.b64encode(sign_manifest(manifest, self._signing_key)).decode()

    async def _send(self, url: str, mid: str, manifest: Any, progress: MigrationProgress) -> Any:
        from greenferry.daemon.transfer import send_chunks

        assert self.peer_client is not None
        assert self.config.peer is not None

        def on_progress(done: int, total: int) -> None:
            progress.done_bytes = done
            progress.total_bytes = total

        stats = await send_chunks(
            self.peer_client.session,
            url,
            mid,
            manifest,
            self.chunks,
            streams=self.config.peer.streams,
            compress=self.config.peer.compress,
            progress=on_progress,
        )
        self.stats.bytes_sent += int(stats.bytes_sent)
        self.stats.bytes_skipped += int(stats.bytes_skipped)
        if stats.bytes_sent >= 1_000_000 and stats.goodput_bps > 0:
            old = self._bandwidth_bps.get(progress.dst)
            measured = float(stats.goodput_bps) / self._params.transfer_efficiency
            self._bandwidth_bps[progress.dst] = (
                measured if old is None else _BANDWIDTH_EWMA * measured + (1 - _BANDWIDTH_EWMA) * old
            )
        return stats

    async def _released(
        self, record: MigrationRecord, size_bytes: int, duration_s: float, resume_wait_s: float = 0.0
    ) -> ConfirmReply | None:
        """The destination runs the job: let go (the job's record first, then the migration's), confirm.

        Returns:
            The destination's answer to the confirm (None when it did not answer).
        """
        info = self._jobs.get(record.job_id)
        if info is not None and info.node == self.node:
            self._put(
                info.model_copy(
                    update={
                        "state": JobState.MIGRATED,
                        "node": record.peer,
                        "epoch": record.epoch + 1,
                        "migrations": info.migrations + 1,
                        "message": f"migrated to {record.peer}",
                    }
                )
            )
        # After the job's record: a crash in between leaves COMMITTING, which recovery resolves again.
        self.journal.advance(record, MigrationStep.RELEASED, self.clock.now_s())
        self._local_of(record.job_id).last_migration_m = self.clock.monotonic_s()
        self.in_flight.pop(record.migration_id, None)
        self.stats.migrations += 1
        self.bus.publish(
            MigrationEnded(
                self.clock.now_s(), record.job_id, self.node, record.peer, "ok", size_bytes, duration_s
            )
        )
        logger.info("job %s migrated to %s (epoch %d)", record.job_id, record.peer, record.epoch + 1)
        url = str(record.data.get("url", ""))
        confirmed = None
        if self.peer_client is not None and url:
            for _ in range(5):
                try:
                    confirmed = await self.peer_client.confirm(url, record.migration_id, resume_wait_s)
                    break
                except (ServiceUnavailableError, PeerRequestError) as err:
                    logger.debug("confirm to %s failed: %s", record.peer, err)
                    await self.clock.sleep(1.0)
        shutil.rmtree(self.jobs_root / record.job_id / "checkpoint", ignore_errors=True)
        return confirmed

    async def _abort_source(self, record: MigrationRecord, reason: str, size_bytes: int = 0) -> None:
        """Roll back: tell the destination (best effort); the job is paused here at the same checkpoint.

        After COMMITTING the destination may have taken the commit, and run the job, at epoch + 1: that
        epoch is spent, and the job resumes here at it (the destination keeps it too when it drops its
        run, so a later offer is not refused there as stale).
        """
        logger.warning("job %s: migration to %s aborted: %s", record.job_id, record.peer, reason)
        info = self._jobs.get(record.job_id)
        if (
            info is not None
            and info.node == self.node
            and info.state in (JobState.MIGRATING, JobState.CHECKPOINTING)
        ):
            update: dict[str, Any] = {"state": JobState.PAUSED, "message": f"migration aborted: {reason}"}
            if record.step is MigrationStep.COMMITTING:
                update["epoch"] = max(info.epoch, record.epoch + 1)
            # The job's record first: a crash before the migration's step leaves it open, and recovery
            # rolls it back again; the other order would leave the job migrating with nothing in flight.
            self._put(info.model_copy(update=update))
        record = self.journal.advance(record, MigrationStep.ABORTED, self.clock.now_s(), reason=reason[:1000])
        self.in_flight.pop(record.migration_id, None)
        self._cooldown_m[(record.job_id, record.peer)] = self.clock.monotonic_s() + _RETRY_AFTER_ABORT_S
        self.stats.aborted_migrations += 1
        self.bus.publish(
            MigrationEnded(
                self.clock.now_s(),
                record.job_id,
                self.node,
                record.peer,
                "aborted",
                size_bytes,
                0.0,
                reason[:200],
            )
        )
        url = str(record.data.get("url", ""))
        if self.peer_client is not None and url:
            with contextlib.suppress(ServiceUnavailableError, PeerRequestError, GreenferryError):
                await self.peer_client.abort(url, record.migration_id, reason)
        self._wake.set()

    async def _resolve_commit(self, record: MigrationRecord) -> None:
        """After a commit without an answer: ask the destination until it says, or the fence time passes."""
        url = str(record.data.get("url", ""))
        while self.clock.now_s() < record.deadline_s:
            if self.peer_client is not None and url:
                try:
                    status = await self.peer_client.status(url, record.migration_id)
                except (ServiceUnavailableError, PeerRequestError, GreenferryError):
                    status = None
                if status is not None:
                    if status.step in (MigrationStep.STARTED.value, MigrationStep.OWNED.value):
                        await self._released(record, int(record.data.get("bytes_sent", 0)), 0.0)
                        return
                    if status.step in (MigrationStep.ABORTED.value, "unknown"):
                        break
                    # reserved / prepared: it never took the commit; an abort makes sure it never will.
                    with contextlib.suppress(ServiceUnavailableError, PeerRequestError, GreenferryError):
                        await self.peer_client.abort(url, record.migration_id, "commit unanswered")
                        break
            await self.clock.sleep(1.0)
        self.stats.failed_migrations += 1
        await self._abort_source(record, "the destination did not confirm before the fence time")

    # -------------------------------------------------------------------------- destination side

    def info(self) -> dict[str, Any]:
        """GET /v1/info."""
        return self.advert().model_dump(mode="json")

    async def chunks_held(self, peer: str, query: HeldQuery) -> HeldReply:
        """POST /v1/chunks/held: how much of ``query``'s chunks this node's chunk cache holds intact."""
        missing = set(await asyncio.to_thread(self.chunks.missing, query.chunks))
        held = [chunk for chunk in query.chunks if chunk.sha256 not in missing]
        logger.debug("%s asked about %d chunks: %d held here", peer, len(query.chunks), len(held))
        return HeldReply(
            chunks=len(query.chunks), held_chunks=len(held), held_bytes=sum(c.size_bytes for c in held)
        )

    async def on_offer(self, peer: str, offer: Offer) -> OfferReply:
        """Accept with a reservation when a slot is free, the job is new here, and the window fits."""
        now_m = self.clock.monotonic_s()
        self._expire_reservations(now_m)
        spec = offer.job
        held = self._jobs.get(spec.job_id)
        if held is not None and held.node == self.node and held.state not in TERMINAL_STATES:
            return OfferReply(accepted=False, reason=f"job {spec.job_id} already runs here")
        if held is not None and held.epoch > offer.epoch:
            return OfferReply(accepted=False, reason=f"stale epoch {offer.epoch} (seen {held.epoch})")
        if any(r.job_id == spec.job_id for r in self._reservations.values()):
            return OfferReply(accepted=False, reason=f"job {spec.job_id} is already reserved here")
        if spec.gpu_count > self.free_slots():
            return OfferReply(
                accepted=False, reason=f"{self.free_slots()} free GPU slot(s), {spec.gpu_count} needed"
            )
        power_w = self.job_power_w(spec)
        window_s = self._window_ahead_s(power_w)
        budget_s = self._params.alpha * window_s
        if window_s <= 0 or offer.predicted_migration_s > budget_s:
            return OfferReply(
                accepted=False,
                reason=f"window ahead {window_s:.0f} s: {offer.predicted_migration_s:.0f} s of migration "
                f"exceeds "
                f"alpha x window ({budget_s:.0f} s)",
                window_s=window_s,
            )
        params = self._params.model_copy(update={"job_power_w": power_w})
        from greenferry.core.feasibility import assess

        verdict = assess(offer.bytes_to_send, self._bandwidth_to(peer), window_s, params)
        if not verdict.energy_feasible:
            return OfferReply(
                accepted=False, reason="the move costs more energy than the window saves", window_s=window_s
            )
        reservation_s = offer.deadline_in_s
        self._reservations[offer.migration_id] = _Reservation(
            offer.migration_id, spec.job_id, peer, spec.gpu_count, offer, now_m + reservation_s
        )
        self.journal.put_migration(
            MigrationRecord(
                offer.migration_id,
                spec.job_id,
                MigrationRole.DESTINATION,
                peer,
                MigrationStep.RESERVED,
                offer.epoch,
                self.clock.now_s() + reservation_s,
                {"offer": offer.model_dump(mode="json")},
            ),
            self.clock.now_s(),
        )
        return OfferReply(accepted=True, reservation_s=reservation_s, window_s=window_s)

    def _window_ahead_s(self, power_w: float) -> float:
        """How long this node's surplus covers ``power_w`` from now (forecast windows, else surplus now)."""
        step = self.config.migration.forecast_step_s
        n = max(1, int(self.config.migration.horizon_s / step))
        now_m = self.clock.monotonic_s()
        other_w = self._load_w()
        forecast = forecast_matrix(
            [self._windows()], [self.board.surplus_w(now_m)], self.clock.now_s(), step, n
        )
        covered = forecast[0] - other_w >= power_w
        run = int(covered.argmin()) if not covered.all() else n
        return run * step

    def _expire_reservations(self, now_m: float) -> None:
        for mid, reservation in list(self._reservations.items()):
            if not reservation.started and now_m > reservation.expires_m:
                del self._reservations[mid]
                record = self.journal.migration(mid)
                if record is not None and record.open:
                    self.journal.advance(
                        record, MigrationStep.ABORTED, self.clock.now_s(), reason="reservation expired"
                    )
                self._drop_staging(mid)

    def _reservation(self, peer: str, mid: str) -> _Reservation:
        self._expire_reservations(self.clock.monotonic_s())
        reservation = self._reservations.get(mid)
        if reservation is None or reservation.peer != peer:
            raise PeerRequestError(404, "no_reservation", f"no open reservation {mid} for {peer}")
        return reservation

    def authorize_transfer(self, peer: str, mid: str) -> None:
        """Chunks may only arrive for an open reservation of the same peer."""
        self._reservation(peer, mid)

    def _staging(self, mid: str) -> Path:
        return self.jobs_root / ".incoming" / mid

    def _drop_staging(self, mid: str) -> None:
        shutil.rmtree(self._staging(mid), ignore_errors=True)

    async def on_prepare(self, peer: str, migration_id: str, prepare: Prepare, peer_key: Any | None) -> None:
        """Verify the signed manifest and rebuild the checkpoint in a staging directory."""
        from greenferry.core.manifest import Manifest
        from greenferry.daemon.transfer import materialize, verify_manifest

        reservation = self._reservation(peer, migration_id)
        try:
            manifest = Manifest.model_validate(prepare.manifest)
        except ValueError as err:
            raise PeerRequestError(422, "bad_manifest", str(err)[:500]) from None
        if manifest.job_id != reservation.job_id or manifest.epoch != reservation.offer.epoch:
            raise PeerRequestError(409, "manifest_mismatch", "the manifest is for another job or epoch")
        if manifest.source_node != peer:
            raise PeerRequestError(403, "wrong_source", "the manifest names another source")
        if peer_key is not None:
            try:
                signature = base64.b64decode(prepare.signature_b64, validate=True)
            except ValueError:
                raise PeerRequestError(422, "bad_signature", "signature is not base64") from None
            try:
                verify_manifest(manifest, signature, peer_key)
            except PayloadError as err:
                raise PeerRequestError(422, "bad_signature", err.detail) from None
        staging = self._staging(migration_id)
        try:
            await materialize(manifest, self.chunks, staging / "checkpoint")
        except (GreenferryError, OSError) as err:
            raise PeerRequestError(422, "materialize_failed", str(err)[:500]) from None
        reservation.chunks = tuple(manifest.distinct_chunks())
        record = self.journal.migration(migration_id)
        if record is not None:
            self.journal.advance(
                record, MigrationStep.PREPARED, self.clock.now_s(), total_bytes=manifest.total_bytes
            )

    async def on_commit(self, peer: str, migration_id: str, commit: Commit) -> CommitReply:
        """Start the job at the new epoch, if the reservation is still open and prepared."""
        t_commit = self.clock.monotonic_s()
        reservation = self._reservation(peer, migration_id)
        record = self.journal.migration(migration_id)
        if record is None or record.step is not MigrationStep.PREPARED:
            raise PeerRequestError(409, "not_prepared", "commit before prepare")
        if commit.epoch != reservation.offer.epoch + 1:
            raise PeerRequestError(409, "wrong_epoch", f"expected epoch {reservation.offer.epoch + 1}")
        offer = reservation.offer
        # Journal first: a crash from here on is resolved by asking the source (see _doubt).
        record = self.journal.advance(record, MigrationStep.STARTED, self.clock.now_s())
        reservation.started = True
        job_dir = self.jobs_root / offer.job.job_id
        target = job_dir / "checkpoint"
        shutil.rmtree(target, ignore_errors=True)
        job_dir.mkdir(parents=True, exist_ok=True)
        (self._staging(migration_id) / "checkpoint").rename(target)
        self._drop_staging(migration_id)
        prior = self._jobs.get(offer.job.job_id)
        info = JobInfo(
            job_id=offer.job.job_id,
            spec=offer.job,
            state=JobState.PAUSED,
            node=self.node,
            epoch=commit.epoch,
            checkpoint_step=commit.step if commit.step is not None else offer.step,
            checkpoint_bytes=commit.checkpoint_bytes
            if commit.checkpoint_bytes is not None
            else offer.checkpoint_bytes,
            migrations=(prior.migrations if prior is not None else 0) + 1,
            message=f"arrived from {peer}",
        )
        self._put(info)
        local = self._local_of(info.job_id)
        local.last_migration_m = self.clock.monotonic_s()
        local.checkpoint_s = commit.checkpoint_s
        local.manifest_s = commit.manifest_s
        local.rebuild_s = commit.rebuild_s
        local.changed_bytes = commit.changed_bytes
        local.chunks = reservation.chunks
        await self._start(info, resume=True)
        spawn_s = self.clock.monotonic_s() - t_commit
        # Until the job says it resumed here (_note_resumed), the restore its last arrival measured.
        local.restore_s = commit.restore_s if commit.restore_s is not None else spawn_s
        local.arrival = _Arrival(migration_id, spawn_s)
        reservation.confirm_task = self._spawn(self._await_confirm(record), f"confirm-{migration_id}")
        return CommitReply(running=True, epoch=commit.epoch, restore_s=_bounded_s(spawn_s))

    def _note_resumed(self, job_id: str, after_s: float) -> float | None:
        """The job's process said it resumed ``after_s`` after its start: the restore of its arrival, if any.

        Returns:
            Commit received -> resumed (s), when the job's current run here was started for a commit.
        """
        local = self._local.get(job_id)
        arrival = local.arrival if local is not None else None
        if local is None or arrival is None:
            return None
        if arrival.restore_s is None:
            arrival.restore_s = local.restore_s = min(arrival.spawn_s + after_s, _MAX_MEASURED_S)
            logger.info("job %s resumed %.2f s after the commit", job_id, arrival.restore_s)
            record = self.journal.migration(arrival.migration_id)
            if record is not None:
                self.journal.advance(record, record.step, self.clock.now_s(), restore_s=arrival.restore_s)
        return arrival.restore_s

    async def _await_confirm(self, record: MigrationRecord) -> None:
        await self.clock.sleep(self.config.migration.confirm_timeout_s)
        current = self.journal.migration(record.migration_id)
        if current is not None and current.step is MigrationStep.STARTED:
            logger.warning(
                "job %s: no confirmation from %s; stopping it until it answers", record.job_id, record.peer
            )
            self._local_of(record.job_id).busy = True
            await self._doubt(current)

    async def on_confirm(self, peer: str, migration_id: str, confirm: Confirm) -> ConfirmReply:
        """The source let go: this node owns the job. Answers once the job resumed, waiting at most
        ``confirm.resume_wait_s`` (after the ownership is journaled: the wait changes nothing but when
        the source hears it)."""
        record = self.journal.migration(migration_id)
        if record is None or record.peer != peer or record.role is not MigrationRole.DESTINATION:
            raise PeerRequestError(404, "unknown_migration", f"no migration {migration_id} from {peer}")
        if record.step is MigrationStep.STARTED:
            self.journal.advance(record, MigrationStep.OWNED, self.clock.now_s())
        reservation = self._reservations.pop(migration_id, None)
        if reservation is not None and reservation.confirm_task is not None:
            reservation.confirm_task.cancel()
        restore_s = None
        arrival = self._local_of(record.job_id).arrival
        if confirm.resume_wait_s > 0 and arrival is not None and arrival.migration_id == migration_id:
            after_s = await self.supervisor.wait_resumed(record.job_id, confirm.resume_wait_s)
            if after_s is not None:
                restore_s = self._note_resumed(record.job_id, after_s)
        return ConfirmReply(confirmed=True, resumed=restore_s is not None, restore_s=restore_s)

    async def on_abort(self, peer: str, migration_id: str, abort: Abort) -> None:
        """Forget a migration; a job already started for it is stopped (the source keeps it)."""
        record = self.journal.migration(migration_id)
        if record is None or record.peer != peer:
            return
        self._reservations.pop(migration_id, None)
        if record.step is MigrationStep.STARTED:
            await self._stop_foreign(record, f"source aborted: {abort.reason}")
        if record.open:
            self.journal.advance(record, MigrationStep.ABORTED, self.clock.now_s(), reason=abort.reason)
        self._drop_staging(migration_id)

    async def _stop_foreign(self, record: MigrationRecord, why: str) -> None:
        info = self._jobs.get(record.job_id)
        if info is not None and info.epoch != record.epoch + 1:
            return  # not the run this migration started: a later move brought the job here again
        if info is not None and info.node == self.node and info.state in ACTIVE_STATES:
            await self.supervisor.stop(record.job_id)
        if info is not None and info.node == self.node:
            self._put(
                info.model_copy(update={"state": JobState.MIGRATED, "node": record.peer, "message": why})
            )

    async def _doubt(self, record: MigrationRecord) -> None:
        """A started job without the source's confirmation: stop it, then ask the source until it answers.

        The job is held (busy) meanwhile, so the decision loop does not start it again: the source rolls
        back at its fence time assuming the destination stopped the job by then and kept it stopped.
        """
        local = self._local_of(record.job_id)
        local.busy = True
        try:
            await self._ask_source(record)
        finally:
            local.busy = False
            # Resolved (or shutting down): a reservation left behind would refuse every later offer of
            # the job here as "already reserved".
            self._reservations.pop(record.migration_id, None)
            self._wake.set()  # an owned job resumes at the next decision

    async def _ask_source(self, record: MigrationRecord) -> None:
        info = self._jobs.get(record.job_id)
        if (
            info is not None
            and info.node == self.node
            and info.epoch == record.epoch + 1
            and info.state in (JobState.RUNNING, JobState.STARTING)
        ):
            with contextlib.suppress(GreenferryError):
                await self._checkpoint(info, JobState.PAUSED, "waiting for the source's confirmation")
        url = None
        advert = self.directory.get(record.peer, self.clock.monotonic_s())
        if advert is not None:
            url = advert.peer_url
        while True:
            current = self.journal.migration(record.migration_id)
            if current is None or current.step is not MigrationStep.STARTED:
                return  # settled meanwhile: the source's confirm or abort arrived
            if url is None:
                advert = self.directory.get(record.peer, self.clock.monotonic_s())
                url = advert.peer_url if advert is not None else None
            if url is not None and self.peer_client is not None:
                try:
                    status = await self.peer_client.status(url, record.migration_id)
                except (ServiceUnavailableError, PeerRequestError, GreenferryError):
                    status = None
                if status is not None:
                    if status.step == MigrationStep.RELEASED.value:
                        self.journal.advance(record, MigrationStep.OWNED, self.clock.now_s())
                        return
                    if status.step in (MigrationStep.ABORTED.value, "unknown"):
                        await self._stop_foreign(record, "the source kept the job")
                        self.journal.advance(
                            record, MigrationStep.ABORTED, self.clock.now_s(), reason="source aborted"
                        )
                        return
            await self.clock.sleep(2.0)

    def migration_status(self, peer: str, migration_id: str) -> MigrationStatus:
        """GET /v1/migrations/{id}: this node's journaled step (``unknown`` if it never heard of it)."""
        record = self.journal.migration(migration_id)
        if record is None or record.peer != peer:
            return MigrationStatus(migration_id=migration_id, role="unknown", step="unknown", epoch=0)
        return MigrationStatus(
            migration_id=migration_id, role=record.role.value, step=record.step.value, epoch=record.epoch
        )


def _bounded_s(duration_s: float | None) -> float | None:
    """A measured duration as a message carries it (at most a day)."""
    return None if duration_s is None else min(max(duration_s, 0.0), _MAX_MEASURED_S)


def _speed(clock: Clock) -> float:
    """How much faster than real time ``clock`` runs (the demo's accelerated clock), else 1."""
    speedup = getattr(clock, "speedup", 1.0)
    return float(speedup) if isinstance(speedup, int | float) and speedup > 0 else 1.0
