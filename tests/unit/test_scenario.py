"""Scenario files (sim/scenario.py): the built-ins, and malformed files naming the file and the field."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from greenferry.core.units import parse_size_bytes
from greenferry.errors import ConfigError, TraceError
from greenferry.hardware_profiles import get_profile
from greenferry.sim.engine import World
from greenferry.sim.scenario import ScenarioSpec, build_world, builtin_scenarios, load_scenario

# --- a tiny valid scenario, and ways to break it ---------------------------------------------------------

CSV = """time,power
2024-01-01T00:00:00Z,100
2024-01-01T01:00:00Z,500
2024-01-01T02:00:00Z,900
2024-01-01T03:00:00Z,0
2024-01-01T04:00:00Z,300
2024-01-01T05:00:00Z,300
"""

TINY = """\
name = "tiny"
start = 2024-01-01T00:00:00Z
duration = "6h"
step = "30min"
decision_interval = "1h"

[[sites]]
name = "a"
[[sites.sources]]
type = "csv"
path = "gen.csv"
time_column = "time"
value_column = "power"
unit = "W"

[[sites]]
name = "b"
gpu_slots = 2
[[sites.sources]]
type = "csv"
path = "gen.csv"
time_column = "time"
value_column = "power"
unit = "kW"

[network]
default_bandwidth = "1Gbps"
links = [{ between = ["a", "b"], bandwidth = "25Gbps" }]

