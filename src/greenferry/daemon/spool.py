"""A durable on-disk spool of line-protocol batches: what the time-series server could not take yet.

Layout: a directory of append-only segment files ``seg-<20-digit sequence>.spool``, oldest first, plus a
``cursor`` file (how far replay got) and a ``lock`` file (one process per spool). Each record is::

    magic b"GFS1" | payload length u32 | point count u32 | CRC-32 of payload u32 | payload

with the payload a newline-separated line-protocol body. A record is appended with one ``write`` and
``fsync``'d (with the directory, when a segment is created) before :meth:`Spool.append` returns, so a
batch the server refused survives a crash or power cut. ``fsync_interval_s > 0`` trades that for speed:
records are synced at most that often, and a crash may lose the records written since the last sync.

Replay is strictly in order: :meth:`Spool.peek` returns the oldest record not yet acknowledged and
:meth:`Spool.ack` moves past it (a fully replayed segment is deleted). The cursor is rewritten atomically
on each ack but not fsync'd: after a crash a few records may be replayed twice (InfluxDB overwrites
identical points, so this is at-least-once delivery, never loss).

Bound: the segment files never exceed ``max_bytes`` together. An append that would go beyond it drops
the OLDEST segments first; the points they held are counted in
``greenferry_telemetry_dropped_points_total{reason="spool_full"}`` and :attr:`Spool.dropped_points`.

A new process opens the same directory, scans every segment (checking magic, length and CRC), replays
what is left, and appends to a new segment. A truncated or corrupt record (a crash mid-write, a bad disk
block) is logged and skipped: the scan resynchronises at the next valid record, and never raises.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from prometheus_client import CollectorRegistry, Counter, Gauge

from greenferry.core.clock import Clock
from greenferry.errors import ServiceUnavailableError

logger = logging.getLogger(__name__)

__all__ = ["Spool", "SpoolRecord"]

MAGIC = b"GFS1"
_HEADER = struct.Struct("<4sIII")  # magic, payload length, point count, crc32
HEADER_BYTES = _HEADER.size
_SEGMENT_PREFIX = "seg-"
_SEGMENT_SUFFIX = ".spool"
MAX_RECORD_BYTES = 1 << 30  # a header claiming more is corrupt


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One spooled batch: its line-protocol payload and how many points it holds."""

    segment: int
    offset: int
    payload: bytes
    points: int


@dataclass(slots=True)
class _Entry:
    offset: int
    length: int  # payload bytes
    points: int

    @property
    def end(self) -> int:
        return self.offset + HEADER_BYTES + self.length


@dataclass(slots=True)
class _Segment:
    sequence: int
    path: Path
    size_bytes: int = 0
    entries: deque[_Entry] = field(default_factory=deque)  # unacknowledged records, oldest first

    @property
    def points(self) -> int:
        return sum(entry.points for entry in self.entries)


