"""OpenADR 2.0b VEN (openleadr): a utility's VTN sends demand-response events, the node opts in or out.

:class:`OpenAdrVen` registers with one VTN, polls it every ``[openadr] poll_interval_s`` (2.0b over HTTP is
pull-only: an event reaches the node at its next poll), hands every event, converted by
:mod:`greenferry.core.openadr2b`, to the daemon's ``on_event`` and answers the VTN ``optIn`` or ``optOut``
with what that returns. It offers one TELEMETRY_USAGE report (powerReal, W) whose samples, every
``report_interval_s``, are what ``measured_load_w()`` returns; the VTN decides whether it wants it.

Answers:

- ``on_event(event)`` returns True: ``optIn``; False: ``optOut``. A modification (a new modification number)
  asks again. An event that does not convert (:class:`~greenferry.errors.PayloadError`), an ``on_event`` that
  raises, or one that takes longer than ``decision_timeout_s``: ``optOut``, logged with the reason.
- A cancellation reaches ``on_event`` as ``cancelled=True`` and is answered ``optIn`` whatever ``on_event``
  returns: opting in to a cancellation acknowledges it (the usual convention; the VTN removes the event).
- A test event (``test_event`` set) is answered ``optIn`` and not handed to ``on_event``: the node does not
  curtail for a communications test.

Failures: openleadr only logs what goes wrong with the VTN. Here its transport is replaced by one that
reports every failed exchange (unreachable, HTTP error, a message that fails the schema or the VTN's
signature) to the VEN; any failure ends the session, and the VEN registers again after the shared jittered
:class:`~greenferry.daemon.backoff.Backoff` (1 s growing to 60 s), so the node keeps its registration, reports
and events in step with a VTN that restarted. What the VEN answered is remembered across sessions, so an
event the VTN sends again is answered again without asking the daemon. :meth:`OpenAdrVen.run` never
returns: cancel it to stop; the HTTP session, the report task and openleadr's scheduler are closed then.

openleadr is imported only when an :class:`OpenAdrVen` is made (extra ``greenferry[openadr]``); openleadr
logs every message at INFO, so its logger is set to WARNING unless it was configured. See docs/openadr.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from greenferry.config import OpenAdrConfig
from greenferry.core.clock import Clock
from greenferry.core.dr import DemandResponseEvent
from greenferry.core.openadr2b import is_test_event, parse_openleadr_event
from greenferry.daemon.backoff import Backoff
from greenferry.errors import ConfigError, PayloadError, ServiceUnavailableError

__all__ = ["INSTALL_HINT", "OpenAdrVen"]

logger = logging.getLogger(__name__)

INSTALL_HINT = "OpenADR needs: pip install greenferry[openadr]"
REPORT_SPECIFIER_ID = "greenferry-telemetry-usage"
REPORT_R_ID = "greenferry-power-real"

_RETRY_MIN_S = 1.0
_RETRY_MAX_S = 60.0
_LOG_INTERVAL_S = 60.0  # a VTN outage is logged at most this often
_CLEANUP_INTERVAL_S = 300.0  # ended and cancelled events are forgotten this often
_MAX_REMEMBERED_EVENTS = 1000
_HTTP_CONNECT_TIMEOUT_S = 5.0
_HTTP_READ_TIMEOUT_S = 10.0
_HTTP_TOTAL_TIMEOUT_S = 30.0
_BODY_SNIPPET_CHARS = 200


class _SessionEndedError(Exception):
    """The session with the VTN is over: it failed, refused us, or asked us to register again."""


class OpenAdrVen:
    """An OpenADR 2.0b VEN for one VTN, answering events through ``on_event`` (see the module docstring).

    Args:
        config: the ``[openadr]`` section.
        clock: time for polls, backoff and report timestamps.
        on_event: called with each converted event (and cancellation); True opts in, False opts out.
        measured_load_w: the node's measured power (W) for the telemetry report; None when unknown (that
            sample is left out).
        decision_timeout_s: longest wait for ``on_event`` before answering ``optOut`` (s).

    Raises:
        ServiceUnavailableError: openleadr is not installed (:data:`INSTALL_HINT`).
        ConfigError: a certificate, key or CA file that cannot be read.
    """

    def __init__(
        self,
        config: OpenAdrConfig,
        clock: Clock,
        on_event: Callable[[DemandResponseEvent], Awaitable[bool]],
        measured_load_w: Callable[[], float | None],
        *,
        decision_timeout_s: float = 30.0,
    ) -> None:
        self._config = config
        self._clock = clock
        self._on_event = on_event
        self._measured_load_w = measured_load_w
        self._decision_timeout_s = decision_timeout_s
        self._client_class = _client_class()
        self._ssl = _ssl_context(config)
        for path in (config.cert_file, config.key_file):
            if path is not None:
                try:
                    path.read_bytes()
                except OSError as err:
                    raise ConfigError(f"[openadr] cannot read {path}: {err.strerror or err}") from err
        self._ven_id = config.ven_id
        # openleadr's memory of events and of its answers, kept across sessions.
        self._received_events: list[dict[str, Any]] = []
        self._responded_events: dict[str, str] = {}
        self._failure: str | None = None  # the first failed exchange of the current session
        self._connected = False
        self._counts = {
            "registrations": 0,
            "failures": 0,
            "events_seen": 0,
            "opted_in": 0,
            "opted_out": 0,
            "rejected": 0,
            "cancellations": 0,
            "test_events": 0,
            "reports_sampled": 0,
        }
        self._last_error: str | None = None
        self._last_error_s: float | None = None
        self._last_contact_s: float | None = None

    # --- state -----------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while registered with the VTN and its last exchange succeeded."""
        return self._connected

    def status(self) -> dict[str, Any]:
        """JSON-ready state for the daemon status: connection, counters and the last error."""
        return {
            "vtn_url": self._config.vtn_url,
            "ven_name": self._config.ven_name,
            "ven_id": self._ven_id,
            "connected": self._connected,
            "poll_interval_s": self._config.poll_interval_s,
            **self._counts,
            "last_error": self._last_error,
            "last_error_s": self._last_error_s,
            "last_contact_s": self._last_contact_s,
        }

    def _note_error(self, text: str) -> None:
        self._last_error, self._last_error_s = text, self._clock.now_s()

    # --- the supervised loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Register, poll, answer events until cancelled; a lost or refusing VTN is retried (backoff)."""
        backoff = Backoff(_RETRY_MIN_S, max(_RETRY_MAX_S, self._config.poll_interval_s))
        failures = 0
        outage_logged_s = -math.inf
        while True:
            client = self._new_client()
            registrations = self._counts["registrations"]
            try:
                await self._session(client, backoff)
            except _SessionEndedError as err:
                self._counts["failures"] += 1
                self._note_error(str(err))
                if self._counts["registrations"] > registrations:
                    failures = 0  # the session was up: this is a new outage, logged again
                failures += 1
                now_s = self._clock.monotonic_s()
                if failures == 1 or now_s - outage_logged_s >= _LOG_INTERVAL_S:
                    outage_logged_s = now_s
                    logger.warning(
                        "OpenADR VTN %s: %s (attempt %d); registering again",
                        self._config.vtn_url,
                        err,
                        failures,
                    )
            except Exception as err:  # the top of the supervised loop: openleadr must not stop the daemon
                self._counts["failures"] += 1
                self._note_error(f"unexpected {type(err).__name__}: {err}")
                logger.exception("OpenADR VTN %s: unexpected error; registering again", self._config.vtn_url)
            finally:
                self._connected = False
                await _close(client)
            await self._clock.sleep(backoff.next_delay_s())

    async def _session(self, client: Any, backoff: Backoff) -> None:
        """One registration: register, offer the report, sync events, then poll until something fails."""
        self._failure = None
        _, answer = await client.query_registration()
        self._check()
        request_id = _get(answer, "response", "request_id")
        await client.create_party_registration(ven_id=self._ven_id, request_id=request_id)
        self._check()
        if not client.registration_id:
            raise _SessionEndedError(
                self._last_refusal(client)
                or "the VTN did not register this VEN (no registrationID in its answer)"
            )
        self._ven_id = client.ven_id
        self._connected = True
        self._counts["registrations"] += 1
        backoff.reset()
        self._log_registration(client)
        client.scheduler.start()  # openleadr schedules the report samples the VTN asks for on it
        await client.register_reports(client.reports)
        self._check()
        reports = asyncio.create_task(client._report_queue_worker(), name="openadr-reports")  # owned here
        try:
            await client.sync_events()
            self._check()
            await self._poll_loop(client)
        finally:
            reports.cancel()
            await asyncio.gather(reports, return_exceptions=True)

    async def _poll_loop(self, client: Any) -> None:
        interval_s = self._config.poll_interval_s
        next_poll_s = self._clock.monotonic_s()
        next_cleanup_s = next_poll_s + _CLEANUP_INTERVAL_S
        while True:
            await client._poll()  # polls and handles what the VTN sends (events, report requests, ...)
            self._check()
            now_s = self._clock.monotonic_s()
            if now_s >= next_cleanup_s:
                next_cleanup_s = now_s + _CLEANUP_INTERVAL_S
                await self._forget_old_events(client)
            next_poll_s += interval_s
            next_poll_s = max(next_poll_s, now_s)  # fell behind (a slow VTN or decision): poll now
            await self._clock.sleep(next_poll_s - now_s)

    def _check(self) -> None:
        if self._failure is not None:
            raise _SessionEndedError(self._failure)

    async def _forget_old_events(self, client: Any) -> None:
        await client._event_cleanup()  # drops cancelled and completed events from openleadr's memory
        live = {e["event_descriptor"]["event_id"] for e in self._received_events}
        for event_id in [i for i in self._responded_events if i not in live]:
            del self._responded_events[event_id]
        while len(self._received_events) > _MAX_REMEMBERED_EVENTS:
            dropped = self._received_events.pop(0)
            self._responded_events.pop(dropped["event_descriptor"]["event_id"], None)

    def _log_registration(self, client: Any) -> None:
        requested = client.poll_frequency
        requested_s = requested.total_seconds() if isinstance(requested, dt.timedelta) else None
        logger.info(
            "OpenADR: registered with %s as venID %s; polling every %g s%s",
            self._config.vtn_url,
            self._ven_id,
            self._config.poll_interval_s,
            ""
            if requested_s is None or requested_s == self._config.poll_interval_s
            else f" as configured (the VTN asks for {requested_s:g} s)",
        )

    def _last_refusal(self, client: Any) -> str | None:
        return getattr(client, "refusal", None)

    # --- openleadr's callbacks -------------------------------------------------------------------------

    def _new_client(self) -> Any:
        config = self._config
        client = self._client_class(
            ven_name=config.ven_name,
            vtn_url=config.vtn_url,
            ven_id=self._ven_id,
            cert=None if config.cert_file is None else str(config.cert_file),
            key=None if config.key_file is None else str(config.key_file),
            vtn_fingerprint=config.vtn_fingerprint,
            show_fingerprint=False,
            allow_jitter=False,
        )
        client.vendor = self
        client.received_events = self._received_events
        client.responded_events = self._responded_events
        client.client_session = aiohttp.ClientSession(
            headers={"content-type": "application/xml"},
            timeout=aiohttp.ClientTimeout(
                total=_HTTP_TOTAL_TIMEOUT_S,
                sock_connect=_HTTP_CONNECT_TIMEOUT_S,
                sock_read=_HTTP_READ_TIMEOUT_S,
            ),
            connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True),
        )
        client.add_handler("on_event", self._answer)
        client.add_handler("on_update_event", self._answer)
        report_s = dt.timedelta(seconds=config.report_interval_s)
        client.add_report(
            callback=self._sample_load,
            resource_id=config.ven_name,
            measurement="power_real",
            unit="W",
            report_specifier_id=REPORT_SPECIFIER_ID,
            r_id=REPORT_R_ID,
            sampling_rate=report_s,
            report_duration=report_s,
            report_dtstart=dt.datetime.fromtimestamp(self._clock.now_s(), dt.UTC),
        )
        return client

    def failed(self, text: str) -> None:
        """The client's transport: an exchange with the VTN failed (ends the session)."""
        if self._failure is None:
            self._failure = text
            self._note_error(text)
        self._connected = False

    def contacted(self) -> None:
        """The client's transport: the VTN answered."""
        self._last_contact_s = self._clock.now_s()

    async def _answer(self, raw: Any) -> str:
        """openleadr's on_event and on_update_event: 'optIn' or 'optOut' for one event dict."""
        self._counts["events_seen"] += 1
        event_id = _get(raw, "event_descriptor", "event_id")
        try:
            event = parse_openleadr_event(raw)
        except PayloadError as err:
            self._counts["rejected"] += 1
            self._note_error(str(err))
            logger.warning("OpenADR: opting out of event %r: %s", event_id, err)
            return self._opt(False)
        if is_test_event(raw) and not event.cancelled:
            self._counts["test_events"] += 1
            logger.info("OpenADR: test event %r answered optIn without acting on it", event.id)
            return self._opt(True)
        try:
            async with asyncio.timeout(self._decision_timeout_s):
                opt_in = bool(await self._on_event(event))
        except TimeoutError:
            opt_in = False
            self._note_error(f"event {event.id!r}: no decision within {self._decision_timeout_s:g} s")
            logger.warning("OpenADR: no decision on event %r in time; opting out", event.id)
        except Exception as err:  # the top of openleadr's callback: else it opts out of every event at once
            opt_in = False
            self._note_error(f"event {event.id!r}: on_event failed: {type(err).__name__}: {err}")
            logger.exception("OpenADR: on_event failed for event %r; opting out", event.id)
        if event.cancelled:
            self._counts["cancellations"] += 1
            logger.info("OpenADR: event %r cancelled (acknowledged with optIn)", event.id)
            return "optIn"
        logger.info(
            "OpenADR: event %r modification %d: %s",
            event.id,
            event.modification_number,
            "optIn" if opt_in else "optOut",
        )
        return self._opt(opt_in)

    def _opt(self, opt_in: bool) -> str:
        self._counts["opted_in" if opt_in else "opted_out"] += 1
        return "optIn" if opt_in else "optOut"

    def _sample_load(self) -> list[tuple[dt.datetime, float]]:
        """The report callback: one (time, W) sample, or none when the load is unknown."""
        try:
            value = self._measured_load_w()
        except Exception:  # a meter bug must not break openleadr's report job
            logger.exception("OpenADR: measured_load_w failed; this report sample is left out")
            return []
        if value is None or isinstance(value, bool) or not math.isfinite(value):
            return []
        self._counts["reports_sampled"] += 1
        return [(dt.datetime.fromtimestamp(self._clock.now_s(), dt.UTC), float(value))]


