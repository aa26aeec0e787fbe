"""Figures for simulation reports: placement on surplus, metrics by policy, feasibility, window lengths.

matplotlib is imported inside the functions (so importing the report module stays fast) and only through its
object-oriented API (``matplotlib.figure.Figure`` rendered by Agg): no pyplot, no global backend switch, no
figure registry to leak from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from greenferry.sim.results import Comparison, FloatArray, IntArray, JobState, RunResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "PAPER_WINDOW_BAND_S",
    "PlotFile",
    "first_seed_run",
    "is_oracle",
    "ordered_policies",
    "placement_window_s",
    "plot_feasibility",
    "plot_metrics",
    "plot_placement",
    "plot_window_histogram",
    "write_plots",
]

PAPER_WINDOW_BAND_S: tuple[float, float] = (2.5 * 3600.0, 9.5 * 3600.0)
"""Renewable window lengths the paper reports (2.5-9.5 h)."""

_DAY_S = 86_400.0
_WEEK_S = 7 * _DAY_S
_FULL_RANGE_MAX_S = 14 * _DAY_S  # runs up to this long are plotted whole by default
_DPI = 110
_SURPLUS_COLOUR = "#4caf50"
_LOAD_COLOUR = "#263238"
_GRID_COLOUR = "#e53935"
_OK_MIGRATION_COLOUR = "#1e3a8a"
_FAILED_COLOUR = "#d50000"
_ORACLE_COLOUR = "#9e9e9e"
_BAND_COLOUR = "#ffb300"
_JOB_COLOURS = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
_POLICY_COLOURS = ("#5c6bc0", "#26a69a", "#ef6c00", "#8e24aa", "#43a047", "#f4511e", "#00897b", "#6d4c41")
_MAX_ARROWS = 60  # above this many migrations in the plotted window, draw only failed landings


@dataclass(frozen=True)
class PlotFile:
    """One rendered figure and the words the report puts around it."""

    key: str
    path: Path
    title: str
    caption: str


def is_oracle(policy: str) -> bool:
    """Whether ``policy`` is the offline oracle (a bound, not a policy a site could run)."""
    return policy == "oracle" or policy.startswith("oracle-")


def ordered_policies(comparison: Comparison) -> list[str]:
    """The comparison's policies in their own order, oracle(s) moved last."""
    online = [p for p in comparison.policies if not is_oracle(p)]
    return online + [p for p in comparison.policies if is_oracle(p)]


def first_seed_run(comparison: Comparison, policy: str) -> RunResult | None:
    """The policy's run on the comparison's first seed, if it kept its timeline arrays."""
    runs = comparison.runs.get(policy, [])
    first_seed = comparison.seeds[0] if comparison.seeds else None
    run = next((r for r in runs if r.seed == first_seed), runs[0] if runs else None)
    return run if run is not None and run.times_s.size > 0 and run.job_site.size > 0 else None


def write_plots(
    comparison: Comparison, out_dir: Path, *, window_s: tuple[float, float] | None = None
) -> list[PlotFile]:
    """Render every report figure into ``out_dir`` as PNG.

    Args:
        comparison: The scenario's results.
        out_dir: Existing directory to write into.
        window_s: (start, end) UTC epoch seconds for the placement plots; by default the whole run when it
            lasts at most 14 days, else the 7 days with the most migrations.

    Returns:
        The figures written, in reading order: placement per policy (its first-seed run), metrics,
        feasibility, windows.
    """
    files: list[PlotFile] = []
    seed0_runs = [run for p in ordered_policies(comparison) if (run := first_seed_run(comparison, p))]
    if seed0_runs:
        window = window_s if window_s is not None else placement_window_s(seed0_runs)
        span = _describe_window(window, seed0_runs[0])
        for run in seed0_runs:
            path = out_dir / f"placement_{_slug(run.policy)}.png"
            plot_placement(run, path, window_s=window, scenario=comparison.scenario)
            files.append(
                PlotFile(
                    key=f"placement_{run.policy}",
                    path=path,
                    title=f"Placement: {run.policy}",
                    caption=(
                        f"{run.policy}, seed {run.seed}, {span}. Green: renewable surplus per site;"
                        " black line: power greenferry drew there; red fill: grid (non-renewable) draw."
                        " Bands at the top show where each job was: solid while running, pale while paused,"
                        " hatched while migrating. Arrows (drawn when at most 60 migrations are in view) go"
                        " from source to destination; red arrows and crosses are failed migrations (landed"
                        " after the destination's window had closed)."
                    ),
                )
            )
    path = out_dir / "metrics.png"
    plot_metrics(comparison, path)
    files.append(
        PlotFile(
            key="metrics",
            path=path,
            title="Metrics by policy",
            caption=(
                "Means over seeds (error bars: one standard deviation across seeds). Ratio to oracle is"
                " non-renewable energy divided by the oracle's; 1.0 is the best any plan could do."
            ),
        )
    )
    path = out_dir / "feasibility.png"
    plot_feasibility(comparison, path)
    files.append(
        PlotFile(
            key="feasibility",
            path=path,
            title="Migration feasibility",
            caption=(
                "Which (bandwidth, checkpoint size) pairs can move a job within a renewable window of"
                " each length; points are the migrations of every policy and seed, failed ones in red."
            ),
        )
    )
    path = out_dir / "windows.png"
    plot_window_histogram(comparison, path)
    files.append(
        PlotFile(
            key="windows",
            path=path,
            title="Renewable window lengths",
            caption=(
                "Length of each site's renewable windows in the trace; the shaded band is the 2.5-9.5 h range"
                " the paper reports."
            ),
        )
    )
    return files


