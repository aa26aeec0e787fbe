"""Report outputs: summary.json, timeline.csv, migrations.csv, figures and the self-contained report.html."""

from __future__ import annotations

import csv
import dataclasses
import html
import importlib.util
import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from greenferry.sim.plots import placement_window_s, plot_placement
from greenferry.sim.report import (
    MIGRATIONS_CSV_COLUMNS,
    TIMELINE_CSV_COLUMNS,
    comparison_table,
    headline,
    summary_dict,
    table_data,
    write_outputs,
)
from greenferry.sim.results import METRIC_NAMES, Comparison, JobState, MigrationRecord, RunResult
from greenferry.testing.synthetic import SYNTHETIC_POLICIES, synthetic_comparison

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def comparison() -> Comparison:
    return synthetic_comparison()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory, comparison: Comparison) -> dict[str, Path]:
    """The full output set (figures included) of the synthetic comparison, rendered once."""
    return write_outputs(comparison, tmp_path_factory.mktemp("report"))


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _first_seed_run(comparison: Comparison, policy: str) -> RunResult:
    return next(r for r in comparison.runs[policy] if r.seed == comparison.seeds[0])


# --- the synthetic data itself


def test_synthetic_comparison_is_realistic(comparison: Comparison) -> None:
    assert comparison.policies == list(SYNTHETIC_POLICIES)
    assert comparison.seeds == [0, 1]
    for policy in comparison.policies:
        assert [r.seed for r in comparison.runs[policy]] == [0, 1]
        run = comparison.runs[policy][0]
        assert run.surplus_w.shape == (3, len(run.times_s)) == run.site_load_w.shape
        assert run.job_site.shape == (2, len(run.times_s)) == run.job_state.shape
        absent = run.job_state == JobState.ABSENT
        assert np.array_equal(absent, run.job_site == -1)
    migrations = [m for runs in comparison.runs.values() for r in runs for m in r.migrations]
    assert len(migrations) >= 4
    assert any(m.failed for m in migrations)
    assert not any(m.failed for r in comparison.runs["oracle"] for m in r.migrations)
    assert comparison.summary["oracle"]["ratio_to_oracle"] == pytest.approx(1.0)
    assert (
        comparison.summary["static"]["ratio_to_oracle"]
        > comparison.summary["energy-greedy"]["ratio_to_oracle"]
    )


# --- summary.json


def test_summary_json_round_trips_with_every_metric_and_std(
    comparison: Comparison, rendered: dict[str, Path]
) -> None:
    loaded = json.loads(rendered["summary"].read_text(encoding="utf-8"))
    assert loaded == summary_dict(comparison)
    assert set(loaded) == {"scenario", "description", "forecast", "seeds", "policies", "windows"}
    assert loaded["scenario"] == comparison.scenario
    assert loaded["seeds"] == [0, 1]
    assert list(loaded["policies"]) == comparison.policies
    for policy, metrics in loaded["policies"].items():
        for name in METRIC_NAMES:
            assert metrics[name] == pytest.approx(comparison.summary[policy][name])
            assert f"{name}_std" in metrics
    for site, stats in loaded["windows"].items():
        assert set(stats) == {"count", "mean_h", "median_h", "p10_h", "p90_h"}
        lengths_h = comparison.window_lengths_s[site] / 3600.0
        assert stats["count"] == len(lengths_h)
        assert stats["median_h"] == pytest.approx(float(np.median(lengths_h)))
        assert stats["p10_h"] <= stats["median_h"] <= stats["p90_h"]


def test_single_seed_summary_has_no_std_keys() -> None:
    policies = summary_dict(synthetic_comparison(seeds=(0,), days=2.0))["policies"]
    assert isinstance(policies, dict)
    for metrics in policies.values():
        assert isinstance(metrics, dict)
        assert set(metrics) == set(METRIC_NAMES)


