"""The built-in orchestration policies, registered by name.

- ``static``: the job stays where it was placed; the grid fills any gap.
- ``pause-when-dirty``: temporal shifting; run only while the current site's surplus covers the job.
- ``energy-greedy``: the paper's purely energy-driven baseline; always host the job where the surplus
  left for it is largest now, with no window check and no dwell time.
- ``energy-greedy-uncovered``: the same, but move only when the current site cannot cover the job, and
  only to a site that can.
- ``feasibility-aware``: the paper's rule; a move must fit in ``alpha`` of the destination's forecast
  window and pay back its energy; stay while the current site stays covered over a dwell horizon;
  minimum dwell after a move; one transfer per link at a time.
- ``lookahead``: greenferry's default; receding-horizon planning over the forecast (see core/lookahead).
- ``feasibility-aware-partial``, ``lookahead-partial``: the same rules with ``partial=True``: a job made of
  parts (data-parallel workers) that cannot move whole in time moves the largest subset of its parts the
  feasibility model allows (``largest_movable_parts``); every other policy moves jobs whole or not at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from greenferry.core.feasibility import (
    largest_movable_parts,
    migration_energy_j,
    migration_time_s,
    movable_part_counts,
)
from greenferry.core.forecast import ForecastSkill
from greenferry.core.lookahead import STAY, MigrationCosts, Plan, migration_costs, plan_placement
from greenferry.core.policy import (
    Action,
    ClusterView,
    Decision,
    JobView,
    covered_run_epochs,
    register_policy,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _free_targets(
    view: ClusterView, job: JobView, free_slots: npt.NDArray[np.int64]
) -> npt.NDArray[np.bool_]:
    """Sites the job could move to now (whole): another site, linked, with the GPU slots it needs."""
    ok = (view.bandwidth_bps[job.site] > 0) & (free_slots >= job.slots)
    ok[job.site] = False
    if job.parts is not None and not job.moves_whole:
        ok[:] = False
    return np.asarray(ok, dtype=np.bool_)


@dataclass
class Static:
    """Never move, never pause."""

    name: str = "static"

    def decide(self, now_s: float, view: ClusterView) -> dict[int, Decision]:
        """Run every job where it is."""
        return {job.job_id: Decision.run() for job in view.jobs}


@dataclass
class PauseWhenDirty:
    """Run only while the current site's surplus covers the job; pause otherwise."""

    name: str = "pause-when-dirty"

    def decide(self, now_s: float, view: ClusterView) -> dict[int, Decision]:
        """Admit jobs at each site, running ones first, while the surplus left covers them; pause the rest."""
        # Surplus left at each site once the jobs being decided here are taken off it.
        left = view.surplus_w - view.site_load_w
        for job in view.jobs:
            if job.running:
                left[job.site] += job.power_w
        out: dict[int, Decision] = {}
        # Running jobs keep their place before paused ones resume: no churn between equal jobs.
        for job in sorted(view.jobs, key=lambda j: (not j.running, j.job_id)):
            if left[job.site] >= job.power_w:
                left[job.site] -= job.power_w
                out[job.job_id] = Decision.run()
            else:
                out[job.job_id] = Decision.pause()
        return out


@dataclass
class EnergyGreedy:
    """Follow the largest surplus now: no window check, no dwell.

    With ``only_when_uncovered`` the job moves only when its site cannot cover it, and only to a site
    that can.
    """

    only_when_uncovered: bool = False
    name: str = "energy-greedy"

    def __post_init__(self) -> None:
        if self.only_when_uncovered:
            self.name = "energy-greedy-uncovered"

    def decide(self, now_s: float, view: ClusterView) -> dict[int, Decision]:
        """Move each job to the site with the most surplus left for it, if that beats staying."""
        out: dict[int, Decision] = {}
        free = view.free_slots.copy()
        for job in view.jobs:
            headroom = view.headroom_w(job)
            out[job.job_id] = Decision.run()
            if self.only_when_uncovered and headroom[job.site] >= job.power_w:
                continue
            targets = _free_targets(view, job, free)
            if not targets.any():
                continue
            dst = int(np.argmax(np.where(targets, headroom, -np.inf)))
            better = headroom[dst] > headroom[job.site]
            if self.only_when_uncovered:
                better = better and headroom[dst] >= job.power_w
            if better:
                out[job.job_id] = Decision.migrate(dst)
                free[dst] -= job.slots
        return out