def placement_window_s(runs: Sequence[RunResult], *, span_s: float = _WEEK_S) -> tuple[float, float]:
    """The time range the placement plots show by default.

    The whole run when it lasts at most 14 days; otherwise the ``span_s`` long range, starting at a whole day
    of the trace, holding the most migration starts across ``runs`` (the earliest such range on ties).

    Returns:
        (start, end) in UTC epoch seconds, end exclusive.
    """
    first = runs[0]
    t0 = float(first.times_s[0])
    t_end = float(first.times_s[-1]) + first.step_s
    if t_end - t0 <= _FULL_RANGE_MAX_S:
        return t0, t_end
    starts_s = np.sort(np.array([m.start_s for r in runs for m in r.migrations], dtype=np.float64))
    day_starts_s = t0 + _DAY_S * np.arange(max(1, math.floor((t_end - t0 - span_s) / _DAY_S) + 1))
    counts = np.searchsorted(starts_s, day_starts_s + span_s) - np.searchsorted(starts_s, day_starts_s)
    best = float(day_starts_s[int(np.argmax(counts))]) if len(counts) else t0
    return best, min(best + span_s, t_end)


def plot_placement(
    run: RunResult,
    path: Path,
    *,
    window_s: tuple[float, float] | None = None,
    scenario: str = "",
    max_points: int = 3000,
) -> None:
    """Plot one run's job placement over each site's renewable surplus.

    One stacked panel per site shows surplus and greenferry's load (kW), the grid draw where load exceeds
    surplus, a band per job where it was (running / paused / migrating) and the migrations as arrows
    between panels (failed ones in red). Curves are bin-averaged down to ``max_points`` points so year-long
    runs stay fast; placement bands keep full resolution.

    Args:
        run: The run to plot.
        path: PNG file to write.
        window_s: (start, end) UTC epoch seconds to show; default :func:`placement_window_s`.
        scenario: Scenario name for the title.
        max_points: Most points per curve.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import ConnectionPatch, Patch, Rectangle
    from matplotlib.ticker import MaxNLocator
    from matplotlib.transforms import blended_transform_factory

    start_s, end_s = window_s if window_s is not None else placement_window_s([run])
    i0 = int(np.searchsorted(run.times_s, start_s, side="left"))
    i1 = max(i0 + 1, int(np.searchsorted(run.times_s, end_s, side="left")))
    times_s = run.times_s[i0:i1]
    edges_s = np.append(times_s, times_s[-1] + run.step_s)
    surplus_kw = run.surplus_w[:, i0:i1] / 1e3
    load_kw = run.site_load_w[:, i0:i1] / 1e3
    curve_edges_s, surplus_kw, load_kw = _bin_mean(edges_s, surplus_kw, load_kw, max_points=max_points)
    curve_x = _to_mpl_dates(curve_edges_s)

    n_sites = len(run.site_names)
    n_jobs = run.job_site.shape[0]
    band_h = min(0.09, 0.36 / max(1, n_jobs))  # axes fraction per job band
    data_top = 1.0 - n_jobs * band_h - 0.03
    ymax_kw = max(float(np.nanmax(surplus_kw, initial=0.0)), float(np.nanmax(load_kw, initial=0.0)), 0.1)

    fig = Figure(figsize=(12.0, 1.2 + 2.4 * n_sites), dpi=_DPI, layout="constrained")
    axes: list[Axes] = list(np.atleast_1d(fig.subplots(n_sites, 1, sharex=True, squeeze=False)[:, 0]))
    x_edges = _to_mpl_dates(edges_s)
    for s, ax in enumerate(axes):
        _step_fill(
            ax, curve_x, np.zeros_like(surplus_kw[s]), surplus_kw[s], colour=_SURPLUS_COLOUR, alpha=0.35
        )
        _step_line(ax, curve_x, surplus_kw[s], colour=_SURPLUS_COLOUR, width=0.8)
        over = np.maximum(load_kw[s], surplus_kw[s])
        _step_fill(ax, curve_x, surplus_kw[s], over, colour=_GRID_COLOUR, alpha=0.45)
        _step_line(ax, curve_x, load_kw[s], colour=_LOAD_COLOUR, width=1.0)
        band_tf = blended_transform_factory(ax.transData, ax.transAxes)
        for j in range(n_jobs):
            y0 = 1.0 - (j + 1) * band_h
            colour = _JOB_COLOURS[j % len(_JOB_COLOURS)]
            here = run.job_site[j, i0:i1] == s
            states = run.job_state[j, i0:i1]
            for state, style in (
                (JobState.RUNNING, {"alpha": 0.95}),
                (JobState.PAUSED, {"alpha": 0.25}),
                (JobState.MIGRATING, {"alpha": 0.5, "hatch": "////", "edgecolor": "white", "linewidth": 0}),
            ):
                spans = _spans(here & (states == state), x_edges)
                if spans:
                    ax.broken_barh(
                        spans,
                        (y0 + 0.1 * band_h, 0.8 * band_h),
                        facecolors=colour,
                        transform=band_tf,
                        **style,
                    )
        ax.set_ylim(0.0, ymax_kw * 1.05 / data_top)
        ticks = np.asarray(MaxNLocator(nbins=5).tick_values(0.0, ymax_kw), dtype=np.float64)
        ax.set_yticks(ticks[ticks <= ymax_kw * 1.05])
        ax.add_patch(  # a pale strip behind the job bands keeps them apart from the power axis
            Rectangle(
                (0.0, 1.0 - n_jobs * band_h),
                1.0,
                n_jobs * band_h,
                transform=ax.transAxes,
                facecolor="#eceff1",
                edgecolor="none",
                zorder=0,
            )
        )
        for j in range(n_jobs):
            ax.text(
                0.998,
                1.0 - (j + 0.5) * band_h,
                f"job {j}",
                transform=ax.transAxes,
                fontsize=7.5,
                va="center",
                ha="right",
                color=_JOB_COLOURS[j % len(_JOB_COLOURS)],
                bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1.0},
                zorder=6,
            )
        ax.set_xlim(float(x_edges[0]), float(x_edges[-1]))
        ax.set_ylabel("power (kW)")
        ax.set_title(run.site_names[s], loc="left", fontsize=10, fontweight="bold")
        ax.grid(axis="y", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)

    site_index = {name: i for i, name in enumerate(run.site_names)}
    shown = [m for m in run.migrations if start_s <= m.start_s < end_s]
    dense = len(shown) > _MAX_ARROWS  # a zoomed-out view: failed landings only, no lines or arrows
    for m in shown:
        src, dst = site_index.get(m.src_site), site_index.get(m.dst_site)
        if src is None or dst is None:
            continue
        colour = _FAILED_COLOUR if m.failed else _OK_MIGRATION_COLOUR
        xa, xb = _to_mpl_dates(np.array([m.start_s, max(m.end_s, m.start_s)]))
        y_band = 1.0 - (m.job_id + 0.5) * band_h
        if not dense:
            axes[src].axvline(float(xa), color=colour, linewidth=0.8, linestyle=":", alpha=0.8)
            axes[dst].axvline(float(xb), color=colour, linewidth=0.8, linestyle=":", alpha=0.8)
            if src != dst:
                arrow = ConnectionPatch(
                    xyA=(float(xa), y_band),
                    coordsA=blended_transform_factory(axes[src].transData, axes[src].transAxes),
                    xyB=(float(xb), y_band),
                    coordsB=blended_transform_factory(axes[dst].transData, axes[dst].transAxes),
                    arrowstyle="-|>",
                    mutation_scale=12,
                    color=colour,
                    linewidth=1.3,
                )
                fig.add_artist(arrow)
        if m.failed:
            axes[dst].plot(
                [float(xb)],
                [y_band],
                marker="X",
                markersize=5 if dense else 9,
                color=_FAILED_COLOUR,
                markeredgecolor="white",
                markeredgewidth=0.5 if dense else 1.0,
                transform=blended_transform_factory(axes[dst].transData, axes[dst].transAxes),
                zorder=5,
            )

    _date_axis(axes[-1])
    axes[-1].set_xlabel("time (UTC)")
    handles: list[Patch] = [
        Patch(facecolor=_SURPLUS_COLOUR, alpha=0.5, label="renewable surplus"),
        Patch(facecolor=_LOAD_COLOUR, label="greenferry load"),
        Patch(facecolor=_GRID_COLOUR, alpha=0.5, label="grid (non-renewable) draw"),
    ]
    handles += [Patch(facecolor=_JOB_COLOURS[j % len(_JOB_COLOURS)], label=f"job {j}") for j in range(n_jobs)]
    handles += [
        Patch(facecolor="#607d8b", alpha=0.25, label="paused (pale)"),
        Patch(facecolor="#607d8b", alpha=0.5, hatch="////", edgecolor="white", label="migrating (hatched)"),
        Patch(facecolor=_OK_MIGRATION_COLOUR, label="migration"),
        Patch(facecolor=_FAILED_COLOUR, label="failed migration"),
    ]
    fig.legend(
        handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8.5, frameon=False
    )
    where = f"{scenario}: " if scenario else ""
    fig.suptitle(
        f"{where}{run.policy} (seed {run.seed}) — job placement on renewable surplus\n"
        f"{_describe_window((start_s, end_s), run)}",
        fontsize=12,
    )
    _save(fig, path)


def plot_metrics(comparison: Comparison, path: Path) -> None:
    """Bar charts by policy: non-renewable kWh (± std), ratio to oracle, migrations (failed), progress CV."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    policies = ordered_policies(comparison)
    x = np.arange(len(policies), dtype=np.float64)
    colours = [
        _ORACLE_COLOUR if is_oracle(p) else _POLICY_COLOURS[i % len(_POLICY_COLOURS)]
        for i, p in enumerate(policies)
    ]
    hatches = ["//" if is_oracle(p) else "" for p in policies]

    def values(metric: str) -> FloatArray:
        return np.array(
            [comparison.summary.get(p, {}).get(metric, math.nan) for p in policies], dtype=np.float64
        )

    def stds(metric: str) -> FloatArray | None:
        if len(comparison.seeds) <= 1:
            return None
        return np.nan_to_num(values(f"{metric}_std"), nan=0.0, posinf=0.0, neginf=0.0)

    fig = Figure(figsize=(12.0, 7.6), dpi=_DPI, layout="constrained")
    (ax_nr, ax_ratio), (ax_mig, ax_cv) = fig.subplots(2, 2)
    panels: tuple[tuple[Axes, str, str, str], ...] = (
        (ax_nr, "nonrenewable_kwh", "non-renewable energy (kWh)", "{:.1f}"),
        (ax_ratio, "ratio_to_oracle", "non-renewable energy ÷ oracle's", "{:.2f}"),
        (ax_cv, "progress_cv", "coefficient of variation of hourly progress", "{:.2f}"),
    )
    for ax, metric, label, fmt in panels:
        heights = values(metric)
        bars = ax.bar(
            x,
            np.nan_to_num(heights, nan=0.0, posinf=0.0, neginf=0.0),
            yerr=stds(metric),
            color=colours,
            hatch=hatches,
            edgecolor="white",
            capsize=4,
            error_kw={"elinewidth": 1.0, "ecolor": "#37474f"},
        )
        ax.bar_label(bars, labels=[_fmt(v, fmt) for v in heights], padding=3, fontsize=8.5)
        ax.set_ylabel(label)
        ax.set_title(label[0].upper() + label[1:], loc="left", fontsize=10.5)
        if metric == "ratio_to_oracle":
            ax.axhline(1.0, color="#424242", linestyle="--", linewidth=1.0)
    migrations, failed = values("migrations"), values("failed_migrations")
    width = 0.38
    bars_all = ax_mig.bar(
        x - width / 2, np.nan_to_num(migrations), width, color="#546e7a", label="migrations"
    )
    bars_failed = ax_mig.bar(
        x + width / 2, np.nan_to_num(failed), width, color=_FAILED_COLOUR, label="failed"
    )
    ax_mig.bar_label(bars_all, labels=[_fmt(v, "{:g}") for v in migrations], padding=2, fontsize=8.5)
    ax_mig.bar_label(bars_failed, labels=[_fmt(v, "{:g}") for v in failed], padding=2, fontsize=8.5)
    ax_mig.set_ylabel("migrations per run")
    ax_mig.set_title("Migrations per run (failed in red)", loc="left", fontsize=10.5)
    ax_mig.legend(frameon=False, fontsize=8.5)
    for ax in (ax_nr, ax_ratio, ax_mig, ax_cv):
        ax.set_xticks(x, policies, rotation=20, ha="right")
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    if any(is_oracle(p) for p in policies):
        ax_nr.legend(
            handles=[
                Patch(facecolor=_ORACLE_COLOUR, hatch="//", edgecolor="white", label="oracle (offline bound)")
            ],
            frameon=False,
            fontsize=8.5,
        )
    seeds = len(comparison.seeds)
    fig.suptitle(
        f"{comparison.scenario} — metrics by policy (mean of {seeds} seed{'s' if seeds != 1 else ''}"
        f"{', ± 1 std' if seeds > 1 else ''})",
        fontsize=12,
    )
    _save(fig, path)


