"""Live migration over a shaped WAN link, printed as JSON (targets in docs/evaluation.md; never asserted).

Two real daemons in separate network namespaces joined by a veth pair shaped with tbf at each rate, mutual
TLS, the numpy example job with a checkpoint of each size. For every (size, rate):

- goodput / shaped rate of the chunk transfer (target >= 0.95), next to what one plain TCP stream gets
  through the same link (``tcp_copy_ratio``, the ceiling);
- predicted migration time (from the offer, with the link's rate as the bandwidth estimate) against the
  actual time from the offer until the job resumed at the destination (target within 10 %);
- downtime (job asked to stop -> resumed at the destination) against a plain stop-copy-restore of the same
  checkpoint: its write time, one TCP stream copying the bytes over the same link, and the restore;
- every job moves a -> b, then back b -> a: the second move predicts with the checkpoint, manifest, rebuild
  and restore times the first measured, and the whole checkpoint (nothing has measured yet how much of it
  changes); with ``--frozen`` a fine-tuning-style job (2 % of it changes, the rest is frozen) shows the
  bytes the second move sends / the full checkpoint (target <= 5 %), and moves a third time (a -> b),
  predicting with the bytes b's chunk cache lacks plus what the second move found changed.

Needs root (ip netns). Usage: sudo python bench/migration.py [--quick] [--frozen]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from greenferry.daemon.journal import MigrationStep
from greenferry.testing.cluster import NetnsCluster, example_job_spec
from greenferry.testing.netns import netns_available

MiB = 2**20


def _released(cluster: NetnsCluster, node: str, job_id: str, count: int) -> list[Any]:
    done = [m for m in cluster.migrations(node) if m.job_id == job_id and m.step is MigrationStep.RELEASED]
    return done if len(done) >= count else []


def _restore_s(data: dict[str, Any]) -> float:
    """The downtime after the destination prepared: commit, start and load until the job resumed."""
    return (
        float(data["downtime_s"])
        - float(data["prepare_s"])
        - float(data["checkpoint_s"])
        - float(data["manifest_s"])
    )


def _phases_s(data: dict[str, Any]) -> dict[str, float]:
    return {
        "checkpoint": round(float(data["checkpoint_s"]), 2),
        "manifest": round(float(data["manifest_s"]), 2),
        "transfer": round(float(data["transfer_s"]), 2),
        "prepare": round(float(data["prepare_s"]) - float(data["transfer_s"]), 2),
        "restore": round(_restore_s(data), 2),
    }


def _later_move(data: dict[str, Any], rate_bps: float) -> dict[str, Any]:
    """A move after the first: its prediction, the bytes it sent and its phases."""
    return {
        "predicted_s": round(float(data["predicted_s"]), 2),
        "actual_s": round(float(data["total_s"]), 2),
        "predicted_error": round(float(data["predicted_s"]) / float(data["total_s"]) - 1, 3),
        "predicted_send_bytes": int(data["predicted_send_bytes"]),
        "bytes_sent": int(data["bytes_sent"]),
        "bytes_ratio": round(int(data["bytes_sent"]) / int(data["total_bytes"]), 4),
        "goodput_ratio": round(float(data["goodput_bps"]) / rate_bps, 3),
        "downtime_s": round(float(data["downtime_s"]), 2),
        "phases_s": _phases_s(data),
    }


def _copy_time_s(cluster: NetnsCluster, size_bytes: int) -> float:
    """One TCP stream moving ``size_bytes`` from namespace a to b (the stop-copy-restore baseline's copy)."""
    port = 9555
    server = cluster.pair.popen(
        "b",
        [
            sys.executable,
            "-c",
            f"import socket\ns=socket.create_server(('0.0.0.0',{port}))\nc,_=s.accept()\nn=0\n"
            "while (b:=c.recv(1<<20)):\n    n+=len(b)\nprint(n)",
        ],
    )
    time.sleep(0.5)
    start = time.monotonic()
    sender = cluster.pair.run(
        "a",
        [
            sys.executable,
            "-c",
            f"import socket\nc=socket.create_connection(('{cluster.addr['b']}',{port}))\nb=bytes(1<<20)\n"
            f"for _ in range({size_bytes // MiB}): c.sendall(b)\nc.close()",
        ],
        timeout_s=3600,
    )
    server.wait(60)
    if sender.returncode != 0:
        raise RuntimeError(sender.stderr)
    return time.monotonic() - start


def measure(size_mb: int, rate_bps: float, frozen: bool) -> dict[str, Any]:
    """One (size, rate) point."""
    with (
        tempfile.TemporaryDirectory(prefix="gf-bench-mig-") as tmp,
        NetnsCluster(Path(tmp), rate_bps) as cluster,
    ):
        state_mb, frozen_mb = (
            (max(1, size_mb // 50), size_mb - max(1, size_mb // 50)) if frozen else (size_mb, 0)
        )
        job_id = f"bench-{size_mb}"
        cluster.submit(example_job_spec(job_id, state_mb, frozen_mb))
        timeout = 120 + 3 * 8 * size_mb * MiB / rate_bps
        (first,) = cluster.wait_for(lambda: _released(cluster, "a", job_id, 1), timeout, "the move a -> b")
        data = first.data
        size_bytes = int(data["total_bytes"])
        result: dict[str, Any] = {
            "size_mb": size_mb,
            "rate_mbps": rate_bps / 1e6,
            "checkpoint_bytes": size_bytes,
            "goodput_mbps": round(float(data["goodput_bps"]) / 1e6, 2),
            "goodput_ratio": round(float(data["goodput_bps"]) / rate_bps, 3),
            "predicted_s": round(float(data["predicted_s"]), 2),
            "actual_s": round(float(data["total_s"]), 2),
            "predicted_error": round(float(data["predicted_s"]) / float(data["total_s"]) - 1, 3),
            "downtime_s": round(float(data["downtime_s"]), 2),
            "phases_s": _phases_s(data),
        }
        copy_s = _copy_time_s(cluster, size_bytes)
        baseline = float(data["checkpoint_s"]) + copy_s + _restore_s(data)
        # What one plain TCP stream gets through the same shaped link: the ceiling goodput can reach
        # (TCP/IP and Ethernet headers are counted by tbf, chunk bytes are what goodput counts).
        result["tcp_copy_ratio"] = round(8 * size_bytes / copy_s / rate_bps, 3)
        result["stop_copy_restore_s"] = round(baseline, 2)
        result["downtime_vs_stop_copy_restore"] = round(float(data["downtime_s"]) / baseline, 3)
        # Move it back: a gets the surplus, b loses it. The second move predicts with the checkpoint and
        # restore times the first one measured, and a's chunk store still holds what did not change; it
        # measures how much of a checkpoint changes, which a frozen job's third move (a -> b) predicts with.
        src, dst = "b", "a"
        for index in range(2 if frozen else 1):
            cluster.surplus_only_at(dst, src)
            before = len(_released(cluster, src, job_id, 0))
            done = cluster.wait_for(
                lambda s=src, n=before: _released(cluster, s, job_id, n + 1),
                timeout,
                f"the move {src} -> {dst}",
            )
            result[("second_move", "third_move")[index]] = _later_move(done[-1].data, rate_bps)
            src, dst = dst, src
        info = cluster.job("a", job_id)
        result["final_state_at_a"] = None if info is None else info.state.value
        result["frozen_mb"] = frozen_mb
        result["job_processes"] = len(cluster.job_processes(job_id))
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one small point (CI-sized)")
    parser.add_argument("--frozen", action="store_true", help="also the cached second move")
    args = parser.parse_args()
    reason = netns_available()
    if reason is not None:
        print(json.dumps({"skipped": reason}))
        return 0
    points = [(100, 50e6)] if args.quick else [(100, 50e6), (500, 200e6), (1000, 500e6), (2000, 500e6)]
    results = [measure(size, rate, frozen=False) for size, rate in points]
    if args.frozen:
        results.append(measure(500, 200e6, frozen=True))
    targets = {
        "goodput_ratio": ">= 0.95",
        "second_move.predicted_error": "|x| <= 0.10",
        "second_move.bytes_ratio (frozen)": "<= 0.05",
        "third_move.predicted_error (frozen)": "|x| <= 0.10",
    }
    print(json.dumps({"results": results, "targets": targets}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