@dataclass
class FeasibilityAware:
    """The paper's feasibility-aware rule, implemented as described.

    Args:
        min_dwell_s: no move within this long after the last one landed (hysteresis).
        dwell_horizon_s: stay if the current site's forecast covers the job this long.
        partial: a job made of parts decides per group of co-located parts, and a group that cannot
            move whole in time offers the largest subset of its parts that can (see ``_part_groups``);
            the split's slowdown is priced into the gain, and a group left uncovered away from the rest
            of its job goes back to it.
    """

    min_dwell_s: float = 3600.0
    dwell_horizon_s: float = 3600.0
    partial: bool = False
    name: str = "feasibility-aware"

    def __post_init__(self) -> None:
        if self.partial and self.name == "feasibility-aware":
            self.name = "feasibility-aware-partial"

    @staticmethod
    def _covered_here(view: ClusterView, job: JobView, dwell_epochs: int) -> bool:
        """Whether the forecast covers the job at its own site for the next ``dwell_epochs`` epochs."""
        forecast = view.forecast_surplus_w[job.site, :dwell_epochs]
        if forecast.size < dwell_epochs:
            return False
        other_w = view.committed_load_w()[job.site] - (job.power_w if job.running else 0.0)
        return bool(np.all(forecast - other_w >= job.power_w))

    def decide(self, now_s: float, view: ClusterView) -> dict[int, Decision]:
        """Move a job only to a site whose forecast window passes the time and energy checks."""
        if not (self.partial and any(job.parts is not None for job in view.jobs)):
            return self._decide_jobs(view, view.jobs, {})
        jobs, groups = _expand_parts(view)
        split_cost_w = {gid: group.split_cost_w for gid, group in groups.items()}
        decided = self._decide_jobs(view, jobs, split_cost_w)
        out = _collect_group_decisions(view, decided, groups)
        for job in view.jobs:
            if job.parts is not None and out[job.job_id].action is not Action.MIGRATE:
                rejoin = self._rejoin(view, job, [g for g in groups.values() if g.job is job])
                if rejoin is not None:
                    out[job.job_id] = rejoin
        return out

    def _rejoin(self, view: ClusterView, job: JobView, groups: list[_PartGroup]) -> Decision | None:
        """Send a group that sits uncovered away from the rest of its job back to it."""
        if job.since_migration_s < self.min_dwell_s:
            return None
        for group in groups:
            here, dst = group.pseudo.site, group.rejoin_site
            if dst < 0 or group.has_pinned:
                continue
            uncovered = view.headroom_w(group.pseudo)[here] < group.pseudo.power_w
            linked = view.bandwidth_bps[here, dst] > 0 and not view.link_busy[here, dst]
            if uncovered and linked and view.free_slots[dst] >= len(group.group_parts):
                return Decision.migrate(dst, group.group_parts)
        return None

    def _decide_jobs(
        self, view: ClusterView, jobs: list[JobView], split_cost_w: dict[int, FloatArray]
    ) -> dict[int, Decision]:
        """The rule for each of ``jobs`` (one-part jobs, or groups of parts standing in for their job).

        ``split_cost_w[job_id]`` (S,): the slowdown, valued at the job's power, of having the job's parts
        spread the way a move to each site leaves them; it is charged over the destination's window.
        """
        out: dict[int, Decision] = {}
        busy = view.link_busy.copy()
        free = view.free_slots.copy()
        # A destination's window is checked against what is left of it once the jobs in flight and the
        # moves decided earlier in this epoch have landed (``decided_w``), or two jobs land in one window.
        inbound_w = view.committed_load_w() - view.site_load_w
        decided_w = np.zeros(view.n_sites)
        dwell_epochs = max(1, math.ceil(self.dwell_horizon_s / view.epoch_s - 1e-9))
        for job in jobs:
            out[job.job_id] = Decision.run()
            if job.since_migration_s < self.min_dwell_s:
                continue
            here = job.site
            covered_now = view.headroom_w(job) - inbound_w - decided_w >= job.power_w
            # Cheap exits first (same answers as the full computation below): the current site stays
            # covered over the dwell horizon, or no free linked site is covered now.
            if covered_now[here] and self._covered_here(view, job, dwell_epochs):
                continue
            if not (_free_targets(view, job, free) & ~busy[here] & covered_now).any():
                continue
            covered = view.forecast_headroom_w(job) - decided_w[:, None] >= job.power_w
            covered[:, 0] &= covered_now
            window_s = covered_run_epochs(covered) * view.epoch_s
            targets = _free_targets(view, job, free) & ~busy[here] & (window_s > 0)
            bw = np.where(targets, view.bandwidth_bps[here], 1.0)
            p = job.params
            sent = job.checkpoint_bytes if job.send_bytes is None else job.bytes_to(view.n_sites)
            t_mig = np.asarray(migration_time_s(sent, bw, p), dtype=np.float64)
            e_mig = np.asarray(migration_energy_j(sent, bw, p), dtype=np.float64)
            gain_j = job.power_w * (window_s - t_mig) - e_mig
            split_w = split_cost_w.get(job.job_id)
            if split_w is not None:
                gain_j = gain_j - (split_w - split_w[here]) * window_s
            # The paper's time check, and the landing inside the window: where moves complete on the
            # decision grid (the simulator's whole steps), a short move into a one-epoch window would
            # pass ``alpha`` and still land as the window closes.
            lands_s = np.ceil(t_mig / view.epoch_s - 1e-9) * view.epoch_s
            ok = targets & (t_mig <= p.alpha * window_s) & (lands_s < window_s) & (gain_j > 0)
            ok &= gain_j > job.power_w * window_s[here]
            if ok.any():
                dst = int(np.argmax(np.where(ok, gain_j, -np.inf)))
                out[job.job_id] = Decision.migrate(dst)
                busy[here, dst] = busy[dst, here] = True
                free[dst] -= job.slots
                decided_w[dst] += job.power_w
        return out