def test_non_finite_metrics_become_null(tmp_path: Path) -> None:
    comparison = synthetic_comparison(days=2.0)
    comparison.summary["static"]["progress_cv"] = math.nan
    comparison.summary["static"]["co2_kg"] = math.inf
    comparison.summary["energy-greedy"]["ratio_to_oracle"] = -math.inf
    comparison.window_lengths_s["empty-site"] = np.array([], dtype=np.float64)
    text = write_outputs(comparison, tmp_path, plots=False)["summary"].read_text(encoding="utf-8")

    def reject(token: str) -> float:
        raise AssertionError(f"non-JSON constant {token} in summary.json")

    loaded = json.loads(text, parse_constant=reject)
    assert loaded["policies"]["static"]["progress_cv"] is None
    assert loaded["policies"]["static"]["co2_kg"] is None
    assert loaded["policies"]["energy-greedy"]["ratio_to_oracle"] is None
    assert loaded["windows"]["empty-site"] == {
        "count": 0,
        "mean_h": None,
        "median_h": None,
        "p10_h": None,
        "p90_h": None,
    }
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "n/a" in page


# --- timeline.csv


def test_timeline_has_a_row_exactly_at_each_state_change(
    comparison: Comparison, rendered: dict[str, Path]
) -> None:
    header, rows = _read_csv(rendered["timeline"])
    assert tuple(header) == TIMELINE_CSV_COLUMNS
    expected = []
    for policy in comparison.policies:
        run = _first_seed_run(comparison, policy)
        for j in range(run.job_site.shape[0]):
            previous: tuple[int, int] | None = None
            for t in range(len(run.times_s)):
                current = (int(run.job_site[j, t]), int(run.job_state[j, t]))
                if current != previous:
                    site = run.site_names[current[0]] if current[0] >= 0 else ""
                    state = JobState(current[1]).name.lower()
                    expected.append((_iso(float(run.times_s[t])), policy, str(run.seed), str(j), site, state))
                previous = current
    actual = [tuple(row[c] for c in TIMELINE_CSV_COLUMNS) for row in rows]
    assert sorted(actual) == sorted(expected)
    assert len(actual) == len(set(actual))
    assert {row["seed"] for row in rows} == {"0"}
    assert {row["state"] for row in rows} == {"running", "paused", "migrating", "absent"}
    n_steps = len(comparison.runs["static"][0].times_s)
    assert len(rows) < n_steps  # change events, not one row per step


def test_timeline_replays_into_the_first_seed_arrays(
    comparison: Comparison, rendered: dict[str, Path]
) -> None:
    _, rows = _read_csv(rendered["timeline"])
    for policy in comparison.policies:
        run = _first_seed_run(comparison, policy)
        step_of = {_iso(float(t)): i for i, t in enumerate(run.times_s)}
        states = np.full(run.job_state.shape, -1, dtype=np.int64)
        for row in (r for r in rows if r["policy"] == policy):
            states[int(row["job"]), step_of[row["time_utc"]] :] = JobState[row["state"].upper()]
        assert np.array_equal(states, run.job_state)


# --- migrations.csv


def test_migrations_csv_lists_every_migration(comparison: Comparison, rendered: dict[str, Path]) -> None:
    header, rows = _read_csv(rendered["migrations"])
    assert tuple(header) == MIGRATIONS_CSV_COLUMNS
    expected: list[tuple[str, int, MigrationRecord]] = [
        (policy, run.seed, m)
        for policy in comparison.policies
        for run in comparison.runs[policy]
        for m in run.migrations
    ]
    assert len(rows) == len(expected)
    for row, (policy, seed, m) in zip(rows, expected, strict=True):
        assert row["policy"] == policy
        assert int(row["seed"]) == seed
        assert int(row["job"]) == m.job_id
        assert (row["src"], row["dst"]) == (m.src_site, m.dst_site)
        assert row["start_utc"] == _iso(m.start_s)
        assert row["end_utc"].startswith(_iso(math.floor(m.end_s))[:-1])
        assert float(row["checkpoint_bytes"]) == m.checkpoint_bytes
        assert float(row["bandwidth_bps"]) == m.bandwidth_bps
        assert float(row["window_s"]) == m.window_s
        assert float(row["energy_j"]) == m.energy_j
        assert row["failed"] == ("true" if m.failed else "false")
    assert any(row["failed"] == "true" for row in rows)