class Spool:
    """Durable, bounded, ordered queue of line-protocol batches in ``directory``.

    Use as a context manager (``with Spool(...) as spool:``) or call :meth:`open` / :meth:`close`.
    Methods do blocking file I/O: each call is one small write (plus fsync); callers in async code
    accept that short block rather than hand the file to a thread that cancellation cannot stop.

    Args:
        directory: the spool directory (created if missing).
        max_bytes: bound on the segment files' total size (bytes).
        registry: Prometheus registry for the spool's metrics.
        clock: needed only with ``fsync_interval_s > 0`` (monotonic time between syncs).
        fsync_interval_s: 0 (default) syncs every record; > 0 syncs at most that often.
        segment_bytes: a segment is closed and a new one started past this size (default max_bytes / 8,
            between 4 KiB and 16 MiB); it is also the granularity of drop-oldest.
    """

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        registry: CollectorRegistry,
        *,
        clock: Clock | None = None,
        fsync_interval_s: float = 0.0,
        segment_bytes: int | None = None,
    ) -> None:
        if max_bytes < 2 * HEADER_BYTES:
            raise ValueError("spool max_bytes is too small to hold a record")
        if fsync_interval_s > 0 and clock is None:
            raise ValueError("fsync_interval_s > 0 needs a clock")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or min(16 << 20, max(4096, max_bytes // 8))
        self.fsync_interval_s = fsync_interval_s
        self._clock = clock
        self._segments: deque[_Segment] = deque()
        self._writer: int | None = None  # fd of the active (newest) segment
        self._lock_fd: int | None = None
        self._last_sync_s = -float("inf")
        self._unsynced = False
        self.dropped_points = 0
        self.corrupt_bytes = 0
        self._dropped_total = Counter(
            "greenferry_telemetry_dropped_points",
            "Telemetry points lost: spool_full (drop-oldest beyond the bound), rejected (the server said "
            "bad data), buffer_full (neither server nor disk took them)",
            ["reason"],
            registry=registry,
        )
        self._dropped_total.labels("spool_full")
        self._dropped_total.labels("rejected")
        self._dropped_total.labels("buffer_full")
        self._corrupt_total = Counter(
            "greenferry_telemetry_spool_corrupt_bytes",
            "Bytes of truncated or corrupt spool records skipped when the spool was opened",
            registry=registry,
        )
        self._bytes_gauge = Gauge(
            "greenferry_telemetry_spool_bytes",
            "Bytes in the telemetry spool's segment files",
            registry=registry,
        )
        self._points_gauge = Gauge(
            "greenferry_telemetry_spool_points", "Points waiting in the telemetry spool", registry=registry
        )

    # -- lifecycle ----------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Lock the directory, scan its segments (skipping corrupt records), restore the cursor.

        Raises:
            ServiceUnavailableError: the directory cannot be created or is in use by another process.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ServiceUnavailableError(f"telemetry spool {self.directory}: {err.strerror or err}") from err
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise ServiceUnavailableError(
                f"telemetry spool {self.directory} is in use by another greenferry process"
            ) from err
        cursor = self._read_cursor()
        for path in sorted(self.directory.glob(f"{_SEGMENT_PREFIX}*{_SEGMENT_SUFFIX}")):
            sequence = _sequence_of(path)
            if sequence is None:
                logger.warning("telemetry spool: ignoring unexpected file %s", path)
                continue
            if cursor is not None and sequence < cursor[0]:
                path.unlink(missing_ok=True)  # fully replayed before the last cursor write
                continue
            segment = self._scan(sequence, path)
            if cursor is not None and sequence == cursor[0]:
                while segment.entries and segment.entries[0].offset < cursor[1]:
                    segment.entries.popleft()
            if not segment.entries:
                path.unlink(missing_ok=True)
                continue
            self._segments.append(segment)
        self._update_gauges()
        if self._segments:
            logger.info(
                "telemetry spool %s: %d points in %d segment(s) (%d bytes) to replay",
                self.directory,
                self.points,
                len(self._segments),
                self.size_bytes,
            )

    def close(self) -> None:
        """Sync and close the active segment, release the lock."""
        if self._writer is not None:
            if self._unsynced:
                os.fsync(self._writer)
            os.close(self._writer)
            self._writer = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- state --------------------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        """Bytes in the segment files (acknowledged records still count until their segment goes)."""
        return sum(segment.size_bytes for segment in self._segments)

    @property
    def points(self) -> int:
        """Points not yet acknowledged."""
        return sum(segment.points for segment in self._segments)

    @property
    def records(self) -> int:
        """Batches not yet acknowledged."""
        return sum(len(segment.entries) for segment in self._segments)

    # -- writing ------------------------------------------------------------------------------------

    def append(self, payload: bytes, points: int) -> None:
        """Append one batch (durable on return unless ``fsync_interval_s`` > 0).

        A batch larger than the whole bound is dropped (and counted) instead; otherwise the oldest
        segments are dropped until it fits.

        Raises:
            OSError: the disk refused the write (full, read-only); nothing was appended.
        """
        if self._lock_fd is None:
            raise RuntimeError("open the spool before appending")
        record_bytes = HEADER_BYTES + len(payload)
        if record_bytes > self.max_bytes:
            logger.error(
                "telemetry spool: a %d-byte batch is larger than the whole spool bound (%d bytes); "
                "dropping its %d points",
                record_bytes,
                self.max_bytes,
                points,
            )
            self.record_drop(points, "spool_full")
            return
        active = self._active_segment()
        if (
            active is not None
            and active.size_bytes > 0
            and active.size_bytes + record_bytes > self.segment_bytes
        ):
            self._close_writer()
            active = None
        self._make_room(record_bytes)
        if active is None or active not in self._segments:
            active = self._new_segment()
        header = _HEADER.pack(MAGIC, len(payload), points, zlib.crc32(payload))
        assert self._writer is not None
        written = os.write(self._writer, header + payload)
        if written != record_bytes:  # a short write on a regular file means the disk is full
            os.ftruncate(self._writer, active.size_bytes)
            raise OSError(f"short write to {active.path}: {written} of {record_bytes} bytes")
        active.entries.append(_Entry(active.size_bytes, len(payload), points))
        active.size_bytes += record_bytes
        self._unsynced = True
        self._maybe_sync()
        self._update_gauges()

    def record_drop(self, points: int, reason: str) -> None:
        """Count ``points`` lost for ``reason`` ("spool_full", "rejected" or "buffer_full")."""
        self.dropped_points += points
        self._dropped_total.labels(reason).inc(points)

    def sync(self) -> None:
        """fsync the active segment now (used with ``fsync_interval_s`` > 0)."""
        if self._writer is not None and self._unsynced:
            os.fsync(self._writer)
            self._unsynced = False
            if self._clock is not None:
                self._last_sync_s = self._clock.monotonic_s()

    def _maybe_sync(self) -> None:
        if self.fsync_interval_s <= 0 or self._clock is None:
            self.sync()
            return
        if self._clock.monotonic_s() - self._last_sync_s >= self.fsync_interval_s:
            self.sync()

    def _active_segment(self) -> _Segment | None:
        if self._writer is None or not self._segments:
            return None
        return self._segments[-1]

    def _new_segment(self) -> _Segment:
        self._close_writer()
        sequence = self._segments[-1].sequence + 1 if self._segments else self._next_sequence()
        path = self.directory / f"{_SEGMENT_PREFIX}{sequence:020d}{_SEGMENT_SUFFIX}"
        self._writer = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o644)
        _fsync_dir(self.directory)  # the new name must survive a crash too
        segment = _Segment(sequence, path)
        self._segments.append(segment)
        return segment

    def _next_sequence(self) -> int:
        cursor = self._read_cursor()
        highest = cursor[0] if cursor is not None else 0
        for path in self.directory.glob(f"{_SEGMENT_PREFIX}*{_SEGMENT_SUFFIX}"):
            sequence = _sequence_of(path)
            if sequence is not None:
                highest = max(highest, sequence)
        return highest + 1

    def _close_writer(self) -> None:
        if self._writer is not None:
            if self._unsynced:
                os.fsync(self._writer)
                self._unsynced = False
            os.close(self._writer)
            self._writer = None

    def _make_room(self, record_bytes: int) -> None:
        while self._segments and self.size_bytes + record_bytes > self.max_bytes:
            oldest = self._segments[0]
            if oldest is self._active_segment():
                self._close_writer()
            self._segments.popleft()
            lost = oldest.points
            oldest.path.unlink(missing_ok=True)
            self.record_drop(lost, "spool_full")
            logger.warning(
                "telemetry spool full (%d bytes): dropped the oldest segment %s with %d points "
                "(%d dropped so far)",
                self.max_bytes,
                oldest.path.name,
                lost,
                self.dropped_points,
            )

    # -- reading ------------------------------------------------------------------------------------

    def peek(self) -> SpoolRecord | None:
        """The oldest batch not yet acknowledged, or None when the spool is empty."""
        for segment in self._segments:
            if segment.entries:
                entry = segment.entries[0]
                with segment.path.open("rb") as handle:
                    handle.seek(entry.offset + HEADER_BYTES)
                    payload = handle.read(entry.length)
                return SpoolRecord(segment.sequence, entry.offset, payload, entry.points)
        return None

    def ack(self, record: SpoolRecord) -> None:
        """Acknowledge ``record`` (the one :meth:`peek` returned): replay moves past it.

        Raises:
            ValueError: ``record`` is not the oldest unacknowledged batch (it may have been dropped).
        """
        while (
            self._segments
            and not self._segments[0].entries
            and self._segments[0] is not self._active_segment()
        ):
            self._remove_head()
        if not self._segments or not self._segments[0].entries:
            raise ValueError("nothing to acknowledge: the spool is empty")
        head = self._segments[0]
        entry = head.entries[0]
        if (head.sequence, entry.offset) != (record.segment, record.offset):
            raise ValueError("record is not the oldest in the spool (was it dropped meanwhile?)")
        head.entries.popleft()
        if not head.entries and head is not self._active_segment():
            self._remove_head()
            if self._segments:
                nxt = self._segments[0]
                self._write_cursor(nxt.sequence, nxt.entries[0].offset if nxt.entries else 0)
            else:
                self._write_cursor(head.sequence + 1, 0)
        else:
            self._write_cursor(head.sequence, entry.end)
        self._update_gauges()

    def _remove_head(self) -> None:
        head = self._segments.popleft()
        head.path.unlink(missing_ok=True)

    # -- scanning and the cursor --------------------------------------------------------------------

    def _scan(self, sequence: int, path: Path) -> _Segment:
        """Index a segment's valid records; log and skip truncated or corrupt ones."""
        data = path.read_bytes()
        segment = _Segment(sequence, path, size_bytes=len(data))
        offset = 0
        while offset < len(data):
            entry = _parse_record(data, offset)
            if entry is not None:
                segment.entries.append(entry)
                offset = entry.end
                continue
            resume = _resync(data, offset + 1)
            skipped = (resume if resume is not None else len(data)) - offset
            self.corrupt_bytes += skipped
            self._corrupt_total.inc(skipped)
            logger.warning(
                "telemetry spool %s: %s record at byte %d; skipped %d bytes%s",
                path.name,
                "truncated or corrupt tail" if resume is None else "corrupt",
                offset,
                skipped,
                "" if resume is None else f", resuming at byte {resume}",
            )
            if resume is None:
                break
            offset = resume
        return segment

    def _read_cursor(self) -> tuple[int, int] | None:
        path = self.directory / "cursor"
        try:
            text = path.read_text().split()
            return int(text[0]), int(text[1])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, IndexError):
            logger.warning("telemetry spool %s: unreadable cursor file; replaying every segment", path)
            return None

    def _write_cursor(self, sequence: int, offset: int) -> None:
        path = self.directory / "cursor"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{sequence} {offset}\n")
        os.replace(tmp, path)

    def _update_gauges(self) -> None:
        self._bytes_gauge.set(self.size_bytes)
        self._points_gauge.set(self.points)


def _parse_record(data: bytes, offset: int) -> _Entry | None:
    if len(data) - offset < HEADER_BYTES:
        return None
    magic, length, points, crc = _HEADER.unpack_from(data, offset)
    if magic != MAGIC or length > MAX_RECORD_BYTES:
        return None
    start = offset + HEADER_BYTES
    if start + length > len(data):
        return None
    if zlib.crc32(data[start : start + length]) != crc:
        return None
    return _Entry(offset, length, points)


def _resync(data: bytes, start: int) -> int | None:
    """The offset of the next valid record at or after ``start``, or None."""
    position = data.find(MAGIC, start)
    while position != -1:
        if _parse_record(data, position) is not None:
            return position
        position = data.find(MAGIC, position + 1)
    return None


def _sequence_of(path: Path) -> int | None:
    core = path.name[len(_SEGMENT_PREFIX) : -len(_SEGMENT_SUFFIX)]
    return int(core) if core.isdigit() else None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
