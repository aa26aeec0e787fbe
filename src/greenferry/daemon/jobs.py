"""The job supervisor: runs training jobs as subprocesses, reads their status, checkpoints and stops them.

Each job runs in its own directory ``<jobs_root>/<job_id>/`` (its working directory unless the spec names
one), in a session and process group of its own, with two inherited pipes (the control channel of
:mod:`greenferry.job`, see docs/jobs.md):

```
  daemon ── control pipe: b"checkpoint\\n" ─────────────►  job (greenferry.job SDK)
  daemon ◄── status pipe: JSON lines (hello, progress, ... ──  writes <job_dir>/checkpoint/ atomically
             <job_dir>/job.log ◄── stdout, stderr (the file itself, O_APPEND: no pipe through the daemon)
```

The job writes its output straight into its log file, so a daemon killed with SIGKILL leaves the job
writing (a pipe to the dead daemon would fail its next ``print`` with BrokenPipeError before the SDK saw the
daemon gone and saved); the daemon bounds the file's size by copy-truncate rotation (:func:`rotate_log`),
which works with writers that append.

The job's exit code says how it ended: 0 completed, 75 checkpointed (a complete checkpoint must be on
disk), anything else failed. A status line the supervisor does not understand (not JSON, too long, unknown
type, bad field) is counted and ignored. No process outlives the supervisor: on exit it asks every job for a
checkpoint and kills the process group of any that does not exit in time; a job's group is also killed
when its leader exits, so nothing it spawned is left behind. A daemon that died without that (kill -9, a
crash) leaves its jobs saving a last checkpoint once they see it gone: before a job starts, the supervisor
waits for any such process of it (found by its checkpoint directory) to exit, and kills it after the job's
checkpoint timeout, so the job never runs twice and the new process resumes from that last checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import math
import os
import signal
import stat
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Self

from greenferry.core.clock import Clock
from greenferry.core.jobs import JobSpec
from greenferry.daemon.clock import RealClock
from greenferry.errors import GreenferryError
from greenferry.job import (
    CONTROL_CHECKPOINT,
    ENV_CHECKPOINT_DIR,
    ENV_CONTROL_FD,
    ENV_JOB_ID,
    ENV_RESUME,
    ENV_STATUS_FD,
    EXIT_CHECKPOINTED,
    EXIT_COMPLETED,
    MAX_METRIC_NAME_CHARS,
    MAX_METRICS,
    read_meta,
    recover_checkpoint,
)

__all__ = [
    "CHECKPOINT_DIR_NAME",
    "LOG_NAME",
    "CheckpointFailedError",
    "CheckpointResult",
    "CheckpointTimeoutError",
    "JobAlreadyRunningError",
    "JobEvent",
    "JobEventKind",
    "JobEventStream",
    "JobNotRunningError",
    "JobProgress",
    "JobStartError",
    "JobSupervisor",
    "JobSupervisorError",
    "checkpoint_size",
    "leftover_job_processes",
    "rotate_log",
]

logger = logging.getLogger(__name__)

CHECKPOINT_DIR_NAME = "checkpoint"
LOG_NAME = "job.log"
_READ_BYTES = 65536
_LOG_MARK = b"--- greenferry: starting "  # the banner the supervisor writes at every start
_MAX_STEP = 2**63 - 1
_LOGGED_BAD_LINES = 5  # per job; later ones are only counted


class JobSupervisorError(GreenferryError):
    """Base class of the supervisor's errors; the message names the job."""


class JobStartError(JobSupervisorError):
    """The job's process could not be started (missing program, bad working directory ...)."""


class JobAlreadyRunningError(JobSupervisorError):
    """``start`` for a job whose process is still running."""


class JobNotRunningError(JobSupervisorError):
    """The job has no running process here."""


class CheckpointTimeoutError(JobSupervisorError):
    """The job did not checkpoint within the timeout; it was killed and its previous checkpoint kept."""


class CheckpointFailedError(JobSupervisorError):
    """The job exited without a new checkpoint (it completed, failed or was stopped meanwhile).

    Attributes:
        event: the job's exit event.
    """

    def __init__(self, message: str, event: JobEvent) -> None:
        super().__init__(message)
        self.event = event


class JobEventKind(enum.StrEnum):
    """What happened to a job's process."""

    STARTED = "started"
    RESUMED = "resumed"  # the job said it loaded its checkpoint (or, without saying so, reported progress)
    PROGRESS = "progress"
    CHECKPOINTED = "checkpointed"  # exited 75 with a complete checkpoint on disk
    COMPLETED = "completed"  # exited 0
    FAILED = "failed"  # any other exit (or 75 without a checkpoint)
    STOPPED = "stopped"  # killed by the supervisor: stop(), a checkpoint timeout, or shutdown


