"""MqttLink against a real Mosquitto: signals in, retained status and last will out, reconnects, rejects."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from prometheus_client import CollectorRegistry

from greenferry.adapters.mqtt import MqttLink, probe_broker
from greenferry.config import DaemonConfig, config_from_mapping
from greenferry.core.dr import DemandResponseEvent
from greenferry.core.events import Event, SignalAccepted, SignalRejected
from greenferry.core.signals import SignalBoard, SignalKind, SurplusWindow
from greenferry.daemon.bus import EventBus, Subscription
from greenferry.daemon.clock import RealClock
from greenferry.errors import ConfigError, ServiceUnavailableError
from greenferry.testing.clock import ManualClock
from greenferry.testing.services import Mosquitto, free_port

pytestmark = pytest.mark.integration

DR_EXAMPLES = Path("/work/shared/data/dr-events/openadr3_openleadr-rs")
OPENADR3_EVENT: dict[str, Any] = {
    "id": "ev-1",
    "programID": "prog-1",
    "eventName": "evening peak",
    "objectType": "EVENT",
    # Far in the future: the link drops events that have ended, and this one must stay in its book.
    "modificationDateTime": "2036-12-02T09:00:00Z",
    "intervalPeriod": {"start": "2036-12-02T17:00:00Z", "duration": "PT1H"},
    "intervals": [{"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [5]}]}],
    "payloadDescriptors": [{"payloadType": "IMPORT_CAPACITY_LIMIT", "units": "KW"}],
}


@pytest.fixture
def prefix() -> str:
    """A topic prefix (and node name) of the test's own, so tests sharing a broker never meet."""
    return f"gft/{uuid.uuid4().hex[:12]}"


def make_config(
    broker: Mosquitto,
    prefix: str,
    signals: dict[str, dict[str, Any]],
    *,
    port: int | None = None,
    **mqtt: Any,
) -> DaemonConfig:
    """A node config for ``broker`` whose signal topics live under ``prefix``."""
    node = prefix.replace("/", "-")
    data = {
        "node": {"name": node, "site": "site-a"},
        "mqtt": {
            "host": "127.0.0.1",
            "port": broker.port if port is None else port,
            "topic_prefix": prefix,
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.2,
            **mqtt,
        },
        "signals": {
            kind: {**signal, "topic": f"{prefix}/{signal['topic']}"} for kind, signal in signals.items()
        },
    }
    return config_from_mapping(data, environ={})


