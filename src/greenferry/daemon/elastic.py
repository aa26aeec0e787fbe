"""Elastic jobs: this node's share of a data-parallel job joins while the node has surplus and leaves after.

An ``[[elastic]]`` group is one torchrun job spread over the nodes that list it. Each node's daemon decides
for itself, from its own surplus, whether its share should run: it **joins** (starts a torchrun agent with
``nproc_per_node`` workers, c10d rendezvous at ``rendezvous_endpoint``) once the surplus has covered the
share for ``join_delay_s``, and **leaves** (SIGTERM to the agent: the workers agree on a step, commit it and
exit, and the rest of the job goes on without this node) once it has fallen short for ``leave_delay_s``.
torchrun restarts the workers at every membership change and the job resumes from the newest committed
checkpoint any member holds, so no step is lost or applied twice (examples/elastic_torch_job.py and
docs/distributed.md state what the job itself must guarantee).

The node with ``host_store = true`` keeps the rendezvous store running whatever its surplus (it draws next to
nothing), restarting it if it dies. An agent that exits 0 means the job is complete: the node publishes
that, retained, on ``<prefix>/elastic/<name>/state``, so no member starts it again; each member publishes its
own state, retained, on ``<prefix>/elastic/<name>/members/<node>``. An agent that fails on its own is
started again at the next join (after ``join_delay_s``); after five failures in a row the group is marked
failed on this node and left alone.

torchrun starts each worker in a session of its own, outside the agent's process group: the member remembers
every descendant of its agent and kills what is left of them if a leave overruns ``stop_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from greenferry.config import DaemonConfig, ElasticGroupConfig
from greenferry.core.clock import Clock
from greenferry.core.signals import SignalBoard
from greenferry.errors import GreenferryError

__all__ = ["ElasticMember", "ElasticMembers", "agent_argv"]

logger = logging.getLogger(__name__)

_TICK_S = 1.0
_MAX_FAILURES = 5
_STORE_RESTART_S = 1.0

Publish = Callable[[str, bytes], Awaitable[None]]


def agent_argv(group: ElasticGroupConfig) -> list[str]:
    """The torchrun command line of this node's share of ``group``."""
    conf = ",".join(["is_host=false", *(f"{k}={v}" for k, v in sorted(group.rdzv_conf.items()))])
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes=1:{group.max_nodes}",
        f"--nproc-per-node={group.nproc_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={group.rendezvous_endpoint}",
        f"--rdzv-id={group.name}",
        f"--rdzv-conf={conf}",
        f"--max-restarts={group.max_restarts}",
        *group.command,
    ]


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (by parent links in /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] not in {"Z", "X"}:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


