"""OpenAdrVen against a real openleadr VTN (OpenADRServer on a loopback port, 1 s polls, no certificates):
registration, events and their answers, modification, cancellation, hostile events, a VTN that refuses or
goes away and comes back, telemetry reports, and a clean stop."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from openleadr import OpenADRServer, utils

from greenferry.adapters import openadr as openadr_module
from greenferry.adapters.openadr import INSTALL_HINT, OpenAdrVen
from greenferry.config import OpenAdrConfig
from greenferry.core.dr import DemandResponseEvent, DrPayload
from greenferry.daemon.clock import RealClock
from greenferry.errors import ServiceUnavailableError
from greenferry.testing.services import free_port

pytestmark = [
    pytest.mark.integration,
    # openleadr's server stores itself in its aiohttp app under a string key (openleadr/server.py).
    pytest.mark.filterwarnings(
        "ignore:It is recommended to use web.AppKey instances for keys"
        ":aiohttp.web_exceptions.NotAppKeyWarning"
    ),
]

EXAMPLES = Path("/work/shared/data/dr-events/openadr2b_openleadr_docs")
VEN_NAME = "gf-ven"
VEN_ID = "ven-1"
WAIT_S = 15.0  # the longest any condition is waited for (polls are 1 s apart)


async def until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Wait (polling the condition) until it holds; fail naming what did not happen."""
    try:
        async with asyncio.timeout(timeout_s):
            while not condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"within {timeout_s} s: {what}")


