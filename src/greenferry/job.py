"""greenferry.job: the SDK a training loop uses to run under greenferry (standard library only).

A job is an ordinary program. It calls :func:`connect` once, resumes from :meth:`Job.resume_path` when there
is a checkpoint, asks :meth:`Job.checkpoint_requested` every step, reports progress with :meth:`Job.report`,
and when asked it saves with :meth:`Job.saving` (or :meth:`Job.save`) and leaves with
:meth:`Job.exit_checkpointed`. It runs the same way without a daemon: then nothing ever asks for a checkpoint
(except SIGTERM) and checkpoints go to ``./checkpoint``::

    import greenferry.job

    job = greenferry.job.connect()
    state = load(job.resume_path()) if job.resume_path() else fresh_state()
    job.resumed()  # optional: the first checkpoint_requested() or report() says it too
    while state.step < total_steps:
        if job.checkpoint_requested():
            with job.saving(step=state.step) as tmp_dir:
                write_state(state, tmp_dir)
            job.exit_checkpointed()
        loss = train_one_step(state)
        job.report(step=state.step, loss=loss, progress=state.step / total_steps)

The control channel (protocol 1). The daemon sets these environment variables:

- ``GREENFERRY_JOB_ID``: the job's id.
- ``GREENFERRY_JOB_CHECKPOINT_DIR``: where the current checkpoint lives (``<job_dir>/checkpoint``); it wins
  over the ``checkpoint_dir`` argument of :func:`connect`.
- ``GREENFERRY_JOB_CONTROL_FD``: an inherited pipe, daemon to job. The only command is ``b"checkpoint\\n"``
  (save and exit); unknown lines are ignored. End of file means the daemon is gone: the job is asked to
  checkpoint, so no job outlives its daemon by more than one step and a save.
- ``GREENFERRY_JOB_STATUS_FD``: an inherited pipe, job to daemon: one JSON object per line, at most
  :data:`MAX_STATUS_LINE_BYTES` bytes (one atomic pipe write), with a ``"type"`` of ``"hello"``
  (``protocol``, ``pid``, ``resume_step``), ``"resumed"`` (``step``: the job has loaded its checkpoint, or
  set itself up fresh with ``null``, and trains from now on; sent once, by :meth:`Job.resumed` or at the
  latest by the first :meth:`Job.checkpoint_requested` or :meth:`Job.report`), ``"progress"`` (``step``,
  ``loss``, ``progress`` 0..1, ``metrics``), ``"checkpointed"`` (``step``, ``path``, ``size_bytes``) or
  ``"completed"`` (``step``). The daemon times a restore (after a migration) until ``"resumed"``.
  Writes never block the training loop: a line the daemon has no room for is dropped.
- ``GREENFERRY_JOB_RESUME``: ``"1"`` resume from the checkpoint if there is one, ``"0"`` start fresh.

SIGTERM (from systemd, docker or kill) is a checkpoint request too, when the program has not installed its
own handler. Exit codes: :data:`EXIT_COMPLETED` (0) the job finished; :data:`EXIT_CHECKPOINTED` (75,
EX_TEMPFAIL) it saved a checkpoint and wants to be resumed; anything else is a failure.

Checkpoint layout, for checkpoint directory ``C``: ``C`` holds the last complete checkpoint (the job's files
plus :data:`META_NAME`, written last). A save writes into ``C.parent/.C.tmp-<pid>-<token>``, fsyncs every
file and directory, then renames ``C`` to ``C.parent/.C.prev``, the new directory to ``C``, and only then
removes ``.C.prev``. :func:`recover_checkpoint` repairs a save that was killed half-way: a ``C`` without
its meta file is not a checkpoint, and a complete ``.C.prev`` is put back.
"""

from __future__ import annotations

import contextlib
import json
import math
import operator
import os
import secrets
import shutil
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

