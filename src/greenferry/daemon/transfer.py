"""Checkpoint transfer between peer daemons: chunks, signed manifests, a chunk cache, resumable pushes.

The source cuts the checkpoint into fixed-size chunks (:func:`build_manifest`, which also puts each chunk into
its local :class:`ChunkStore`), asks the destination which chunks it lacks, and pushes only those over a few
parallel HTTP streams (:func:`send_chunks`). The destination verifies each chunk's SHA-256 before storing it
(:func:`transfer_routes`), checks the manifest's signature (:func:`verify_manifest`) and rebuilds the
directory from its cache (:func:`materialize`). docs/transfer.md has the wire format and the limits.

Routes, mounted by the peer server (daemon/peer.py) under the same mutual-TLS authentication:

    POST /v1/transfers/{transfer_id}/have               [ChunkRef, ...] -> {"missing": [sha256, ...], ...}
    PUT  /v1/transfers/{transfer_id}/chunks/{sha256}    the chunk (raw, or zstd with Content-Encoding: zstd)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import inspect
import io
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pydantic import ValidationError

from greenferry.core.manifest import (
    DEFAULT_CHUNK_SIZE_BYTES,
    MAX_CHUNK_SIZE_BYTES,
    MAX_FILES,
    MAX_TOTAL_BYTES,
    ChunkRef,
    Manifest,
    ManifestFile,
    check_relative_path,
    first_validation_error,
    parse_manifest,
)
from greenferry.core.protocol import ProtocolError
from greenferry.daemon.backoff import Backoff
from greenferry.errors import ConfigError, GreenferryError, PayloadError, ServiceUnavailableError

try:
    import zstandard
except ImportError:  # the zstd extra is not installed: chunks travel uncompressed
    zstandard = None  # type: ignore[assignment]

__all__ = [
    "MAX_HAVE_REFS",
    "TRANSFER_ID_RE",
    "ZSTD_AVAILABLE",
    "Authorize",
    "CheckpointError",
    "ChunkCorruptError",
    "ChunkError",
    "ChunkMissingError",
    "ChunkStore",
    "PrivateKey",
    "PruneStats",
    "PublicKey",
    "TransferError",
    "TransferInterruptedError",
    "TransferRefusedError",
    "TransferStats",
    "build_manifest",
    "materialize",
    "send_chunks",
    "sign_manifest",
    "transfer_routes",
    "verify_manifest",
]

logger = logging.getLogger(__name__)

ZSTD_AVAILABLE = zstandard is not None
TRANSFER_ID_RE = r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}"
MAX_HAVE_REFS = 10_000  # chunk refs in one POST .../have (the client sends more in batches)
_HAVE_BODY_LIMIT_BYTES = MAX_HAVE_REFS * 128 + 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TRANSFER_ID = re.compile(TRANSFER_ID_RE)
_STALE_TEMP_S = 3600.0  # a temp file this old in the store is from a crashed writer
_MAX_ROUNDS = 3  # have/push rounds before a destination that keeps losing chunks is given up on
_ZSTD_LEVEL = 3
_READ_BLOCK_BYTES = 1024 * 1024

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
Authorize = Callable[[web.Request, str], Awaitable[None] | None]


# ------------------------------------------------------------------------------------------------- errors


class ChunkError(GreenferryError):
    """A chunk that is not in a chunk store, or is there but damaged; the message names it."""


class ChunkMissingError(ChunkError):
    """The chunk store does not hold the chunk."""


class ChunkCorruptError(ChunkError, ValueError):
    """The chunk's bytes do not match its SHA-256 (or its size); a damaged file is removed from the store."""


class CheckpointError(GreenferryError, ValueError):
    """A checkpoint directory that cannot be sent or rebuilt (a symlink, a special file, a bad path ...)."""


class TransferError(GreenferryError):
    """A checkpoint transfer that did not finish; :attr:`stats` says what got through before it stopped."""

    def __init__(self, message: str, stats: TransferStats | None = None) -> None:
        super().__init__(message)
        self.stats = stats


class TransferInterruptedError(TransferError, ServiceUnavailableError):
    """The destination could not be reached or kept failing after the retries; calling again resumes."""


class TransferRefusedError(TransferError):
    """The destination refused a request for good (4xx, or 507: its disk is full): unauthorized, no such
    transfer, chunk too big."""

    def __init__(self, status: int, code: str, message: str, stats: TransferStats | None = None) -> None:
        super().__init__(f"HTTP {status} {code}: {message}", stats)
        self.status = status
        self.code = code


# ----------------------------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class PruneStats:
    """What :meth:`ChunkStore.prune` removed and what is left."""

    chunks_removed: int
    bytes_removed: int
    size_bytes: int


