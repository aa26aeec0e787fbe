"""The node's durable memory: its jobs and every migration step, in one SQLite file.

Every state change of a job and every step of a migration is written here (and committed) before the
daemon acts on it, so a daemon that restarts finishes or rolls back what was in flight
(:meth:`~greenferry.daemon.orchestrator.Orchestrator.recover`). Writes are small; they run on the event loop
thread with ``synchronous=FULL`` in WAL mode, which is a few hundred microseconds on a local disk.
"""

from __future__ import annotations

import enum
import json
import sqlite3
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from greenferry.core.jobs import JobInfo

__all__ = ["Journal", "MigrationRecord", "MigrationRole", "MigrationStep"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    info TEXT NOT NULL,
    updated_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS migrations (
    migration_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    role TEXT NOT NULL,
    peer TEXT NOT NULL,
    step TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    deadline_s REAL NOT NULL,
    data TEXT NOT NULL,
    created_s REAL NOT NULL,
    updated_s REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS migrations_open ON migrations (step);
"""


class MigrationRole(enum.StrEnum):
    """Which end of a migration this node is."""

    SOURCE = "source"
    DESTINATION = "destination"


class MigrationStep(enum.StrEnum):
    """Journaled steps; see docs/peer-protocol.md for the sequence."""

    # source
    OFFERED = "offered"  # the destination reserved a slot
    CHECKPOINTED = "checkpointed"  # the job stopped here at a checkpoint
    TRANSFERRED = "transferred"  # every chunk is at the destination
    PREPARED = "prepared"  # destination verified and rebuilt the checkpoint (both ends)
    COMMITTING = "committing"  # source decided: ownership passes to epoch + 1 (the point of no return)
    RELEASED = "released"  # the destination runs it; this node let go
    ABORTED = "aborted"  # rolled back: the source runs it from the same checkpoint
    # destination
    RESERVED = "reserved"
    STARTED = "started"  # running at epoch + 1, waiting for the source's confirmation
    OWNED = "owned"  # confirmed: this node owns the job


OPEN_STEPS = frozenset(
    {
        MigrationStep.OFFERED,
        MigrationStep.CHECKPOINTED,
        MigrationStep.TRANSFERRED,
        MigrationStep.PREPARED,
        MigrationStep.COMMITTING,
        MigrationStep.RESERVED,
        MigrationStep.STARTED,
    }
)


@dataclass(frozen=True, slots=True)
class MigrationRecord:
    """One migration as this node journaled it. ``deadline_s`` is wall-clock UTC seconds."""

    migration_id: str
    job_id: str
    role: MigrationRole
    peer: str
    step: MigrationStep
    epoch: int  # the epoch the job has while it moves; the destination runs it at epoch + 1
    deadline_s: float
    data: dict[str, Any] = field(default_factory=dict)
    created_s: float = 0.0
    updated_s: float = 0.0

    @property
    def open(self) -> bool:
        """Whether the migration is still in flight."""
        return self.step in OPEN_STEPS


class Journal:
    """SQLite-backed store of jobs and migrations (``<data_dir>/journal.sqlite``)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # -- jobs ---------------------------------------------------------------------------------------

    def put_job(self, info: JobInfo, now_s: float) -> None:
        """Insert or replace one job."""
        self._db.execute(
            "INSERT INTO jobs (job_id, info, updated_s) VALUES (?, ?, ?) "
            "ON CONFLICT(job_id) DO UPDATE SET info = excluded.info, updated_s = excluded.updated_s",
            (info.job_id, info.model_dump_json(), now_s),
        )

    def job(self, job_id: str) -> JobInfo | None:
        """One job, or None."""
        row = self._db.execute("SELECT info FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else JobInfo.model_validate_json(row[0])

    def jobs(self) -> list[JobInfo]:
        """Every job this node knows, by id."""
        rows = self._db.execute("SELECT info FROM jobs ORDER BY job_id").fetchall()
        return [JobInfo.model_validate_json(r[0]) for r in rows]

    # -- migrations ---------------------------------------------------------------------------------

    def put_migration(self, record: MigrationRecord, now_s: float) -> MigrationRecord:
        """Insert or replace one migration record; returns it with its timestamps."""
        created = record.created_s or now_s
        record = replace(record, created_s=created, updated_s=now_s)
        self._db.execute(
            "INSERT INTO migrations (migration_id, job_id, role, peer, step, epoch, deadline_s, data, "
            "created_s, updated_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(migration_id) DO UPDATE "
            "SET step = excluded.step, data = excluded.data, deadline_s = excluded.deadline_s, "
            "updated_s = excluded.updated_s",
            (
                record.migration_id,
                record.job_id,
                record.role.value,
                record.peer,
                record.step.value,
                record.epoch,
                record.deadline_s,
                json.dumps(record.data),
                record.created_s,
                record.updated_s,
            ),
        )
        return record

    def advance(
        self, record: MigrationRecord, to: MigrationStep, now_s: float, /, **data: Any
    ) -> MigrationRecord:
        """Record the next step ``to`` of a migration (merging ``data`` into its record)."""
        return self.put_migration(replace(record, step=to, data={**record.data, **data}), now_s)

    def migration(self, migration_id: str) -> MigrationRecord | None:
        """One migration, or None."""
        row = self._db.execute(
            "SELECT migration_id, job_id, role, peer, step, epoch, deadline_s, data, created_s, updated_s "
            "FROM migrations WHERE migration_id = ?",
            (migration_id,),
        ).fetchone()
        return None if row is None else _record(row)

    def migrations(self, *, open_only: bool = False, job_id: str | None = None) -> list[MigrationRecord]:
        """Migrations, oldest first."""
        rows = self._db.execute(
            "SELECT migration_id, job_id, role, peer, step, epoch, deadline_s, data, created_s, updated_s "
            "FROM migrations ORDER BY created_s, migration_id"
        ).fetchall()
        records = [_record(r) for r in rows]
        return [r for r in records if (not open_only or r.open) and (job_id is None or r.job_id == job_id)]


def _record(row: tuple[Any, ...]) -> MigrationRecord:
    return MigrationRecord(
        migration_id=row[0],
        job_id=row[1],
        role=MigrationRole(row[2]),
        peer=row[3],
        step=MigrationStep(row[4]),
        epoch=int(row[5]),
        deadline_s=float(row[6]),
        data=json.loads(row[7]),
        created_s=float(row[8]),
        updated_s=float(row[9]),
    )
