"""The demo's trace replayer: the simulator's traces, published per step, parse back to the trace values."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from typing import Any

import aiomqtt
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from greenferry.adapters.mqtt import MqttLink
from greenferry.config import config_from_mapping
from greenferry.core.payloads import parse_number, parse_windows
from greenferry.core.signals import SignalBoard, SurplusWindow
from greenferry.daemon.bus import EventBus
from greenferry.demo.replayer import (
    DEFAULT_SITES,
    DemoTrace,
    SiteTopics,
    SiteTrace,
    TraceReplayer,
    format_number,
    load_demo_trace,
    windows_payload,
)
from greenferry.errors import ConfigError
from greenferry.sim.scenario import build_world, load_scenario
from greenferry.testing.clock import ManualClock
from greenferry.testing.services import Mosquitto

START = dt.datetime(2022, 6, 6, tzinfo=dt.UTC)
STEP_S = 900.0


def synthetic_trace(surplus_w: list[float], carbon: list[float] | None = None, n_steps: int = 4) -> DemoTrace:
    """A one-site trace on a 15-minute grid from 2022-06-06T00:00Z."""
    values = np.asarray(surplus_w, dtype=np.float64)
    carbon_values = np.asarray(carbon if carbon is not None else [300.0] * values.size, dtype=np.float64)
    site = SiteTrace("X", "Asia/Tokyo", values, carbon_values)
    return DemoTrace("synthetic", START.timestamp(), STEP_S, n_steps, (site,))


class RecordingPublisher:
    """Keeps every published message."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, int, bool]] = []

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.messages.append((topic, payload, qos, retain))


@pytest.fixture(scope="module")
def trace() -> DemoTrace:
    """The default demo trace: 1 day of three global-8 sites, plus the 12 h forecast look-ahead."""
    return load_demo_trace()


# -- the trace -------------------------------------------------------------------------------------


def test_the_demo_trace_is_the_simulators_world_over_the_same_steps(trace: DemoTrace) -> None:
    spec, base = load_scenario("global-8", ["start=2022-06-05T00:00:00Z", "duration=3d"])
    world = build_world(spec, base)
    offset = round((trace.start_s - world.start_s) / world.step_s)
    names = [site.name for site in world.sites]
    assert trace.site_names == DEFAULT_SITES
    assert [site.timezone for site in trace.sites] == ["Asia/Tokyo", "Europe/Berlin", "America/Los_Angeles"]
    assert trace.step_s == world.step_s == STEP_S
    assert trace.n_steps == 96
    for site in trace.sites:
        index = names.index(site.name)
        span = slice(offset, offset + site.surplus_w.size)
        np.testing.assert_array_equal(site.surplus_w, world.surplus_w[index, span])
        np.testing.assert_array_equal(site.carbon_g_per_kwh, world.carbon_g_per_kwh[index, span])


def test_on_the_demo_day_the_surplus_moves_from_japan_to_germany_to_california(trace: DemoTrace) -> None:
    steps_per_hour = 4
    leaders = []
    for hour in range(24):
        surplus = [float(site.surplus_w[hour * steps_per_hour]) for site in trace.sites]
        leaders.append(trace.site_names[int(np.argmax(surplus))] if max(surplus) > 0 else None)
    assert leaders[2] == "JP-TK"
    assert leaders[11] == "DE-LU"
    assert leaders[20] == "US-CAL-CISO"