EXIT_KINDS = frozenset(
    {JobEventKind.CHECKPOINTED, JobEventKind.COMPLETED, JobEventKind.FAILED, JobEventKind.STOPPED}
)


@dataclass(frozen=True, slots=True)
class CheckpointResult:
    """A checkpoint a job left on disk.

    Attributes:
        path: the checkpoint directory (``<job_dir>/checkpoint``).
        size_bytes: bytes of every regular file in it (what a migration moves), measured on disk.
        step: the training step it holds (from its meta file).
        file_count: regular files in it (the meta file included).
        duration_s: from the checkpoint request to the job's exit (None when the job was not asked).
    """

    path: Path
    size_bytes: int
    step: int
    file_count: int
    duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class JobProgress:
    """The last progress a job reported."""

    step: int
    loss: float | None
    progress: float | None
    metrics: Mapping[str, float]
    time_s: float


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One thing that happened to a job's process (see :class:`JobEventKind`).

    Attributes:
        kind: what happened.
        job_id: the job.
        time_s: when the supervisor saw it (UTC epoch seconds).
        step: the step reported (progress), saved (checkpointed) or last reported (other exits).
        loss: the reported loss (progress).
        progress: the reported fraction done, 0..1 (progress).
        metrics: other reported numbers (progress).
        exit_code: the exit status (exits; negative: killed by that signal).
        detail: why (failed: the end of its log, stdout and stderr; stopped: the reason).
        checkpoint: the checkpoint left on disk (checkpointed).
        pid: the process id (started).
        after_s: seconds from the process's start to its ``resumed`` status line, or to its first progress
            report when it sends none (resumed).
    """

    kind: JobEventKind
    job_id: str
    time_s: float
    step: int | None = None
    loss: float | None = None
    progress: float | None = None
    metrics: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    exit_code: int | None = None
    detail: str = ""
    checkpoint: CheckpointResult | None = None
    pid: int | None = None
    after_s: float | None = None


class JobEventStream:
    """One subscriber's queue of job events; ``async for`` over it ends when the supervisor closes.

    Overflow policy: when ``maxsize`` events are waiting a new *progress* event is dropped (and counted in
    ``dropped``); lifecycle events (started, checkpointed, completed, failed, stopped) are always queued,
    since each process makes only a few of them.
    """

    def __init__(self, name: str, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"job event stream {name!r}: maxsize must be >= 1, got {maxsize}")
        self.name = name
        self.maxsize = maxsize
        self.dropped = 0
        self._queue: deque[JobEvent | None] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    def offer(self, event: JobEvent) -> bool:
        """Queue ``event`` without blocking; False when it was dropped."""
        if self._closed:
            return False
        if event.kind is JobEventKind.PROGRESS and len(self._queue) >= self.maxsize:
            self.dropped += 1
            return False
        self._queue.append(event)
        self._ready.set()
        return True

    def close(self) -> None:
        """End the iteration once the queued events are consumed."""
        if not self._closed:
            self._closed = True
            self._queue.append(None)
            self._ready.set()

    def qsize(self) -> int:
        """Events waiting."""
        return sum(1 for event in self._queue if event is not None)

    async def get(self) -> JobEvent | None:
        """The next event, waiting for one; None once the stream is closed and drained."""
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        event = self._queue.popleft()
        if event is None:
            self._queue.appendleft(None)  # stay closed for every later get()
        return event

    async def __aiter__(self) -> AsyncIterator[JobEvent]:
        while (event := await self.get()) is not None:
            yield event


class _BadLineError(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _finite(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _BadLineError(f"bad_{what}")
    return float(value)


def _parse_status(line: bytes) -> dict[str, Any]:
    """One status line as a checked dict; raises _BadLineError with a short reason."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        raise _BadLineError("not_json") from None
    if not isinstance(message, dict):
        raise _BadLineError("not_object")
    kind = message.get("type")
    if kind not in {"hello", "resumed", "progress", "checkpointed", "completed"}:
        raise _BadLineError("unknown_type")
    step = message.get("step")
    if step is not None and (
        isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= _MAX_STEP
    ):
        raise _BadLineError("bad_step")
    if kind != "progress":
        return message
    if step is None:
        raise _BadLineError("bad_step")
    fraction = _finite(message.get("progress"), "progress")
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        raise _BadLineError("bad_progress")
    metrics = message.get("metrics", {})
    if not isinstance(metrics, dict) or len(metrics) > MAX_METRICS:
        raise _BadLineError("bad_metrics")
    clean: dict[str, float] = {}
    for name, value in metrics.items():
        if len(name) > MAX_METRIC_NAME_CHARS or not name.isprintable():
            raise _BadLineError("bad_metrics")
        number = _finite(value, "metrics")
        if number is None:
            raise _BadLineError("bad_metrics")
        clean[name] = number
    return {
        "type": kind,
        "step": step,
        "loss": _finite(message.get("loss"), "loss"),
        "progress": fraction,
        "metrics": MappingProxyType(clean),
    }


