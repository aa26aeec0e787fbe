"""Replay a built-in scenario's traces over MQTT, one scenario step at a time, on the demo's clock.

:func:`load_demo_trace` cuts a window out of a scenario with the simulator's own code
(:func:`~greenferry.sim.scenario.load_scenario`, :func:`~greenferry.sim.scenario.build_world`): per site the
renewable surplus (W) and the grid carbon intensity (gCO2/kWh) on the scenario grid. The default is three
sites of ``global-8`` eight and nine hours apart, Tokyo, Frankfurt and San Jose, on 2022-06-06, a clear
day on which the surplus moves from Japan (00-08 UTC) to Germany (08-16 UTC) to California (16-24 UTC).

:class:`TraceReplayer` publishes, at the start of every step and per site, retained, on the topics of
:class:`SiteTopics`:

- ``production``: the site's surplus in W as a plain number (``format = "number"``). The scenario's surplus
  is the renewable production net of the site's own base load, so the demo nodes configure no ``load``
  signal and their ``surplus_w`` equals the trace;
- ``carbon``: the grid carbon intensity, gCO2/kWh, a plain number;
- ``surplus_forecast``: a perfect forecast from the trace, greenferry's window list
  (``[{"start", "end", "power_w"}]``, ISO 8601 UTC times, ``format = "greenferry"``), the steps of the next
  ``forecast_horizon_s`` with surplus, equal neighbours merged.

Nothing here touches the network itself: the replayer publishes through any :class:`Publisher`
(:class:`~greenferry.adapters.mqtt.MqttLink` in the demo).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from greenferry.core.clock import Clock
from greenferry.core.payloads import MAX_WINDOWS
from greenferry.core.signals import SurplusWindow
from greenferry.core.units import parse_duration_s
from greenferry.errors import ConfigError
from greenferry.sim.scenario import ScenarioSpec, build_world, load_scenario

__all__ = [
    "DEFAULT_FORECAST_HORIZON_S",
    "DEFAULT_SCENARIO",
    "DEFAULT_SITES",
    "DEFAULT_START",
    "DEFAULT_TOPIC_PREFIX",
    "DemoTrace",
    "Publisher",
    "SiteTopics",
    "SiteTrace",
    "TraceReplayer",
    "format_number",
    "load_demo_trace",
    "windows_payload",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

DEFAULT_SCENARIO = "global-8"
DEFAULT_SITES = ("JP-TK", "DE-LU", "US-CAL-CISO")
DEFAULT_START = dt.datetime(2022, 6, 6, tzinfo=dt.UTC)
DEFAULT_TOPIC_PREFIX = "greenferry-demo/sites"
DEFAULT_FORECAST_HORIZON_S = 12 * 3600.0


class Publisher(Protocol):
    """Something that publishes MQTT messages (:class:`~greenferry.adapters.mqtt.MqttLink` does)."""

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish one message.

        Raises:
            ServiceUnavailableError: the broker is not reachable or did not take the message.
        """
        ...


@dataclass(frozen=True, slots=True)
class SiteTopics:
    """The signal topics of one demo site."""

    production: str
    carbon: str
    surplus_forecast: str

    @classmethod
    def for_site(cls, site: str, prefix: str = DEFAULT_TOPIC_PREFIX) -> SiteTopics:
        """``<prefix>/<site>/production_w``, ``.../carbon_g_per_kwh``, ``.../surplus_forecast``."""
        base = f"{prefix.rstrip('/')}/{site}"
        return cls(f"{base}/production_w", f"{base}/carbon_g_per_kwh", f"{base}/surplus_forecast")


@dataclass(frozen=True)
class SiteTrace:
    """One site's replayed series on the scenario grid (index = step)."""

    name: str
    timezone: str  # IANA name, from the scenario
    surplus_w: FloatArray
    carbon_g_per_kwh: FloatArray