# --- figures


def test_figures_are_pngs(comparison: Comparison, rendered: dict[str, Path]) -> None:
    pngs = {key: path for key, path in rendered.items() if path.suffix == ".png"}
    expected = {f"placement_{p}" for p in comparison.policies} | {"metrics", "windows"}
    assert expected <= set(pngs)
    if importlib.util.find_spec("greenferry.sim.feasibility_plot") is not None:
        assert "feasibility" in pngs
    for path in pngs.values():
        assert path.is_file()
        assert path.read_bytes()[:8] == PNG_MAGIC


def test_placement_window_picks_the_busiest_week_of_a_long_run() -> None:
    run = synthetic_comparison(seeds=(0,), days=2.0).runs["energy-greedy"][0]
    n_steps = 30 * 288
    start_s = float(run.times_s[0])
    day_s = 86_400.0
    migrations = [
        dataclasses.replace(run.migrations[0], start_s=start_s + d * day_s, end_s=start_s + d * day_s + 600.0)
        for d in (1.5, 12.2, 13.4, 14.1, 15.9, 25.0)
    ]
    long_run = dataclasses.replace(
        run,
        times_s=start_s + 300.0 * np.arange(n_steps, dtype=np.float64),
        migrations=migrations,
    )
    window = placement_window_s([long_run])
    assert window[1] - window[0] == pytest.approx(7 * day_s)
    inside = [m for m in migrations if window[0] <= m.start_s < window[1]]
    assert len(inside) == 4
    assert (window[0] - start_s) % day_s == pytest.approx(0.0)
    short = placement_window_s([run])
    assert short == (start_s, float(run.times_s[-1]) + run.step_s)


def test_placement_plot_handles_a_year_at_five_minutes(tmp_path: Path) -> None:
    run = synthetic_comparison(seeds=(0,), days=7.0).runs["energy-greedy"][0]
    reps = 53  # 53 weeks ~ 107k steps
    n_steps = run.job_site.shape[1] * reps
    year = dataclasses.replace(
        run,
        times_s=run.times_s[0] + run.step_s * np.arange(n_steps, dtype=np.float64),
        surplus_w=np.tile(run.surplus_w, reps),
        site_load_w=np.tile(run.site_load_w, reps),
        job_site=np.tile(run.job_site, reps),
        job_state=np.tile(run.job_state, reps),
    )
    week = tmp_path / "week.png"
    plot_placement(year, week)
    whole = tmp_path / "year.png"
    plot_placement(year, whole, window_s=(float(year.times_s[0]), float(year.times_s[-1]) + year.step_s))
    assert week.read_bytes()[:8] == PNG_MAGIC
    assert whole.read_bytes()[:8] == PNG_MAGIC


# --- report.html and the table


def test_report_html_is_self_contained_and_shows_the_table(
    comparison: Comparison, rendered: dict[str, Path]
) -> None:
    page = rendered["report"].read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    for row in table_data(comparison).rows:
        assert f"<td>{html.escape(row.policy)}" in page
        for cell in row.cells:
            assert html.escape(cell) in page
    static = comparison.summary["static"]
    assert f"{static['nonrenewable_kwh']:.1f} ± {static['nonrenewable_kwh_std']:.1f}" in page
    assert "<script" not in page.lower()
    assert "http://" not in page
    assert "https://" not in page
    assert "<link" not in page.lower()
    sources = re.findall(r"""(?:src|href)\s*=\s*["']?([^"' >]+)""", page, flags=re.IGNORECASE)
    assert sources
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert page.count("<img ") == sum(1 for p in rendered.values() if p.suffix == ".png")
    lead = headline(comparison)
    assert lead is not None
    assert html.escape(lead) in page
    n_migrations = sum(len(r.migrations) for runs in comparison.runs.values() for r in runs)
    assert f"{n_migrations} migrations" in page
    assert "2.5–9.5 h" in page
    assert html.escape(str(comparison.extra["command"])) in page