def checkpoint_size(checkpoint_dir: Path) -> tuple[int, int]:
    """Bytes and count of the regular files under ``checkpoint_dir`` (links are not followed).

    Args:
        checkpoint_dir: a checkpoint directory.

    Returns:
        ``(size_bytes, file_count)``; ``(0, 0)`` when the directory does not exist.
    """
    size_bytes = 0
    file_count = 0
    for dirpath, _dirnames, filenames in os.walk(checkpoint_dir):
        for name in filenames:
            info = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(info.st_mode):
                size_bytes += info.st_size
                file_count += 1
    return size_bytes, file_count


def leftover_job_processes(job_id: str, checkpoint_dir: Path, own: Set[int] = frozenset()) -> list[int]:
    """Live processes (Linux ``/proc``) started for ``job_id`` with ``checkpoint_dir``, except ``own``.

    A job's processes carry ``GREENFERRY_JOB_ID`` and ``GREENFERRY_JOB_CHECKPOINT_DIR`` in their environment
    (its children inherit them), which names them across daemon restarts without a pid file to go stale.
    Processes this user may not read are not this daemon's jobs and are skipped; without ``/proc``, none.
    """
    wanted = {f"{ENV_JOB_ID}={job_id}".encode(), f"{ENV_CHECKPOINT_DIR}={checkpoint_dir}".encode()}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    found = []
    for name in names:
        if not name.isdigit() or int(name) in own or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                environ = set(handle.read().split(b"\0"))
        except OSError:
            continue
        if wanted <= environ and _alive(int(name)):
            found.append(int(name))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not reaped yet, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")


async def _read_pipe(fd: int) -> AsyncIterator[bytes]:
    """The chunks read from the pipe ``fd`` (which it takes over and closes) until end of file."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_READ_BYTES)
    pipe = os.fdopen(fd, "rb", buffering=0)
    try:
        transport, _protocol = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
    except BaseException:
        pipe.close()
        raise
    try:
        while data := await reader.read(_READ_BYTES):
            yield data
    finally:
        transport.close()


def rotate_log(path: Path, max_bytes: int) -> bool:
    """Copy-truncate ``path`` once it is larger than ``max_bytes``: its last ``max_bytes`` go to ``<path>.1``.

    The job keeps its file descriptor (opened ``O_APPEND``), so after the truncation its writes land at the
    new end of the file. What it writes between the copy and the truncation is lost, as with logrotate's
    ``copytruncate``. Blocking: call it from a thread in async code.

    Returns:
        Whether the file was rotated.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size <= max_bytes:
        return False
    rotated = path.with_name(path.name + ".1")
    partial = path.with_name(path.name + ".1.partial")
    with open(path, "rb") as source, open(partial, "wb") as copy:
        source.seek(size - max_bytes)
        while block := source.read(min(_READ_BYTES, max_bytes - copy.tell())):
            copy.write(block)
    os.replace(partial, rotated)
    os.truncate(path, 0)
    return True


def _log_tail(path: Path, start_bytes: int, tail_bytes: int) -> str:
    """The last ``tail_bytes`` of ``path`` written since offset ``start_bytes`` (this run's output)."""
    try:
        with open(path, "rb") as log:
            size = os.fstat(log.fileno()).st_size
            log.seek(max(min(start_bytes, size), size - tail_bytes))
            return log.read(tail_bytes).decode("utf-8", errors="replace")
    except OSError:
        return ""


@dataclass(eq=False)
class _Process:
    spec: JobSpec
    job_dir: Path
    checkpoint_dir: Path
    proc: asyncio.subprocess.Process
    control_fd: int | None
    status_fd: int | None  # the read end, until its reader owns it
    log_path: Path
    log_start_bytes: int  # where this run's output starts in the log (0 once it was rotated)
    exited: asyncio.Future[JobEvent]
    started_m: float
    resumed: asyncio.Future[float | None]  # seconds from the start to the resumed signal; None: exited first
    progress: JobProgress | None = None
    bad_lines: dict[str, int] = field(default_factory=dict)
    hello: bool = False
    checkpoint_requested_m: float | None = None
    kill_reason: str | None = None
    task: asyncio.Task[None] | None = None

    @property
    def job_id(self) -> str:
        return self.spec.job_id


