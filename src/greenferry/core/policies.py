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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from greenferry.core.feasibility import migration_energy_j, migration_time_s
from greenferry.core.forecast import ForecastSkill
from greenferry.core.lookahead import STAY, MigrationCosts, Plan, migration_costs, plan_placement
from greenferry.core.policy import ClusterView, Decision, JobView, covered_run_epochs, register_policy

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _free_targets(
    view: ClusterView, job: JobView, free_slots: npt.NDArray[np.int64]
) -> npt.NDArray[np.bool_]:
    """Sites the job could move to now: another site, linked, with a free GPU slot."""
    ok = (view.bandwidth_bps[job.site] > 0) & (free_slots > 0)
    ok[job.site] = False
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
                free[dst] -= 1
        return out


@dataclass
class FeasibilityAware:
    """The paper's feasibility-aware rule, implemented as described.

    Args:
        min_dwell_s: no move within this long after the last one landed (hysteresis).
        dwell_horizon_s: stay if the current site's forecast covers the job this long.
    """

    min_dwell_s: float = 3600.0
    dwell_horizon_s: float = 3600.0
    name: str = "feasibility-aware"

    @staticmethod
    def _covered_here(view: ClusterView, job: JobView, dwell_epochs: int) -> bool:
        """Whether the forecast covers the job at its own site for the next ``dwell_epochs`` epochs."""
        forecast = view.forecast_surplus_w[job.site, :dwell_epochs]
        if forecast.size < dwell_epochs:
            return False
        other_w = view.site_load_w[job.site] - (job.power_w if job.running else 0.0)
        return bool(np.all(forecast - other_w >= job.power_w))

    def decide(self, now_s: float, view: ClusterView) -> dict[int, Decision]:
        """Move a job only to a site whose forecast window passes the time and energy checks."""
        out: dict[int, Decision] = {}
        busy = view.link_busy.copy()
        free = view.free_slots.copy()
        dwell_epochs = max(1, math.ceil(self.dwell_horizon_s / view.epoch_s - 1e-9))
        for job in view.jobs:
            out[job.job_id] = Decision.run()
            if job.since_migration_s < self.min_dwell_s:
                continue
            here = job.site
            covered_now = view.headroom_w(job) >= job.power_w
            # Cheap exits first (same answers as the full computation below): the current site stays
            # covered over the dwell horizon, or no free linked site is covered now.
            if covered_now[here] and self._covered_here(view, job, dwell_epochs):
                continue
            if not (_free_targets(view, job, free) & ~busy[here] & covered_now).any():
                continue
            covered = view.forecast_headroom_w(job) >= job.power_w
            covered[:, 0] &= covered_now
            window_s = covered_run_epochs(covered) * view.epoch_s
            targets = _free_targets(view, job, free) & ~busy[here] & (window_s > 0)
            bw = np.where(targets, view.bandwidth_bps[here], 1.0)
            p = job.params
            t_mig = np.asarray(migration_time_s(job.checkpoint_bytes, bw, p), dtype=np.float64)
            e_mig = np.asarray(migration_energy_j(job.checkpoint_bytes, bw, p), dtype=np.float64)
            gain_j = job.power_w * (window_s - t_mig) - e_mig
            ok = targets & (t_mig <= p.alpha * window_s) & (gain_j > 0)
            ok &= gain_j > job.power_w * window_s[here]
            if ok.any():
                dst = int(np.argmax(np.where(ok, gain_j, -np.inf)))
                out[job.job_id] = Decision.migrate(dst)
                busy[here, dst] = busy[dst, here] = True
                free[dst] -= 1
        return out


@dataclass
class _JobPlan:
    plan: Plan
    made_s: float
    costs: MigrationCosts
    assumed_cover: npt.NDArray[np.bool_]  # (H,) whether the plan expected its site covered per epoch
    expected_w: FloatArray  # (S, H) headroom the plan expected, clipped to [0, job power]


