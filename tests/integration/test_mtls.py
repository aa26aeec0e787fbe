"""Mutual TLS end to end: a real aiohttp HTTPS server on a loopback port and real aiohttp clients.

The server uses ``server_ssl_context`` and reads the caller's node name from the request; honest clients use
``client_ssl_context``. Attackers build their contexts with plain ``ssl`` (they do not go through
greenferry's checks). Every attack must fail before the handler runs. The reasons of each rejection are
checked in tests/unit/test_pki.py (in-memory handshakes); here it is the whole stack that must refuse.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import aiohttp
import pytest
from aiohttp import web

from greenferry.adapters.pki import (
    CaPaths,
    NodeCertPaths,
    client_ssl_context,
    init_ca,
    issue_node_cert,
    peer_node_name,
    request_peer_node_name,
    server_ssl_context,
)
from greenferry.errors import PayloadError

pytestmark = pytest.mark.integration

DAY = dt.timedelta(days=1)
TIMEOUT = aiohttp.ClientTimeout(total=10)


@dataclass(frozen=True)
class Fleet:
    """The cluster CA, its nodes (valid and not), and an unrelated CA's node that claims a cluster name."""

    ca: CaPaths
    n1: NodeCertPaths
    n2: NodeCertPaths
    expired: NodeCertPaths
    not_yet_valid: NodeCertPaths
    wrong_host: NodeCertPaths
    intruder: NodeCertPaths
    other_ca: CaPaths


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    root = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)
    ca = init_ca(root / "ca", now=now - 30 * DAY)

    def issue(node: str, hosts: list[str], **kwargs: object) -> NodeCertPaths:
        return issue_node_cert(root / "ca", node, hosts=hosts, out_dir=root / node, **kwargs)  # type: ignore[arg-type]

    other_ca = init_ca(root / "other-ca", name="someone else's CA")
    return Fleet(
        ca=ca,
        n1=issue("n1", ["127.0.0.1"]),
        n2=issue("n2", ["127.0.0.1"]),
        expired=issue("old", ["127.0.0.1"], now=now - 10 * DAY, days=1),
        not_yet_valid=issue("early", ["127.0.0.1"], now=now + 2 * DAY),
        wrong_host=issue("n3", ["n3.lan", "10.9.9.9"]),
        intruder=issue_node_cert(root / "other-ca", "n2", hosts=["127.0.0.1"], out_dir=root / "intruder"),
        other_ca=other_ca,
    )


@dataclass
class Server:
    """A peer-API stand-in: one route that answers with the caller's node name."""

    url: str
    callers: list[str] = field(default_factory=list)


@asynccontextmanager
async def serve(ssl_context: ssl.SSLContext | None) -> AsyncIterator[Server]:
    """An aiohttp server on 127.0.0.1 (a free port) whose handler records who called."""
    scheme = "https" if ssl_context is not None else "http"
    server = Server(url="")

    async def whoami(request: web.Request) -> web.Response:
        try:
            node = request_peer_node_name(request)
        except PayloadError as err:
            return web.json_response({"error": err.reason}, status=401)
        server.callers.append(node)
        return web.json_response({"node": node})

    app = web.Application()
    app.router.add_get("/whoami", whoami)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        server.url = f"{scheme}://127.0.0.1:{runner.addresses[0][1]}/whoami"
        yield server
    finally:
        await runner.cleanup()


def attacker_context(cert: Path | None, key: Path | None, trust: Path) -> ssl.SSLContext:
    """A client context built with plain ssl, trusting the cluster CA so that only the server can refuse."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(trust))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


class _RecordedSSLObject(ssl.SSLObject):
    """An SSLObject that remembers itself, so that a test can ask the client's TLS end whom it talked to."""

    made: ClassVar[list[ssl.SSLObject]] = []

    def do_handshake(self) -> None:
        super().do_handshake()
        type(self).made.append(self)


async def test_a_cluster_node_connects_and_each_end_reads_the_others_name(fleet: Fleet) -> None:
    client_context = client_ssl_context(fleet.n2)
    _RecordedSSLObject.made = []
    client_context.sslobject_class = _RecordedSSLObject
    async with (
        serve(server_ssl_context(fleet.n1)) as server,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context), timeout=TIMEOUT) as session,
        session.get(server.url) as response,
    ):
        assert response.status == 200
        assert await response.json() == {"node": "n2"}
    assert server.callers == ["n2"]
    assert [peer_node_name(end) for end in _RecordedSSLObject.made] == ["n1"]


@pytest.mark.parametrize("tls", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize(
    "attacker", ["no certificate", "another CA", "expired", "not yet valid", "the CA certificate itself"]
)
async def test_the_server_refuses_clients_the_cluster_did_not_vouch_for(
    fleet: Fleet, attacker: str, tls: ssl.TLSVersion
) -> None:
    credentials = {
        "no certificate": (None, None),
        "another CA": (fleet.intruder.cert, fleet.intruder.key),
        "expired": (fleet.expired.cert, fleet.expired.key),
        "not yet valid": (fleet.not_yet_valid.cert, fleet.not_yet_valid.key),
        "the CA certificate itself": (fleet.ca.cert, fleet.ca.key),
    }[attacker]
    context = attacker_context(*credentials, trust=fleet.ca.cert)
    context.maximum_version = tls
    async with serve(server_ssl_context(fleet.n1)) as server:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context), timeout=TIMEOUT
        ) as session:
            with pytest.raises(aiohttp.ClientError):
                async with session.get(server.url) as response:
                    await response.read()
        # The same server still serves a real member: it refused the attacker, not everyone.
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=client_ssl_context(fleet.n2)), timeout=TIMEOUT
            ) as session,
            session.get(server.url) as response,
        ):
            assert response.status == 200
    assert server.callers == ["n2"]


@pytest.mark.parametrize("impostor", ["SAN does not match the host", "expired", "another CA"])
async def test_the_client_refuses_a_server_that_is_not_the_peer_it_called(
    fleet: Fleet, impostor: str
) -> None:
    paths = {
        "SAN does not match the host": fleet.wrong_host,
        "expired": fleet.expired,
        "another CA": fleet.intruder,
    }[impostor]
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # the impostor asks for nothing
    server_context.load_cert_chain(str(paths.cert), str(paths.key))
    async with (
        serve(server_context) as server,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_ssl_context(fleet.n2)), timeout=TIMEOUT
        ) as session,
    ):
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with session.get(server.url) as response:
                await response.read()
    assert server.callers == []


async def test_a_request_over_plain_http_has_no_peer_identity(fleet: Fleet) -> None:
    async with (
        serve(None) as server,
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(server.url) as response,
    ):
        assert response.status == 401
        assert await response.json() == {"error": "no_peer_certificate"}
    assert server.callers == []


async def test_during_a_ca_rotation_the_server_trusts_both_cas_of_its_bundle(
    fleet: Fleet, tmp_path: Path
) -> None:
    bundle = tmp_path / "ca-bundle.crt"
    bundle.write_bytes(fleet.ca.cert.read_bytes() + fleet.other_ca.cert.read_bytes())
    server_context = server_ssl_context(NodeCertPaths(bundle, fleet.n1.cert, fleet.n1.key))
    async with serve(server_context) as server:
        for member in (fleet.n2, fleet.intruder):  # one node of each CA, both named n2
            context = attacker_context(member.cert, member.key, trust=fleet.ca.cert)
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=context), timeout=TIMEOUT
                ) as session,
                session.get(server.url) as response,
            ):
                assert response.status == 200
    assert server.callers == ["n2", "n2"]
