"""The peer API: an aiohttp server other daemons call, and the client this daemon calls them with.

Routes (version 1, docs/peer-protocol.md and docs/peer-api.yaml):

    GET  /v1/info                           who this node is and what it can take
    POST /v1/chunks/held                    HeldQuery -> HeldReply: how much of a checkpoint is cached here
    POST /v1/migrations                     Offer -> OfferReply (a time-limited reservation, or a reason)
    PUT  /v1/transfers/{id}/...             checkpoint chunks (daemon/transfer.py)
    POST /v1/migrations/{id}/prepare        Prepare: the signed manifest; the destination rebuilds it
    POST /v1/migrations/{id}/commit         Commit -> CommitReply: the destination starts the job
    POST /v1/migrations/{id}/confirm        Confirm -> ConfirmReply: the destination owns the job for good
    POST /v1/migrations/{id}/abort          Abort: forget it, the source keeps the job
    GET  /v1/migrations/{id}                MigrationStatus: what this node journaled

The caller is identified by its client certificate (mutual TLS, adapters/pki.py); with ``insecure = true``
(local demos only) by the ``X-Greenferry-Node`` header, unauthenticated. Every body is size-limited, parsed
with the models of core/protocol.py, and refused with a JSON error naming the field when it does not fit.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ValidationError

from greenferry.core.manifest import ChunkRef
from greenferry.core.protocol import (
    MAX_HELD_CHUNKS,
    MIGRATION_ID_RE,
    PROTOCOL_VERSION,
    Abort,
    Commit,
    CommitReply,
    Confirm,
    ConfirmReply,
    HeldQuery,
    HeldReply,
    MigrationStatus,
    Offer,
    OfferReply,
    Prepare,
    ProtocolError,
)
from greenferry.errors import PayloadError, ServiceUnavailableError

__all__ = [
    "HELD_BODY_LIMIT_BYTES",
    "NODE_HEADER",
    "PeerClient",
    "PeerHandler",
    "PeerRequestError",
    "PeerServer",
    "caller_node",
]

logger = logging.getLogger(__name__)

NODE_HEADER = "X-Greenferry-Node"
_M = TypeVar("_M", bound=BaseModel)
_ID = MIGRATION_ID_RE.strip("^$")
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# A chunk in a HeldQuery is about 100 bytes of JSON: a body much larger than a full query is refused unread.
HELD_BODY_LIMIT_BYTES = MAX_HELD_CHUNKS * 160 + 4096
_STREAM_BODY_BYTES = 512 * 1024


class PeerRequestError(Exception):
    """Refuse a peer request with an HTTP status and a stable code (raised by the handler)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class PeerHandler(Protocol):
    """What the peer server asks of the node (the orchestrator implements it)."""

    def info(self) -> dict[str, Any]:
        """GET /v1/info."""
        ...

    async def chunks_held(self, peer: str, query: HeldQuery) -> HeldReply:
        """How much of ``query``'s chunks this node's chunk cache holds."""
        ...

    async def on_offer(self, peer: str, offer: Offer) -> OfferReply:
        """An offer from ``peer``."""
        ...

    async def on_prepare(self, peer: str, migration_id: str, prepare: Prepare, peer_key: Any | None) -> None:
        """The signed manifest and the public key of the caller's certificate (None when insecure)."""
        ...

    async def on_commit(self, peer: str, migration_id: str, commit: Commit) -> CommitReply:
        """Start the job at the new epoch."""
        ...

    async def on_confirm(self, peer: str, migration_id: str, confirm: Confirm) -> ConfirmReply:
        """The source let go (answer once the job resumed, waiting at most ``confirm.resume_wait_s``)."""
        ...

    async def on_abort(self, peer: str, migration_id: str, abort: Abort) -> None:
        """Forget the migration."""
        ...

    def migration_status(self, peer: str, migration_id: str) -> MigrationStatus:
        """What this node journaled about a migration."""
        ...


