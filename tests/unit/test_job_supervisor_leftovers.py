"""A restarted daemon waits for the job process its crashed predecessor left before it starts the job.

Found by the fault-injection trials (tests/integration/test_fault_injection.py): a daemon killed and
restarted at once resumed a job while the old process, told its daemon was gone, was still saving its last
checkpoint in the same directory: two processes of one job, and the new one resumed from the older
checkpoint. The "leftover" processes here are started outside any supervisor, with the environment a
supervisor gives its jobs, as a dead daemon's would be.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from greenferry.core.jobs import JobSpec
from greenferry.daemon.jobs import CHECKPOINT_DIR_NAME, JobSupervisor, leftover_job_processes
from greenferry.job import ENV_CHECKPOINT_DIR, ENV_JOB_ID

SRC = Path(__file__).resolve().parents[2] / "src"
SAFETY_S = 60.0  # only against hangs


def _fault_job(events: Path) -> list[str]:
    return [sys.executable, "-m", "greenferry.testing.fault_job", "--events", str(events)]


def _spec(name: str, command: list[str], checkpoint_timeout_s: float = 30.0) -> JobSpec:
    return JobSpec(
        name=name,
        command=command,
        env={"PYTHONPATH": str(SRC)},
        checkpoint_size_bytes=0,
        checkpoint_timeout_s=checkpoint_timeout_s,
    )


def _leftover(job_id: str, job_dir: Path, command: list[str]) -> subprocess.Popen[bytes]:
    """A process of ``job_id`` with the environment its (now dead) daemon gave it; no control channel."""
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        ENV_JOB_ID: job_id,
        ENV_CHECKPOINT_DIR: str(job_dir / CHECKPOINT_DIR_NAME),
    }
    job_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(command, env=env, cwd=job_dir, start_new_session=True)


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def _until_event(path: Path, kind: str, pid: int) -> dict[str, Any]:
    async with asyncio.timeout(SAFETY_S):
        while True:
            for event in _events(path):
                if event["event"] == kind and event["pid"] == pid:
                    return event
            await asyncio.sleep(0.02)


@pytest.fixture
async def supervisor() -> AsyncIterator[JobSupervisor]:
    async with JobSupervisor(checkpoint_on_exit=False) as sup:
        yield sup


async def test_the_job_starts_after_the_leftover_saved_and_resumes_from_its_checkpoint(
    tmp_path: Path, supervisor: JobSupervisor
) -> None:
    events = tmp_path / "events.jsonl"
    job_dir = tmp_path / "jobs" / "left-1"
    old = _leftover("left-1", job_dir, _fault_job(events))
    try:
        await _until_event(events, "start", old.pid)
        old.send_signal(signal.SIGTERM)  # what the SDK does when it finds its daemon gone: save, exit
        await supervisor.start(_spec("left-1", _fault_job(events)), job_dir, resume=True)
        assert old.poll() == 75  # it had exited, checkpointed, before the new process was started
        saved = await _until_event(events, "saved", old.pid)
        new_pid = supervisor.pid("left-1")
        assert new_pid is not None
        started = await _until_event(events, "start", new_pid)
        assert started["resume_step"] == saved["step"]
    finally:
        if old.poll() is None:
            old.kill()
        old.wait()


async def test_a_leftover_that_does_not_exit_is_killed_after_the_checkpoint_timeout(
    tmp_path: Path, supervisor: JobSupervisor
) -> None:
    job_dir = tmp_path / "jobs" / "left-2"
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
    ]
    old = _leftover("left-2", job_dir, stubborn)
    try:
        spec = _spec(
            "left-2", [sys.executable, "-c", "import time; time.sleep(600)"], checkpoint_timeout_s=0.5
        )
        async with asyncio.timeout(SAFETY_S):
            while not leftover_job_processes("left-2", job_dir / CHECKPOINT_DIR_NAME):
                await asyncio.sleep(0.02)  # until it has exec'd with its environment
            await supervisor.start(spec, job_dir, resume=True)
        assert old.wait(5) == -signal.SIGKILL
        assert supervisor.is_running("left-2")
    finally:
        if old.poll() is None:
            old.kill()
        old.wait()
        await supervisor.stop("left-2")


async def test_a_process_of_the_same_job_in_another_directory_is_not_a_leftover(tmp_path: Path) -> None:
    """Another daemon on this host (its own data directory) may run a job of that name: not ours."""
    other = _leftover(
        "left-3", tmp_path / "other" / "left-3", [sys.executable, "-c", "import time; time.sleep(600)"]
    )
    try:
        async with asyncio.timeout(SAFETY_S):
            while not leftover_job_processes("left-3", tmp_path / "other" / "left-3" / CHECKPOINT_DIR_NAME):
                await asyncio.sleep(0.02)
        assert leftover_job_processes("left-3", tmp_path / "mine" / "left-3" / CHECKPOINT_DIR_NAME) == []
        assert leftover_job_processes("left-3", tmp_path / "other" / "left-3" / CHECKPOINT_DIR_NAME) == [
            other.pid
        ]
    finally:
        other.kill()
        other.wait()