@dataclass(frozen=True)
class DemoTrace:
    """The replayed window of a scenario: ``n_steps`` steps from ``start_s``, plus forecast look-ahead.

    The series of every site are longer than ``n_steps`` by the forecast horizon, so the forecast
    published at the last replayed step still reaches ``forecast_horizon_s`` ahead.
    """

    scenario: str
    start_s: float
    step_s: float
    n_steps: int
    sites: tuple[SiteTrace, ...]

    @property
    def end_s(self) -> float:
        """End of the replayed window (UTC POSIX s)."""
        return self.start_s + self.n_steps * self.step_s

    @property
    def site_names(self) -> tuple[str, ...]:
        """The sites, in order."""
        return tuple(site.name for site in self.sites)

    def site_index(self, name: str) -> int:
        """Position of site ``name``.

        Raises:
            KeyError: no such site in this trace.
        """
        for index, site in enumerate(self.sites):
            if site.name == name:
                return index
        raise KeyError(f"no site {name!r} in the demo trace; sites: {', '.join(self.site_names)}")

    def step_index(self, time_s: float) -> int:
        """The step in force at ``time_s`` (negative before the start; may exceed the series)."""
        return math.floor((time_s - self.start_s) / self.step_s + 1e-9)

    def step_start_s(self, step: int) -> float:
        """Start of step ``step`` (UTC POSIX s)."""
        return self.start_s + step * self.step_s

    def surplus_at(self, site: int, time_s: float) -> float:
        """The trace's surplus (W) of site ``site`` at ``time_s``; 0 outside the series."""
        series = self.sites[site].surplus_w
        k = self.step_index(time_s)
        return float(series[k]) if 0 <= k < series.size else 0.0

    def carbon_at(self, site: int, time_s: float) -> float | None:
        """The trace's carbon intensity (gCO2/kWh) of site ``site`` at ``time_s``; None outside the series."""
        series = self.sites[site].carbon_g_per_kwh
        k = self.step_index(time_s)
        return float(series[k]) if 0 <= k < series.size else None

    def forecast_windows(self, site: int, step: int, horizon_s: float) -> tuple[SurplusWindow, ...]:
        """The perfect surplus forecast issued at step ``step``: windows over the next ``horizon_s``.

        One window per run of steps with the same positive surplus; steps without surplus are left out
        (greenferry's schema: an absent span means no surplus). At most :data:`MAX_WINDOWS`.
        """
        series = self.sites[site].surplus_w
        first = max(0, step)
        last = min(series.size, first + max(0, math.ceil(horizon_s / self.step_s - 1e-9)))
        windows: list[SurplusWindow] = []
        k = first
        while k < last and len(windows) < MAX_WINDOWS:
            power_w = float(series[k])
            run_end = k + 1
            while run_end < last and float(series[run_end]) == power_w:
                run_end += 1
            if power_w > 0:
                windows.append(SurplusWindow(self.step_start_s(k), self.step_start_s(run_end), power_w))
            k = run_end
        return tuple(windows)

    def nonrenewable_j(self, site: int, t0_s: float, t1_s: float, power_w: float) -> float:
        """Energy (J) that ``power_w`` drawn over ``[t0_s, t1_s)`` takes beyond the site's surplus.

        The surplus is the trace's, held over each step, and counts as zero outside the series.
        """
        if not t1_s > t0_s or not power_w > 0:
            return 0.0
        series = self.sites[site].surplus_w
        total_j = 0.0
        t_s = t0_s
        while t_s < t1_s:
            k = self.step_index(t_s)
            segment_end_s = min(t1_s, self.step_start_s(k + 1))
            if segment_end_s <= t_s:  # float rounding at a step boundary
                segment_end_s = min(t1_s, t_s + self.step_s)
            surplus_w = float(series[k]) if 0 <= k < series.size else 0.0
            total_j += max(0.0, power_w - surplus_w) * (segment_end_s - t_s)
            t_s = segment_end_s
        return total_j