# --- jobs made of parts: groups of co-located parts stand in for their job ------------------------------


@dataclass(frozen=True)
class _PartGroup:
    """The parts of one job at one site, offered to a policy as a one-part job (``pseudo``).

    ``moving``: the parts a move of the pseudo-job takes (the whole group, or the largest subset of its
    unpinned parts that can reach some destination's window in time); ``group_parts``: every unpinned
    part of the group; ``rejoin_site``: the one site where all the job's other parts are (-1 if none or
    several); ``split_cost_w`` (S,): the job's slowdown, valued at its power, if ``moving`` sat at each site.
    """

    job: JobView
    pseudo: JobView
    moving: tuple[int, ...]
    group_parts: tuple[int, ...]
    has_pinned: bool
    rejoin_site: int
    split_cost_w: FloatArray
    subset: tuple[int, ...] = ()  # with ``whole_first``: the largest subset that fits in time, if smaller


def _site_of(view: ClusterView, job_id: int) -> int:
    """The site of the job ``job_id`` in ``view``."""
    return next(job.site for job in view.jobs if job.job_id == job_id)


def _pseudo_id(job_id: int, site: int) -> int:
    """A negative id for the group of ``job_id``'s parts at ``site``, stable across epochs."""
    return -1 - (job_id * 65_536 + site)


