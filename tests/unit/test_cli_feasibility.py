"""``greenferry feasibility`` and ``greenferry profiles`` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from greenferry.cli import main

BASE = ["feasibility", "--checkpoint", "100GB", "--bandwidth", "1Gbps", "--window", "2.5h"]


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    assert main(argv) == 0
    out = capsys.readouterr().out
    document = json.loads(out)
    assert isinstance(document, dict)
    return document


def test_json_verdict_has_the_contract_fields(capsys: pytest.CaptureFixture[str]) -> None:
    document = _json(capsys, [*BASE, "--json"])
    for key in (
        "feasible",
        "migration_time_s",
        "budget_s",
        "max_checkpoint_bytes",
        "min_bandwidth_bps",
        "break_even_s",
        "binding_constraint",
        "time_feasible",
        "energy_feasible",
        "time_margin_s",
        "energy_gain_j",
        "limiting_constraint",
    ):
        assert key in document
    # Defaults: eta 0.9 and 60 s of overheads push 100 GB at 1 Gbit/s past the 900 s budget.
    assert document["feasible"] is False
    assert document["binding_constraint"] == "time"
    assert document["budget_s"] == pytest.approx(900.0)
    assert document["migration_time_s"] == pytest.approx(60 + 8e11 / 0.9e9)
    assert document["max_checkpoint_bytes"] == pytest.approx((900 - 60) * 0.9e9 / 8)
    assert document["checkpoint_bytes"] == 100e9
    assert document["bandwidth_bps"] == 1e9
    assert document["window_s"] == 9000.0


def test_flags_reach_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        *BASE,
        "--efficiency",
        "1",
        "--checkpoint-write",
        "0s",
        "--restore",
        "0s",
        "--alpha",
        "10%",
        "--json",
    ]
    document = _json(capsys, argv)
    # The worked example: 800 s of transfer in a 900 s budget just fits.
    assert document["migration_time_s"] == pytest.approx(800.0)
    assert document["feasible"] is True
    assert document["binding_constraint"] == "none"


def test_network_energy_and_profile(capsys: pytest.CaptureFixture[str]) -> None:
    document = _json(capsys, [*BASE, "--network-energy", "0.06kWh/GB", "--profile", "h100-sxm", "--json"])
    params = document["params"]
    assert isinstance(params, dict)
    assert params["network_energy_j_per_byte"] == pytest.approx(2.16e-4)
    assert params["job_power_w"] == 600 + 90  # train + host power of the profile
    assert params["idle_power_src_w"] == 70 + 90
    assert document["break_even_s"] > 3600.0  # the Internet-average e_net makes it hours
    explicit = _json(capsys, [*BASE, "--profile", "h100-sxm", "--job-power", "0.5kW", "--json"])
    assert explicit["params"]["job_power_w"] == 500.0


def test_human_output_shows_verdict_and_margins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(BASE) == 0
    out = capsys.readouterr().out
    assert "NOT FEASIBLE" in out
    assert "time check fails" in out
    assert "-48.9 s" in out  # time margin
    assert "break-even" in out
    assert "94.5 GB" in out  # largest checkpoint at 1 Gbit/s


@pytest.mark.parametrize(
    ("argv", "flag", "value"),
    [
        (["--checkpoint", "100GB", "--bandwidth", "1Gbq", "--window", "2.5h"], "--bandwidth", "1Gbq"),
        (["--checkpoint", "100GB", "--bandwidth", "1Gbps", "--window", "-1h"], "--window", "-1h"),
        (["--checkpoint", "nan GB", "--bandwidth", "1Gbps", "--window", "2.5h"], "--checkpoint", "nan GB"),
        (["--checkpoint", "100", "--bandwidth", "1Gbps", "--window", "2.5h"], "--checkpoint", "100"),
        ([*BASE[1:], "--efficiency", "1.5"], "--efficiency", "1.5"),
        ([*BASE[1:], "--network-energy", "10nJ"], "--network-energy", "10nJ"),
        ([*BASE[1:], "--profile", "h200"], "h200", "h100-sxm"),
    ],
)
def test_bad_values_exit_2_naming_flag_and_value(
    capsys: pytest.CaptureFixture[str], argv: list[str], flag: str, value: str
) -> None:
    assert main(["feasibility", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert flag in captured.err
    assert value in captured.err


def test_missing_quantities_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["feasibility", "--checkpoint", "1GB"]) == 2
    assert "--bandwidth" in capsys.readouterr().err


def test_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "domain.png"
    assert main(["feasibility", "--plot", str(path), "--bandwidth", "1Gbps"]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
    assert str(path) in capsys.readouterr().out


def test_plot_with_a_query_also_prints_the_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sub" / "domain.png"
    document = _json(capsys, [*BASE, "--plot", str(path), "--json"])
    assert document["plot"] == str(path)
    assert path.stat().st_size > 10_000


def test_plot_draws_migrations(tmp_path: Path) -> None:
    from greenferry.core.feasibility import MigrationParams
    from greenferry.sim.feasibility_plot import plot_feasibility_domain

    path = plot_feasibility_domain(
        tmp_path / "with-points.png",
        MigrationParams(network_energy_j_per_byte=2.16e-4),
        windows_s=(3600.0, 9000.0),
        migrations=[(1e9, 5e10, False), (1e10, 3e11, True)],
    )
    assert path.stat().st_size > 10_000


def test_profiles_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("h100-sxm", "jetson-orin-nano", "rtx-4090"):
        assert name in out
    assert main(["profiles", "show", "l40s", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["name"] == "l40s"
    assert document["max_power_w"] == 350
    assert document["memory_bytes"] == 48 * 1024**3
    assert main(["profiles", "show", "h100-sxm"]) == 0
    assert "H100 SXM" in capsys.readouterr().out
    assert main(["profiles", "list", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 10


def test_profiles_show_unknown_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles", "show", "nope"]) == 2
    assert "known profiles" in capsys.readouterr().err
