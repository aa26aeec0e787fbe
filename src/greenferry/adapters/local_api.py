"""The local job API (aiohttp): how ``greenferry jobs ...`` talks to the daemon on the same machine.

Routes (docs/jobs-api.md)::

    POST /v1/jobs                  JobSpec -> 201 JobInfo (Location: /v1/jobs/{id})
    GET  /v1/jobs                  -> {"jobs": [JobInfo, ...]}
    GET  /v1/jobs/{id}             -> JobInfo
    POST /v1/jobs/{id}/cancel      -> JobInfo
    POST /v1/jobs/{id}/migrate     {"to": NODE} -> JobInfo

Where it listens: always on the Unix socket ``<data_dir>/api.sock`` (mode 0600: only the daemon's user, and
root, may connect; no token), and optionally on loopback TCP, where every request must carry
``Authorization: Bearer <token>`` with the random token the server writes to ``<data_dir>/api.token``
(mode 0600) at start.

Every error is ``{"error": {"code": ..., "message": ...}}`` (422 adds ``"fields"``, one entry per invalid
field): 400 malformed JSON (with where it failed) or a bad job id, 401 no or wrong token, 404 no such job,
405 wrong method, 409 a conflict with the job's state, 413 body over the limit, 415 not JSON, 422 a spec that
does not validate, 500 without any trace (the trace goes to the log), 503 the daemon cannot serve it now.

:class:`LocalApiClient` makes the same five calls and turns those bodies back into the exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Protocol, Self
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from greenferry.core.jobs import JOB_ID_RE, JobInfo, JobSpec
from greenferry.errors import GreenferryError, ServiceUnavailableError

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "SOCKET_NAME",
    "TOKEN_NAME",
    "DaemonNotRunningError",
    "JobConflictError",
    "JobNotFoundError",
    "JobService",
    "JobValidationError",
    "LocalApiClient",
    "LocalApiError",
    "LocalApiServer",
    "MigrateRequest",
    "parse_json",
    "read_token",
    "validate_job_spec",
]

logger = logging.getLogger(__name__)

SOCKET_NAME = "api.sock"
TOKEN_NAME = "api.token"
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 32  # a JobSpec is 3 levels deep; anything far deeper is not a spec
MAX_FIELD_ERRORS = 50  # a 422 names at most this many fields (and says how many more)
MAX_MESSAGE_CHARS = 500
# sockaddr_un.sun_path is 108 bytes on Linux, NUL included.
MAX_SOCKET_PATH_BYTES = 107
# The same rule as node names in config.py: node names appear in topics and file names.
NODE_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_JOB_ID = re.compile(JOB_ID_RE)
_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "not_json",
    422: "invalid",
    500: "internal",
    503: "unavailable",
}


class JobNotFoundError(GreenferryError, LookupError):
    """No job with that id on this node (HTTP 404)."""


class JobConflictError(GreenferryError):
    """The job exists already, or its state does not allow the request (HTTP 409)."""


class JobValidationError(GreenferryError, ValueError):
    """A job spec or request body that does not validate (HTTP 422); names every invalid field.

    Args:
        fields: ``(field, problem)`` pairs, the field as a path like ``command[0]`` or ``env``.
        source: what was validated (a file name, "the job spec"), for the message.
        more: how many further problems were left out of ``fields``.
    """

    def __init__(
        self, fields: Sequence[tuple[str, str]], source: str = "the job spec", more: int = 0
    ) -> None:
        self.fields = list(fields)
        self.source = source
        self.more = more
        count = len(self.fields) + more
        lines = [f"{source}: {count} problem(s)"]
        lines += [f"  {field}: {problem}" for field, problem in self.fields]
        if more:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))

    def with_source(self, source: str) -> JobValidationError:
        """The same problems, attributed to ``source`` (e.g. the spec file's name)."""
        return JobValidationError(self.fields, source, self.more)


class LocalApiError(GreenferryError):
    """The local API refused or failed a request in a way none of the job errors describe.

    Args:
        status: the HTTP status (0 when no answer came).
        code: the stable error code of the body (e.g. ``unauthorized``, ``internal``).
        message: what the server (or the client) said.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} (HTTP {status} {code})" if status else message)
        self.status = status
        self.code = code
        self.message = message


class DaemonNotRunningError(LocalApiError, ServiceUnavailableError):
    """Nothing listens on the local API's address (no socket, a stale socket, a refused connection).

    Args:
        address: the socket path or URL that was tried.
        detail: the operating system's reason.
    """

    def __init__(self, address: str, detail: str) -> None:
        super().__init__(0, "not_running", f"no daemon listening on {address}: {detail}")
        self.address = address
        self.detail = detail


class JobService(Protocol):
    """What the local API serves; the daemon's orchestrator implements it.

    Each call raises :class:`JobNotFoundError` for an unknown id, :class:`JobConflictError` when the job's
    state (or the cluster) does not allow it, and may raise :class:`JobValidationError` for an argument
    it cannot accept (e.g. an unknown destination node, as field ``to``).
    """

    async def submit(self, spec: JobSpec) -> JobInfo:
        """Accept a new job (already validated) and return it as it now is."""
        ...

    async def list_jobs(self) -> list[JobInfo]:
        """Every job this node knows, in a stable order."""
        ...

    async def get(self, job_id: str) -> JobInfo:
        """One job."""
        ...

    async def cancel(self, job_id: str) -> JobInfo:
        """Stop a job for good (or ask it to stop); returns it as it now is."""
        ...

    async def migrate(self, job_id: str, to_node: str) -> JobInfo:
        """Start moving a job to ``to_node``; returns it as it now is."""
        ...


class MigrateRequest(BaseModel):
    """The body of ``POST /v1/jobs/{id}/migrate``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    to: str = Field(pattern=NODE_NAME_RE, description="The destination node's name.")


# --- validation shared by the server and the CLI


def _clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field_path(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{_clip(part, 80)}" if path else _clip(part, 80)
    return path or "(body)"


def _problems(err: ValidationError) -> tuple[list[tuple[str, str]], int]:
    """``(field, problem)`` per pydantic error (never echoing the input), and how many were left out."""
    fields = []
    for item in err.errors(include_url=False, include_input=False, include_context=False):
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] == "missing":
            message = "required field is missing"
        elif item["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        fields.append((_field_path(item["loc"]), _clip(message)))
    return fields[:MAX_FIELD_ERRORS], max(0, len(fields) - MAX_FIELD_ERRORS)


def validate_job_spec(data: object, source: str = "the job spec") -> JobSpec:
    """A :class:`JobSpec` from parsed JSON/TOML, strictly typed (``"2"`` is not an integer).

    Args:
        data: the parsed document (must be a mapping).
        source: what it came from, for the error message.

    Raises:
        JobValidationError: not a mapping, or fields that do not validate; names each field.
    """
    if not isinstance(data, Mapping):
        raise JobValidationError([("(body)", f"must be an object, got {type(data).__name__}")], source)
    try:
        return JobSpec.model_validate(dict(data), strict=True)
    except ValidationError as err:
        fields, more = _problems(err)
        raise JobValidationError(fields, source, more) from None


class _JsonSyntaxError(ValueError):
    """Raised inside the decoder's hooks; becomes a 400."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _JsonSyntaxError(f"duplicate key {_clip(key, 80)!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> NoReturn:
    raise _JsonSyntaxError(f"{name} is not JSON")


def _depth_exceeds(data: object, limit: int) -> bool:
    stack: list[tuple[object, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > limit:
                return True
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
    return False


def parse_json(raw: bytes, source: str = "the body") -> object:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity, at most :data:`MAX_JSON_DEPTH` deep.

    Raises:
        ValueError: the bytes are not such JSON; the message says where it failed (line, column).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{source} is not UTF-8 (byte {err.start})") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{source} is not valid JSON: {err.msg.removesuffix(' at')} at line {err.lineno}, "
            f"column {err.colno} (char {err.pos})"
        ) from None
    except _JsonSyntaxError as err:
        raise ValueError(f"{source} is not valid JSON: {err}") from None
    except RecursionError:
        raise ValueError(f"{source} is nested too deeply (limit {MAX_JSON_DEPTH} levels)") from None
    if _depth_exceeds(data, MAX_JSON_DEPTH):
        raise ValueError(f"{source} is nested too deeply (limit {MAX_JSON_DEPTH} levels)")
    return data


def _check_job_id(job_id: str) -> None:
    if not _JOB_ID.match(job_id):
        raise JobValidationError(
            [("job_id", f"{_clip(job_id, 80)!r} is not a job id (lowercase letters, digits, '-'; 1-63)")],
            "the request",
        )


# --- the server


class _ApiError(Exception):
    """A refusal with a status and a stable code, turned into the JSON error body by the middleware."""

    def __init__(self, status: int, code: str, message: str, fields: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields


def _error_response(
    status: int, code: str, message: str, fields: list[tuple[str, str]] | None = None
) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields is not None:
        error["fields"] = [{"field": name, "message": problem} for name, problem in fields]
    return web.json_response({"error": error}, status=status)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LocalApiServer:
    """The local job API as an async context manager: listening on enter, stopped and cleaned up on exit.

    Args:
        service: the daemon's job service.
        data_dir: the node's data directory (created 0700 if missing); holds ``api.sock`` and ``api.token``.
        socket_path: the Unix socket (default ``<data_dir>/api.sock``).
        tcp_host: a loopback address for the token-protected TCP listener.
        tcp_port: its port (0: any free one, see :attr:`tcp_port`); None: no TCP listener.
        max_body_bytes: the largest request body accepted (413 beyond).
        shutdown_timeout_s: how long open requests may finish on exit (s).

    Raises:
        ValueError: ``tcp_host`` is not a loopback address.
    """

    def __init__(
        self,
        service: JobService,
        data_dir: Path,
        *,
        socket_path: Path | None = None,
        tcp_host: str = "127.0.0.1",
        tcp_port: int | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        shutdown_timeout_s: float = 2.0,
    ) -> None:
        if tcp_port is not None and not _is_loopback(tcp_host):
            raise ValueError(
                f"local API: TCP host {tcp_host!r} is not a loopback address (127.0.0.1, ::1): the job API "
                "must not be reachable from the network"
            )
        self._service = service
        self.data_dir = Path(data_dir)
        self.socket_path = Path(socket_path) if socket_path is not None else self.data_dir / SOCKET_NAME
        self.token_path = self.data_dir / TOKEN_NAME
        self._tcp_host = tcp_host
        self._requested_tcp_port = tcp_port
        self._max_body_bytes = max_body_bytes
        self._shutdown_timeout_s = shutdown_timeout_s
        self._runner: web.AppRunner | None = None
        self._token: bytes | None = None
        self._tcp_port: int | None = None
        self._socket_id: tuple[int, int] | None = None
        self._token_id: tuple[int, int] | None = None

    @property
    def tcp_port(self) -> int:
        """The bound TCP port.

        Raises:
            RuntimeError: no TCP listener is running.
        """
        if self._tcp_port is None:
            raise RuntimeError("the local API has no TCP listener")
        return self._tcp_port

    @property
    def tcp_url(self) -> str:
        """The TCP base URL, e.g. ``http://127.0.0.1:9471``."""
        host = f"[{self._tcp_host}]" if ":" in self._tcp_host else self._tcp_host
        return f"http://{host}:{self.tcp_port}"

    @property
    def token(self) -> str:
        """The bearer token TCP clients must send.

        Raises:
            RuntimeError: no TCP listener is running.
        """
        if self._token is None:
            raise RuntimeError("the local API has no TCP listener")
        return self._token.decode()

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=self._max_body_bytes, middlewares=[self._middleware])
        app.router.add_post("/v1/jobs", self._submit)
        app.router.add_get("/v1/jobs", self._list)
        app.router.add_get("/v1/jobs/{job_id}", self._get)
        app.router.add_post("/v1/jobs/{job_id}/cancel", self._cancel)
        app.router.add_post("/v1/jobs/{job_id}/migrate", self._migrate)
        return app

    async def __aenter__(self) -> Self:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        sock = await asyncio.to_thread(self._bind_unix)
        runner = web.AppRunner(
            self._app(), access_log=None, handle_signals=False, shutdown_timeout=self._shutdown_timeout_s
        )
        try:
            await runner.setup()
            self._runner = runner
            await web.SockSite(runner, sock).start()
            if self._requested_tcp_port is not None:
                self._token = secrets.token_urlsafe(32).encode()
                await asyncio.to_thread(self._write_token, self._token)
                site = web.TCPSite(runner, self._tcp_host, self._requested_tcp_port)
                try:
                    await site.start()
                except OSError as err:
                    raise ServiceUnavailableError(
                        f"local API: cannot listen on {self._tcp_host}:{self._requested_tcp_port}: "
                        f"{err.strerror or err}"
                    ) from err
                self._tcp_port = next(int(a[1]) for a in runner.addresses if isinstance(a, tuple))
        except BaseException:
            await self._cleanup()  # first: a started site still selects on the socket
            sock.close()
            raise
        logger.info(
            "local API listening on %s%s",
            self.socket_path,
            f" and {self.tcp_url} (token in {self.token_path})" if self._tcp_port is not None else "",
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._cleanup()
        logger.info("local API on %s stopped", self.socket_path)

    async def run(self) -> None:
        """Serve until cancelled (aiohttp serves from its own tasks; this only keeps the slot)."""
        await asyncio.Event().wait()

    async def _cleanup(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        # Remove only what is still ours: a file someone put there since is left alone.
        for path, ident in ((self.socket_path, self._socket_id), (self.token_path, self._token_id)):
            if ident is not None and _file_id(path) == ident:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        self._socket_id = self._token_id = None
        self._token = None
        self._tcp_port = None

    def _bind_unix(self) -> socket.socket:
        """A bound, 0600, not yet listening Unix socket at :attr:`socket_path` (a stale one replaced).

        Raises:
            ServiceUnavailableError: the path is too long, another daemon listens there, or something
                that is not a socket is in the way.
        """
        path = self.socket_path
        if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
            raise ServiceUnavailableError(
                f"local API: socket path {path} is {len(os.fsencode(path))} bytes, over the "
                f"{MAX_SOCKET_PATH_BYTES}-byte limit of Unix sockets: use a shorter node.data_dir"
            )
        self._remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(os.fspath(path))
            # Nobody can connect before listen(), so tightening the mode now leaves no open window.
            os.chmod(path, 0o600, follow_symlinks=False)
            sock.setblocking(False)
        except OSError as err:
            sock.close()
            raise ServiceUnavailableError(
                f"local API: cannot bind {path}: {err.strerror or err}"
                + (" (another process created it meanwhile)" if err.errno == errno.EADDRINUSE else "")
            ) from err
        self._socket_id = _file_id(path)
        return sock

    @staticmethod
    def _remove_stale_socket(path: Path) -> None:
        try:
            info = path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise ServiceUnavailableError(
                f"local API: {path} exists and is not a socket; it was left alone: remove it or choose "
                "another node.data_dir"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            logger.info("local API: removing the stale socket %s (nothing listens on it)", path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        except OSError as err:
            raise ServiceUnavailableError(f"local API: cannot probe {path}: {err.strerror or err}") from err
        finally:
            probe.close()
        raise ServiceUnavailableError(f"local API: another daemon is listening on {path}")

    def _write_token(self, token: bytes) -> None:
        temp = self.token_path.with_name(f".{TOKEN_NAME}.{secrets.token_hex(8)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, token + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.replace(temp, self.token_path)
        except OSError:
            temp.unlink()
            raise
        self._token_id = _file_id(self.token_path)

    # --- requests

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            self._authorize(request)
            length = request.content_length
            if length is not None and length > self._max_body_bytes:
                raise _ApiError(
                    413,
                    "too_large",
                    f"request body of {length} bytes is over the {self._max_body_bytes}-byte limit",
                )
            return await handler(request)
        except _ApiError as err:
            response = _error_response(err.status, err.code, err.message, err.fields)
            if err.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="greenferry"'
            return response
        except JobNotFoundError as err:
            return _error_response(404, "not_found", _clip(str(err), 4096))
        except JobConflictError as err:
            return _error_response(409, "conflict", _clip(str(err), 4096))
        except JobValidationError as err:
            return _error_response(422, "invalid", _clip(str(err), 4096), err.fields)
        except ServiceUnavailableError as err:
            return _error_response(503, "unavailable", _clip(str(err), 4096))
        except web.HTTPException as exc:
            # A 404 here is an unknown route, not an unknown job: the client must not confuse the two.
            code = "no_route" if exc.status == 404 else _REASONS.get(exc.status, "http_error")
            response = _error_response(exc.status, code, exc.reason)
            allow = exc.headers.get("Allow")
            if allow is not None:
                response.headers["Allow"] = allow
            return response
        except Exception:  # the top of a request: log it, tell the client nothing internal
            logger.exception("local API %s %s failed", request.method, request.path)
            return _error_response(500, "internal", "internal error (see the daemon's log)")

    def _authorize(self, request: web.Request) -> None:
        """Unix-socket callers passed the socket's 0600 mode; anyone else must show the token."""
        sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        if sock is not None and sock.family == socket.AF_UNIX:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        if self._token is None or scheme.lower() != "bearer" or not credentials:
            raise _ApiError(401, "unauthorized", f"missing bearer token (it is in {self.token_path})")
        if not hmac.compare_digest(credentials.strip().encode("utf-8", "surrogateescape"), self._token):
            raise _ApiError(401, "unauthorized", "wrong bearer token")

    async def _body(self, request: web.Request) -> object:
        if request.content_type != "application/json":
            given = request.headers.get("Content-Type", "none")
            raise _ApiError(415, "not_json", f"the body must be application/json, not {_clip(given, 100)}")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _ApiError(
                413, "too_large", f"request body is over the {self._max_body_bytes}-byte limit"
            ) from None
        try:
            return parse_json(raw)
        except ValueError as err:
            raise _ApiError(400, "bad_json", str(err)) from None

    @staticmethod
    def _job_id(request: web.Request) -> str:
        job_id = request.match_info["job_id"]
        if not _JOB_ID.match(job_id):
            raise _ApiError(
                400,
                "bad_job_id",
                f"{_clip(job_id, 80)!r} is not a job id (pattern {JOB_ID_RE})",
            )
        return job_id

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        spec = validate_job_spec(await self._body(request))
        info = await self._service.submit(spec)
        response = _info_response(info, status=201)
        response.headers["Location"] = f"/v1/jobs/{info.job_id}"
        return response

    async def _list(self, request: web.Request) -> web.StreamResponse:
        jobs = await self._service.list_jobs()
        return web.json_response({"jobs": [info.model_dump(mode="json") for info in jobs]})

    async def _get(self, request: web.Request) -> web.StreamResponse:
        return _info_response(await self._service.get(self._job_id(request)))

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        return _info_response(await self._service.cancel(self._job_id(request)))

    async def _migrate(self, request: web.Request) -> web.StreamResponse:
        job_id = self._job_id(request)
        data = await self._body(request)
        if not isinstance(data, dict):
            raise JobValidationError(
                [("(body)", f"must be an object, got {type(data).__name__}")], "the request"
            )
        try:
            body = MigrateRequest.model_validate(data, strict=True)
        except ValidationError as err:
            fields, more = _problems(err)
            raise JobValidationError(fields, "the request", more) from None
        return _info_response(await self._service.migrate(job_id, body.to))


def _info_response(info: JobInfo, status: int = 200) -> web.Response:
    return web.json_response(info.model_dump(mode="json"), status=status)


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    return (info.st_dev, info.st_ino)


# --- the client


def read_token(data_dir: Path) -> str:
    """The TCP bearer token the running daemon wrote to ``<data_dir>/api.token``.

    Raises:
        DaemonNotRunningError: there is no token file (the daemon is not running, or not on TCP).
        LocalApiError: the file cannot be read.
    """
    path = Path(data_dir) / TOKEN_NAME
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise DaemonNotRunningError(str(path), "no token file (is the daemon's TCP listener on?)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise LocalApiError(0, "no_token", f"cannot read the API token {path}: {err}") from err
    if not token:
        raise LocalApiError(0, "no_token", f"the API token file {path} is empty")
    return token


class LocalApiClient:
    """Calls the local job API: over the Unix socket, or over loopback TCP with the bearer token.

    Give exactly one of ``data_dir`` (its ``api.sock``), ``socket_path``, or ``url`` (with ``token``).

    Args:
        data_dir: the node's data directory.
        socket_path: the daemon's Unix socket.
        url: the TCP base URL, e.g. ``http://127.0.0.1:9471`` (loopback only: the token travels in clear).
        token: the bearer token for ``url`` (see :func:`read_token`).
        timeout_s: bound on each call (s).

    Raises:
        ValueError: not exactly one address, a URL without a token, or a URL that is not loopback HTTP.
    """

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        socket_path: Path | None = None,
        url: str | None = None,
        token: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        choices = (("data_dir", data_dir), ("socket_path", socket_path), ("url", url))
        given = [name for name, value in choices if value is not None]
        if len(given) != 1:
            raise ValueError(f"LocalApiClient needs exactly one of data_dir, socket_path, url (got {given})")
        self._socket_path: Path | None = None
        self._base = "http://localhost"
        self._headers: dict[str, str] = {}
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in {"http", "https"} or parts.hostname is None:
                raise ValueError(f"local API URL {url!r} is not http(s)://HOST:PORT")
            if not _is_loopback(parts.hostname):
                raise ValueError(
                    f"local API URL {url!r} is not on loopback: the token would cross the network"
                )
            if not token:
                raise ValueError("a local API URL needs the token (greenferry.adapters.local_api.read_token)")
            self._base = url.rstrip("/")
            self._headers["Authorization"] = f"Bearer {token}"
            self.address = self._base
        else:
            self._socket_path = (
                Path(socket_path) if socket_path is not None else Path(str(data_dir)) / SOCKET_NAME
            )
            self.address = str(self._socket_path)
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        connector: aiohttp.BaseConnector = (
            aiohttp.UnixConnector(path=os.fspath(self._socket_path))
            if self._socket_path is not None
            else aiohttp.TCPConnector()
        )
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self._headers, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def submit(self, spec: JobSpec) -> JobInfo:
        """POST /v1/jobs.

        Raises:
            JobConflictError: a job with that name exists.
            JobValidationError: the daemon refused the spec (names each field).
            DaemonNotRunningError: nothing listens.
            LocalApiError: any other refusal or failure.
        """
        return _job_info(await self._call("POST", "/v1/jobs", spec.model_dump(mode="json")))

    async def list_jobs(self) -> list[JobInfo]:
        """GET /v1/jobs.

        Raises:
            DaemonNotRunningError: nothing listens.
            LocalApiError: any refusal or failure, or an answer that is not a job list.
        """
        body = await self._call("GET", "/v1/jobs")
        jobs = body.get("jobs") if isinstance(body, dict) else None
        if not isinstance(jobs, list):
            raise LocalApiError(200, "bad_response", "the daemon's job list has no 'jobs' array")
        return [_job_info(item) for item in jobs]

    async def get(self, job_id: str) -> JobInfo:
        """GET /v1/jobs/{id}.

        Raises:
            JobValidationError: ``job_id`` is not a job id (nothing is sent).
            JobNotFoundError: no such job.
            DaemonNotRunningError: nothing listens.
            LocalApiError: any other refusal or failure.
        """
        _check_job_id(job_id)
        return _job_info(await self._call("GET", f"/v1/jobs/{quote(job_id)}"))

    async def cancel(self, job_id: str) -> JobInfo:
        """POST /v1/jobs/{id}/cancel.

        Raises:
            JobValidationError: ``job_id`` is not a job id (nothing is sent).
            JobNotFoundError: no such job.
            JobConflictError: the job's state does not allow it (e.g. already finished).
            DaemonNotRunningError: nothing listens.
            LocalApiError: any other refusal or failure.
        """
        _check_job_id(job_id)
        return _job_info(await self._call("POST", f"/v1/jobs/{quote(job_id)}/cancel"))

    async def migrate(self, job_id: str, to_node: str) -> JobInfo:
        """POST /v1/jobs/{id}/migrate with ``{"to": to_node}``.

        Raises:
            JobValidationError: a bad job id (nothing is sent), or a node the daemon refuses as ``to``.
            JobNotFoundError: no such job.
            JobConflictError: the job or the cluster does not allow it now.
            DaemonNotRunningError: nothing listens.
            LocalApiError: any other refusal or failure.
        """
        _check_job_id(job_id)
        body = await self._call("POST", f"/v1/jobs/{quote(job_id)}/migrate", {"to": to_node})
        return _job_info(body)

    async def _call(self, method: str, path: str, body: object | None = None) -> Any:
        if self._session is None:
            raise RuntimeError("LocalApiClient used outside its async with")
        data = None if body is None else json.dumps(body, allow_nan=False).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            async with self._session.request(
                method, self._base + path, data=data, headers=headers
            ) as response:
                status = response.status
                raw = await response.read()
        except aiohttp.ClientConnectorError as err:
            cause = err.os_error
            if isinstance(cause, FileNotFoundError | ConnectionRefusedError):
                raise DaemonNotRunningError(self.address, cause.strerror or str(cause)) from err
            hint = ": run this as the daemon's user" if isinstance(cause, PermissionError) else ""
            raise LocalApiError(0, "unreachable", f"cannot connect to {self.address}: {cause}{hint}") from err
        except TimeoutError as err:
            raise LocalApiError(0, "timeout", f"{self.address}: no answer within {self.timeout_s} s") from err
        except aiohttp.ClientError as err:
            raise LocalApiError(0, "connection", f"{self.address}: {type(err).__name__}: {err}") from err
        try:
            parsed: object = json.loads(raw) if raw else None
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            parsed = None
        if status >= 400:
            _raise_error(status, parsed, raw)
        if parsed is None:
            raise LocalApiError(status, "bad_response", f"{self.address}: the answer is not JSON")
        return parsed


def _job_info(data: object) -> JobInfo:
    try:
        return JobInfo.model_validate(data)
    except ValidationError as err:
        fields, _ = _problems(err)
        where = "; ".join(f"{field}: {problem}" for field, problem in fields[:3])
        raise LocalApiError(200, "bad_response", f"the daemon's answer is not a job: {where}") from None


def _raise_error(status: int, parsed: object, raw: bytes) -> NoReturn:
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        raise LocalApiError(
            status, _REASONS.get(status, "http_error"), _clip(raw.decode("utf-8", "replace"), 200)
        )
    code = str(error.get("code", _REASONS.get(status, "http_error")))
    message = _clip(str(error.get("message", "")), 4096)
    if status == 404 and code == "not_found":
        raise JobNotFoundError(message)
    if status == 409:
        raise JobConflictError(message)
    if status == 422:
        fields = list(_error_fields(error.get("fields"))) or [("(request)", message)]
        raise JobValidationError(fields, "the daemon refused the request")
    raise LocalApiError(status, code, message)


def _error_fields(fields: object) -> Iterator[tuple[str, str]]:
    if not isinstance(fields, list):
        return
    for item in fields[:MAX_FIELD_ERRORS]:
        if isinstance(item, dict):
            yield _clip(str(item.get("field", "?")), 200), _clip(str(item.get("message", "")))