class JobSupervisor:
    """Starts and supervises job processes; an async context manager (see the module docstring).

    Args:
        clock: timestamps and durations (default: the real clock). Timeouts are event-loop seconds.
        shutdown_timeout_s: on exit, the longest the supervisor waits for jobs to checkpoint before it kills
            them (each job also gets no more than its spec's ``checkpoint_timeout_s``).
        checkpoint_on_exit: False kills running jobs on exit instead of asking them to checkpoint.
        log_max_bytes: the job log is copy-truncated to ``job.log.1`` past this size (checked every
            ``log_check_interval_s`` and when the job exits, so it may grow by what the job writes meanwhile).
        log_check_interval_s: how often a running job's log size is checked.
        max_status_line_bytes: longer status lines are dropped (and counted) without being buffered.
        log_tail_bytes: how much of the end of the job's log (its stdout and stderr) a failure event carries.
        drain_timeout_s: after a job exits, how long its status pipe may stay open (held by something it
            spawned in another session) before the supervisor stops reading it.
        on_event: called with every event, synchronously (exceptions are logged).
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        shutdown_timeout_s: float = 10.0,
        checkpoint_on_exit: bool = True,
        log_max_bytes: int = 64 * 1024 * 1024,
        log_check_interval_s: float = 1.0,
        max_status_line_bytes: int = 64 * 1024,
        log_tail_bytes: int = 4096,
        drain_timeout_s: float = 2.0,
        on_event: Callable[[JobEvent], None] | None = None,
    ) -> None:
        if log_max_bytes < 1:
            raise ValueError(f"log_max_bytes must be >= 1, got {log_max_bytes!r}")
        if not log_check_interval_s > 0:
            raise ValueError(f"log_check_interval_s must be > 0, got {log_check_interval_s!r}")
        if not shutdown_timeout_s > 0:
            raise ValueError(f"shutdown_timeout_s must be > 0, got {shutdown_timeout_s!r}")
        if max_status_line_bytes < 256:
            raise ValueError(f"max_status_line_bytes must be >= 256, got {max_status_line_bytes!r}")
        self.clock: Clock = clock if clock is not None else RealClock()
        self.shutdown_timeout_s = shutdown_timeout_s
        self.checkpoint_on_exit = checkpoint_on_exit
        self.log_max_bytes = log_max_bytes
        self.log_check_interval_s = log_check_interval_s
        self.max_status_line_bytes = max_status_line_bytes
        self.log_tail_bytes = log_tail_bytes
        self.drain_timeout_s = drain_timeout_s
        self.on_event = on_event
        self.bad_status_lines_total = 0
        self._jobs: dict[str, _Process] = {}
        self._last_exit: dict[str, JobEvent] = {}
        self._streams: list[JobEventStream] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = False
        self._closing = False

    # ------------------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        try:
            jobs = [job for job in self._jobs.values() if not job.exited.done()]
            if jobs:
                logger.info("stopping %d job(s): %s", len(jobs), ", ".join(j.job_id for j in jobs))
                await asyncio.gather(*(self._checkpoint_or_kill(job) for job in jobs))
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            for job in self._jobs.values():  # only after a cancellation got in the way above
                if not job.exited.done():
                    self._kill_group(job, "supervisor closed")
            self._open = False
            for stream in self._streams:
                stream.close()

    async def _checkpoint_or_kill(self, job: _Process) -> None:
        if not self.checkpoint_on_exit:
            await self._kill_and_wait(job, "daemon stopping")
            return
        timeout_s = min(self.shutdown_timeout_s, job.spec.checkpoint_timeout_s)
        try:
            result = await self.request_checkpoint(job.job_id, timeout_s)
            logger.info("job %s checkpointed at step %d on shutdown", job.job_id, result.step)
        except JobSupervisorError as err:
            logger.warning("job %s: no checkpoint on shutdown: %s", job.job_id, err)

    # ------------------------------------------------------------------------------ public API

    async def start(self, spec: JobSpec, job_dir: Path, *, resume: bool) -> None:
        """Start the job's process in ``job_dir`` (created if needed); it checkpoints to ``checkpoint/``.

        Args:
            spec: what to run.
            job_dir: the job's directory on this node (``<jobs_root>/<job_id>``).
            resume: resume from the checkpoint in ``job_dir/checkpoint`` if there is one (a job that never
                checkpointed starts from the beginning); False starts fresh whatever is there.

        Raises:
            JobAlreadyRunningError: the job's process is still running.
            JobStartError: the process could not be started (the message names the program and why).
            RuntimeError: the supervisor is not open (use ``async with``) or is closing.
        """
        if not self._open or self._closing:
            raise RuntimeError("JobSupervisor.start() outside 'async with' or while closing")
        job_id = spec.job_id
        if job_id in self._jobs and not self._jobs[job_id].exited.done():
            raise JobAlreadyRunningError(
                f"job {job_id} is already running (pid {self._jobs[job_id].proc.pid})"
            )
        job_dir = Path(job_dir).absolute()
        checkpoint_dir = job_dir / CHECKPOINT_DIR_NAME
        await self._outlive_leftovers(spec, checkpoint_dir)
        try:
            job_dir.mkdir(parents=True, exist_ok=True)
            found = await asyncio.to_thread(recover_checkpoint, checkpoint_dir)
        except OSError as err:
            raise JobStartError(f"job {job_id}: cannot prepare {job_dir}: {err}") from err
        if resume and found is None:
            logger.warning(
                "job %s: asked to resume but %s holds no checkpoint; it starts over", job_id, job_dir
            )
        env = {key: value for key, value in os.environ.items() if not key.startswith("GREENFERRY_JOB_")}
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(spec.env)
        control_r, control_w = os.pipe()
        status_r, status_w = os.pipe()
        env.update(
            {
                ENV_JOB_ID: job_id,
                ENV_CHECKPOINT_DIR: str(checkpoint_dir),
                ENV_CONTROL_FD: str(control_r),
                ENV_STATUS_FD: str(status_w),
                ENV_RESUME: "1" if resume else "0",
            }
        )
        log_path = job_dir / LOG_NAME
        log_fd: int | None = None
        try:
            # The job's stdout and stderr are this file (not a pipe through the daemon): it keeps writing
            # when the daemon dies. O_APPEND: every write lands at the end, also after a rotation.
            log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.write(
                log_fd,
                _LOG_MARK
                + f"{job_id} ({'resume' if resume else 'fresh'}) at "
                f"{self.clock.now_s():.3f}: {' '.join(spec.command)[:1000]}\n".encode(),
            )
            log_start_bytes = os.fstat(log_fd).st_size
            proc = await asyncio.create_subprocess_exec(
                *spec.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                cwd=spec.working_dir or job_dir,
                env=env,
                pass_fds=(control_r, status_w),
                start_new_session=True,
            )
        except (OSError, ValueError) as err:
            for fd in (control_w, status_r):
                os.close(fd)
            raise JobStartError(f"job {job_id}: cannot start {spec.command[0]!r}: {err}") from err
        finally:
            for fd in (control_r, status_w, *([log_fd] if log_fd is not None else [])):
                os.close(fd)
        os.set_blocking(control_w, False)
        job = _Process(
            spec=spec,
            job_dir=job_dir,
            checkpoint_dir=checkpoint_dir,
            proc=proc,
            control_fd=control_w,
            status_fd=status_r,
            log_path=log_path,
            log_start_bytes=log_start_bytes,
            exited=asyncio.get_running_loop().create_future(),
            started_m=self.clock.monotonic_s(),
            resumed=asyncio.get_running_loop().create_future(),
        )
        self._jobs[job_id] = job
        self._last_exit.pop(job_id, None)
        task = asyncio.get_running_loop().create_task(self._watch(job), name=f"greenferry-job-{job_id}")
        job.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        logger.info("job %s started: pid %d in %s", job_id, proc.pid, job_dir)
        self._emit(JobEvent(JobEventKind.STARTED, job_id, self.clock.now_s(), pid=proc.pid))

    async def _outlive_leftovers(self, spec: JobSpec, checkpoint_dir: Path) -> None:
        """Wait for processes of this job that a previous daemon left (bounded by its checkpoint timeout)."""
        own = {job.proc.pid for job in self._jobs.values() if not job.exited.done()}
        pids = await asyncio.to_thread(leftover_job_processes, spec.job_id, checkpoint_dir, own)
        if not pids:
            return
        logger.warning(
            "job %s: process(es) %s of a previous daemon still run; waiting up to %.1f s for them to exit",
            spec.job_id,
            ", ".join(map(str, pids)),
            spec.checkpoint_timeout_s,
        )
        deadline_m = self.clock.monotonic_s() + spec.checkpoint_timeout_s
        while pids and self.clock.monotonic_s() < deadline_m:
            await asyncio.sleep(0.05)
            pids = [pid for pid in pids if _alive(pid)]
        for pid in pids:
            logger.warning("job %s: killing process %d left by a previous daemon", spec.job_id, pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for _ in range(100):  # a killed process leaves the table once it is reaped
            pids = [pid for pid in pids if _alive(pid)]
            if not pids:
                return
            await asyncio.sleep(0.05)
        raise JobStartError(f"job {spec.job_id}: processes {pids} of a previous daemon do not go away")

    async def request_checkpoint(self, job_id: str, timeout_s: float) -> CheckpointResult:
        """Ask the job to checkpoint and exit; wait for it.

        Args:
            job_id: a running job.
            timeout_s: how long the job may take; then its process group is killed.

        Returns:
            The checkpoint it left, with its size measured on disk.

        Raises:
            JobNotRunningError: the job has no running process.
            CheckpointTimeoutError: it did not exit in time; it was killed and the previous checkpoint (if
                any) is intact.
            CheckpointFailedError: it exited without a new checkpoint (completed, failed or stopped).
        """
        if not timeout_s > 0:
            raise ValueError(f"request_checkpoint({job_id!r}): timeout_s must be > 0, got {timeout_s!r}")
        job = self._running(job_id)
        if job.checkpoint_requested_m is None:
            job.checkpoint_requested_m = self.clock.monotonic_s()
            self._send_control(job, CONTROL_CHECKPOINT + b"\n")
            logger.info("job %s: checkpoint requested (timeout %.1f s)", job_id, timeout_s)
        try:
            async with asyncio.timeout(timeout_s):
                event = await asyncio.shield(job.exited)
        except TimeoutError:
            event = await self._kill_and_wait(job, f"no checkpoint within {timeout_s:g} s")
            if event.kind is not JobEventKind.CHECKPOINTED:
                raise CheckpointTimeoutError(
                    f"job {job_id} did not checkpoint within {timeout_s:g} s; "
                    "killed, its previous checkpoint kept"
                ) from None
        if event.kind is JobEventKind.CHECKPOINTED and event.checkpoint is not None:
            return event.checkpoint
        raise CheckpointFailedError(
            f"job {job_id} exited without a checkpoint: {event.kind.value}, exit code {event.exit_code}"
            + (f": {event.detail[-500:]}" if event.detail else ""),
            event,
        )

    async def stop(self, job_id: str) -> JobEvent | None:
        """Kill the job's process group now (no checkpoint) and wait for it to exit.

        Returns:
            The job's exit event (kind stopped, or how it ended if it exited first); None if it never ran.
        """
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.exited.done():
            return job.exited.result()
        return await self._kill_and_wait(job, "stopped by the daemon")

    async def wait(self, job_id: str) -> JobEvent:
        """Wait for the job's process to exit and return its exit event.

        Raises:
            JobNotRunningError: the job never ran under this supervisor.
        """
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotRunningError(f"job {job_id} has not run here")
        return await asyncio.shield(job.exited)

    async def wait_resumed(self, job_id: str, timeout_s: float) -> float | None:
        """Wait (at most ``timeout_s``) until the job's current process says it resumed.

        The signal is the SDK's ``resumed`` status line; a job that sends none resumed at its first progress
        report, and a job that reports nothing never says (e.g. a program without the SDK).

        Returns:
            Seconds from the process's start to that signal; None when it did not come in time, the process
            exited first, or the job never ran here.
        """
        job = self._jobs.get(job_id)
        if job is None:
            return None
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(job.resumed)
        except TimeoutError:
            return None

    def progress(self, job_id: str) -> JobProgress | None:
        """The last progress the job reported (in its current or last run), or None."""
        job = self._jobs.get(job_id)
        return job.progress if job is not None else None

    def is_running(self, job_id: str) -> bool:
        """True while the job's process has not exited."""
        job = self._jobs.get(job_id)
        return job is not None and not job.exited.done()

    def running(self) -> list[str]:
        """Ids of the jobs whose processes are running."""
        return [job_id for job_id, job in self._jobs.items() if not job.exited.done()]

    def pid(self, job_id: str) -> int | None:
        """The process id (also its process-group id) of the job's current or last process."""
        job = self._jobs.get(job_id)
        return job.proc.pid if job is not None else None

    def bad_status_lines(self, job_id: str) -> Mapping[str, int]:
        """Status lines of the job's current or last run that were ignored, by reason."""
        job = self._jobs.get(job_id)
        return MappingProxyType(dict(job.bad_lines)) if job is not None else MappingProxyType({})

    def last_exit(self, job_id: str) -> JobEvent | None:
        """How the job's last process ended, or None."""
        return self._last_exit.get(job_id)

    def events(self, name: str = "events", maxsize: int = 1000) -> JobEventStream:
        """A new subscription to every job event from now on (see :class:`JobEventStream`)."""
        stream = JobEventStream(name, maxsize)
        if not self._open and self._closing:
            stream.close()
        self._streams.append(stream)
        return stream

    def unsubscribe(self, stream: JobEventStream) -> None:
        """Stop delivering to ``stream`` and end its iteration."""
        with contextlib.suppress(ValueError):
            self._streams.remove(stream)
        stream.close()

    # ------------------------------------------------------------------------------ internals

    def _running(self, job_id: str) -> _Process:
        job = self._jobs.get(job_id)
        if job is None or job.exited.done():
            raise JobNotRunningError(f"job {job_id} is not running here")
        return job

    def _emit(self, event: JobEvent) -> None:
        for stream in self._streams:
            if not stream.offer(event) and stream.dropped in (1, 10, 100, 1000, 10_000):
                logger.warning("job event subscriber %s is behind: %d dropped", stream.name, stream.dropped)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # a subscriber's bug must not stop supervision
                logger.exception("job event callback failed on %s %s", event.kind.value, event.job_id)

    def _send_control(self, job: _Process, data: bytes) -> None:
        if job.control_fd is None:
            return
        try:
            os.write(job.control_fd, data)
        except BlockingIOError:
            logger.warning("job %s: control pipe full (the job does not read it)", job.job_id)
        except OSError as err:  # EPIPE: it is exiting
            logger.debug("job %s: control pipe closed: %s", job.job_id, err)

    def _kill_group(self, job: _Process, reason: str) -> None:
        if job.kill_reason is None and not job.exited.done():
            job.kill_reason = reason
        try:
            os.killpg(job.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the group is empty: nothing left to kill
        except PermissionError as err:  # the id was reused by someone else's group
            logger.warning("job %s: cannot kill process group %d: %s", job.job_id, job.proc.pid, err)

    async def _kill_and_wait(self, job: _Process, reason: str) -> JobEvent:
        self._kill_group(job, reason)
        return await asyncio.shield(job.exited)

    async def _watch(self, job: _Process) -> None:
        """Read the job's status pipe and keep its log bounded until it exits, then decide how it ended."""
        loop = asyncio.get_running_loop()
        readers: list[asyncio.Task[None]] = []
        rotator: asyncio.Task[None] | None = None
        try:
            status_fd, job.status_fd = job.status_fd, None  # owned by the reader now
            assert status_fd is not None
            readers.append(loop.create_task(self._read_status(job, status_fd)))
            rotator = loop.create_task(self._rotate_while_running(job))
            returncode = await job.proc.wait()
            self._reap_group(job)
            _done, pending = await asyncio.wait(readers, timeout=self.drain_timeout_s)
            for task in pending:
                task.cancel()
            rotator.cancel()
            await asyncio.gather(*readers, rotator, return_exceptions=True)
            event = await self._outcome(job, returncode)
            await self._rotate(job)
        except BaseException as err:
            for task in [*readers, *([rotator] if rotator is not None else [])]:
                task.cancel()
            self._kill_group(job, "supervisor error")
            if not job.exited.done():
                job.exited.set_exception(JobNotRunningError(f"job {job.job_id}: supervision ended: {err!r}"))
                job.exited.exception()  # retrieved: nobody may be waiting
            if isinstance(err, Exception):
                logger.exception("job %s: supervision failed", job.job_id)
                return
            raise
        finally:
            if not job.resumed.done():
                job.resumed.set_result(None)
            for fd in (job.status_fd, job.control_fd):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            job.status_fd = None
            job.control_fd = None
        self._last_exit[job.job_id] = event
        job.exited.set_result(event)
        self._emit(event)

    def _reap_group(self, job: _Process) -> None:
        """Kill whatever the job left running in its process group (its leader has exited)."""
        try:
            os.killpg(job.proc.pid, signal.SIGKILL)
            if job.kill_reason is None:
                logger.info("job %s: killed processes it left behind", job.job_id)
        except ProcessLookupError:
            pass
        except PermissionError as err:
            logger.warning("job %s: cannot kill process group %d: %s", job.job_id, job.proc.pid, err)

    async def _outcome(self, job: _Process, returncode: int) -> JobEvent:
        now_s = self.clock.now_s()
        last_step = job.progress.step if job.progress is not None else None
        # A save killed between its two renames leaves the previous checkpoint aside: put it back.
        await asyncio.to_thread(recover_checkpoint, job.checkpoint_dir)
        if returncode == EXIT_CHECKPOINTED:
            meta = await asyncio.to_thread(read_meta, job.checkpoint_dir)
            if meta is not None:
                size_bytes, file_count = await asyncio.to_thread(checkpoint_size, job.checkpoint_dir)
                requested_m = job.checkpoint_requested_m
                result = CheckpointResult(
                    job.checkpoint_dir,
                    size_bytes,
                    int(meta["step"]),
                    file_count,
                    None if requested_m is None else self.clock.monotonic_s() - requested_m,
                )
                logger.info(
                    "job %s checkpointed at step %d: %d bytes in %d files",
                    job.job_id,
                    result.step,
                    size_bytes,
                    file_count,
                )
                return JobEvent(
                    JobEventKind.CHECKPOINTED,
                    job.job_id,
                    now_s,
                    step=result.step,
                    exit_code=returncode,
                    checkpoint=result,
                )
            detail = f"exited {EXIT_CHECKPOINTED} (checkpointed) but {job.checkpoint_dir} holds no checkpoint"
            logger.warning("job %s: %s", job.job_id, detail)
            return JobEvent(
                JobEventKind.FAILED, job.job_id, now_s, step=last_step, exit_code=returncode, detail=detail
            )
        if job.kill_reason is not None:
            logger.info("job %s stopped: %s", job.job_id, job.kill_reason)
            return JobEvent(
                JobEventKind.STOPPED,
                job.job_id,
                now_s,
                step=last_step,
                exit_code=returncode,
                detail=job.kill_reason,
            )
        if returncode == EXIT_COMPLETED:
            logger.info("job %s completed", job.job_id)
            return JobEvent(JobEventKind.COMPLETED, job.job_id, now_s, step=last_step, exit_code=returncode)
        tail = await asyncio.to_thread(_log_tail, job.log_path, job.log_start_bytes, self.log_tail_bytes)
        logger.warning("job %s failed with exit code %d", job.job_id, returncode)
        return JobEvent(
            JobEventKind.FAILED, job.job_id, now_s, step=last_step, exit_code=returncode, detail=tail
        )

    async def _rotate_while_running(self, job: _Process) -> None:
        while True:
            await asyncio.sleep(self.log_check_interval_s)
            await self._rotate(job)

    async def _rotate(self, job: _Process) -> None:
        """Copy-truncate the job's log once it is past ``log_max_bytes``."""
        try:
            if await asyncio.to_thread(rotate_log, job.log_path, self.log_max_bytes):
                job.log_start_bytes = 0
        except OSError as err:
            logger.warning("job %s: log %s not rotated: %s", job.job_id, job.log_path, err)

    async def _read_status(self, job: _Process, fd: int) -> None:
        """Read status lines until the pipe closes: bounded line length, every bad line counted."""
        try:
            buffer = bytearray()
            overlong = False
            async for data in _read_pipe(fd):
                buffer += data
                while (newline := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:newline])
                    del buffer[: newline + 1]
                    if overlong:
                        overlong = False  # the end of a line already counted
                    elif len(line) > self.max_status_line_bytes:
                        self._bad_line(job, "too_long")
                    elif line.strip():
                        self._status_line(job, line)
                if len(buffer) > self.max_status_line_bytes:
                    if not overlong:
                        self._bad_line(job, "too_long")
                    overlong = True
                    buffer.clear()
            if buffer and not overlong:
                self._bad_line(job, "unterminated")
        except Exception:  # the top of this job's status loop: the job keeps running, unread
            logger.exception("job %s: status channel failed", job.job_id)

    def _resumed(self, job: _Process) -> None:
        if job.resumed.done():
            return
        after_s = self.clock.monotonic_s() - job.started_m
        job.resumed.set_result(after_s)
        logger.debug("job %s resumed %.3f s after its start", job.job_id, after_s)
        self._emit(JobEvent(JobEventKind.RESUMED, job.job_id, self.clock.now_s(), after_s=after_s))

    def _bad_line(self, job: _Process, reason: str) -> None:
        count = sum(job.bad_lines.values())
        job.bad_lines[reason] = job.bad_lines.get(reason, 0) + 1
        self.bad_status_lines_total += 1
        if count < _LOGGED_BAD_LINES:
            logger.warning("job %s: status line ignored (%s)", job.job_id, reason)
        elif count == _LOGGED_BAD_LINES:
            logger.warning("job %s: more bad status lines; counting them without logging", job.job_id)

    def _status_line(self, job: _Process, line: bytes) -> None:
        try:
            message = _parse_status(line)
        except _BadLineError as err:
            self._bad_line(job, err.reason)
            return
        kind = message["type"]
        if kind == "hello":
            job.hello = True
            logger.debug("job %s: SDK connected (%s)", job.job_id, message)
        elif kind == "resumed":
            self._resumed(job)
        elif kind == "progress":
            self._resumed(job)  # a job that does not say it resumed has, once it reports progress
            now_s = self.clock.now_s()
            job.progress = JobProgress(
                message["step"], message["loss"], message["progress"], message["metrics"], now_s
            )
            self._emit(
                JobEvent(
                    JobEventKind.PROGRESS,
                    job.job_id,
                    now_s,
                    step=message["step"],
                    loss=message["loss"],
                    progress=message["progress"],
                    metrics=message["metrics"],
                )
            )
        else:
            logger.debug("job %s says %s at step %s", job.job_id, kind, message.get("step"))