def plot_feasibility(comparison: Comparison, path: Path) -> None:
    """Plot the migration feasibility domain with every migration of the comparison as a point.

    Uses ``comparison.extra["migration_params"]`` when it is a ``MigrationParams``, else its defaults.
    """
    from greenferry.core.feasibility import MigrationParams
    from greenferry.sim.feasibility_plot import plot_feasibility_domain

    given = comparison.extra.get("migration_params")
    params = given if isinstance(given, MigrationParams) else MigrationParams()
    points = [
        (m.bandwidth_bps, m.checkpoint_bytes, m.failed)
        for policy in comparison.policies
        for run in comparison.runs.get(policy, [])
        for m in run.migrations
    ]
    plot_feasibility_domain(path, params, migrations=points)


def plot_window_histogram(comparison: Comparison, path: Path) -> None:
    """Histogram of renewable window lengths per site against the paper's 2.5-9.5 h band."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    sites = list(comparison.window_lengths_s)
    n = max(1, len(sites))
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows + 0.6), dpi=_DPI, layout="constrained")
    grid = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    axes: list[Axes] = list(grid.ravel())
    lo_h, hi_h = (b / 3600.0 for b in PAPER_WINDOW_BAND_S)
    longest_h = max(
        [float(np.max(w)) / 3600.0 for w in comparison.window_lengths_s.values() if len(w)] + [12.0]
    )
    bins_h = np.arange(0.0, math.ceil(longest_h) + 0.5, 0.5 if longest_h <= 24 else 1.0)
    for ax, site in zip(axes, sites, strict=False):
        lengths_h = np.asarray(comparison.window_lengths_s[site], dtype=np.float64) / 3600.0
        ax.axvspan(lo_h, hi_h, color=_BAND_COLOUR, alpha=0.18, label="paper: 2.5–9.5 h")
        if len(lengths_h):
            ax.hist(
                lengths_h, bins=bins_h.tolist(), color=_SURPLUS_COLOUR, edgecolor="white", label="windows"
            )
            in_band = float(np.mean((lengths_h >= lo_h) & (lengths_h <= hi_h)) * 100.0)
            ax.axvline(
                float(np.median(lengths_h)), color=_LOAD_COLOUR, linestyle="--", linewidth=1.0, label="median"
            )
            subtitle = f"n={len(lengths_h)}, median {np.median(lengths_h):.1f} h, {in_band:.0f}% in band"
        else:
            ax.text(0.5, 0.5, "no renewable windows", transform=ax.transAxes, ha="center", va="center")
            subtitle = "n=0"
        ax.set_title(f"{site}\n{subtitle}", loc="left", fontsize=10)
        ax.set_xlabel("window length (h)")
        ax.set_ylabel("windows")
        ax.set_xlim(0.0, float(bins_h[-1]))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.spines[["top", "right"]].set_visible(False)
    for ax in axes[len(sites) :]:
        ax.set_visible(False)
    if sites:
        axes[0].legend(frameon=False, fontsize=8.5)
    fig.suptitle(f"{comparison.scenario} — renewable window lengths per site", fontsize=12)
    _save(fig, path)


# --- helpers


def _slug(text: str) -> str:
    """A file-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "policy"


