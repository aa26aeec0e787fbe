"""Turn a :class:`~greenferry.sim.results.Comparison` into files people and programs read.

``write_outputs`` writes ``summary.json`` (machine-readable metrics), ``timeline.csv`` (placement change
events of each policy's first-seed run), ``migrations.csv`` (every migration of every run), the PNG figures
of :mod:`greenferry.sim.plots` and ``report.html``: one self-contained page (inline CSS, figures as data URIs,
no scripts, every user-controlled string escaped). ``comparison_table`` renders the same policy table for the
terminal with rich.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from greenferry.core.units import format_bandwidth, format_bytes, format_duration, format_energy
from greenferry.sim.plots import (
    PAPER_WINDOW_BAND_S,
    PlotFile,
    first_seed_run,
    is_oracle,
    ordered_policies,
    write_plots,
)
from greenferry.sim.results import Comparison, FloatArray, JobState, MigrationRecord, RunResult

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "MIGRATIONS_CSV_COLUMNS",
    "MIGRATIONS_TABLE_MAX_ROWS",
    "TIMELINE_CSV_COLUMNS",
    "TableData",
    "TableRow",
    "comparison_table",
    "headline",
    "iso_utc",
    "summary_dict",
    "table_data",
    "window_stats",
    "write_outputs",
]

TIMELINE_CSV_COLUMNS: tuple[str, ...] = ("time_utc", "policy", "seed", "job", "site", "state")
MIGRATIONS_CSV_COLUMNS: tuple[str, ...] = (
    "policy",
    "seed",
    "job",
    "src",
    "dst",
    "start_utc",
    "end_utc",
    "checkpoint_bytes",
    "bandwidth_bps",
    "window_s",
    "failed",
    "energy_j",
    "uncovered_landing",
)
MIGRATIONS_TABLE_MAX_ROWS = 200  # report.html lists this many; migrations.csv has them all

JsonValue = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]


# --- summary.json


def window_stats(lengths_s: FloatArray | Sequence[float]) -> dict[str, float | int | None]:
    """Count, mean, median, 10th and 90th percentile (hours) of renewable window lengths given in seconds.

    The statistics are None when there are no windows.
    """
    hours = np.asarray(lengths_s, dtype=np.float64) / 3600.0
    hours = hours[np.isfinite(hours)]
    if hours.size == 0:
        return {"count": 0, "mean_h": None, "median_h": None, "p10_h": None, "p90_h": None}
    p10, median, p90 = (float(v) for v in np.percentile(hours, [10.0, 50.0, 90.0]))
    return {
        "count": int(hours.size),
        "mean_h": float(hours.mean()),
        "median_h": median,
        "p10_h": p10,
        "p90_h": p90,
    }


def summary_dict(comparison: Comparison) -> dict[str, JsonValue]:
    """The comparison as a JSON-safe dict (non-finite numbers become None).

    Returns:
        ``{"scenario", "description", "forecast", "seeds", "policies": {policy: {metric: mean, ...,
        "<metric>_std": std (only when seeds > 1)}}, "windows": {site: {"count", "mean_h", "median_h",
        "p10_h", "p90_h"}}}``.
    """
    raw: dict[str, object] = {
        "scenario": comparison.scenario,
        "description": comparison.description,
        "forecast": comparison.forecast,
        "seeds": list(comparison.seeds),
        "policies": {p: dict(comparison.summary.get(p, {})) for p in comparison.policies},
        "windows": {site: window_stats(lengths) for site, lengths in comparison.window_lengths_s.items()},
    }
    safe = _json_safe(raw)
    assert isinstance(safe, dict)
    return safe


def _json_safe(value: object) -> JsonValue:
    """Recursively convert numpy scalars/arrays to Python values and NaN/inf to None."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_json_safe(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return str(value)


# --- CSV files


