"""Checkpoint transfer over loopback: goodput with 1/4/8 streams, with and without zstd, and the cached ratio.

Run: ``.venv/bin/python bench/transfer_loopback.py [--size-mb 256] [--trainable-mb 8] [--chunk-mb 8]``

A synthetic checkpoint of ``--size-mb`` (a frozen fp16 backbone, a trainable head and its optimizer state,
normally distributed values like real weights, so zstd gains little) is cut into chunks with
``build_manifest``. The destination's chunk routes run in a separate process (a real aiohttp server on
127.0.0.1, ``auto_decompress=False``), so the two ends do not share a core's event loop; each run sends to an
empty chunk store there. The figures are goodput (chunk bits delivered per second, the destination verifying
and fsyncing every chunk) and bytes on the wire.

Then the head and the optimizer state change (a new "epoch") and the checkpoint goes again to the store that
holds the first one: ``cached_byte_ratio`` is the share of the checkpoint's bytes sent the second time.

On loopback the limit is CPU (SHA-256 on both ends, zstd, the HTTP stack) and the disk's fsync, not the
link; over a WAN more streams help fill a long fat pipe, and zstd helps on slow links with compressible data.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from greenferry.daemon.transfer import ChunkStore, build_manifest, materialize, send_chunks, transfer_routes

MIB = 1024 * 1024


def serve(store_dir: str, max_chunk_bytes: int, pipe: Connection) -> None:
    """The destination: chunk routes on a free port until the pipe says stop."""

    async def main() -> None:
        store = ChunkStore(store_dir)
        app = web.Application()
        app.add_routes(transfer_routes(store, max_chunk_bytes=max_chunk_bytes, authorize=lambda _r, _t: None))
        runner = web.AppRunner(app, auto_decompress=False, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        pipe.send(int(runner.addresses[0][1]))
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        await runner.cleanup()

    asyncio.run(main())


class Destination:
    """A destination process with its own chunk store directory."""

    def __init__(self, store_dir: Path, max_chunk_bytes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(
            target=serve, args=(str(store_dir), max_chunk_bytes, child), daemon=True
        )
        self._process.start()
        self.url = f"http://127.0.0.1:{self._pipe.recv()}"

    def close(self) -> None:
        self._pipe.send("stop")
        self._process.join(timeout=30)


def weights(rng: np.random.Generator, size_bytes: int, dtype: type[np.floating[Any]]) -> bytes:
    count = size_bytes // np.dtype(dtype).itemsize
    return (rng.standard_normal(count, dtype=np.float32) * 0.02).astype(dtype).tobytes()


def write_checkpoint(
    root: Path, rng: np.random.Generator, size_bytes: int, trainable_bytes: int, frozen: bool
) -> None:
    """Write the checkpoint; with ``frozen`` False only the trainable parts are rewritten."""
    root.mkdir(parents=True, exist_ok=True)
    head_bytes = trainable_bytes // 4
    if frozen:
        (root / "backbone.safetensors").write_bytes(weights(rng, size_bytes - trainable_bytes, np.float16))
    (root / "head.safetensors").write_bytes(weights(rng, head_bytes, np.float16))
    (root / "optimizer.pt").write_bytes(weights(rng, trainable_bytes - head_bytes, np.float32))
    (root / "trainer_state.json").write_bytes(json.dumps({"step": int(rng.integers(1, 10**6))}).encode())


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="gf-transfer-bench-", dir=args.work_dir))
    try:
        return await measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    size_bytes = args.size_mb * MIB
    chunk_bytes = args.chunk_mb * MIB
    checkpoint = work / "checkpoint"
    write_checkpoint(checkpoint, rng, size_bytes, args.trainable_mb * MIB, frozen=True)
    source = ChunkStore(work / "source-chunks")
    started = time.perf_counter()
    manifest = await build_manifest(
        checkpoint,
        store=source,
        job_id="bench",
        epoch=1,
        source_node="source",
        now_s=time.time(),
        chunk_size_bytes=chunk_bytes,
    )
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    await build_manifest(
        checkpoint,
        store=source,
        job_id="bench",
        epoch=1,
        source_node="source",
        now_s=0.0,
        chunk_size_bytes=chunk_bytes,
    )
    rebuild_s = time.perf_counter() - started

    runs: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        for compress in (False, True):
            for streams in (1, 4, 8):
                store_dir = work / f"dst-{streams}-{compress}"
                destination = Destination(store_dir, chunk_bytes)
                try:
                    stats = await send_chunks(
                        session,
                        destination.url,
                        "bench",
                        manifest,
                        source,
                        streams=streams,
                        compress=compress,
                    )
                finally:
                    destination.close()
                shutil.rmtree(store_dir, ignore_errors=True)
                runs.append(
                    {
                        "streams": streams,
                        "zstd": compress,
                        "duration_s": round(stats.duration_s, 3),
                        "goodput_bps": round(stats.goodput_bps),
                        "goodput_mib_per_s": round(stats.bytes_sent / MIB / stats.duration_s, 1),
                        "bytes_sent": stats.bytes_sent,
                        "wire_bytes": stats.wire_bytes,
                        "wire_ratio": round(stats.wire_bytes / stats.bytes_sent, 4),
                        "compression": stats.compression,
                    }
                )
                print(json.dumps(runs[-1]), file=sys.stderr)

        cache_dir = work / "dst-cached"
        destination = Destination(cache_dir, chunk_bytes)
        try:
            await send_chunks(session, destination.url, "first", manifest, source, streams=4, compress=False)
            write_checkpoint(checkpoint, rng, size_bytes, args.trainable_mb * MIB, frozen=False)
            second = await build_manifest(
                checkpoint,
                store=source,
                job_id="bench",
                epoch=2,
                source_node="source",
                now_s=time.time(),
                chunk_size_bytes=chunk_bytes,
            )
            again = await send_chunks(
                session, destination.url, "second", second, source, streams=4, compress=False
            )
        finally:
            destination.close()
    started = time.perf_counter()
    await materialize(second, ChunkStore(cache_dir), work / "restored" / "checkpoint")
    materialize_s = time.perf_counter() - started
    return {
        "bench": "transfer_loopback",
        "cpu_count": os.cpu_count(),
        "checkpoint_bytes": manifest.total_bytes,
        "chunk_size_bytes": chunk_bytes,
        "chunks": len(manifest.distinct_chunks()),
        "build_manifest_s": round(build_s, 3),
        "build_manifest_cached_s": round(rebuild_s, 3),
        "runs": runs,
        "second_transfer": {
            "total_bytes": second.total_bytes,
            "bytes_sent": again.bytes_sent,
            "bytes_skipped": again.bytes_skipped,
            "chunks_sent": again.chunks_sent,
            "chunks_skipped": again.chunks_skipped,
        },
        "cached_byte_ratio": round(again.bytes_sent / second.total_bytes, 4),
        "materialize_s": round(materialize_s, 3),
        "materialize_mib_per_s": round(second.total_bytes / MIB / materialize_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mb", type=int, default=256, help="checkpoint size (MiB)")
    parser.add_argument(
        "--trainable-mb", type=int, default=8, help="head + optimizer, rewritten each epoch (MiB)"
    )
    parser.add_argument("--chunk-mb", type=int, default=8, help="chunk size (MiB)")
    parser.add_argument("--work-dir", default=None, help="where the temporary checkpoint and stores go")
    args = parser.parse_args()
    if not 0 < args.trainable_mb < args.size_mb:
        parser.error("--trainable-mb must be between 0 and --size-mb")
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
