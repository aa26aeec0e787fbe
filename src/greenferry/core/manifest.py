"""The checkpoint manifest: which files a checkpoint holds and the chunks (by SHA-256) they are made of.

A manifest is built by the source (daemon/transfer.py), signed over its canonical bytes, and checked here by
the destination before a single byte is written: every path must be a plain relative POSIX path that stays
inside the checkpoint directory, and every size must add up. Pure: no I/O, no clock.

Chunking is fixed-size per file (version 1): each file is cut into ``chunk_size_bytes`` pieces, the last
one shorter; an empty file has no chunks. Identical chunks (within or across checkpoints) share a hash, so
the destination's chunk cache needs each only once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Set
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from greenferry.core.jobs import JOB_ID_RE
from greenferry.errors import PayloadError

__all__ = [
    "DEFAULT_CHUNK_SIZE_BYTES",
    "MANIFEST_VERSION",
    "MAX_CHUNKS",
    "MAX_CHUNK_SIZE_BYTES",
    "MAX_DEPTH",
    "MAX_FILES",
    "MAX_NAME_BYTES",
    "MAX_PATH_CHARS",
    "MAX_TOTAL_BYTES",
    "MIN_CHUNK_SIZE_BYTES",
    "NODE_NAME_RE",
    "SHA256_RE",
    "ChunkRef",
    "Manifest",
    "ManifestFile",
    "canonical_manifest_bytes",
    "check_relative_path",
    "first_validation_error",
    "parse_manifest",
]

MANIFEST_VERSION = 1
SHA256_RE = r"^[0-9a-f]{64}$"
NODE_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"

KIB = 1024
MIB = 1024 * KIB
DEFAULT_CHUNK_SIZE_BYTES = 8 * MIB
MIN_CHUNK_SIZE_BYTES = 4 * KIB
MAX_CHUNK_SIZE_BYTES = 64 * MIB

MAX_FILES = 100_000  # files in one checkpoint
MAX_CHUNKS = 1_000_000  # chunk references in one manifest, all files together
MAX_DEPTH = 32  # path components
MAX_PATH_CHARS = 4096
MAX_NAME_BYTES = 255  # one path component, UTF-8 (the Linux limit)
MAX_TOTAL_BYTES = 2**40  # 1 TiB: far above any checkpoint this system moves

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


def check_relative_path(path: str) -> str:
    """Check that ``path`` is a plain relative POSIX file path that cannot leave its directory.

    Refused: empty, absolute (``/x``, ``C:x``), ``.`` or ``..`` components, empty components (``a//b``,
    trailing ``/``), backslashes, NUL and other control characters, text that is not valid UTF-8 (lone
    surrogates), a component over 255 bytes, more than 32 components, more than 4096 characters.

    Args:
        path: the path as written in a manifest, ``/``-separated.

    Returns:
        The same path.

    Raises:
        ValueError: naming what is wrong with it.
    """
    if not isinstance(path, str):
        raise ValueError(f"a path must be a string, not {type(path).__name__}")
    shown = repr(path[:200])
    if not path:
        raise ValueError("empty path")
    if len(path) > MAX_PATH_CHARS:
        raise ValueError(f"path {shown}... is longer than {MAX_PATH_CHARS} characters")
    if _CONTROL.search(path):
        raise ValueError(f"path {shown} contains a NUL or control character")
    if "\\" in path:
        raise ValueError(f"path {shown} contains a backslash (paths are POSIX, '/'-separated)")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"path {shown} is not valid UTF-8") from None
    if path.startswith("/") or _DRIVE.match(path):
        raise ValueError(f"path {shown} is absolute (paths are relative to the checkpoint directory)")
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        raise ValueError(f"path {shown} is nested {len(parts)} deep (at most {MAX_DEPTH})")
    for part in parts:
        if part in ("", ".", ".."):
            kind = "an empty component" if not part else f"a {part!r} component"
            raise ValueError(f"path {shown} has {kind}")
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise ValueError(f"path {shown} has a component longer than {MAX_NAME_BYTES} bytes")
    return path


def _before_count(value: Any, limit: int, what: str) -> Any:
    """Refuse an oversized list before pydantic validates each item (a huge list fails fast)."""
    if isinstance(value, (list, tuple)) and len(value) > limit:
        raise ValueError(f"{len(value)} {what} (at most {limit})")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ChunkRef(_Strict):
    """One chunk: the SHA-256 of its bytes (lowercase hex) and its length."""

    sha256: str = Field(pattern=SHA256_RE, description="SHA-256 of the chunk's (uncompressed) bytes.")
    size_bytes: int = Field(ge=1, le=MAX_CHUNK_SIZE_BYTES)


class ManifestFile(_Strict):
    """One regular file of the checkpoint: where it goes, how big it is, and its chunks in order."""

    path: str = Field(description="Relative POSIX path inside the checkpoint directory.")
    size_bytes: int = Field(ge=0, le=MAX_TOTAL_BYTES)
    mode: int = Field(0o644, ge=0, le=0o777, description="Permission bits (no setuid, no file type).")
    chunks: list[ChunkRef]

    @field_validator("path", mode="before")
    @classmethod
    def _safe_path(cls, value: Any) -> Any:
        return check_relative_path(value)

    @field_validator("chunks", mode="before")
    @classmethod
    def _chunk_count(cls, value: Any) -> Any:
        return _before_count(value, MAX_CHUNKS, "chunks in one file")

    @model_validator(mode="after")
    def _sizes_add_up(self) -> ManifestFile:
        total = sum(chunk.size_bytes for chunk in self.chunks)
        if total != self.size_bytes:
            raise ValueError(f"{self.path!r}: chunks add up to {total} bytes, the file is {self.size_bytes}")
        return self


class Manifest(_Strict):
    """A checkpoint's table of contents (version 1), signed by the source over :meth:`canonical_bytes`."""

    version: int = Field(MANIFEST_VERSION, description="Format version; this node reads version 1.")
    job_id: str = Field(pattern=JOB_ID_RE)
    epoch: int = Field(ge=0, le=2**62, description="The job's ownership epoch the checkpoint belongs to.")
    source_node: str = Field(pattern=NODE_NAME_RE)
    created_s: float = Field(ge=0, allow_inf_nan=False, description="When it was built (UTC POSIX s).")
    chunk_size_bytes: int = Field(ge=MIN_CHUNK_SIZE_BYTES, le=MAX_CHUNK_SIZE_BYTES)
    files: list[ManifestFile]
    total_bytes: int = Field(ge=0, le=MAX_TOTAL_BYTES, description="Sum of the files' sizes.")
    compression: Literal["none", "zstd"] = Field(
        "none", description="Wire encoding the source offers for chunks (hashes are of the raw bytes)."
    )

    @field_validator("version", mode="before")
    @classmethod
    def _known_version(cls, value: Any) -> Any:
        if type(value) is not int or value != MANIFEST_VERSION:
            raise ValueError(f"unsupported manifest version {value!r} (this node reads {MANIFEST_VERSION})")
        return value

    @field_validator("files", mode="before")
    @classmethod
    def _file_count(cls, value: Any) -> Any:
        return _before_count(value, MAX_FILES, "files")

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        paths: set[str] = set()
        sizes: dict[str, int] = {}
        refs = 0
        for file in self.files:
            if file.path in paths:
                raise ValueError(f"files: {file.path!r} is listed twice")
            paths.add(file.path)
            refs += len(file.chunks)
            last = len(file.chunks) - 1
            for index, chunk in enumerate(file.chunks):
                if index < last and chunk.size_bytes != self.chunk_size_bytes:
                    raise ValueError(
                        f"files: {file.path!r} chunk {index} is {chunk.size_bytes} bytes; every chunk but the"
                        f" last must be chunk_size_bytes ({self.chunk_size_bytes})"
                    )
                if chunk.size_bytes > self.chunk_size_bytes:
                    raise ValueError(
                        f"files: {file.path!r} chunk {index} is larger than chunk_size_bytes"
                        f" ({chunk.size_bytes} > {self.chunk_size_bytes})"
                    )
                known = sizes.setdefault(chunk.sha256, chunk.size_bytes)
                if known != chunk.size_bytes:
                    raise ValueError(
                        f"files: chunk {chunk.sha256} appears with sizes {known} and {chunk.size_bytes}"
                    )
        if refs > MAX_CHUNKS:
            raise ValueError(f"files: {refs} chunk references (at most {MAX_CHUNKS})")
        for path in paths:
            parts = path.split("/")
            for depth in range(1, len(parts)):
                parent = "/".join(parts[:depth])
                if parent in paths:
                    raise ValueError(f"files: {path!r} lies under {parent!r}, which is a file")
        total = sum(file.size_bytes for file in self.files)
        if total != self.total_bytes:
            raise ValueError(f"total_bytes is {self.total_bytes} but the files add up to {total}")
        return self

    def canonical_bytes(self) -> bytes:
        """The bytes a signature covers: sorted-key compact ASCII JSON of the whole manifest."""
        return canonical_manifest_bytes(self)

    def distinct_chunks(self) -> list[ChunkRef]:
        """Every chunk once, in order of first appearance."""
        seen: set[str] = set()
        distinct: list[ChunkRef] = []
        for file in self.files:
            for chunk in file.chunks:
                if chunk.sha256 not in seen:
                    seen.add(chunk.sha256)
                    distinct.append(chunk)
        return distinct

    def missing_chunks(self, held: Set[str]) -> list[ChunkRef]:
        """The distinct chunks whose hash is not in ``held``, in order of first appearance."""
        return [chunk for chunk in self.distinct_chunks() if chunk.sha256 not in held]

    def missing_bytes(self, held: Set[str]) -> int:
        """How many bytes of distinct chunks are not in ``held`` (what a transfer still has to send)."""
        return sum(chunk.size_bytes for chunk in self.missing_chunks(held))

    def distinct_bytes(self) -> int:
        """Bytes of distinct chunks (``total_bytes`` less what repeats within the checkpoint)."""
        return sum(chunk.size_bytes for chunk in self.distinct_chunks())


def canonical_manifest_bytes(manifest: Manifest) -> bytes:
    """Sorted-key, compact, ASCII-only JSON of ``manifest``: the same bytes on every node.

    Args:
        manifest: a validated manifest.

    Returns:
        UTF-8 (in fact ASCII) bytes; a manifest that round-trips through JSON gives the same bytes.
    """
    return json.dumps(
        manifest.model_dump(mode="json"),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    ).encode("ascii")


def first_validation_error(err: ValidationError) -> str:
    """``where: what`` of the first error pydantic found (``files.3.path: Value error, ...``)."""
    first = err.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "(manifest)"
    return f"{where}: {first['msg']}"


def parse_manifest(data: bytes | str | dict[str, Any]) -> Manifest:
    """Validate a manifest received from a peer (JSON text, or an object already decoded from JSON).

    Args:
        data: the manifest.

    Returns:
        The validated manifest.

    Raises:
        PayloadError: ``bad_manifest``, naming the first field that does not validate and why.
    """
    try:
        if isinstance(data, dict):
            return Manifest.model_validate(data)
        return Manifest.model_validate_json(data)
    except ValidationError as err:
        raise PayloadError("bad_manifest", first_validation_error(err)) from None
