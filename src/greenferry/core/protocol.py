"""The peer protocol's messages (version 1): what daemons send each other to move a job.

Every message is a pydantic model; unknown fields are ignored (a later version may add fields, each with a
default), missing or malformed ones are refused with the field named. The sequence, the fencing rules and
the HTTP routes are in docs/peer-protocol.md and docs/peer-api.yaml.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from greenferry.core.jobs import JobSpec
from greenferry.core.manifest import MAX_CHUNK_SIZE_BYTES, ChunkRef
from greenferry.errors import GreenferryError

__all__ = [
    "MAX_HELD_CHUNKS",
    "MAX_RESUME_WAIT_S",
    "MIGRATION_ID_RE",
    "PROTOCOL_VERSION",
    "Abort",
    "Commit",
    "CommitReply",
    "Confirm",
    "ConfirmReply",
    "HeldQuery",
    "HeldReply",
    "MigrationStatus",
    "Offer",
    "OfferReply",
    "Prepare",
    "ProtocolError",
]

PROTOCOL_VERSION = 1
MIGRATION_ID_RE = r"^[a-f0-9]{32}$"
MAX_HELD_CHUNKS = 10_000  # chunks in one POST /v1/chunks/held (a source asks about more in batches)
MAX_RESUME_WAIT_S = 600.0  # the longest a confirm may ask the destination to wait for the job's resume
_SECONDS: dict[str, Any] = {"ge": 0, "le": 86400, "allow_inf_nan": False}  # a measured duration


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
    send_bytes: int | None = Field(
        None,
        ge=0,
        le=2**50,
        description="Bytes the source expects to send: the checkpoint less what the destination said it"
        " holds (POST /v1/chunks/held). Absent: all of checkpoint_bytes.",
    )
    predicted_migration_s: float = Field(gt=0, le=7 * 86400, allow_inf_nan=False)
    deadline_in_s: float = Field(
        gt=0, le=7 * 86400, allow_inf_nan=False, description="The move must be done within this (s)."
    )

    @model_validator(mode="after")
    def _send_within_checkpoint(self) -> Self:
        if self.send_bytes is not None and self.send_bytes > self.checkpoint_bytes:
            raise ValueError(
                f"send_bytes ({self.send_bytes}) exceeds checkpoint_bytes ({self.checkpoint_bytes})"
            )
        return self

    @property
    def bytes_to_send(self) -> int:
        """What the move is expected to transfer (``send_bytes``, else the whole checkpoint)."""
        return self.checkpoint_bytes if self.send_bytes is None else self.send_bytes


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
    # What the job's moves measured, carried with it: the destination predicts the job's next move with them.
    checkpoint_s: float | None = Field(
        None, **_SECONDS, description="Measured time the job took to checkpoint."
    )
    restore_s: float | None = Field(
        None,
        **_SECONDS,
        description="Measured time the job took to restore when it last arrived: commit -> the job said it"
        " resumed (its first progress report without the SDK's resumed line; else its process ran).",
    )
    manifest_s: float | None = Field(
        None, **_SECONDS, description="Measured time the source took to build the manifest (hash the chunks)."
    )
    rebuild_s: float | None = Field(
        None, **_SECONDS, description="Measured prepare: the destination checked and rebuilt the checkpoint."
    )
    changed_bytes: int | None = Field(
        None,
        ge=0,
        le=2**50,
        description="Bytes of chunks of this checkpoint that its previous checkpoint did not hold.",
    )


class CommitReply(_Message):
    """Destination -> source: the job runs here at ``epoch``."""

    running: bool
    epoch: int = Field(ge=0)
    restore_s: float | None = Field(None, **_SECONDS, description="Commit received -> job process running.")
    reason: str = Field("", max_length=1000)


class Abort(_Message):
    """Either side: forget this migration (the source resumes the job)."""

    reason: str = Field("", max_length=1000)


class Confirm(_Message):
    """Source -> destination: I let go of the job; it is yours."""

    reason: str = Field("", max_length=1000, description="Unused (version 1 sent an Abort body here).")
    resume_wait_s: float = Field(
        0.0,
        ge=0,
        le=MAX_RESUME_WAIT_S,
        allow_inf_nan=False,
        description="Answer once the job said it resumed, waiting at most this (s); 0: answer at once.",
    )


class ConfirmReply(_Message):
    """Destination -> source: the job is owned here (and, when asked to wait, whether it has resumed)."""

    confirmed: bool
    resumed: bool = Field(False, description="The job said it resumed within resume_wait_s.")
    restore_s: float | None = Field(
        None, **_SECONDS, description="Commit received -> the job said it resumed."
    )


class HeldQuery(_Message):
    """Source -> destination, before an offer: how much of these chunks does your chunk cache hold?"""

    chunks: list[ChunkRef] = Field(
        max_length=MAX_HELD_CHUNKS, description="Distinct chunks of the job's last checkpoint's manifest."
    )

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        seen: set[str] = set()
        for index, chunk in enumerate(self.chunks):
            if chunk.sha256 in seen:
                raise ValueError(f"chunks.{index}: chunk {chunk.sha256} is listed twice")
            seen.add(chunk.sha256)
        return self


class HeldReply(_Message):
    """Destination -> source: how many of the chunks asked about it holds, and their bytes."""

    chunks: int = Field(ge=0, le=MAX_HELD_CHUNKS, description="Chunks asked about.")
    held_chunks: int = Field(ge=0, le=MAX_HELD_CHUNKS)
    held_bytes: int = Field(ge=0, le=MAX_HELD_CHUNKS * MAX_CHUNK_SIZE_BYTES)


class MigrationStatus(_Message):
    """What one end journaled about a migration (asked after a lost reply or a restart)."""

    migration_id: str = Field(pattern=MIGRATION_ID_RE)
    role: Literal["source", "destination", "unknown"]
    step: str = Field(max_length=64)
    epoch: int = Field(ge=0)


class ProtocolError(GreenferryError):
    """A peer answered outside the protocol (wrong status, malformed body, unexpected step)."""