def load_demo_trace(
    scenario: str = DEFAULT_SCENARIO,
    sites: Sequence[str] = DEFAULT_SITES,
    start: dt.datetime = DEFAULT_START,
    duration_s: float = 86400.0,
    forecast_horizon_s: float = DEFAULT_FORECAST_HORIZON_S,
) -> DemoTrace:
    """Cut the demo's window out of a scenario with the simulator's own trace code.

    Args:
        scenario: a built-in scenario name or a scenario file.
        sites: the scenario's sites to replay (names as in the file), in display order.
        start: first replayed instant (a time-zone-aware datetime); the scenario's traces must cover it.
        duration_s: replayed span (s); rounded up to whole scenario steps.
        forecast_horizon_s: how far the published forecasts look ahead (s); the trace is built that much
            longer.

    The scenario is rebuilt over the window only (``start`` for the replayed span plus the horizon), so a
    source's wrapping ``shift`` wraps within that window, and ``replay = true`` relabels its trace onto
    ``start``; for scenarios without either (``global-8``) the series equal the full scenario's.

    Returns:
        The replayed series of every site.

    Raises:
        ConfigError: unknown scenario or site, no sites or a repeated one, a naive ``start``, a duration
            or horizon that is not a positive finite number, or traces that do not cover the window
            (the message names the missing range).
    """
    if not sites:
        raise ConfigError("demo sites: name at least one site of the scenario")
    if len(set(sites)) != len(sites):
        raise ConfigError(f"demo sites: {list(sites)} names a site twice")
    if start.tzinfo is None or start.utcoffset() is None:
        raise ConfigError(f"demo start {start.isoformat()} has no time zone; use e.g. 2022-06-06T00:00:00Z")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ConfigError(f"demo duration_s must be a positive number of seconds, got {duration_s!r}")
    if not (math.isfinite(forecast_horizon_s) and forecast_horizon_s >= 0):
        raise ConfigError(f"demo forecast_horizon_s must be >= 0 seconds, got {forecast_horizon_s!r}")
    spec, base_dir = load_scenario(scenario)
    by_name = {site.name: site for site in spec.sites}
    unknown = [name for name in sites if name not in by_name]
    if unknown:
        raise ConfigError(
            f"demo sites: {', '.join(map(repr, unknown))} not in scenario {spec.name!r}; "
            f"its sites: {', '.join(by_name)}"
        )
    step_s = parse_duration_s(spec.step)
    n_steps = max(1, math.ceil(duration_s / step_s - 1e-9))
    n_total = n_steps + math.ceil(forecast_horizon_s / step_s - 1e-9)
    data = spec.model_dump(mode="python")
    data["start"] = start.astimezone(dt.UTC)
    data["duration"] = f"{n_total * step_s:.0f}s"
    data["sites"] = [by_name[name].model_dump(mode="python") for name in sites]
    data["network"]["links"] = [
        link for link in data["network"]["links"] if all(end in sites for end in link["between"])
    ]
    if data["jobs"]["home"] != "random":
        data["jobs"]["home"] = "random"  # the demo submits its own job; the scenario's mix is not used
    try:
        window = ScenarioSpec.model_validate(data)
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        raise ConfigError(f"scenario {spec.name!r} cut to the demo window: {err}") from err
    try:
        world = build_world(window, base_dir)
    except ValueError as err:  # a trace that does not cover the window (TraceError, ConfigError)
        raise ConfigError(
            f"scenario {spec.name!r} cannot replay {start.isoformat()} + {duration_s:g} s: {err}"
        ) from err
    traces = []
    for name, site in zip(sites, world.sites, strict=True):
        surplus = np.asarray(site.surplus_w, dtype=np.float64)
        carbon = np.asarray(site.carbon_g_per_kwh, dtype=np.float64)
        if not (np.all(np.isfinite(surplus)) and np.all(np.isfinite(carbon))):
            raise ConfigError(f"scenario {spec.name!r}, site {name}: the trace has gaps (NaN) in the window")
        traces.append(SiteTrace(name, by_name[name].timezone, surplus, carbon))
    return DemoTrace(spec.name, world.start_s, step_s, n_steps, tuple(traces))


def format_number(value: float) -> bytes:
    """A finite float as plain number text that parses back to the same float (``repr``).

    Raises:
        ValueError: NaN or an infinity (no payload format carries them).
    """
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return repr(float(value) + 0.0).encode()


def _iso(time_s: float) -> str:
    return dt.datetime.fromtimestamp(time_s, dt.UTC).isoformat().replace("+00:00", "Z")


