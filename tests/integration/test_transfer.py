"""Checkpoint transfer over a real aiohttp server on 127.0.0.1: chunks, resume, refusals, signing, rebuild."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import zstandard
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519

from greenferry.adapters.pki import certificate_public_key, load_private_key
from greenferry.core.manifest import ChunkRef, Manifest, ManifestFile
from greenferry.core.protocol import ProtocolError
from greenferry.daemon.transfer import (
    MAX_HAVE_REFS,
    CheckpointError,
    ChunkCorruptError,
    ChunkMissingError,
    ChunkStore,
    TransferInterruptedError,
    TransferRefusedError,
    build_manifest,
    materialize,
    send_chunks,
    sign_manifest,
    transfer_routes,
    verify_manifest,
)
from greenferry.errors import ConfigError, PayloadError
from greenferry.testing.services import make_test_ca

pytestmark = pytest.mark.integration

KIB = 1024
CHUNK_BYTES = 64 * KIB
MAX_CHUNK_BYTES = 256 * KIB
FAST_RETRY: dict[str, Any] = {"max_attempts": 3, "backoff_min_s": 0.001, "backoff_max_s": 0.01}

try:  # aiohttp decodes zstd request bodies itself when backports.zstd (or Python 3.14) is there
    from aiohttp.compression_utils import HAS_ZSTD as AIOHTTP_DECODES_ZSTD
except ImportError:  # pragma: no cover
    AIOHTTP_DECODES_ZSTD = False


@dataclass
class Destination:
    """A destination node's chunk routes on a real server, with counters and switches for the tests."""

    store: ChunkStore
    auto_decompress: bool = False
    accept_zstd: bool = True
    put_limit: int | None = None  # PUTs past this many are answered 503: the server is going down
    refuse: type[web.HTTPException] | None = None
    barrier: asyncio.Barrier | None = None  # the first PUTs wait here until that many are in flight
    puts: list[str] = field(default_factory=list)
    encodings: list[str] = field(default_factory=list)
    transfer_ids: set[str] = field(default_factory=set)
    limit_reached: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None
    url: str = ""

    async def authorize(self, request: web.Request, transfer_id: str) -> None:
        self.transfer_ids.add(transfer_id)
        if self.refuse is not None:
            raise self.refuse(text=json.dumps({"error": {"code": "nope", "message": "not yours"}}))
        if request.method != "PUT":
            return
        if self.put_limit is not None and len(self.puts) >= self.put_limit:
            self.limit_reached.set()
            raise web.HTTPServiceUnavailable(text="going down")
        self.puts.append(request.match_info["sha256"])
        self.encodings.append(request.headers.get("Content-Encoding", ""))
        if self.barrier is not None and len(self.puts) <= self.barrier.parties:
            async with asyncio.timeout(10):
                await self.barrier.wait()

    async def start(self) -> Destination:
        app = web.Application()
        app.add_routes(
            transfer_routes(
                self.store,
                max_chunk_bytes=MAX_CHUNK_BYTES,
                authorize=self.authorize,
                accept_zstd=self.accept_zstd,
            )
        )
        self.runner = web.AppRunner(app, auto_decompress=self.auto_decompress, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def dst(tmp_path: Path) -> AsyncIterator[Destination]:
    destination = await Destination(ChunkStore(tmp_path / "dst-chunks")).start()
    yield destination
    await destination.stop()


@pytest.fixture
def src(tmp_path: Path) -> ChunkStore:
    return ChunkStore(tmp_path / "src-chunks")


def write_checkpoint(root: Path, files: dict[str, bytes], modes: dict[str, int] | None = None) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, (modes or {}).get(name, 0o644))
    return root


def random_checkpoint(root: Path) -> Path:
    return write_checkpoint(
        root,
        {
            "model.safetensors": os.urandom(9 * CHUNK_BYTES + 123),
            "optimizer/state.pt": os.urandom(3 * CHUNK_BYTES),
            "optimizer/copy.pt": b"",
            "meta.json": b'{"step": 100}',
        },
    )