@dataclass
class Lookahead:
    """Receding-horizon placement: plan over the forecast, apply the first step, re-plan.

    Re-plans every ``replan_interval_s``, whenever the job is not where its plan expects it, when the
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
    """

    horizon_s: float = 86_400.0
    replan_interval_s: float = 3600.0
    min_dwell_s: float = 0.0
    error_decay_s: float = 1800.0
    surprise_fraction: float = 0.25
    skill_aware: bool = True
    name: str = "lookahead"
    _plans: dict[int, _JobPlan] = field(default_factory=dict, repr=False)
    _skill: ForecastSkill = field(default_factory=ForecastSkill, repr=False)

    def _needs_replan(self, now_s: float, job: JobView, view: ClusterView, entry: _JobPlan | None) -> bool:
        if entry is None or now_s - entry.made_s >= self.replan_interval_s - 1e-6:
            return True
        k = entry.plan.epoch_index(now_s)
        if k < 0 or k >= entry.plan.sites.size or entry.plan.sites[k] != job.site:
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
        costs = cached.costs if cached is not None else None
        if costs is None:
            costs = migration_costs(job.checkpoint_bytes, view.bandwidth_bps, job.params, view.epoch_s)
        plan = plan_placement(
            job.site, job.power_w, headroom, costs, view.epoch_s, start_s=now_s, departure_allowed=busy_from
        )
        on_site = plan.sites >= 0
        assumed = np.zeros(plan.sites.size, dtype=np.bool_)
        epochs = np.flatnonzero(on_site)
        assumed[epochs] = headroom[plan.sites[epochs], epochs] >= job.power_w
        entry = _JobPlan(plan, now_s, costs, assumed, np.clip(headroom, 0.0, job.power_w))
        self._plans[job.job_id] = entry
        self._reserve(reserved, now_s, job, view, 1.0)
        return entry

    def _reservations(self, now_s: float, view: ClusterView) -> FloatArray:
        """(S, H) load expected at each site: jobs not decided now stay as they are; the jobs decided
        now follow their current plans (or stay put). Jobs planned later in this epoch see the surplus
        the earlier ones reserved, so co-scheduled jobs do not all aim at the same window."""
        horizon = self._horizon(view)
        base = view.site_load_w.copy()
        for job in view.jobs:
            if job.running:
                base[job.site] -= job.power_w
        reserved = np.repeat(base[:, None], horizon, axis=1)
        for job in view.jobs:
            self._reserve(reserved, now_s, job, view, 1.0)
        return reserved

    def decide(self, now_s: float, view: ClusterView) -> dict[int, Decision]:
        """Follow (or refresh) each job's plan; at most one departure per link per epoch."""
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
                targets_ok = ~busy[job.site] & (free > 0) & (view.bandwidth_bps[job.site] > 0)
                targets_ok[job.site] = False
                departure_allowed = np.zeros(view.n_sites, dtype=np.bool_)
                departure_allowed[job.site] = targets_ok.any()
                entry = self._replan(now_s, job, view, departure_allowed, reserved)
            k = entry.plan.epoch_index(now_s)
            dst = int(entry.plan.moves[k]) if 0 <= k < entry.plan.moves.size else STAY
            if dst == STAY or job.since_migration_s < self.min_dwell_s:
                continue
            if busy[job.site, dst] or free[dst] <= 0:
                # The plan is not executable now: the job stays, and re-plans next epoch.
                if reserved is not None:
                    self._reserve(reserved, now_s, job, view, -1.0)
                del self._plans[job.job_id]
                if reserved is not None:
                    self._reserve(reserved, now_s, job, view, 1.0)
                continue
            out[job.job_id] = Decision.migrate(dst)
            busy[job.site, dst] = busy[dst, job.site] = True
            free[dst] -= 1
        return out


register_policy("static", Static)
register_policy("pause-when-dirty", PauseWhenDirty)
register_policy("energy-greedy", EnergyGreedy)
register_policy("energy-greedy-uncovered", lambda: EnergyGreedy(only_when_uncovered=True))
register_policy("feasibility-aware", FeasibilityAware)
register_policy("lookahead", Lookahead)

ONLINE_POLICIES: tuple[str, ...] = (
    "static",
    "pause-when-dirty",
    "energy-greedy",
    "energy-greedy-uncovered",
    "feasibility-aware",
    "lookahead",
)