def _fmt(value: float, fmt: str) -> str:
    return fmt.format(value) if math.isfinite(value) else "n/a"


def _to_mpl_dates(epoch_s: FloatArray) -> FloatArray:
    """UTC epoch seconds -> matplotlib date numbers (days since matplotlib's date epoch)."""
    import matplotlib

    mpl_epoch_s = float(np.datetime64(str(matplotlib.rcParams["date.epoch"]), "s").astype(np.int64))
    return (np.asarray(epoch_s, dtype=np.float64) - mpl_epoch_s) / _DAY_S


def _date_axis(ax: Axes) -> None:
    from matplotlib import dates

    # matplotlib.dates ships without annotations for these two constructors.
    locator = dates.AutoDateLocator(minticks=4, maxticks=10)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]


def _describe_window(window_s: tuple[float, float], run: RunResult) -> str:
    """Human description of a plotted time range, e.g. '2024-06-03 00:00 to 2024-06-06 00:00 UTC'."""
    start, end = (np.datetime64(round(t), "s") for t in window_s)
    text = f"{str(start)[:16].replace('T', ' ')} to {str(end)[:16].replace('T', ' ')} UTC"
    full = window_s[0] <= run.times_s[0] and window_s[1] >= run.times_s[-1] + run.step_s
    return (
        text
        if full
        else f"{text} (zoom; the run spans {(run.times_s[-1] - run.times_s[0]) / _DAY_S:.0f} days)"
    )