async def manifest_of(root: Path, store: ChunkStore, epoch: int = 1, **kwargs: Any) -> Manifest:
    return await build_manifest(
        root,
        store=store,
        job_id="llm-7b",
        epoch=epoch,
        source_node="node-a",
        now_s=1_700_000_000.0,
        chunk_size_bytes=kwargs.pop("chunk_size_bytes", CHUNK_BYTES),
        **kwargs,
    )


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- building the manifest ------------------------------------------------------------------------------


async def test_build_manifest_chunks_files_into_the_store(tmp_path: Path, src: ChunkStore) -> None:
    root = random_checkpoint(tmp_path / "ckpt")
    os.chmod(root / "meta.json", 0o600)
    manifest = await manifest_of(root, src)
    assert [file.path for file in manifest.files] == [
        "meta.json",
        "model.safetensors",
        "optimizer/copy.pt",
        "optimizer/state.pt",
    ]
    model = manifest.files[1]
    assert [chunk.size_bytes for chunk in model.chunks] == [CHUNK_BYTES] * 9 + [123]
    assert manifest.files[0].mode == 0o600
    assert manifest.files[2].chunks == []
    assert manifest.total_bytes == sum(len(data) for data in tree(root).values())
    data = (root / "model.safetensors").read_bytes()
    assert model.chunks[2].sha256 == hashlib.sha256(data[2 * CHUNK_BYTES : 3 * CHUNK_BYTES]).hexdigest()
    assert src.missing(manifest.distinct_chunks()) == []
    assert await manifest_of(root, src) == manifest  # deterministic


@pytest.mark.parametrize("kind", ["file_symlink", "dir_symlink", "fifo"])
async def test_build_manifest_refuses_symlinks_and_special_files(
    tmp_path: Path, src: ChunkStore, kind: str
) -> None:
    root = random_checkpoint(tmp_path / "ckpt")
    if kind == "file_symlink":
        (root / "optimizer" / "link.pt").symlink_to("/etc/passwd")
        problem = "'optimizer/link.pt' is a symbolic link"
    elif kind == "dir_symlink":
        (root / "shared").symlink_to(tmp_path)
        problem = "'shared' is a symbolic link"
    else:
        os.mkfifo(root / "pipe")
        problem = "'pipe' is a special file"
    with pytest.raises(CheckpointError, match=problem):
        await manifest_of(root, src)


async def test_build_manifest_refuses_a_bad_root_and_unsendable_names(
    tmp_path: Path, src: ChunkStore
) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        await manifest_of(tmp_path / "nowhere", src)
    real = random_checkpoint(tmp_path / "real")
    (tmp_path / "alias").symlink_to(real)
    with pytest.raises(CheckpointError, match="is a symbolic link"):
        await manifest_of(tmp_path / "alias", src)
    with pytest.raises(CheckpointError, match="not a directory"):
        await manifest_of(real / "meta.json", src)
    os.close(os.open(os.fsencode(real) + b"/bad\xffname", os.O_CREAT | os.O_WRONLY, 0o644))
    with pytest.raises(CheckpointError, match="not valid UTF-8"):
        await manifest_of(real, src)


# --- transfers ------------------------------------------------------------------------------------------