def windows_payload(windows: Sequence[SurplusWindow]) -> bytes:
    """greenferry's surplus-forecast payload: ``[{"start", "end", "power_w"}, ...]`` with ISO UTC times."""
    return json.dumps(
        [{"start": _iso(w.start_s), "end": _iso(w.end_s), "power_w": w.power_w} for w in windows]
    ).encode()


class TraceReplayer:
    """Publishes each site's signals at the start of every step of a :class:`DemoTrace`.

    Args:
        trace: what to replay.
        clock: the demo's clock (a :class:`~greenferry.demo.clock.ScaledClock`; a ManualClock in tests).
        publisher: where messages go.
        topics: per site name, its topics (default :meth:`SiteTopics.for_site` under ``topic_prefix``).
        topic_prefix: prefix of the default topics.
        forecast_horizon_s: look-ahead of the published forecast (s).
        qos: QoS of every message (all are retained).
        on_step: called with ``(step, time_s)`` after a step's messages are published (the view's log).

    Raises:
        ConfigError: ``topics`` lacks a site of the trace.
    """

    def __init__(
        self,
        trace: DemoTrace,
        clock: Clock,
        publisher: Publisher,
        *,
        topics: Mapping[str, SiteTopics] | None = None,
        topic_prefix: str = DEFAULT_TOPIC_PREFIX,
        forecast_horizon_s: float = DEFAULT_FORECAST_HORIZON_S,
        qos: int = 1,
        on_step: Callable[[int, float], None] | None = None,
    ) -> None:
        self.trace = trace
        self._clock = clock
        self._publisher = publisher
        if topics is None:
            topics = {name: SiteTopics.for_site(name, topic_prefix) for name in trace.site_names}
        missing = [name for name in trace.site_names if name not in topics]
        if missing:
            raise ConfigError(f"replayer: no topics for site(s) {', '.join(missing)}")
        self.topics = dict(topics)
        self._horizon_s = forecast_horizon_s
        self._qos = qos
        self._on_step = on_step
        self.steps_published = 0
        self.steps_skipped = 0
        self.messages_published = 0
        self.last_step: int | None = None

    async def publish_step(self, step: int) -> None:
        """Publish every site's production, carbon and forecast of step ``step`` (retained).

        Raises:
            IndexError: ``step`` is outside the replayed window.
            ServiceUnavailableError: from the publisher.
        """
        trace = self.trace
        if not 0 <= step < trace.n_steps:
            raise IndexError(f"step {step} is outside the replayed 0..{trace.n_steps - 1}")
        for index, site in enumerate(trace.sites):
            topics = self.topics[site.name]
            windows = trace.forecast_windows(index, step, self._horizon_s)
            messages = (
                (topics.production, format_number(float(site.surplus_w[step]))),
                (topics.carbon, format_number(float(site.carbon_g_per_kwh[step]))),
                (topics.surplus_forecast, windows_payload(windows)),
            )
            for topic, payload in messages:
                await self._publisher.publish(topic, payload, qos=self._qos, retain=True)
                self.messages_published += 1
        self.steps_published += 1
        self.last_step = step
        if self._on_step is not None:
            self._on_step(step, trace.step_start_s(step))

    async def run(self) -> None:
        """Publish each step at its start, from the one in force now to the last; returns after the last.

        Before the trace starts it waits for the first step. A step whose successor has already begun
        (the publisher was slow, or the clock jumped) is skipped, so the nodes follow the clock rather than
        a backlog; skips are counted in ``steps_skipped``.
        """
        trace = self.trace
        step = max(0, trace.step_index(self._clock.now_s()))
        while step < trace.n_steps:
            wait_s = trace.step_start_s(step) - self._clock.now_s()
            if wait_s > 0:
                await self._clock.sleep(wait_s)
            current = trace.step_index(self._clock.now_s())
            if current > step:
                newest = min(current, trace.n_steps - 1)
                self.steps_skipped += newest - step
                logger.debug("replayer is behind the clock: skipping steps %d..%d", step, newest - 1)
                step = newest
            await self.publish_step(step)
            step += 1
        logger.info("replayed %d step(s) of %s", self.steps_published, trace.scenario)
