"""A lower bound on the non-renewable energy of jobs that share sites: the LP relaxation of the coupled plan.

The per-job oracle (core/oracle.py) lets every job see a site's whole surplus and ignores GPU slots, so
where jobs share sites its sum is a loose bound. This module writes the exact joint problem over the same
discrete-time model as the engine (sim/engine.py) and solves its linear relaxation with HiGHS.

For each job j and each step t of its window ``[a_j, a_j + D_j)`` (arrival, deadline relative to arrival):

- ``r[j,s,t]`` in [0, 1]: running at site s (draws ``power_w``, one step of work);
- ``p[j,s,t]`` in [0, 1]: at site s, not running (paused, or queued for a slot at home);
- ``m[j,o,d,t]`` in [0, 1]: departs o for d at t; in flight over ``t .. t+M_od-1`` with no progress,
  drawing ``src_energy_j/(M dt)`` W at o and ``dst_energy_j/(M dt)`` W at d; at d from ``t + M_od``.

Flow conservation makes each job one unit of mass: it starts at home at ``a_j``, and what is at a site at t
(having stayed there since t-1 or landed at t) runs, waits or departs. Work: ``sum r >= W_j``. Site load
``load[s,t] = sum_j power_j r + migration draws at both ends``; ``u[s,t] >= load - surplus``, ``u >= 0``,
and the cut ``u[s,t] >= sum_i x_i max(0, w_i - surplus)`` over the same terms (``x_i`` a job's r or m, ``w_i``
its draw there): it holds at every 0/1 point, as ``max(0, sum_i w_i - s) >= sum_i max(0, w_i - s)`` for
``w_i, s >= 0``, and stops a fractional job from soaking up a surplus smaller than its power (without it
one job's LP can fall well below its DP).
Slots: running plus in-flight jobs (counted at both ends) ``<= gpu_slots``. Objective:
``sum u * dt + sum network_energy * m`` (joules).

Why this bounds every engine run from below. Take a run and, per job, its work done and the step it finished
(or the end of the world) as ``W_j`` and ``D_j``. Setting r, p, m to the run's 0/1 states is a feasible point:
the engine runs a job only at its site, migrates it only over a link, for exactly ``M_od`` steps with the
same energy draws and network energy, and counts running, paused and migrating jobs (both ends) against the
slots, so the running and in-flight ones alone fit. A job still queued or paused is ``p``, which uses no slot
here. A migration still in flight when the window ends (only an unfinished job's, whose window ends with the
world) lands outside the window: it is allowed, its draws counted inside the window only, as the engine
counts them inside the world only; its network energy is counted in full, as the engine does. At that point
the LP's objective equals the run's non-renewable energy restricted to the steps and sites where jobs are,
which is at most the run's total. So the LP optimum is at most the run's energy.

Relaxed against the engine: integrality (a job may be split over sites and states); paused and queued jobs
hold no slot; decisions may be taken at every step (the engine decides at epochs of ``epoch_steps``) and
from the arrival step on; departures may land after the window ends.

The LP is split without loss where it can be: jobs whose windows do not overlap (transitively) share no
step, so each cluster of overlapping windows is its own LP and the values add up. A job with no work to do
is left out (taking a job's load away can only lower the energy). A cluster too large for ``max_columns`` is
split by taking out its longest-window jobs, each bounded on its own: because ``max(0, x + y - s) >=
max(0, x - s) + max(0, y - s)`` for ``x, y, s >= 0``, the energy of a set of jobs is at least the sum of its
parts' energies, so the cluster's LP plus a per-job bound for each job taken out (``separate_bounds_j``, e.g.
the exact per-job DP; 0 when not given) stays a valid bound, only a looser one. By the same inequality the
sum of its jobs' ``separate_bounds_j`` bounds a cluster too, so each cluster counts the larger of that and
its LP; a single job on its own is given its ``separate_bounds_j`` without an LP.

Exact reductions keep the LPs small: a job with no slack (``W_j == D_j``) can only run at home at every step
of its window, so it is a fixed load and slot, not variables; and a site-step gets a load row only where the
jobs alive could draw more than its surplus (each job, one unit of mass, draws at most its largest power
there), a slot row only where more jobs are alive than it has free slots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highspy
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def _new_solver() -> Any:
    """A HiGHS instance that prints nothing: stdout may carry ``simulate --json``.

    highspy.Highs installs a Python callback on construction that prints HiGHS's banner before any option
    can turn it off, so use the binding's plain class where this highspy has it.
    """
    try:
        from highspy._core import _Highs
    except ImportError:  # pragma: no cover - another highspy layout: the public class, banner and all
        return highspy.Highs()  # type: ignore[no-untyped-call]
    return _Highs()


IntArray = npt.NDArray[np.int64]

DEFAULT_MAX_COLUMNS = 600_000
OPTIMAL = "Optimal"


@dataclass(frozen=True)
class BoundJob:
    """One job as the bound sees it.

    Attributes:
        arrival_step: step at which the job arrives at its home site.
        power_w: power drawn while running (W).
        home_site: site index where it arrives.
        work_steps: steps of running it must do (W_j).
        deadline_steps: steps from arrival by which the work must be done (D_j).
        migration_steps: (S, S) steps a migration occupies; 0 on the diagonal and where there is no link.
        src_energy_j: (S, S) energy a migration draws at its source (J).
        dst_energy_j: (S, S) energy a migration draws at its destination (J).
        network_energy_j: (S, S) network energy of a migration, always non-renewable (J).
    """

    arrival_step: int
    power_w: float
    home_site: int
    work_steps: int
    deadline_steps: int
    migration_steps: IntArray
    src_energy_j: FloatArray
    dst_energy_j: FloatArray
    network_energy_j: FloatArray


@dataclass(frozen=True)
class CoupledProblem:
    """Sites that jobs share, and the jobs.

    Attributes:
        surplus_w: (S, T) renewable surplus of each site at each step (W, non-negative).
        gpu_slots: (S,) GPU slots of each site.
        step_s: length of a step (s).
        jobs: the jobs; every window ``[arrival, arrival + deadline)`` must lie within the T steps.
    """

    surplus_w: FloatArray
    gpu_slots: IntArray
    step_s: float
    jobs: tuple[BoundJob, ...]


@dataclass(frozen=True)
class CoupledBound:
    """The bound and how it was obtained.

    Attributes:
        value_j: lower bound on the non-renewable energy (J); NaN unless ``status`` is ``"Optimal"``.
        status: ``"Optimal"``, or HiGHS's model status of the first cluster LP that did not solve.
        n_lps: number of LPs solved.
        max_columns: columns of the largest LP solved.
        separated_jobs: indices of jobs bounded on their own because their cluster was too large.
    """

    value_j: float
    status: str
    n_lps: int
    max_columns: int
    separated_jobs: tuple[int, ...]


def coupled_lower_bound(
    problem: CoupledProblem,
    *,
    separate_bounds_j: Sequence[float] | None = None,
    max_columns: int = DEFAULT_MAX_COLUMNS,
) -> CoupledBound:
    """Least non-renewable energy (J) of the LP relaxation of the jobs' joint schedule; a valid lower bound.

    Args:
        problem: sites and jobs, each with the work it must do by its deadline.
        separate_bounds_j: per job, a lower bound on its energy alone (e.g. the per-job DP) at the same work
            and deadline; used for single-job clusters and for jobs split off a cluster over ``max_columns``.
        max_columns: largest LP (columns) to build for one cluster before splitting jobs off it.

    Raises:
        ValueError: if the input is inconsistent (shapes, signs, a window outside the horizon, more work
            than deadline steps, a home site out of range).
    """
    _validate(problem, separate_bounds_j)
    if max_columns < 1:
        raise ValueError(f"max_columns must be positive, got {max_columns}")
    n_sites = problem.surplus_w.shape[0]
    sizes = {j: _columns(job, n_sites) for j, job in enumerate(problem.jobs) if job.work_steps > 0}
    clusters: list[list[int]] = []
    separated: list[int] = []
    _partition(problem, sorted(sizes), sizes, max_columns, separate_bounds_j is not None, clusters, separated)
    total = sum(separate_bounds_j[j] for j in separated) if separate_bounds_j is not None else 0.0
    n_lps = largest = 0
    for cluster in clusters:
        if len(cluster) == 1 and separate_bounds_j is not None:
            total += separate_bounds_j[cluster[0]]
            continue
        value, status, n_cols = _solve_cluster(problem, cluster)
        n_lps += 1
        largest = max(largest, n_cols)
        if status != OPTIMAL:
            return CoupledBound(math.nan, status, n_lps, largest, tuple(sorted(separated)))
        # The clusters' energies add up (disjoint steps), so each may take the larger of its two bounds.
        own_j = sum(separate_bounds_j[j] for j in cluster) if separate_bounds_j is not None else 0.0
        total += max(value, own_j)
    return CoupledBound(total, OPTIMAL, n_lps, largest, tuple(sorted(separated)))


def _validate(problem: CoupledProblem, separate_bounds_j: Sequence[float] | None) -> None:
    surplus = problem.surplus_w
    if surplus.ndim != 2:
        raise ValueError(f"surplus_w must be (sites, steps), got shape {surplus.shape}")
    n_sites, n_steps = surplus.shape
    if not np.all(np.isfinite(surplus)) or np.any(surplus < 0):
        raise ValueError("surplus_w must be finite and non-negative")
    if problem.gpu_slots.shape != (n_sites,):
        raise ValueError(f"gpu_slots must have shape ({n_sites},), got {problem.gpu_slots.shape}")
    if np.any(problem.gpu_slots < 0):
        raise ValueError("gpu_slots must be non-negative")
    if not (math.isfinite(problem.step_s) and problem.step_s > 0):
        raise ValueError(f"step_s must be positive, got {problem.step_s}")
    if separate_bounds_j is not None and len(separate_bounds_j) != len(problem.jobs):
        raise ValueError(
            f"separate_bounds_j has {len(separate_bounds_j)} entries for {len(problem.jobs)} jobs"
        )
    square = (n_sites, n_sites)
    for j, job in enumerate(problem.jobs):
        if not (math.isfinite(job.power_w) and job.power_w >= 0):
            raise ValueError(f"job {j}: power_w must be non-negative, got {job.power_w}")
        if not 0 <= job.home_site < n_sites:
            raise ValueError(f"job {j}: home_site {job.home_site} is not a site (0..{n_sites - 1})")
        if job.work_steps < 0:
            raise ValueError(f"job {j}: work_steps must be non-negative, got {job.work_steps}")
        if job.deadline_steps < job.work_steps:
            raise ValueError(
                f"job {j}: deadline_steps {job.deadline_steps} is shorter than work_steps {job.work_steps}"
            )
        if job.arrival_step < 0 or job.arrival_step + job.deadline_steps > n_steps:
            raise ValueError(
                f"job {j}: window [{job.arrival_step}, {job.arrival_step + job.deadline_steps}) "
                f"lies outside the {n_steps} steps of surplus_w"
            )
        for name in ("migration_steps", "src_energy_j", "dst_energy_j", "network_energy_j"):
            arr = getattr(job, name)
            if arr.shape != square:
                raise ValueError(f"job {j}: {name} must have shape {square}, got {arr.shape}")
            if not np.all(np.isfinite(arr)) or np.any(arr < 0):
                raise ValueError(f"job {j}: {name} must be finite and non-negative")
        if np.any(np.diag(job.migration_steps) != 0):
            raise ValueError(f"job {j}: migration_steps must be 0 on the diagonal")
        if np.any(job.migration_steps != np.round(job.migration_steps)):
            raise ValueError(f"job {j}: migration_steps must be whole steps")


def _pairs(job: BoundJob) -> tuple[IntArray, IntArray, IntArray]:
    """Linked (origin, destination, steps) pairs of a job."""
    origin, dest = np.nonzero(job.migration_steps > 0)
    steps = job.migration_steps[origin, dest].astype(np.int64)
    return origin.astype(np.int64), dest.astype(np.int64), steps


def _columns(job: BoundJob, n_sites: int) -> int:
    """Columns a job adds to an LP (running, waiting and departures for every step of its window).

    A job without slack (work equal to its window) has no choice: it runs at home at every step, since
    waiting or migrating would cost a step of work; it is a fixed load and adds no column.
    """
    if job.work_steps == job.deadline_steps:
        return 0
    return job.deadline_steps * (2 * n_sites + int(np.count_nonzero(job.migration_steps > 0)))


def _partition(
    problem: CoupledProblem,
    jobs: list[int],
    sizes: dict[int, int],
    max_columns: int,
    can_separate: bool,
    clusters: list[list[int]],
    separated: list[int],
) -> None:
    """Group ``jobs`` into clusters of overlapping windows, splitting off long jobs from oversized ones."""
    for cluster in _overlapping(problem, jobs):
        n_cols = sum(sizes[j] for j in cluster)
        if len(cluster) == 1 or n_cols <= max_columns or not can_separate:
            clusters.append(cluster)
            continue
        longest = max(cluster, key=lambda j: (problem.jobs[j].deadline_steps, sizes[j], j))
        separated.append(longest)
        rest = [j for j in cluster if j != longest]
        _partition(problem, rest, sizes, max_columns, can_separate, clusters, separated)


def _overlapping(problem: CoupledProblem, jobs: list[int]) -> list[list[int]]:
    """Connected groups of jobs whose windows overlap, transitively."""
    order = sorted(jobs, key=lambda j: problem.jobs[j].arrival_step)
    groups: list[list[int]] = []
    end = 0
    for j in order:
        job = problem.jobs[j]
        if groups and job.arrival_step < end:
            groups[-1].append(j)
            end = max(end, job.arrival_step + job.deadline_steps)
        else:
            groups.append([j])
            end = job.arrival_step + job.deadline_steps
    return groups


@dataclass
class _Entries:
    """Coordinate-form matrix entries, gathered in chunks."""

    rows: list[IntArray]
    cols: list[IntArray]
    vals: list[FloatArray]

    def add(self, rows: npt.ArrayLike, cols: npt.ArrayLike, vals: npt.ArrayLike) -> None:
        r, c, v = np.broadcast_arrays(
            np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64), np.asarray(vals, np.float64)
        )
        keep = (r >= 0) & (v != 0.0)
        self.rows.append(r[keep])
        self.cols.append(c[keep])
        self.vals.append(v[keep])


def _solve_cluster(problem: CoupledProblem, cluster: list[int]) -> tuple[float, str, int]:
    """Build and solve one cluster's LP; returns (optimal value J, status, columns)."""
    surplus, slots, dt = problem.surplus_w, problem.gpu_slots, problem.step_s
    n_sites = surplus.shape[0]
    everyone = [problem.jobs[j] for j in cluster]
    jobs = [job for job in everyone if job.work_steps < job.deadline_steps]
    start = min(job.arrival_step for job in everyone)
    end = max(job.arrival_step + job.deadline_steps for job in everyone)
    span = end - start
    sites = np.arange(n_sites)[:, None]

    # Which site-steps need a load row (jobs there could draw more than the surplus) or a slot row (more
    # jobs alive than slots); each job is one unit of mass, so it draws at most its largest power at a site.
    cap_w = np.zeros((n_sites, span))
    alive = np.zeros((n_sites, span), dtype=np.int64)
    fixed_w = np.zeros((n_sites, span))
    fixed_slots = np.zeros((n_sites, span), dtype=np.int64)
    for job in everyone:
        if job.work_steps == job.deadline_steps:
            lo = job.arrival_step - start
            fixed_w[job.home_site, lo : lo + job.deadline_steps] += job.power_w
            fixed_slots[job.home_site, lo : lo + job.deadline_steps] += 1
    headroom_w = surplus[:, start:end] - fixed_w
    free_slots = slots[:, None] - fixed_slots
    if np.any(free_slots < 0):
        return math.nan, "Infeasible", 0
    if not jobs:
        return float(np.maximum(-headroom_w, 0.0).sum()) * dt, OPTIMAL, 0
    for job in jobs:
        origin, dest, steps = _pairs(job)
        per_site = np.full(n_sites, job.power_w)
        if steps.size:
            src_w = job.src_energy_j[origin, dest] / (steps * dt)
            dst_w = job.dst_energy_j[origin, dest] / (steps * dt)
            np.maximum.at(per_site, origin, src_w)
            np.maximum.at(per_site, dest, dst_w)
        lo = job.arrival_step - start
        cap_w[:, lo : lo + job.deadline_steps] += per_site[:, None]
        alive[:, lo : lo + job.deadline_steps] += 1
    load_cell = (cap_w > headroom_w) & (cap_w > 0)
    slot_cell = alive > free_slots
    # Where no free job can draw, the fixed loads' uncovered energy is a constant.
    constant_j = float(np.maximum(-headroom_w, 0.0)[~load_cell].sum()) * dt

    # Columns: per job r (S, L), p (S, L), m (P, L); then u for each load cell.
    col_base = []
    n_cols = 0
    for job in jobs:
        col_base.append(n_cols)
        n_cols += _columns(job, n_sites)
    n_u = int(load_cell.sum())
    u_col = np.full((n_sites, span), -1, dtype=np.int64)
    u_col[load_cell] = n_cols + np.arange(n_u)
    n_cols += n_u
    cost = np.zeros(n_cols)
    cost[n_cols - n_u :] = dt
    upper = np.ones(n_cols)
    upper[n_cols - n_u :] = highspy.kHighsInf

    # Rows: per job S*L balance rows and one work row; then load rows, then slot rows.
    row_base = []
    n_rows = 0
    for job in jobs:
        row_base.append(n_rows)
        n_rows += n_sites * job.deadline_steps + 1
    load_row = np.full((n_sites, span), -1, dtype=np.int64)
    load_row[load_cell] = n_rows + np.arange(n_u)
    n_rows += n_u
    cut_row = np.where(load_cell, load_row + n_u, -1)
    n_rows += n_u
    covered_w = np.maximum(headroom_w, 0.0)
    n_slot = int(slot_cell.sum())
    slot_row = np.full((n_sites, span), -1, dtype=np.int64)
    slot_row[slot_cell] = n_rows + np.arange(n_slot)
    n_rows += n_slot
    row_lower = np.zeros(n_rows)
    row_upper = np.zeros(n_rows)

    entries = _Entries([], [], [])
    for job, cb, rb in zip(jobs, col_base, row_base, strict=True):
        length = job.deadline_steps
        t = np.arange(length)[None, :]
        lo = job.arrival_step - start
        cells = lo + t  # steps relative to the cluster's start
        bal = rb + sites * length + t  # (S, L) balance row of (s, t)
        nxt = np.where(t + 1 < length, bal + 1, -1)
        work_row = rb + n_sites * length
        row_lower[bal.ravel()] = 0.0
        row_upper[bal.ravel()] = 0.0
        row_lower[rb + job.home_site * length] = row_upper[rb + job.home_site * length] = 1.0
        row_lower[work_row], row_upper[work_row] = job.work_steps, highspy.kHighsInf
        run = cb + sites * length + t
        wait = run + n_sites * length
        for block in (run, wait):
            entries.add(bal, block, 1.0)
            entries.add(nxt, block, -1.0)
        entries.add(work_row, run, 1.0)
        entries.add(load_row[:, cells[0]], run, -job.power_w)
        entries.add(cut_row[:, cells[0]], run, -np.maximum(job.power_w - covered_w[:, cells[0]], 0.0))
        entries.add(slot_row[:, cells[0]], run, 1.0)

        origin, dest, steps = _pairs(job)
        if steps.size == 0:
            continue
        o, d, m = origin[:, None], dest[:, None], steps[:, None]
        depart = cb + 2 * n_sites * length + np.arange(steps.size)[:, None] * length + t  # (P, L)
        cost[depart] = job.network_energy_j[origin, dest][:, None]
        entries.add(rb + o * length + t, depart, 1.0)
        land = t + m
        entries.add(np.where(land < length, rb + d * length + land, -1), depart, -1.0)
        src_w = (job.src_energy_j[origin, dest] / (steps * dt))[:, None]
        dst_w = (job.dst_energy_j[origin, dest] / (steps * dt))[:, None]
        for q in range(int(steps.max())):
            inside = (q < m) & (t + q < length)
            step = np.where(inside, cells + q, 0)
            for site, power in ((o, src_w), (d, dst_w)):
                entries.add(np.where(inside, load_row[site, step], -1), depart, -power)
                entries.add(
                    np.where(inside, cut_row[site, step], -1),
                    depart,
                    -np.maximum(power - covered_w[site, step], 0.0),
                )
                entries.add(np.where(inside, slot_row[site, step], -1), depart, 1.0)

    entries.add(load_row[load_cell], u_col[load_cell], 1.0)
    entries.add(cut_row[load_cell], u_col[load_cell], 1.0)
    row_lower[load_row[load_cell]] = -headroom_w[load_cell]
    row_upper[load_row[load_cell]] = highspy.kHighsInf
    row_lower[cut_row[load_cell]] = 0.0
    row_upper[cut_row[load_cell]] = highspy.kHighsInf
    row_lower[slot_row[slot_cell]] = -highspy.kHighsInf
    row_upper[slot_row[slot_cell]] = free_slots[slot_cell]

    rows = np.concatenate(entries.rows)
    cols = np.concatenate(entries.cols)
    vals = np.concatenate(entries.vals)
    order = np.argsort(cols, kind="stable")
    col_start = np.zeros(n_cols + 1, dtype=np.int64)
    np.cumsum(np.bincount(cols, minlength=n_cols), out=col_start[1:])

    lp = highspy.HighsLp()
    lp.num_col_ = n_cols
    lp.num_row_ = n_rows
    lp.col_cost_ = cost
    lp.col_lower_ = np.zeros(n_cols)
    lp.col_upper_ = upper
    lp.row_lower_ = row_lower
    lp.row_upper_ = row_upper
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = col_start.astype(np.int32)
    lp.a_matrix_.index_ = rows[order].astype(np.int32)
    lp.a_matrix_.value_ = vals[order]
    solver = _new_solver()
    solver.setOptionValue("output_flag", False)
    solver.passModel(lp)
    solver.run()
    status = solver.modelStatusToString(solver.getModelStatus())
    value = solver.getInfo().objective_function_value
    return float(value) + constant_j, status, n_cols
