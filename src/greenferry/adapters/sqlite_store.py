"""The embedded telemetry store (the default sink): one SQLite file, read by ``greenferry telemetry export``.

One table, ``points(time_ns, measurement, tags, fields)`` with tags and fields as JSON objects, indexed on
``time_ns``. WAL mode lets ``export`` read while the daemon writes; ``synchronous=NORMAL`` means a
committed batch survives a daemon crash, and at most the last second or so of batches can be lost on a
power cut (the trade SQLite documents for WAL). Rows older than ``retention_s`` before the newest point
are pruned as the daemon writes.

The stdlib ``sqlite3`` module blocks, so every database call runs in a worker thread
(:func:`asyncio.to_thread`), one at a time behind a lock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from prometheus_client import CollectorRegistry, Counter

from greenferry.core.clock import Clock
from greenferry.core.telemetry import FieldValue, Point
from greenferry.daemon.telemetry import SinkStats
from greenferry.errors import GreenferryError

logger = logging.getLogger(__name__)

__all__ = ["SqliteSink", "TelemetryStoreError", "count_points", "measurements_in", "read_points"]

SCHEMA_VERSION = 1
_PRUNE_EVERY_NS = 60 * 1_000_000_000
_MAX_BUFFERED_ROWS = 200_000  # while the disk refuses writes, memory is the bound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    time_ns INTEGER NOT NULL,
    measurement TEXT NOT NULL,
    tags TEXT NOT NULL,
    fields TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS points_time_ns ON points (time_ns);
"""


class TelemetryStoreError(GreenferryError):
    """The SQLite telemetry store is missing, unreadable, or not a greenferry store; names the file."""


def _row(point: Point) -> tuple[int, str, str, str]:
    return (
        point.time_ns,
        point.measurement,
        json.dumps(dict(point.tags), sort_keys=True, separators=(",", ":")),
        json.dumps(dict(point.fields), separators=(",", ":"), allow_nan=False),
    )


class SqliteSink:
    """Telemetry into a local SQLite file (async context manager with a ``run()`` flush loop).

    Args:
        path: the database file (created with its directory).
        retention_s: rows older than this before the newest point are deleted.
        registry: Prometheus registry for the store's metrics.
        clock: time source of the flush loop (default: the real clock).
        flush_interval_s: how often buffered points are committed.
        batch_points: a write that fills the buffer to this many points commits at once.
    """

    def __init__(
        self,
        path: Path,
        retention_s: float,
        registry: CollectorRegistry,
        *,
        clock: Clock | None = None,
        flush_interval_s: float = 1.0,
        batch_points: int = 5000,
    ) -> None:
        if retention_s <= 0:
            raise ValueError("retention_s must be positive")
        if clock is None:
            from greenferry.daemon.clock import RealClock

            clock = RealClock()
        self.path = Path(path)
        self._retention_ns = int(retention_s * 1e9)
        self._clock = clock
        self._flush_interval_s = flush_interval_s
        self._batch_points = batch_points
        self._buffer: list[tuple[int, str, str, str]] = []
        self._conn: sqlite3.Connection | None = None
        self._db_lock = threading.Lock()  # one thread at a time on the connection
        self._flush_lock = asyncio.Lock()
        self._last_prune_ns: int | None = None
        self._dropped = 0
        self._stored = Counter(
            "greenferry_telemetry_stored_points", "Points committed to the SQLite store", registry=registry
        )
        self._pruned = Counter(
            "greenferry_telemetry_pruned_points",
            "Points deleted from the SQLite store by retention",
            registry=registry,
        )

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self._open)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (OSError, sqlite3.Error) as err:
            raise TelemetryStoreError(f"telemetry store {self.path}: cannot open: {err}") from err
        self._conn = conn

    # -- the sink protocol --------------------------------------------------------------------------

    async def write(self, points: Sequence[Point]) -> None:
        """Buffer ``points``; commits at once when the buffer holds ``batch_points``."""
        self._buffer.extend(_row(point) for point in points)
        if len(self._buffer) >= self._batch_points:
            await self.flush()

    async def flush(self) -> None:
        """Commit everything buffered (and prune by retention at most once a minute of data time)."""
        async with self._flush_lock:
            if not self._buffer:
                return
            rows = self._buffer
            self._buffer = []
            try:
                # The worker thread commits even if this task is cancelled meanwhile: nothing is lost.
                await asyncio.to_thread(self._insert, rows)
            except (OSError, sqlite3.Error) as err:
                self._buffer[:0] = rows  # keep them for the next flush
                excess = len(self._buffer) - _MAX_BUFFERED_ROWS
                if excess > 0:
                    del self._buffer[:excess]
                    self._dropped += excess
                logger.error(
                    "telemetry store %s: cannot write %d points (%s); %d kept in memory, %d dropped so far",
                    self.path,
                    len(rows),
                    err,
                    len(self._buffer),
                    self._dropped,
                )

    async def close(self) -> None:
        """Commit what is buffered and close the database."""
        if self._conn is None:
            return
        await self.flush()
        await asyncio.to_thread(self._close)

    def stats(self) -> SinkStats:
        """The SQLite store does not spool; it drops points only when the disk refuses them for long."""
        return SinkStats(0, self._dropped)

    async def run(self) -> None:
        """Commit buffered points every ``flush_interval_s`` until cancelled."""
        while True:
            await self._clock.sleep(self._flush_interval_s)
            await self.flush()

    # -- worker-thread side -------------------------------------------------------------------------

    def _insert(self, rows: list[tuple[int, str, str, str]]) -> None:
        with self._db_lock:
            conn = self._connection()
            newest_ns = max(row[0] for row in rows)
            with conn:
                conn.execute("BEGIN")
                conn.executemany(
                    "INSERT INTO points (time_ns, measurement, tags, fields) VALUES (?, ?, ?, ?)", rows
                )
            self._stored.inc(len(rows))
            if self._last_prune_ns is None or newest_ns - self._last_prune_ns >= _PRUNE_EVERY_NS:
                self._last_prune_ns = newest_ns
                with conn:
                    conn.execute("BEGIN")
                    cursor = conn.execute(
                        "DELETE FROM points WHERE time_ns < ?", (newest_ns - self._retention_ns,)
                    )
                if cursor.rowcount > 0:
                    self._pruned.inc(cursor.rowcount)
                    logger.debug("telemetry store %s: pruned %d points", self.path, cursor.rowcount)

    def _close(self) -> None:
        with self._db_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("enter the SqliteSink (async with) before writing")
        return self._conn