class ChunkStore:
    """A content-addressed chunk cache on disk: ``<root>/ab/cdef...`` holds the chunk with SHA-256 abcdef...

    Writes are atomic (temp file, fsync, rename, fsync of the directory), so a chunk under its final name is
    complete; reads check the size and re-verify the hash, and a damaged chunk is deleted (it reads as
    missing from then on, so the next transfer resends it). The methods block: call them from a thread
    (``asyncio.to_thread``) in async code. Safe to use from several threads at once.

    Args:
        root: the store's directory (created, mode 0700).
        max_chunk_bytes: the largest chunk it holds.
    """

    def __init__(self, root: Path | str, *, max_chunk_bytes: int = MAX_CHUNK_SIZE_BYTES) -> None:
        if max_chunk_bytes < 1:
            raise ValueError("max_chunk_bytes must be >= 1")
        self.root = Path(root)
        self.max_chunk_bytes = max_chunk_bytes
        self._tmp = self.root / ".tmp"
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._tmp.mkdir(mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._size_bytes: int | None = None
        self._remove_stale_temp_files()

    def __repr__(self) -> str:
        return f"ChunkStore({str(self.root)!r})"

    def path_of(self, sha256: str) -> Path:
        """Where the chunk ``sha256`` lives (whether or not it is there).

        Raises:
            ValueError: ``sha256`` is not 64 lowercase hex digits.
        """
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise ValueError(f"not a SHA-256 hex digest: {str(sha256)[:80]!r}")
        return self.root / sha256[:2] / sha256[2:]

    def has(self, sha256: str, size_bytes: int | None = None) -> bool:
        """Whether the store holds the chunk: a regular file of ``size_bytes`` (or of 1..max_chunk_bytes)."""
        return self._held_size(self.path_of(sha256), size_bytes) is not None

    def missing(self, chunks: Iterable[ChunkRef | str]) -> list[str]:
        """The hashes of ``chunks`` the store does not hold, each once, in the order given.

        A :class:`ChunkRef` is held only when the file has its size; a bare hash when the file is a
        plausible chunk.
        """
        seen: set[str] = set()
        absent: list[str] = []
        for chunk in chunks:
            sha, size = (chunk, None) if isinstance(chunk, str) else (chunk.sha256, chunk.size_bytes)
            if sha in seen:
                continue
            seen.add(sha)
            if not self.has(sha, size):
                absent.append(sha)
        return absent

    def get(self, sha256: str, size_bytes: int | None = None) -> bytes:
        """The chunk's bytes, after checking their size and SHA-256.

        Args:
            sha256: the chunk's hash.
            size_bytes: its expected length (from the manifest), when known.

        Raises:
            ChunkMissingError: the store does not hold it.
            ChunkCorruptError: the file's size or hash is wrong (the file is removed).
        """
        path = self.path_of(sha256)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ChunkMissingError(f"chunk {sha256} is not in the chunk store {self.root}") from None
        except OSError as err:  # ELOOP: a symlink where a chunk should be
            self._discard(path, f"unreadable ({err.strerror})")
            raise ChunkCorruptError(f"chunk {sha256}: {path} is not a readable file: {err.strerror}") from err
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            problem = self._size_problem(info, size_bytes)
            if problem is None:
                data = handle.read(self.max_chunk_bytes + 1)
                if size_bytes is not None and len(data) != size_bytes:
                    problem = f"read {len(data)} bytes, expected {size_bytes}"
        if problem is None:
            digest = hashlib.sha256(data).hexdigest()
            if digest != sha256:
                problem = f"its bytes hash to {digest}"
        if problem is not None:
            self._discard(path, problem)
            raise ChunkCorruptError(f"chunk {sha256} in {self.root} is damaged ({problem}); removed it")
        self._touch(path)
        return data

    def put(self, data: bytes, expected_sha256: str | None = None) -> str:
        """Store a chunk (atomically) unless an intact copy is there; its SHA-256.

        Args:
            data: the chunk's bytes (1 .. max_chunk_bytes).
            expected_sha256: the hash the sender claims; checked before anything is written.

        Returns:
            The chunk's SHA-256 (lowercase hex).

        Raises:
            ChunkCorruptError: ``data`` does not hash to ``expected_sha256``.
            ValueError: ``data`` is empty or larger than max_chunk_bytes.
        """
        if not data:
            raise ValueError("a chunk cannot be empty")
        if len(data) > self.max_chunk_bytes:
            raise ValueError(
                f"a {len(data)}-byte chunk is larger than this store takes ({self.max_chunk_bytes})"
            )
        sha = hashlib.sha256(data).hexdigest()
        if expected_sha256 is not None and sha != expected_sha256:
            raise ChunkCorruptError(f"chunk {expected_sha256}: the {len(data)} bytes received hash to {sha}")
        path = self.path_of(sha)
        if self._held_size(path, len(data)) is not None:
            self._touch(path)
            return sha
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=self._tmp, prefix=f"{sha[:16]}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            with self._lock:  # the rename and the accounting together: concurrent puts count once
                replaced_bytes = self._file_size(path)
                os.replace(temp_name, path)
                if self._size_bytes is not None:
                    self._size_bytes += len(data) - replaced_bytes
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
            raise
        _fsync_dir(path.parent)
        return sha

    def delete(self, sha256: str) -> bool:
        """Remove a chunk; whether it was there."""
        path = self.path_of(sha256)
        try:
            size = path.lstat().st_size
            path.unlink()
        except FileNotFoundError:
            return False
        self._account(-size)
        return True

    def shas(self) -> list[str]:
        """The hashes of every chunk held (in no particular order)."""
        return [sha for sha, _, _ in self._scan()]

    def size_bytes(self) -> int:
        """Bytes of chunks held (counted once by a scan, then kept up to date)."""
        with self._lock:
            if self._size_bytes is not None:
                return self._size_bytes
        total = sum(size for _, size, _ in self._scan())
        with self._lock:
            self._size_bytes = total
        return total

    def prune(self, max_bytes: int, keep: Set[str] = frozenset()) -> PruneStats:
        """Delete the least recently used chunks (oldest modification time first) until at most ``max_bytes``.

        Chunks are touched when read or re-stored, so this evicts what no recent checkpoint used.

        Args:
            max_bytes: the size to shrink the store to.
            keep: hashes never to delete (the chunks of checkpoints in flight); the store may stay above
                ``max_bytes`` because of them.

        Returns:
            How many chunks and bytes were removed, and the size left.
        """
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        entries = sorted(self._scan(), key=lambda entry: entry[2])
        total = sum(size for _, size, _ in entries)
        removed = removed_bytes = 0
        for sha, size, _ in entries:
            if total <= max_bytes:
                break
            if sha in keep:
                continue
            # Deleted by someone else meanwhile: it no longer counts either way.
            with contextlib.suppress(FileNotFoundError):
                self.path_of(sha).unlink()
            total -= size
            removed += 1
            removed_bytes += size
        with self._lock:
            self._size_bytes = total
        if removed:
            logger.info(
                "chunk store %s: pruned %d chunks (%d bytes), %d bytes left",
                self.root,
                removed,
                removed_bytes,
                total,
            )
        return PruneStats(removed, removed_bytes, total)

    # internals

    def _size_problem(self, info: os.stat_result, size_bytes: int | None) -> str | None:
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        if size_bytes is not None and info.st_size != size_bytes:
            return f"{info.st_size} bytes on disk, expected {size_bytes}"
        if not 1 <= info.st_size <= self.max_chunk_bytes:
            return f"{info.st_size} bytes on disk"
        return None

    def _file_size(self, path: Path) -> int:
        """Size of the regular file at ``path``; 0 when there is none."""
        try:
            info = path.lstat()
        except FileNotFoundError:
            return 0
        return info.st_size if stat.S_ISREG(info.st_mode) else 0

    def _held_size(self, path: Path, size_bytes: int | None) -> int | None:
        try:
            info = path.lstat()
        except FileNotFoundError:
            return None
        return info.st_size if self._size_problem(info, size_bytes) is None else None

    def _scan(self) -> list[tuple[str, int, float]]:
        """(sha256, size_bytes, mtime_s) of every chunk file."""
        found: list[tuple[str, int, float]] = []
        with os.scandir(self.root) as top:
            for bucket in top:
                if len(bucket.name) != 2 or not bucket.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(bucket.path) as inner:
                    for entry in inner:
                        sha = bucket.name + entry.name
                        if not _SHA256.fullmatch(sha):
                            continue
                        try:
                            info = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        if stat.S_ISREG(info.st_mode):
                            found.append((sha, info.st_size, info.st_mtime))
        return found

    def _account(self, delta_bytes: int) -> None:
        with self._lock:
            if self._size_bytes is not None:
                self._size_bytes = max(0, self._size_bytes + delta_bytes)

    def _touch(self, path: Path) -> None:
        try:
            os.utime(path)
        except OSError as err:  # a read-only store still serves chunks; only the LRU order suffers
            logger.debug("cannot touch %s: %s", path, err)

    def _discard(self, path: Path, problem: str) -> None:
        logger.warning("chunk store %s: removing damaged chunk %s (%s)", self.root, path.name, problem)
        try:
            size = path.lstat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        self._account(-size)

    def _remove_stale_temp_files(self) -> None:
        cutoff_s = time.time() - _STALE_TEMP_S
        with os.scandir(self._tmp) as entries:
            for entry in entries:
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff_s:
                        os.unlink(entry.path)
                except FileNotFoundError:
                    continue


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------ the manifest


async def build_manifest(
    checkpoint_dir: Path | str,
    *,
    store: ChunkStore,
    job_id: str,
    epoch: int,
    source_node: str,
    now_s: float,
    chunk_size_bytes: int = DEFAULT_CHUNK_SIZE_BYTES,
    compression: Literal["none", "zstd"] = "none",
) -> Manifest:
    """Cut a checkpoint directory into chunks, put them into ``store`` and describe them in a manifest.

    Runs in a thread. Chunks the store already holds are hashed but not written again, so an unchanged file
    costs one read. Empty directories are not recorded.

    Args:
        checkpoint_dir: the checkpoint (regular files and directories only).
        store: the source's chunk store (it serves the chunks to the destination).
        job_id, epoch, source_node: what the manifest says it belongs to.
        now_s: the time to record as ``created_s`` (UTC POSIX s).
        chunk_size_bytes: the chunk size (4 KiB .. 64 MiB).
        compression: the wire encoding to announce ("zstd" when the sender will offer it).

    Returns:
        The validated manifest (files in a stable order).

    Raises:
        CheckpointError: the directory is missing, is or holds a symlink or a special file, holds a path a
            manifest cannot carry, exceeds the limits, or changed while it was read.
    """
    return await asyncio.to_thread(
        _build_manifest,
        Path(checkpoint_dir),
        store,
        job_id=job_id,
        epoch=epoch,
        source_node=source_node,
        now_s=now_s,
        chunk_size_bytes=chunk_size_bytes,
        compression=compression,
    )


def _build_manifest(
    root: Path,
    store: ChunkStore,
    *,
    job_id: str,
    epoch: int,
    source_node: str,
    now_s: float,
    chunk_size_bytes: int,
    compression: Literal["none", "zstd"],
) -> Manifest:
    if chunk_size_bytes > store.max_chunk_bytes:
        raise ValueError(
            f"chunk_size_bytes {chunk_size_bytes} exceeds the store's max ({store.max_chunk_bytes})"
        )
    try:
        info = root.lstat()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint directory {root} does not exist") from None
    if stat.S_ISLNK(info.st_mode):
        raise CheckpointError(f"checkpoint directory {root} is a symbolic link; give the real directory")
    if not stat.S_ISDIR(info.st_mode):
        raise CheckpointError(f"checkpoint {root} is not a directory")
    files: list[ManifestFile] = []
    total_bytes = 0
    for relative in _list_files(root):
        file = _chunk_file(root, relative, store, chunk_size_bytes)
        total_bytes += file.size_bytes
        if total_bytes > MAX_TOTAL_BYTES:
            raise CheckpointError(f"checkpoint {root} is larger than {MAX_TOTAL_BYTES} bytes")
        files.append(file)
    try:
        manifest = Manifest(
            job_id=job_id,
            epoch=epoch,
            source_node=source_node,
            created_s=float(now_s),
            chunk_size_bytes=chunk_size_bytes,
            files=files,
            total_bytes=total_bytes,
            compression=compression,
        )
    except ValidationError as err:
        raise CheckpointError(f"checkpoint {root}: {first_validation_error(err)}") from None
    logger.info(
        "manifest of %s: %d files, %d bytes, %d distinct chunks",
        root,
        len(files),
        total_bytes,
        len(manifest.distinct_chunks()),
    )
    return manifest


def _list_files(root: Path) -> list[str]:
    """Relative POSIX paths of every regular file under ``root``, in a stable order."""
    found: list[str] = []

    def walk(directory: Path, prefix: str) -> None:
        with os.scandir(directory) as entries:
            ordered = sorted(entries, key=lambda entry: entry.name)
        for entry in ordered:
            relative = prefix + entry.name
            try:
                check_relative_path(relative)
            except ValueError as err:
                raise CheckpointError(f"checkpoint {root}: {err}") from None
            if entry.is_symlink():
                raise CheckpointError(
                    f"checkpoint {root}: {relative!r} is a symbolic link (a checkpoint holds only regular"
                    " files and directories)"
                )
            if entry.is_dir(follow_symlinks=False):
                walk(Path(entry.path), relative + "/")
            elif entry.is_file(follow_symlinks=False):
                found.append(relative)
                if len(found) > MAX_FILES:
                    raise CheckpointError(f"checkpoint {root} holds more than {MAX_FILES} files")
            else:
                raise CheckpointError(
                    f"checkpoint {root}: {relative!r} is a special file (socket, FIFO or device), not a"
                    " regular file"
                )

    walk(root, "")
    return found


def _chunk_file(root: Path, relative: str, store: ChunkStore, chunk_size_bytes: int) -> ManifestFile:
    path = root.joinpath(*relative.split("/"))
    try:  # O_NONBLOCK: a FIFO swapped in since the walk must not block the open (it fails S_ISREG below)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        raise CheckpointError(f"checkpoint {root}: cannot open {relative!r}: {err.strerror}") from err
    chunks: list[ChunkRef] = []
    size_bytes = 0
    with os.fdopen(fd, "rb") as handle:
        before = os.fstat(handle.fileno())
        if not stat.S_ISREG(before.st_mode):
            raise CheckpointError(f"checkpoint {root}: {relative!r} is not a regular file")
        while block := handle.read(chunk_size_bytes):
            chunks.append(ChunkRef(sha256=store.put(block), size_bytes=len(block)))
            size_bytes += len(block)
        after = os.fstat(handle.fileno())
    if (
        size_bytes != before.st_size
        or after.st_size != before.st_size
        or after.st_mtime_ns != before.st_mtime_ns
    ):
        raise CheckpointError(f"checkpoint {root}: {relative!r} changed while it was read; checkpoint again")
    return ManifestFile(
        path=relative, size_bytes=size_bytes, mode=stat.S_IMODE(before.st_mode) & 0o777, chunks=chunks
    )


# ------------------------------------------------------------------------------------------ signatures


def sign_manifest(manifest: Manifest, private_key: PrivateKey) -> bytes:
    """Sign the manifest's canonical bytes: ECDSA with SHA-256 (DER) for an EC key, or Ed25519.

    Args:
        manifest: the manifest to sign.
        private_key: the source node's key (EC P-256 like its TLS certificate's, or Ed25519).

    Returns:
        The signature.

    Raises:
        ConfigError: the key is of another kind.
    """
    data = manifest.canonical_bytes()
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(data)
    raise ConfigError(
        f"cannot sign a manifest with a {type(private_key).__name__}; node keys are EC P-256 (or Ed25519)"
    )


def verify_manifest(manifest: Manifest | bytes, signature: bytes, public_key: PublicKey) -> Manifest:
    """Check a manifest's signature against the source's public key (from its TLS certificate).

    The signature covers the canonical bytes, so a manifest given as JSON is validated first and its
    canonical form checked: reformatting the JSON does not matter, changing any value does.

    Args:
        manifest: the manifest, validated or as the JSON bytes received.
        signature: what :func:`sign_manifest` returned.
        public_key: the signer's EC or Ed25519 public key.

    Returns:
        The manifest whose signature checked.

    Raises:
        PayloadError: ``bad_manifest`` (JSON that does not validate), ``bad_signature`` (the signature does
            not match the manifest and the key), ``bad_key`` (a key of another kind).
    """
    parsed = parse_manifest(bytes(manifest)) if isinstance(manifest, (bytes, bytearray)) else manifest
    data = parsed.canonical_bytes()
    if not isinstance(signature, (bytes, bytearray)):
        raise PayloadError("bad_signature", "the signature must be bytes")
    if not isinstance(public_key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
        raise PayloadError("bad_key", f"cannot verify with a {type(public_key).__name__} (EC or Ed25519)")
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(bytes(signature), data, ec.ECDSA(hashes.SHA256()))
        else:
            public_key.verify(bytes(signature), data)
    except (InvalidSignature, ValueError) as err:
        raise PayloadError(
            "bad_signature", "the manifest's signature does not match its content and the source's key"
        ) from err
    return parsed


# ------------------------------------------------------------------------------------------ server side


class _RefusedError(Exception):
    """An HTTP refusal decided in a worker thread (turned into a JSON error response)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _error_response(status: int, code: str, message: str) -> web.Response:
    body = json.dumps({"error": {"code": code, "message": message}})
    return web.Response(status=status, text=body, content_type="application/json")


def transfer_routes(
    store: ChunkStore,
    *,
    max_chunk_bytes: int,
    authorize: Authorize,
    accept_zstd: bool = True,
) -> list[web.RouteDef]:
    """The destination's chunk routes, for the peer server to mount (``/v1/transfers/{transfer_id}/...``).

    ``POST .../have`` takes a JSON list of ``{"sha256", "size_bytes"}`` (at most 10,000) and answers
    ``{"missing": [sha256...], "encodings": ["zstd"], "max_chunk_bytes": N}``. ``PUT .../chunks/{sha256}``
    takes the chunk's bytes, raw or zstd (``Content-Encoding: zstd``); it is decompressed with a bound,
    verified and stored: 201, or 413 (too big, checked while the body streams in), 415 (an encoding this
    node cannot decode), 422 (the bytes do not hash to the URL's sha256). Every answer but 201/200 is
    ``{"error": {"code", "message"}}``.

    The peer server should run with ``auto_decompress=False`` so zstd bodies reach the handler as sent
    (aiohttp cannot decode zstd without backports.zstd and answers 400, which makes senders fall back to
    raw chunks); bodies the server did decode are recognised by their hash.

    Args:
        store: the destination's chunk store.
        max_chunk_bytes: the largest chunk (and body) accepted.
        authorize: called as ``authorize(request, transfer_id)`` before anything is read; raises an aiohttp
            HTTP error (401, 403, 404) to refuse. May be a coroutine function.
        accept_zstd: take zstd-compressed chunks (when the zstandard module is installed).

    Returns:
        aiohttp route definitions.
    """
    if not 1 <= max_chunk_bytes <= store.max_chunk_bytes:
        raise ValueError(f"max_chunk_bytes must be in 1..{store.max_chunk_bytes} (the store's limit)")
    handler = _TransferHandler(store, max_chunk_bytes, authorize, accept_zstd)
    base = f"/v1/transfers/{{transfer_id:{TRANSFER_ID_RE}}}"
    return [
        web.post(f"{base}/have", handler.have),
        web.put(f"{base}/chunks/{{sha256:[0-9a-f]{{64}}}}", handler.put_chunk),
    ]


class _TransferHandler:
    def __init__(
        self, store: ChunkStore, max_chunk_bytes: int, authorize: Authorize, accept_zstd: bool
    ) -> None:
        self._store = store
        self._max_chunk_bytes = max_chunk_bytes
        self._authorize = authorize
        self._accept_zstd = accept_zstd

    def _zstd(self) -> bool:
        return self._accept_zstd and ZSTD_AVAILABLE

    async def _check(self, request: web.Request) -> str:
        transfer_id = request.match_info["transfer_id"]
        outcome = self._authorize(request, transfer_id)
        if inspect.isawaitable(outcome):
            await outcome
        return transfer_id

    async def have(self, request: web.Request) -> web.Response:
        """POST .../have: which of these chunks are missing here."""
        transfer_id = await self._check(request)
        if request.content_type != "application/json":
            return _error_response(415, "not_json", "the body must be application/json")
        try:
            body = await _read_body(request, _HAVE_BODY_LIMIT_BYTES)
            refs = _parse_have(body, self._max_chunk_bytes)
        except _RefusedError as refusal:
            return _error_response(refusal.status, refusal.code, refusal.message)
        missing = await asyncio.to_thread(self._store.missing, refs)
        logger.debug("transfer %s: %d of %d chunks missing", transfer_id, len(missing), len(refs))
        return web.json_response(
            {
                "missing": missing,
                "encodings": ["zstd"] if self._zstd() else [],
                "max_chunk_bytes": self._max_chunk_bytes,
            }
        )

    async def put_chunk(self, request: web.Request) -> web.Response:
        """PUT .../chunks/{sha256}: one chunk, verified before it is stored."""
        transfer_id = await self._check(request)
        sha = request.match_info["sha256"]
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        try:
            body = await _read_body(request, self._max_chunk_bytes)
            size_bytes = await asyncio.to_thread(self._store_chunk, body, sha, encoding)
        except _RefusedError as refusal:
            logger.warning("transfer %s: refused chunk %s: %s", transfer_id, sha[:16], refusal.message)
            return _error_response(refusal.status, refusal.code, refusal.message)
        return web.json_response({"sha256": sha, "size_bytes": size_bytes}, status=201)

    def _store_chunk(self, body: bytes, sha: str, encoding: str) -> int:
        if not body:
            raise _RefusedError(422, "empty_chunk", "a chunk cannot be empty")
        if encoding in ("", "identity"):
            data = body
        elif hashlib.sha256(body).hexdigest() == sha:
            data = body  # the HTTP server decoded it (aiohttp does gzip, br, and zstd with backports.zstd)
        elif encoding == "zstd" and self._zstd():
            data = _zstd_decompress(body, self._max_chunk_bytes)
        else:
            raise _RefusedError(
                415, "unsupported_encoding", f"this node cannot decode Content-Encoding {encoding!r}"
            )
        try:
            self._store.put(data, sha)
        except ChunkCorruptError as err:
            raise _RefusedError(422, "chunk_hash_mismatch", str(err)) from None
        except OSError as err:
            if err.errno in _NO_SPACE:  # not transient: retrying only fills the disk again until the deadline
                raise _RefusedError(507, "insufficient_storage", f"cannot store the chunk: {err}") from None
            raise
        return len(data)


_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


async def _read_body(request: web.Request, limit_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit_bytes`` (before all of it arrives)."""
    declared = request.content_length
    if declared is not None and declared > limit_bytes:
        raise _RefusedError(413, "too_large", f"the body is {declared} bytes; at most {limit_bytes}")
    received = bytearray()
    async for block in request.content.iter_chunked(_READ_BLOCK_BYTES):
        received += block
        if len(received) > limit_bytes:
            raise _RefusedError(413, "too_large", f"the body exceeds {limit_bytes} bytes")
    return bytes(received)


def _parse_have(body: bytes, max_chunk_bytes: int) -> list[ChunkRef]:
    try:
        items = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise _RefusedError(400, "bad_json", f"not JSON: {err}") from None
    if not isinstance(items, list):
        raise _RefusedError(422, "invalid", "the body must be a JSON list of {sha256, size_bytes}")
    if len(items) > MAX_HAVE_REFS:
        raise _RefusedError(413, "too_many", f"{len(items)} chunks in one request (at most {MAX_HAVE_REFS})")
    refs: list[ChunkRef] = []
    for index, item in enumerate(items):
        try:
            ref = ChunkRef.model_validate(item)
        except ValidationError as err:
            raise _RefusedError(422, "invalid", f"[{index}].{first_validation_error(err)}") from None
        if ref.size_bytes > max_chunk_bytes:
            raise _RefusedError(
                413,
                "chunk_too_large",
                f"chunk {ref.sha256} is {ref.size_bytes} bytes; at most {max_chunk_bytes}",
            )
        refs.append(ref)
    return refs


def _zstd_decompress(body: bytes, limit_bytes: int) -> bytes:
    """Decompress a zstd body, refusing (413) output past ``limit_bytes`` before it is all produced."""
    assert zstandard is not None
    parts: list[bytes] = []
    produced = 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True)
        while block := reader.read(min(_READ_BLOCK_BYTES, limit_bytes + 1 - produced)):
            produced += len(block)
            if produced > limit_bytes:
                raise _RefusedError(
                    413, "too_large", f"the chunk decompresses to more than {limit_bytes} bytes"
                )
            parts.append(block)
    except zstandard.ZstdError as err:
        raise _RefusedError(422, "bad_zstd", f"not a valid zstd stream: {err}") from None
    return b"".join(parts)


# ------------------------------------------------------------------------------------------ client side


@dataclass(frozen=True)
class TransferStats:
    """What one :func:`send_chunks` call did. Bytes are chunk (uncompressed) bytes unless named wire."""

    bytes_sent: int
    bytes_skipped: int  # already at the destination
    chunks_sent: int
    chunks_skipped: int
    duration_s: float
    goodput_bps: float  # 8 * bytes_sent / duration_s: chunk bits delivered per second
    wire_bytes: int = 0  # body bytes on the wire (smaller than bytes_sent with zstd)
    retries: int = 0
    compression: Literal["none", "zstd"] = "none"


@dataclass
class _Sender:
    session: aiohttp.ClientSession
    url: str
    store: ChunkStore
    streams: int
    max_attempts: int
    backoff_min_s: float
    backoff_max_s: float
    timeout: aiohttp.ClientTimeout
    progress: Callable[[int, int], None] | None
    total_bytes: int
    use_zstd: bool = False
    bytes_sent: int = 0
    bytes_skipped: int = 0
    chunks_sent: int = 0
    chunks_skipped: int = 0
    wire_bytes: int = 0
    retries: int = 0
    started_s: float = field(default_factory=time.monotonic)
    failures: list[TransferError | ChunkError] = field(default_factory=list)

    def stats(self) -> TransferStats:
        duration_s = max(time.monotonic() - self.started_s, 1e-9)
        return TransferStats(
            bytes_sent=self.bytes_sent,
            bytes_skipped=self.bytes_skipped,
            chunks_sent=self.chunks_sent,
            chunks_skipped=self.chunks_skipped,
            duration_s=duration_s,
            goodput_bps=8 * self.bytes_sent / duration_s,
            wire_bytes=self.wire_bytes,
            retries=self.retries,
            compression="zstd" if self.use_zstd else "none",
        )

    def report(self) -> None:
        if self.progress is not None:
            self.progress(min(self.bytes_skipped + self.bytes_sent, self.total_bytes), self.total_bytes)

    async def request(self, method: str, url: str, **kwargs: Any) -> tuple[int, str]:
        """One attempt: (status, body text), or (0, what went wrong) when no answer came."""
        try:
            async with self.session.request(method, url, timeout=self.timeout, **kwargs) as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            return 0, f"{type(err).__name__}: {err}"

    async def retrying(
        self,
        what: str,
        attempt_fn: Callable[[], Awaitable[tuple[int, str]]],
        transient: frozenset[int] = frozenset({408, 429}),
    ) -> str:
        """Run ``attempt_fn`` until a 2xx; the body. No answer, a 5xx or a ``transient`` 4xx is retried.

        Raises:
            TransferInterruptedError: still failing after max_attempts.
            TransferRefusedError: any other 4xx, or 507 (the destination's disk is full).
        """
        backoff = Backoff(min_s=self.backoff_min_s, max_s=self.backoff_max_s)
        attempt = 0
        while True:
            attempt += 1
            status, text = await attempt_fn()
            if 200 <= status < 300:
                return text
            if status == 0:
                problem = text
            else:
                code, message = _error_of(text)
                if (status < 500 and status not in transient) or status == 507:
                    raise TransferRefusedError(status, code, f"{what}: {message}")
                problem = f"HTTP {status} {code}: {message}"
            if attempt >= self.max_attempts:
                raise TransferInterruptedError(f"{what}: {problem} (gave up after {attempt} attempts)")
            self.retries += 1
            delay_s = backoff.next_delay_s()
            logger.info(
                "%s: %s; retrying in %.2f s (attempt %d of %d)",
                what,
                problem,
                delay_s,
                attempt,
                self.max_attempts,
            )
            await asyncio.sleep(delay_s)

    async def have(self, refs: list[ChunkRef]) -> tuple[list[str], list[str]]:
        """The hashes of ``refs`` the destination lacks, and the encodings it takes."""
        asked = {ref.sha256 for ref in refs}
        missing: list[str] = []
        encodings: list[str] = []
        for start in range(0, max(len(refs), 1), MAX_HAVE_REFS):
            batch = [ref.model_dump() for ref in refs[start : start + MAX_HAVE_REFS]]
            body = json.dumps(batch).encode()

            async def attempt(body: bytes = body) -> tuple[int, str]:
                headers = {"Content-Type": "application/json"}
                return await self.request("POST", f"{self.url}/have", data=body, headers=headers)

            text = await self.retrying(f"POST {self.url}/have", attempt)
            batch_missing, encodings = _parse_have_answer(text, asked, self.url)
            missing.extend(batch_missing)
        return missing, encodings

    async def push(self, refs: list[ChunkRef]) -> None:
        """Send ``refs`` over ``streams`` parallel requests; the first failure stops the others.

        Each stream reads (and re-verifies) its next chunk while the current one is on the wire: reading
        and hashing 8 MiB takes 10-20 ms, in which a stream that waited for it would leave its share of
        the link idle.
        """
        queue: asyncio.Queue[ChunkRef] = asyncio.Queue()
        for ref in refs:
            queue.put_nowait(ref)

        def read_next() -> tuple[ChunkRef, asyncio.Task[bytes]] | None:
            if self.failures or queue.empty():
                return None
            ref = queue.get_nowait()
            return ref, asyncio.create_task(asyncio.to_thread(self.store.get, ref.sha256, ref.size_bytes))

        async def worker() -> None:
            upcoming = read_next()
            try:
                while upcoming is not None and not self.failures:
                    ref, reading = upcoming
                    upcoming = None
                    try:
                        data = await reading
                        upcoming = read_next()
                        await self.send_one(ref, data)
                    except (TransferError, ChunkError) as err:
                        self.failures.append(err)
            finally:
                if upcoming is not None:  # a failure elsewhere: the chunk read ahead is not sent
                    upcoming[1].cancel()
                    upcoming[1].add_done_callback(_retrieve)

        async with asyncio.TaskGroup() as group:
            for _ in range(min(self.streams, len(refs))):
                group.create_task(worker())
        if self.failures:
            raise self.failures[0]

    async def send_one(self, ref: ChunkRef, data: bytes) -> None:
        url = f"{self.url}/chunks/{ref.sha256}"
        compressed = await asyncio.to_thread(_zstd_compress, data) if self.use_zstd else None

        async def attempt() -> tuple[int, str]:
            nonlocal compressed
            body = data if compressed is None else compressed
            headers = {"Content-Type": "application/octet-stream"}
            if compressed is not None:
                headers["Content-Encoding"] = "zstd"
            status, text = await self.request("PUT", url, data=io.BytesIO(body), headers=headers)
            if compressed is not None and status in (400, 415):
                # The destination's HTTP server cannot take zstd bodies: raw chunks from now on.
                logger.warning("%s refused a zstd chunk (HTTP %d); sending uncompressed", self.url, status)
                self.use_zstd = False
                compressed = None
                body = data
                headers.pop("Content-Encoding")
                status, text = await self.request("PUT", url, data=io.BytesIO(body), headers=headers)
            if 200 <= status < 300:
                self.wire_bytes += len(body)
            return status, text

        # 422: the chunk arrived damaged (it was verified before it left): send it again.
        await self.retrying(f"PUT chunk {ref.sha256[:16]}", attempt, frozenset({408, 422, 429}))
        self.bytes_sent += ref.size_bytes
        self.chunks_sent += 1
        self.report()


def _retrieve(task: asyncio.Task[bytes]) -> None:
    """Mark a discarded task's outcome as seen (its exception, if any, is not a failure of the push)."""
    if not task.cancelled():
        task.exception()


def _zstd_compress(data: bytes) -> bytes | None:
    """zstd of ``data``, or None when that would not be smaller (the chunk then goes raw)."""
    assert zstandard is not None
    packed = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(data)
    return packed if len(packed) < len(data) else None


def _error_of(text: str) -> tuple[str, str]:
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        return str(error.get("code", "http_error")), str(error.get("message", ""))[:500]
    return "http_error", text[:200]


def _parse_have_answer(text: str, asked: Set[str], url: str) -> tuple[list[str], list[str]]:
    try:
        answer = json.loads(text)
    except json.JSONDecodeError:
        raise ProtocolError(f"{url}/have: the answer is not JSON") from None
    missing = answer.get("missing") if isinstance(answer, dict) else None
    if not isinstance(missing, list) or not all(isinstance(sha, str) and sha in asked for sha in missing):
        raise ProtocolError(f"{url}/have: 'missing' must list hashes that were asked about")
    encodings = answer.get("encodings", [])
    if not isinstance(encodings, list):
        raise ProtocolError(f"{url}/have: 'encodings' must be a list")
    return list(dict.fromkeys(missing)), [str(name) for name in encodings]


async def send_chunks(
    session: aiohttp.ClientSession,
    base_url: str,
    transfer_id: str,
    manifest: Manifest,
    store: ChunkStore,
    *,
    streams: int = 4,
    compress: bool = False,
    progress: Callable[[int, int], None] | None = None,
    max_attempts: int = 5,
    backoff_min_s: float = 0.5,
    backoff_max_s: float = 10.0,
    request_timeout_s: float = 300.0,
) -> TransferStats:
    """Push the manifest's chunks that the destination lacks, over ``streams`` parallel requests.

    Resumable: it first asks the destination which chunks it holds, so calling it again after an
    interruption sends only what is still missing. After the push it asks again, and resends whatever did
    not arrive (a bounded number of rounds). Each chunk is read from ``store`` (its hash re-verified) and,
    with ``compress`` and a destination that accepts it, sent zstd-compressed when that is smaller.

    Args:
        session: an aiohttp session the caller owns (with its mutual-TLS connector).
        base_url: the destination's peer API, e.g. ``https://node-b:9471``.
        transfer_id: the transfer (the migration id).
        manifest: what to send.
        store: the source's chunk store, holding every chunk of ``manifest``.
        streams: parallel requests (1..64).
        compress: offer zstd (used only when zstandard imports and the destination accepts it).
        progress: called as ``progress(done_bytes, total_bytes)`` (distinct chunk bytes) after each chunk.
        max_attempts: tries per request before giving up (on no answer, a 5xx but 507, 408, 429, and 422
            for a chunk that arrived damaged).
        backoff_min_s, backoff_max_s: the jittered backoff between tries (s).
        request_timeout_s: bound on one request (s).

    Returns:
        What was sent and skipped, and the goodput.

    Raises:
        TransferInterruptedError: the destination stayed unreachable or failing; call again to resume.
        TransferRefusedError: the destination refused (401/403/404/413 ...).
        ChunkError: a chunk is missing from or damaged in ``store`` (build the manifest again).
        ProtocolError: the destination's answer is malformed.
    """
    if not 1 <= streams <= 64:
        raise ValueError("streams must be in 1..64")
    if max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")
    if not _TRANSFER_ID.fullmatch(transfer_id):
        raise ValueError(f"transfer_id {transfer_id[:80]!r} must match {TRANSFER_ID_RE}")
    distinct = manifest.distinct_chunks()
    sender = _Sender(
        session=session,
        url=f"{base_url.rstrip('/')}/v1/transfers/{transfer_id}",
        store=store,
        streams=streams,
        max_attempts=max_attempts,
        backoff_min_s=backoff_min_s,
        backoff_max_s=backoff_max_s,
        timeout=aiohttp.ClientTimeout(total=request_timeout_s),
        progress=progress,
        total_bytes=sum(ref.size_bytes for ref in distinct),
    )
    by_sha = {ref.sha256: ref for ref in distinct}
    try:
        missing, encodings = await sender.have(distinct)
        sender.use_zstd = compress and ZSTD_AVAILABLE and "zstd" in encodings
        absent = set(missing)
        sender.chunks_skipped = len(distinct) - len(absent)
        sender.bytes_skipped = sender.total_bytes - sum(by_sha[sha].size_bytes for sha in absent)
        sender.report()
        rounds = 0
        while missing:
            if rounds == _MAX_ROUNDS:
                raise TransferInterruptedError(
                    f"{sender.url}: {len(missing)} chunks still missing after {rounds} rounds"
                )
            rounds += 1
            refs = [by_sha[sha] for sha in missing]
            await sender.push(refs)
            missing, _ = await sender.have(refs)
            if missing:
                logger.warning("%s: %d chunks sent but not held; resending", sender.url, len(missing))
    except TransferError as err:
        err.stats = sender.stats()
        raise
    stats = sender.stats()
    logger.info(
        "transfer %s: sent %d chunks (%d bytes, %d on the wire), skipped %d (%d bytes), %.2f s, %.1f Mbit/s",
        transfer_id,
        stats.chunks_sent,
        stats.bytes_sent,
        stats.wire_bytes,
        stats.chunks_skipped,
        stats.bytes_skipped,
        stats.duration_s,
        stats.goodput_bps / 1e6,
    )
    return stats


# ------------------------------------------------------------------------------------------ materialize


async def materialize(manifest: Manifest, store: ChunkStore, dest_dir: Path | str) -> Path:
    """Rebuild the checkpoint directory from the chunk store, atomically, writing only inside ``dest_dir``.

    Files are written into a new temporary directory next to ``dest_dir`` (each chunk's hash re-verified,
    every path re-checked, no symlink followed), fsynced, then renamed into place; an existing ``dest_dir``
    is replaced. Modes keep their permission bits, with owner read/write always set and group/other write
    cleared.

    Args:
        manifest: the (verified) manifest.
        store: the chunk store holding its chunks.
        dest_dir: the directory to create (its parent is created if needed).

    Returns:
        ``dest_dir``.

    Raises:
        ChunkMissingError, ChunkCorruptError: a chunk is not there or is damaged (names the file).
        CheckpointError: a path would leave ``dest_dir``, ``dest_dir`` is a symlink or a file, or the
            disk lacks the space.
    """
    return await asyncio.to_thread(_materialize, manifest, store, Path(dest_dir))


def _materialize(manifest: Manifest, store: ChunkStore, dest: Path) -> Path:
    _recheck_paths(manifest)
    if dest.is_symlink():
        raise CheckpointError(f"{dest} is a symbolic link; refusing to write through it")
    if dest.exists() and not dest.is_dir():
        raise CheckpointError(f"{dest} exists and is not a directory")
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    free_bytes = shutil.disk_usage(parent).free
    if free_bytes < manifest.total_bytes:
        raise CheckpointError(
            f"{parent}: {free_bytes} bytes free, the checkpoint needs {manifest.total_bytes}"
        )
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=parent))
    try:
        root = staging.resolve()
        for file in manifest.files:
            _write_file(root, file, store)
        _fsync_dir(root)
        _swap_into_place(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("materialized %d files (%d bytes) into %s", len(manifest.files), manifest.total_bytes, dest)
    return dest


def _recheck_paths(manifest: Manifest) -> None:
    """Paths again, here: a manifest made with model_construct skipped validation."""
    seen: set[str] = set()
    for file in manifest.files:
        try:
            check_relative_path(file.path)
        except ValueError as err:
            raise CheckpointError(f"refusing to materialize: {err}") from None
        if file.path in seen:
            raise CheckpointError(f"refusing to materialize: {file.path!r} is listed twice")
        seen.add(file.path)


def _write_file(root: Path, file: ManifestFile, store: ChunkStore) -> None:
    parts = file.path.split("/")
    directory = root
    for part in parts[:-1]:
        directory = directory / part
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            if not stat.S_ISDIR(directory.lstat().st_mode):  # a file, or a symlink planted meanwhile
                raise CheckpointError(
                    f"refusing to materialize {file.path!r}: {part!r} is not a directory"
                ) from None
    target = directory / parts[-1]
    if directory != root and not os.path.realpath(directory).startswith(str(root) + os.sep):
        raise CheckpointError(f"refusing to materialize {file.path!r}: it resolves outside {root}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(target, flags, 0o600)
    except FileExistsError:
        raise CheckpointError(
            f"refusing to materialize {file.path!r}: it collides with another path"
        ) from None
    with os.fdopen(fd, "wb") as out:
        for index, ref in enumerate(file.chunks):
            try:
                out.write(store.get(ref.sha256, ref.size_bytes))
            except ChunkMissingError as err:
                raise ChunkMissingError(
                    f"cannot rebuild {file.path!r}: chunk {index} ({ref.sha256}) is not in the chunk store"
                ) from err
            except ChunkCorruptError as err:
                raise ChunkCorruptError(f"cannot rebuild {file.path!r}: chunk {index}: {err}") from err
        out.flush()
        os.fsync(out.fileno())
        os.fchmod(out.fileno(), (file.mode & 0o755) | 0o600)


def _swap_into_place(staging: Path, dest: Path) -> None:
    old: Path | None = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(dest, old)
    try:
        os.rename(staging, dest)
    except BaseException:
        if old is not None:
            os.rename(old, dest)
        raise
    _fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old)