async def test_a_full_transfer_over_parallel_streams_rebuilds_the_checkpoint(
    tmp_path: Path, src: ChunkStore, dst: Destination, session: aiohttp.ClientSession
) -> None:
    root = random_checkpoint(tmp_path / "ckpt")
    manifest = await manifest_of(root, src)
    distinct = manifest.distinct_chunks()
    dst.barrier = asyncio.Barrier(4)  # passes only if four PUTs are in flight at once
    seen: list[tuple[int, int]] = []
    stats = await send_chunks(
        session,
        dst.url,
        "a" * 32,
        manifest,
        src,
        streams=4,
        compress=False,
        progress=lambda *p: seen.append(p),
    )
    assert stats.chunks_sent == len(distinct) == 14
    assert stats.bytes_sent == manifest.total_bytes
    assert (stats.chunks_skipped, stats.bytes_skipped) == (0, 0)
    assert stats.wire_bytes == stats.bytes_sent
    assert stats.goodput_bps > 0
    assert sorted(dst.puts) == sorted(ref.sha256 for ref in distinct)
    assert dst.transfer_ids == {"a" * 32}
    assert seen[0] == (0, manifest.total_bytes)
    assert seen[-1] == (manifest.total_bytes, manifest.total_bytes)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    out = await materialize(manifest, dst.store, tmp_path / "restored" / "checkpoint")
    assert tree(out) == tree(root)
    # Asked again, it finds everything there and sends nothing.
    again = await send_chunks(session, dst.url, "a" * 32, manifest, src, compress=False)
    assert (again.chunks_sent, again.chunks_skipped, again.bytes_skipped) == (0, 14, manifest.total_bytes)


async def test_resume_after_the_server_stops_midway_sends_only_the_missing_chunks(
    tmp_path: Path, src: ChunkStore, session: aiohttp.ClientSession
) -> None:
    root = random_checkpoint(tmp_path / "ckpt")
    manifest = await manifest_of(root, src)
    total = len(manifest.distinct_chunks())
    store = ChunkStore(tmp_path / "dst-chunks")
    first = await Destination(store, put_limit=5).start()
    sending = asyncio.create_task(
        send_chunks(session, first.url, "t1", manifest, src, streams=2, compress=False, **FAST_RETRY)
    )
    await first.limit_reached.wait()
    await first.stop()
    with pytest.raises(TransferInterruptedError) as caught:
        await sending
    assert caught.value.stats is not None
    assert caught.value.stats.chunks_sent <= 5
    held = set(store.shas())
    assert held == set(first.puts)
    assert len(held) == 5

    second = await Destination(store).start()
    try:
        stats = await send_chunks(session, second.url, "t1", manifest, src, streams=2, compress=False)
    finally:
        await second.stop()
    assert stats.chunks_skipped == 5
    assert stats.chunks_sent == total - 5
    assert len(second.puts) == total - 5
    assert set(second.puts).isdisjoint(held)
    assert stats.bytes_sent + stats.bytes_skipped == manifest.total_bytes
    out = await materialize(manifest, store, tmp_path / "out")
    assert tree(out) == tree(root)


async def test_an_unchanged_frozen_file_is_not_sent_again(
    tmp_path: Path, src: ChunkStore, dst: Destination, session: aiohttp.ClientSession
) -> None:
    frozen = os.urandom(40 * CHUNK_BYTES)
    root = write_checkpoint(
        tmp_path / "ckpt", {"frozen/backbone.bin": frozen, "head.bin": os.urandom(20 * KIB)}
    )
    first = await send_chunks(session, dst.url, "t1", await manifest_of(root, src), src, compress=False)
    assert first.bytes_skipped == 0
    write_checkpoint(root, {"head.bin": os.urandom(20 * KIB), "step.json": b'{"step": 2}'})
    manifest = await manifest_of(root, src, epoch=2)
    second = await send_chunks(session, dst.url, "t2", manifest, src, compress=False)
    assert second.bytes_sent <= 0.05 * manifest.total_bytes
    assert second.chunks_sent == 2
    assert second.chunks_skipped == 40
    out = await materialize(manifest, dst.store, tmp_path / "out")
    assert tree(out) == tree(root)


async def test_zstd_chunks_are_smaller_on_the_wire(
    tmp_path: Path, src: ChunkStore, dst: Destination, session: aiohttp.ClientSession
) -> None:
    text = b"".join(b"layer.%d.weight = %d\n" % (n, n % 97) for n in range(40_000))
    root = write_checkpoint(tmp_path / "ckpt", {"model.txt": text, "noise.bin": os.urandom(CHUNK_BYTES)})
    manifest = await manifest_of(root, src, compression="zstd")
    stats = await send_chunks(session, dst.url, "t1", manifest, src, compress=True)
    assert stats.compression == "zstd"
    assert stats.wire_bytes < stats.bytes_sent / 2
    assert "zstd" in dst.encodings
    assert "" in dst.encodings  # the random chunk does not shrink: it goes raw
    out = await materialize(manifest, dst.store, tmp_path / "out")
    assert tree(out) == tree(root)