def caller_node(request: web.BaseRequest, insecure: bool) -> str:
    """The calling node: from its verified client certificate, or (insecure demos) the node header.

    Raises:
        web.HTTPUnauthorized: no verified certificate (or, insecure, no valid header).
    """
    if insecure:
        node = request.headers.get(NODE_HEADER, "")
        if not _NODE_NAME.fullmatch(node):
            raise _json_error(web.HTTPUnauthorized, "no_node", f"missing or invalid {NODE_HEADER} header")
        return node
    from greenferry.adapters.pki import request_peer_node_name

    try:
        return request_peer_node_name(request)
    except PayloadError as err:
        raise _json_error(web.HTTPUnauthorized, err.reason, err.detail) from None


def _json_error(kind: type[web.HTTPException], code: str, message: str) -> web.HTTPException:
    body = json.dumps({"error": {"code": code, "message": message}})
    return kind(text=body, content_type="application/json")


async def _parse(request: web.Request, model: type[_M], limit_bytes: int | None = None) -> _M:
    """The body as ``model``; a body over ``limit_bytes`` (or the server's limit) is refused with 413."""
    if request.content_type != "application/json":
        raise _json_error(web.HTTPUnsupportedMediaType, "not_json", "the body must be application/json")
    # A PeerRequestError, not web.HTTPRequestEntityTooLarge: that one cannot be built without the sizes.
    too_large = PeerRequestError(
        413, "too_large", "the body exceeds the limit" + (f" of {limit_bytes} bytes" if limit_bytes else "")
    )
    if limit_bytes is not None and (request.content_length or 0) > limit_bytes:
        raise too_large
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    if limit_bytes is not None and len(raw) > limit_bytes:
        raise too_large
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise _json_error(web.HTTPBadRequest, "bad_json", f"not JSON: {err}") from None
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "(body)"
        raise _json_error(web.HTTPUnprocessableEntity, "invalid", f"{where}: {first['msg']}") from None


def _reply(model: BaseModel) -> web.Response:
    return web.json_response(model.model_dump(mode="json"))