class ElasticMember:
    """This node's share of one elastic job (see the module docstring)."""

    def __init__(
        self,
        group: ElasticGroupConfig,
        config: DaemonConfig,
        clock: Clock,
        board: SignalBoard,
        publish: Publish | None = None,
    ) -> None:
        from greenferry.hardware_profiles import resolve_profile

        self.group = group
        self.node = config.node.name
        self.clock = clock
        self.board = board
        self._publish = publish
        self._prefix = config.mqtt_prefix
        profile = resolve_profile(config.node.hardware_profile)
        self.join_surplus_w = (
            group.join_surplus_w
            if group.join_surplus_w is not None
            else group.nproc_per_node * profile.train_power_w + profile.host_power_w
        )
        self.dir = config.node.data_dir / "elastic" / group.name
        self.checkpoint_dir = self.dir / "checkpoint"
        self.state = "waiting"  # waiting | joined | leaving | done | failed
        self.joins = 0
        self.leaves = 0
        self.failures = 0
        self.last_exit: int | None = None
        self._agent: asyncio.subprocess.Process | None = None
        self._agent_task: asyncio.Task[None] | None = None
        self._store: asyncio.subprocess.Process | None = None
        self._store_task: asyncio.Task[None] | None = None
        self._seen: set[int] = set()
        self._good_since: float | None = None
        self._bad_since: float | None = None
        self._leave_requested = False
        self._closing = False
        self.held: str | None = None  # why the share must not run now (a demand-response event)

    # ------------------------------------------------------------------------------ decisions

    def _surplus_ok(self) -> bool:
        return self.board.surplus_w(self.clock.monotonic_s()) >= self.join_surplus_w

    async def step(self) -> None:
        """One decision: join, leave or stay, from the surplus and its delays."""
        now_m = self.clock.monotonic_s()
        ok = self._surplus_ok()
        self._good_since = (self._good_since if self._good_since is not None else now_m) if ok else None
        self._bad_since = None if ok else (self._bad_since if self._bad_since is not None else now_m)
        if self._agent is not None:
            self._seen |= _descendants(self._agent.pid)
        good_for = None if self._good_since is None else now_m - self._good_since
        bad_for = None if self._bad_since is None else now_m - self._bad_since
        if self.held is not None:
            if self.state == "joined":
                await self.leave(self.held)
        elif self.state == "waiting" and good_for is not None and good_for >= self.group.join_delay_s:
            await self._join()
        elif self.state == "joined" and bad_for is not None and bad_for >= self.group.leave_delay_s:
            await self.leave("the node's surplus no longer covers its share")

    async def _join(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GREENFERRY_", "TORCHELASTIC_"))}
        env.update(
            TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1",  # pytorch#135712: a fresh store view per world
            GREENFERRY_JOB_CHECKPOINT_DIR=str(self.checkpoint_dir),
            GREENFERRY_JOB_ID=self.group.name,
        )
        env.update(self.group.env)
        with open(self.dir / "agent.log", "ab") as log:
            try:
                self._agent = await asyncio.create_subprocess_exec(
                    *agent_argv(self.group),
                    cwd=self.dir,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as err:
                self.failures += 1
                logger.error("elastic job %s: cannot start torchrun: %s", self.group.name, err)
                return
        self._seen = set()
        self._leave_requested = False
        self.joins += 1
        self.state = "joined"
        self._agent_task = asyncio.create_task(
            self._watch_agent(self._agent), name=f"elastic-{self.group.name}"
        )
        logger.info("elastic job %s: joined with %d worker(s)", self.group.name, self.group.nproc_per_node)
        await self._announce()

    async def leave(self, why: str) -> None:
        """Ask the agent to leave (SIGTERM) and wait for it; kill what is left after ``stop_timeout_s``."""
        agent = self._agent
        if agent is None or self.state != "joined":
            return
        self.state = "leaving"
        self._leave_requested = True
        logger.info("elastic job %s: leaving (%s)", self.group.name, why)
        self._seen |= _descendants(agent.pid)
        with contextlib.suppress(ProcessLookupError):
            agent.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self.group.stop_timeout_s):
                if self._agent_task is not None:
                    await asyncio.shield(self._agent_task)
                else:
                    await agent.wait()
        except TimeoutError:
            logger.error(
                "elastic job %s: the agent did not leave within %.0f s; killing it and its workers",
                self.group.name,
                self.group.stop_timeout_s,
            )
            self._kill(agent.pid)
            await agent.wait()
            if self._agent_task is not None:
                await self._agent_task

    def hold(self, why: str) -> None:
        """Keep the share out of the job until :meth:`release`; a running share leaves at the next tick."""
        self.held = why

    def release(self) -> None:
        """Let the share join again (when its surplus says so)."""
        self.held = None

    def _kill(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        self._seen |= _descendants(pid)
        self._kill_strays()

    def _kill_strays(self) -> None:
        """SIGKILL the agent's remembered descendants still working in this group's directory.

        The directory check keeps a recycled pid of an unrelated process safe.
        """
        for victim in sorted(self._seen):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{victim}/cwd").resolve() == self.dir.resolve():
                    os.kill(victim, signal.SIGKILL)

    async def _watch_agent(self, agent: asyncio.subprocess.Process) -> None:
        code = await agent.wait()
        self.last_exit = code
        self._agent = None
        # Workers still alive once the agent is gone belong to nobody: stop them.
        self._kill_strays()
        if code == 0:
            self.state = "done"
            logger.info("elastic job %s: complete", self.group.name)
            await self._publish_json(f"{self._prefix}/elastic/{self.group.name}/state", {"state": "done"})
        elif self._leave_requested:
            self.leaves += 1
            self.failures = 0
            self.state = "waiting"
        else:
            self.failures += 1
            self.state = "failed" if self.failures >= _MAX_FAILURES else "waiting"
            logger.error(
                "elastic job %s: torchrun exited %d on its own (failure %d; see %s)",
                self.group.name,
                code,
                self.failures,
                self.dir / "agent.log",
            )
        self._good_since = None
        await self._announce()

    # ------------------------------------------------------------------------------ the store

    async def _serve_store(self) -> None:
        port = self.group.rendezvous_endpoint.rsplit(":", 1)[1]
        argv = (
            [part.replace("{port}", port) for part in self.group.store_command]
            if self.group.store_command
            else [sys.executable, "-m", "greenferry.elastic_store", port]
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        while not self._closing:
            with open(self.dir / "store.log", "ab") as log:
                self._store = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=self.dir,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            code = await self._store.wait()
            if self._closing:
                return
            logger.error(
                "elastic job %s: the rendezvous store exited %d; restarting it", self.group.name, code
            )
            await asyncio.sleep(_STORE_RESTART_S)

    # ------------------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Decide every second until cancelled."""
        if self.group.host_store:
            self._store_task = asyncio.create_task(
                self._serve_store(), name=f"elastic-store-{self.group.name}"
            )
        await self._announce()
        speed = getattr(self.clock, "speedup", 1.0)
        tick_s = _TICK_S / speed if isinstance(speed, int | float) and speed > 0 else _TICK_S
        while True:
            try:
                await self.step()
            except GreenferryError as err:
                logger.warning("elastic job %s: %s", self.group.name, err)
            await asyncio.sleep(tick_s)

    async def close(self) -> None:
        """Leave the job and stop the store."""
        self._closing = True
        await self.leave("the daemon is stopping")
        if self._store is not None and self._store.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._store.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await self._store.wait()
            except TimeoutError:
                self._store.kill()
                await self._store.wait()
        if self._store_task is not None:
            self._store_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._store_task

    def on_group_state(self, payload: bytes) -> None:
        """A retained group state from any member: ``done`` ends the job here too."""
        try:
            state = json.loads(payload).get("state")
        except (ValueError, AttributeError):
            logger.warning(
                "elastic job %s: ignoring a malformed group state %r", self.group.name, payload[:80]
            )
            return
        if state == "done" and self.state in ("waiting", "failed"):
            self.state = "done"
            logger.info("elastic job %s: complete (announced by another member)", self.group.name)

    def status(self) -> dict[str, Any]:
        """JSON-ready state of this share."""
        return {
            "name": self.group.name,
            "state": self.state,
            "workers": self.group.nproc_per_node,
            "join_surplus_w": self.join_surplus_w,
            "joins": self.joins,
            "leaves": self.leaves,
            "failures": self.failures,
            "last_exit": self.last_exit,
            "agent_pid": None if self._agent is None else self._agent.pid,
            "hosts_store": self.group.host_store,
            "held": self.held,
            "store_running": self._store is not None and self._store.returncode is None,
        }

    async def _announce(self) -> None:
        await self._publish_json(
            f"{self._prefix}/elastic/{self.group.name}/members/{self.node}",
            {k: v for k, v in self.status().items() if k != "agent_pid"},
        )

    async def _publish_json(self, topic: str, body: dict[str, Any]) -> None:
        if self._publish is None:
            return
        try:
            await self._publish(topic, json.dumps(body).encode())
        except GreenferryError as err:
            logger.debug("elastic state not published on %s: %s", topic, err)


class ElasticMembers:
    """Every ``[[elastic]]`` group of the node, as one daemon component."""

    def __init__(
        self, config: DaemonConfig, clock: Clock, board: SignalBoard, mqtt: Any | None = None
    ) -> None:
        publish: Publish | None = None
        if mqtt is not None:

            async def publish_retained(topic: str, payload: bytes) -> None:
                await mqtt.publish(topic, payload, qos=1, retain=True)

            publish = publish_retained
        self.members = {g.name: ElasticMember(g, config, clock, board, publish) for g in config.elastic}
        if mqtt is not None:
            mqtt.add_handler(f"{config.mqtt_prefix}/elastic/+/state", self._on_state)

    def _on_state(self, topic: str, payload: bytes) -> None:
        name = topic.rsplit("/", 2)[-2]
        member = self.members.get(name)
        if member is not None:
            member.on_group_state(payload)

    async def __aenter__(self) -> ElasticMembers:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for member in self.members.values():
            try:
                await member.close()
            except Exception:  # one group's trouble must not keep the others running
                logger.exception("elastic job %s: close failed", member.group.name)

    async def run(self) -> None:
        """Run every member until cancelled."""
        async with asyncio.TaskGroup() as group:
            for name, member in self.members.items():
                group.create_task(member.run(), name=f"greenferry-elastic-{name}")

    def status(self) -> list[dict[str, Any]]:
        """Each group's state."""
        return [m.status() for m in self.members.values()]