def _largest_subset(view: ClusterView, job: JobView, here: int, movable: IntArray) -> IntArray:
    """The largest subset of ``movable`` parts at ``here`` that fits in ``alpha`` of some site's window.

    A site's window for ``k`` parts is the run of epochs, from now, whose forecast headroom (measured
    now, for epoch 0) covers ``k`` parts; for every site and ``k`` the feasibility model gives how many
    parts fit in that window's budget, and ``k`` parts can go if at least ``k`` fit. Empty when none can.
    """
    parts = job.parts
    assert parts is not None
    n_movable = int(movable.size)
    sizes = parts.state_bytes[movable]
    headroom = view.forecast_surplus_w - view.site_load_w[:, None]
    needed_w = parts.part_power_w * np.arange(1, n_movable + 1, dtype=np.float64)
    covered = headroom[None, :, :] >= needed_w[:, None, None]
    covered[:, :, 0] &= (view.surplus_w - view.site_load_w)[None, :] >= needed_w[:, None]
    n_sites, horizon = headroom.shape
    run_epochs = covered_run_epochs(covered.reshape(n_movable * n_sites, horizon))
    window_s = run_epochs.reshape(n_movable, n_sites) * view.epoch_s  # (k, S)
    linked = view.bandwidth_bps[here] > 0
    linked[here] = False
    bandwidth = np.where(linked, view.bandwidth_bps[here], 0.0)
    fits = movable_part_counts(sizes, bandwidth[None, :], window_s, job.params)  # (k, S)
    can_go = (fits >= np.arange(1, n_movable + 1)[:, None]) & linked[None, :]
    best_per_site = np.cumprod(can_go, axis=0).sum(axis=0)
    best = int(best_per_site.max()) if best_per_site.size else 0
    if best == 0:
        return np.zeros(0, dtype=np.int64)
    dst = int(np.argmax(best_per_site))
    chosen = largest_movable_parts(sizes, float(bandwidth[dst]), float(window_s[best - 1, dst]), job.params)
    return movable[np.array(chosen.indices[:best], dtype=np.int64)]


def _part_groups(view: ClusterView, job: JobView, *, whole_first: bool = False) -> list[_PartGroup]:
    """The job's groups of co-located parts, largest first; groups with nothing to move are left out.

    A group is offered as the largest subset that fits in time when it cannot move whole in time, or
    when it holds a pinned part; with ``whole_first`` a group without pinned parts is offered whole
    regardless, and the subset is kept in ``subset`` for a second look (lookahead plans whole moves
    ahead of windows, where ``alpha`` does not bind it).
    """
    parts = job.parts
    assert parts is not None
    sites, counts = np.unique(parts.site, return_counts=True)
    out = []
    for site in sites[np.argsort(-counts, kind="stable")].tolist():
        movable = np.flatnonzero((parts.site == site) & ~parts.pinned)
        if movable.size == 0:
            continue
        has_pinned = bool(((parts.site == site) & parts.pinned).any())
        subset = _largest_subset(view, job, site, movable)
        moving = subset
        if not has_pinned and (whole_first or subset.size == 0):
            moving = movable  # offered whole (lookahead may move it ahead of a window)
        if moving.size == 0:
            continue
        group = _make_group(view, job, site, moving, movable, has_pinned, _pseudo_id(job.job_id, site))
        if subset.size < moving.size and subset.size > 0:
            group = replace(group, subset=tuple(subset.tolist()))
        out.append(group)
    return out


def _make_group(
    view: ClusterView,
    job: JobView,
    site: int,
    moving: IntArray,
    movable: IntArray,
    has_pinned: bool,
    pseudo_id: int,
) -> _PartGroup:
    """The group of ``job``'s parts at ``site`` offered as a one-part job that moves ``moving``."""
    parts = job.parts
    assert parts is not None
    power_w = moving.size * parts.part_power_w
    pseudo = JobView(
        pseudo_id,
        site,
        job.running,
        power_w,
        float(parts.state_bytes[moving].sum()),
        job.remaining_work_s,
        job.since_migration_s,
        job.params.model_copy(update={"job_power_w": power_w}),
        None,
        int(moving.size),
    )
    staying = np.ones(parts.n_parts, dtype=np.bool_)
    staying[moving] = False
    other_sites = np.unique(parts.site[staying])
    spread_after = np.full(view.n_sites, other_sites.size + 1)
    spread_after[other_sites] = other_sites.size
    split_rate_w = (1.0 - parts.cross_site_efficiency) * parts.n_parts * parts.part_power_w
    elsewhere = np.unique(parts.site[parts.site != site])
    return _PartGroup(
        job,
        pseudo,
        tuple(moving.tolist()),
        tuple(movable.tolist()),
        has_pinned,
        int(elsewhere[0]) if elsewhere.size == 1 else -1,
        np.where(spread_after > 1, split_rate_w, 0.0),
    )