__all__ = [
    "CONTROL_CHECKPOINT",
    "ENV_CHECKPOINT_DIR",
    "ENV_CONTROL_FD",
    "ENV_JOB_ID",
    "ENV_RESUME",
    "ENV_STATUS_FD",
    "EXIT_CHECKPOINTED",
    "EXIT_COMPLETED",
    "MAX_STATUS_LINE_BYTES",
    "META_NAME",
    "PROTOCOL_VERSION",
    "CheckpointInfo",
    "Job",
    "JobSDKError",
    "connect",
    "is_complete",
    "read_meta",
    "recover_checkpoint",
]

PROTOCOL_VERSION = 1
EXIT_COMPLETED = 0
EXIT_CHECKPOINTED = 75  # EX_TEMPFAIL: "try again later", from a checkpoint
ENV_JOB_ID = "GREENFERRY_JOB_ID"
ENV_CHECKPOINT_DIR = "GREENFERRY_JOB_CHECKPOINT_DIR"
ENV_CONTROL_FD = "GREENFERRY_JOB_CONTROL_FD"
ENV_STATUS_FD = "GREENFERRY_JOB_STATUS_FD"
ENV_RESUME = "GREENFERRY_JOB_RESUME"
CONTROL_CHECKPOINT = b"checkpoint"
META_NAME = "greenferry-checkpoint.json"
META_FORMAT = 1
MAX_STATUS_LINE_BYTES = 4096  # PIPE_BUF on Linux: a write this size is never interleaved or split
MAX_METRICS = 32
MAX_METRIC_NAME_CHARS = 64
_MAX_META_BYTES = 16 * 1024 * 1024
_STANDALONE_ID = "standalone"


class JobSDKError(RuntimeError):
    """The job used the SDK wrongly or its environment is broken; the message says what and where."""


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """A complete checkpoint on disk.

    Attributes:
        path: the checkpoint directory.
        step: the training step it holds.
        size_bytes: bytes of the files in it (the meta file included).
        created_s: when it was written (UTC epoch seconds).
    """

    path: Path
    step: int
    size_bytes: int
    created_s: float


# ----------------------------------------------------------------------------------- checkpoint area


def _prev_path(checkpoint_dir: Path) -> Path:
    return checkpoint_dir.parent / f".{checkpoint_dir.name}.prev"


def _tmp_prefix(checkpoint_dir: Path) -> str:
    return f".{checkpoint_dir.name}.tmp-"


