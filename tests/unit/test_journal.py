"""The journal survives a reopen: jobs and migration steps are what the daemon recovers from."""

from __future__ import annotations

from pathlib import Path

from greenferry.core.jobs import JobInfo, JobSpec, JobState
from greenferry.daemon.journal import Journal, MigrationRecord, MigrationRole, MigrationStep


def _info(state: JobState = JobState.RUNNING, epoch: int = 0) -> JobInfo:
    spec = JobSpec(name="train-1", command=["python", "train.py"], checkpoint_size_bytes=10**9)
    return JobInfo(job_id="train-1", spec=spec, state=state, node="n1", epoch=epoch)


def test_jobs_and_migrations_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    journal.put_job(_info(), 1.0)
    journal.put_job(_info(JobState.MIGRATING, 0), 2.0)  # replaces
    record = journal.put_migration(
        MigrationRecord(
            "a" * 32, "train-1", MigrationRole.SOURCE, "n2", MigrationStep.OFFERED, 0, 100.0, {"url": "u"}
        ),
        3.0,
    )
    record = journal.advance(record, MigrationStep.CHECKPOINTED, 4.0, step=17)
    journal.put_migration(
        MigrationRecord("b" * 32, "train-1", MigrationRole.SOURCE, "n3", MigrationStep.ABORTED, 0, 50.0), 5.0
    )
    journal.close()

    reopened = Journal(path)
    assert [j.state for j in reopened.jobs()] == [JobState.MIGRATING]
    open_ = reopened.migrations(open_only=True)
    assert [m.migration_id for m in open_] == ["a" * 32]
    assert open_[0].step is MigrationStep.CHECKPOINTED
    assert open_[0].data == {"url": "u", "step": 17}
    assert open_[0].created_s == 3.0
    assert open_[0].updated_s == 4.0
    assert len(reopened.migrations(job_id="train-1")) == 2
    assert reopened.migration("c" * 32) is None
    assert reopened.job("nope") is None
    reopened.close()


def test_every_step_is_open_or_closed_as_documented() -> None:
    closed = {MigrationStep.RELEASED, MigrationStep.ABORTED, MigrationStep.OWNED}
    for step in MigrationStep:
        record = MigrationRecord("a" * 32, "j", MigrationRole.DESTINATION, "p", step, 0, 0.0)
        assert record.open is (step not in closed), step
