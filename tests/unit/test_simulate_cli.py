"""``greenferry simulate`` and ``greenferry scenarios`` through the CLI entry point."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import pytest
from worlds import tiny_scenario

from greenferry.cli import EXIT_USAGE, main
from greenferry.sim.results import METRIC_NAMES


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, str, Path]:
    """One paper run shared by the tests below (capsys is function-scoped, so capture by hand)."""
    out = tmp_path_factory.mktemp("paper-out")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(
            [
                "simulate",
                "--scenario",
                "paper",
                "--policies",
                "static,lookahead",
                "--seeds",
                "2",
                "--out",
                str(out),
                "--json",
                "--no-plots",
            ]
        )
    return code, stdout.getvalue(), stderr.getvalue(), out


def test_simulate_paper_json(paper_run: tuple[int, str, str, Path]) -> None:
    code, stdout, _, _out = paper_run
    assert code == 0
    summary = json.loads(stdout)
    assert summary["scenario"] == "paper"
    assert summary["seeds"] == [0, 1]
    assert set(summary["policies"]) == {"static", "lookahead"}
    for policy in ("static", "lookahead"):
        metrics = summary["policies"][policy]
        for name in METRIC_NAMES:
            assert name in metrics, (policy, name)
            assert f"{name}_std" in metrics, (policy, name)
        assert metrics["ratio_to_oracle"] >= 1 - 1e-9
        assert metrics["work_done_gpu_h"] > 0
    # The oracle is not in the table when not asked for, but the ratios are still filled in.
    assert "oracle" not in summary["policies"]
    assert summary["policies"]["static"]["migrations"] == 0
    assert summary["policies"]["static"]["migrations_std"] == 0


def test_simulate_paper_writes_files(paper_run: tuple[int, str, str, Path]) -> None:
    _, stdout, _, out = paper_run
    summary_file = out / "summary.json"
    timeline = out / "timeline.csv"
    assert summary_file.is_file()
    assert timeline.is_file()
    assert json.loads(summary_file.read_text(encoding="utf-8")) == json.loads(stdout)
    with timeline.open(encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert len(rows) > 1
    policies = {row[1] for row in rows[1:]}
    assert policies == {"static", "lookahead"}
    assert not list(out.glob("*.png"))  # --no-plots


def test_simulate_scenario_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tiny_scenario(tmp_path, "tiny-cli")
    out = tmp_path / "out"
    code = main(["simulate", "--scenario", str(scenario), "--out", str(out), "--json", "--no-plots"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scenario"] == "tiny-cli"
    # Default: every policy, oracle included; one seed -> no _std keys.
    assert {"static", "lookahead", "oracle"} <= set(summary["policies"])
    assert "nonrenewable_kwh_std" not in summary["policies"]["static"]
    assert (out / "summary.json").is_file()


def test_simulate_coupled_bound_keeps_json_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tiny_scenario(tmp_path, "tiny-cli")
    args = ["simulate", "--scenario", str(scenario), "--policies", "static,energy-greedy,lookahead"]
    args += ["--out", str(tmp_path / "out"), "--json", "--no-plots"]
    assert main([*args, "--coupled-bound"]) == 0
    tight = json.loads(capsys.readouterr().out)  # the LP solver printed nothing on stdout
    assert main(args) == 0
    loose = json.loads(capsys.readouterr().out)
    for name in ("static", "energy-greedy", "lookahead"):
        bound, per_job = (
            tight["policies"][name]["oracle_bound_kwh"],
            loose["policies"][name]["oracle_bound_kwh"],
        )
        assert bound >= per_job * (1 - 1e-9)
        assert tight["policies"][name]["ratio_to_oracle"] >= 1 - 1e-9


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["--policies", "static,nope"], ["'nope'", "lookahead"]),
        (["--seeds", "0"], ["--seeds", "0"]),
        (["--scenario", "atlantis"], ["'atlantis'", "paper"]),
        (["--set", "jobs.count=-1"], ["--set jobs.count=-1", "jobs.count"]),
        (["--set", "network"], ["'network'", "KEY=VALUE"]),
    ],
    ids=["unknown-policy", "zero-seeds", "unknown-scenario", "bad-override-value", "bad-override-form"],
)
def test_simulate_bad_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], mentions: list[str]
) -> None:
    out = tmp_path / "out"
    code = main(["simulate", *args, "--out", str(out), "--json", "--no-plots"])
    assert code == EXIT_USAGE == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("greenferry: error:")
    for text in mentions:
        assert text in captured.err
    assert not out.exists()  # nothing written for a rejected command


def test_scenarios_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenarios", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {row["name"]: row for row in rows}
    assert {"paper", "global-8"} <= set(by_name)
    assert len(by_name["paper"]["sites"]) == 4
    assert len(by_name["global-8"]["sites"]) == 8
    assert Path(by_name["paper"]["file"]).is_file()


def test_scenarios_show(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["scenarios", "show", "paper"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["name"] == "paper"
    assert [s["name"] for s in shown["sites"]] == ["caiso-apr", "caiso-jan", "mountain-jan", "east-apr"]
    assert shown["jobs"]["isolated"] is True
    assert Path(shown["base_dir"]).is_dir()
    assert main(["scenarios", "show", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml" in capsys.readouterr().err


def test_simulate_prints_a_table_without_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tiny_scenario(tmp_path, "tiny-cli")
    out = tmp_path / "out"
    args = ["simulate", "--scenario", str(scenario), "--policies", "static,oracle", "--out", str(out)]
    assert main([*args, "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "static" in printed
    assert "oracle" in printed
    assert (out / "report.html").is_file()