class Vtn:
    """A real openleadr VTN on a fixed loopback port that can be stopped and started again (fresh state)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b"
        self.accept = True
        self.registrations: list[dict[str, Any]] = []
        self.report_values: list[float] = []
        self.opts: dict[str, list[str]] = {}
        self.server: Any = None

    async def start(self) -> None:
        server = OpenADRServer(
            vtn_id="TESTVTN",
            http_host="127.0.0.1",
            http_port=self.port,
            requested_poll_freq=dt.timedelta(seconds=1),
        )
        server.add_handler("on_create_party_registration", self._register)
        server.add_handler("on_register_report", self._register_report)
        await server.run()
        self.server = server

    async def stop(self) -> None:
        await self.server.stop()

    async def _register(self, info: dict[str, Any]) -> tuple[str, str] | bool:
        self.registrations.append(info)
        if not self.accept or info["ven_name"] != VEN_NAME:
            return False
        return VEN_ID, "reg-1"

    async def _register_report(
        self,
        ven_id: str,
        resource_id: str,
        measurement: str,
        unit: str,
        scale: str,
        min_sampling_interval: dt.timedelta,
        max_sampling_interval: dt.timedelta,
    ) -> tuple[Callable[[list[tuple[dt.datetime, float]]], None], dt.timedelta] | None:
        if (measurement, unit) != ("RealPower", "W"):
            return None

        def on_update_report(values: list[tuple[dt.datetime, float]]) -> None:
            self.report_values.extend(value for _, value in values)

        return on_update_report, min_sampling_interval

    def _on_opt(self, ven_id: str, event_id: str, opt_type: str) -> None:
        self.opts.setdefault(event_id, []).append(opt_type)

    def add_event(self, event: dict[str, Any]) -> str:
        """Queue an event for the VEN (delivered at its next poll); opt answers land in ``opts``."""
        event_id: str = self.server.add_raw_event(VEN_ID, event, callback=self._on_opt)
        return event_id

    def modify(self, event_id: str, payload: float) -> None:
        """A new version of the event (next modification number) with every payload set to ``payload``."""
        event = utils.find_by(self.server.events[VEN_ID], "event_descriptor.event_id", event_id)
        for signal in event["event_signals"]:
            for interval in signal["intervals"]:
                interval["signal_payload"] = payload
        utils.increment_event_modification_number(event)
        self.server.event_callbacks[event_id] = (event, self._on_opt)
        self.server.events_updated[VEN_ID] = True

    def cancel(self, event_id: str) -> None:
        event = utils.find_by(self.server.events[VEN_ID], "event_descriptor.event_id", event_id)
        self.server.event_callbacks[event_id] = (event, self._on_opt)
        self.server.cancel_event(VEN_ID, event_id)

    async def opt(self, event_id: str, count: int = 1) -> str:
        """The ``count``-th answer the VEN gave to ``event_id`` (waits for it)."""
        await until(lambda: len(self.opts.get(event_id, [])) >= count, f"answer {count} to event {event_id}")
        return self.opts[event_id][count - 1]


def signal_event(
    event_id: str,
    signal_name: str = "SIMPLE",
    signal_type: str = "level",
    payloads: tuple[float, ...] = (1.0, 2.0),
    *,
    start_in_s: float = 60.0,
    step: dt.timedelta = dt.timedelta(minutes=15),
) -> dict[str, Any]:
    """An event for the VTN to send: one signal, one interval per payload from now + ``start_in_s``."""
    start = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=start_in_s)
    return {
        "event_descriptor": {
            "event_id": event_id,
            "modification_number": 0,
            "market_context": "http://MarketContext1",
            "event_status": "far",
            "priority": 1,
            "created_date_time": start,
            "modification_date_time": start,
        },
        "active_period": {"dtstart": start, "duration": step * len(payloads)},
        "event_signals": [
            {
                "signal_name": signal_name,
                "signal_type": signal_type,
                "signal_id": f"{event_id}-signal",
                "intervals": [
                    {"dtstart": start + i * step, "duration": step, "signal_payload": v, "uid": i}
                    for i, v in enumerate(payloads)
                ],
            }
        ],
        "targets": [{"ven_id": VEN_ID}],
        "response_required": "always",
    }


def example_event() -> dict[str, Any]:
    """The oadrDistributeEvent documentation example, moved to start in a minute and aimed at this VEN."""
    message = json.loads((EXAMPLES / "oadrDistributeEvent_1.openleadr.json").read_text())
    (raw,) = message["payload"]["events"]
    event = copy.deepcopy(raw)
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(minutes=1)
    descriptor = event["event_descriptor"]
    descriptor["created_date_time"] = descriptor["modification_date_time"] = start - dt.timedelta(minutes=1)
    event["active_period"] = {
        "dtstart": start,
        "duration": dt.timedelta(seconds=raw["active_period"]["duration"]),
    }
    for signal in event["event_signals"]:
        offset = dt.timedelta(0)
        for interval in signal["intervals"]:
            duration = dt.timedelta(seconds=interval["duration"])
            interval["dtstart"], interval["duration"] = start + offset, duration
            offset += duration
    event["targets"] = [{"ven_id": VEN_ID}]
    del event["targets_by_type"]
    return event


class Daemon:
    """What the daemon gives the VEN: an on_event that records events and answers as told, and a meter."""

    def __init__(self) -> None:
        self.events: list[DemandResponseEvent] = []
        self.answer = True
        self.loads_w: list[float | None] = [1234.5]
        self._load_index = 0

    async def on_event(self, event: DemandResponseEvent) -> bool:
        self.events.append(event)
        return self.answer

    def measured_load_w(self) -> float | None:
        value = self.loads_w[self._load_index % len(self.loads_w)]
        self._load_index += 1
        return value

    def seen(self, event_id: str) -> list[DemandResponseEvent]:
        return [e for e in self.events if e.id == event_id]


@pytest.fixture
async def vtn() -> AsyncIterator[Vtn]:
    server = Vtn(free_port())
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def daemon() -> Daemon:
    return Daemon()


RunVen = Callable[..., Awaitable[OpenAdrVen]]


@pytest.fixture
async def start_ven(vtn: Vtn, daemon: Daemon) -> AsyncIterator[RunVen]:
    """Start VENs running against ``vtn``; each is cancelled (and must stop cleanly) at teardown."""
    tasks: list[asyncio.Task[None]] = []

    async def start(*, wait_connected: bool = True, **config: Any) -> OpenAdrVen:
        settings = {
            "vtn_url": vtn.url,
            "ven_name": VEN_NAME,
            "poll_interval_s": 1.0,
            "report_interval_s": 1.0,
        }
        ven = OpenAdrVen(
            OpenAdrConfig(**(settings | config)), RealClock(), daemon.on_event, daemon.measured_load_w
        )
        tasks.append(asyncio.create_task(ven.run(), name="test-openadr-ven"))
        if wait_connected:
            await until(lambda: ven.connected, "the VEN registers")
        return ven

    yield start
    for task in tasks:
        task.cancel()
    for task in tasks:
        with pytest.raises(asyncio.CancelledError):
            await task


# --- registration -------------------------------------------------------------------------------------------


async def test_the_ven_registers_and_says_so_in_its_status(vtn: Vtn, start_ven: RunVen) -> None:
    ven = await start_ven()
    assert vtn.registrations[0]["ven_name"] == VEN_NAME
    status = ven.status()
    assert status["connected"] is True
    assert status["ven_id"] == VEN_ID  # assigned by the VTN
    assert status["registrations"] == 1
    assert status["last_contact_s"] is not None
    assert status["vtn_url"] == vtn.url


async def test_a_vtn_that_refuses_registration_is_retried_until_it_accepts(
    vtn: Vtn, start_ven: RunVen, daemon: Daemon
) -> None:
    vtn.accept = False
    ven = await start_ven(wait_connected=False)
    await until(lambda: len(vtn.registrations) >= 2, "the VEN asks again after a refusal")
    assert not ven.connected
    assert "did not register this VEN" in str(ven.status()["last_error"])
    vtn.accept = True
    await until(lambda: ven.connected, "the VEN registers once the VTN accepts", timeout_s=30.0)
    event_id = vtn.add_event(signal_event("after-refusal"))
    assert await vtn.opt(event_id) == "optIn"


# --- events -------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason=f"{EXAMPLES} is not here")
async def test_the_distribute_event_example_reaches_on_event_converted_and_is_opted_in(
    vtn: Vtn, start_ven: RunVen, daemon: Daemon
) -> None:
    ven = await start_ven()
    event = example_event()
    event_id = vtn.add_event(event)
    assert await vtn.opt(event_id) == "optIn"
    (seen,) = daemon.seen(event_id)
    start_s = event["active_period"]["dtstart"].timestamp()
    assert seen.id == "541c76cb-36db-4ece-bf06-1ec80d06aa5d"
    assert seen.program_id == "http://MarketContext1"
    assert seen.event_name == "This is an event"
    assert seen.priority == 1
    assert not seen.cancelled
    assert [i.payloads for i in seen.intervals] == [
        (DrPayload("OLS", (v,)),) for v in (0.08, 0.10, 0.12, 0.14, 0.16, 0.18, 0.20, 0.10, 0.20)
    ]
    assert seen.start_s == pytest.approx(start_s)
    assert seen.end_s == pytest.approx(start_s + 540.0)
    assert ven.status()["opted_in"] == 1


async def test_on_event_false_is_answered_opt_out(vtn: Vtn, start_ven: RunVen, daemon: Daemon) -> None:
    ven = await start_ven()
    daemon.answer = False
    event_id = vtn.add_event(signal_event("declined", "LOAD_DISPATCH", "setpoint", (2500.0,)))
    assert await vtn.opt(event_id) == "optOut"
    (seen,) = daemon.seen(event_id)
    assert seen.intervals[0].payloads == (DrPayload("DISPATCH_SETPOINT", (2500.0,), "W"),)
    assert ven.status()["opted_out"] == 1


async def test_a_modification_is_delivered_again_and_answered(
    vtn: Vtn, start_ven: RunVen, daemon: Daemon
) -> None:
    await start_ven()
    event_id = vtn.add_event(signal_event("modified", payloads=(1.0, 1.0)))
    assert await vtn.opt(event_id) == "optIn"
    daemon.answer = False
    vtn.modify(event_id, 3.0)
    assert await vtn.opt(event_id, count=2) == "optOut"
    first, second = daemon.seen(event_id)
    assert (first.modification_number, second.modification_number) == (0, 1)
    assert second.intervals[0].payloads == (DrPayload("SIMPLE", (3.0,)),)
    assert second.version > first.version


async def test_a_cancellation_reaches_on_event_and_is_acknowledged_opt_in(
    vtn: Vtn, start_ven: RunVen, daemon: Daemon
) -> None:
    ven = await start_ven()
    event_id = vtn.add_event(signal_event("cancelled"))
    assert await vtn.opt(event_id) == "optIn"
    daemon.answer = False  # whatever on_event answers, a cancellation is acknowledged
    vtn.cancel(event_id)
    assert await vtn.opt(event_id, count=2) == "optIn"
    cancellation = daemon.seen(event_id)[-1]
    assert cancellation.cancelled
    assert cancellation.modification_number == 1
    assert ven.status()["cancellations"] == 1


async def test_a_vtn_repeating_a_cancellation_does_not_spoil_the_next_event(
    vtn: Vtn, start_ven: RunVen, daemon: Daemon
) -> None:
    """openleadr forgets its answer to a cancelled event; the repeat must not opt out of other events."""
    await start_ven()
    event_id = vtn.add_event(signal_event("cancel-repeated"))
    assert await vtn.opt(event_id) == "optIn"
    cancelled = utils.find_by(vtn.server.events[VEN_ID], "event_descriptor.event_id", event_id)
    vtn.cancel(event_id)
    assert await vtn.opt(event_id, count=2) == "optIn"
    vtn.server.events[VEN_ID].append(cancelled)  # the VTN keeps sending the cancelled event
    next_id = vtn.add_event(signal_event("after-repeat"))
    assert await vtn.opt(next_id) == "optIn"


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (signal_event("unknown-signal", "x-unknownSignal", "level", (1.0,)), "unknown_dr_payload"),
        (signal_event("negative", "LOAD_DISPATCH", "setpoint", (500.0, -500.0)), "negative_power"),
        (signal_event("more-load", "LOAD_CONTROL", "x-loadControlPercentOffset", (25.0,)), "bad_dr_value"),
    ],
    ids=["unknown signal", "negative setpoint", "percent offset asking for more load"],
)
async def test_an_unconvertible_event_is_opted_out_and_the_ven_keeps_working(
    vtn: Vtn, start_ven: RunVen, daemon: Daemon, event: dict[str, Any], reason: str
) -> None:
    ven = await start_ven()
    bad_id = vtn.add_event(copy.deepcopy(event))
    assert await vtn.opt(bad_id) == "optOut"
    assert daemon.seen(bad_id) == []  # the daemon never sees what does not convert
    status = ven.status()
    assert status["rejected"] == 1
    assert reason in str(status["last_error"])
    assert bad_id in str(status["last_error"])
    good_id = vtn.add_event(signal_event("next-good"))
    assert await vtn.opt(good_id) == "optIn"
    assert len(daemon.seen(good_id)) == 1
    assert ven.connected


async def test_an_event_is_not_asked_about_again_when_the_vtn_resends_it(
    vtn: Vtn, start_ven: RunVen, daemon: Daemon
) -> None:
    """The VTN sends every event at each update; the VEN answers known versions from memory."""
    await start_ven()
    first = vtn.add_event(signal_event("first"))
    assert await vtn.opt(first) == "optIn"
    second = vtn.add_event(signal_event("second"))
    assert await vtn.opt(second) == "optIn"
    assert len(daemon.seen(first)) == 1


# --- a VTN that goes away -----------------------------------------------------------------------------------


async def test_the_vtn_stopping_mid_event_and_coming_back(
    vtn: Vtn, start_ven: RunVen, daemon: Daemon
) -> None:
    ven = await start_ven()
    running = vtn.add_event(signal_event("mid-event", start_in_s=-30.0))  # already in force
    assert await vtn.opt(running) == "optIn"
    await vtn.stop()
    await until(lambda: not ven.connected, "the VEN notices the VTN is gone")
    assert "cannot reach the VTN" in str(ven.status()["last_error"])
    await asyncio.sleep(2.5)  # a few failed attempts while it is down
    restarted = Vtn(vtn.port)  # a restarted VTN with no memory of the VEN
    await restarted.start()
    try:
        await until(lambda: ven.connected, "the VEN registers with the VTN again", timeout_s=30.0)
        assert restarted.registrations[0]["ven_name"] == VEN_NAME
        next_id = restarted.add_event(signal_event("after-restart", "ENERGY_PRICE", "price", (0.4,)))
        assert await restarted.opt(next_id) == "optIn"
        (seen,) = daemon.seen(next_id)
        assert seen.intervals[0].payloads == (DrPayload("PRICE", (0.4,)),)
        status = ven.status()
        assert status["registrations"] == 2
        assert status["failures"] >= 1
    finally:
        vtn.server = restarted.server  # the fixture stops whichever server runs now


# --- telemetry reports --------------------------------------------------------------------------------------


async def test_measured_load_reaches_the_vtn_report_callback(
    vtn: Vtn, start_ven: RunVen, daemon: Daemon
) -> None:
    daemon.loads_w = [1234.5, None, 987.0]  # None: unknown, that sample is left out
    ven = await start_ven()
    await until(
        lambda: {1234.5, 987.0} <= set(vtn.report_values), "both measured values arrive in the VTN's reports"
    )
    assert set(vtn.report_values) <= {1234.5, 987.0}
    assert ven.connected  # a sample without a value did not upset the VTN
    assert ven.status()["reports_sampled"] >= 2


# --- lifecycle ----------------------------------------------------------------------------------------------


async def test_cancelling_run_stops_cleanly(vtn: Vtn, daemon: Daemon) -> None:
    config = OpenAdrConfig(vtn_url=vtn.url, ven_name=VEN_NAME, poll_interval_s=1.0, report_interval_s=1.0)
    ven = OpenAdrVen(config, RealClock(), daemon.on_event, daemon.measured_load_w)
    before = asyncio.all_tasks()
    task = asyncio.create_task(ven.run())
    await until(lambda: ven.connected, "the VEN registers")
    await until(lambda: bool(vtn.report_values), "a report arrives")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not ven.connected
    await asyncio.sleep(0.1)
    left = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert [t.get_name() for t in left if "openadr" in t.get_name() or "update_report" in repr(t)] == []


async def test_an_unreachable_vtn_is_retried_without_stopping(daemon: Daemon) -> None:
    config = OpenAdrConfig(
        vtn_url=f"http://127.0.0.1:{free_port()}/OpenADR2/Simple/2.0b", ven_name=VEN_NAME, poll_interval_s=1.0
    )
    ven = OpenAdrVen(config, RealClock(), daemon.on_event, daemon.measured_load_w)
    task = asyncio.create_task(ven.run())
    await until(lambda: ven.status()["failures"] >= 2, "two failed attempts")
    assert not task.done()
    assert "EiRegisterParty: cannot reach the VTN" in str(ven.status()["last_error"])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_without_openleadr_the_adapter_imports_and_the_ven_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code = "import sys; sys.modules['openleadr'] = None; import greenferry.adapters.openadr"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    monkeypatch.setitem(sys.modules, "openleadr", None)
    monkeypatch.setattr(openadr_module, "_CLIENT_CLASS", None)
    config = OpenAdrConfig(vtn_url="http://127.0.0.1:1/OpenADR2/Simple/2.0b", ven_name=VEN_NAME)

    async def on_event(event: DemandResponseEvent) -> bool:
        return True

    with pytest.raises(ServiceUnavailableError, match=r"pip install greenferry\[openadr\]") as caught:
        OpenAdrVen(config, RealClock(), on_event, lambda: None)
    assert str(caught.value) == INSTALL_HINT