class PeerServer:
    """The peer API on ``host:port`` (TLS when ``ssl_context`` is given), as an async context manager.

    Args:
        handler: the node's side of the protocol.
        host, port: where to listen (port 0: any free port; see :attr:`port`).
        ssl_context: server TLS context requiring client certificates; None only when ``insecure``.
        insecure: accept plain HTTP and trust the node header (local demos).
        max_body_bytes: largest request body (chunks included).
        extra_routes: more routes (the checkpoint transfer's), under the same authentication.
    """

    def __init__(
        self,
        handler: PeerHandler,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        insecure: bool,
        max_body_bytes: int,
        extra_routes: Iterable[web.AbstractRouteDef] = (),
    ) -> None:
        if ssl_context is None and not insecure:
            raise ValueError("the peer server needs a TLS context unless insecure")
        self._handler = handler
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self.insecure = insecure
        self._app = web.Application(client_max_size=max_body_bytes)
        self._app.add_routes(
            [
                web.get("/v1/info", self._info),
                web.post("/v1/chunks/held", self._held),
                web.post("/v1/migrations", self._offer),
                web.get(f"/v1/migrations/{{mid:{_ID}}}", self._status),
                web.post(f"/v1/migrations/{{mid:{_ID}}}/prepare", self._prepare),
                web.post(f"/v1/migrations/{{mid:{_ID}}}/commit", self._commit),
                web.post(f"/v1/migrations/{{mid:{_ID}}}/confirm", self._confirm),
                web.post(f"/v1/migrations/{{mid:{_ID}}}/abort", self._abort),
                *extra_routes,
            ]
        )
        self._app.middlewares.append(self._errors)
        self._runner: web.AppRunner | None = None
        self.port = port

    @property
    def url(self) -> str:
        """The base URL this server answers on."""
        scheme = "http" if self._ssl is None else "https"
        return f"{scheme}://{self._host}:{self.port}"

    async def __aenter__(self) -> Self:
        # auto_decompress off: zstd chunk bodies reach the transfer handler as sent (daemon/transfer.py).
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False, auto_decompress=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, ssl_context=self._ssl)
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            raise ServiceUnavailableError(
                f"peer API: cannot listen on {self._host}:{self._port}: {err.strerror or err}"
            ) from err
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        logger.info("peer API listening on %s%s", self.url, " (INSECURE: no authentication)" * self.insecure)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def run(self) -> None:
        """Serve until cancelled (aiohttp serves from its own tasks; this only keeps the slot)."""
        await asyncio.Event().wait()

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except PeerRequestError as err:
            body = json.dumps({"error": {"code": err.code, "message": err.message}})
            return web.Response(status=err.status, text=body, content_type="application/json")
        except PayloadError as err:
            body = json.dumps({"error": {"code": err.reason, "message": err.detail}})
            return web.Response(status=422, text=body, content_type="application/json")

    async def _info(self, request: web.Request) -> web.Response:
        caller_node(request, self.insecure)
        return web.json_response({"protocol": PROTOCOL_VERSION, **self._handler.info()})

    async def _held(self, request: web.Request) -> web.Response:
        peer = caller_node(request, self.insecure)
        query = await _parse(request, HeldQuery, HELD_BODY_LIMIT_BYTES)
        return _reply(await self._handler.chunks_held(peer, query))

    async def _offer(self, request: web.Request) -> web.Response:
        peer = caller_node(request, self.insecure)
        offer = await _parse(request, Offer)
        if offer.source_node != peer:
            raise PeerRequestError(
                403, "wrong_source", f"{peer} cannot offer on behalf of {offer.source_node}"
            )
        return _reply(await self._handler.on_offer(peer, offer))

    async def _prepare(self, request: web.Request) -> web.Response:
        peer = caller_node(request, self.insecure)
        prepare = await _parse(request, Prepare)
        await self._handler.on_prepare(peer, request.match_info["mid"], prepare, self._peer_key(request))
        return web.json_response({"prepared": True})

    def _peer_key(self, request: web.Request) -> Any | None:
        """The public key of the caller's verified certificate (it signed the manifest)."""
        if self.insecure or request.transport is None:
            return None
        from greenferry.adapters.pki import certificate_public_key

        ssl_object = request.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            raise _json_error(web.HTTPUnauthorized, "no_peer_certificate", "no verified client certificate")
        return certificate_public_key(der)

    async def _commit(self, request: web.Request) -> web.Response:
        peer = caller_node(request, self.insecure)
        return _reply(
            await self._handler.on_commit(peer, request.match_info["mid"], await _parse(request, Commit))
        )

    async def _confirm(self, request: web.Request) -> web.Response:
        peer = caller_node(request, self.insecure)
        confirm = await _parse(request, Confirm)
        return _reply(await self._handler.on_confirm(peer, request.match_info["mid"], confirm))

    async def _abort(self, request: web.Request) -> web.Response:
        peer = caller_node(request, self.insecure)
        await self._handler.on_abort(peer, request.match_info["mid"], await _parse(request, Abort))
        return web.json_response({"aborted": True})

    async def _status(self, request: web.Request) -> web.Response:
        peer = caller_node(request, self.insecure)
        return _reply(self._handler.migration_status(peer, request.match_info["mid"]))


