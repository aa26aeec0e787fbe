"""Energy per unit of training work per platform, from real simulator runs of the edge-mix scenario."""

from __future__ import annotations

import json

import pytest

from greenferry.hardware_profiles import get_profile
from greenferry.sim.platforms import main, platform_breakdown
from greenferry.sim.runner import compare
from greenferry.sim.scenario import build_world, load_scenario


@pytest.fixture(scope="module")
def edge_runs() -> tuple[object, dict[str, object]]:
    spec, base = load_scenario("edge-mix", ["duration=14d", "jobs.count=15"])
    comparison = compare(spec, base, ["static", "pause-when-dirty"], seeds=1)
    return build_world(spec, base, 0), {p: runs[0] for p, runs in comparison.runs.items()}


def test_the_edge_scenario_mixes_edge_and_datacenter_platforms(
    edge_runs: tuple[object, dict[str, object]],
) -> None:
    world, runs = edge_runs
    rows = platform_breakdown(world, runs["static"])  # type: ignore[arg-type]
    assert {r.category for r in rows} == {"edge", "datacenter"}
    assert sum(r.jobs for r in rows) == 15


def test_energy_per_unit_of_work_is_the_profiles_power_over_its_throughput(
    edge_runs: tuple[object, dict[str, object]],
) -> None:
    world, runs = edge_runs
    for row in platform_breakdown(world, runs["static"]):  # type: ignore[arg-type]
        p = get_profile(row.profile)
        # static never migrates: energy is exactly power x hours, work is throughput x hours.
        assert row.kwh_per_h100_h == pytest.approx(
            (p.train_power_w + p.host_power_w) / 1000 / p.relative_throughput
        )


def test_platform_shares_add_up_to_the_runs_non_renewable_energy(
    edge_runs: tuple[object, dict[str, object]],
) -> None:
    world, runs = edge_runs
    for policy, run in runs.items():
        rows = platform_breakdown(world, run)  # type: ignore[arg-type]
        total = sum(r.nonrenewable_kwh for r in rows)
        assert total == pytest.approx(run.metrics["nonrenewable_kwh"], rel=1e-6, abs=1e-9), policy  # type: ignore[attr-defined]
    # Running only on surplus burns nothing from the grid on any platform.
    for row in platform_breakdown(world, runs["pause-when-dirty"]):  # type: ignore[arg-type]
        assert row.nonrenewable_kwh == pytest.approx(0.0, abs=1e-9)
        assert row.renewable_share == pytest.approx(1.0)


def test_the_command_prints_json_per_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--scenario", "paper", "--policies", "static", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["policies"]["static"]
    assert rows
    for row in rows:
        assert row["jobs"] >= 1
        assert row["kwh_per_h100_h"] > 0
