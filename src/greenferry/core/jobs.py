"""Training jobs as the daemon manages them: the job spec, the job state machine, and what the API reports.

Pure: no I/O, no clock. The daemon's supervisor runs a job as a subprocess from a :class:`JobSpec`; every
state change goes through :func:`transition`, the one table of allowed moves (SkyPilot's managed-job states
are the model). A job has one owner at a time, identified by an ownership ``epoch`` that only grows: a node
may run a job only while it holds the job's current epoch (see docs/peer-protocol.md).
"""

from __future__ import annotations

import enum
import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

__all__ = [
    "ACTIVE_STATES",
    "JOB_ID_RE",
    "MAX_JOB_PARTS",
    "TERMINAL_STATES",
    "JobInfo",
    "JobPart",
    "JobSpec",
    "JobState",
    "TransitionError",
    "allowed_transitions",
    "transition",
]

JOB_ID_RE = r"^[a-z0-9][a-z0-9-]{0,62}$"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_COMMAND_ARGS = 256
MAX_ENV_VARS = 256
MAX_JOB_PARTS = 64  # data-parallel workers of one job; as many as GPUs a spec may ask for
MAX_STATE_BYTES = 2**50


class JobPart(BaseModel):
    """A group of identical data-parallel workers of a job, each with a checkpoint state of its own.

    Each worker is one part: it takes one GPU slot and may move on its own (see core/feasibility.py's
    ``largest_movable_parts``) unless ``pinned``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    workers: int = Field(1, ge=1, le=MAX_JOB_PARTS, description="Workers in this group (one GPU each).")
    state_bytes: int = Field(
        ge=0, le=MAX_STATE_BYTES, description="Checkpoint state of each worker of the group (bytes)."
    )
    pinned: bool = Field(
        False, description="True keeps these workers on the node the job was submitted to (local data)."
    )


def _part_totals(parts: object) -> tuple[int, int] | None:
    """(workers, state bytes) of a raw ``parts`` value, or None when it is malformed (validation says why)."""
    if not isinstance(parts, list) or not 0 < len(parts) <= MAX_JOB_PARTS:
        return None
    workers = state = 0
    for part in parts:
        count: object
        size: object
        if isinstance(part, JobPart):
            count, size = part.workers, part.state_bytes
        elif isinstance(part, dict):
            count, size = part.get("workers", 1), part.get("state_bytes")
        else:
            return None
        if type(count) is not int or type(size) is not int:
            return None
        if not 1 <= count <= MAX_JOB_PARTS or not 0 <= size <= MAX_STATE_BYTES:
            return None
        workers += count
        state += count * size
    return workers, state


class JobSpec(BaseModel):
    """What to run and what it costs to move; submitted with ``greenferry jobs submit``.

    The command must be runnable on every node the job may visit (the same code and environment
    installed there), as with any scheduler that restarts work elsewhere.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=JOB_ID_RE, description="Job name, unique on the cluster; also its id.")
    command: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        min_length=1, max_length=MAX_COMMAND_ARGS, description="argv of the training process."
    )
    env: dict[str, Annotated[str, Field(max_length=32768)]] = Field(
        default_factory=dict, description="Extra environment variables for the process."
    )
    working_dir: str | None = Field(
        None, description="Working directory (absolute); default: the job's own directory on the node."
    )
    gpu_count: int = Field(1, ge=0, le=64, description="GPUs the job needs (a slot each).")
    hardware_profile: str | None = Field(
        None, description="Profile of the hardware it was sized for (default: the node's)."
    )
    power_w: float | None = Field(
        None, gt=0, le=100_000, allow_inf_nan=False, description="Power while training (default: profile)."
    )
    checkpoint_size_bytes: int = Field(
        ge=0, le=2**50, description="Expected checkpoint size; measured after the first checkpoint."
    )
    migratable: bool = Field(True, description="False pins the job to the node it was submitted to.")
    work_s: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Expected compute time at full speed, if known."
    )
    checkpoint_timeout_s: float = Field(
        120.0, gt=0, le=3600, allow_inf_nan=False, description="Longest a checkpoint may take on request."
    )
    # Last, so that its validator sees gpu_count and checkpoint_size_bytes. Left out of the JSON when
    # absent: a job without parts serialises exactly as before (older peers forbid unknown fields).
    parts: list[JobPart] | None = Field(
        None,
        min_length=1,
        max_length=MAX_JOB_PARTS,
        exclude_if=lambda value: value is None,
        description=(
            "Data-parallel workers, each with its own state; absent: the job is one movable part. "
            "gpu_count and checkpoint_size_bytes default to the workers' count and total state."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _totals_from_parts(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("parts") is None:
            return data
        filled = dict(data)
        totals = _part_totals(data["parts"])
        if totals is None:
            # Malformed parts: their own errors say why; a "checkpoint_size_bytes missing" would only
            # distract (the spec is rejected either way).
            filled.setdefault("checkpoint_size_bytes", 0)
            return filled
        filled.setdefault("gpu_count", min(totals[0], MAX_JOB_PARTS))
        filled.setdefault("checkpoint_size_bytes", min(totals[1], MAX_STATE_BYTES))
        return filled

    @field_validator("parts")
    @classmethod
    def _parts_consistent(cls, value: list[JobPart] | None, info: ValidationInfo) -> list[JobPart] | None:
        if value is None:
            return None
        workers = sum(part.workers for part in value)
        if workers > MAX_JOB_PARTS:
            raise ValueError(f"{workers} workers in all (limit {MAX_JOB_PARTS})")
        if all(part.pinned for part in value):
            raise ValueError("every worker is pinned: nothing could move (migratable = false pins a job)")
        state = sum(part.workers * part.state_bytes for part in value)
        if state > MAX_STATE_BYTES:
            raise ValueError(f"the workers' state totals {state} bytes (limit {MAX_STATE_BYTES})")
        gpu_count = info.data.get("gpu_count")
        if gpu_count is not None and gpu_count != workers:
            raise ValueError(f"{workers} workers (one GPU each) but gpu_count is {gpu_count}")
        size = info.data.get("checkpoint_size_bytes")
        if size is not None and size != state:
            raise ValueError(f"the workers' state totals {state} bytes but checkpoint_size_bytes is {size}")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_ENV_VARS:
            raise ValueError(f"{len(value)} environment variables (limit {MAX_ENV_VARS})")
        for key, text in value.items():
            if not _ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if key.startswith("GREENFERRY_JOB_"):
                raise ValueError(f"{key} is reserved for the daemon's control channel")
            if "\x00" in text:
                raise ValueError(f"{key}: value contains NUL")
        return value

    @field_validator("command")
    @classmethod
    def _no_nul(cls, value: list[str]) -> list[str]:
        for index, arg in enumerate(value):
            if "\x00" in arg:
                raise ValueError(f"command[{index}] contains NUL")
        return value

    @field_validator("working_dir")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not PurePosixPath(value).is_absolute():
            raise ValueError(f"working_dir must be an absolute path, got {value!r}")
        return value

    @property
    def job_id(self) -> str:
        """The job's id (its name)."""
        return self.name

    @property
    def part_state_bytes(self) -> tuple[int, ...]:
        """Checkpoint state of each part (worker), in declaration order; one part without ``parts``."""
        if self.parts is None:
            return (self.checkpoint_size_bytes,)
        return tuple(part.state_bytes for part in self.parts for _ in range(part.workers))

    @property
    def part_pinned(self) -> tuple[bool, ...]:
        """Whether each part (worker) is pinned, in the order of ``part_state_bytes``."""
        if self.parts is None:
            return (False,)
        return tuple(part.pinned for part in self.parts for _ in range(part.workers))

    @property
    def moves_whole(self) -> bool:
        """Whether the job may move as a whole: migratable, and no part is pinned."""
        return self.migratable and not any(self.part_pinned)


class JobState(enum.StrEnum):
    """Where a job is in its life on the node that owns it."""

    PENDING = "pending"  # accepted, not started yet (waiting for a slot or for surplus)
    STARTING = "starting"  # process launched, not yet reporting progress
    RUNNING = "running"
    CHECKPOINTING = "checkpointing"  # asked to save and exit
    PAUSED = "paused"  # checkpointed and stopped here; resumes here
    MIGRATING = "migrating"  # checkpointed; the checkpoint is crossing to another node
    MIGRATED = "migrated"  # another node owns it now (terminal here)
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({JobState.MIGRATED, JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = frozenset({JobState.STARTING, JobState.RUNNING, JobState.CHECKPOINTING})

S = JobState
_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.PENDING: frozenset({S.STARTING, S.MIGRATING, S.CANCELLED, S.FAILED}),
    S.STARTING: frozenset({S.RUNNING, S.CHECKPOINTING, S.COMPLETED, S.FAILED, S.CANCELLED, S.PAUSED}),
    S.RUNNING: frozenset({S.CHECKPOINTING, S.COMPLETED, S.FAILED, S.CANCELLED, S.PAUSED}),
    # A checkpoint ends paused (here) or migrating (leaving); a job that finishes meanwhile is completed.
    S.CHECKPOINTING: frozenset({S.PAUSED, S.MIGRATING, S.COMPLETED, S.FAILED, S.CANCELLED}),
    S.PAUSED: frozenset({S.STARTING, S.MIGRATING, S.CANCELLED, S.FAILED}),
    # A migration commits (migrated) or aborts: the job is back to paused here, from the same checkpoint.
    S.MIGRATING: frozenset({S.MIGRATED, S.PAUSED, S.FAILED}),
    S.MIGRATED: frozenset(),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}
del S


class TransitionError(ValueError):
    """A state change the job state machine does not allow."""


def allowed_transitions(state: JobState) -> frozenset[JobState]:
    """The states a job in ``state`` may move to."""
    return _TRANSITIONS[state]


def transition(current: JobState, new: JobState) -> JobState:
    """Check one move of the state machine and return the new state.

    Raises:
        TransitionError: the move is not in the table (the message names both states).
    """
    if new not in _TRANSITIONS[current]:
        allowed = ", ".join(sorted(s.value for s in _TRANSITIONS[current])) or "none (terminal)"
        raise TransitionError(f"job cannot go from {current.value} to {new.value} (allowed: {allowed})")
    return new


class JobInfo(BaseModel):
    """A job as the local API and the CLI report it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str = Field(pattern=JOB_ID_RE)
    spec: JobSpec
    state: JobState
    node: str = Field(description="The node that owns the job (this one, or where it migrated).")
    epoch: int = Field(ge=0, description="Ownership epoch: grows by one at every committed migration.")
    step: int | None = Field(None, ge=0, description="Last training step the job reported.")
    checkpoint_step: int | None = Field(None, ge=0, description="Step of the last checkpoint.")
    checkpoint_bytes: int | None = Field(None, ge=0, description="Size of the last checkpoint.")
    migrations: int = Field(0, ge=0, description="Committed migrations so far.")
    message: str = Field("", max_length=4096, description="Why the job is in its state (errors, reasons).")

    @model_validator(mode="after")
    def _id_matches(self) -> Self:
        if self.job_id != self.spec.job_id:
            raise ValueError(f"job_id {self.job_id!r} does not match the spec's name {self.spec.name!r}")
        return self
