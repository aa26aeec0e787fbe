"""POST /v1/chunks/held: a real peer server and orchestrator on 127.0.0.1 say what of a checkpoint they hold.

The source asks before it predicts a move (docs/peer-protocol.md); the destination answers from its chunk
cache and refuses hostile queries with a clear error.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from greenferry.config import config_from_mapping
from greenferry.core.manifest import ChunkRef
from greenferry.core.protocol import MAX_HELD_CHUNKS, ProtocolError
from greenferry.core.signals import SignalBoard
from greenferry.daemon.bus import EventBus
from greenferry.daemon.clock import RealClock
from greenferry.daemon.jobs import JobSupervisor
from greenferry.daemon.orchestrator import Orchestrator
from greenferry.daemon.peer import (
    HELD_BODY_LIMIT_BYTES,
    NODE_HEADER,
    PeerClient,
    PeerRequestError,
    PeerServer,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[Orchestrator, str]]:
    config = config_from_mapping(
        {
            "node": {"name": "b", "site": "site-b", "gpu_count": 1, "data_dir": str(tmp_path / "b")},
            "mqtt": {"host": "127.0.0.1", "port": 1, "topic_prefix": "gf"},
            "http": {"enabled": False},
            "peer": {"insecure": True, "port": 0},
        },
        environ={},
    )
    orchestrator = Orchestrator(config, RealClock(), EventBus(), SignalBoard({}), JobSupervisor())
    server = PeerServer(
        orchestrator, "127.0.0.1", 0, ssl_context=None, insecure=True, max_body_bytes=64 * 2**20
    )
    async with server:
        yield orchestrator, server.url
    orchestrator.journal.close()


@pytest.fixture
async def client() -> AsyncIterator[PeerClient]:
    async with PeerClient("a", None) as peer_client:
        yield peer_client


def _chunk(data: bytes) -> ChunkRef:
    return ChunkRef(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


async def test_held_counts_the_chunks_the_cache_holds_intact(
    node: tuple[Orchestrator, str], client: PeerClient
) -> None:
    orchestrator, url = node
    held = [os.urandom(1000), os.urandom(3000)]
    for data in held:
        orchestrator.chunks.put(data)
    cached = [_chunk(data) for data in held]
    wrong_size = ChunkRef(sha256=cached[0].sha256, size_bytes=999)
    unknown = [ChunkRef(sha256=f"{i:064x}", size_bytes=4096) for i in range(MAX_HELD_CHUNKS)]
    # More than one query holds: the client asks in batches and adds up; a repeated chunk counts once.
    assert await client.held_bytes(url, [*unknown, *cached, cached[1]]) == 4000
    assert await client.held_bytes(url, [wrong_size]) == 0
    assert await client.held_bytes(url, []) == 0


async def test_held_refuses_hostile_queries(node: tuple[Orchestrator, str]) -> None:
    _, url = node
    ref = {"sha256": "a" * 64, "size_bytes": 10}
    cases: list[tuple[Any, int, str]] = [
        ([ref], 422, "(body): Input should be a valid dictionary"),
        ({"chunks": [{**ref, "sha256": "A" * 64}]}, 422, "chunks.0.sha256"),
        ({"chunks": [{**ref, "size_bytes": 0}]}, 422, "chunks.0.size_bytes"),
        ({"chunks": [{**ref, "size_bytes": "10"}]}, 422, "chunks.0.size_bytes"),
        ({"chunks": [{**ref, "path": "/etc/passwd"}]}, 422, "chunks.0.path"),
        ({"chunks": [ref, ref]}, 422, "is listed twice"),
        ({"chunks": [ref], "protocol": 2}, 422, "protocol"),
        (
            {"chunks": [{"sha256": f"{i:064x}", "size_bytes": 1} for i in range(MAX_HELD_CHUNKS + 1)]},
            422,
            f"at most {MAX_HELD_CHUNKS} items",
        ),
        ({"chunks": [], "padding": " " * HELD_BODY_LIMIT_BYTES}, 413, "too_large"),
    ]
    headers = {NODE_HEADER: "a"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for body, status, text in cases:
            data = io.BytesIO(json.dumps(body).encode())  # not bytes: aiohttp warns about large ones
            headers = {"Content-Type": "application/json"}
            async with session.post(f"{url}/v1/chunks/held", data=data, headers=headers) as response:
                assert response.status == status, (
                    body if len(str(body)) < 200 else status,
                    await response.text(),
                )
                assert text in (await response.text()), await response.text()
        async with session.post(
            f"{url}/v1/chunks/held", data=b"{", headers={"Content-Type": "application/json"}
        ) as response:
            assert (response.status, (await response.json())["error"]["code"]) == (400, "bad_json")
        async with session.post(
            f"{url}/v1/chunks/held", data=b"{}", headers={"Content-Type": "text/plain"}
        ) as response:
            assert response.status == 415

        async def endless() -> AsyncIterator[bytes]:  # no Content-Length to check
            yield b'{"chunks": [], "padding": "'
            for _ in range(HELD_BODY_LIMIT_BYTES // 65536 + 2):
                yield b" " * 65536
            yield b'"}'

        async with session.post(
            f"{url}/v1/chunks/held", data=endless(), headers={"Content-Type": "application/json"}
        ) as response:
            assert (response.status, (await response.json())["error"]["code"]) == (413, "too_large")
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.post(f"{url}/v1/chunks/held", json={"chunks": []}) as response,
    ):
        assert response.status == 401


async def test_a_peer_without_the_route_or_one_that_claims_too_much(client: PeerClient) -> None:
    async def boasting(request: web.Request) -> web.Response:
        asked = json.loads(await request.read())["chunks"]
        return web.json_response({"chunks": len(asked), "held_chunks": len(asked), "held_bytes": 10**9})

    app = web.Application()
    app.router.add_post("/boasting/v1/chunks/held", boasting)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        with pytest.raises(PeerRequestError) as caught:  # an older daemon: the source predicts with all
            await client.held_bytes(base, [_chunk(b"x")])
        assert caught.value.status == 404
        with pytest.raises(ProtocolError, match="more than it was asked about"):
            await client.held_bytes(f"{base}/boasting", [_chunk(b"x")])
    finally:
        await runner.cleanup()