def _expand_parts(
    view: ClusterView, *, whole_first: bool = False
) -> tuple[list[JobView], dict[int, _PartGroup]]:
    """``view.jobs`` with every job made of parts replaced by its groups' pseudo-jobs."""
    jobs: list[JobView] = []
    groups: dict[int, _PartGroup] = {}
    for job in view.jobs:
        if job.parts is None:
            jobs.append(job)
            continue
        for group in _part_groups(view, job, whole_first=whole_first):
            jobs.append(group.pseudo)
            groups[group.pseudo.job_id] = group
    return jobs, groups


def _collect_group_decisions(
    view: ClusterView, decided: dict[int, Decision], groups: dict[int, _PartGroup]
) -> dict[int, Decision]:
    """Decisions per real job: one-part jobs as decided; a job made of parts runs, or makes the move of
    its first (largest) group that moves."""
    out: dict[int, Decision] = {}
    for job in view.jobs:
        if job.parts is None:
            out[job.job_id] = decided.get(job.job_id, Decision.run())
        else:
            out[job.job_id] = Decision.run()
    for gid, group in groups.items():
        decision = decided.get(gid)
        job_id = group.job.job_id
        if decision is None or decision.action is not Action.MIGRATE:
            continue
        if out[job_id].action is not Action.MIGRATE:
            out[job_id] = Decision.migrate(decision.dst_site, group.moving)
    return out


def _sends_changed(before: FloatArray | None, now: FloatArray | None, rtol: float = 0.01) -> bool:
    """Whether a job's ``send_bytes`` changed (by more than ``rtol`` of a value) since a plan was made."""
    if before is None or now is None:
        return (before is None) != (now is None)
    return before.shape != now.shape or not np.allclose(before, now, rtol=rtol, atol=0.0)


@dataclass
class _JobPlan:
    plan: Plan
    made_s: float
    costs: MigrationCosts
    assumed_cover: npt.NDArray[np.bool_]  # (H,) whether the plan expected its site covered per epoch
    expected_w: FloatArray  # (S, H) headroom the plan expected, clipped to [0, job power]
    checkpoint_bytes: float = 0.0  # what ``costs`` were computed for (a group of parts may change)
    send_bytes: FloatArray | None = None  # and the job's ``send_bytes`` then