class PeerClient:
    """Calls peers' APIs over one aiohttp session (mutual TLS unless insecure).

    Args:
        node: this node's name (sent as the node header when insecure).
        ssl_context: client TLS context with this node's certificate; None when insecure.
        request_timeout_s: bound on every call but chunk transfers.
    """

    def __init__(
        self, node: str, ssl_context: ssl.SSLContext | None, request_timeout_s: float = 10.0
    ) -> None:
        self.node = node
        self._ssl = ssl_context
        self.request_timeout_s = request_timeout_s
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared session (for the chunk transfer)."""
        if self._session is None:
            raise RuntimeError("PeerClient used outside its async with")
        return self._session

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else False, limit=64)
        self._session = aiohttp.ClientSession(connector=connector, headers={NODE_HEADER: self.node})
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def info(self, url: str) -> dict[str, Any]:
        """GET /v1/info."""
        result = await self._call("GET", f"{url}/v1/info", None)
        if not isinstance(result, dict):
            raise ProtocolError(f"{url}/v1/info: expected an object")
        return result

    async def held_bytes(self, url: str, chunks: Sequence[ChunkRef]) -> int:
        """POST /v1/chunks/held (in batches of MAX_HELD_CHUNKS): bytes of ``chunks`` the peer holds.

        Raises:
            ServiceUnavailableError, PeerRequestError: as every call (404: a peer without the route).
            ProtocolError: an answer that claims more than was asked about.
        """
        distinct = list({chunk.sha256: chunk for chunk in chunks}.values())
        held = 0
        for start in range(0, len(distinct), MAX_HELD_CHUNKS):
            batch = distinct[start : start + MAX_HELD_CHUNKS]
            reply = HeldReply.model_validate(
                await self._call("POST", f"{url}/v1/chunks/held", HeldQuery(chunks=batch))
            )
            if reply.held_chunks > len(batch) or reply.held_bytes > sum(c.size_bytes for c in batch):
                raise ProtocolError(f"{url}/v1/chunks/held: holds more than it was asked about")
            held += reply.held_bytes
        return held

    async def offer(self, url: str, offer: Offer) -> OfferReply:
        """POST /v1/migrations."""
        return OfferReply.model_validate(await self._call("POST", f"{url}/v1/migrations", offer))

    async def prepare(self, url: str, migration_id: str, prepare: Prepare, timeout_s: float) -> None:
        """POST .../prepare (the destination rebuilds the checkpoint: may take a while)."""
        await self._call("POST", f"{url}/v1/migrations/{migration_id}/prepare", prepare, timeout_s)

    async def commit(self, url: str, migration_id: str, commit: Commit, timeout_s: float) -> CommitReply:
        """POST .../commit (returns once the job runs there)."""
        body = await self._call("POST", f"{url}/v1/migrations/{migration_id}/commit", commit, timeout_s)
        return CommitReply.model_validate(body)

    async def confirm(self, url: str, migration_id: str, resume_wait_s: float = 0.0) -> ConfirmReply:
        """POST .../confirm (with ``resume_wait_s``, answered once the job resumed there, or after that)."""
        body = await self._call(
            "POST",
            f"{url}/v1/migrations/{migration_id}/confirm",
            Confirm(resume_wait_s=resume_wait_s),
            self.request_timeout_s + resume_wait_s,
        )
        return ConfirmReply.model_validate(body)

    async def abort(self, url: str, migration_id: str, reason: str) -> None:
        """POST .../abort."""
        await self._call("POST", f"{url}/v1/migrations/{migration_id}/abort", Abort(reason=reason[:1000]))

    async def status(self, url: str, migration_id: str) -> MigrationStatus:
        """GET /v1/migrations/{id}."""
        return MigrationStatus.model_validate(
            await self._call("GET", f"{url}/v1/migrations/{migration_id}", None)
        )

    async def _call(
        self, method: str, url: str, body: BaseModel | None, timeout_s: float | None = None
    ) -> Any:
        """One request; the answer's JSON.

        Raises:
            ServiceUnavailableError: no connection, a timeout, or a 5xx (transient: may be retried).
            PeerRequestError: the peer refused (4xx), with its code and message.
            ProtocolError: the answer is not JSON.
        """
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.request_timeout_s)
        data = None if body is None else body.model_dump_json().encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        # aiohttp warns about (and would block the loop on) a large bytes body, not a stream of it.
        payload = io.BytesIO(data) if data is not None and len(data) > _STREAM_BODY_BYTES else data
        try:
            async with self.session.request(
                method, url, data=payload, headers=headers, timeout=timeout
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise ServiceUnavailableError(f"peer {url}: {type(err).__name__}: {err}") from err
        try:
            parsed = json.loads(text) if text else None
        except json.JSONDecodeError:
            parsed = None
        if status >= 500:
            raise ServiceUnavailableError(f"peer {url}: HTTP {status}")
        if status >= 400:
            error = parsed.get("error", {}) if isinstance(parsed, dict) else {}
            raise PeerRequestError(
                status, str(error.get("code", "http_error")), str(error.get("message", text[:200]))
            )
        if parsed is None:
            raise ProtocolError(f"peer {url}: HTTP {status} with a body that is not JSON")
        return parsed