[jobs]
count = 3
spacing = "1h"
work = ["1h", "2h"]
"""


def write_scenario(tmp_path: Path, text: str, name: str = "scenario.toml") -> Path:
    (tmp_path / "gen.csv").write_text(CSV, encoding="utf-8")
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_tiny_scenario_builds(tmp_path: Path) -> None:
    spec, base = load_scenario(write_scenario(tmp_path, TINY))
    assert base == tmp_path.resolve()
    world = build_world(spec, base, 0)
    assert world.n_steps == 12  # 6 h of 30 min steps
    assert world.step_s == 1800.0
    assert world.epoch_steps == 2
    # Hourly CSV values held over both half-hour steps; site b's file is read in kW.
    np.testing.assert_allclose(world.sites[0].surplus_w, np.repeat([100, 500, 900, 0, 300, 300], 2))
    np.testing.assert_allclose(world.sites[1].surplus_w, 1000 * world.sites[0].surplus_w)
    assert [s.gpu_slots for s in world.sites] == [4, 2]
    np.testing.assert_array_equal(world.bandwidth_bps, [[0.0, 25e9], [25e9, 0.0]])


# (replace this, with that, the error must mention these)
BREAKAGES = [
    pytest.param('duration = "6h"\n', "", ["duration", "Field required"], id="missing-required-field"),
    pytest.param(
        'type = "csv"\npath = "gen.csv"',
        'type = "nuclear"\npath = "gen.csv"',
        ["sites.0.sources.0", "nuclear"],
        id="unknown-source-type",
    ),
    pytest.param(
        'between = ["a", "b"]', 'between = ["a", "zz"]', ["'zz'", "link"], id="unknown-site-in-link"
    ),
    pytest.param(
        'bandwidth = "25Gbps"',
        'bandwidth = "10Gbq"',
        ["network.links.0.bandwidth", "10Gbq"],
        id="bad-bandwidth-unit",
    ),
    pytest.param(
        'decision_interval = "1h"',
        'decision_interval = "45min"',
        ["decision_interval", "multiple of step"],
        id="interval-not-multiple",
    ),
    pytest.param(
        "start = 2024-01-01T00:00:00Z",
        "start = 2024-01-01T00:00:00",
        ["start", "time zone"],
        id="naive-start",
    ),
    pytest.param('name = "b"', 'name = "a"', ["site names must be unique"], id="duplicate-site-names"),
    pytest.param(
        'unit = "kW"\n',
        'unit = "kW"\ncapacity_w = -5.0\n',
        ["sites.1.sources.0", "capacity_w", "greater than 0"],
        id="negative-capacity",
    ),
    pytest.param("gpu_slots = 2", "gpu_slots = -2", ["sites.1.gpu_slots"], id="negative-gpu-slots"),
    pytest.param(
        "count = 3", "count = 3\ncolour = 'green'", ["jobs.colour", "Extra inputs"], id="unknown-field"
    ),
    pytest.param(
        'work = ["1h", "2h"]',
        'work = ["1h", "2h"]\nhome = ["a", "q"]',
        ["jobs.home", "'q'"],
        id="unknown-home-site",
    ),
    pytest.param('duration = "6h"', 'duration = "6 fortnights"', ["duration"], id="bad-duration"),
    pytest.param(
        'name = "b"\n', 'name = "b"\ntimezone = "Mars/Olympus"\n', ["sites.1.timezone", "Mars"], id="bad-zone"
    ),
    pytest.param(
        'default_bandwidth = "1Gbps"',
        'default_bandwidth = "-1Gbps"',
        ["network.default_bandwidth", "-1Gbps"],
        id="negative-default-bandwidth",
    ),
]


@pytest.mark.parametrize(("old", "new", "mentions"), BREAKAGES)
def test_malformed_scenario_names_file_and_field(
    tmp_path: Path, old: str, new: str, mentions: list[str]
) -> None:
    assert old in TINY
    path = write_scenario(tmp_path, TINY.replace(old, new, 1), name="broken-scenario.toml")
    with pytest.raises(ConfigError) as err:
        load_scenario(path)  # validated before any trace is read
    message = str(err.value)
    assert "broken-scenario.toml" in message
    for text in mentions:
        assert text in message, (text, message)


def test_zero_bandwidth_means_no_link(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, TINY.replace('bandwidth = "25Gbps"', 'bandwidth = "0bps"', 1))
    spec, base = load_scenario(path)
    world = build_world(spec, base, 0)
    np.testing.assert_array_equal(world.bandwidth_bps, np.zeros((2, 2)))


def test_missing_trace_file_names_the_file(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, TINY.replace('path = "gen.csv"', 'path = "no-such-trace.csv"', 1))
    spec, base = load_scenario(path)  # paths are checked when the traces are read
    with pytest.raises((TraceError, ConfigError), match=r"no-such-trace\.csv"):
        build_world(spec, base, 0)


def test_invalid_toml_syntax(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, TINY.replace('name = "tiny"', 'name = "tiny'), name="syntax.toml")
    with pytest.raises(ConfigError, match=r"syntax\.toml.*cannot read scenario"):
        load_scenario(path)


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x00" * 16)
    with pytest.raises(ConfigError, match=r"binary\.toml"):
        load_scenario(path)


def test_unknown_scenario_lists_the_builtins(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_scenario("no-such-scenario")
    assert "no-such-scenario" in str(err.value)
    assert "paper" in str(err.value)
    assert "global-8" in str(err.value)
    with pytest.raises(ConfigError, match="not a file"):
        load_scenario(tmp_path)  # a directory


# --- the built-in scenarios -------------------------------------------------------------------------------


BUILTIN_NAMES = sorted(builtin_scenarios())  # every shipped scenario, including ones added later


@pytest.fixture(scope="module")
def builtins() -> dict[str, tuple[ScenarioSpec, Path, World]]:
    out = {}
    for name in BUILTIN_NAMES:
        spec, base = load_scenario(name)
        out[name] = (spec, base, build_world(spec, base, 0))
    return out


def _duration_s(text: str) -> float:
    units = {"min": 60.0, "h": 3600.0, "d": 86400.0}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    raise AssertionError(text)


def test_builtins_are_listed() -> None:
    names = builtin_scenarios()
    assert {"paper", "global-8"} <= set(names)
    assert all(path.is_file() for path in names.values())


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_builtin_world_shapes(builtins: dict[str, tuple[ScenarioSpec, Path, World]], name: str) -> None:
    spec, _, world = builtins[name]
    step = _duration_s(spec.step)
    assert world.step_s == step
    assert world.n_steps == round(_duration_s(spec.duration) / step)
    assert world.epoch_steps == round(_duration_s(spec.decision_interval) / step)
    assert world.start_s == spec.start.timestamp()
    n_sites = len(spec.sites)
    assert world.surplus_w.shape == (n_sites, world.n_steps)
    assert world.carbon_g_per_kwh.shape == (n_sites, world.n_steps)
    assert np.all(np.isfinite(world.surplus_w))
    assert np.all(world.surplus_w >= 0.0)
    assert np.all(world.carbon_g_per_kwh >= 0.0)
    assert np.all(world.surplus_w.max(axis=1) > 0.0)  # every site has some surplus
    assert [s.name for s in world.sites] == [s.name for s in spec.sites]
    assert [s.gpu_slots for s in world.sites] == [s.gpu_slots for s in spec.sites]
    bw = world.bandwidth_bps
    assert bw.shape == (n_sites, n_sites)
    np.testing.assert_array_equal(bw, bw.T)
    assert np.all(np.diag(bw) == 0.0)
    assert np.all(bw[~np.eye(n_sites, dtype=bool)] > 0.0)
    assert world.isolated is spec.jobs.isolated


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_builtin_jobs_follow_the_spec(
    builtins: dict[str, tuple[ScenarioSpec, Path, World]], name: str
) -> None:
    spec, _, world = builtins[name]
    cfg = spec.jobs
    assert len(world.jobs) == cfg.count
    spacing = _duration_s(cfg.spacing) / world.step_s
    first = _duration_s(cfg.first_arrival)
    work_lo, work_hi = (_duration_s(w) / world.step_s for w in cfg.work)
    size_lo, size_hi = (parse_size_bytes(c) for c in cfg.checkpoint)
    powers = {get_profile(p).train_power_w + get_profile(p).host_power_w for p in cfg.profiles}
    for i, jm in enumerate(world.jobs):
        assert jm.job_id == i
        assert 0 <= jm.arrival_step < world.n_steps
        lo = first / world.step_s + i * spacing
        if lo + spacing < world.n_steps:
            assert math.floor(lo) <= jm.arrival_step <= math.ceil(lo + spacing)
        assert math.floor(work_lo) <= jm.work_steps <= math.ceil(work_hi)
        assert size_lo * (1 - 1e-9) <= jm.checkpoint_bytes <= size_hi * (1 + 1e-9)
        assert 0 <= jm.home_site < len(world.sites)
        assert jm.power_w in powers


def test_seed_changes_jobs_not_sites(builtins: dict[str, tuple[ScenarioSpec, Path, World]]) -> None:
    spec, base, world0 = builtins["paper"]
    world1 = build_world(spec, base, 1)
    again = build_world(spec, base, 0)
    assert world1.jobs != world0.jobs
    assert again.jobs == world0.jobs
    np.testing.assert_array_equal(world1.surplus_w, world0.surplus_w)
    np.testing.assert_array_equal(world1.carbon_g_per_kwh, world0.carbon_g_per_kwh)
    np.testing.assert_array_equal(world1.bandwidth_bps, world0.bandwidth_bps)


def test_paper_links_match_the_file(builtins: dict[str, tuple[ScenarioSpec, Path, World]]) -> None:
    spec, _, world = builtins["paper"]
    names = [s.name for s in spec.sites]
    expected_bps = {"100Gbps": 100e9, "10Gbps": 10e9, "2.5Gbps": 2.5e9, "1Gbps": 1e9}
    for link in spec.network.links:
        a, b = (names.index(x) for x in link.between)
        assert world.bandwidth_bps[a, b] == expected_bps[link.bandwidth]


def test_fraction_trace_needs_a_capacity(tmp_path: Path) -> None:
    (tmp_path / "share.csv").write_text(
        CSV.replace(",100\n", ",0.1\n")
        .replace(",500", ",0.5")
        .replace(",900", ",0.9")
        .replace(",300", ",0.3"),
        encoding="utf-8",
    )
    text = TINY.replace('path = "gen.csv"', 'path = "share.csv"', 1).replace(
        'unit = "W"', 'unit = "fraction"', 1
    )
    spec, base = load_scenario(write_scenario(tmp_path, text, name="fraction.toml"))
    with pytest.raises(ConfigError, match=r"share\.csv.*capacity_w"):
        build_world(spec, base, 0)
    with_capacity = text.replace('unit = "fraction"', 'unit = "fraction"\ncapacity_w = 2000.0', 1)
    spec, base = load_scenario(write_scenario(tmp_path, with_capacity, name="fraction2.toml"))
    world = build_world(spec, base, 0)
    np.testing.assert_allclose(world.sites[0].surplus_w, 2000.0 * np.repeat([0.1, 0.5, 0.9, 0, 0.3, 0.3], 2))


def test_energy_unit_is_refused_naming_the_file(tmp_path: Path) -> None:
    spec, base = load_scenario(write_scenario(tmp_path, TINY.replace('unit = "W"', 'unit = "kWh"', 1)))
    with pytest.raises(TraceError, match=r"gen\.csv.*kWh"):
        build_world(spec, base, 0)


# --- overrides (greenferry simulate --set) ---------------------------------------------------------------


def test_overrides_change_fields_before_validation() -> None:
    spec, _ = load_scenario(
        "paper",
        [
            "migration.network_energy_j_per_byte=2.16e-4",
            "network.default_bandwidth=1Gbps",  # a bare word stays a string
            "network.links=[]",
            'jobs.checkpoint=["50GB", "100GB"]',
            "sites.1.gpu_slots=1",
        ],
    )
    assert spec.migration["network_energy_j_per_byte"] == pytest.approx(2.16e-4)
    assert spec.network.links == []
    assert spec.sites[1].gpu_slots == 1
    assert spec.sites[0].gpu_slots == 4
    builtin, _ = load_scenario("paper")
    assert builtin.migration["network_energy_j_per_byte"] == pytest.approx(8e-8)  # the file is untouched


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("jobs.count", "expected KEY=VALUE"),
        ("=3", "expected KEY=VALUE"),
        ("jobs..count=3", "expected KEY=VALUE"),
        ("sites.9.gpu_slots=1", r"sites\.9: no such index \(there are 4\)"),
        ("sites.x.gpu_slots=1", "sites.x: no such index"),
        ("name.first=1", "name is a value, not a table"),
        ("jobs.count=many", r"with --set jobs\.count=many\): jobs\.count"),
        ("jobs.colour=3", r"jobs\.colour"),
    ],
)
def test_bad_overrides_name_the_assignment(assignment: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_scenario("paper", [assignment])
