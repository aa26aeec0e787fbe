"""The peer protocol's messages (version 1): what daemons send each other to move a job.

Every message is a pydantic model; unknown fields are ignored (a later version may add fields, each with a
default), missing or malformed ones are refused with the field named. The sequence, the fencing rules and
the HTTP routes are in docs/peer-protocol.md and docs/peer-api.yaml.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from greenferry.core.jobs import JobSpec
from greenferry.errors import GreenferryError

__all__ = [
    "MIGRATION_ID_RE",
    "PROTOCOL_VERSION",
    "Abort",
    "Commit",
    "CommitReply",
    "MigrationStatus",
    "Offer",
    "OfferReply",
    "Prepare",
    "ProtocolError",
]

PROTOCOL_VERSION = 1
MIGRATION_ID_RE = r"^[a-f0-9]{32}$"


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    protocol: int = Field(PROTOCOL_VERSION, ge=1, le=PROTOCOL_VERSION)


class Offer(_Message):
    """Source -> destination: may this job come to you, now?"""

    migration_id: str = Field(pattern=MIGRATION_ID_RE)
    source_node: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    job: JobSpec
    epoch: int = Field(ge=0, le=2**62, description="The job's ownership epoch at the source.")
    step: int | None = Field(None, ge=0, description="Training step of the checkpoint that will move.")
    checkpoint_bytes: int = Field(ge=0, le=2**50)
    predicted_migration_s: float = Field(gt=0, le=7 * 86400, allow_inf_nan=False)
    deadline_in_s: float = Field(
        gt=0, le=7 * 86400, allow_inf_nan=False, description="The move must be done within this (s)."
    )


class OfferReply(_Message):
    """Destination -> source: accepted with a time-limited reservation, or rejected with a reason."""

    accepted: bool
    reason: str = Field("", max_length=1000)
    reservation_s: float = Field(0.0, ge=0, le=7 * 86400, allow_inf_nan=False)
    window_s: float | None = Field(None, ge=0, allow_inf_nan=False, description="Destination's window ahead.")


class Prepare(_Message):
    """Source -> destination: every chunk is there; here is the signed manifest to rebuild it from."""

    manifest: dict[str, Any]
    signature_b64: str = Field(min_length=1, max_length=4096)


class Commit(_Message):
    """Source -> destination: you own the job at ``epoch`` now; start it."""

    epoch: int = Field(ge=1, le=2**62)
    step: int | None = Field(None, ge=0, description="Training step of the checkpoint that moved.")
    checkpoint_bytes: int | None = Field(None, ge=0, le=2**50, description="Its measured size.")
    checkpoint_s: float | None = Field(
        None, ge=0, le=86400, allow_inf_nan=False, description="Measured time the job took to checkpoint."
    )
    restore_s: float | None = Field(
        None, ge=0, le=86400, allow_inf_nan=False, description="Measured time the job took to restart."
    )


class CommitReply(_Message):
    """Destination -> source: the job runs here at ``epoch``."""

    running: bool
    epoch: int = Field(ge=0)
    restore_s: float | None = Field(
        None, ge=0, le=86400, allow_inf_nan=False, description="Commit received -> job process running."
    )
    reason: str = Field("", max_length=1000)


class Abort(_Message):
    """Either side: forget this migration (the source resumes the job)."""

    reason: str = Field("", max_length=1000)


class MigrationStatus(_Message):
    """What one end journaled about a migration (asked after a lost reply or a restart)."""

    migration_id: str = Field(pattern=MIGRATION_ID_RE)
    role: Literal["source", "destination", "unknown"]
    step: str = Field(max_length=64)
    epoch: int = Field(ge=0)


class ProtocolError(GreenferryError):
    """A peer answered outside the protocol (wrong status, malformed body, unexpected step)."""
