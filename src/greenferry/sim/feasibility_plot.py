"""Draw the feasibility domain: which checkpoint sizes can move over which bandwidths within a window.

Uses matplotlib's object-oriented API rendered by Agg (no pyplot, no display, no global backend switch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from greenferry.core.feasibility import (
    MigrationParams,
    break_even_s,
    max_checkpoint_bytes,
    max_checkpoint_bytes_energy,
)
from greenferry.core.units import format_duration

__all__ = ["DEFAULT_WINDOWS_S", "PAPER_BANDWIDTH_BPS", "PAPER_CHECKPOINT_BYTES", "plot_feasibility_domain"]

# Window lengths drawn by default (s): 1 h, and the paper's 2.5-9.5 h average range with a midpoint.
DEFAULT_WINDOWS_S: tuple[float, ...] = (3600.0, 9000.0, 18000.0, 34200.0)
# The paper's ranges: checkpoints from 1 GB (ResNet-50 class) to beyond 100 GB (LLMs), WAN 1-100 Gbit/s.
PAPER_CHECKPOINT_BYTES: tuple[float, float] = (1e9, 2e11)
PAPER_BANDWIDTH_BPS: tuple[float, float] = (1e9, 1e11)
# Break-even contours (s) of the energy model.
BREAK_EVEN_LEVELS_S: tuple[float, ...] = (60.0, 600.0, 3600.0, 36000.0)

_BANDWIDTH_RANGE_BPS = (1e8, 1e12)
_SIZE_RANGE_BYTES = (1e8, 1e13)
_WINDOW_COLOURS = ("#c62828", "#ef6c00", "#2e7d32", "#1565c0", "#6a1b9a", "#00838f")
_OK_COLOUR = "#1e3a8a"
_FAILED_COLOUR = "#d50000"
_PAPER_COLOUR = "#ffb300"
_CONTOUR_COLOUR = "#616161"


def _gbit_label(value: float, _pos: object = None) -> str:
    return f"{value / 1e9:g}"


def _gb_label(value: float, _pos: object = None) -> str:
    return f"{value / 1e9:,g}"


def _window_label(window_s: float) -> str:
    hours = window_s / 3600.0
    return f"{hours:g} h" if window_s >= 3600.0 else format_duration(window_s)


def plot_feasibility_domain(
    path: str | Path,
    params: MigrationParams,
    windows_s: Sequence[float] = DEFAULT_WINDOWS_S,
    migrations: Sequence[tuple[float, float, bool]] | None = None,
    *,
    highlight: tuple[float, float] | None = None,
) -> Path:
    """Write a PNG (or any format matplotlib infers from the suffix) of the feasibility domain.

    The time-check boundary S_max(B) = (alpha*T_w - T_ckpt - T_restore)*eta*B/8 is one straight line per
    window on log-log axes (feasible below it); the energy-check boundary is drawn dotted in the same colour
    where it falls inside the axes; grey contours show the break-even time E_mig/P_job for the given e_net.

    Args:
        path: output file.
        params: migration parameters (alpha, eta, overheads, powers, e_net).
        windows_s: window lengths T_w to draw (s).
        migrations: optional points ``(bandwidth_bps, checkpoint_bytes, failed)``; failed: red crosses.
        highlight: optional ``(bandwidth_bps, checkpoint_bytes)`` to mark with a star (e.g. the CLI's query).

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    path = Path(path)
    fig = Figure(figsize=(11.0, 6.4), dpi=150, layout="constrained")
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(*_BANDWIDTH_RANGE_BPS)
    ax.set_ylim(*_SIZE_RANGE_BYTES)

    bandwidth_bps = np.logspace(np.log10(_BANDWIDTH_RANGE_BPS[0]), np.log10(_BANDWIDTH_RANGE_BPS[1]), 400)
    handles: list[Any] = []

    # The paper's operating region.
    (s_low, s_high), (b_low, b_high) = PAPER_CHECKPOINT_BYTES, PAPER_BANDWIDTH_BPS
    ax.fill_between([b_low, b_high], s_low, s_high, color=_PAPER_COLOUR, alpha=0.16, linewidth=0, zorder=0)
    ax.plot(
        [b_low, b_high, b_high, b_low, b_low],
        [s_low, s_low, s_high, s_high, s_low],
        color=_PAPER_COLOUR,
        linewidth=1.0,
        zorder=1,
    )
    handles.append(
        Patch(
            facecolor=_PAPER_COLOUR,
            alpha=0.35,
            edgecolor=_PAPER_COLOUR,
            label="paper's range: S 1–100+ GB, B 1–100 Gbit/s",
        )
    )

    # Break-even contours over the whole plane.
    grid_b, grid_s = np.meshgrid(
        bandwidth_bps, np.logspace(np.log10(_SIZE_RANGE_BYTES[0]), np.log10(_SIZE_RANGE_BYTES[1]), 300)
    )
    t_be = break_even_s(grid_s, grid_b, params)
    levels = [level for level in BREAK_EVEN_LEVELS_S if t_be.min() < level < t_be.max()]
    if levels:
        contours = ax.contour(
            grid_b,
            grid_s,
            t_be,
            levels=levels,
            colors=_CONTOUR_COLOUR,
            linewidths=0.8,
            linestyles=[(0, (4, 3))],
            zorder=2,
        )
        ax.clabel(
            contours,
            fmt={level: f"t_be {format_duration(level)}" for level in levels},
            fontsize=7.5,
            inline_spacing=4,
        )
        handles.append(
            Line2D(
                [],
                [],
                color=_CONTOUR_COLOUR,
                linewidth=0.8,
                linestyle=(0, (4, 3)),
                label="break-even time E_mig/P_job",
            )
        )

    # Time boundary per window (solid) and energy boundary (dotted, same colour).
    energy_drawn = False
    for index, window_s in enumerate(sorted(windows_s)):
        colour = _WINDOW_COLOURS[index % len(_WINDOW_COLOURS)]
        s_time = np.asarray(max_checkpoint_bytes(window_s, bandwidth_bps, params))
        if np.any(s_time > 0):
            ax.plot(
                bandwidth_bps, np.where(s_time > 0, s_time, np.nan), color=colour, linewidth=2.0, zorder=4
            )
        budget_s = params.alpha * window_s
        handles.append(
            Line2D(
                [],
                [],
                color=colour,
                linewidth=2.0,
                label=f"T_w = {_window_label(window_s)}: T_mig ≤ {format_duration(budget_s)}",
            )
        )
        s_energy = np.asarray(max_checkpoint_bytes_energy(window_s, bandwidth_bps, params))
        visible = (s_energy > _SIZE_RANGE_BYTES[0]) & (s_energy < _SIZE_RANGE_BYTES[1])
        if np.any(visible):
            ax.plot(
                bandwidth_bps,
                np.where(s_energy > 0, s_energy, np.nan),
                color=colour,
                linewidth=1.2,
                linestyle=":",
                alpha=0.8,
                zorder=3,
            )
            energy_drawn = True
    if energy_drawn:
        handles.append(
            Line2D([], [], color="#424242", linewidth=1.3, linestyle=":", label="energy-check boundary")
        )

    if migrations:
        points = np.asarray([(b, s, bool(f)) for b, s, f in migrations], dtype=np.float64).reshape(-1, 3)
        ok, failed = points[points[:, 2] == 0], points[points[:, 2] != 0]
        if len(ok):
            ax.scatter(
                ok[:, 0],
                ok[:, 1],
                s=22,
                color=_OK_COLOUR,
                alpha=0.75,
                edgecolors="white",
                linewidths=0.4,
                zorder=5,
            )
            handles.append(
                Line2D(
                    [],
                    [],
                    marker="o",
                    linestyle="",
                    color=_OK_COLOUR,
                    markeredgecolor="white",
                    label=f"migration ({len(ok)})",
                )
            )
        if len(failed):
            ax.scatter(
                failed[:, 0], failed[:, 1], s=30, marker="x", color=_FAILED_COLOUR, linewidths=1.4, zorder=6
            )
            handles.append(
                Line2D(
                    [],
                    [],
                    marker="x",
                    linestyle="",
                    color=_FAILED_COLOUR,
                    markeredgewidth=1.4,
                    label=f"failed migration ({len(failed)})",
                )
            )
    if highlight is not None:
        ax.scatter(
            [highlight[0]],
            [highlight[1]],
            s=160,
            marker="*",
            color="#212121",
            edgecolors="white",
            linewidths=0.8,
            zorder=7,
        )
        handles.append(
            Line2D(
                [], [], marker="*", markersize=11, linestyle="", color="#212121", label="queried migration"
            )
        )

    ax.text(
        0.02,
        0.97,
        "feasible: below a window's solid (time) and dotted (energy) line",
        transform=ax.transAxes,
        fontsize=8.5,
        color="#424242",
        va="top",
        bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": "none", "alpha": 0.9},
        zorder=8,
    )
    ax.xaxis.set_major_formatter(FuncFormatter(_gbit_label))
    ax.yaxis.set_major_formatter(FuncFormatter(_gb_label))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_locator(LogLocator(base=10.0, numticks=12))
    ax.set_xlabel("usable WAN bandwidth B (Gbit/s)")
    ax.set_ylabel("checkpoint size S (GB)")
    ax.grid(which="major", alpha=0.3)
    ax.grid(which="minor", alpha=0.08)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8.5,
        frameon=False,
        borderaxespad=0,
    )
    e_net_nj_per_bit = params.network_energy_j_per_byte / 8.0 * 1e9
    e_net_kwh_per_gb = params.network_energy_j_per_byte * 1e9 / 3.6e6
    ax.set_title(
        f"Migration feasibility domain: T_ckpt + 8S/(ηB) + T_restore ≤ α·T_w\n"
        f"α = {params.alpha:g}, η = {params.transfer_efficiency:g}, "
        f"T_ckpt + T_restore = {format_duration(params.overhead_s)}, P_job = {params.job_power_w:g} W, "
        f"e_net = {e_net_nj_per_bit:.3g} nJ/bit ({e_net_kwh_per_gb:.2g} kWh/GB)",
        fontsize=11,
        loc="left",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
