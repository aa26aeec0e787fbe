"""The local job API against a real aiohttp server on a real Unix socket (and loopback TCP) in tmp_path.

The daemon's side is :class:`MemoryJobService`, a dict-backed test double of the orchestrator.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from greenferry.adapters.local_api import (
    MAX_JSON_DEPTH,
    TOKEN_NAME,
    DaemonNotRunningError,
    JobConflictError,
    JobNotFoundError,
    JobValidationError,
    LocalApiClient,
    LocalApiError,
    LocalApiServer,
    read_token,
    validate_job_spec,
)
from greenferry.core.jobs import TERMINAL_STATES, JobInfo, JobSpec, JobState
from greenferry.errors import ServiceUnavailableError

NODE = "edge-1"
PEERS = ("edge-2", "edge-3")
JSON_HEADERS = {"Content-Type": "application/json"}


class MemoryJobService:
    """The daemon's job service as a dict; records every call it gets."""

    def __init__(self, node: str = NODE, peers: tuple[str, ...] = PEERS) -> None:
        self.node = node
        self.peers = peers
        self.jobs: dict[str, JobInfo] = {}
        self.calls: list[tuple[str, ...]] = []
        self.fail_with: BaseException | None = None

    def _check(self, *call: str) -> None:
        self.calls.append(call)
        if self.fail_with is not None:
            raise self.fail_with

    def _job(self, job_id: str) -> JobInfo:
        info = self.jobs.get(job_id)
        if info is None:
            raise JobNotFoundError(f"no job {job_id!r} on node {self.node}")
        return info

    async def submit(self, spec: JobSpec) -> JobInfo:
        self._check("submit", spec.name)
        if spec.name in self.jobs:
            raise JobConflictError(f"job {spec.name} already exists")
        info = JobInfo(job_id=spec.name, spec=spec, state=JobState.PENDING, node=self.node, epoch=0)
        self.jobs[spec.name] = info
        return info

    async def list_jobs(self) -> list[JobInfo]:
        self._check("list")
        return [self.jobs[key] for key in sorted(self.jobs)]

    async def get(self, job_id: str) -> JobInfo:
        self._check("get", job_id)
        return self._job(job_id)

    async def cancel(self, job_id: str) -> JobInfo:
        self._check("cancel", job_id)
        info = self._job(job_id)
        if info.state in TERMINAL_STATES:
            raise JobConflictError(f"job {job_id} is {info.state.value}: nothing to cancel")
        self.jobs[job_id] = info.model_copy(
            update={"state": JobState.CANCELLED, "message": "cancelled by user"}
        )
        return self.jobs[job_id]

    async def migrate(self, job_id: str, to_node: str) -> JobInfo:
        self._check("migrate", job_id, to_node)
        info = self._job(job_id)
        if to_node not in self.peers:
            raise JobValidationError([("to", f"no peer named {to_node!r}")], "the request")
        if not info.spec.migratable or info.state in TERMINAL_STATES:
            raise JobConflictError(f"job {job_id} cannot migrate ({info.state.value})")
        self.jobs[job_id] = info.model_copy(update={"state": JobState.MIGRATING})
        return self.jobs[job_id]

    def put(self, info: JobInfo) -> None:
        """Set a job's state directly (as the daemon would reach it)."""
        self.jobs[info.job_id] = info


def spec_dict(name: str = "train-1", **extra: Any) -> dict[str, Any]:
    """A valid JobSpec body."""
    return {"name": name, "command": ["python3", "train.py"], "checkpoint_size_bytes": 1024, **extra}


@pytest.fixture
def service() -> MemoryJobService:
    return MemoryJobService()


@pytest.fixture
async def server(service: MemoryJobService, tmp_path: Path) -> AsyncIterator[LocalApiServer]:
    async with LocalApiServer(service, tmp_path / "data", tcp_port=0) as api:
        yield api


