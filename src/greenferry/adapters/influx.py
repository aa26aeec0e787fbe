"""Telemetry to InfluxDB 2 (or anything speaking ``/api/v2/write``, e.g. VictoriaMetrics), with zero loss.

Client choice: ``InfluxDBClientAsync`` with our own batching, not the client's batching ``WriteApi``. The
batching WriteApi runs its own thread and reports a failed batch through a callback after its private
retries, so a batch that fails cannot be put in the spool *in order* and *before* newer batches are sent;
with the async client each POST is awaited in our loop, so we decide, per batch, sent / spooled /
rejected, and the daemon's TaskGroup owns every task (no hidden threads).

Delivery: :meth:`InfluxSink.write` encodes points to line protocol (ns precision) and buffers them. The
sink's :meth:`~InfluxSink.run` loop sends a batch when ``batch_size`` points are buffered or every
``flush_interval_s``. A batch that fails with a transient error (server down, 5xx, 429, timeout, auth
or missing bucket) goes to the durable :class:`~greenferry.daemon.spool.Spool`; while the spool holds
anything, new batches queue behind it on disk, and the loop replays it oldest first (retrying with the
shared jittered :class:`~greenferry.daemon.backoff.Backoff`), so the server sees points in order. A batch
the server rejects as bad data (400, 413, 422) is logged and counted as dropped, never retried.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self, cast

import aiohttp
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.client.write_api_async import WriteApiAsync
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException
from prometheus_client import CollectorRegistry, Counter, Gauge

from greenferry.config import InfluxTelemetryConfig
from greenferry.core.clock import Clock
from greenferry.core.telemetry import Point
from greenferry.daemon.backoff import Backoff
from greenferry.daemon.spool import Spool
from greenferry.daemon.telemetry import SinkStats, encode_line
from greenferry.errors import ServiceUnavailableError

logger = logging.getLogger(__name__)

__all__ = ["InfluxSink", "probe_influx"]

# Statuses that mean "this data is bad": retrying the same bytes can never succeed.
_REJECT_STATUSES = frozenset({400, 413, 422})
_TRANSIENT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)
# The client types its precision parameter as the (untyped-constant) WritePrecision class.
_PRECISION_NS = cast(WritePrecision, WritePrecision.NS)


class _Outcome(enum.Enum):
    SENT = "sent"
    REJECTED = "rejected"
    FAILED = "failed"  # transient: spool and retry


class InfluxSink:
    """Batches points to InfluxDB's ``/api/v2/write``; spools to disk what the server cannot take.

    Args:
        cfg: the ``[telemetry]`` section (url, token, org, bucket, batching, gzip, timeout, spool bound).
        spool_dir: directory of the durable spool (``<data_dir>/spool`` in the daemon).
        clock: time source (flush interval, retry delays).
        registry: Prometheus registry for the sink's (and its spool's) metrics.
        backoff: retry delays after a failed write (default 0.5 s growing to 30 s, jittered).
        max_buffered_points: above this many buffered points, :meth:`write` waits for the sender
            (backpressure) and moves the oldest to the server or the spool (default 4 x batch_size).
        fsync_interval_s: passed to the spool (0: every spooled batch is fsync'd).
    """

    def __init__(
        self,
        cfg: InfluxTelemetryConfig,
        spool_dir: Path,
        clock: Clock,
        registry: CollectorRegistry,
        *,
        backoff: Backoff | None = None,
        max_buffered_points: int | None = None,
        fsync_interval_s: float = 0.0,
    ) -> None:
        self._cfg = cfg
        self._clock = clock
        self._backoff = backoff or Backoff(min_s=0.5, max_s=30.0)
        self._batch_size = cfg.batch_size
        self._max_buffered = max(max_buffered_points or 4 * cfg.batch_size, cfg.batch_size)
        self.spool = Spool(
            spool_dir, cfg.spool_max_bytes, registry, clock=clock, fsync_interval_s=fsync_interval_s
        )
        self._pending: list[str] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._client: InfluxDBClientAsync | None = None
        self._write_api: WriteApiAsync | None = None
        self._retry_at_s = -float("inf")
        self._server_up = True
        self._last_flush_s = clock.monotonic_s()
        self._sent = Counter(
            "greenferry_telemetry_sent_points", "Points the time-series server accepted", registry=registry
        )
        self._failures = Counter(
            "greenferry_telemetry_write_failures",
            "Write requests that failed: transient (spooled, retried) or rejected (bad data, dropped)",
            ["kind"],
            registry=registry,
        )
        self._up = Gauge(
            "greenferry_telemetry_server_up",
            "1 while the last write to the time-series server succeeded",
            registry=registry,
        )
        self._up.set(1)
        self._buffered = Gauge(
            "greenferry_telemetry_buffered_points",
            "Points buffered in memory, not yet sent or spooled",
            registry=registry,
        )

    # -- lifecycle ----------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.spool.open()
        try:
            self._client = InfluxDBClientAsync(
                url=self._cfg.url,
                token=self._cfg.token.get_secret_value(),
                org=self._cfg.org,
                timeout=int(self._cfg.timeout_s * 1000),
                enable_gzip=self._cfg.gzip,
            )
        except BaseException:
            self.spool.close()
            raise
        self._write_api = self._client.write_api()
        if self.spool.records:
            self._wake.set()  # replay what a previous process left as soon as run() starts
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Spool whatever is still buffered (no network: bounded time), then close client and spool."""
        if self._pending:
            lines = self._pending
            self._pending = []
            for start in range(0, len(lines), self._batch_size):
                chunk = lines[start : start + self._batch_size]
                self._spool_or_keep(chunk)
            if self._pending:
                logger.error(
                    "telemetry: %d points could not be spooled at shutdown and are lost", len(self._pending)
                )
                self.spool.record_drop(len(self._pending), "spool_full")
                self._pending = []
            logger.info("telemetry: spooled %d points at shutdown for the next start", len(lines))
        self._buffered.set(0)
        if self._client is not None:
            await self._client.close()  # type: ignore[no-untyped-call]
            self._client = None
            self._write_api = None
        self.spool.close()

    # -- the sink protocol --------------------------------------------------------------------------

    async def write(self, points: Sequence[Point]) -> None:
        """Encode and buffer ``points``; waits only when the buffer is over its bound (backpressure)."""
        self._pending.extend(encode_line(point) for point in points)
        if len(self._pending) >= self._batch_size:
            self._wake.set()
        if len(self._pending) > self._max_buffered:
            async with self._lock:
                await self._deliver_locked(full_batches_only=True)
            excess = len(self._pending) - 4 * self._max_buffered
            if excess > 0:  # the disk refuses the spool too: memory is the last bound
                del self._pending[:excess]
                self.spool.record_drop(excess, "buffer_full")
                logger.error("telemetry: neither server nor spool take points; dropped the %d oldest", excess)
        self._buffered.set(len(self._pending))

    async def flush(self) -> None:
        """Send everything buffered (replaying the spool first when a retry is due); failures are spooled."""
        async with self._lock:
            if self.spool.records and self._clock.monotonic_s() >= self._retry_at_s:
                await self._replay_locked()
            await self._deliver_locked(full_batches_only=False)

    def stats(self) -> SinkStats:
        """Spool size and points dropped so far (spool overflow and server rejections)."""
        return SinkStats(self.spool.size_bytes, self.spool.dropped_points)

    @property
    def server_up(self) -> bool:
        """False after a transient write failure, until a write succeeds again."""
        return self._server_up

    # -- the delivery loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Send batches every flush interval (or when one is full), replaying the spool first; forever."""
        while True:
            await self._wait(self._next_wait_s())
            self._wake.clear()
            async with self._lock:
                if self.spool.records and self._clock.monotonic_s() >= self._retry_at_s:
                    await self._replay_locked()
                now_s = self._clock.monotonic_s()
                due = now_s - self._last_flush_s >= self._cfg.flush_interval_s * 0.999
                if due:
                    self._last_flush_s = now_s
                await self._deliver_locked(full_batches_only=not due)

    def _next_wait_s(self) -> float:
        now_s = self._clock.monotonic_s()
        wait_s = max(0.0, self._last_flush_s + self._cfg.flush_interval_s - now_s)
        if self.spool.records:
            wait_s = min(wait_s, max(0.0, self._retry_at_s - now_s))
        return wait_s

    async def _wait(self, timeout_s: float) -> None:
        """Until woken (a full batch) or ``timeout_s`` of the clock passed; both tasks are awaited here."""
        if self._wake.is_set():
            return
        sleeper = asyncio.ensure_future(self._clock.sleep(timeout_s))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)

    async def _deliver_locked(self, *, full_batches_only: bool) -> None:
        while self._pending and (len(self._pending) >= self._batch_size or not full_batches_only):
            count = min(len(self._pending), self._batch_size)
            chunk = self._pending[:count]
            if self.spool.records:
                # Older points wait in the spool: queue behind them so the server sees time order.
                del self._pending[:count]
                if not self._spool_or_keep(chunk):
                    break
                continue
            outcome = await self._post("\n".join(chunk).encode(), count)
            # Removed only now: a cancelled POST leaves the chunk buffered, for close() to spool.
            del self._pending[:count]
            if outcome is _Outcome.FAILED and not self._spool_or_keep(chunk):
                break
        self._buffered.set(len(self._pending))

    def _spool_or_keep(self, chunk: list[str]) -> bool:
        """Spool ``chunk``; if the disk refuses, put it back at the buffer's head and return False."""
        try:
            self.spool.append("\n".join(chunk).encode(), len(chunk))
            return True
        except OSError as err:
            logger.error(
                "telemetry spool %s: cannot write (%s); keeping points in memory", self.spool.directory, err
            )
            self._pending[:0] = chunk
            return False

    async def _replay_locked(self) -> None:
        replayed = 0
        while (record := self.spool.peek()) is not None:
            outcome = await self._post(record.payload, record.points)
            if outcome is _Outcome.FAILED:
                break
            self.spool.ack(record)
            replayed += record.points
        if replayed:
            logger.info(
                "telemetry: replayed %d spooled points (%d still spooled)", replayed, self.spool.points
            )

    async def _post(self, body: bytes, points: int) -> _Outcome:
        if self._write_api is None:
            raise RuntimeError("enter the InfluxSink (async with) before writing")
        try:
            await self._write_api.write(
                bucket=self._cfg.bucket, org=self._cfg.org, record=body, write_precision=_PRECISION_NS
            )
        except ApiException as err:
            status = int(err.status or 0)
            if status in _REJECT_STATUSES:
                self._failures.labels("rejected").inc()
                self.spool.record_drop(points, "rejected")
                logger.error(
                    "telemetry: %s rejected a batch of %d points with HTTP %d (%s); dropped, not retried",
                    self._cfg.url,
                    points,
                    status,
                    _api_message(err),
                )
                return _Outcome.REJECTED
            return self._failed(f"HTTP {status} {_api_message(err)}")
        except _TRANSIENT_ERRORS as err:
            return self._failed(f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)
        self._sent.inc(points)
        self._backoff.reset()
        if not self._server_up:
            logger.info("telemetry: %s accepts writes again", self._cfg.url)
        self._server_up = True
        self._up.set(1)
        return _Outcome.SENT

    def _failed(self, reason: str) -> _Outcome:
        self._failures.labels("transient").inc()
        delay_s = self._backoff.next_delay_s()
        self._retry_at_s = self._clock.monotonic_s() + delay_s
        if self._server_up:
            logger.warning(
                "telemetry: write to %s failed (%s); spooling to %s and retrying",
                self._cfg.url,
                reason,
                self.spool.directory,
            )
        else:
            logger.debug("telemetry: retry failed (%s); next in %.2f s", reason, delay_s)
        self._server_up = False
        self._up.set(0)
        return _Outcome.FAILED


