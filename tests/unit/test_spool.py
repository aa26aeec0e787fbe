"""The durable telemetry spool: order, bound with drop-oldest counts, restart replay, corrupt tails."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from greenferry.daemon.spool import HEADER_BYTES, Spool
from greenferry.errors import ServiceUnavailableError
from greenferry.testing.clock import ManualClock


def _batch(i: int, points: int = 1, width: int = 40) -> bytes:
    return "\n".join(f'm,b={i} v={j}i,pad="{"x" * width}" {i * 1000 + j}' for j in range(points)).encode()


def _drain(spool: Spool) -> list[bytes]:
    out = []
    while (record := spool.peek()) is not None:
        out.append(record.payload)
        spool.ack(record)
    return out


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.spool"))


def test_batches_come_back_in_order_across_segments(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20, CollectorRegistry(), segment_bytes=512) as spool:
        for i in range(30):
            spool.append(_batch(i, points=2), 2)
        assert len(_segments(tmp_path)) > 3
        assert spool.records == 30
        assert spool.points == 60
        assert _drain(spool) == [_batch(i, points=2) for i in range(30)]
        assert spool.points == 0
        assert len(_segments(tmp_path)) <= 1  # replayed segments are deleted (the active one stays)


def test_a_new_process_replays_what_the_old_one_spooled(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20, CollectorRegistry(), segment_bytes=300) as spool:
        for i in range(10):
            spool.append(_batch(i), 1)
        first = spool.peek()
        assert first is not None
        spool.ack(first)
        second = spool.peek()
        assert second is not None
        spool.ack(second)
    # A new process (new registry): it resumes after the acknowledged batches and appends after them.
    with Spool(tmp_path, 1 << 20, CollectorRegistry(), segment_bytes=300) as spool:
        assert spool.records == 8
        spool.append(_batch(10), 1)
        assert _drain(spool) == [_batch(i) for i in range(2, 11)]
    with Spool(tmp_path, 1 << 20, CollectorRegistry()) as spool:
        assert spool.peek() is None


def test_bound_drops_the_oldest_segments_and_counts_their_points(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    max_bytes = 4096
    with Spool(tmp_path, max_bytes, registry, segment_bytes=1024) as spool:
        appended = []
        for i in range(100):
            payload = _batch(i, points=3)
            spool.append(payload, 3)
            appended.append(payload)
            assert spool.size_bytes <= max_bytes
        on_disk = sum(p.stat().st_size for p in _segments(tmp_path))
        assert on_disk == spool.size_bytes <= max_bytes
        remaining = _drain(spool)
    # What is left is the newest run of batches, in order; everything else was counted as dropped.
    assert remaining == appended[len(appended) - len(remaining) :]
    assert 0 < len(remaining) < 100
    dropped = 3 * (100 - len(remaining))
    assert spool.dropped_points == dropped
    assert (
        registry.get_sample_value("greenferry_telemetry_dropped_points_total", {"reason": "spool_full"})
        == dropped
    )


def test_drops_count_only_unacknowledged_points(tmp_path: Path) -> None:
    with Spool(tmp_path, 2048, CollectorRegistry(), segment_bytes=1024) as spool:
        size = HEADER_BYTES + len(_batch(0, points=5))
        per_segment = 1024 // size
        for i in range(per_segment):
            spool.append(_batch(i, points=5), 5)
        record = spool.peek()
        assert record is not None
        spool.ack(record)  # one batch of the oldest segment is already delivered
        i = per_segment
        while spool.dropped_points == 0 and i < 10 * per_segment:
            spool.append(_batch(i, points=5), 5)
            i += 1
        assert spool.dropped_points == 5 * (per_segment - 1)


def test_a_batch_bigger_than_the_bound_is_dropped_and_counted(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    with Spool(tmp_path, 1024, registry) as spool:
        spool.append(_batch(0), 1)
        spool.append(b"x" * 2000, 7)
        assert spool.dropped_points == 7
        assert _drain(spool) == [_batch(0)]


def test_a_truncated_tail_is_skipped_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Spool(tmp_path, 1 << 20, CollectorRegistry()) as spool:
        for i in range(3):
            spool.append(_batch(i), 1)
    (segment,) = _segments(tmp_path)
    data = segment.read_bytes()
    segment.write_bytes(data[:-7])  # the process died in the middle of the third write
    caplog.set_level(logging.WARNING, logger="greenferry.daemon.spool")
    with Spool(tmp_path, 1 << 20, CollectorRegistry()) as spool:
        assert spool.records == 2
        assert spool.corrupt_bytes == HEADER_BYTES + len(_batch(2)) - 7
        spool.append(_batch(3), 1)
        assert _drain(spool) == [_batch(0), _batch(1), _batch(3)]
    assert any(
        "truncated or corrupt tail" in r.getMessage() and segment.name in r.getMessage()
        for r in caplog.records
    )


def test_a_corrupt_record_in_the_middle_is_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20, CollectorRegistry()) as spool:
        for i in range(3):
            spool.append(_batch(i), 1)
    (segment,) = _segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[HEADER_BYTES + len(_batch(0)) + HEADER_BYTES + 5] ^= 0xFF  # a flipped bit in batch 1's payload
    segment.write_bytes(bytes(data))
    with Spool(tmp_path, 1 << 20, CollectorRegistry()) as spool:
        assert _drain(spool) == [_batch(0), _batch(2)]


def test_garbage_files_do_not_crash_the_spool(tmp_path: Path) -> None:
    (tmp_path / "seg-00000000000000000001.spool").write_bytes(b"GFS1" + b"\xff" * 50)
    (tmp_path / "seg-00000000000000000002.spool").write_bytes(b"")
    (tmp_path / "cursor").write_text("not a cursor")
    (tmp_path / "seg-notanumber.spool").write_bytes(b"x")
    with Spool(tmp_path, 1 << 20, CollectorRegistry()) as spool:
        assert spool.peek() is None
        spool.append(_batch(0), 1)
        assert _drain(spool) == [_batch(0)]


def test_one_process_per_spool_directory(tmp_path: Path) -> None:
    with (
        Spool(tmp_path, 1 << 20, CollectorRegistry()),
        pytest.raises(ServiceUnavailableError, match="in use"),
    ):
        Spool(tmp_path, 1 << 20, CollectorRegistry()).open()


def test_acknowledging_out_of_order_is_refused(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20, CollectorRegistry()) as spool:
        spool.append(_batch(0), 1)
        spool.append(_batch(1), 1)
        first = spool.peek()
        assert first is not None
        spool.ack(first)
        with pytest.raises(ValueError, match="not the oldest"):
            spool.ack(first)


def test_interval_fsync_still_keeps_everything_after_a_clean_close(tmp_path: Path) -> None:
    clock = ManualClock()
    with Spool(tmp_path, 1 << 20, CollectorRegistry(), clock=clock, fsync_interval_s=1.0) as spool:
        for i in range(5):
            spool.append(_batch(i), 1)
            clock.advance(0.3)
    with Spool(tmp_path, 1 << 20, CollectorRegistry()) as spool:
        assert _drain(spool) == [_batch(i) for i in range(5)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(1, 6)),
            st.tuples(st.just("ack"), st.just(0)),
            st.tuples(st.just("reopen"), st.just(0)),
        ),
        max_size=60,
    )
)
def test_spool_model(tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]]) -> None:
    """Against a model: what is left is always an in-order suffix; appended = acked + left + dropped."""
    directory = tmp_path_factory.mktemp("spool")
    max_bytes = 2048
    spool = Spool(directory, max_bytes, CollectorRegistry(), segment_bytes=400)
    spool.open()
    appended: list[bytes] = []
    acked: list[bytes] = []
    dropped = 0
    try:
        for n, (op, points) in enumerate(ops):
            if op == "append":
                spool.append(_batch(n, points, width=10), points)
                appended.append(_batch(n, points, width=10))
            elif op == "ack" and (record := spool.peek()) is not None:
                spool.ack(record)
                acked.append(record.payload)
            elif op == "reopen":
                dropped += spool.dropped_points
                spool.close()
                spool = Spool(directory, max_bytes, CollectorRegistry(), segment_bytes=400)
                spool.open()
            assert spool.size_bytes <= max_bytes
        dropped += spool.dropped_points
        left = _drain(spool)
    finally:
        spool.close()
    delivered = acked + left
    assert delivered == sorted(delivered, key=appended.index)  # in order
    assert len(set(delivered)) == len(delivered)  # nothing twice
    lines = sum(len(b.split(b"\n")) for b in appended)
    assert sum(len(b.split(b"\n")) for b in delivered) + dropped == lines