@pytest.fixture
async def raw(server: LocalApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session on the server's Unix socket, for requests the client would never send."""
    connector = aiohttp.UnixConnector(path=str(server.socket_path))
    async with aiohttp.ClientSession(base_url="http://greenferry", connector=connector) as session:
        yield session


@pytest.fixture
async def client(server: LocalApiServer) -> AsyncIterator[LocalApiClient]:
    async with LocalApiClient(data_dir=server.data_dir) as api:
        yield api


async def _error(response: aiohttp.ClientResponse) -> dict[str, Any]:
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert isinstance(error["code"], str)
    assert isinstance(error["message"], str)
    return error


# --- the socket and the token files


async def test_socket_is_0600_and_removed_on_exit(service: MemoryJobService, tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "data"
    async with LocalApiServer(service, data_dir) as api:
        info = api.socket_path.lstat()
        assert api.socket_path == data_dir / "api.sock"
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700  # created by the server
        assert not (data_dir / TOKEN_NAME).exists()  # no TCP listener, no token
        with pytest.raises(RuntimeError, match="no TCP listener"):
            _ = api.token
    assert not (data_dir / "api.sock").exists()


async def test_token_file_is_0600_random_and_removed_on_exit(
    service: MemoryJobService, tmp_path: Path
) -> None:
    tokens = []
    for _ in range(2):
        async with LocalApiServer(service, tmp_path, tcp_port=0) as api:
            info = api.token_path.lstat()
            assert stat.S_ISREG(info.st_mode)
            assert stat.S_IMODE(info.st_mode) == 0o600
            assert read_token(tmp_path) == api.token
            assert len(api.token) >= 40
            tokens.append(api.token)
        assert not api.token_path.exists()
    assert tokens[0] != tokens[1]
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary token file left behind


async def test_stale_socket_is_replaced(service: MemoryJobService, tmp_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "api.sock"))
    stale.close()  # the file stays, nothing listens: what a crashed daemon leaves
    async with LocalApiServer(service, tmp_path) as api, LocalApiClient(data_dir=tmp_path) as client:
        assert await client.list_jobs() == []
        assert stat.S_IMODE(api.socket_path.lstat().st_mode) == 0o600


async def test_live_socket_is_not_taken_over(server: LocalApiServer, service: MemoryJobService) -> None:
    with pytest.raises(ServiceUnavailableError, match="another daemon is listening on"):
        async with LocalApiServer(service, server.data_dir):
            pass
    async with LocalApiClient(data_dir=server.data_dir) as client:  # the first one still serves
        assert await client.list_jobs() == []


@pytest.mark.parametrize("kind", ["file", "symlink", "directory"])
async def test_something_else_at_the_socket_path_is_left_alone(
    service: MemoryJobService, tmp_path: Path, kind: str
) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me")
    path = tmp_path / "api.sock"
    if kind == "file":
        path.write_text("not a socket")
    elif kind == "symlink":
        path.symlink_to(target)
    else:
        path.mkdir()
    with pytest.raises(ServiceUnavailableError, match="is not a socket; it was left alone"):
        async with LocalApiServer(service, tmp_path):
            pass
    assert path.exists()
    assert target.read_text() == "keep me"


async def test_socket_path_too_long_is_refused(service: MemoryJobService, tmp_path: Path) -> None:
    with pytest.raises(ServiceUnavailableError, match="over the 107-byte limit"):
        async with LocalApiServer(service, tmp_path, socket_path=tmp_path / ("x" * 120)):
            pass


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.org"])
def test_tcp_listener_must_be_loopback(service: MemoryJobService, tmp_path: Path, host: str) -> None:
    with pytest.raises(ValueError, match="not a loopback address"):
        LocalApiServer(service, tmp_path, tcp_host=host, tcp_port=0)


# --- every route, through the client


async def test_every_route_round_trips(client: LocalApiClient, service: MemoryJobService) -> None:
    spec = validate_job_spec(spec_dict("train-1", env={"SEED": "1"}, gpu_count=2))
    submitted = await client.submit(spec)
    assert submitted.job_id == "train-1"
    assert submitted.spec == spec
    assert submitted.state is JobState.PENDING
    await client.submit(validate_job_spec(spec_dict("eval-1")))

    assert [info.job_id for info in await client.list_jobs()] == ["eval-1", "train-1"]
    assert await client.get("train-1") == submitted

    moving = await client.migrate("train-1", "edge-2")
    assert moving.state is JobState.MIGRATING

    cancelled = await client.cancel("eval-1")
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.message == "cancelled by user"
    assert service.calls == [
        ("submit", "train-1"),
        ("submit", "eval-1"),
        ("list",),
        ("get", "train-1"),
        ("migrate", "train-1", "edge-2"),
        ("cancel", "eval-1"),
    ]


async def test_submit_answers_201_with_location(raw: aiohttp.ClientSession) -> None:
    async with raw.post("/v1/jobs", json=spec_dict("train-1")) as response:
        assert response.status == 201
        assert response.headers["Location"] == "/v1/jobs/train-1"
        assert JobInfo.model_validate(await response.json()).job_id == "train-1"
    async with raw.get("/v1/jobs") as response:
        assert response.status == 200
        body = await response.json()
        assert [job["job_id"] for job in body["jobs"]] == ["train-1"]


async def test_unknown_job_is_404(client: LocalApiClient, raw: aiohttp.ClientSession) -> None:
    for call in (client.get, client.cancel):
        with pytest.raises(JobNotFoundError, match="no job 'ghost' on node edge-1"):
            await call("ghost")
    with pytest.raises(JobNotFoundError):
        await client.migrate("ghost", "edge-2")
    async with raw.get("/v1/jobs/ghost") as response:
        assert response.status == 404
        assert (await _error(response))["code"] == "not_found"


async def test_conflicts_are_409(client: LocalApiClient, raw: aiohttp.ClientSession) -> None:
    spec = validate_job_spec(spec_dict("train-1", migratable=False))
    await client.submit(spec)
    with pytest.raises(JobConflictError, match="already exists"):
        await client.submit(spec)
    with pytest.raises(JobConflictError, match="cannot migrate"):
        await client.migrate("train-1", "edge-2")
    await client.cancel("train-1")
    with pytest.raises(JobConflictError, match="cancelled: nothing to cancel"):
        await client.cancel("train-1")
    async with raw.post("/v1/jobs/train-1/cancel") as response:
        assert response.status == 409
        assert (await _error(response))["code"] == "conflict"


async def test_service_validation_error_is_422_naming_the_field(client: LocalApiClient) -> None:
    await client.submit(validate_job_spec(spec_dict("train-1")))
    with pytest.raises(JobValidationError) as caught:
        await client.migrate("train-1", "edge-9")
    assert caught.value.fields == [("to", "no peer named 'edge-9'")]


async def test_unknown_route_is_404_not_a_missing_job(raw: aiohttp.ClientSession) -> None:
    async with raw.get("/v1/nothing") as response:
        assert response.status == 404
        assert (await _error(response))["code"] == "no_route"


async def test_wrong_method_is_405_with_allow(raw: aiohttp.ClientSession) -> None:
    async with raw.delete("/v1/jobs/train-1") as response:
        assert response.status == 405
        assert "GET" in response.headers["Allow"]
        assert (await _error(response))["code"] == "method_not_allowed"


async def test_service_crash_is_500_without_internals(
    raw: aiohttp.ClientSession, service: MemoryJobService, caplog: pytest.LogCaptureFixture
) -> None:
    service.fail_with = RuntimeError("secret internal detail")
    with caplog.at_level(logging.ERROR, logger="greenferry.adapters.local_api"):
        async with raw.get("/v1/jobs") as response:
            assert response.status == 500
            error = await _error(response)
    assert error["code"] == "internal"
    assert "secret" not in json.dumps(error)
    assert "secret internal detail" in caplog.text  # the trace went to the log


async def test_service_unavailable_is_503(client: LocalApiClient, service: MemoryJobService) -> None:
    service.fail_with = ServiceUnavailableError("the job store is not open yet")
    with pytest.raises(LocalApiError) as caught:
        await client.list_jobs()
    assert caught.value.status == 503
    assert caught.value.code == "unavailable"
    assert "not open yet" in caught.value.message


# --- hostile input


async def test_body_over_the_limit_is_413_by_content_length(
    raw: aiohttp.ClientSession, service: MemoryJobService
) -> None:
    body = io.BytesIO(json.dumps(spec_dict(env={"BIG": "x" * (2 * 1024 * 1024)})).encode())
    async with raw.post("/v1/jobs", data=body, headers=JSON_HEADERS) as response:
        assert response.status == 413
        error = await _error(response)
    assert error["code"] == "too_large"
    assert "1048576-byte limit" in error["message"]
    assert service.calls == []


async def test_streamed_body_over_the_limit_is_413(
    raw: aiohttp.ClientSession, service: MemoryJobService
) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # chunked: no Content-Length to refuse up front
        yield b'{"name": "x", "pad": "'
        for _ in range(1100):
            yield b"x" * 1024
        yield b'"}'

    async with raw.post("/v1/jobs", data=chunks(), headers=JSON_HEADERS) as response:
        assert response.status == 413
        assert (await _error(response))["code"] == "too_large"
    assert service.calls == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_body_that_is_not_json_is_415(
    raw: aiohttp.ClientSession, service: MemoryJobService, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    data = json.dumps(spec_dict()).encode()
    async with raw.post(
        "/v1/jobs", data=data, headers=headers, skip_auto_headers=["Content-Type"]
    ) as response:
        assert response.status == 415
        assert (await _error(response))["code"] == "not_json"
    assert service.calls == []


async def test_json_with_charset_is_accepted(raw: aiohttp.ClientSession) -> None:
    headers = {"Content-Type": "application/json; charset=utf-8"}
    async with raw.post("/v1/jobs", data=json.dumps(spec_dict()).encode(), headers=headers) as response:
        assert response.status == 201


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"name": "a",\n  "command": }', "at line 2, column 14"),
        (b"", "at line 1, column 1"),
        (b'{"name": "a"', "line 1"),
        (b'{"name": "a\x00b"}', "Invalid control character at line 1, column 12"),
        (b'{"power_w": NaN}', "NaN is not JSON"),
        (b'{"power_w": Infinity}', "Infinity is not JSON"),
        (b'{"name": "a", "name": "b"}', "duplicate key 'name'"),
        (b'{"name": "\xff"}', "not UTF-8 (byte 10)"),
        (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        (
            b'{"env": ' + b'{"a": ' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 2),
            "nested too deeply",
        ),
    ],
)
async def test_malformed_json_is_400_saying_where(
    raw: aiohttp.ClientSession, service: MemoryJobService, body: bytes, where: str
) -> None:
    async with raw.post("/v1/jobs", data=body, headers=JSON_HEADERS) as response:
        assert response.status == 400
        error = await _error(response)
    assert error["code"] == "bad_json"
    assert where in error["message"]
    assert service.calls == []


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (spec_dict(gpu_count="2"), ["gpu_count"]),
        (spec_dict(gpu_count=True), ["gpu_count"]),
        (spec_dict(command="python3 train.py"), ["command"]),
        (spec_dict(command=["python3", 7]), ["command[1]"]),
        (spec_dict(command=[]), ["command"]),
        (spec_dict(checkpoint_size_bytes=-1), ["checkpoint_size_bytes"]),
        (spec_dict(power_w=0), ["power_w"]),
        (spec_dict(surprise=1), ["surprise"]),
        (spec_dict(name="../../etc/passwd"), ["name"]),
        (spec_dict(name="a/b"), ["name"]),
        (spec_dict(name="Train"), ["name"]),
        (spec_dict(name="x" * 64), ["name"]),
        (spec_dict(command=["python3\x00", "train.py"]), ["command"]),
        (spec_dict(env={"A": "1\x00"}), ["env"]),
        (spec_dict(env={"GREENFERRY_JOB_ID": "x"}), ["env"]),
        (spec_dict(env={"A": 1}), ["env.A"]),
        (spec_dict(working_dir="relative/dir"), ["working_dir"]),
        ({"command": ["x"]}, ["name", "checkpoint_size_bytes"]),
        (
            spec_dict(name="BAD", gpu_count=-1, migratable="yes", extra_a=1, extra_b=2),
            ["name", "gpu_count", "migratable", "extra_a", "extra_b"],
        ),
        ([spec_dict()], ["(body)"]),
        ("train-1", ["(body)"]),
    ],
)
async def test_invalid_spec_is_422_naming_each_field(
    raw: aiohttp.ClientSession, service: MemoryJobService, body: Any, fields: list[str]
) -> None:
    data = json.dumps(body).encode()
    async with raw.post("/v1/jobs", data=data, headers=JSON_HEADERS) as response:
        assert response.status == 422
        error = await _error(response)
    assert error["code"] == "invalid"
    assert [item["field"] for item in error["fields"]] == fields
    assert all(item["message"] for item in error["fields"])
    assert service.calls == []