def _api_message(err: ApiException) -> str:
    body = err.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    text = str(body or err.reason or "").strip()
    return text[:200]


async def probe_influx(cfg: InfluxTelemetryConfig, timeout_s: float) -> None:
    """Check that the telemetry server answers ``/ping`` (works for InfluxDB 2 and VictoriaMetrics).

    VictoriaMetrics' ``/health`` is plain text (the client's ``health()`` reports it as failed), so the
    probe uses ``ping()``.

    Raises:
        ServiceUnavailableError: no answer within ``timeout_s``, a refused connection, or an HTTP error.
    """
    async with InfluxDBClientAsync(
        url=cfg.url, token=cfg.token.get_secret_value(), org=cfg.org, timeout=int(timeout_s * 1000)
    ) as client:
        try:
            async with asyncio.timeout(timeout_s):
                await client.ping()
        except ApiException as err:
            raise ServiceUnavailableError(
                f"InfluxDB at {cfg.url}: HTTP {err.status} {_api_message(err)}".rstrip()
            ) from err
        except TimeoutError as err:
            raise ServiceUnavailableError(f"InfluxDB at {cfg.url}: no answer within {timeout_s:g} s") from err
        except _TRANSIENT_ERRORS as err:
            raise ServiceUnavailableError(f"InfluxDB at {cfg.url}: {err}") from err
