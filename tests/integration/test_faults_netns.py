"""Faults during a real migration between two daemon processes in separate network namespaces.

In every case: exactly one process runs the job, and it resumes from its last checkpoint. Needs root for
the namespaces (CI has it); skipped with the reason elsewhere, failed in CI.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from greenferry.core.jobs import JobState
from greenferry.daemon.journal import MigrationStep
from greenferry.testing.cluster import NetnsCluster, example_job_spec
from greenferry.testing.netns import netns_available

pytestmark = pytest.mark.integration

# Short deadlines so that an interrupted move gives up in seconds, not minutes.
FAST_ABORT = "deadline_factor = 1.2\nslack_s = 5\n"


def _need_netns() -> None:
    reason = netns_available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"network namespaces are required in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NetnsCluster]:
    _need_netns()
    with NetnsCluster(tmp_path, 50e6, {"a": FAST_ABORT, "b": FAST_ABORT}) as c:
        yield c


def _spec(job_id: str, state_mb: int = 100) -> dict[str, Any]:
    return example_job_spec(job_id, state_mb, checkpoint_timeout_s=60)


def _step_of(cluster: NetnsCluster, node: str, job_id: str, step: MigrationStep) -> bool:
    return any(m.job_id == job_id and m.step is step for m in cluster.migrations(node))


def _transferring(cluster: NetnsCluster, job_id: str) -> bool:
    return _step_of(cluster, "a", job_id, MigrationStep.CHECKPOINTED)


def _running_at(cluster: NetnsCluster, node: str, job_id: str, epoch: int) -> bool:
    info = cluster.job(node, job_id)
    return info is not None and info.node == node and info.state is JobState.RUNNING and info.epoch == epoch


def test_the_link_is_cut_mid_transfer(cluster: NetnsCluster) -> None:
    cluster.submit(_spec("cut-1"))
    cluster.wait_for(lambda: _transferring(cluster, "cut-1"), 60, "the transfer to start")
    time.sleep(2)
    cluster.pair.set_link(False)
    try:
        cluster.wait_for(lambda: _step_of(cluster, "a", "cut-1", MigrationStep.ABORTED), 120, "a to abort")
        cluster.wait_for(lambda: _running_at(cluster, "a", "cut-1", 0), 60, "the job to resume at a")
    finally:
        cluster.pair.set_link(True)
    info = cluster.job("a", "cut-1")
    assert info is not None
    assert info.checkpoint_step is not None  # it resumed from the checkpoint it took for the move
    assert len(cluster.job_processes("cut-1")) == 1
    at_b = cluster.job("b", "cut-1")
    assert at_b is None or at_b.node != "b" or at_b.state is not JobState.RUNNING


def test_the_destination_is_killed_mid_transfer_and_restarts(cluster: NetnsCluster) -> None:
    cluster.submit(_spec("kill-dst-1"))
    cluster.wait_for(lambda: _transferring(cluster, "kill-dst-1"), 60, "the transfer to start")
    time.sleep(2)
    cluster.kill("b")
    cluster.wait_for(lambda: _step_of(cluster, "a", "kill-dst-1", MigrationStep.ABORTED), 120, "a to abort")
    cluster.wait_for(lambda: _running_at(cluster, "a", "kill-dst-1", 0), 60, "the job to resume at a")
    cluster.start("b")
    # The restarted destination rolls its half back (RESERVED -> ABORTED) and never runs the job.
    cluster.wait_for(
        lambda: all(
            m.step is MigrationStep.ABORTED for m in cluster.migrations("b") if m.job_id == "kill-dst-1"
        ),
        30,
        "b to roll back",
    )
    assert len(cluster.job_processes("kill-dst-1")) == 1
    assert cluster.job("b", "kill-dst-1") is None


def _step_of_fast(cluster: NetnsCluster, node: str, job_id: str) -> set[str]:
    """The node's migration steps for the job, read-only (polled every few ms while a move is in flight)."""
    path = cluster.data_dir(node) / "journal.sqlite"
    if not path.exists():
        return set()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return {row[0] for row in db.execute("SELECT step FROM migrations WHERE job_id = ?", (job_id,))}
    except sqlite3.OperationalError:  # the schema is not there yet
        return set()
    finally:
        db.close()


def _hold_then_step(pid: int, until: Callable[[], bool], limit_s: float) -> None:
    """Freeze process ``pid`` (SIGSTOP), then let it run 2 ms at a time until ``until()``; it stays frozen.

    Between slices the frozen process sends nothing more, but what it already sent reaches its peer, which
    runs freely: so the slice that sends a request is seen (its effect at the peer) before the process can
    act on the answer.
    """
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + limit_s
    while not until():
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGCONT)
            raise AssertionError(f"process {pid} did not get there within {limit_s:g} s")
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.002)
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.05)