def iso_utc(epoch_s: float) -> str:
    """UTC epoch seconds as ISO-8601 with a Z suffix (milliseconds only when the time has a fraction)."""
    moment = datetime.fromtimestamp(round(epoch_s, 3), tz=UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _timeline_rows(comparison: Comparison) -> Iterator[tuple[str, str, int, int, str, str]]:
    """Change events: a job's first step, then every step whose (site, state) differs from the step before."""
    state_names = {int(s): s.name.lower() for s in JobState}
    for policy in comparison.policies:
        run = first_seed_run(comparison, policy)
        if run is None:
            continue
        changed = np.ones(run.job_site.shape, dtype=bool)
        changed[:, 1:] = (run.job_site[:, 1:] != run.job_site[:, :-1]) | (
            run.job_state[:, 1:] != run.job_state[:, :-1]
        )
        steps, jobs = np.nonzero(changed.T)  # time-major: rows sorted by time, then job
        for step, job in zip(steps.tolist(), jobs.tolist(), strict=True):
            site_index = int(run.job_site[job, step])
            site = run.site_names[site_index] if 0 <= site_index < len(run.site_names) else ""
            state = int(run.job_state[job, step])
            yield (
                iso_utc(float(run.times_s[step])),
                policy,
                run.seed,
                job,
                site,
                state_names.get(state, str(state)),
            )


def _csv_number(value: float) -> str:
    """A number for CSV: exact round-trip repr, empty for NaN/inf."""
    number = float(value)
    if not math.isfinite(number):
        return ""
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else repr(number)


def _migration_rows(comparison: Comparison) -> Iterator[tuple[str, RunResult, MigrationRecord]]:
    for policy in comparison.policies:
        for run in comparison.runs.get(policy, []):
            for migration in run.migrations:
                yield policy, run, migration


def _write_timeline(comparison: Comparison, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(TIMELINE_CSV_COLUMNS)
        writer.writerows(_timeline_rows(comparison))


def _write_migrations(comparison: Comparison, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(MIGRATIONS_CSV_COLUMNS)
        for policy, run, m in _migration_rows(comparison):
            writer.writerow(
                (
                    policy,
                    run.seed,
                    m.job_id,
                    m.src_site,
                    m.dst_site,
                    iso_utc(m.start_s),
                    iso_utc(m.end_s),
                    _csv_number(m.checkpoint_bytes),
                    _csv_number(m.bandwidth_bps),
                    _csv_number(m.window_s),
                    "true" if m.failed else "false",
                    _csv_number(m.energy_j),
                    "true" if m.uncovered_landing else "false",
                )
            )


# --- the policy table (shared by rich and HTML)


@dataclass(frozen=True)
class TableRow:
    """One policy's formatted cells; ``best[i]`` marks the best online value of column i."""

    policy: str
    oracle: bool
    cells: tuple[str, ...]
    best: tuple[bool, ...]


@dataclass(frozen=True)
class TableData:
    """The policy comparison table: headers (policy column excluded) and rows, oracle last."""

    headers: tuple[str, ...]
    rows: tuple[TableRow, ...]


@dataclass(frozen=True)
class _Column:
    header: str
    score: Callable[[Mapping[str, float]], float]  # what "best" compares
    lower_is_better: bool
    cell: Callable[[Mapping[str, float]], str]
    only_if_positive: str | None = None  # candidates must have this metric > 0 (e.g. policies that migrate)


def _get(stats: Mapping[str, float], key: str) -> float:
    value = stats.get(key, math.nan)
    return float(value) if value is not None else math.nan


def _decimals(value: float) -> int:
    magnitude = abs(value)
    return 0 if magnitude >= 1000 else 1 if magnitude >= 10 else 2


def _num(value: float, decimals: int | None = None) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.{_decimals(value) if decimals is None else decimals}f}"


def _count(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _renewable_share_pct(stats: Mapping[str, float]) -> float:
    renewable, nonrenewable = _get(stats, "renewable_kwh"), _get(stats, "nonrenewable_kwh")
    total = renewable + nonrenewable
    return 100.0 * renewable / total if total > 0 else math.nan


def _columns(with_std: bool) -> tuple[_Column, ...]:
    def nonrenewable_cell(stats: Mapping[str, float]) -> str:
        mean = _get(stats, "nonrenewable_kwh")
        std = _get(stats, "nonrenewable_kwh_std")
        if not with_std or not math.isfinite(mean) or not math.isfinite(std):
            return _num(mean)
        decimals = _decimals(mean)
        return f"{_num(mean, decimals)} ± {_num(std, decimals)}"

    return (
        _Column("Non-renewable kWh", lambda s: _get(s, "nonrenewable_kwh"), True, nonrenewable_cell),
        _Column(
            "× oracle",
            lambda s: _get(s, "ratio_to_oracle"),
            True,
            lambda s: _num(_get(s, "ratio_to_oracle"), 2),
        ),
        _Column("Renewable %", _renewable_share_pct, False, lambda s: _num(_renewable_share_pct(s), 1)),
        _Column("CO2 kg", lambda s: _get(s, "co2_kg"), True, lambda s: _num(_get(s, "co2_kg"))),
        _Column(
            "Migrations (failed)",
            lambda s: _get(s, "failed_migrations"),
            True,
            lambda s: f"{_count(_get(s, 'migrations'))} ({_count(_get(s, 'failed_migrations'))})",
            only_if_positive="migrations",
        ),
        _Column(
            "Downtime h",
            lambda s: _get(s, "downtime_s") / 3600.0,
            True,
            lambda s: _num(_get(s, "downtime_s") / 3600.0, 1),
        ),
        _Column(
            "Work GPU-h",
            lambda s: _get(s, "work_done_gpu_h"),
            False,
            lambda s: _num(_get(s, "work_done_gpu_h"), 1),
        ),
        _Column(
            "JCT mean / p95 h",
            lambda s: _get(s, "mean_jct_h"),
            True,
            lambda s: f"{_num(_get(s, 'mean_jct_h'), 1)} / {_num(_get(s, 'p95_jct_h'), 1)}",
        ),
        _Column(
            "Progress CV", lambda s: _get(s, "progress_cv"), True, lambda s: _num(_get(s, "progress_cv"), 2)
        ),
    )


def table_data(comparison: Comparison) -> TableData:
    """Formatted policy table shared by :func:`comparison_table` and report.html.

    Best values are marked among online policies only (never the oracle), only when at least two online
    policies have a finite value and not all of them tie; the migrations column compares failed migrations
    among policies that migrate.
    """
    columns = _columns(with_std=len(comparison.seeds) > 1)
    policies = ordered_policies(comparison)
    stats = {p: comparison.summary.get(p, {}) for p in policies}
    best: dict[str, list[bool]] = {p: [False] * len(columns) for p in policies}
    for i, column in enumerate(columns):
        scores = {
            p: column.score(stats[p])
            for p in policies
            if not is_oracle(p)
            and (column.only_if_positive is None or _get(stats[p], column.only_if_positive) > 0)
        }
        finite = {p: v for p, v in scores.items() if math.isfinite(v)}
        if len(finite) < 2:
            continue
        target = min(finite.values()) if column.lower_is_better else max(finite.values())
        winners = [p for p, v in finite.items() if math.isclose(v, target, rel_tol=1e-9, abs_tol=1e-12)]
        if len(winners) < len(finite):  # a column where every policy ties has no best
            for p in winners:
                best[p][i] = True
    rows = tuple(
        TableRow(
            policy=p,
            oracle=is_oracle(p),
            cells=tuple(column.cell(stats[p]) for column in columns),
            best=tuple(best[p]),
        )
        for p in policies
    )
    return TableData(headers=tuple(c.header for c in columns), rows=rows)


def comparison_table(comparison: Comparison) -> Table:
    """A rich table, one row per policy: best online value per column in bold green, oracle last and dim."""
    from rich.table import Table
    from rich.text import Text

    data = table_data(comparison)
    seeds = len(comparison.seeds)
    table = Table(
        title=Text(
            f"{comparison.scenario}: {seeds} seed{'s' if seeds != 1 else ''}, forecast {comparison.forecast}"
        ),
        caption=Text("bold green: best online policy per column; oracle: offline bound (dim)"),
        header_style="bold",
    )
    table.add_column("Policy", no_wrap=True)
    for header in data.headers:
        table.add_column(header, justify="right")
    for row in data.rows:
        cells = [Text(row.policy)]  # Text, not markup: names with "[...]" print as they are
        cells += [
            Text(cell, style="bold green" if best else "")
            for cell, best in zip(row.cells, row.best, strict=True)
        ]
        table.add_row(*cells, style="dim" if row.oracle else None)
    return table


def headline(comparison: Comparison) -> str | None:
    """One paragraph on the best online policy: % non-renewable energy vs static and energy-greedy, x oracle.

    The best online policy is the one with the least non-renewable energy among those that completed (within
    1%) as much work as the most productive online policy: using less energy by doing less work does not
    count, and the paragraph names any policy left out that way.

    Returns:
        None when no online policy has a finite non-renewable energy.
    """
    summary = comparison.summary
    online = {
        p: _get(summary.get(p, {}), "nonrenewable_kwh")
        for p in comparison.policies
        if not is_oracle(p) and math.isfinite(_get(summary.get(p, {}), "nonrenewable_kwh"))
    }
    if not online:
        return None
    work = {p: _get(summary.get(p, {}), "work_done_gpu_h") for p in online}
    most_work = max((w for w in work.values() if math.isfinite(w)), default=math.nan)
    full = {
        p: kwh for p, kwh in online.items() if not math.isfinite(most_work) or work[p] >= 0.99 * most_work
    }
    candidates = full or online
    best = min(candidates, key=lambda p: candidates[p])
    best_kwh = candidates[best]
    seeds = len(comparison.seeds)
    text = f"{best} used the least non-renewable energy of the online policies that completed the full work"
    text += f" ({_num(best_kwh)} kWh{f', mean over {seeds} seeds' if seeds > 1 else ''})"
    versus = []
    for baseline in ("static", "energy-greedy"):
        base_kwh = online.get(baseline, math.nan)
        if baseline == best or not math.isfinite(base_kwh) or base_kwh <= 0:
            continue
        change_pct = (1.0 - best_kwh / base_kwh) * 100.0
        versus.append(f"{abs(change_pct):.1f}% {'less' if change_pct >= 0 else 'more'} than {baseline}")
    text += (": " + " and ".join(versus) if versus else "") + "."
    ratio = _get(summary.get(best, {}), "ratio_to_oracle")
    if math.isfinite(ratio):
        text += f" That is {ratio:.2f}× the oracle's non-renewable energy."
    for p, kwh in online.items():
        if p not in candidates and kwh < best_kwh:
            short_pct = 100.0 * (1.0 - work[p] / most_work)
            text += f" {p} used less ({_num(kwh)} kWh) but completed {short_pct:.1f}% less work."
    return text


# --- report.html

_CSS = """
:root { --fg:#1f2933; --muted:#616e7c; --line:#d9e2ec; --bg:#ffffff; --accent:#2e7d32; --bad:#c62828; }
* { box-sizing: border-box; }
body { margin:0; background:#f5f7fa; color:var(--fg);
  font:15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width:1180px; margin:0 auto; padding:28px 32px 60px; background:var(--bg); }
h1 { font-size:26px; margin:0 0 4px; } h2 { font-size:19px; margin:36px 0 10px;
  border-bottom:1px solid var(--line); padding-bottom:4px; }
.desc { font-size:16px; margin:4px 0 8px; } .meta { color:var(--muted); font-size:13px; margin:0; }
.headline { margin:22px 0 8px; padding:16px 20px; border-left:5px solid var(--accent); background:#f1f8e9;
  font-size:16.5px; }
table { border-collapse:collapse; width:100%; font-size:13.5px; margin:6px 0; }
th, td { padding:6px 9px; border-bottom:1px solid var(--line); text-align:right; white-space:nowrap; }
th { background:#f0f4f8; font-weight:600; } th:first-child, td:first-child { text-align:left; }
td.text { text-align:left; }
td.best { color:var(--accent); font-weight:700; background:#e8f5e9; }
tr.oracle td { color:var(--muted); font-style:italic; }
tr.failed td { background:#ffebee; } td.failed { color:var(--bad); font-weight:600; }
.scroll { overflow-x:auto; }
figure { margin:18px 0 28px; } figure img { max-width:100%; height:auto; border:1px solid var(--line); }
figcaption { color:var(--muted); font-size:13.5px; margin-top:6px; }
.note { color:var(--muted); font-size:13px; }
pre { background:#263238; color:#eceff1; padding:12px 14px; border-radius:4px; overflow-x:auto; }
"""


def _e(value: object) -> str:
    """HTML-escape anything user-controlled (quotes included, so it is safe in attributes too)."""
    return html.escape(str(value), quote=True)


def _html_policy_table(data: TableData) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in ("Policy", *data.headers))
    body = []
    for row in data.rows:
        cells = "".join(
            f'<td class="best">{_e(cell)}</td>' if best else f"<td>{_e(cell)}</td>"
            for cell, best in zip(row.cells, row.best, strict=True)
        )
        policy = _e(row.policy) + (" <small>(offline bound)</small>" if row.oracle else "")
        row_open = '<tr class="oracle">' if row.oracle else "<tr>"
        body.append(f"{row_open}<td>{policy}</td>{cells}</tr>")
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _html_windows(comparison: Comparison) -> str:
    lo_s, hi_s = PAPER_WINDOW_BAND_S
    rows = []
    pooled: list[FloatArray] = []
    for site, lengths in comparison.window_lengths_s.items():
        lengths_s = np.asarray(lengths, dtype=np.float64)
        pooled.append(lengths_s)
        stats = window_stats(lengths_s)
        in_band = (
            float(np.mean((lengths_s >= lo_s) & (lengths_s <= hi_s)) * 100.0) if lengths_s.size else math.nan
        )
        cells = [str(stats["count"])] + [
            _num(float(v), 1) if isinstance(v, float) else "n/a"
            for v in (stats["mean_h"], stats["median_h"], stats["p10_h"], stats["p90_h"])
        ]
        cells.append(_num(in_band, 0))
        rows.append(f"<tr><td>{_e(site)}</td>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    if not rows:
        return '<p class="note">No window lengths were recorded for this scenario.</p>'
    all_s = np.concatenate(pooled)
    summary = ""
    if all_s.size:
        share = float(np.mean((all_s >= lo_s) & (all_s <= hi_s)) * 100.0)
        summary = (
            f"<p>Across all sites the median renewable window lasts {np.median(all_s) / 3600.0:.1f} h and"
            f" {share:.0f}% of the {all_s.size} windows fall in the 2.5–9.5 h range the paper reports.</p>"
        )
    head = "".join(
        f"<th>{h}</th>" for h in ("Site", "Windows", "Mean h", "Median h", "P10 h", "P90 h", "In 2.5–9.5 h %")
    )
    return (
        f'{summary}<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _human(formatter: Callable[[float], str], value: float) -> str:
    return formatter(value) if math.isfinite(value) else "n/a"


def _html_migrations(comparison: Comparison) -> str:
    all_rows = list(_migration_rows(comparison))
    failed = sum(m.failed for _, _, m in all_rows)
    if not all_rows:
        return "<p>No migrations happened in any run.</p>"
    shown = all_rows[:MIGRATIONS_TABLE_MAX_ROWS]
    intro = (
        f"<p>{len(all_rows)} migration{'s' if len(all_rows) != 1 else ''} across all policies and seeds,"
        f" {failed} failed."
        + (
            f" The first {len(shown)} are listed; migrations.csv has all of them."
            if len(shown) < len(all_rows)
            else ""
        )
        + "</p>"
    )
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "Policy",
            "Seed",
            "Job",
            "From",
            "To",
            "Start (UTC)",
            "Duration",
            "Checkpoint",
            "Bandwidth",
            "Window at decision",
            "Outcome",
            "Energy",
        )
    )
    body = []
    for policy, run, m in shown:
        outcome = '<td class="failed">failed</td>' if m.failed else "<td>ok</td>"
        cells = [
            f'<td class="text">{_e(policy)}</td>',
            f"<td>{_e(run.seed)}</td>",
            f"<td>{_e(m.job_id)}</td>",
            f'<td class="text">{_e(m.src_site)}</td>',
            f'<td class="text">{_e(m.dst_site)}</td>',
            f"<td>{_e(iso_utc(m.start_s).replace('T', ' ').removesuffix('Z'))}</td>",
            f"<td>{_e(_human(format_duration, m.end_s - m.start_s))}</td>",
            f"<td>{_e(_human(format_bytes, m.checkpoint_bytes))}</td>",
            f"<td>{_e(_human(format_bandwidth, m.bandwidth_bps))}</td>",
            f"<td>{_e(_human(format_duration, m.window_s))}</td>",
            outcome,
            f"<td>{_e(_human(format_energy, m.energy_j))}</td>",
        ]
        row_open = '<tr class="failed">' if m.failed else "<tr>"
        body.append(row_open + "".join(cells) + "</tr>")
    return (
        f'{intro}<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _html_figures(plot_files: Sequence[PlotFile]) -> str:
    if not plot_files:
        return '<p class="note">Figures were not rendered for this report.</p>'
    parts = []
    for plot in plot_files:
        encoded = base64.b64encode(plot.path.read_bytes()).decode("ascii")
        parts.append(
            f'<figure><img src="data:image/png;base64,{encoded}" alt="{_e(plot.title)}">'
            f"<figcaption><strong>{_e(plot.title)}.</strong> {_e(plot.caption)}</figcaption></figure>"
        )
    return "".join(parts)


def _trace_facts(comparison: Comparison) -> str:
    run = next((r for p in comparison.policies if (r := first_seed_run(comparison, p)) is not None), None)
    if run is None or run.times_s.size == 0:
        return ""
    start, end = iso_utc(float(run.times_s[0])), iso_utc(float(run.times_s[-1]) + run.step_s)
    return (
        f"Trace {start} to {end}, step {format_duration(run.step_s)}; {len(run.site_names)} sites"
        f" ({', '.join(run.site_names)}); {run.job_site.shape[0]} jobs."
    )


def _render_html(comparison: Comparison, plot_files: Sequence[PlotFile]) -> str:
    """The whole report page; every value that comes from the comparison goes through ``_e``."""
    seeds = ", ".join(str(s) for s in comparison.seeds)
    first_seed = comparison.seeds[0] if comparison.seeds else 0
    lead = headline(comparison)
    command = comparison.extra.get("command")
    command_html = (
        f"<h2>Reproduce</h2><pre><code>{_e(command)}</code></pre>"
        if isinstance(command, str) and command
        else ""
    )
    std_note = " (± one standard deviation across seeds)" if len(comparison.seeds) > 1 else ""
    oracle_note = (
        "Ratio to oracle divides a policy's non-renewable energy by the least non-renewable energy of any"
        " plan that does the same work by the same completion time; the oracle computes that plan exactly"
        " (dynamic programming per job, with the whole trace known in advance), so 1.00 is the floor and no"
        " online policy can go below it."
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>greenferry report: {_e(comparison.scenario)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<header>
<h1>greenferry simulation report: {_e(comparison.scenario)}</h1>
<p class="desc">{_e(comparison.description)}</p>
<p class="meta">Policies: {_e(", ".join(comparison.policies))}. Seeds: {_e(seeds)}. Forecast:
{_e(comparison.forecast)}. {_e(_trace_facts(comparison))}</p>
</header>
{f'<p class="headline">{_e(lead)}</p>' if lead else ""}
<h2>Policies compared</h2>
{_html_policy_table(table_data(comparison))}
<p class="note">Means over seeds{std_note}.
Green cells: the best online policy per column (the migrations column compares failed migrations among
policies that migrate). Non-renewable energy counts job and host power while the site's surplus does not
cover it, migration energy included. Downtime is time paused or migrating; progress CV is the coefficient
of variation of hourly progress.</p>
<h2>Renewable windows</h2>
{_html_windows(comparison)}
<h2>Figures</h2>
{_html_figures(plot_files)}
<h2>Migrations</h2>
{_html_migrations(comparison)}
<h2>Methodology</h2>
<p>{_e(oracle_note)}</p>
<p>A migration failed when the destination's renewable window, open when the move began, had closed by the
time it landed (or the move was aborted); landings on a site whose surplus did not cover the job for any
reason, including deliberate moves ahead of a window, are counted as uncovered landings in summary.json;
the window shown is the one the destination actually had at decision time, from the trace. Renewable windows
are the spans during which a site's surplus covers a job. The placement figures and timeline.csv show each
policy's run on the first seed ({_e(first_seed)}) only; summary.json and migrations.csv cover every seed.</p>
{command_html}
</main>
</body>
</html>
"""


# --- everything at once


def write_outputs(comparison: Comparison, out_dir: Path, *, plots: bool = True) -> dict[str, Path]:
    """Write summary.json, timeline.csv, migrations.csv, the figures and report.html into ``out_dir``.

    Args:
        comparison: The scenario's results.
        out_dir: Directory to write into (created if missing); existing files of the same names are replaced.
        plots: Render the PNG figures (and embed them in the report).

    Returns:
        Name -> path: "summary", "timeline", "migrations", "report", plus one entry per figure
        ("placement_<policy>", "metrics", "feasibility" when available, "windows").
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    summary_path = out_dir / "summary.json"
    summary_path.write_text(
        json.dumps(summary_dict(comparison), indent=2, allow_nan=False, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    written["summary"] = summary_path

    timeline_path = out_dir / "timeline.csv"
    _write_timeline(comparison, timeline_path)
    written["timeline"] = timeline_path

    migrations_path = out_dir / "migrations.csv"
    _write_migrations(comparison, migrations_path)
    written["migrations"] = migrations_path

    plot_files = write_plots(comparison, out_dir) if plots else []
    for plot in plot_files:
        written[plot.key] = plot.path

    report_path = out_dir / "report.html"
    report_path.write_text(_render_html(comparison, plot_files), encoding="utf-8")
    written["report"] = report_path
    return written
