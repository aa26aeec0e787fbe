"""Faults during a real migration between two daemon processes in separate network namespaces.

In every case: exactly one process runs the job, and it resumes from its last checkpoint. Needs root for
the namespaces (CI has it); skipped with the reason elsewhere, failed in CI.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
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