def read_meta(checkpoint_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The meta file of a complete checkpoint, or None when ``checkpoint_dir`` is not one.

    Args:
        checkpoint_dir: a checkpoint directory.

    Returns:
        The parsed meta object (``format``, ``job_id``, ``step``, ``created_s``, ``size_bytes``, ``files``,
        ``extra``), or None when the directory or its meta file is missing, unreadable or malformed.
    """
    path = Path(checkpoint_dir) / META_NAME
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_META_BYTES:
            return None
        meta = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        return None
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return None
    return meta


def is_complete(checkpoint_dir: str | os.PathLike[str]) -> bool:
    """True when ``checkpoint_dir`` holds a complete checkpoint (its meta file was written)."""
    return read_meta(checkpoint_dir) is not None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def recover_checkpoint(checkpoint_dir: str | os.PathLike[str]) -> Path | None:
    """Repair the checkpoint area after an interrupted save; return the complete checkpoint, if any.

    Call it only while no process is saving into this area (the SDK calls it in :func:`connect`, the daemon
    before it starts a job and after the job exits). Leftover temporary directories are removed.

    Args:
        checkpoint_dir: the checkpoint directory (``<job_dir>/checkpoint``).

    Returns:
        ``checkpoint_dir`` when it (now) holds a complete checkpoint, else None.
    """
    current = Path(checkpoint_dir)
    prev = _prev_path(current)
    parent = current.parent
    if not parent.is_dir():
        return None
    for entry in parent.iterdir():
        if entry.name.startswith(_tmp_prefix(current)):
            _remove_tree(entry)
    if is_complete(current):
        if prev.exists() or prev.is_symlink():
            _remove_tree(prev)  # the swap finished; only its clean-up was interrupted
        return current
    if is_complete(prev):
        if current.exists() or current.is_symlink():
            _remove_tree(current)  # not a checkpoint: no meta file
        prev.rename(current)
        _fsync_dir(parent)
        return current
    return None


def _checkpoint_files(root: Path) -> dict[str, int]:
    """Every regular file under ``root`` with its size; refuses links and special files."""
    files: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in dirnames:
            if (base / name).is_symlink():
                raise JobSDKError(
                    f"checkpoint: {base / name} is a symbolic link (not allowed in a checkpoint)"
                )
        for name in filenames:
            path = base / name
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode):
                raise JobSDKError(f"checkpoint: {path} is not a regular file (links and devices are refused)")
            files[path.relative_to(root).as_posix()] = info.st_size
    return files


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _finite_or_none(value: Any) -> float | None:
    """``value`` as a finite float (numpy and torch scalars included), or None."""
    if value is None or isinstance(value, bool | str | bytes):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _step(value: Any, where: str) -> int:
    """``value`` as a non-negative integer step (numpy integers included)."""
    if isinstance(value, bool):
        raise JobSDKError(f"{where}(step={value!r}): step must be a non-negative integer")
    try:
        step = operator.index(value)
    except TypeError:
        raise JobSDKError(f"{where}(step={value!r}): step must be a non-negative integer") from None
    if step < 0:
        raise JobSDKError(f"{where}(step={value!r}): step must be a non-negative integer")
    return step


# ----------------------------------------------------------------------------------- the job handle


class Job:
    """The running job's side of the control channel; get it from :func:`connect`.

    Args:
        job_id: the job's id.
        checkpoint_dir: the checkpoint directory.
        control_fd: the pipe the daemon sends commands on (None standalone).
        status_fd: the pipe status lines go to (None standalone).
        resume: whether the daemon asked to resume from an existing checkpoint.
        report_interval_s: at most one progress line per this many seconds (monotonic).
    """

    def __init__(
        self,
        job_id: str,
        checkpoint_dir: Path,
        *,
        control_fd: int | None,
        status_fd: int | None,
        resume: bool,
        report_interval_s: float,
    ) -> None:
        self.job_id = job_id
        self.checkpoint_dir = checkpoint_dir
        self.report_interval_s = report_interval_s
        self.dropped_lines = 0
        self._control_fd = control_fd
        self._status_fd = status_fd
        self._control_buffer = b""
        self._requested = threading.Event()
        self._why = ""
        self._last_report_m = -math.inf
        self._last_step: int | None = None
        self._last_checkpoint: CheckpointInfo | None = None
        self._resumed_sent = False
        found = recover_checkpoint(checkpoint_dir)
        self._resume_path = found if resume else None
        self._resume_meta = read_meta(self._resume_path) if self._resume_path is not None else None
        resume_step = self._resume_meta["step"] if self._resume_meta is not None else None
        self._send(
            {"type": "hello", "protocol": PROTOCOL_VERSION, "pid": os.getpid(), "resume_step": resume_step}
        )

    @property
    def managed(self) -> bool:
        """True when a daemon started this process (a control channel is open)."""
        return self._control_fd is not None or self._status_fd is not None

    @property
    def checkpoint_reason(self) -> str:
        """Why a checkpoint was requested ("daemon", "daemon gone", "SIGTERM"), or "" if it was not."""
        return self._why

    @property
    def last_checkpoint(self) -> CheckpointInfo | None:
        """The checkpoint this process saved last (None before its first save)."""
        return self._last_checkpoint

    def resume_path(self) -> Path | None:
        """The checkpoint directory to resume from, or None on a fresh start."""
        return self._resume_path

    def resume_meta(self) -> dict[str, Any] | None:
        """The meta file of :meth:`resume_path` (``step``, ``created_s``, ``extra`` ...), or None."""
        return self._resume_meta

    def resumed(self) -> None:
        """Tell the daemon the job has loaded its checkpoint (or set itself up fresh) and trains from now on.

        Call it when loading is done; the daemon measures a restore until this line. Sent once: later calls
        do nothing, and the first :meth:`checkpoint_requested` or :meth:`report` sends it if the job did not.
        """
        if not self._resumed_sent:
            self._resumed_sent = True
            step = self._resume_meta["step"] if self._resume_meta is not None else None
            self._send({"type": "resumed", "step": step})

    def request_checkpoint(self, reason: str = "self") -> None:
        """Make :meth:`checkpoint_requested` answer True (for a job's own reasons, or a signal handler)."""
        if not self._requested.is_set():
            self._why = reason
            self._requested.set()

    def checkpoint_requested(self) -> bool:
        """True once the daemon (or SIGTERM, or the daemon's disappearance) asked for a checkpoint.

        Non-blocking and cheap (one read on an empty pipe at most): call it every step.
        """
        if not self._resumed_sent:  # back in the training loop: loading is over
            self.resumed()
        if self._requested.is_set():
            return True
        fd = self._control_fd
        if fd is None:
            return False
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:  # end of file: the daemon is gone
            self._close_control()
            self.request_checkpoint("daemon gone")
            return True
        self._control_buffer = (self._control_buffer + data)[-4096:]
        *lines, self._control_buffer = self._control_buffer.split(b"\n")
        if any(line.strip() == CONTROL_CHECKPOINT for line in lines):
            self.request_checkpoint("daemon")
        return self._requested.is_set()

    def report(
        self,
        step: int,
        loss: float | None = None,
        *,
        progress: float | None = None,
        force: bool = False,
        **metrics: float,
    ) -> bool:
        """Report training progress to the daemon, at most once per ``report_interval_s``.

        Args:
            step: the training step just finished (>= 0).
            loss: the step's loss (non-finite values are sent as null).
            progress: fraction of the job done, 0..1, where the job knows its length.
            force: send now, whatever the rate limit.
            **metrics: other numbers (first :data:`MAX_METRICS`; non-numbers and non-finite values dropped).

        Returns:
            True when a line was sent (False when rate-limited, standalone, or the pipe was full).

        Raises:
            JobSDKError: ``step`` is not a non-negative integer.
        """
        step = _step(step, "report")
        if not self._resumed_sent:
            self.resumed()
        self._last_step = step
        now_m = time.monotonic()
        if not force and now_m - self._last_report_m < self.report_interval_s:
            return False
        self._last_report_m = now_m
        clean: dict[str, float] = {}
        for name, value in metrics.items():
            number = _finite_or_none(value)
            if number is not None and len(name) <= MAX_METRIC_NAME_CHARS and len(clean) < MAX_METRICS:
                clean[name] = number
        fraction = _finite_or_none(progress)
        if fraction is not None:
            fraction = min(1.0, max(0.0, fraction))
        line = {"type": "progress", "step": step, "loss": _finite_or_none(loss), "progress": fraction}
        return self._send({**line, "metrics": clean})

    @contextlib.contextmanager
    def saving(self, step: int | None = None, *, extra: Mapping[str, Any] | None = None) -> Iterator[Path]:
        """Write a checkpoint atomically: yields an empty directory to write into.

        When the block ends without an error the files are fsynced, the meta file is written last, and the
        directory replaces the checkpoint; the previous checkpoint is removed only after that. If the block
        raises (or the process dies) the previous checkpoint stays the current one.

        Args:
            step: the step the checkpoint holds (default: the last reported step).
            extra: small JSON-serialisable facts stored in the meta file (``resume_meta()["extra"]``).

        Yields:
            The temporary directory to write the checkpoint's files into.

        Raises:
            JobSDKError: no step is known, the files include links or special files, or the job wrote a
                file named :data:`META_NAME`.
        """
        if step is None:
            if self._last_step is None:
                raise JobSDKError("saving(): give the step, or report() one first")
            step = self._last_step
        step = _step(step, "saving")
        extra_text = json.dumps(dict(extra or {}), sort_keys=True, allow_nan=False)
        current = self.checkpoint_dir
        current.parent.mkdir(parents=True, exist_ok=True)
        tmp = current.parent / f"{_tmp_prefix(current)}{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            yield tmp
            if (tmp / META_NAME).exists():
                raise JobSDKError(f"checkpoint: {META_NAME} is reserved for greenferry's meta file")
            files = _checkpoint_files(tmp)
            _fsync_tree(tmp)
            created_s = time.time()
            meta = {
                "format": META_FORMAT,
                "job_id": self.job_id,
                "step": step,
                "created_s": created_s,
                "size_bytes": sum(files.values()),
                "files": files,
                "extra": json.loads(extra_text),
            }
            meta_bytes = json.dumps(meta, sort_keys=True, indent=1).encode() + b"\n"
            with open(tmp / META_NAME, "xb") as handle:
                handle.write(meta_bytes)
                handle.flush()
                os.fsync(handle.fileno())
            _fsync_dir(tmp)
            prev = _prev_path(current)
            if current.exists() or current.is_symlink():
                if prev.exists() or prev.is_symlink():
                    _remove_tree(prev)
                current.rename(prev)
            tmp.rename(current)
            _fsync_dir(current.parent)
            if prev.exists() or prev.is_symlink():
                _remove_tree(prev)
        except BaseException:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            if not is_complete(current) and is_complete(_prev_path(current)):
                recover_checkpoint(current)  # failed between the two renames: put the previous one back
            raise
        self._last_checkpoint = CheckpointInfo(
            current, step, sum(files.values()) + len(meta_bytes), created_s
        )

    def save(
        self,
        writer: Callable[[Path], object],
        step: int | None = None,
        *,
        extra: Mapping[str, Any] | None = None,
    ) -> CheckpointInfo:
        """Write a checkpoint atomically with ``writer(tmp_dir)``; see :meth:`saving`.

        Args:
            writer: writes the checkpoint's files into the directory it is given.
            step: the step the checkpoint holds (default: the last reported step).
            extra: small JSON-serialisable facts stored in the meta file.

        Returns:
            The checkpoint now on disk.

        Raises:
            JobSDKError: as :meth:`saving`.
        """
        with self.saving(step, extra=extra) as tmp_dir:
            writer(tmp_dir)
        assert self._last_checkpoint is not None
        return self._last_checkpoint

    def exit_checkpointed(self) -> NoReturn:
        """Tell the daemon a checkpoint is on disk and exit with :data:`EXIT_CHECKPOINTED`.

        Raises:
            JobSDKError: there is no complete checkpoint to resume from.
            SystemExit: always otherwise (so ``finally`` blocks and atexit handlers run).
        """
        meta = read_meta(self.checkpoint_dir)
        if meta is None:
            raise JobSDKError(
                f"exit_checkpointed(): no complete checkpoint in {self.checkpoint_dir}; save first"
            )
        self._send(
            {
                "type": "checkpointed",
                "step": meta["step"],
                "path": str(self.checkpoint_dir),
                "size_bytes": meta.get("size_bytes"),
            }
        )
        self.close()
        raise SystemExit(EXIT_CHECKPOINTED)

    def complete(self, step: int | None = None) -> None:
        """Tell the daemon the job finished (then return from main, exit code 0)."""
        self._send(
            {"type": "completed", "step": self._last_step if step is None else _step(step, "complete")}
        )

    def close(self) -> None:
        """Close the control channel (idempotent); flushes stdout and stderr first."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stream.flush()
        self._close_control()
        if self._status_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._status_fd)
            self._status_fd = None

    def _close_control(self) -> None:
        if self._control_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._control_fd)
            self._control_fd = None

    def _send(self, message: Mapping[str, Any]) -> bool:
        fd = self._status_fd
        if fd is None:
            return False
        line = json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\n"
        if len(line) > MAX_STATUS_LINE_BYTES:
            self.dropped_lines += 1
            return False
        try:
            os.write(fd, line)
        except BlockingIOError:
            self.dropped_lines += 1  # the daemon is slow: progress is best effort
            return False
        except OSError:  # EPIPE: the daemon is gone
            with contextlib.suppress(OSError):
                os.close(fd)
            self._status_fd = None
            self.request_checkpoint("daemon gone")
            return False
        return True


# ----------------------------------------------------------------------------------- connect

_connected: list[Job] = []  # at most one: the process's job
_sigterm_handlers: list[Callable[[int, FrameType | None], None]] = []
_connect_lock = threading.Lock()


def _fd_from_env(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None or text == "":
        return None
    try:
        fd = int(text)
    except ValueError:
        raise JobSDKError(f"{name}={text!r} is not a file descriptor number") from None
    if fd < 0:
        raise JobSDKError(f"{name}={text!r} is not a file descriptor number")
    try:
        info = os.fstat(fd)
    except OSError as err:
        raise JobSDKError(f"{name}={fd}: not an open file descriptor ({err.strerror})") from None
    if not stat.S_ISFIFO(info.st_mode) and not stat.S_ISSOCK(info.st_mode):
        raise JobSDKError(f"{name}={fd}: not a pipe")
    os.set_blocking(fd, False)
    os.set_inheritable(fd, False)  # the job's own subprocesses must not hold the daemon's channel
    return fd


def connect(
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    report_interval_s: float = 1.0,
    handle_sigterm: bool = True,
) -> Job:
    """Open the control channel the daemon set up, or run standalone when there is none.

    A second call in the same process returns the same :class:`Job`.

    Args:
        checkpoint_dir: the checkpoint directory when standalone (default ``./checkpoint``); under a daemon
            ``GREENFERRY_JOB_CHECKPOINT_DIR`` wins.
        report_interval_s: at most one progress line per this many seconds.
        handle_sigterm: treat SIGTERM as a checkpoint request (only if SIGTERM still has its default
            handler and this is the main thread).

    Returns:
        The job handle.

    Raises:
        JobSDKError: a ``GREENFERRY_JOB_*`` variable is malformed (names the variable).
    """
    with _connect_lock:
        if _connected:
            return _connected[0]
        if not report_interval_s >= 0:
            raise JobSDKError(f"connect(report_interval_s={report_interval_s!r}): must be >= 0")
        control_fd = _fd_from_env(ENV_CONTROL_FD)
        status_fd = _fd_from_env(ENV_STATUS_FD)
        env_dir = os.environ.get(ENV_CHECKPOINT_DIR)
        if env_dir:
            directory = Path(env_dir)
            if not directory.is_absolute():
                raise JobSDKError(f"{ENV_CHECKPOINT_DIR}={env_dir!r} must be an absolute path")
        else:
            directory = Path(checkpoint_dir if checkpoint_dir is not None else "checkpoint").absolute()
        resume_text = os.environ.get(ENV_RESUME, "1")
        if resume_text not in {"0", "1"}:
            raise JobSDKError(f"{ENV_RESUME}={resume_text!r} must be 0 or 1")
        job = Job(
            os.environ.get(ENV_JOB_ID) or _STANDALONE_ID,
            directory,
            control_fd=control_fd,
            status_fd=status_fd,
            resume=resume_text == "1",
            report_interval_s=report_interval_s,
        )
        if (
            handle_sigterm
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        ):

            def _on_sigterm(signum: int, frame: FrameType | None) -> None:
                job.request_checkpoint("SIGTERM")

            signal.signal(signal.SIGTERM, _on_sigterm)
            _sigterm_handlers.append(_on_sigterm)
        _connected.append(job)
        return job


def _reset_for_tests() -> None:
    """Forget the connected job (tests call connect() more than once in one process)."""
    with _connect_lock:
        for job in _connected:
            job.close()
        _connected.clear()
        for handler in _sigterm_handlers:
            if signal.getsignal(signal.SIGTERM) is handler:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _sigterm_handlers.clear()