async def test_422_never_echoes_the_input(raw: aiohttp.ClientSession) -> None:
    secret = "hunter2-" + "y" * 5000
    body = spec_dict(gpu_count=secret, env={"TOKEN": secret + "\x00"})
    async with raw.post("/v1/jobs", json=body) as response:
        assert response.status == 422
        text = await response.text()
    assert "hunter2" not in text


async def test_422_bodies_bound_the_number_of_fields(raw: aiohttp.ClientSession) -> None:
    body = spec_dict(**{f"unknown_{i}": i for i in range(500)})
    async with raw.post("/v1/jobs", json=body) as response:
        assert response.status == 422
        error = await _error(response)
    assert len(error["fields"]) == 50
    assert "and 450 more" in error["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/..%2F..%2Fetc%2Fpasswd",
        "/v1/jobs/a%00b",
        "/v1/jobs/Train-1",
        "/v1/jobs/" + "a" * 64,
        "/v1/jobs/a%20b",
    ],
)
async def test_bad_job_id_in_the_path_is_400_and_never_reaches_the_service(
    raw: aiohttp.ClientSession, service: MemoryJobService, path: str
) -> None:
    for method, suffix in (("GET", ""), ("POST", "/cancel")):
        async with raw.request(method, path + suffix) as response:
            assert response.status == 400
            assert (await _error(response))["code"] == "bad_job_id"
    assert service.calls == []


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/jobs/a/b/c",
        b"/v1/jobs/../../etc/passwd",
        b"/v1/jobs/%2E%2E/%2E%2E/etc/passwd",
        b"/v1/jobs/..%2F..%2Fetc",
        b"/v1/jobs/train-1/../../../etc",
        b"/v1/jobs/%2e%2e",
    ],
)
async def test_path_traversal_never_reaches_the_service(
    server: LocalApiServer, service: MemoryJobService, target: bytes
) -> None:
    await service.submit(validate_job_spec(spec_dict("train-1")))
    service.calls.clear()
    reader, writer = await asyncio.open_unix_connection(str(server.socket_path))
    writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    status = int(answer.split(b" ", 2)[1])
    assert status in {400, 404}, answer
    assert service.calls == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "to"),
        ({"to": 3}, "to"),
        ({"to": "../edge-2"}, "to"),
        ({"to": ""}, "to"),
        ({"to": "edge-2", "force": True}, "force"),
        (["edge-2"], "(body)"),
    ],
)
async def test_bad_migrate_body_is_422(
    raw: aiohttp.ClientSession, service: MemoryJobService, body: Any, field: str
) -> None:
    await service.submit(validate_job_spec(spec_dict("train-1")))
    service.calls.clear()
    async with raw.post("/v1/jobs/train-1/migrate", json=body) as response:
        assert response.status == 422
        error = await _error(response)
    assert [item["field"] for item in error["fields"]] == [field]
    assert service.calls == []


