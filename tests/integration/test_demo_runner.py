"""The live demo end to end: three real node daemons on an accelerated clock, the trace replayed over the
EMBEDDED amqtt broker, statuses collected into the view's state; plus the broker and the runner's edges."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import tomllib
from pathlib import Path

import aiomqtt
import pytest

from greenferry.adapters.embedded_broker import EmbeddedBroker
from greenferry.demo.replayer import DemoTrace, SiteTopics, load_demo_trace
from greenferry.demo.runner import (
    DemoOptions,
    DemoSummary,
    node_configs,
    node_name,
    parse_broker_url,
    run_demo,
)
from greenferry.demo.view import DemoState
from greenferry.errors import ConfigError, ServiceUnavailableError
from greenferry.hardware_profiles import resolve_profile
from greenferry.testing.services import free_port

pytestmark = pytest.mark.integration

# Two simulated hours at 3600x: about two real seconds, eight 15-minute steps.
OPTIONS = DemoOptions(duration_s=7200.0, speedup=3600.0, headless=True)


@pytest.fixture(scope="module")
def demo_run() -> tuple[DemoSummary, DemoState]:
    """One short headless demo (its own event loop), shared by the tests that read its results."""
    state = DemoState()
    summary = asyncio.run(run_demo(OPTIONS, state=state))
    return summary, state


@pytest.fixture(scope="module")
def demo_trace() -> DemoTrace:
    """The trace the demo replayed (the same window, loaded again)."""
    return load_demo_trace(duration_s=OPTIONS.duration_s, forecast_horizon_s=OPTIONS.forecast_horizon_s)


def test_every_node_came_online_and_shut_down_cleanly(demo_run: tuple[DemoSummary, DemoState]) -> None:
    summary, state = demo_run
    assert summary.nodes == ("node-jp-tk", "node-de-lu", "node-us-cal-ciso")
    assert summary.nodes_online == 3
    assert summary.broker_url.startswith("mqtt://127.0.0.1:")
    for view in state.nodes.values():
        assert view.seen_online
        assert view.state == "offline"
        assert view.reason == "shutdown"
    assert summary.work_dir is None


def test_the_status_topics_carried_the_replayed_surplus(
    demo_run: tuple[DemoSummary, DemoState],
    demo_trace: DemoTrace,
) -> None:
    """Every fresh surplus a node reported is the trace's value of a step already begun, in trace order.

    How far a report lags its step depends on how busy the machine is (at 3600x a tenth of a real second
    is six simulated minutes), so the check is order, not a fixed lag: each report is matched to the
    earliest step at or after the previous match, and not after its own time, with exactly that value.
    """
    _, state = demo_run
    for view in state.nodes.values():
        series = demo_trace.sites[demo_trace.site_index(view.site)].surplus_w
        fresh = [p for p in view.surplus_history if not p.stale]
        assert fresh, f"{view.node} never reported a fresh surplus"
        matched: list[int] = []
        for point in fresh:
            now_step = min(demo_trace.step_index(point.time_s), series.size - 1)
            start = matched[-1] if matched else 0
            hits = [k for k in range(start, now_step + 1) if float(series[k]) == point.surplus_w]
            assert hits, (
                f"{view.node} reported {point.surplus_w} W at step {now_step}, not a trace value of "
                f"steps {start}..{now_step}: {[float(v) for v in series[start : now_step + 1]]}"
            )
            matched.append(hits[0])
        if float(series[: demo_trace.n_steps].max()) > float(series[: demo_trace.n_steps].min()):
            assert len(set(matched)) >= 2, f"{view.node} reported one step only: {sorted(set(matched))}"
    jp = state.nodes["node-jp-tk"]
    assert max(p.surplus_w for p in jp.surplus_history) > 1000.0  # night-time wind in Tokyo on the day


def test_the_summary_is_consistent(
    demo_run: tuple[DemoSummary, DemoState],
    demo_trace: DemoTrace,
) -> None:
    summary, _ = demo_run
    n_steps = demo_trace.n_steps
    assert summary.simulated_s >= OPTIONS.duration_s
    assert summary.steps_replayed + summary.steps_skipped == n_steps
    assert summary.messages_replayed == summary.steps_replayed * 3 * 3
    # The example job ran (its steps were reported), never in two places, and nothing failed.
    assert summary.steps_completed > 0
    assert summary.double_runs == 0
    assert summary.failed_migrations == 0
    # Modelled GPUs, one per node, measured through their power samples: idle, or training where the job is.
    profile = resolve_profile(OPTIONS.hardware_profile)
    idle_w = profile.idle_power_w
    busy_w = profile.train_power_w
    assert summary.energy_kwh == pytest.approx(sum(summary.node_energy_kwh.values()))
    assert summary.nonrenewable_kwh == pytest.approx(sum(summary.node_nonrenewable_kwh.values()))
    for node, energy_kwh in summary.node_energy_kwh.items():
        assert 0.0 < energy_kwh <= busy_w * summary.simulated_s / 3.6e6 * (1 + 1e-9), node
    assert max(summary.node_energy_kwh.values()) > idle_w * summary.simulated_s / 3.6e6  # the job's node
    # Over these two hours Frankfurt has no surplus at all, Tokyo and San Jose more than the idle draw.
    surplus = {site.name: site.surplus_w[: n_steps + 1] for site in demo_trace.sites}
    assert surplus["DE-LU"].max() == 0.0
    assert surplus["JP-TK"].min() > idle_w
    assert surplus["US-CAL-CISO"].min() > idle_w
    assert summary.node_nonrenewable_kwh["node-de-lu"] == pytest.approx(summary.node_energy_kwh["node-de-lu"])
    assert summary.node_nonrenewable_kwh["node-jp-tk"] == 0.0
    assert summary.node_nonrenewable_kwh["node-us-cal-ciso"] == 0.0


# -- the embedded broker ------------------------------------------------------------------------------


async def test_the_embedded_broker_serves_retained_messages_on_a_loopback_port() -> None:
    broker = EmbeddedBroker()
    with pytest.raises(RuntimeError, match="not running"):
        _ = broker.port
    async with broker:
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        async with aiomqtt.Client("127.0.0.1", broker.port) as publisher:
            await publisher.publish("demo/a", b"1", qos=1, retain=True)
        async with aiomqtt.Client("127.0.0.1", broker.port) as subscriber:
            await subscriber.subscribe("demo/#", qos=1)
            message = await asyncio.wait_for(anext(subscriber.messages), 5)
            assert (message.topic.value, message.payload, message.retain) == ("demo/a", b"1", True)
    with pytest.raises(RuntimeError):
        _ = broker.port


async def test_a_new_client_gets_no_retained_messages_of_other_clients_subscriptions() -> None:
    # amqtt 0.12.1 sends every connecting client the retained messages of every filter any client
    # subscribed; the embedded broker confines that replay to the client's own subscriptions.
    async with (
        EmbeddedBroker() as broker,
        aiomqtt.Client("127.0.0.1", broker.port) as other,
    ):
        await other.subscribe("others/#", qos=1)
        await other.publish("others/status", b"not yours", qos=1, retain=True)
        await other.publish("mine/signal", b"yours", qos=1, retain=True)
        async with aiomqtt.Client("127.0.0.1", broker.port) as newcomer:
            await newcomer.subscribe("mine/#", qos=1)
            first = await asyncio.wait_for(anext(newcomer.messages), 5)
            assert (first.topic.value, first.payload) == ("mine/signal", b"yours")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(anext(newcomer.messages), 0.2)


async def test_a_port_in_use_is_reported() -> None:
    async with EmbeddedBroker() as first:
        with pytest.raises(ServiceUnavailableError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            async with EmbeddedBroker(port=first.port):
                pass


# -- the runner's edges -----------------------------------------------------------------------------


def test_node_configs_are_written_as_toml_and_load_back(tmp_path: Path) -> None:
    trace = load_demo_trace(duration_s=3600.0)
    configs = node_configs(OPTIONS, trace, tmp_path, "127.0.0.1", 18830)
    assert list(configs) == ["node-jp-tk", "node-de-lu", "node-us-cal-ciso"]
    for site in trace.sites:
        path, config = configs[node_name(site.name)]
        assert path == tmp_path / node_name(site.name) / "node.toml"
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        assert raw["node"]["site"] == site.name
        topics = SiteTopics.for_site(site.name)
        assert config.signals.production is not None
        assert config.signals.production.topic == topics.production
        assert config.signals.carbon is not None
        assert config.signals.carbon.topic == topics.carbon
        assert config.signals.surplus_forecast is not None
        assert config.signals.surplus_forecast.topic == topics.surplus_forecast
        assert config.signals.surplus_forecast.format == "greenferry"
        assert config.signals.load is None  # the replayed production is already net of the site's load
        assert config.signals.production.max_age_s == 2.5 * trace.step_s
        assert config.node.data_dir == tmp_path / node_name(site.name) / "data"
        assert config.http.port == 0
        assert config.power.source == "model"
        assert not config.power.rapl
        assert config.mqtt is not None
        assert (config.mqtt.host, config.mqtt.port) == ("127.0.0.1", 18830)
        assert config.mqtt.status_interval_s == OPTIONS.status_interval_s


def test_a_bad_hardware_profile_fails_when_the_configs_load(tmp_path: Path) -> None:
    trace = load_demo_trace(duration_s=3600.0)
    bad = dataclasses.replace(OPTIONS, hardware_profile="no-such-gpu")
    with pytest.raises(ConfigError, match="no-such-gpu"):
        node_configs(bad, trace, tmp_path, "127.0.0.1", 1883)


@pytest.mark.parametrize(
    ("url", "expected"),
    [("mqtt://127.0.0.1:1884", ("127.0.0.1", 1884)), ("mqtt://broker.local", ("broker.local", 1883))],
)
def test_broker_urls(url: str, expected: tuple[str, int]) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    "url", ["mqtts://127.0.0.1:8883", "tcp://x:1", "mqtt://:1883", "mqtt://x:99999", "mqtt://x/t"]
)
def test_bad_broker_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="broker URL"):
        DemoOptions(broker_url=url)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("speedup", 0.0),
        ("duration_s", -1.0),
        ("status_interval_s", 0.5),
        ("power_interval_s", math.nan),
        ("forecast_horizon_s", math.inf),
        ("sites", ()),
    ],
)
def test_bad_options_are_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        DemoOptions(**{field: value})  # type: ignore[arg-type]


async def test_an_unreachable_broker_fails_within_the_ready_timeout() -> None:
    options = dataclasses.replace(
        OPTIONS, broker_url=f"mqtt://127.0.0.1:{free_port()}", ready_timeout_real_s=0.5
    )
    with pytest.raises(ServiceUnavailableError, match="did not accept a connection"):
        await run_demo(options)