def test_user_controlled_strings_are_escaped(tmp_path: Path) -> None:
    base = synthetic_comparison(days=2.0)
    evil_policy = '<b onmouseover="x()">greedy</b>'
    runs = dict(base.runs)
    runs[evil_policy] = [dataclasses.replace(r, policy=evil_policy) for r in runs.pop("energy-greedy")]
    summary = dict(base.summary)
    summary[evil_policy] = summary.pop("energy-greedy")
    evil = dataclasses.replace(
        base,
        scenario="<script>alert('scenario')</script>",
        description='Sites & <img src="x" onerror="alert(1)"> jobs',
        policies=["static", evil_policy, "oracle"],
        runs=runs,
        summary=summary,
        extra={"command": "greenferry simulate --scenario '<script>alert(2)</script>'"},
    )
    written = write_outputs(evil, tmp_path)
    page = written["report"].read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "<b onmouseover" not in page
    assert '<img src="x"' not in page
    assert "&lt;script&gt;alert(&#x27;scenario&#x27;)&lt;/script&gt;" in page
    assert "Sites &amp; &lt;img" in page
    assert "&lt;b onmouseover=&quot;x()&quot;&gt;greedy&lt;/b&gt;" in page
    assert all(p.parent == tmp_path for p in written.values())  # policy names never escape out_dir


def test_comparison_table_rows_best_and_oracle_last(comparison: Comparison) -> None:
    table = comparison_table(comparison)
    assert table.row_count == len(comparison.policies)
    assert len(table.columns) == 10
    assert table.rows[-1].style == "dim"
    data = table_data(comparison)
    assert [r.policy for r in data.rows][-1] == "oracle"
    assert not any(data.rows[-1].best)
    by_policy = {r.policy: r for r in data.rows}
    nonrenewable = data.headers.index("Non-renewable kWh")
    assert by_policy["energy-greedy"].best[nonrenewable]
    assert not by_policy["static"].best[nonrenewable]
    assert "±" in by_policy["static"].cells[nonrenewable]
    work = data.headers.index("Work GPU-h")
    assert len({r.cells[work] for r in data.rows}) == 1  # every policy finishes the same work...
    assert not any(r.best[work] for r in data.rows)  # ...so no one is "best" at it
    console = Console(record=True, width=220, color_system=None)
    console.print(table)
    text = console.export_text()
    for policy in comparison.policies:
        assert policy in text
    assert by_policy["static"].cells[nonrenewable] in text


def test_headline_compares_with_static(comparison: Comparison) -> None:
    lead = headline(comparison)
    assert lead is not None
    greedy = comparison.summary["energy-greedy"]["nonrenewable_kwh"]
    static = comparison.summary["static"]["nonrenewable_kwh"]
    assert lead.startswith("energy-greedy")
    assert f"{(1 - greedy / static) * 100:.1f}% less than static" in lead
    assert f"{comparison.summary['energy-greedy']['ratio_to_oracle']:.2f}× the oracle" in lead


def test_headline_ignores_policies_that_saved_energy_by_doing_less_work() -> None:
    comparison = synthetic_comparison(days=2.0)
    lazy = dict(comparison.summary["static"])
    lazy.update(nonrenewable_kwh=0.0, work_done_gpu_h=0.8 * lazy["work_done_gpu_h"])
    comparison.summary["pause-when-dirty"] = lazy
    comparison.policies.insert(1, "pause-when-dirty")
    lead = headline(comparison)
    assert lead is not None
    assert lead.startswith("energy-greedy used the least")
    assert "pause-when-dirty used less (0.00 kWh) but completed 20.0% less work." in lead


def test_outputs_without_plots_have_no_images(tmp_path: Path) -> None:
    written = write_outputs(synthetic_comparison(days=2.0), tmp_path, plots=False)
    assert set(written) == {"summary", "timeline", "migrations", "report"}
    assert "<img" not in written["report"].read_text(encoding="utf-8")
    assert not list(tmp_path.glob("*.png"))