async def test_zstd_falls_back_to_raw_chunks_when_the_destination_cannot_take_it(
    tmp_path: Path, src: ChunkStore, session: aiohttp.ClientSession
) -> None:
    root = write_checkpoint(tmp_path / "ckpt", {"zeros.bin": bytes(5 * CHUNK_BYTES), "x.bin": b"x" * 1000})
    manifest = await manifest_of(root, src)
    no_zstd = await Destination(ChunkStore(tmp_path / "d1"), accept_zstd=False).start()
    # aiohttp's default server decodes Content-Encoding itself: without backports.zstd it answers 400.
    default_server = await Destination(ChunkStore(tmp_path / "d2"), auto_decompress=True).start()
    try:
        declined = await send_chunks(session, no_zstd.url, "t1", manifest, src, compress=True, **FAST_RETRY)
        decoded = await send_chunks(
            session, default_server.url, "t1", manifest, src, compress=True, **FAST_RETRY
        )
    finally:
        await no_zstd.stop()
        await default_server.stop()
    assert declined.compression == "none"
    assert set(no_zstd.encodings) == {""}
    assert decoded.compression == ("zstd" if AIOHTTP_DECODES_ZSTD else "none")
    for stats, store in ((declined, no_zstd.store), (decoded, default_server.store)):
        assert stats.chunks_sent == 2
        out = await materialize(manifest, store, tmp_path / "out" / str(id(store)))
        assert tree(out) == tree(root)


# --- refusals -------------------------------------------------------------------------------------------


def chunk_url(dst: Destination, sha: str, transfer_id: str = "t1") -> str:
    return f"{dst.url}/v1/transfers/{transfer_id}/chunks/{sha}"


async def error_of(response: aiohttp.ClientResponse) -> tuple[int, str]:
    body = await response.json()
    return response.status, body["error"]["code"]


async def test_a_corrupted_chunk_is_rejected_and_not_stored(
    dst: Destination, session: aiohttp.ClientSession
) -> None:
    data = os.urandom(10 * KIB)
    claimed = hashlib.sha256(data).hexdigest()
    damaged = bytearray(data)
    damaged[77] ^= 1
    async with session.put(chunk_url(dst, claimed), data=bytes(damaged)) as response:
        assert await error_of(response) == (422, "chunk_hash_mismatch")
    packed = zstandard.ZstdCompressor().compress(bytes(damaged))
    async with session.put(
        chunk_url(dst, claimed), data=packed, headers={"Content-Encoding": "zstd"}
    ) as response:
        assert await error_of(response) == (422, "chunk_hash_mismatch")
    async with session.put(
        chunk_url(dst, claimed), data=b"not zstd", headers={"Content-Encoding": "zstd"}
    ) as response:
        assert await error_of(response) == (422, "bad_zstd")
    async with session.put(
        chunk_url(dst, claimed), data=b"", headers={"Content-Encoding": "br2"}
    ) as response:
        assert await error_of(response) == (422, "empty_chunk")
    async with session.put(
        chunk_url(dst, claimed), data=data, headers={"Content-Encoding": "lz4"}
    ) as response:
        assert response.status == 201  # the bytes hash right whatever the header says
    assert dst.store.shas() == [claimed]
    async with session.put(
        chunk_url(dst, "0" * 64), data=b"x", headers={"Content-Encoding": "lz4"}
    ) as response:
        assert await error_of(response) == (415, "unsupported_encoding")
    async with session.put(chunk_url(dst, "../" + "0" * 61), data=data) as response:
        assert response.status == 404  # not a route: a hash is 64 hex digits