async def test_migrate_without_json_body_is_415(raw: aiohttp.ClientSession) -> None:
    async with raw.post("/v1/jobs/train-1/migrate", data=b"to=edge-2") as response:
        assert response.status == 415


async def test_client_refuses_bad_ids_without_sending(
    client: LocalApiClient, service: MemoryJobService
) -> None:
    for job_id in ("../x", "a/cancel", "", "A", "a?b=1"):
        with pytest.raises(JobValidationError, match="job_id"):
            await client.get(job_id)
        with pytest.raises(JobValidationError, match="job_id"):
            await client.cancel(job_id)
    assert service.calls == []


# --- token authentication on TCP


async def test_tcp_needs_the_bearer_token(server: LocalApiServer, service: MemoryJobService) -> None:
    url = f"{server.tcp_url}/v1/jobs"
    wrong = "x" * len(server.token)
    async with aiohttp.ClientSession() as session:
        for headers in (
            {},
            {"Authorization": ""},
            {"Authorization": "Bearer"},
            {"Authorization": f"Bearer {wrong}"},
            {"Authorization": f"Bearer {server.token[:-1]}"},
            {"Authorization": f"Basic {server.token}"},
            {"Authorization": f"Bearer {server.token}x"},
            {"X-Token": server.token},
        ):
            async with session.get(url, headers=headers) as response:
                assert response.status == 401, headers
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert (await _error(response))["code"] == "unauthorized"
            async with session.post(url, json=spec_dict(), headers=headers) as response:
                assert response.status == 401
        assert service.calls == []  # nothing got through
        async with session.get(url, headers={"Authorization": f"Bearer {server.token}"}) as response:
            assert response.status == 200
    assert service.calls == [("list",)]