def test_an_unknown_site_is_named_with_the_scenarios_sites() -> None:
    with pytest.raises(ConfigError, match=r"'XX-YY' not in scenario 'global-8'.*JP-TK"):
        load_demo_trace(sites=("JP-TK", "XX-YY"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sites": ()}, "at least one site"),
        ({"sites": ("JP-TK", "JP-TK")}, "twice"),
        ({"start": dt.datetime(2022, 6, 6)}, "no time zone"),
        ({"duration_s": 0.0}, "duration_s"),
        ({"forecast_horizon_s": -1.0}, "forecast_horizon_s"),
        ({"scenario": "no-such-scenario"}, "no scenario"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_demo_trace(**kwargs)


def test_a_window_the_traces_do_not_cover_is_refused() -> None:
    with pytest.raises(ConfigError, match="cannot replay 2031-01-01"):
        load_demo_trace(start=dt.datetime(2031, 1, 1, tzinfo=dt.UTC), duration_s=3600.0)


def test_forecast_windows_merge_equal_steps_skip_zero_and_stop_at_the_horizon() -> None:
    t0 = START.timestamp()
    trace = synthetic_trace([0.0, 500.0, 500.0, 0.0, 800.0, 900.0, 900.0], n_steps=4)
    assert trace.forecast_windows(0, 0, 4 * STEP_S) == (SurplusWindow(t0 + 900, t0 + 2700, 500.0),)
    assert trace.forecast_windows(0, 1, 6 * STEP_S) == (
        SurplusWindow(t0 + 900, t0 + 2700, 500.0),
        SurplusWindow(t0 + 3600, t0 + 4500, 800.0),
        SurplusWindow(t0 + 4500, t0 + 6300, 900.0),
    )
    assert trace.forecast_windows(0, 3, 0.0) == ()


def test_forecast_payloads_are_greenferry_windows_that_parse_back_exactly(trace: DemoTrace) -> None:
    for site in range(len(trace.sites)):
        for step in (0, 37, trace.n_steps - 1):
            windows = trace.forecast_windows(site, step, 12 * 3600.0)
            parsed = parse_windows(json.loads(windows_payload(windows)))
            assert parsed == windows
            assert all(w.start_s >= trace.step_start_s(step) for w in parsed)
            assert all(w.end_s <= trace.step_start_s(step) + 12 * 3600.0 for w in parsed)


@pytest.mark.parametrize("value", [0.0, 2118.245851452489, 1e-05, 123456789.5, -0.0])
def test_numbers_go_out_as_text_that_parses_to_the_same_float(value: float) -> None:
    assert parse_number(format_number(value)) == value


def test_nonrenewable_energy_holds_the_surplus_over_each_step() -> None:
    t0 = START.timestamp()
    trace = synthetic_trace([100.0, 400.0, 0.0, 250.0])
    # 300 W from 00:10 to 00:40: 5 min above 100 W, 15 min under 400 W, 10 min on nothing.
    expected_j = 200.0 * 300 + 0.0 * 900 + 300.0 * 600
    assert trace.nonrenewable_j(0, t0 + 600, t0 + 2400, 300.0) == pytest.approx(expected_j)
    # Past the series the surplus counts as zero.
    assert trace.nonrenewable_j(0, t0 + 3600, t0 + 3700, 50.0) == pytest.approx(5000.0)
    assert trace.nonrenewable_j(0, t0, t0, 300.0) == 0.0
    assert trace.nonrenewable_j(0, t0, t0 + 900, 0.0) == 0.0


# -- the replayer ----------------------------------------------------------------------------------


async def _until(condition: Any, what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


async def test_each_step_publishes_the_trace_values_retained_at_the_step_start(trace: DemoTrace) -> None:
    clock = ManualClock(trace.start_s)
    publisher = RecordingPublisher()
    seen_steps: list[tuple[int, float]] = []
    replayer = TraceReplayer(
        trace, clock, publisher, on_step=lambda step, time_s: seen_steps.append((step, time_s))
    )
    steps = 6
    async with asyncio.TaskGroup() as group:
        task = group.create_task(replayer.run())
        for step in range(steps):
            done = step + 1
            await _until(lambda done=done: replayer.steps_published == done, f"step {step} published")
            assert clock.now_s() == trace.step_start_s(step)
            clock.advance(trace.step_s)
        task.cancel()
    assert seen_steps == [(k, trace.step_start_s(k)) for k in range(steps)]
    assert len(publisher.messages) == steps * 3 * len(trace.sites)
    assert all(qos == 1 and retain for _, _, qos, retain in publisher.messages)
    by_step = [publisher.messages[k * 9 : (k + 1) * 9] for k in range(steps)]
    for step, messages in enumerate(by_step):
        payloads = {topic: payload for topic, payload, _, _ in messages}
        for index, site in enumerate(trace.sites):
            topics = SiteTopics.for_site(site.name)
            assert parse_number(payloads[topics.production]) == site.surplus_w[step]
            assert parse_number(payloads[topics.carbon]) == site.carbon_g_per_kwh[step]
            windows = parse_windows(json.loads(payloads[topics.surplus_forecast]))
            assert windows == trace.forecast_windows(index, step, 12 * 3600.0)


async def test_the_replayer_returns_after_the_last_step_and_skips_steps_it_fell_behind_on() -> None:
    trace = synthetic_trace([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], n_steps=6)
    clock = ManualClock(trace.start_s + 1.5 * STEP_S)  # starts in step 1
    publisher = RecordingPublisher()
    replayer = TraceReplayer(trace, clock, publisher, forecast_horizon_s=0.0)
    async with asyncio.TaskGroup() as group:
        task = group.create_task(replayer.run())
        await _until(lambda: replayer.steps_published == 1, "the step in force")
        clock.advance(3.0 * STEP_S)  # to the middle of step 4: steps 2 and 3 are past
        await _until(lambda: replayer.steps_published == 2, "the step after the jump")
        clock.advance(STEP_S)
        await asyncio.wait_for(task, 5)
    productions = [parse_number(p) for t, p, _, _ in publisher.messages if t.endswith("/production_w")]
    assert productions == [2.0, 5.0, 6.0]
    assert replayer.steps_skipped == 2
    assert replayer.last_step == 5


async def test_publishing_a_step_outside_the_window_is_an_error() -> None:
    replayer = TraceReplayer(synthetic_trace([1.0, 2.0], n_steps=2), ManualClock(), RecordingPublisher())
    with pytest.raises(IndexError, match="outside"):
        await replayer.publish_step(2)


def test_topics_must_cover_every_site() -> None:
    with pytest.raises(ConfigError, match="no topics for site"):
        TraceReplayer(synthetic_trace([1.0]), ManualClock(), RecordingPublisher(), topics={})


# -- through a real broker ---------------------------------------------------------------------------


@pytest.mark.integration
async def test_through_mosquitto_subscribers_get_every_step_and_late_ones_the_retained_latest(
    mosquitto: Mosquitto, trace: DemoTrace
) -> None:
    prefix = f"gft/{uuid.uuid4().hex[:12]}"
    clock = ManualClock(trace.start_s)
    config = config_from_mapping(
        {
            "node": {"name": f"replayer-{uuid.uuid4().hex[:8]}", "site": "demo"},
            "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "topic_prefix": f"{prefix}/harness"},
            "http": {"enabled": False},
        },
        environ={},
    )
    received: list[tuple[str, bytes]] = []
    steps = 4
    async with (
        aiomqtt.Client("127.0.0.1", mosquitto.port) as early,
        MqttLink(config, EventBus(), SignalBoard({}), clock, CollectorRegistry()) as link,
        asyncio.TaskGroup() as group,
    ):
        await early.subscribe(f"{prefix}/sites/#", qos=1)
        runner = group.create_task(link.run())
        await _wait_connected(link)
        replayer = TraceReplayer(trace, clock, link, topic_prefix=f"{prefix}/sites")
        for step in range(steps):
            await replayer.publish_step(step)
        async with asyncio.timeout(10):
            async for message in early.messages:
                received.append((message.topic.value, bytes(message.payload)))  # type: ignore[arg-type]
                if len(received) == steps * 9:
                    break
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as late:
            await late.subscribe(f"{prefix}/sites/#", qos=1)
            retained: dict[str, bytes] = {}
            async with asyncio.timeout(10):
                async for message in late.messages:
                    assert message.retain
                    retained[message.topic.value] = bytes(message.payload)  # type: ignore[arg-type]
                    if len(retained) == 9:
                        break
        runner.cancel()
    for index, site in enumerate(trace.sites):
        topics = SiteTopics.for_site(site.name, f"{prefix}/sites")
        productions = [parse_number(p) for t, p in received if t == topics.production]
        carbons = [parse_number(p) for t, p in received if t == topics.carbon]
        forecasts = [parse_windows(json.loads(p)) for t, p in received if t == topics.surplus_forecast]
        assert productions == [float(v) for v in site.surplus_w[:steps]]
        assert carbons == [float(v) for v in site.carbon_g_per_kwh[:steps]]
        assert forecasts == [trace.forecast_windows(index, k, 12 * 3600.0) for k in range(steps)]
        last = steps - 1
        assert parse_number(retained[topics.production]) == site.surplus_w[last]
        assert parse_number(retained[topics.carbon]) == site.carbon_g_per_kwh[last]
        assert parse_windows(json.loads(retained[topics.surplus_forecast])) == trace.forecast_windows(
            index, last, 12 * 3600.0
        )


async def _wait_connected(link: MqttLink) -> None:
    async with asyncio.timeout(10):
        while not link.connected:
            await asyncio.sleep(0.01)
