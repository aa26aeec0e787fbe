"""A tiny job for the fault-injection trials: steps fast, checkpoints a few small files, says what it did.

Run by a daemon as ``python -m greenferry.testing.fault_job --events PATH``. Every checkpoint holds
``--files`` files whose bytes are derived from the step (and one that never changes, so a second move
skips it), so a resumed process can tell a checkpoint that is not what it claims to be. Each start and
each completed save appends one JSON line to ``--events`` (one ``write`` on an ``O_APPEND`` file, so lines
from processes on different nodes never interleave):

    {"event": "start", "pid": 123, "checkpoint_dir": "...", "resume_step": 41}
    {"event": "saved", "pid": 123, "checkpoint_dir": "...", "step": 57}
    {"event": "corrupt", "pid": 123, "checkpoint_dir": "...", "detail": "..."}

Standard library and :mod:`greenferry.job` only, so a process starts in a few tens of milliseconds. Exit
codes: 75 checkpointed, 3 a checkpoint that does not hold what its meta file says.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from greenferry import job as gf_job

__all__ = ["file_bytes", "main"]

EXIT_CORRUPT = 3
_FROZEN = "frozen.bin"


def file_bytes(index: int, step: int, size_bytes: int) -> bytes:
    """The content of checkpoint file ``index`` at ``step`` (``step`` -1: the frozen file)."""
    seed = hashlib.sha256(f"{index}:{step}".encode()).digest()
    return (seed * (size_bytes // len(seed) + 1))[:size_bytes]


def _event(path: Path, **fields: Any) -> None:
    line = (json.dumps({**fields, "pid": os.getpid(), "time_s": time.time()}) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _write(directory: Path, step: int, files: int, size_bytes: int) -> None:
    for index in range(files):
        (directory / f"part-{index}.bin").write_bytes(file_bytes(index, step, size_bytes))
    (directory / _FROZEN).write_bytes(file_bytes(-1, -1, size_bytes))
    (directory / "step.json").write_text(json.dumps({"step": step}))


def _check(directory: Path, files: int, size_bytes: int) -> tuple[int, str]:
    """The step the checkpoint holds, and what is wrong with it ("" when nothing)."""
    meta = gf_job.read_meta(directory)
    if meta is None:
        return 0, "no meta file"
    step = int(meta["step"])
    try:
        recorded = json.loads((directory / "step.json").read_text())["step"]
        if recorded != step:
            return step, f"step.json says {recorded}, the meta file {step}"
        for index in range(files):
            if (directory / f"part-{index}.bin").read_bytes() != file_bytes(index, step, size_bytes):
                return step, f"part-{index}.bin does not hold step {step}"
        if (directory / _FROZEN).read_bytes() != file_bytes(-1, -1, size_bytes):
            return step, f"{_FROZEN} changed"
    except (OSError, ValueError, KeyError) as err:
        return step, f"unreadable: {err}"
    return step, ""


def main(argv: list[str] | None = None) -> int:
    """Train forever (a step every ``--step-time-s``) until asked to checkpoint."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=Path, required=True, help="append start/save events here")
    parser.add_argument("--step-time-s", type=float, default=0.005)
    parser.add_argument("--files", type=int, default=3, help="files that change at every checkpoint")
    parser.add_argument("--file-bytes", type=int, default=8192)
    parser.add_argument("--report-interval-s", type=float, default=0.02)
    args = parser.parse_args(argv)
    job = gf_job.connect(report_interval_s=args.report_interval_s)
    step = 0
    resume = job.resume_path()
    if resume is not None:
        step, problem = _check(resume, args.files, args.file_bytes)
        if problem:
            _event(args.events, event="corrupt", checkpoint_dir=str(job.checkpoint_dir), detail=problem)
            return EXIT_CORRUPT
    _event(
        args.events,
        event="start",
        checkpoint_dir=str(job.checkpoint_dir),
        resume_step=step if resume is not None else None,
    )
    while True:
        if job.checkpoint_requested():
            with job.saving(step=step) as tmp_dir:
                _write(tmp_dir, step, args.files, args.file_bytes)
            _event(args.events, event="saved", checkpoint_dir=str(job.checkpoint_dir), step=step)
            job.exit_checkpointed()
        step += 1
        job.report(step=step)
        time.sleep(args.step_time_s)


if __name__ == "__main__":
    sys.exit(main())