def test_the_destination_is_killed_during_restore_before_the_source_confirmed(cluster: NetnsCluster) -> None:
    """kill -9 of b once it started the job for a commit and before a's confirmation; b restarts at once.

    a is frozen from the prepare on and stepped until b has journaled STARTED (the job's process exists at
    b), so a cannot confirm: b dies holding a job it does not own yet. Its job process sees its daemon gone
    and checkpoints; the restarted b waits for it, finds STARTED, asks a; a, whose commit got no answer, asks
    b, hears STARTED and releases; b owns the job and resumes it from its last checkpoint.
    """
    job = "kill-dst-restore-1"
    cluster.submit(_spec(job))
    a_pid = cluster.procs["a"].pid
    cluster.wait_for(
        lambda: MigrationStep.TRANSFERRED.value in _step_of_fast(cluster, "a", job) or time.sleep(0.005),
        180,
        "the transfer to finish",
    )
    try:
        _hold_then_step(a_pid, lambda: MigrationStep.STARTED.value in _step_of_fast(cluster, "b", job), 60)
        steps_at_b = _step_of_fast(cluster, "b", job)
        assert steps_at_b == {MigrationStep.STARTED.value}, steps_at_b  # not confirmed: a is frozen
        assert len(cluster.job_processes(job)) == 1  # b's, restoring
        cluster.kill("b")
        cluster.start("b")
    finally:
        os.kill(a_pid, signal.SIGCONT)
    (record,) = [m for m in cluster.migrations("a") if m.job_id == job]
    deadline_s = float(record.data["deadline_in_s"])
    runners: list[int] = []

    def resumed_at_b() -> bool:
        runners.append(len(cluster.job_processes(job)))
        return _running_at(cluster, "b", job, 1) and _step_of(cluster, "b", job, MigrationStep.OWNED)

    cluster.wait_for(resumed_at_b, deadline_s + 60, "b to own the job and run it again")
    cluster.wait_for(lambda: _step_of(cluster, "a", job, MigrationStep.RELEASED), 30, "a to release")
    assert max(runners) <= 1  # never two processes of the job, while b restarted and the two ends agreed
    assert len(cluster.job_processes(job)) == 1
    at_a = cluster.job("a", job)
    assert at_a is not None
    assert at_a.state is JobState.MIGRATED
    # Nothing lost: b resumed from its last checkpoint, the one its orphaned process saved on its way out
    # if it got to save one (the example job writes its history with every save), else the one that moved.
    moved_step = at_a.checkpoint_step
    assert moved_step is not None
    job_dir = cluster.data_dir("b") / "jobs" / job
    history = job_dir / "losses.json"
    last_step = json.loads(history.read_text())["step"] if history.exists() else moved_step
    assert last_step >= moved_step
    log = job_dir / "job.log"
    # The new process's log starts after the restarted daemon's banner (the orphan's output, saying it saved
    # because its daemon was gone, comes before it).
    resumed = cluster.wait_for(
        lambda: re.findall(
            r"resumed from \S+ at step (\d+)", log.read_text().rsplit("--- greenferry:", 1)[-1]
        ),
        60,
        "the job to say where it resumed",
    )
    assert int(resumed[-1]) == last_step


def test_the_source_is_killed_after_the_commit_request(cluster: NetnsCluster) -> None:
    cluster.submit(_spec("kill-src-1", state_mb=20))
    # Kill the source as soon as it has journaled the point of no return (or just after, if it was quick).
    cluster.wait_for(
        lambda: (
            _step_of(cluster, "a", "kill-src-1", MigrationStep.COMMITTING)
            or _step_of(cluster, "a", "kill-src-1", MigrationStep.RELEASED)
        ),
        90,
        "the commit",
    )
    cluster.kill("a")
    # The destination runs it at epoch 1 (or stops it until the source answers), and never twice.
    cluster.start("a")
    cluster.wait_for(lambda: _running_at(cluster, "b", "kill-src-1", 1), 90, "the job to run at b")
    cluster.wait_for(
        lambda: _step_of(cluster, "a", "kill-src-1", MigrationStep.RELEASED),
        60,
        "the restarted source to release",
    )
    # b may have stopped it while it waited for the confirmation; it runs again once the source answers.
    cluster.wait_for(lambda: _running_at(cluster, "b", "kill-src-1", 1), 60, "b to run it after the release")
    cluster.wait_for(lambda: len(cluster.job_processes("kill-src-1")) == 1, 30, "one job process")
    assert len(cluster.job_processes("kill-src-1")) == 1
    at_a = cluster.job("a", "kill-src-1")
    assert at_a is not None
    assert at_a.state is JobState.MIGRATED


def test_a_deadline_overrun_aborts_and_the_job_resumes_at_the_source(tmp_path: Path) -> None:
    """The source believes the link is 1 Gbit/s and the job quick to move; the move overruns its deadline."""
    _need_netns()
    optimistic = FAST_ABORT + "checkpoint_write_s = 1\nrestore_s = 1\n"
    env = {"GREENFERRY_PEER__DEFAULT_BANDWIDTH_BPS": "1e9"}
    with NetnsCluster(tmp_path, 50e6, {"a": optimistic, "b": FAST_ABORT}, node_env={"a": env}) as cluster:
        cluster.submit(_spec("late-1"))
        (record,) = cluster.wait_for(
            lambda: [m for m in cluster.migrations("a") if m.step is MigrationStep.ABORTED], 120, "the abort"
        )
        assert "Timeout" in record.data.get("reason", "")
        cluster.wait_for(lambda: _running_at(cluster, "a", "late-1", 0), 60, "the job to resume at a")
        assert len(cluster.job_processes("late-1")) == 1
        assert cluster.job("b", "late-1") is None


def test_the_destination_disk_is_full(tmp_path: Path) -> None:
    """b's data directory holds 40 MiB; a 100 MiB checkpoint cannot land there: abort, resume at a."""
    _need_netns()
    with NetnsCluster(
        tmp_path, 50e6, {"a": FAST_ABORT, "b": FAST_ABORT}, data_dir_limit_bytes={"b": 40 * 2**20}
    ) as cluster:
        cluster.submit(_spec("full-1"))
        cluster.wait_for(lambda: _step_of(cluster, "a", "full-1", MigrationStep.ABORTED), 180, "the abort")
        cluster.wait_for(lambda: _running_at(cluster, "a", "full-1", 0), 60, "the job to resume at a")
        assert len(cluster.job_processes("full-1")) == 1
        assert cluster.job("b", "full-1") is None