class Node:
    """The pieces a test inspects around one MqttLink."""

    def __init__(self, config: DaemonConfig, clock: Any = None, **link_args: Any) -> None:
        self.config = config
        self.bus = EventBus()
        self.events: Subscription[Event] = self.bus.subscribe("test", maxsize=100_000)
        self.board = SignalBoard({k: s.max_age_s for k, s in config.signals.configured().items()})
        self.registry = CollectorRegistry()
        self.clock = RealClock() if clock is None else clock
        self.link = MqttLink(config, self.bus, self.board, self.clock, self.registry, **link_args)

    def drain(self) -> list[Event]:
        out: list[Event] = []
        while self.events.qsize():
            out.append(self.events.get_nowait())
        return out

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@contextlib.asynccontextmanager
async def running(node: Node) -> AsyncIterator[Node]:
    """Run the node's link in a task group for the ``async with`` block, then close it."""
    async with node.link, asyncio.TaskGroup() as group:
        task = group.create_task(node.link.run())
        try:
            yield node
        finally:
            task.cancel()


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds (fails the test after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def observer(broker: Mosquitto, *topics: str, port: int | None = None) -> AsyncIterator[aiomqtt.Client]:
    """A plain aiomqtt client of the test's own, subscribed to ``topics``."""
    async with aiomqtt.Client("127.0.0.1", broker.port if port is None else port) as client:
        for topic in topics:
            await client.subscribe(topic, qos=1)
        yield client


async def next_json(
    client: aiomqtt.Client,
    topic: str,
    predicate: Callable[[Any], bool] = lambda _: True,
    timeout_s: float = 10.0,
) -> Any:
    """The next JSON message on ``topic`` that satisfies ``predicate``."""
    async with asyncio.timeout(timeout_s):
        async for message in client.messages:
            if message.topic.value == topic:
                assert isinstance(message.payload, bytes)
                data = json.loads(message.payload)
                if predicate(data):
                    return data
    raise AssertionError("unreachable")


async def publish(broker: Mosquitto, topic: str, payload: bytes, *, retain: bool = False) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


ALL_FORMATS = {
    "production": {"topic": "pv/power", "format": "number"},
    "load": {"topic": "tasmota/SENSOR", "format": "json", "field": "ENERGY.Power"},
    "carbon": {"topic": "grid/carbon", "format": "greenferry"},
    "price": {"topic": "grid/price", "format": "json", "field": "prices.0.eur_per_mwh"},
    "surplus_forecast": {"topic": "forecast", "format": "greenferry"},
    "demand_response": {"topic": "dr", "format": "greenferry"},
}


async def test_signals_of_each_format_reach_the_board_and_the_bus(mosquitto: Mosquitto, prefix: str) -> None:
    node = Node(make_config(mosquitto, prefix, ALL_FORMATS))
    async with running(node):
        await wait_until(lambda: node.link.connected, what="connection")
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
            await client.publish(f"{prefix}/pv/power", b"5321.5", qos=1)
            await client.publish(f"{prefix}/tasmota/SENSOR", b'{"ENERGY":{"Power":1200,"Today":3.1}}', qos=1)
            await client.publish(
                f"{prefix}/grid/carbon", b'{"value": 212.5, "time": "%s"}' % _iso_now().encode(), qos=1
            )
            await client.publish(f"{prefix}/grid/price", b'{"prices": [{"eur_per_mwh": -12.5}]}', qos=1)
            windows = [{"start": 2_100_000_000, "end": "2036-07-18T14:20:00Z", "power_w": 2500}]
            await client.publish(f"{prefix}/forecast", json.dumps(windows).encode(), qos=1)
            await client.publish(f"{prefix}/dr", json.dumps(OPENADR3_EVENT).encode(), qos=1)
        await wait_until(
            lambda: len(node.board.snapshot(0)) == 6 and _all_set(node.board), what="all signals"
        )

    board = node.board
    production = board.latest(SignalKind.PRODUCTION_W)
    assert production is not None
    assert production.value == 5321.5
    assert production.topic == f"{prefix}/pv/power"
    assert _value(board, SignalKind.LOAD_W) == 1200.0
    carbon = board.latest(SignalKind.CARBON_G_PER_KWH)
    assert carbon is not None
    assert carbon.value == 212.5
    assert carbon.source_time_s is not None
    assert _value(board, SignalKind.PRICE_PER_MWH) == -12.5
    assert _value(board, SignalKind.SURPLUS_FORECAST) == (
        SurplusWindow(2_100_000_000.0, 2_100_003_600.0, 2500.0),
    )
    event = _value(board, SignalKind.DEMAND_RESPONSE)
    assert isinstance(event, DemandResponseEvent)
    assert event.intervals[0].payloads[0].values == (5000.0,)  # 5 kW in W
    assert node.link.dr_events.get("ev-1") == event
    assert board.surplus_w(time.monotonic()) == pytest.approx(5321.5 - 1200.0)

    accepted = [e for e in node.drain() if isinstance(e, SignalAccepted)]
    assert {e.reading.kind for e in accepted} == set(SignalKind)
    for kind in SignalKind:
        assert node.metric("greenferry_mqtt_accepted_total", kind=kind.value) == 1.0


async def test_retained_values_are_read_on_connect(mosquitto: Mosquitto, prefix: str) -> None:
    await publish(mosquitto, f"{prefix}/pv/power", b"777", retain=True)
    node = Node(make_config(mosquitto, prefix, {"production": {"topic": "pv/power"}}))
    try:
        async with running(node):
            await wait_until(lambda: node.board.latest(SignalKind.PRODUCTION_W) is not None, what="retained")
        assert _value(node.board, SignalKind.PRODUCTION_W) == 777.0
    finally:
        await publish(mosquitto, f"{prefix}/pv/power", b"", retain=True)  # clear the retained value


async def test_wildcard_topics_route_every_matching_topic(mosquitto: Mosquitto, prefix: str) -> None:
    node = Node(make_config(mosquitto, prefix, {"production": {"topic": "pv/+/power"}}))
    async with running(node):
        await wait_until(lambda: node.link.connected, what="connection")
        await publish(mosquitto, f"{prefix}/pv/roof/power", b"10")
        await wait_until(lambda: node.board.latest(SignalKind.PRODUCTION_W) is not None, what="reading")
        await publish(mosquitto, f"{prefix}/pv/carport/power", b"20")
        await wait_until(lambda: _value(node.board, SignalKind.PRODUCTION_W) == 20.0, what="second reading")
    reading = node.board.latest(SignalKind.PRODUCTION_W)
    assert reading is not None
    assert reading.topic == f"{prefix}/pv/carport/power"


async def test_username_and_password(mosquitto: Mosquitto, prefix: str) -> None:
    config = make_config(
        mosquitto,
        prefix,
        {"production": {"topic": "pv/power"}},
        port=mosquitto.auth_port,
        username=mosquitto.username,
        password=mosquitto.password,
    )
    node = Node(config)
    async with running(node):
        await wait_until(lambda: node.link.connected, what="authenticated connection")
        async with aiomqtt.Client(
            "127.0.0.1", mosquitto.auth_port, username=mosquitto.username, password=mosquitto.password
        ) as client:
            await client.publish(f"{prefix}/pv/power", b"42", qos=1)
        await wait_until(lambda: node.board.latest(SignalKind.PRODUCTION_W) is not None, what="reading")
    assert config.mqtt is not None
    await probe_broker(config.mqtt, f"{prefix}-probe", 5.0)  # the right password passes


async def test_probe_names_a_wrong_password(mosquitto: Mosquitto, prefix: str) -> None:
    config = make_config(
        mosquitto, prefix, {}, port=mosquitto.auth_port, username=mosquitto.username, password="wrong"
    )
    assert config.mqtt is not None
    with pytest.raises(ServiceUnavailableError, match=r"refused: (not authorised|bad username or password)"):
        await probe_broker(config.mqtt, f"{prefix}-probe", 5.0)
    anonymous = make_config(mosquitto, prefix, {}, port=mosquitto.auth_port)
    assert anonymous.mqtt is not None
    with pytest.raises(ServiceUnavailableError, match="wants a username"):
        await probe_broker(anonymous.mqtt, f"{prefix}-probe", 5.0)


async def test_probe_names_a_refused_connection(mosquitto: Mosquitto, prefix: str) -> None:
    config = make_config(mosquitto, prefix, {}, port=free_port())
    assert config.mqtt is not None
    with pytest.raises(ServiceUnavailableError, match="connection refused"):
        await probe_broker(config.mqtt, f"{prefix}-probe", 5.0)


async def test_tls_with_the_fixture_ca(mosquitto: Mosquitto, prefix: str) -> None:
    assert mosquitto.tls is not None
    config = make_config(
        mosquitto,
        prefix,
        {"production": {"topic": "pv/power"}},
        port=mosquitto.tls_port,
        tls={"ca_file": str(mosquitto.tls.ca)},
    )
    assert config.mqtt is not None
    await probe_broker(config.mqtt, f"{prefix}-probe", 5.0)
    node = Node(config)
    async with running(node):
        await wait_until(lambda: node.link.connected, what="TLS connection")
        await publish(mosquitto, f"{prefix}/pv/power", b"99")  # plain listener, same broker
        await wait_until(lambda: node.board.latest(SignalKind.PRODUCTION_W) is not None, what="reading")
    assert _value(node.board, SignalKind.PRODUCTION_W) == 99.0


async def test_tls_insecure_still_connects(mosquitto: Mosquitto, prefix: str) -> None:
    assert mosquitto.tls is not None
    tls = {"ca_file": str(mosquitto.tls.ca), "insecure": True}
    config = make_config(mosquitto, prefix, {}, port=mosquitto.tls_port, tls=tls)
    assert config.mqtt is not None
    await probe_broker(config.mqtt, f"{prefix}-probe", 5.0)
    node = Node(config)
    async with running(node):
        await wait_until(lambda: node.link.connected, what="TLS connection without the host name check")


async def test_an_untrusted_certificate_is_named_and_retried(
    mosquitto: Mosquitto, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(mosquitto, prefix, {}, port=mosquitto.tls_port, tls={})  # system CAs only
    assert config.mqtt is not None
    with pytest.raises(ServiceUnavailableError, match=r"TLS failure: .*certificate"):
        await probe_broker(config.mqtt, f"{prefix}-probe", 5.0)
    caplog.set_level(logging.WARNING, logger="greenferry.adapters.mqtt")
    node = Node(config)
    async with running(node):
        await wait_until(lambda: node.metric("greenferry_mqtt_connect_failures_total") >= 2, what="retries")
        assert not node.link.connected
    assert any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records)
    assert len([r for r in caplog.records if "cannot connect" in r.getMessage()]) == 1, (
        "logged once an outage"
    )


async def test_config_problems_are_named_up_front(mosquitto: Mosquitto, prefix: str) -> None:
    no_broker = config_from_mapping({"node": {"name": "n", "site": "s"}}, environ={})
    with pytest.raises(ConfigError, match=r"\[mqtt\] section"):
        MqttLink(no_broker, EventBus(), SignalBoard({}), RealClock(), CollectorRegistry())
    bad_format = make_config(mosquitto, prefix, {"surplus_forecast": {"topic": "f", "format": "number"}})
    with pytest.raises(ConfigError, match="surplus_forecast: format 'number'"):
        Node(bad_format)


async def test_status_is_retained_online_then_offline_on_a_clean_exit(
    mosquitto: Mosquitto, prefix: str
) -> None:
    node = Node(make_config(mosquitto, prefix, {"production": {"topic": "pv/power"}}))
    status_topic = node.config.status_topic()
    assert status_topic == f"{prefix}/nodes/{node.config.node.name}/status"
    async with observer(mosquitto, status_topic) as watch:
        async with running(node):
            online = await next_json(watch, status_topic, lambda s: s["state"] == "online")
            await node.link.publish_status({"jobs": 2})
            merged = await next_json(watch, status_topic, lambda s: "jobs" in s)
            with pytest.raises(TypeError):
                await node.link.publish_status({"bad": object()})
            await watch.subscribe(f"{prefix}/nodes/+/state", qos=1)
            await node.link.publish(f"{prefix}/nodes/{node.config.node.name}/state", b'{"jobs": []}')
            assert await next_json(watch, f"{prefix}/nodes/{node.config.node.name}/state") == {"jobs": []}
        offline = await next_json(watch, status_topic, lambda s: s["state"] == "offline")
    assert online["node"] == node.config.node.name
    assert online["site"] == "site-a"
    assert online["version"]
    assert online["time"].endswith("Z")
    assert merged["jobs"] == 2
    assert merged["state"] == "online"
    assert offline["reason"] == "shutdown"
    assert "bad" not in offline, "a refused field is not kept"
    async with observer(mosquitto, status_topic) as late:  # retained: a later subscriber reads it
        assert (await next_json(late, status_topic))["state"] == "offline"
    await publish(mosquitto, status_topic, b"", retain=True)


_CHILD = """
import asyncio, json, sys
from prometheus_client import CollectorRegistry
from greenferry.adapters.mqtt import MqttLink
from greenferry.config import config_from_mapping
from greenferry.core.signals import SignalBoard
from greenferry.daemon.bus import EventBus
from greenferry.daemon.clock import RealClock

async def main():
    config = config_from_mapping(json.loads(sys.argv[1]), environ={})
    async with MqttLink(config, EventBus(), SignalBoard({}), RealClock(), CollectorRegistry()) as link:
        await link.run()

asyncio.run(main())
"""


async def test_last_will_is_delivered_when_the_process_is_killed(mosquitto: Mosquitto, prefix: str) -> None:
    config = make_config(mosquitto, prefix, {"production": {"topic": "pv/power"}})
    status_topic = config.status_topic()
    data = {
        "node": {"name": config.node.name, "site": "site-a"},
        "mqtt": config.model_dump(mode="json")["mqtt"],
    }
    async with observer(mosquitto, status_topic) as watch:
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", _CHILD, json.dumps(data))
        try:
            await next_json(watch, status_topic, lambda s: s["state"] == "online", timeout_s=20)
            child.kill()
            await child.wait()
            will = await next_json(watch, status_topic, lambda s: s["state"] == "offline")
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
    assert will == {
        "node": config.node.name,
        "site": "site-a",
        "state": "offline",
        "reason": "connection lost",
    }
    await publish(mosquitto, status_topic, b"", retain=True)


async def test_survives_a_broker_restart_and_resubscribes(fresh_mosquitto: Mosquitto, prefix: str) -> None:
    broker = fresh_mosquitto
    node = Node(make_config(broker, prefix, {"production": {"topic": "pv/power"}}))
    async with running(node):
        await wait_until(lambda: node.link.connected, what="first connection")
        await publish(broker, f"{prefix}/pv/power", b"1")
        await wait_until(lambda: node.board.latest(SignalKind.PRODUCTION_W) is not None, what="first reading")

        broker.stop(kill=True)
        await wait_until(lambda: not node.link.connected, what="the link to notice the broker is gone")
        await asyncio.sleep(0.3)  # a few failed reconnect attempts while the broker is down
        broker.start()
        back_s = time.monotonic()
        await wait_until(lambda: node.link.connected, timeout_s=30, what="reconnection")
        reconnect_s = time.monotonic() - back_s

        # Mosquitto runs without persistence: the retained value published now must come via resubscription.
        await publish(broker, f"{prefix}/pv/power", b"2", retain=True)
        await wait_until(
            lambda: _value(node.board, SignalKind.PRODUCTION_W) == 2.0, what="reading after restart"
        )
        async with observer(broker, node.config.status_topic()) as watch:
            status = await next_json(watch, node.config.status_topic())
        assert status["state"] == "online", "the online status is re-published on reconnect"
    assert node.metric("greenferry_mqtt_reconnects_total") == 1.0, f"reconnected after {reconnect_s:.2f} s"
    assert node.metric("greenferry_mqtt_connect_failures_total") >= 1.0
    assert node.metric("greenferry_mqtt_connected") == 0.0


async def test_link_keeps_retrying_while_no_broker_is_up(fresh_mosquitto: Mosquitto, prefix: str) -> None:
    broker = fresh_mosquitto
    broker.stop()
    node = Node(make_config(broker, prefix, {"production": {"topic": "pv/power"}}))
    async with running(node):
        await wait_until(
            lambda: node.metric("greenferry_mqtt_connect_failures_total") >= 2, what="failed attempts"
        )
        assert not node.link.connected
        with pytest.raises(ServiceUnavailableError, match="not connected"):
            await node.link.publish(f"{prefix}/x", b"1")
        broker.start()
        await wait_until(lambda: node.link.connected, timeout_s=30, what="connection once the broker is up")
        await node.link.publish(f"{prefix}/x", b"1")


async def test_malformed_payloads_are_rejected_counted_and_logged_once_per_topic(
    mosquitto: Mosquitto, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="greenferry.adapters.mqtt")
    clock = ManualClock(start_s=time.time())
    signals = {
        "production": {"topic": "pv/power"},
        "load": {"topic": "load", "format": "json", "field": "ENERGY.Power"},
        "carbon": {"topic": "carbon", "format": "greenferry", "max_age_s": 60},
        "demand_response": {"topic": "dr", "format": "greenferry"},
    }
    node = Node(make_config(mosquitto, prefix, signals), clock=clock, log_interval_s=60.0)
    bad_production = {
        b"abc": "not_a_number",
        b"nan": "not_a_number",
        b"1e999": "not_finite",
        b"-5": "negative_power",
        b"\xff\xfe\x00": "invalid_utf8",
        b"": "empty",
        b"x" * (10 * 1024 * 1024): "too_large",
    }
    unknown_type = {
        **OPENADR3_EVENT,
        "intervals": [{"id": 0, "payloads": [{"type": "LOAD_SHED", "values": [1]}]}],
    }
    backwards = {**OPENADR3_EVENT, "intervals": [{"intervalPeriod": {"duration": "-PT1H"}, "payloads": []}]}
    async with running(node):
        await wait_until(lambda: node.link.connected, what="connection")
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
            for payload in bad_production:
                await client.publish(f"{prefix}/pv/power", payload, qos=1)
            await client.publish(f"{prefix}/load", b'{"ENERGY": {"Power": [1]}', qos=1)  # cut short
            await client.publish(f"{prefix}/load", b'{"ENERGY": {"Total": 5}}', qos=1)
            await client.publish(f"{prefix}/load", b"[" * 100_000, qos=1)
            await client.publish(f"{prefix}/carbon", b'{"value": 100, "time": "2020-01-01T00:00:00Z"}', qos=1)
            await client.publish(f"{prefix}/dr", json.dumps(unknown_type).encode(), qos=1)
            await client.publish(f"{prefix}/dr", json.dumps(backwards).encode(), qos=1)
            await client.publish(f"{prefix}/pv/power", b"1500", qos=1)  # and a good one still gets through
        await wait_until(
            lambda: node.board.latest(SignalKind.PRODUCTION_W) is not None, what="the good value"
        )

        for payload, reason in bad_production.items():
            count = node.metric("greenferry_mqtt_rejected_total", kind="production", reason=reason)
            assert count >= 1, f"{payload[:20]!r}: {reason} not counted"
        assert node.metric("greenferry_mqtt_rejected_total", kind="production", reason="not_a_number") == 2
        assert node.metric("greenferry_mqtt_rejected_total", kind="load", reason="bad_json") == 2
        assert node.metric("greenferry_mqtt_rejected_total", kind="load", reason="missing_field") == 1
        assert node.metric("greenferry_mqtt_rejected_total", kind="carbon", reason="too_old") == 1
        assert (
            node.metric("greenferry_mqtt_rejected_total", kind="demand_response", reason="unknown_dr_payload")
            == 1
        )
        assert (
            node.metric("greenferry_mqtt_rejected_total", kind="demand_response", reason="interval_order")
            == 1
        )
        assert node.metric("greenferry_mqtt_accepted_total", kind="production") == 1
        assert _value(node.board, SignalKind.PRODUCTION_W) == 1500.0
        assert node.board.latest(SignalKind.LOAD_W) is None

        rejected = [e for e in node.drain() if isinstance(e, SignalRejected)]
        assert len(rejected) == len(bad_production) + 6
        too_large = next(e for e in rejected if e.reason == "too_large")
        assert too_large.payload_bytes == 10 * 1024 * 1024
        assert too_large.kind is SignalKind.PRODUCTION_W

        production_logs = [r for r in caplog.records if f"{prefix}/pv/power" in r.getMessage()]
        assert len(production_logs) == 1, "one log line per topic per interval"
        assert "not_a_number" in production_logs[0].getMessage()
        assert len([r for r in caplog.records if f"{prefix}/load'" in r.getMessage()]) == 1

        clock.advance(61.0)  # the interval has passed: the next rejection is logged, with the count since
        await publish(mosquitto, f"{prefix}/pv/power", b"oops")
        await wait_until(
            lambda: len([r for r in caplog.records if f"{prefix}/pv/power" in r.getMessage()]) == 2
        )
    last = [r for r in caplog.records if f"{prefix}/pv/power" in r.getMessage()][-1].getMessage()
    assert f"and {len(bad_production) - 1} more" in last


@pytest.mark.skipif(not DR_EXAMPLES.is_dir(), reason=f"{DR_EXAMPLES} is not here")
async def test_the_openadr3_example_event_arrives(mosquitto: Mosquitto, prefix: str) -> None:
    example = (DR_EXAMPLES / "openadr3_event_example.json").read_bytes()
    event_json = json.dumps(json.loads(example)[0]).encode()
    node = Node(make_config(mosquitto, prefix, {"demand_response": {"topic": "dr", "format": "greenferry"}}))
    async with running(node):
        await wait_until(lambda: node.link.connected, what="connection")
        await publish(mosquitto, f"{prefix}/dr", event_json)
        await wait_until(lambda: node.board.latest(SignalKind.DEMAND_RESPONSE) is not None, what="DR event")
    event = _value(node.board, SignalKind.DEMAND_RESPONSE)
    assert isinstance(event, DemandResponseEvent)
    assert event.event_name == "price event 11-18-2022"
    assert event.intervals[0].payloads[0].values == (0.17,)
    assert node.link.dr_events.get("object-999-foo") is None, "it ended in 2023: not kept in the book"


def _value(board: SignalBoard, kind: SignalKind) -> Any:
    reading = board.latest(kind)
    return None if reading is None else reading.value


def _all_set(board: SignalBoard) -> bool:
    return all(board.latest(kind) is not None for kind in SignalKind)


def _iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
