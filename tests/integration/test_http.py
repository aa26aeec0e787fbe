"""NodeHttpServer: a real aiohttp server on 127.0.0.1 (port 0) and a real aiohttp client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from greenferry.adapters.http import NodeHttpServer

pytestmark = pytest.mark.integration


@dataclass
class Node:
    """What the daemon would answer: a status and a readiness verdict the test can change."""

    ready: bool = True
    checks: dict[str, object] = field(default_factory=lambda: {"mqtt": "connected"})
    status: dict[str, object] = field(default_factory=lambda: {"node": "n1", "state": "online"})
    fail: bool = False

    def status_fn(self) -> dict[str, object]:
        if self.fail:
            raise RuntimeError("secret internal detail")
        return self.status

    def ready_fn(self) -> tuple[bool, dict[str, object]]:
        return self.ready, self.checks


@dataclass
class Served:
    node: Node
    registry: CollectorRegistry
    server: NodeHttpServer
    session: aiohttp.ClientSession

    def url(self, path: str) -> str:
        return self.server.url + path


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    node = Node()
    registry = CollectorRegistry()
    Counter("greenferry_test_events", "Events for the test.", ["kind"], registry=registry).labels("a").inc(3)
    async with (
        NodeHttpServer("127.0.0.1", 0, registry, node.status_fn, node.ready_fn) as server,
        aiohttp.ClientSession() as session,
    ):
        yield Served(node, registry, server, session)


async def test_picks_a_free_port_and_answers_healthz(served: Served) -> None:
    assert served.server.port > 0
    async with served.session.get(served.url("/healthz")) as response:
        assert response.status == 200
        assert (await response.text()).strip() == "ok"


async def test_readyz_is_200_when_ready_and_503_with_the_reasons_when_not(served: Served) -> None:
    async with served.session.get(served.url("/readyz")) as response:
        assert response.status == 200
        assert await response.json() == {"ready": True, "checks": {"mqtt": "connected"}}
    served.node.ready = False
    served.node.checks = {"mqtt": "disconnected: connection refused", "power": "no sample yet"}
    async with served.session.get(served.url("/readyz")) as response:
        assert response.status == 503
        assert response.content_type == "application/json"
        body = await response.json()
    assert body == {"ready": False, "checks": served.node.checks}


async def test_metrics_parse_as_prometheus_text(served: Served) -> None:
    async with served.session.get(served.url("/metrics")) as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        assert "version=" in response.headers["Content-Type"]
        text = await response.text()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    (sample,) = [s for s in families["greenferry_test_events"].samples if s.name.endswith("_total")]
    assert sample.labels == {"kind": "a"}
    assert sample.value == 3.0


async def test_status_is_json_and_non_finite_numbers_become_null(served: Served) -> None:
    served.node.status = {"node": "n1", "power_w": float("nan"), "gpus": (1, 2), "limit_w": float("inf")}
    async with served.session.get(served.url("/v1/status")) as response:
        assert response.status == 200
        assert await response.json() == {"node": "n1", "power_w": None, "gpus": [1, 2], "limit_w": None}


async def test_a_failing_handler_is_a_500_without_internals(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    served.node.fail = True
    with caplog.at_level(logging.ERROR, logger="greenferry"):
        async with served.session.get(served.url("/v1/status")) as response:
            assert response.status == 500
            text = await response.text()
    assert "secret" not in text
    assert "Traceback" not in text
    assert '"internal error"' in text
    (record,) = [r for r in caplog.records if r.name == "greenferry.adapters.http"]
    assert record.exc_info is not None  # the trace is in the log, not the response


async def test_unknown_paths_are_404_json(served: Served) -> None:
    async with served.session.get(served.url("/v1/nope")) as response:
        assert response.status == 404
        assert await response.json() == {"error": "Not Found", "status": 404}


async def test_wrong_methods_are_405_with_allow(served: Served) -> None:
    async with served.session.post(served.url("/v1/status"), json={"x": 1}) as response:
        assert response.status == 405
        assert "GET" in response.headers["Allow"]
        assert (await response.json())["status"] == 405
    async with served.session.head(served.url("/healthz")) as response:
        assert response.status == 200


async def test_oversize_bodies_are_refused(served: Served) -> None:
    body = b"x" * (64 * 1024 + 1)
    async with served.session.post(served.url("/v1/status"), data=body) as response:
        assert response.status == 413
        assert "65536-byte limit" in (await response.json())["error"]
    async with served.session.get(served.url("/healthz"), data=body) as response:
        assert response.status == 413
    async with served.session.get(served.url("/healthz"), data=b"x" * 1024) as response:
        assert response.status == 200  # a small body is within the limit


async def test_run_waits_until_cancelled_and_exit_stops_listening() -> None:
    node = Node()
    async with NodeHttpServer("127.0.0.1", 0, CollectorRegistry(), node.status_fn, node.ready_fn) as server:
        url = server.url + "/healthz"
        task = asyncio.create_task(server.run())
        await asyncio.sleep(0)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200  # cancelling run() does not stop the server; exiting does
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(url):
                pass
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port


async def test_a_taken_port_fails_with_the_address() -> None:
    node = Node()
    async with NodeHttpServer("127.0.0.1", 0, CollectorRegistry(), node.status_fn, node.ready_fn) as first:
        second = NodeHttpServer("127.0.0.1", first.port, CollectorRegistry(), node.status_fn, node.ready_fn)
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            await second.__aenter__()