async def test_tcp_auth_comes_before_the_body_limit(server: LocalApiServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
    writer.write(
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2000000\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    assert status_line.startswith(b"HTTP/1.1 401")


async def test_client_over_tcp_with_token(server: LocalApiServer) -> None:
    token = read_token(server.data_dir)
    async with LocalApiClient(url=server.tcp_url, token=token) as client:
        info = await client.submit(validate_job_spec(spec_dict("tcp-job")))
        assert info.job_id == "tcp-job"
        assert [job.job_id for job in await client.list_jobs()] == ["tcp-job"]
    async with LocalApiClient(url=server.tcp_url, token="wrong") as client:
        with pytest.raises(LocalApiError) as caught:
            await client.list_jobs()
    assert caught.value.status == 401
    assert caught.value.code == "unauthorized"


def test_client_refuses_bad_addresses(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        LocalApiClient()
    with pytest.raises(ValueError, match="exactly one"):
        LocalApiClient(data_dir=tmp_path, url="http://127.0.0.1:1")
    with pytest.raises(ValueError, match="needs the token"):
        LocalApiClient(url="http://127.0.0.1:1")
    with pytest.raises(ValueError, match="not on loopback"):
        LocalApiClient(url="http://10.0.0.1:9471", token="t")
    with pytest.raises(ValueError, match="not http"):
        LocalApiClient(url="ftp://127.0.0.1/", token="t")


# --- the daemon is not there


async def test_client_without_daemon(tmp_path: Path) -> None:
    async with LocalApiClient(data_dir=tmp_path) as client:
        with pytest.raises(DaemonNotRunningError, match=f"no daemon listening on {tmp_path}/api.sock"):
            await client.list_jobs()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "api.sock"))
    stale.close()
    async with LocalApiClient(socket_path=tmp_path / "api.sock") as client:
        with pytest.raises(DaemonNotRunningError) as caught:
            await client.get("train-1")
    assert caught.value.address == str(tmp_path / "api.sock")
    assert isinstance(caught.value, ServiceUnavailableError)
    with pytest.raises(DaemonNotRunningError, match="no token file"):
        read_token(tmp_path)


async def test_client_rejects_an_answer_that_is_not_a_job(tmp_path: Path) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"job_id": "x"}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        writer.write(body)
        await writer.drain()
        writer.close()

    fake = await asyncio.start_unix_server(handle, path=str(tmp_path / "api.sock"))
    async with fake, LocalApiClient(data_dir=tmp_path) as client:
        with pytest.raises(LocalApiError, match="not a job"):
            await client.get("x")


def test_validate_job_spec_is_strict() -> None:
    assert validate_job_spec(spec_dict(power_w=100)).power_w == 100.0  # an int is a fine float
    with pytest.raises(JobValidationError) as caught:
        validate_job_spec(spec_dict(checkpoint_size_bytes="1024"), source="job.toml")
    assert str(caught.value).startswith("job.toml: 1 problem(s)\n  checkpoint_size_bytes: ")


async def test_tcp_port_in_use_leaves_nothing_behind(service: MemoryJobService, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServiceUnavailableError, match=f"cannot listen on 127.0.0.1:{port}"):
            async with LocalApiServer(service, tmp_path, tcp_port=port):
                pass
    assert list(tmp_path.iterdir()) == []  # neither the socket nor the token stays


def test_docs_describe_every_spec_field_and_error_code() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "jobs-api.md").read_text()
    for name in JobSpec.model_fields:
        assert f"| `{name}` |" in doc, name
    for code in ("bad_json", "bad_job_id", "unauthorized", "not_found", "no_route", "conflict", "too_large"):
        assert f"`{code}`" in doc, code