def _bin_mean(
    edges_s: FloatArray, surplus_kw: FloatArray, load_kw: FloatArray, *, max_points: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Average two (S, T) curves over bins of whole steps so that at most ``max_points`` remain.

    Returns:
        The bin edges (one more than bins) and both binned curves.
    """
    n = surplus_kw.shape[1]
    factor = max(1, math.ceil(n / max(1, max_points)))
    if factor == 1:
        return edges_s, surplus_kw, load_kw
    n_bins = math.ceil(n / factor)
    pad = n_bins * factor - n

    def mean(curve: FloatArray) -> FloatArray:
        padded = np.pad(curve, ((0, 0), (0, pad)), constant_values=np.nan)
        binned: FloatArray = np.nanmean(padded.reshape(curve.shape[0], n_bins, factor), axis=2)
        return binned

    bin_edges = np.append(edges_s[:-1:factor], edges_s[-1])
    return bin_edges, mean(surplus_kw), mean(load_kw)


def _step_fill(
    ax: Axes, x_edges: FloatArray, low: FloatArray, high: FloatArray, *, colour: str, alpha: float
) -> None:
    """Fill between two piecewise-constant curves whose values hold over [x_edges[i], x_edges[i+1])."""
    ax.fill_between(
        x_edges,
        np.append(low, low[-1]),
        np.append(high, high[-1]),
        step="post",
        color=colour,
        alpha=alpha,
        lw=0,
    )


def _step_line(ax: Axes, x_edges: FloatArray, values: FloatArray, *, colour: str, width: float) -> None:
    ax.step(x_edges, np.append(values, values[-1]), where="post", color=colour, linewidth=width)


def _spans(mask: IntArray | np.ndarray, x_edges: FloatArray) -> list[tuple[float, float]]:
    """(start, width) in x units of each run of True in ``mask`` (``x_edges`` has one more entry)."""
    padded = np.concatenate(([0], np.asarray(mask, dtype=np.int8), [0]))
    change = np.diff(padded)
    starts = np.flatnonzero(change == 1)
    ends = np.flatnonzero(change == -1)
    return [(float(x_edges[a]), float(x_edges[b] - x_edges[a])) for a, b in zip(starts, ends, strict=True)]


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, format="png", metadata={"Software": None})
