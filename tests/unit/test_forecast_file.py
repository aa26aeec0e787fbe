"""The ``file`` forecast: a provided (Solcast) forecast with a same-time-yesterday fallback.

Pure forecaster on synthetic arrays (core/forecast.py), the scenario's conversion of Solcast-format
forecast files to decision epochs (sim/scenario.py), malformed scenarios, and the real Solcast forecast
of the development data set (skipped if absent, failed in CI).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from worlds import shared_file

from greenferry.core.forecast import (
    FORECAST_KINDS,
    FileForecast,
    SameTimeYesterdayForecast,
    make_forecaster,
)
from greenferry.errors import ConfigError, TraceError
from greenferry.sim import traces
from greenferry.sim.runner import compare
from greenferry.sim.scenario import (
    ScenarioSpec,
    ScenarioWorld,
    build_world,
    load_scenario,
    provided_forecast_w,
)

FloatArray = npt.NDArray[np.float64]

EPOCH_S = 3600.0  # one-hour epochs: a day is 24 epochs
DAY = 24
N_SITES, N_EPOCHS, N_LEADS = 3, DAY * 4, 5

REPO = Path(__file__).parents[2]
SOLCAST_DIR = ("solar", "vessim_solcast2022_global")


def truth_w(seed: int = 0) -> FloatArray:
    return np.random.default_rng(seed).uniform(0.0, 5000.0, (N_SITES, N_EPOCHS))


def provided(seed: int = 1) -> FloatArray:
    """A provided forecast: site 0 complete, site 1 with holes, site 2 without a file (all NaN)."""
    out = np.random.default_rng(seed).uniform(0.0, 5000.0, (N_SITES, N_EPOCHS, N_LEADS))
    out[1, ::3, 2] = np.nan
    out[1, 5, :] = np.nan
    out[2] = np.nan
    return out


# --- the pure forecaster ---------------------------------------------------------------------------------


def test_file_is_a_forecast_kind() -> None:
    assert "file" in FORECAST_KINDS
    fc = make_forecaster("file", truth_w(), EPOCH_S, provided_w=provided())
    assert isinstance(fc, FileForecast)


@pytest.mark.parametrize("epoch", [0, 5, DAY, DAY + 6, 2 * DAY + 13, N_EPOCHS - 1])
@pytest.mark.parametrize("horizon", [1, 3, N_LEADS, DAY + 2])
def test_file_values_where_present_fallback_elsewhere_measured_at_lead_0(epoch: int, horizon: int) -> None:
    truth, given = truth_w(), provided()
    measured = np.array([11.0, 22.0, 33.0])
    out = make_forecaster("file", truth, EPOCH_S, provided_w=given).forecast(epoch, measured, horizon)
    fallback = SameTimeYesterdayForecast(truth, EPOCH_S).forecast(epoch, measured, horizon)
    assert out.shape == (N_SITES, horizon)
    np.testing.assert_array_equal(out[:, 0], measured)
    for s in range(N_SITES):
        for k in range(1, horizon):
            value = given[s, epoch, k] if k < N_LEADS else math.nan
            expected = value if np.isfinite(value) else fallback[s, k]
            assert out[s, k] == expected, (s, k)
    # Site 2 has no file: all fallback (but lead 0); site 0's file covers leads 1..L-1.
    np.testing.assert_array_equal(out[2, 1:], fallback[2, 1:])
    n = min(horizon, N_LEADS)
    np.testing.assert_array_equal(out[0, 1:n], given[0, epoch, 1:n])


def test_file_never_reads_the_future_except_through_the_file() -> None:
    epoch, horizon = 2 * DAY + 7, DAY + 3
    truth, given = truth_w(), provided()
    measured = truth[:, epoch].copy()
    before = make_forecaster("file", truth, EPOCH_S, provided_w=given).forecast(epoch, measured, horizon)
    # New future actuals, and new forecasts issued after now: nothing the forecaster may see changes.
    truth2, given2 = truth.copy(), given.copy()
    truth2[:, epoch:] = np.random.default_rng(7).uniform(0.0, 9000.0, truth2[:, epoch:].shape)
    given2[:, epoch + 1 :] = np.random.default_rng(8).uniform(0.0, 9000.0, given2[:, epoch + 1 :].shape)
    after = make_forecaster("file", truth2, EPOCH_S, provided_w=given2).forecast(epoch, measured, horizon)
    np.testing.assert_array_equal(before, after)
    # ... while what the file said at ``epoch`` does show.
    given3 = given.copy()
    given3[0, epoch, 1] = 123.0
    changed = make_forecaster("file", truth, EPOCH_S, provided_w=given3).forecast(epoch, measured, horizon)
    assert changed[0, 1] == 123.0


def test_file_without_provided_values_is_the_fallback() -> None:
    truth = truth_w()
    measured = truth[:, 30].copy()
    fallback = SameTimeYesterdayForecast(truth, EPOCH_S).forecast(30, measured, 10)
    fallback[:, 0] = measured
    for given in (None, np.full((N_SITES, N_EPOCHS, N_LEADS), np.nan)):
        out = make_forecaster("file", truth, EPOCH_S, provided_w=given).forecast(30, measured, 10)
        np.testing.assert_array_equal(out, fallback)
    # An epoch past the provided array falls back too.
    short = provided()[:, :20]
    out = make_forecaster("file", truth, EPOCH_S, provided_w=short).forecast(30, measured, 10)
    np.testing.assert_array_equal(out, fallback)


def test_file_forecast_does_not_alias_its_inputs() -> None:
    truth, given = truth_w(), provided()
    saved_truth, saved_given = truth.copy(), given.copy()
    out = make_forecaster("file", truth, EPOCH_S, provided_w=given).forecast(DAY + 1, truth[:, 0], 8)
    out[:] = -1.0
    np.testing.assert_array_equal(truth, saved_truth)
    np.testing.assert_array_equal(given, saved_given)


def test_file_rejects_a_provided_array_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match="provided_w must be"):
        make_forecaster("file", truth_w(), EPOCH_S, provided_w=np.zeros((N_SITES + 1, N_EPOCHS, 3)))
    with pytest.raises(ValueError, match="provided_w must be"):
        make_forecaster("file", truth_w(), EPOCH_S, provided_w=np.zeros((N_SITES, N_EPOCHS)))


# --- scenarios with synthetic Solcast-format files ---------------------------------------------------------

START = datetime(2022, 6, 8, tzinfo=UTC)
CITIES = ("Alpha", "Beta")
CAPACITY_W = 2000.0
BASE_LOAD_W = 300.0
ISSUE_EVERY_MIN = 10  # issues do not fall on every 15-minute epoch start
N_TARGETS = 8  # 5..40 minutes ahead
DURATION_MIN = 180  # the synthetic scenarios' duration


def _fmt(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S")


def actual_fraction(step: int, city: int) -> float:
    return round(0.5 + 0.45 * math.sin(step / 7.0 + city), 6)


def forecast_fraction(issue: int, target: int, city: int) -> float:
    return round(((issue * 37 + target * 11 + issue * target * 5 + city * 3) % 17) / 16.0, 6)


def write_solcast_files(tmp_path: Path, hours: int = 4, cities: tuple[str, ...] = CITIES) -> None:
    """An actual file (``datetime`` = end of each 5-min period) and a forecast file (issue ``datetime``,
    ``period_end`` of each target) in vessim's layout, covering ``hours`` from START."""
    lines = ["datetime," + ",".join(cities)]
    for i in range(hours * 12):
        end = START + timedelta(minutes=5 * (i + 1))
        lines.append(_fmt(end) + "," + ",".join(str(actual_fraction(i, c)) for c in range(len(cities))))
    (tmp_path / "actual.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    lines = ["datetime,period_end," + ",".join(cities)]
    for n in range(hours * 60 // ISSUE_EVERY_MIN):
        issue = START + timedelta(minutes=ISSUE_EVERY_MIN * n)
        for j in range(N_TARGETS):
            end = issue + timedelta(minutes=5 * (j + 1))
            values = ",".join(str(forecast_fraction(n, j, c)) for c in range(len(cities)))
            lines.append(f"{_fmt(issue)},{_fmt(end)},{values}")
    (tmp_path / "forecast.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def expected_epoch_forecast_w(epoch: int, lead: int, city: int, *, epoch_min: int = 15) -> float:
    """By hand: the latest issue at or before the epoch start, its targets over the epoch's 5-min steps,
    each scaled and less the base load (at least 0), averaged; NaN if a step has no target."""
    t0 = epoch * epoch_min  # the epoch's start, minutes after START
    n = t0 // ISSUE_EVERY_MIN
    if t0 + (lead + 1) * epoch_min > DURATION_MIN:
        return math.nan  # past the end of the scenario
    issue = n * ISSUE_EVERY_MIN
    steps = []
    for m in range(epoch_min // 5):
        j = (t0 + lead * epoch_min + 5 * m - issue) // 5
        if not 0 <= j < N_TARGETS:
            return math.nan
        steps.append(max(CAPACITY_W * forecast_fraction(n, j, city) - BASE_LOAD_W, 0.0))
    return float(np.mean(steps))


SCENARIO = """\
name = "solcast-tiny"
start = 2022-06-08T00:00:00Z
duration = "3h"
step = "5min"
decision_interval = "15min"

[forecast]
type = "file"

[[sites]]
name = "alpha"
base_load_w = {base}
[[sites.sources]]
type = "solcast"
path = "actual.csv"
forecast_path = "forecast.csv"
city = "Alpha"
capacity_w = {cap}
{alpha_extra}

[[sites]]
name = "beta"
base_load_w = {base}
[[sites.sources]]
type = "solcast"
path = "actual.csv"
city = "Beta"
capacity_w = {cap}
{beta_extra}

[jobs]
count = 2
spacing = "30min"
work = ["30min", "1h"]
checkpoint = ["1GB", "2GB"]
isolated = true
"""


def scenario_text(alpha_extra: str = "", beta_extra: str = "", forecast_type: str = "file") -> str:
    return SCENARIO.format(
        base=BASE_LOAD_W, cap=CAPACITY_W, alpha_extra=alpha_extra, beta_extra=beta_extra
    ).replace('type = "file"', f'type = "{forecast_type}"')


def write_scenario(tmp_path: Path, text: str) -> Path:
    write_solcast_files(tmp_path)
    path = tmp_path / "scenario.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> tuple[ScenarioWorld, ScenarioSpec]:
    spec, base = load_scenario(write_scenario(tmp_path, text))
    return build_world(spec, base, 0), spec


def test_scenario_converts_the_forecast_file_to_epochs_in_w(tmp_path: Path) -> None:
    world, _ = load(tmp_path, scenario_text())
    given = world.provided_forecast_w
    assert given is not None
    n_epochs = 12  # 3 h of 15-min epochs
    # 40 min of targets reach into the third 15-min epoch (lead 2), which they never cover whole.
    assert given.shape == (2, n_epochs, 3)
    for e in range(n_epochs):
        for lead in range(3):
            np.testing.assert_allclose(given[0, e, lead], expected_epoch_forecast_w(e, lead, 0), atol=1e-9)
    assert np.isfinite(given[0, :-1, :2]).all()  # the last epoch's lead 1 is past the end
    assert np.isnan(given[0, :, 2]).all()
    assert np.isnan(given[1]).all()  # beta has no forecast file
    # The actual file still makes the surplus, scaled and less the base load the same way.
    actual = np.array([actual_fraction(i, 0) for i in range(world.n_steps)])
    np.testing.assert_allclose(world.surplus_w[0], np.maximum(CAPACITY_W * actual - BASE_LOAD_W, 0.0))


def test_world_forecaster_returns_the_file_values(tmp_path: Path) -> None:
    world, spec = load(tmp_path, scenario_text())
    fc = make_forecaster(
        "file", world.epoch_surplus_w, world.epoch_s, provided_w=provided_forecast_w(spec, world, "file")
    )
    for e in (0, 1, 5, 10):
        measured = world.surplus_w[:, e * world.epoch_steps].copy()
        out = fc.forecast(e, measured, 4)
        np.testing.assert_array_equal(out[:, 0], measured)
        np.testing.assert_allclose(out[0, 1], expected_epoch_forecast_w(e, 1, 0), atol=1e-9)
        # Beyond the file's reach, and for beta (no file): same-time-yesterday, i.e. persistence on day 1.
        np.testing.assert_array_equal(out[0, 2:], measured[0])
        np.testing.assert_array_equal(out[1, 1:], measured[1])


def test_other_kinds_get_no_provided_forecast(tmp_path: Path) -> None:
    world, spec = load(tmp_path, scenario_text())
    for kind in FORECAST_KINDS:
        if kind != "file":
            assert provided_forecast_w(spec, world, kind) is None


def test_replay_and_shift_move_the_forecast_like_the_actual_trace(tmp_path: Path) -> None:
    world, _ = load(tmp_path, scenario_text())
    shifted, _ = load(tmp_path, scenario_text(alpha_extra='shift = "+30min"'))
    plain, moved = world.provided_forecast_w, shifted.provided_forecast_w
    assert plain is not None
    assert moved is not None
    # Surplus and forecast both move two 15-min epochs later (wrapping); the forecast rows whose issue
    # and targets the wrap parts are dropped, so compare away from it.
    np.testing.assert_allclose(shifted.surplus_w[0], np.roll(world.surplus_w[0], 6))
    np.testing.assert_allclose(moved[0, 2:10], plain[0, 0:8], atol=1e-9)
    # Replay relabels the file to start at the scenario start: a file one day late reads the same.
    late = tmp_path / "late"
    late.mkdir()
    for name in ("actual.csv", "forecast.csv"):
        write_shifted(tmp_path / name, late / name, timedelta(days=1))
    path = late / "scenario.toml"
    path.write_text(scenario_text(alpha_extra="replay = true", beta_extra="replay = true"), encoding="utf-8")
    spec, base = load_scenario(path)
    replayed = build_world(spec, base, 0).provided_forecast_w
    assert replayed is not None
    np.testing.assert_allclose(replayed, plain, atol=1e-9)


def write_shifted(src: Path, dst: Path, delta: timedelta) -> None:
    """Copy a Solcast-format file with every timestamp moved by ``delta``."""
    out = []
    for n, line in enumerate(src.read_text(encoding="utf-8").splitlines()):
        if n == 0:
            out.append(line)
            continue
        cells = line.split(",")
        for c, cell in enumerate(cells):
            if len(cell) == 19 and cell[4] == "-":
                cells[c] = _fmt(datetime.strptime(cell, "%Y-%m-%d %H:%M:%S") + delta)
        out.append(",".join(cells))
    dst.write_text("\n".join(out) + "\n", encoding="utf-8")


def test_compare_runs_with_the_file_forecast(tmp_path: Path) -> None:
    spec, base = load_scenario(write_scenario(tmp_path, scenario_text()))
    comparison = compare(spec, base, ["lookahead", "oracle"], 1)
    assert comparison.forecast == "file"
    assert math.isfinite(comparison.summary["lookahead"]["nonrenewable_kwh"])


# --- malformed scenarios --------------------------------------------------------------------------------


def test_forecast_path_on_a_non_solcast_source_names_file_and_field(tmp_path: Path) -> None:
    write_solcast_files(tmp_path)
    (tmp_path / "gen.csv").write_text("time,power\n2022-06-08T00:00:00Z,1\n2022-06-08T04:00:00Z,1\n")
    text = scenario_text().replace(
        'type = "solcast"\npath = "actual.csv"\ncity = "Beta"\ncapacity_w = 2000.0',
        'type = "csv"\npath = "gen.csv"\ntime_column = "time"\nvalue_column = "power"\nunit = "W"\n'
        'forecast_path = "forecast.csv"',
    )
    assert 'type = "csv"' in text
    path = write_scenario(tmp_path, text)
    with pytest.raises(ConfigError, match=r"scenario\.toml: .*sites\.1\.sources\.0\.csv\.forecast_path"):
        load_scenario(path)


def test_forecast_file_without_the_city_names_file_and_column(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, scenario_text())
    write_solcast_files(tmp_path)
    forecast = tmp_path / "forecast.csv"
    forecast.write_text(forecast.read_text(encoding="utf-8").replace(",Alpha,", ",Gamma,", 1))
    spec, base = load_scenario(path)
    with pytest.raises(TraceError, match=r"forecast\.csv, column 'Alpha': unknown city"):
        build_world(spec, base, 0)


def test_missing_forecast_file_names_it(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, scenario_text().replace('"forecast.csv"', '"nowhere.csv"'))
    spec, base = load_scenario(path)
    with pytest.raises(TraceError, match=r"nowhere\.csv: file not found"):
        build_world(spec, base, 0)


def test_forecast_path_needs_the_site_s_only_source(tmp_path: Path) -> None:
    extra = '[[sites.sources]]\ntype = "solcast"\npath = "actual.csv"\ncity = "Beta"\ncapacity_w = 100.0'
    path = write_scenario(tmp_path, scenario_text(alpha_extra=extra))
    with pytest.raises(ConfigError, match=r"scenario\.toml: sites\.0: .*sources\.0\.forecast_path"):
        load_scenario(path)


def test_file_type_without_any_forecast_file(tmp_path: Path) -> None:
    text = scenario_text().replace('forecast_path = "forecast.csv"\n', "")
    path = write_scenario(tmp_path, text)
    with pytest.raises(ConfigError, match=r"scenario\.toml: .*forecast\.type = 'file' needs forecast_path"):
        load_scenario(path)
    # Chosen on the command line instead (--forecast file): the run says why it cannot.
    spec, base = load_scenario(
        write_scenario(
            tmp_path, scenario_text(forecast_type="perfect").replace('forecast_path = "forecast.csv"\n', "")
        )
    )
    with pytest.raises(ConfigError, match=r"solcast-tiny.*forecast 'file' needs forecast_path"):
        compare(spec, base, ["static"], 1, forecast="file")


# --- the real Solcast forecast (development data set) ------------------------------------------------------


REAL = """name = "solcast-real"
start = 2022-06-10T00:00:00Z
duration = "2d"
step = "5min"
decision_interval = "{interval}"

[forecast]
type = "file"

[[sites]]
name = "sydney"
[[sites.sources]]
type = "solcast"
path = "{actual}"
forecast_path = "{forecast}"
city = "Sydney"
capacity_w = 1000.0

[[sites]]
name = "berlin"
base_load_w = 100.0
[[sites.sources]]
type = "solcast"
path = "{actual}"
forecast_path = "{forecast}"
city = "Berlin"
capacity_w = 1000.0

[jobs]
count = 1
"""


@pytest.mark.parametrize("interval", ["5min", "15min"])
def test_real_solcast_forecast_through_the_scenario(tmp_path: Path, interval: str) -> None:
    actual = shared_file(*SOLCAST_DIR, "solcast2022_global_actual.csv")
    forecast = shared_file(*SOLCAST_DIR, "solcast2022_global_forecast.csv.gz")
    path = tmp_path / "real.toml"
    path.write_text(REAL.format(interval=interval, actual=actual, forecast=forecast), encoding="utf-8")
    spec, base = load_scenario(path)
    world = build_world(spec, base, 0)
    given = provided_forecast_w(spec, world, "file")
    assert given is not None
    k = world.epoch_steps
    assert given.shape == (2, world.n_steps // k, math.ceil(65 / (5 * k)))
    for s, (city, base_load_w) in enumerate((("Sydney", 0.0), ("Berlin", 100.0))):
        table = traces.load_solcast_forecast(forecast, city)
        for e in (0, 7, 100, world.n_steps // k - 13):  # all leads inside the run
            issue = int(world.start_s + e * world.epoch_s)  # Solcast issues every 5 min: one at each start
            rows = table.issue_times_s == issue
            targets = table.target_start_s[rows]
            assert targets[0] == issue
            assert np.all(np.diff(targets) == 300)
            step_w = np.maximum(1000.0 * table.values[rows] - base_load_w, 0.0)
            n_whole = step_w.size // k
            np.testing.assert_allclose(
                given[s, e, :n_whole], step_w[: n_whole * k].reshape(-1, k).mean(axis=1)
            )
            assert np.isnan(given[s, e, n_whole:]).all()
    # The forecast is a forecast, not the truth, but close to it an hour ahead.
    lead = 13 // k - 1  # the furthest epoch the 13 five-minute points cover whole
    error = given[:, :-lead, lead] - world.epoch_surplus_w[:, lead:]
    assert 0.0 < float(np.nanmean(np.abs(error))) < 100.0


def test_example_scenario_points_at_the_shared_solcast_files() -> None:
    actual = shared_file(*SOLCAST_DIR, "solcast2022_global_actual.csv")
    forecast = shared_file(*SOLCAST_DIR, "solcast2022_global_forecast.csv.gz")
    spec, base = load_scenario(REPO / "docs" / "examples" / "solcast-cities.toml")
    assert spec.forecast.type == "file"
    for site in spec.sites:
        source = site.forecast_source
        assert source is not None
        assert (base / source.path).resolve() == actual.resolve()
        assert (base / str(source.forecast_path)).resolve() == forecast.resolve()