@dataclass
class Lookahead:
    """Receding-horizon placement: plan over the forecast, apply the first step, re-plan.

    Re-plans every ``replan_interval_s``, whenever the job is not where its plan expects it, when what a
    move of it would send changed (``JobView.send_bytes``: a destination's chunk cache), when the
    measured surplus at its site contradicts the plan's forecast for the current epoch, and when the
    headroom measured at any site differs from what the plan expected by more than ``surprise_fraction``
    of the job's power (a forecast surprise elsewhere may open a better move).

    Args:
        horizon_s: planning horizon.
        replan_interval_s: longest time a plan is followed without re-planning.
        min_dwell_s: no new move within this long after the last one landed (against thrashing on
            forecast noise; the plan itself already prices every move).
        error_decay_s: time constant with which the forecast's measured error now fades over the
            horizon (0: trust the forecast as given).
        surprise_fraction: share of the job's power by which a site's measured headroom may differ from
            the plan's expectation before the plan is remade.
        partial: a job made of parts is planned per group of co-located parts, each as a job of its own
            (see ``_part_groups``): whole first, then, for a group whose plan does not depart now and
            cannot move whole within ``alpha`` of any forecast window, as the largest subset of its parts
            that can; every plan is charged the job's slowdown while its parts are spread over sites.
    """

    horizon_s: float = 86_400.0
    replan_interval_s: float = 3600.0
    min_dwell_s: float = 0.0
    error_decay_s: float = 1800.0
    surprise_fraction: float = 0.25
    skill_aware: bool = True
    partial: bool = False
    name: str = "lookahead"
    _plans: dict[int, _JobPlan] = field(default_factory=dict, repr=False)
    _skill: ForecastSkill = field(default_factory=ForecastSkill, repr=False)
    _split_cost_w: dict[int, FloatArray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.partial and self.name == "lookahead":
            self.name = "lookahead-partial"

    def _needs_replan(self, now_s: float, job: JobView, view: ClusterView, entry: _JobPlan | None) -> bool:
        if entry is None or now_s - entry.made_s >= self.replan_interval_s - 1e-6:
            return True
        k = entry.plan.epoch_index(now_s)
        if k < 0 or k >= entry.plan.sites.size or entry.plan.sites[k] != job.site:
            return True
        # What a move would send changed by more than a percent (a new checkpoint, a destination's chunk
        # cache learnt): the plan priced its moves with other durations.
        if _sends_changed(entry.send_bytes, job.send_bytes):
            return True
        # The plan counted on this epoch being covered (or not): re-plan if the measurement disagrees.
        headroom = view.headroom_w(job)
        measured_cover = bool(headroom[job.site] >= job.power_w)
        if measured_cover != bool(entry.assumed_cover[k]):
            return True
        surprise_w = np.abs(np.clip(headroom, 0.0, job.power_w) - entry.expected_w[:, k])
        return bool(np.any(surprise_w > self.surprise_fraction * job.power_w))

    def _trusted_forecast_w(self, view: ClusterView, job: JobView) -> FloatArray:
        """The corrected forecast, each lead shrunk toward no surplus by how wrong that lead has been.

        Lead k is scaled by ``1 - MAE_k / P_job`` (clipped to [0, 1]), with MAE_k learnt online
        (``ForecastSkill``): a perfect forecast is used as given, while a forecast whose far leads have
        been off by a job's power or more stops attracting moves toward windows it cannot vouch for.
        """
        forecast = self._corrected_forecast_w(view)
        if not self.skill_aware or forecast.shape[1] < 2:
            return forecast
        trust = np.clip(1.0 - self._skill.mae_w(forecast.shape[1]) / job.power_w, 0.0, 1.0)
        trust[0] = 1.0
        trusted: FloatArray = forecast * trust[None, :]
        return trusted

    def _corrected_forecast_w(self, view: ClusterView) -> FloatArray:
        """The forecast, with today's measured error at lead 0 carried forward and fading.

        A forecast that disagrees with the measurement now (yesterday was sunny, today is cloudy) is
        likely to keep disagreeing for a while: the difference is added to every lead, decaying with
        time constant ``error_decay_s``. Forecasts that already start from the measurement (perfect,
        persistence, nowcast files) are unchanged.
        """
        forecast = view.forecast_surplus_w
        if self.error_decay_s <= 0 or forecast.shape[1] == 0:
            return forecast
        error_w = view.surplus_w - forecast[:, 0]
        lead_s = view.epoch_s * np.arange(forecast.shape[1])
        corrected: FloatArray = np.maximum(
            forecast + error_w[:, None] * np.exp(-lead_s / self.error_decay_s)[None, :], 0.0
        )
        return corrected

    def _horizon(self, view: ClusterView) -> int:
        return min(max(1, round(self.horizon_s / view.epoch_s)), int(view.forecast_surplus_w.shape[1]))

    def _planned_load(
        self, now_s: float, job: JobView, view: ClusterView, horizon: int
    ) -> tuple[IntArray, IntArray]:
        """(sites, epochs) where ``job`` expects to draw power over the next ``horizon`` epochs."""
        entry = self._plans.get(job.job_id)
        if entry is None or entry.plan.epoch_index(now_s) < 0:
            n = min(horizon, math.ceil(job.remaining_work_s / view.epoch_s - 1e-9)) if job.running else 0
            epochs = np.arange(n, dtype=np.int64)
            return np.full(n, job.site, dtype=np.int64), epochs
        k = entry.plan.epoch_index(now_s)
        sites = entry.plan.sites[k : k + horizon]
        epochs = np.flatnonzero(sites >= 0)
        return sites[epochs], epochs.astype(np.int64)

    def _reserve(
        self, reserved: FloatArray, now_s: float, job: JobView, view: ClusterView, sign: float
    ) -> None:
        sites, epochs = self._planned_load(now_s, job, view, reserved.shape[1])
        np.add.at(reserved, (sites, epochs), sign * job.power_w)

    def _replan(
        self,
        now_s: float,
        job: JobView,
        view: ClusterView,
        busy_from: npt.NDArray[np.bool_],
        reserved: FloatArray,
    ) -> _JobPlan:
        """Plan ``job`` against the surplus its co-scheduled jobs' plans leave (``reserved``, (S, H))."""
        horizon = reserved.shape[1]
        remaining = max(1, math.ceil(job.remaining_work_s / view.epoch_s - 1e-9))
        h = min(horizon, remaining)
        self._reserve(reserved, now_s, job, view, -1.0)  # everyone else's load
        headroom = self._trusted_forecast_w(view, job)[:, :h] - reserved[:, :h]
        headroom[:, 0] = view.headroom_w(job)
        cached = self._plans.get(job.job_id)
        same_bytes = (
            cached is not None
            and cached.checkpoint_bytes == job.checkpoint_bytes
            and not _sends_changed(cached.send_bytes, job.send_bytes, rtol=0.0)
        )
        costs = cached.costs if cached is not None and same_bytes else None
        if costs is None:
            bandwidth = view.bandwidth_bps if job.moves_whole else np.zeros_like(view.bandwidth_bps)
            sent = job.checkpoint_bytes if job.send_bytes is None else job.bytes_between(view.n_sites)
            costs = migration_costs(sent, bandwidth, job.params, view.epoch_s)
        split_w = self._split_cost_w.get(job.job_id)
        plan = plan_placement(
            job.site,
            job.power_w,
            headroom,
            costs,
            view.epoch_s,
            start_s=now_s,
            departure_allowed=busy_from,
            run_penalty_j=None if split_w is None else np.repeat(split_w[:, None] * view.epoch_s, h, axis=1),
        )
        on_site = plan.sites >= 0
        assumed = np.zeros(plan.sites.size, dtype=np.bool_)
        epochs = np.flatnonzero(on_site)
        assumed[epochs] = headroom[plan.sites[epochs], epochs] >= job.power_w
        expected_w = np.clip(headroom, 0.0, job.power_w)
        sends = None if job.send_bytes is None else np.array(job.send_bytes, dtype=np.float64)
        entry = _JobPlan(plan, now_s, costs, assumed, expected_w, job.checkpoint_bytes, sends)
        self._plans[job.job_id] = entry
        self._reserve(reserved, now_s, job, view, 1.0)
        return entry

    def _reservations(self, now_s: float, view: ClusterView) -> FloatArray:
        """(S, H) load expected at each site: jobs not decided now stay as they are; the jobs decided
        now follow their current plans (or stay put). Jobs planned later in this epoch see the surplus
        the earlier ones reserved, so co-scheduled jobs do not all aim at the same window."""
        horizon = self._horizon(view)
        base = view.committed_load_w()  # jobs in flight count where they land
        for job in view.jobs:
            if job.running:
                base[job.site] -= job.power_w
        reserved = np.repeat(base[:, None], horizon, axis=1)
        for job in view.jobs:
            self._reserve(reserved, now_s, job, view, 1.0)
        return reserved

    def decide(self, now_s: float, view: ClusterView) -> dict[int, Decision]:
        """Follow (or refresh) each job's plan; at most one departure per link per epoch."""
        if not (self.partial and any(job.parts is not None for job in view.jobs)):
            return self._decide_jobs(now_s, view)
        jobs, groups = _expand_parts(view, whole_first=True)
        self._split_cost_w = {gid: group.split_cost_w for gid, group in groups.items()}
        decided = self._decide_jobs(now_s, replace(view, jobs=jobs))
        # Second look: a group offered whole whose plan does not depart now may still send the largest
        # subset that fits in time (planned as a job of its own, after the first look's departures).
        subsets: dict[int, _PartGroup] = {}
        for gid, group in groups.items():
            if group.subset and decided[gid].action is not Action.MIGRATE:
                movable = np.array(group.group_parts, dtype=np.int64)
                sub = _make_group(
                    view,
                    group.job,
                    group.pseudo.site,
                    np.array(group.subset, dtype=np.int64),
                    movable,
                    group.has_pinned,
                    _pseudo_id(group.job.job_id, group.pseudo.site + view.n_sites),
                )
                subsets[sub.pseudo.job_id] = sub
        if subsets:
            busy = view.link_busy.copy()
            free = view.free_slots.copy()
            for gid, decision in decided.items():
                if decision.action is Action.MIGRATE:
                    site = groups[gid].pseudo.site if gid in groups else _site_of(view, gid)
                    busy[site, decision.dst_site] = busy[decision.dst_site, site] = True
                    free[decision.dst_site] -= groups[gid].pseudo.slots if gid in groups else 1
            self._split_cost_w = {gid: group.split_cost_w for gid, group in subsets.items()}
            second = replace(view, jobs=[g.pseudo for g in subsets.values()], link_busy=busy, free_slots=free)
            decided |= self._decide_jobs(now_s, second)
            groups |= subsets
        self._split_cost_w = {}
        return _collect_group_decisions(view, decided, groups)

    def _decide_jobs(self, now_s: float, view: ClusterView) -> dict[int, Decision]:
        out: dict[int, Decision] = {}
        busy = view.link_busy.copy()
        free = view.free_slots.copy()
        # The engine may ask about jobs in separate views (isolated worlds), so a plan is forgotten when it
        # has run out, not when its job is absent from this view.
        expiry_s = max(self.horizon_s, self.replan_interval_s)
        for job_id in [i for i, e in self._plans.items() if now_s - e.made_s > expiry_s]:
            del self._plans[job_id]
        reserved: FloatArray | None = None
        if self.skill_aware and view.jobs:  # score the forecasts once per epoch (isolated worlds ask per job)
            self._skill.observe(round(now_s / view.epoch_s), view.surplus_w, self._corrected_forecast_w(view))
        for job in view.jobs:
            out[job.job_id] = Decision.run()
            entry = self._plans.get(job.job_id)
            if entry is None or self._needs_replan(now_s, job, view, entry):
                if reserved is None:
                    reserved = self._reservations(now_s, view)
                targets_ok = ~busy[job.site] & (free >= job.slots) & (view.bandwidth_bps[job.site] > 0)
                targets_ok[job.site] = False
                departure_allowed = np.zeros(view.n_sites, dtype=np.bool_)
                departure_allowed[job.site] = targets_ok.any() and job.moves_whole
                entry = self._replan(now_s, job, view, departure_allowed, reserved)
            k = entry.plan.epoch_index(now_s)
            dst = int(entry.plan.moves[k]) if 0 <= k < entry.plan.moves.size else STAY
            if dst == STAY or job.since_migration_s < self.min_dwell_s:
                continue
            if busy[job.site, dst] or free[dst] < job.slots:
                # The plan is not executable now: the job stays, and re-plans next epoch.
                if reserved is not None:
                    self._reserve(reserved, now_s, job, view, -1.0)
                del self._plans[job.job_id]
                if reserved is not None:
                    self._reserve(reserved, now_s, job, view, 1.0)
                continue
            out[job.job_id] = Decision.migrate(dst)
            busy[job.site, dst] = busy[dst, job.site] = True
            free[dst] -= job.slots
        return out


register_policy("static", Static)
register_policy("pause-when-dirty", PauseWhenDirty)
register_policy("energy-greedy", EnergyGreedy)
register_policy("energy-greedy-uncovered", lambda: EnergyGreedy(only_when_uncovered=True))
register_policy("feasibility-aware", FeasibilityAware)
register_policy("lookahead", Lookahead)
register_policy("feasibility-aware-partial", lambda: FeasibilityAware(partial=True))
register_policy("lookahead-partial", lambda: Lookahead(partial=True))

ONLINE_POLICIES: tuple[str, ...] = (
    "static",
    "pause-when-dirty",
    "energy-greedy",
    "energy-greedy-uncovered",
    "feasibility-aware",
    "lookahead",
)
# Variants that move part of a job made of parts; they add rows only where jobs have parts (runs of
# jobs without parts are the same as their all-or-nothing versions').
PARTIAL_POLICIES: tuple[str, ...] = ("feasibility-aware-partial", "lookahead-partial")