class FlakyStore(ChunkStore):
    """Damages the first copy of each chunk on its way in, as a bad link would."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.damaged: set[str] = set()

    def put(self, data: bytes, expected_sha256: str | None = None) -> str:
        if expected_sha256 is not None and expected_sha256 not in self.damaged:
            self.damaged.add(expected_sha256)
            data = data[:-1] + bytes([data[-1] ^ 1])
        return super().put(data, expected_sha256)


async def test_a_chunk_damaged_in_transit_is_resent(
    tmp_path: Path, src: ChunkStore, session: aiohttp.ClientSession
) -> None:
    root = write_checkpoint(tmp_path / "ckpt", {"a.bin": os.urandom(3 * CHUNK_BYTES)})
    manifest = await manifest_of(root, src)
    dst = await Destination(FlakyStore(tmp_path / "flaky")).start()
    try:
        stats = await send_chunks(session, dst.url, "t1", manifest, src, compress=False, **FAST_RETRY)
    finally:
        await dst.stop()
    assert stats.chunks_sent == 3
    assert stats.retries == 3
    assert len(dst.puts) == 6
    out = await materialize(manifest, dst.store, tmp_path / "out")
    assert tree(out) == tree(root)


@pytest.mark.parametrize(("chunks", "bad_index", "streams"), [(2, 1, 1), (12, 4, 3)])
async def test_a_chunk_damaged_at_the_source_stops_the_transfer(
    tmp_path: Path,
    src: ChunkStore,
    dst: Destination,
    session: aiohttp.ClientSession,
    chunks: int,
    bad_index: int,
    streams: int,
) -> None:
    """Each stream reads its next chunk while it sends one: a damaged chunk found by such a read (chunk 1
    with one stream) or by one of several streams still fails the push with its name."""
    root = write_checkpoint(tmp_path / "ckpt", {"a.bin": os.urandom(chunks * CHUNK_BYTES)})
    manifest = await manifest_of(root, src)
    bad = manifest.files[0].chunks[bad_index].sha256
    src.path_of(bad).write_bytes(os.urandom(CHUNK_BYTES))
    with pytest.raises(ChunkCorruptError, match=bad):
        await send_chunks(session, dst.url, "t1", manifest, src, streams=streams, compress=False)
    assert bad not in dst.store.shas()
    assert not src.has(bad)  # removed at the source: building the manifest again restores it


class _FullDiskStore(ChunkStore):
    """A chunk store on a full disk: every new chunk fails with ENOSPC."""

    def put(self, data: bytes, expected_sha256: str | None = None) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")


async def test_a_full_destination_disk_refuses_the_chunk_with_507_once(
    tmp_path: Path, src: ChunkStore, session: aiohttp.ClientSession
) -> None:
    """Found by the fault-injection trials: ENOSPC was a 500, retried as transient until the deadline."""
    full = await Destination(_FullDiskStore(tmp_path / "full-chunks")).start()
    try:
        root = write_checkpoint(tmp_path / "ckpt", {"a.bin": os.urandom(CHUNK_BYTES)})
        manifest = await manifest_of(root, src)
        with pytest.raises(TransferRefusedError) as refused:
            await send_chunks(session, full.url, "t1", manifest, src, streams=1, compress=False, **FAST_RETRY)
        assert (refused.value.status, refused.value.code) == (507, "insufficient_storage")
        assert len(full.puts) == 1  # not retried
    finally:
        await full.stop()


async def test_oversized_bodies_are_refused_with_413(
    dst: Destination, session: aiohttp.ClientSession
) -> None:
    big = os.urandom(MAX_CHUNK_BYTES + 1)
    sha = hashlib.sha256(big).hexdigest()
    async with session.put(chunk_url(dst, sha), data=big) as response:
        assert await error_of(response) == (413, "too_large")

    async def stream() -> AsyncIterator[bytes]:  # chunked transfer encoding: no Content-Length to check
        for _ in range(8):
            yield os.urandom(MAX_CHUNK_BYTES // 4)

    async with session.put(chunk_url(dst, sha), data=stream()) as response:
        assert await error_of(response) == (413, "too_large")
    bomb = zstandard.ZstdCompressor().compress(bytes(64 * MAX_CHUNK_BYTES))
    assert len(bomb) < MAX_CHUNK_BYTES
    async with session.put(chunk_url(dst, sha), data=bomb, headers={"Content-Encoding": "zstd"}) as response:
        assert await error_of(response) == (413, "too_large")
    assert dst.store.shas() == []


async def test_a_manifest_with_chunks_too_big_for_the_destination_is_refused(
    tmp_path: Path, src: ChunkStore, dst: Destination, session: aiohttp.ClientSession
) -> None:
    root = write_checkpoint(tmp_path / "ckpt", {"a.bin": os.urandom(2 * MAX_CHUNK_BYTES)})
    manifest = await manifest_of(root, src, chunk_size_bytes=2 * MAX_CHUNK_BYTES)
    with pytest.raises(TransferRefusedError) as caught:
        await send_chunks(session, dst.url, "t1", manifest, src, compress=False)
    assert (caught.value.status, caught.value.code) == (413, "chunk_too_large")
    assert dst.puts == []


async def test_have_refuses_malformed_requests(dst: Destination, session: aiohttp.ClientSession) -> None:
    url = f"{dst.url}/v1/transfers/t1/have"
    ref = {"sha256": "a" * 64, "size_bytes": 10}
    cases: list[tuple[Any, tuple[int, str]]] = [
        ({"chunks": [ref]}, (422, "invalid")),
        ([ref, {"sha256": "A" * 64, "size_bytes": 1}], (422, "invalid")),
        ([ref] * (MAX_HAVE_REFS + 1), (413, "too_many")),
    ]
    for body, expected in cases:
        async with session.post(url, json=body) as response:
            assert await error_of(response) == expected
    async with session.post(url, data=b"[{", headers={"Content-Type": "application/json"}) as response:
        assert await error_of(response) == (400, "bad_json")
    async with session.post(url, data=b"[]", headers={"Content-Type": "text/plain"}) as response:
        assert await error_of(response) == (415, "not_json")
    async with session.post(url, json=[ref]) as response:
        answer = await response.json()
    assert answer == {"missing": ["a" * 64], "encodings": ["zstd"], "max_chunk_bytes": MAX_CHUNK_BYTES}


async def test_authorize_refusals_stop_the_transfer_before_any_chunk(
    tmp_path: Path, src: ChunkStore, dst: Destination, session: aiohttp.ClientSession
) -> None:
    root = write_checkpoint(tmp_path / "ckpt", {"a.bin": os.urandom(1000)})
    manifest = await manifest_of(root, src)
    dst.refuse = web.HTTPForbidden
    with pytest.raises(TransferRefusedError) as caught:
        await send_chunks(session, dst.url, "someone-elses", manifest, src, compress=False)
    assert (caught.value.status, caught.value.code) == (403, "nope")
    sha = manifest.files[0].chunks[0].sha256
    async with session.put(chunk_url(dst, sha), data=(root / "a.bin").read_bytes()) as response:
        assert response.status == 403
    assert dst.store.shas() == []


async def test_a_destination_answering_about_other_chunks_is_a_protocol_error(
    tmp_path: Path, src: ChunkStore, session: aiohttp.ClientSession
) -> None:
    async def lying_have(request: web.Request) -> web.Response:
        return web.json_response({"missing": ["f" * 64]})

    app = web.Application()
    app.router.add_post("/v1/transfers/t1/have", lying_have)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    manifest = await manifest_of(write_checkpoint(tmp_path / "ckpt", {"a": b"abc"}), src)
    try:
        with pytest.raises(ProtocolError, match="hashes that were asked about"):
            await send_chunks(session, f"http://127.0.0.1:{runner.addresses[0][1]}", "t1", manifest, src)
    finally:
        await runner.cleanup()


async def test_send_chunks_checks_its_arguments(src: ChunkStore, session: aiohttp.ClientSession) -> None:
    manifest = Manifest(
        job_id="j", epoch=0, source_node="n", created_s=0.0, chunk_size_bytes=4096, files=[], total_bytes=0
    )
    with pytest.raises(ValueError, match="transfer_id"):
        await send_chunks(session, "http://127.0.0.1:1", "../x", manifest, src)
    with pytest.raises(ValueError, match="streams"):
        await send_chunks(session, "http://127.0.0.1:1", "t", manifest, src, streams=0)


# --- signatures -----------------------------------------------------------------------------------------


async def test_signatures_with_the_node_key_and_its_certificate(tmp_path: Path, src: ChunkStore) -> None:
    tls = make_test_ca(tmp_path)
    key = load_private_key(tls.key)
    public = certificate_public_key(tls.cert.read_bytes())
    manifest = await manifest_of(random_checkpoint(tmp_path / "ckpt"), src)
    signature = sign_manifest(manifest, key)
    assert verify_manifest(manifest, signature, public) == manifest
    # What the destination receives is JSON: any formatting of it verifies, any change of a value does not.
    received = json.dumps(manifest.model_dump(mode="json"), indent=1).encode()
    assert verify_manifest(received, signature, public) == manifest


async def test_a_tampered_manifest_fails_verification(tmp_path: Path, src: ChunkStore) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    manifest = await manifest_of(random_checkpoint(tmp_path / "ckpt"), src)
    signature = sign_manifest(manifest, key)
    data = manifest.model_dump(mode="json")
    tampered: list[dict[str, Any]] = []
    for change in ("epoch", "path", "chunk", "source"):
        copy = json.loads(json.dumps(data))
        if change == "epoch":
            copy["epoch"] += 1
        elif change == "path":
            copy["files"][0]["path"] = "evil.json"
        elif change == "chunk":
            copy["files"][1]["chunks"][0]["sha256"] = "0" * 64
        else:
            copy["source_node"] = "node-evil"
        tampered.append(copy)
    for copy in tampered:
        with pytest.raises(PayloadError) as caught:
            verify_manifest(json.dumps(copy).encode(), signature, key.public_key())
        assert caught.value.reason == "bad_signature"
        with pytest.raises(PayloadError, match="bad_signature"):
            verify_manifest(Manifest.model_validate(copy), signature, key.public_key())
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(PayloadError, match="bad_signature"):
        verify_manifest(manifest, signature, other.public_key())
    with pytest.raises(PayloadError, match="bad_signature"):
        verify_manifest(manifest, b"\x30\x02garbage", key.public_key())
    with pytest.raises(PayloadError, match="bad_manifest"):
        verify_manifest(b'{"version": 2}', signature, key.public_key())


async def test_ed25519_keys_sign_too_and_other_keys_are_refused(tmp_path: Path, src: ChunkStore) -> None:
    manifest = await manifest_of(write_checkpoint(tmp_path / "ckpt", {"a": b"abc"}), src)
    key = ed25519.Ed25519PrivateKey.generate()
    signature = sign_manifest(manifest, key)
    assert verify_manifest(manifest, signature, key.public_key()) == manifest
    ec_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(PayloadError, match="bad_signature"):
        verify_manifest(manifest, sign_manifest(manifest, ec_key), key.public_key())
    with pytest.raises(ConfigError, match="X25519PrivateKey"):
        sign_manifest(manifest, x25519.X25519PrivateKey.generate())  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match="bad_key"):
        verify_manifest(manifest, signature, x25519.X25519PrivateKey.generate().public_key())  # type: ignore[arg-type]


# --- materialize ----------------------------------------------------------------------------------------


async def test_materialize_keeps_permissions_and_replaces_an_old_copy(
    tmp_path: Path, src: ChunkStore
) -> None:
    files = {"run.sh": b"#!/bin/sh\n", "shared.bin": b"s" * 100, "ro.bin": b"r", "deep/a/b/c.bin": b"c"}
    root = write_checkpoint(tmp_path / "ckpt", files, {"run.sh": 0o755, "shared.bin": 0o666, "ro.bin": 0o400})
    manifest = await manifest_of(root, src)
    dest = tmp_path / "jobs" / "llm-7b" / "checkpoint"
    dest.mkdir(parents=True)
    (dest / "stale.bin").write_bytes(b"from an older checkpoint")
    assert await materialize(manifest, src, dest) == dest
    assert tree(dest) == files
    modes = {name: stat.S_IMODE((dest / name).stat().st_mode) for name in files}
    assert modes == {"run.sh": 0o755, "shared.bin": 0o644, "ro.bin": 0o600, "deep/a/b/c.bin": 0o644}
    assert sorted(p.name for p in dest.parent.iterdir()) == ["checkpoint"]  # no staging or old copy left


async def test_materialize_names_a_missing_or_damaged_chunk_and_leaves_nothing(
    tmp_path: Path, src: ChunkStore
) -> None:
    root = write_checkpoint(tmp_path / "ckpt", {"a.bin": os.urandom(2 * CHUNK_BYTES), "b.bin": b"bbb"})
    manifest = await manifest_of(root, src)
    dest = tmp_path / "out" / "checkpoint"
    second = manifest.files[0].chunks[1].sha256
    src.delete(second)
    with pytest.raises(ChunkMissingError, match=f"'a.bin': chunk 1 \\({second}\\) is not in the chunk store"):
        await materialize(manifest, src, dest)
    assert list((tmp_path / "out").iterdir()) == []
    await manifest_of(root, src)  # building it again restores the deleted chunk
    src.path_of(manifest.files[1].chunks[0].sha256).write_bytes(b"bbx")
    with pytest.raises(ChunkCorruptError, match=r"'b\.bin': chunk 0"):
        await materialize(manifest, src, dest)
    assert list((tmp_path / "out").iterdir()) == []


def hostile(path: str, ref: ChunkRef) -> Manifest:
    """A manifest that skipped validation (model_construct), as a bug or an attacker could produce."""
    file = ManifestFile.model_construct(path=path, size_bytes=ref.size_bytes, mode=0o644, chunks=[ref])
    return Manifest.model_construct(
        version=1,
        job_id="j",
        epoch=0,
        source_node="n",
        created_s=0.0,
        chunk_size_bytes=4096,
        files=[file],
        total_bytes=ref.size_bytes,
        compression="none",
    )


@pytest.mark.parametrize(
    "path", ["../escape.txt", "../../escape.txt", "/tmp/abs.txt", "a/../../escape.txt", "a\\..\\x"]
)
async def test_materialize_never_writes_outside_dest_dir(tmp_path: Path, src: ChunkStore, path: str) -> None:
    ref = ChunkRef(sha256=src.put(b"payload"), size_bytes=7)
    workdir = tmp_path / "work"
    workdir.mkdir()
    before = sorted(p for p in tmp_path.rglob("*") if "src-chunks" not in p.parts)
    with pytest.raises(CheckpointError, match="refusing to materialize"):
        await materialize(hostile(path, ref), src, workdir / "dest")
    after = sorted(p for p in tmp_path.rglob("*") if "src-chunks" not in p.parts)
    assert after == before


async def test_materialize_refuses_to_write_through_a_symlinked_dest(tmp_path: Path, src: ChunkStore) -> None:
    ref = ChunkRef(sha256=src.put(b"payload"), size_bytes=7)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_bytes(b"mine")
    (tmp_path / "dest").symlink_to(outside)
    manifest = hostile("keep.txt", ref)
    with pytest.raises(CheckpointError, match="symbolic link"):
        await materialize(manifest, src, tmp_path / "dest")
    assert tree(outside) == {"keep.txt": b"mine"}
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="not a directory"):
        await materialize(manifest, src, tmp_path / "file")
    twice = Manifest.model_construct(**{**dict(manifest), "files": [manifest.files[0]] * 2})
    with pytest.raises(CheckpointError, match="listed twice"):
        await materialize(twice, src, tmp_path / "twice")
