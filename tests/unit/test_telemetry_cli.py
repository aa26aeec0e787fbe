"""``greenferry telemetry export`` through the real CLI entry point, reading a real SQLite store."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from greenferry.adapters.sqlite_store import SqliteSink
from greenferry.cli import main
from greenferry.core.telemetry import Point
from greenferry.daemon.telemetry import GPU, SIGNAL, encode_line

S = 1_000_000_000
T0 = 1_700_000_000 * S  # 2023-11-14T22:13:20Z
SINCE = "2023-11-14T22:13:20Z"
UNTIL = "2023-11-14T22:14:20Z"


def _points(t0_ns: int = T0) -> list[Point]:
    node = {"node": "n1", "site": "s1"}
    return [
        GPU.point(
            t0_ns + 1 * S,
            {**node, "gpu": "0", "name": "NVIDIA L4, PCIe"},
            {"power_w": 61.5, "energy_j": 1000.0, "power_limit_w": 72.0, "utilization": 0.75},
        ),
        SIGNAL.point(
            t0_ns + 2 * S, {**node, "kind": "surplus_forecast"}, {"value": 2500.0, "windows": 3, "age_s": 0.0}
        ),
        GPU.point(
            t0_ns + 3 * S,
            {**node, "gpu": "1", "name": "NVIDIA L4, PCIe"},
            {"power_w": 30.0, "energy_j": 2000.0, "power_limit_w": 72.0},
        ),
        SIGNAL.point(
            t0_ns + 90 * S, {**node, "kind": "carbon"}, {"value": 212.5, "age_s": 1.5}
        ),  # outside UNTIL
    ]


def _store(path: Path, points: list[Point]) -> Path:
    async def fill() -> None:
        async with SqliteSink(path, 10 * 365 * 86400.0, CollectorRegistry()) as sink:
            await sink.write(points)

    asyncio.run(fill())
    return path


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_csv_has_a_column_per_tag_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _store(tmp_path / "t.sqlite", _points())
    code, out, _ = _run(capsys, ["telemetry", "export", "--db", str(db), "--since", SINCE, "--until", UNTIL])
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["measurement"] for r in rows] == ["gpu", "signal", "gpu"]
    first = rows[0]
    assert first["time"] == "2023-11-14T22:13:21.000000000Z"
    assert first["time_ns"] == str(T0 + S)
    assert first["name"] == "NVIDIA L4, PCIe"  # quoted by csv, not split
    assert (first["gpu"], first["power_w"], first["utilization"], first["kind"]) == ("0", "61.5", "0.75", "")
    assert (rows[1]["kind"], rows[1]["value"], rows[1]["windows"]) == ("surplus_forecast", "2500.0", "3")
    assert rows[2]["utilization"] == ""  # unknown, not 0


def test_csv_for_one_measurement_has_only_its_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _store(tmp_path / "t.sqlite", _points())
    argv = [
        "telemetry",
        "export",
        "--db",
        str(db),
        "--since",
        SINCE,
        "--until",
        UNTIL,
        "--measurement",
        "signal",
    ]
    code, out, _ = _run(capsys, argv)
    assert code == 0
    header, *rows = out.splitlines()
    assert header == "time,time_ns,measurement,node,site,kind,value,windows,active,age_s"
    assert len(rows) == 1


def test_lp_output_is_line_protocol_in_ns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    points = _points()
    db = _store(tmp_path / "t.sqlite", points)
    argv = ["telemetry", "export", "--db", str(db), "--format", "lp", "--since", SINCE, "--until", UNTIL]
    code, out, _ = _run(capsys, argv)
    assert code == 0
    assert out.splitlines() == [encode_line(p) for p in points[:3]]
    assert r"name=NVIDIA\ L4\,\ PCIe" in out


def test_relative_since_counts_back_from_now(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now_ns = time.time_ns()
    db = _store(tmp_path / "t.sqlite", _points(now_ns - 7200 * S))  # points from two hours ago
    code, out, _ = _run(capsys, ["telemetry", "export", "--db", str(db), "--since", "1h", "--format", "lp"])
    assert (code, out) == (0, "")
    code, out, _ = _run(capsys, ["telemetry", "export", "--db", str(db), "--since", "3h", "--format", "lp"])
    assert code == 0
    assert len(out.splitlines()) == 4


def test_config_finds_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _store(tmp_path / "data" / "telemetry.sqlite", _points())
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\nname = "n1"\nsite = "s1"\ndata_dir = "{tmp_path / "data"}"\n')
    argv = [
        "telemetry",
        "export",
        "--config",
        str(config),
        "--since",
        SINCE,
        "--until",
        UNTIL,
        "--format",
        "lp",
    ]
    code, out, _ = _run(capsys, argv)
    assert code == 0
    assert len(out.splitlines()) == 3
    assert db.exists()


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [
        ("1 fortnight", "now", "--since '1 fortnight': not a duration"),
        ("-1h", "now", "--since '-1h'"),
        ("1h", "yesterday", "--until 'yesterday'"),
        ("now", "1h", "is not before --until"),
    ],
)
def test_bad_times_exit_2_with_the_option_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], since: str, until: str, message: str
) -> None:
    db = _store(tmp_path / "t.sqlite", _points())
    code, out, err = _run(
        capsys, ["telemetry", "export", "--db", str(db), f"--since={since}", f"--until={until}"]
    )
    assert code == 2
    assert out == ""
    assert message in err


def test_missing_store_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(
        capsys, ["telemetry", "export", "--db", str(tmp_path / "none.sqlite"), "--since", "1h"]
    )
    assert code == 2
    assert "no telemetry store at" in err
    assert "none.sqlite" in err


def test_influx_config_without_a_local_store_says_where_telemetry_goes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nname = "n1"\nsite = "s1"\ndata_dir = "{tmp_path / "data"}"\n'
        '[telemetry]\ntype = "influxdb"\nurl = "http://127.0.0.1:8086"\n'
    )
    code, _, err = _run(capsys, ["telemetry", "export", "--config", str(config), "--since", "1h"])
    assert code == 2
    assert "telemetry goes to influxdb (http://127.0.0.1:8086)" in err


def test_since_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["telemetry", "export", "--db", "x.sqlite"])
    assert exit_info.value.code == 2
    assert "--since" in capsys.readouterr().err