# -- the reader (used by `greenferry telemetry export`) ----------------------------------------------


def _open_readonly(path: Path) -> sqlite3.Connection:
    path = Path(path)
    if not path.is_file():
        raise TelemetryStoreError(
            f'no telemetry store at {path} (the daemon creates it with [telemetry] type = "sqlite")'
        )
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        conn.execute("SELECT time_ns, measurement, tags, fields FROM points LIMIT 0")
    except sqlite3.Error as err:
        raise TelemetryStoreError(f"{path}: not a readable greenferry telemetry store ({err})") from err
    return conn


def _where(since_ns: int | None, until_ns: int | None, measurement: str | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if since_ns is not None:
        clauses.append("time_ns >= ?")
        params.append(since_ns)
    if until_ns is not None:
        clauses.append("time_ns < ?")
        params.append(until_ns)
    if measurement is not None:
        clauses.append("measurement = ?")
        params.append(measurement)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def read_points(
    path: Path,
    since_ns: int | None = None,
    until_ns: int | None = None,
    measurement: str | None = None,
) -> Iterator[Point]:
    """Points stored at ``path`` with ``since_ns <= time_ns < until_ns``, oldest first (streamed).

    Raises:
        TelemetryStoreError: the file is missing, not SQLite, or has no points table; or a row is corrupt.
    """
    conn = _open_readonly(path)
    where, params = _where(since_ns, until_ns, measurement)
    try:
        cursor = conn.execute(
            f"SELECT time_ns, measurement, tags, fields, rowid FROM points{where} ORDER BY time_ns, rowid",
            params,
        )
        for time_ns, name, tags_json, fields_json, rowid in cursor:
            try:
                tags: dict[str, str] = json.loads(tags_json)
                fields: dict[str, FieldValue] = json.loads(fields_json)
            except ValueError as err:
                raise TelemetryStoreError(f"{path}: row {rowid} is not valid JSON ({err})") from err
            yield Point(name, fields, int(time_ns), tags)
    except sqlite3.Error as err:
        raise TelemetryStoreError(f"{path}: cannot read: {err}") from err
    finally:
        conn.close()


def count_points(
    path: Path,
    since_ns: int | None = None,
    until_ns: int | None = None,
    measurement: str | None = None,
) -> int:
    """How many points :func:`read_points` would yield.

    Raises:
        TelemetryStoreError: see :func:`read_points`.
    """
    conn = _open_readonly(path)
    where, params = _where(since_ns, until_ns, measurement)
    try:
        (count,) = conn.execute(f"SELECT COUNT(*) FROM points{where}", params).fetchone()
        return int(count)
    except sqlite3.Error as err:
        raise TelemetryStoreError(f"{path}: cannot read: {err}") from err
    finally:
        conn.close()


def measurements_in(path: Path, since_ns: int | None = None, until_ns: int | None = None) -> list[str]:
    """The distinct measurements stored in [since_ns, until_ns), sorted by name.

    Raises:
        TelemetryStoreError: see :func:`read_points`.
    """
    conn = _open_readonly(path)
    where, params = _where(since_ns, until_ns, None)
    try:
        rows = conn.execute(f"SELECT DISTINCT measurement FROM points{where} ORDER BY measurement", params)
        return [str(name) for (name,) in rows]
    except sqlite3.Error as err:
        raise TelemetryStoreError(f"{path}: cannot read: {err}") from err
    finally:
        conn.close()