# --- openleadr, imported lazily ----------------------------------------------------------------------------

_CLIENT_CLASS: type | None = None


def _client_class() -> type:
    """openleadr's OpenADRClient with a transport that tells the VEN what failed (built on first use)."""
    global _CLIENT_CLASS  # noqa: PLW0603 -- one class per process, made on first use
    if _CLIENT_CLASS is not None:
        return _CLIENT_CLASS
    try:
        from lxml.etree import XMLSyntaxError  # type: ignore[import-untyped]
        from openleadr import OpenADRClient, errors, utils  # type: ignore[import-untyped]
        from openleadr.messaging import (  # type: ignore[import-untyped]
            parse_message,
            validate_xml_schema,
            validate_xml_signature,
        )
        from signxml.exceptions import InvalidSignature
    except ImportError as err:
        raise ServiceUnavailableError(INSTALL_HINT) from err
    chatty = logging.getLogger("openleadr")
    if chatty.level == logging.INFO:  # openleadr sets INFO itself and logs every message it handles
        chatty.setLevel(logging.WARNING)
    bad_message = (
        XMLSyntaxError,
        InvalidSignature,
        errors.FingerprintMismatch,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        IndexError,
    )

    class _Client(OpenADRClient):  # type: ignore[misc]
        vendor: OpenAdrVen
        refusal: str | None = None

        async def _perform_request(self, service: str, message: Any) -> tuple[str | None, dict[str, Any]]:
            """One exchange; (None, {}) when it failed, after telling the VEN why (openleadr only logs)."""
            url = f"{self.vtn_url}/{service}"
            try:
                async with self.client_session.post(url, data=message) as response:
                    content = await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                self.vendor.failed(f"{service}: cannot reach the VTN: {type(err).__name__}: {err}")
                return None, {}
            if status != 200:
                body = content[:_BODY_SNIPPET_CHARS].decode("utf-8", "replace")
                self.vendor.failed(f"{service}: HTTP {status} from the VTN: {body!r}")
                return None, {}
            self.vendor.contacted()
            if not content:  # the VTN's answer to an oadrResponse is empty
                return None, {}
            try:
                tree = validate_xml_schema(content)
                if self.vtn_fingerprint:
                    validate_xml_signature(tree, cert_fingerprint=self.vtn_fingerprint)
                message_type, payload = parse_message(content)
            except bad_message as err:
                self.vendor.failed(f"{service}: the VTN's answer was refused: {type(err).__name__}: {err}")
                return None, {}
            code = _get(payload, "response", "response_code")
            if code is not None and code != 200:
                self.refusal = (
                    f"{service}: the VTN answered {code} {_get(payload, 'response', 'response_description')}"
                )
                self.vendor._note_error(self.refusal)
                logger.warning("OpenADR: %s", self.refusal)
            return message_type, payload

        async def _on_event(self, message: Any) -> None:
            # openleadr forgets its answer to a cancelled event; when the VTN repeats the cancellation it
            # would then fail on the lookup and opt out of every event in that message.
            events = message.get("events") if isinstance(message, dict) else None
            for event in events if isinstance(events, list) else []:
                event_id = _get(event, "event_descriptor", "event_id")
                number = _get(event, "event_descriptor", "modification_number")
                known = utils.find_by(self.received_events, "event_descriptor.event_id", event_id)
                if (
                    known
                    and known["event_descriptor"]["modification_number"] == number
                    and event_id not in self.responded_events
                ):
                    self.responded_events[event_id] = "optIn"
            await super()._on_event(message)

        async def _report_queue_worker(self) -> None:
            """Send the reports openleadr compiles, except those without a sample (the load was unknown):
            a report with no intervals is invalid, and openleadr's VTN answers it with HTTP 500."""
            while True:
                report = await self.pending_reports.get()
                if not report.intervals:
                    continue
                message = self._create_message(
                    "oadrUpdateReport", ven_id=self.ven_id, request_id=utils.generate_id(), reports=[report]
                )
                await self._perform_request("EiReport", message)

        async def create_party_reregistration(self, registration_id: str | None = None) -> None:
            raise _SessionEndedError("the VTN asked this VEN to register again")

        async def on_cancel_party_registration(self, message: Any) -> None:
            await super().on_cancel_party_registration(message)
            if self.registration_id is None:
                raise _SessionEndedError("the VTN cancelled this VEN's registration")

    _CLIENT_CLASS = _Client
    return _Client


async def _close(client: Any) -> None:
    """Stop openleadr's scheduler (cancelling report jobs) and close the HTTP session, even when cancelled."""
    if client.scheduler.running:
        client.scheduler.shutdown(wait=False)
    session = client.client_session
    if session is None or session.closed:
        return
    closing = asyncio.ensure_future(session.close())
    try:
        await asyncio.shield(closing)
    except asyncio.CancelledError:
        await closing
        raise
    await asyncio.sleep(0)  # let cancelled report jobs finish


def _ssl_context(config: OpenAdrConfig) -> ssl.SSLContext | None:
    """TLS for an https VTN: the CA file (or the system store) and the VEN certificate when given."""
    if not config.vtn_url.startswith("https://"):
        return None
    try:
        context = ssl.create_default_context(cafile=None if config.ca_file is None else str(config.ca_file))
        if config.cert_file is not None and config.key_file is not None:
            context.load_cert_chain(str(config.cert_file), str(config.key_file))
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"[openadr] TLS setup failed: {err}") from err
    return context


def _get(obj: object, *keys: str) -> Any:
    """obj[k1][k2]... or None when a level is missing or not a mapping."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj
