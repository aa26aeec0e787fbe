"""RaplReader on a fake powercap tree (the sysfs file interface itself) and RAPL in open_power_meter."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from greenferry.adapters.rapl import RaplReader
from greenferry.config import DaemonConfig, config_from_mapping
from greenferry.daemon.power import HostPowerMeter, ModelPowerMeter, open_power_meter
from greenferry.testing.clock import ManualClock

MAX_RANGE_UJ = 262_143_328_850  # a real package's max_energy_range_uj


def _zone(root: Path, dirname: str, name: str, energy_uj: int, max_range_uj: int = MAX_RANGE_UJ) -> Path:
    zone = root / dirname
    zone.mkdir(parents=True)
    (zone / "name").write_text(name + "\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
    return zone


def _set(zone: Path, energy_uj: int) -> None:
    (zone / "energy_uj").write_text(f"{energy_uj}\n")


@pytest.fixture
def powercap(tmp_path: Path) -> Path:
    """Two packages plus the zones a reader must ignore: sub-zones, psys, the MMIO duplicate."""
    root = tmp_path / "powercap"
    (root / "intel-rapl").mkdir(parents=True)  # the control-type directory
    _zone(root, "intel-rapl:0", "package-0", 1_000_000)
    _zone(root, "intel-rapl:0/intel-rapl:0:0", "core", 500_000)
    _zone(root, "intel-rapl:0:0", "core", 500_000)
    _zone(root, "intel-rapl:1", "package-1", 2_000_000)
    _zone(root, "intel-rapl:2", "psys", 9_000_000)
    _zone(root, "intel-rapl-mmio:0", "package-0", 1_000_000)
    return root


def _greenferry_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("greenferry")]


def test_power_is_the_package_counters_rate(powercap: Path) -> None:
    reader = RaplReader(powercap)
    assert reader.available()
    assert reader.describe() == {"root": str(powercap), "packages": ["package-0", "package-1"]}
    first = reader.read(100.0)
    assert first is not None
    assert first.power_w is None  # a rate needs two reads
    assert first.energy_j == 0.0
    _set(powercap / "intel-rapl:0", 1_000_000 + 60_000_000)  # 60 J
    _set(powercap / "intel-rapl:1", 2_000_000 + 40_000_000)  # 40 J
    _set(powercap / "intel-rapl:2", 9_000_000 + 900_000_000)  # psys: must not count
    second = reader.read(102.0)
    assert second is not None
    assert second.power_w == pytest.approx(50.0)  # 100 J over 2 s
    assert second.energy_j == pytest.approx(100.0)


def test_counter_wraparound_at_max_energy_range(powercap: Path) -> None:
    reader = RaplReader(powercap)
    _set(powercap / "intel-rapl:0", MAX_RANGE_UJ - 1_000_000)
    reader.read(0.0)
    _set(powercap / "intel-rapl:0", 500_000)  # wrapped: 1 J to the top, then 0.5 J
    reading = reader.read(1.0)
    assert reading is not None
    assert reading.power_w == pytest.approx(1.5)
    assert reading.energy_j == pytest.approx(1.5)


def test_a_read_at_the_same_instant_keeps_the_last_rate(powercap: Path) -> None:
    reader = RaplReader(powercap)
    reader.read(0.0)
    _set(powercap / "intel-rapl:0", 1_000_000 + 10_000_000)
    assert (r := reader.read(1.0)) is not None
    assert r.power_w == pytest.approx(10.0)
    _set(powercap / "intel-rapl:0", 1_000_000 + 30_000_000)
    same = reader.read(1.0)
    assert same is not None
    assert same.power_w == pytest.approx(10.0)
    later = reader.read(3.0)
    assert later is not None
    assert later.power_w == pytest.approx(10.0)  # 20 J over the 2 s since the last real interval
    assert later.energy_j == pytest.approx(30.0)


def test_absent_tree_is_not_available_and_logs_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reader = RaplReader(tmp_path / "no-powercap")
    with caplog.at_level(logging.INFO, logger="greenferry"):
        assert not reader.available()
        assert reader.read(0.0) is None
        assert reader.read(1.0) is None
    lines = _greenferry_lines(caplog)
    assert len(lines) == 1
    assert "no-powercap" in lines[0].getMessage()


def test_tree_without_packages_is_not_available(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _zone(tmp_path, "intel-rapl:0", "psys", 1)
    with caplog.at_level(logging.INFO, logger="greenferry"):
        assert not RaplReader(tmp_path).available()
    assert len(_greenferry_lines(caplog)) == 1
    assert "no RAPL package domain" in caplog.records[0].getMessage()


def test_unreadable_counter_returns_none_logs_once_and_recovers(
    powercap: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reader = RaplReader(powercap)
    assert reader.read(0.0) is not None
    counter = powercap / "intel-rapl:1" / "energy_uj"
    counter.unlink()
    counter.mkdir()  # root reads any file, so an unreadable counter is made a directory here
    with caplog.at_level(logging.INFO, logger="greenferry"):
        assert not reader.available()
        assert reader.read(1.0) is None
        assert reader.read(2.0) is None
    assert len(_greenferry_lines(caplog)) == 1
    assert "energy_uj" in caplog.records[0].getMessage()
    counter.rmdir()
    counter.write_text(f"{2_000_000 + 8_000_000}\n")
    _set(powercap / "intel-rapl:0", 1_000_000 + 8_000_000)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="greenferry"):
        reading = reader.read(4.0)
    assert reading is not None
    assert reading.power_w == pytest.approx(4.0)  # 16 J over the 4 s since the last good read
    assert "readable again" in caplog.records[0].getMessage()


def test_garbage_in_a_counter_is_unreadable(powercap: Path, caplog: pytest.LogCaptureFixture) -> None:
    (powercap / "intel-rapl:0" / "energy_uj").write_text("lots\n")
    reader = RaplReader(powercap)
    with caplog.at_level(logging.INFO, logger="greenferry"):
        assert reader.read(0.0) is None
    assert "not an integer" in caplog.records[0].getMessage()


def _config(tmp_path: Path, rapl: bool) -> DaemonConfig:
    return config_from_mapping(
        {
            "node": {"name": "n1", "site": "s1", "hardware_profile": "l4", "data_dir": str(tmp_path)},
            "power": {"source": "model", "rapl": rapl},
        },
        environ={},
    )


async def test_open_power_meter_adds_host_power_when_readable(powercap: Path, tmp_path: Path) -> None:
    clock = ManualClock()
    meter = open_power_meter(_config(tmp_path, rapl=True), clock, powercap_root=powercap)
    assert isinstance(meter, HostPowerMeter)
    assert isinstance(meter.meter, ModelPowerMeter)
    first = await meter.read()
    assert first.host_power_w is None
    assert first.host_energy_j == 0.0
    clock.advance(5.0)
    _set(powercap / "intel-rapl:0", 1_000_000 + 100_000_000)
    second = await meter.read()
    assert second.host_power_w == pytest.approx(20.0)
    assert second.gpus[0].power_w == 16.0  # the L4's idle power from the model
    assert await meter.set_power_limit_w(0, 40.0) == 40.0
    assert meter.describe()["rapl"] == {"root": str(powercap), "packages": ["package-0", "package-1"]}
    await meter.restore_power_limits()
    assert (await meter.read()).gpus[0].power_limit_w == 72.0
    await meter.close()


def test_open_power_meter_without_rapl(
    tmp_path: Path, powercap: Path, caplog: pytest.LogCaptureFixture
) -> None:
    disabled = open_power_meter(_config(tmp_path, rapl=False), ManualClock(), powercap_root=powercap)
    assert isinstance(disabled, ModelPowerMeter)
    with caplog.at_level(logging.INFO, logger="greenferry"):
        unreadable = open_power_meter(
            _config(tmp_path, rapl=True), ManualClock(), powercap_root=tmp_path / "absent"
        )
    assert isinstance(unreadable, ModelPowerMeter)
    assert len(_greenferry_lines(caplog)) == 1
