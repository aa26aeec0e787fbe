"""The simulation engine: drives a core/ policy over a world of sites and jobs with a virtual clock.

Time is discrete (the traces' step, e.g. 5 min). The policy is asked at every decision epoch (a whole
number of steps); between epochs each job's load is laid onto a per-site load array with slice additions,
and energy is settled once at the end: ``nonrenewable = max(0, load - surplus)`` per site and step. So the
cost of a run grows with the number of epochs with live jobs, not with sites x steps.

The migration model is the one the oracle optimises (core/oracle.py): a migration occupies
``ceil(T_mig / step)`` whole steps with no progress; its source and destination draw its energy terms
spread evenly over those steps; the network energy ``e_net * S`` is always non-renewable. A migration that
lands where the surplus no longer covers the site's load, when the destination's window was open as it
began, has landed after the window closed: failed. Every landing on a site not covering the job (failed
or deliberate, e.g. arriving before a window opens) is also counted as an uncovered landing.

A job made of parts (``JobModel.parts``: data-parallel workers, each one GPU slot with a state of its own)
may move a subset of its parts (``Decision.migrate(dst, parts)``); the parts that stay keep running
(elastic data parallelism). It progresses by one part-step per running part and step, times the parts'
``cross_site_efficiency`` while its running parts are on more than one site; pinned parts never move. A job
without parts is the one-part case, on the original code path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt

from greenferry.core.feasibility import MigrationParams
from greenferry.core.forecast import Forecaster
from greenferry.core.lookahead import MigrationCosts, migration_costs
from greenferry.core.policy import Action, ClusterView, Decision, JobView, PartsView, Policy
from greenferry.sim.results import JobState, MigrationRecord, RunResult

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

J_PER_KWH = 3.6e6


@dataclass(frozen=True)
class SiteModel:
    """A micro-datacenter: its renewable surplus over time, its grid's carbon intensity, its GPU slots."""

    name: str
    surplus_w: FloatArray  # (T,)
    carbon_g_per_kwh: FloatArray  # (T,)
    gpu_slots: int


@dataclass(frozen=True)
class PartsModel:
    """The parts of a data-parallel job: one worker (one GPU slot) each, with a state of its own.

    Attributes:
        state_bytes: checkpoint state of each part (bytes).
        pinned: parts that never leave the job's home site.
        cross_site_efficiency: share of the summed rate of its running parts that the job makes while they
            run on more than one site (gradient synchronisation over the WAN), in (0, 1].
    """

    state_bytes: tuple[float, ...]
    pinned: tuple[bool, ...]
    cross_site_efficiency: float = 0.8

    def __post_init__(self) -> None:
        if not self.state_bytes or len(self.pinned) != len(self.state_bytes):
            raise ValueError("a job needs at least one part, and one pinned flag per part")
        if all(self.pinned):
            raise ValueError("every part is pinned")
        if not 0.0 < self.cross_site_efficiency <= 1.0:
            raise ValueError("cross_site_efficiency must be in (0, 1]")

    @property
    def n_parts(self) -> int:
        """Number of parts."""
        return len(self.state_bytes)


@dataclass(frozen=True)
class JobModel:
    """A training job: where and when it arrives and how much running it needs.

    With ``parts`` the job is data-parallel: ``power_w`` and ``checkpoint_bytes`` are those of all its
    parts together (each part draws ``power_w / n_parts``), ``work_steps`` is its running time with every
    part on one site, and it needs a GPU slot per part.
    """

    job_id: int
    arrival_step: int
    work_steps: int
    power_w: float  # GPU training power plus its host share
    checkpoint_bytes: float
    home_site: int
    profile: str = ""
    parts: PartsModel | None = None

    @property
    def slots(self) -> int:
        """GPU slots the job holds."""
        return 1 if self.parts is None else self.parts.n_parts

    @property
    def moves_whole(self) -> bool:
        """Whether the job may move as a whole (no pinned part)."""
        return self.parts is None or not any(self.parts.pinned)


@dataclass(frozen=True)
class World:
    """Everything a run needs except the policy and the forecaster."""

    name: str
    start_s: float
    step_s: float
    n_steps: int
    sites: tuple[SiteModel, ...]
    bandwidth_bps: FloatArray  # (S, S)
    jobs: tuple[JobModel, ...]
    params: MigrationParams
    epoch_steps: int = 1
    isolated: bool = False  # every job has the sites to itself (the paper's single-job setting)

    @cached_property
    def surplus_w(self) -> FloatArray:
        """(S, T) surplus of every site."""
        return np.vstack([site.surplus_w for site in self.sites])

    @cached_property
    def carbon_g_per_kwh(self) -> FloatArray:
        """(S, T) carbon intensity of every site's grid."""
        return np.vstack([site.carbon_g_per_kwh for site in self.sites])

    @cached_property
    def epoch_surplus_w(self) -> FloatArray:
        """(S, E) mean surplus over each decision epoch."""
        k = self.epoch_steps
        n_epochs = math.ceil(self.n_steps / k)
        padded = np.zeros((len(self.sites), n_epochs * k))
        padded[:, : self.n_steps] = self.surplus_w
        sums = padded.reshape(len(self.sites), n_epochs, k).sum(axis=2)
        counts = np.full(n_epochs, float(k))
        counts[-1] = self.n_steps - (n_epochs - 1) * k
        means: FloatArray = sums / counts
        return means

    @property
    def epoch_s(self) -> float:
        """Length of a decision epoch (s)."""
        return self.step_s * self.epoch_steps

    def job_params(self, job: JobModel) -> MigrationParams:
        """Migration parameters with this job's power."""
        return self.params.model_copy(update={"job_power_w": job.power_w})

    def job_migration_costs(self, job: JobModel) -> MigrationCosts:
        """Migration durations in steps and energy split of the whole job, for every pair of sites.

        A job with a pinned part cannot move whole: no pair is allowed.
        """
        bandwidth = self.bandwidth_bps if job.moves_whole else np.zeros_like(self.bandwidth_bps)
        return migration_costs(job.checkpoint_bytes, bandwidth, self.job_params(job), self.step_s)

    def times_s(self) -> FloatArray:
        """Start of every step (UTC epoch s)."""
        return self.start_s + self.step_s * np.arange(self.n_steps, dtype=np.float64)


PENDING, RUNNING, PAUSED, MIGRATING, DONE = 0, 1, 2, 3, 4


@dataclass
class _Parts:
    """Where a data-parallel job's parts are, and the work it still needs (in part-steps)."""

    model: PartsModel
    state_bytes: FloatArray  # (P,)
    pinned: npt.NDArray[np.bool_]  # (P,)
    part_power_w: float
    site: IntArray  # (P,) each part's site; its destination while in flight
    flying: npt.NDArray[np.bool_]  # (P,) parts in the current move
    work_left: float = 0.0  # part-steps at full efficiency
    stayers_running: bool = True  # whether the parts not in flight run during a move
    flight_steps: float = 0.0  # steps in flight, each weighted by the share of parts in flight
    progress: list[tuple[int, int, float]] = field(default_factory=list)  # (start, end, part-steps/step)

    @classmethod
    def of(cls, job: JobModel, parts: PartsModel) -> _Parts:
        n = parts.n_parts
        return cls(
            parts,
            np.array(parts.state_bytes, dtype=np.float64),
            np.array(parts.pinned, dtype=np.bool_),
            job.power_w / n,
            np.full(n, job.home_site, dtype=np.int64),
            np.zeros(n, dtype=np.bool_),
        )

    def majority_site(self) -> int:
        """The site hosting most parts (the lowest index on a tie)."""
        return int(np.argmax(np.bincount(self.site)))


@dataclass(slots=True)
class _Move:
    """One migration as it departed: what moved, and its energy terms."""

    job: _Job
    src: int
    dst: int
    start: int
    end: int
    surplus_at_start_w: FloatArray
    size_bytes: float
    power_w: float  # power of what moved
    src_energy_j: float
    dst_energy_j: float
    network_energy_j: float


@dataclass
class _Job:
    model: JobModel
    params: MigrationParams
    costs: MigrationCosts
    status: int = PENDING
    site: int = -1
    work_left: int = 0
    mig_src: int = -1
    mig_dst: int = -1
    mig_end: int = 0
    mig_src_w: float = 0.0
    mig_dst_w: float = 0.0
    last_land: int | None = None
    completion: int | None = None
    migration_steps: int = 0
    parts: _Parts | None = None


@dataclass
class _Timeline:
    job_state: npt.NDArray[np.int8]
    job_site: npt.NDArray[np.int16]

    def mark(self, j: int, a: int, b: int, state: JobState, site: int) -> None:
        self.job_state[j, a:b] = state
        self.job_site[j, a:b] = site


@dataclass
class Engine:
    """Runs one policy over one world.

    Args:
        world: sites, links, jobs and migration parameters.
        forecaster: what the policy is told about the future.
        keep_timeline: keep the (J, T) placement arrays in the result (reports need them for one seed).
    """

    world: World
    forecaster: Forecaster
    keep_timeline: bool = True
    _jobs: list[_Job] = field(default_factory=list, init=False)
    _load: FloatArray = field(default_factory=lambda: np.zeros((0, 0)), init=False)
    _isolated_j: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0], init=False)

    def run(self, policy: Policy, seed: int = 0) -> RunResult:
        """Simulate the whole world under ``policy`` and return the run's record and metrics."""
        w = self.world
        n_sites, n_steps, k = len(w.sites), w.n_steps, w.epoch_steps
        surplus = w.surplus_w
        load = np.zeros((n_sites, n_steps))
        self._load = load
        self._isolated_j = [0.0, 0.0, 0.0]  # non-renewable J, renewable J, CO2 g (isolated worlds only)
        timeline = _Timeline(
            np.zeros((len(w.jobs), n_steps), dtype=np.int8),
            np.full((len(w.jobs), n_steps), -1, dtype=np.int16),
        )
        jobs = [_Job(job, w.job_params(job), w.job_migration_costs(job)) for job in w.jobs]
        for job in jobs:
            if job.model.parts is not None:
                job.parts = _Parts.of(job.model, job.model.parts)
        self._jobs = jobs
        migrations: list[_Move] = []
        slots = np.array([site.gpu_slots for site in w.sites], dtype=np.int64)
        arrivals = sorted(range(len(jobs)), key=lambda j: jobs[j].model.arrival_step)
        next_arrival = 0
        active: list[int] = []
        queued: list[int] = []  # arrived, waiting for a free GPU slot at home (first come, first served)
        n_epochs = math.ceil(n_steps / k)
        epoch = 0
        while epoch < n_epochs:
            t0 = epoch * k
            t1 = min(t0 + k, n_steps)
            if not active and not queued:
                if next_arrival >= len(arrivals):
                    break
                first = jobs[arrivals[next_arrival]].model.arrival_step
                if first >= t1:
                    epoch = first // k
                    continue
            while next_arrival < len(arrivals) and jobs[arrivals[next_arrival]].model.arrival_step < t1:
                queued.append(arrivals[next_arrival])
                next_arrival += 1
            if queued:
                queued = self._admit(queued, active, slots)
            asked = [
                j for j in active if jobs[j].status in (RUNNING, PAUSED) and jobs[j].model.arrival_step <= t0
            ]
            # In an isolated world each job is alone at every site, so each gets a view of its own.
            groups = [[j] for j in asked] if w.isolated else [asked] if asked else []
            for group in groups:
                view = self._view(epoch, t0, group if w.isolated else active, group, surplus, slots)
                decisions = policy.decide(view.now_s, view)
                for j in group:
                    job = jobs[j]
                    decision = decisions.get(job.model.job_id)
                    if decision is None:
                        pass
                    elif job.parts is None:
                        self._apply(job, decision.action, decision.dst_site, t0, view, migrations)
                    else:
                        self._apply_parts(job, decision, t0, view, migrations)
            for j in active:
                job = jobs[j]
                if job.parts is None:
                    self._advance(j, job, max(t0, job.model.arrival_step), t1, load, timeline)
                else:
                    self._advance_parts(j, job, max(t0, job.model.arrival_step), t1, timeline)
            active = [j for j in active if jobs[j].status != DONE]
            epoch += 1
        return self._result(policy.name, seed, load, timeline, migrations)

    def _admit(self, queued: list[int], active: list[int], slots: IntArray) -> list[int]:
        """Start queued jobs at their home sites while slots are free; return those still waiting."""
        jobs = self._jobs
        hosted = np.zeros(slots.size, dtype=np.int64)
        for j in active:
            job = jobs[j]
            if job.parts is not None:
                _parts_presence(job, job.parts, None, hosted, None)
            elif job.status == MIGRATING:
                hosted[job.mig_src] += 1
                hosted[job.mig_dst] += 1
            else:
                hosted[job.site] += 1
        waiting = []
        for j in queued:
            job = jobs[j]
            home = job.model.home_site
            need = job.model.slots
            # isolated: every job has its own sites
            if self.world.isolated or hosted[home] + need <= slots[home]:
                hosted[home] += need
                job.status, job.site, job.work_left = RUNNING, home, job.model.work_steps
                if job.parts is not None:
                    job.parts.work_left = float(job.model.work_steps * need)
                active.append(j)
            else:
                waiting.append(j)
        return waiting

    def _view(
        self, epoch: int, t0: int, active: list[int], asked: list[int], surplus: FloatArray, slots: IntArray
    ) -> ClusterView:
        w, jobs = self.world, self._jobs
        n_sites = len(w.sites)
        site_load = np.zeros(n_sites)
        inbound = np.zeros(n_sites)
        hosted = np.zeros(n_sites, dtype=np.int64)
        busy = np.zeros((n_sites, n_sites), dtype=np.bool_)
        for j in active:
            job = jobs[j]
            if job.parts is not None:
                _parts_presence(job, job.parts, site_load, hosted, busy)
                if job.status == MIGRATING:
                    inbound[job.mig_dst] += float(job.parts.flying.sum()) * job.parts.part_power_w
            elif job.status == RUNNING:
                site_load[job.site] += job.model.power_w
                hosted[job.site] += 1
            elif job.status == PAUSED:
                hosted[job.site] += 1
            elif job.status == MIGRATING:
                site_load[job.mig_src] += job.mig_src_w
                site_load[job.mig_dst] += job.mig_dst_w
                inbound[job.mig_dst] += job.model.power_w
                hosted[job.mig_src] += 1
                hosted[job.mig_dst] += 1
                busy[job.mig_src, job.mig_dst] = busy[job.mig_dst, job.mig_src] = True
        now_s = w.start_s + t0 * w.step_s
        measured = surplus[:, t0].copy()
        horizon = math.ceil(86_400.0 / w.epoch_s)
        forecaster = self.forecaster

        def forecast() -> FloatArray:
            return forecaster.forecast(epoch, measured, horizon)

        views = []
        for j in asked:
            job = jobs[j]
            since = math.inf if job.last_land is None else (t0 - job.last_land) * w.step_s
            if job.parts is not None:
                views.append(self._parts_job_view(job, job.parts, since))
                continue
            views.append(
                JobView(
                    job.model.job_id,
                    job.site,
                    job.status == RUNNING,
                    job.model.power_w,
                    job.model.checkpoint_bytes,
                    job.work_left * w.step_s,
                    since,
                    job.params,
                )
            )
        return ClusterView(
            now_s,
            w.epoch_s,
            measured,
            forecast,
            site_load,
            slots - hosted,
            w.bandwidth_bps,
            busy,
            views,
            inbound,
        )

    def _parts_job_view(self, job: _Job, parts: _Parts, since_s: float) -> JobView:
        model = job.model
        n = parts.model.n_parts
        return JobView(
            model.job_id,
            parts.majority_site(),
            job.status == RUNNING,
            model.power_w,
            model.checkpoint_bytes,
            parts.work_left / n * self.world.step_s,
            since_s,
            job.params,
            PartsView(
                parts.state_bytes,
                parts.pinned,
                parts.site.copy(),
                parts.part_power_w,
                parts.model.cross_site_efficiency,
            ),
            n,
        )

    def _apply(
        self,
        job: _Job,
        action: Action,
        dst: int,
        t0: int,
        view: ClusterView,
        migrations: list[_Move],
    ) -> None:
        if action is Action.RUN:
            job.status = RUNNING
        elif action is Action.PAUSE:
            job.status = PAUSED
        elif action is Action.MIGRATE:
            if not (0 <= dst < view.n_sites) or dst == job.site or not job.costs.allowed[job.site, dst]:
                return
            if view.free_slots[dst] <= 0:
                return
            m = int(job.costs.epochs[job.site, dst])
            job.status = MIGRATING
            job.mig_src, job.mig_dst, job.mig_end = job.site, dst, t0 + m
            duration_s = m * self.world.step_s
            job.mig_src_w = float(job.costs.src_energy_j[job.site, dst]) / duration_s
            job.mig_dst_w = float(job.costs.dst_energy_j[job.site, dst]) / duration_s
            view.free_slots[dst] -= 1
            costs = job.costs
            migrations.append(
                _Move(
                    job,
                    job.site,
                    dst,
                    t0,
                    t0 + m,
                    view.surplus_w,
                    job.model.checkpoint_bytes,
                    job.model.power_w,
                    float(costs.src_energy_j[job.site, dst]),
                    float(costs.dst_energy_j[job.site, dst]),
                    float(costs.network_energy_j[job.site, dst]),
                )
            )

    def _apply_parts(
        self, job: _Job, decision: Decision, t0: int, view: ClusterView, migrations: list[_Move]
    ) -> None:
        """Apply a decision to a data-parallel job; an invalid move is ignored (the job keeps its state)."""
        parts = job.parts
        assert parts is not None
        if decision.action is Action.RUN:
            job.status = RUNNING
            return
        if decision.action is Action.PAUSE:
            job.status = PAUSED
            return
        n = parts.model.n_parts
        if decision.parts is None:
            if parts.pinned.any() or not np.all(parts.site == parts.site[0]):
                return
            moving = np.arange(n)
        else:
            moving = np.array(decision.parts, dtype=np.int64)
            if (
                moving.size == 0
                or moving.min() < 0
                or moving.max() >= n
                or np.unique(moving).size < moving.size
            ):
                return
            if parts.pinned[moving].any() or np.any(parts.site[moving] != parts.site[moving[0]]):
                return
        src, dst, k = int(parts.site[moving[0]]), decision.dst_site, int(moving.size)
        w = self.world
        if not (0 <= dst < view.n_sites) or dst == src or w.bandwidth_bps[src, dst] <= 0:
            return
        if view.free_slots[dst] < k:
            return
        size = float(parts.state_bytes[moving].sum())
        if k == n:
            costs = job.costs  # the whole job: the costs the oracle uses
        else:
            params = job.params.model_copy(update={"job_power_w": k * parts.part_power_w})
            costs = migration_costs(size, w.bandwidth_bps, params, w.step_s)
        m = int(costs.epochs[src, dst])
        duration_s = m * w.step_s
        src_j, dst_j = float(costs.src_energy_j[src, dst]), float(costs.dst_energy_j[src, dst])
        parts.stayers_running = job.status == RUNNING
        job.status = MIGRATING
        job.mig_src, job.mig_dst, job.mig_end = src, dst, t0 + m
        job.mig_src_w, job.mig_dst_w = src_j / duration_s, dst_j / duration_s
        parts.flying[moving] = True
        parts.site[moving] = dst
        view.free_slots[dst] -= k
        net_j = float(costs.network_energy_j[src, dst])
        power_w = k * parts.part_power_w
        migrations.append(
            _Move(job, src, dst, t0, t0 + m, view.surplus_w, size, power_w, src_j, dst_j, net_j)
        )

    def _advance(self, j: int, job: _Job, pos: int, t1: int, load: FloatArray, timeline: _Timeline) -> None:
        n_steps = self.world.n_steps
        if job.status == MIGRATING:
            end = min(job.mig_end, t1)
            self._lay(job.mig_src, pos, end, job.mig_src_w)
            self._lay(job.mig_dst, pos, end, job.mig_dst_w)
            timeline.mark(j, pos, end, JobState.MIGRATING, job.mig_dst)
            job.migration_steps += end - pos
            if job.mig_end > t1:
                return
            job.status, job.site, job.last_land = RUNNING, job.mig_dst, job.mig_end
            pos = job.mig_end
            if pos >= n_steps:
                return
        if job.status == RUNNING and pos < t1:
            n = min(t1 - pos, job.work_left)
            self._lay(job.site, pos, pos + n, job.model.power_w)
            timeline.mark(j, pos, pos + n, JobState.RUNNING, job.site)
            job.work_left -= n
            if job.work_left == 0:
                job.status, job.completion = DONE, pos + n
        elif job.status == PAUSED and pos < t1:
            timeline.mark(j, pos, t1, JobState.PAUSED, job.site)

    def _advance_parts(self, j: int, job: _Job, pos: int, t1: int, timeline: _Timeline) -> None:
        """``_advance`` for a data-parallel job: a move in flight, the parts that run, completion."""
        parts = job.parts
        assert parts is not None
        n_steps = self.world.n_steps
        if job.status == MIGRATING:
            end = min(job.mig_end, t1)
            self._lay(job.mig_src, pos, end, job.mig_src_w)
            self._lay(job.mig_dst, pos, end, job.mig_dst_w)
            share = float(parts.flying.sum()) / parts.model.n_parts
            parts.flight_steps += (end - pos) * share
            ran_to = pos
            if parts.stayers_running and parts.work_left > 0.0:
                ran_to = self._run_parts(j, job, parts, ~parts.flying, pos, end, timeline)
            timeline.mark(j, ran_to, end, JobState.MIGRATING, parts.majority_site())
            if job.mig_end > t1:
                return
            parts.flying[:] = False
            job.status, job.last_land = RUNNING, job.mig_end
            if parts.work_left <= 0.0:  # finished by the parts that stayed while the others flew
                job.status = DONE
                return
            pos = job.mig_end
            if pos >= n_steps:
                return
        if job.status == RUNNING and pos < t1:
            self._run_parts(j, job, parts, np.ones(parts.model.n_parts, dtype=np.bool_), pos, t1, timeline)
            if parts.work_left <= 0.0:
                job.status = DONE
        elif job.status == PAUSED and pos < t1:
            timeline.mark(j, pos, t1, JobState.PAUSED, parts.majority_site())

    def _run_parts(
        self,
        j: int,
        job: _Job,
        parts: _Parts,
        running: npt.NDArray[np.bool_],
        pos: int,
        end: int,
        timeline: _Timeline,
    ) -> int:
        """Run the ``running`` parts over ``[pos, end)`` or until the work is done; return where they stop."""
        per_site = np.bincount(parts.site[running], minlength=len(self.world.sites))
        hosts = np.flatnonzero(per_site)
        if hosts.size == 0 or end <= pos:
            return pos
        efficiency = 1.0 if hosts.size == 1 else parts.model.cross_site_efficiency
        rate = float(per_site.sum()) * efficiency  # part-steps per step
        steps_needed = math.ceil(parts.work_left / rate - 1e-9)
        n = min(end - pos, steps_needed)
        for site in hosts.tolist():
            self._lay(site, pos, pos + n, float(per_site[site]) * parts.part_power_w)
        timeline.mark(j, pos, pos + n, JobState.RUNNING, int(hosts[np.argmax(per_site[hosts])]))
        parts.progress.append((pos, pos + n, rate))
        if steps_needed <= end - pos:
            parts.work_left = 0.0
            job.completion = pos + n
        else:
            parts.work_left -= rate * n
        return pos + n

    def _lay(self, site: int, start: int, end: int, power_w: float) -> None:
        """Add a job's power to a site's load; in an isolated world, settle its energy right away."""
        self._load[site, start:end] += power_w
        if self.world.isolated and end > start:
            dt = self.world.step_s
            uncovered = np.maximum(power_w - self.world.surplus_w[site, start:end], 0.0)
            nonrenewable_j = float(uncovered.sum()) * dt
            self._isolated_j[0] += nonrenewable_j
            self._isolated_j[1] += power_w * (end - start) * dt - nonrenewable_j
            carbon = self.world.carbon_g_per_kwh[site, start:end]
            self._isolated_j[2] += float((uncovered * carbon).sum()) * dt / J_PER_KWH

    def _result(
        self,
        policy: str,
        seed: int,
        load: FloatArray,
        timeline: _Timeline,
        migrations: list[_Move],
    ) -> RunResult:
        w = self.world
        dt = w.step_s
        surplus = w.surplus_w
        carbon = w.carbon_g_per_kwh
        nonrenewable_w = np.maximum(load - surplus, 0.0)
        renewable_w = load - nonrenewable_w
        records: list[MigrationRecord] = []
        network_j = 0.0
        network_co2_g = 0.0
        migration_j = 0.0
        failed = uncovered_landings = 0
        times = w.times_s()
        for move in migrations:
            job, src, dst, start, end = move.job, move.src, move.dst, move.start, move.end
            net = move.network_energy_j
            energy = move.src_energy_j + move.dst_energy_j + net
            landed = end < w.n_steps
            if w.isolated:
                lost = landed and bool(move.power_w > surplus[dst, end] + 1e-6)
            else:
                lost = landed and bool(load[dst, end] > surplus[dst, end] + 1e-6)
            network_j += net
            migration_j += energy
            network_co2_g += net / J_PER_KWH * 0.5 * (carbon[src, start] + carbon[dst, start])
            covered = surplus[dst, start:] >= move.power_w
            window_steps = int(np.argmin(covered)) if not covered.all() else covered.size
            if move.surplus_at_start_w[dst] < move.power_w:
                window_steps = 0
            # Failed: the window the destination had when the move began closed before it landed. A
            # landing at a site that had no window at departure (pre-positioning, or a partial surplus
            # the planner chose on purpose) is counted apart, as an uncovered landing.
            late = lost and window_steps > 0
            failed += int(late)
            uncovered_landings += int(lost)
            records.append(
                MigrationRecord(
                    job.model.job_id,
                    w.sites[src].name,
                    w.sites[dst].name,
                    float(times[start]),
                    float(w.start_s + end * dt),
                    move.size_bytes,
                    float(w.bandwidth_bps[src, dst]),
                    window_steps * dt,
                    late,
                    energy,
                    lost,
                )
            )
        if w.isolated:
            site_nonrenewable_j, renewable_j, site_co2_g = self._isolated_j
        else:
            site_nonrenewable_j = float(nonrenewable_w.sum()) * dt
            renewable_j = float(renewable_w.sum()) * dt
            site_co2_g = float((nonrenewable_w * carbon).sum()) * dt / J_PER_KWH
        nonrenewable_j = site_nonrenewable_j + network_j
        co2_kg = (site_co2_g + network_co2_g) / 1000.0
        jobs = self._jobs
        jct_h = np.array(
            [
                (job.completion - job.model.arrival_step) * dt / 3600.0
                for job in jobs
                if job.completion is not None
            ]
        )
        done_steps = sum(_work_done_part_steps(job) for job in jobs)
        metrics = {
            "nonrenewable_kwh": nonrenewable_j / J_PER_KWH,
            "renewable_kwh": renewable_j / J_PER_KWH,
            "migration_kwh": migration_j / J_PER_KWH,
            "co2_kg": co2_kg,
            "migrations": float(len(records)),
            "failed_migrations": float(failed),
            "uncovered_landings": float(uncovered_landings),
            "downtime_s": float(
                sum(job.migration_steps if job.parts is None else job.parts.flight_steps for job in jobs)
            )
            * dt,
            "work_done_gpu_h": done_steps * dt / 3600.0,
            "mean_jct_h": float(jct_h.mean()) if jct_h.size else math.nan,
            "p95_jct_h": float(np.percentile(jct_h, 95)) if jct_h.size else math.nan,
            "progress_cv": _progress_cv(timeline.job_state, jobs, dt, w.n_steps),
            "ratio_to_oracle": math.nan,
            "unfinished_jobs": float(sum(job.completion is None for job in jobs)),
        }
        keep = self.keep_timeline
        return RunResult(
            policy=policy,
            seed=seed,
            metrics=metrics,
            times_s=times if keep else np.zeros(0),
            step_s=dt,
            site_names=[site.name for site in w.sites],
            surplus_w=surplus if keep else np.zeros((0, 0)),
            site_load_w=load if keep else np.zeros((0, 0)),
            job_site=timeline.job_site.astype(np.int64) if keep else np.zeros((0, 0), dtype=np.int64),
            job_state=timeline.job_state.astype(np.int64) if keep else np.zeros((0, 0), dtype=np.int64),
            migrations=records,
        )

    def job_outcomes(self) -> list[tuple[int, int, int]]:
        """After ``run``: per job (work steps done, deadline step relative to arrival, job index)."""
        out = []
        for idx, job in enumerate(self._jobs):
            done = job.model.work_steps - job.work_left if job.status != PENDING else 0
            if job.parts is not None:  # in full-speed steps of the whole job
                done = min(job.model.work_steps, round(_work_done_part_steps(job) / job.model.slots))
            end = job.completion if job.completion is not None else self.world.n_steps
            out.append((done, end - job.model.arrival_step, idx))
        return out


def _work_done_part_steps(job: _Job) -> float:
    """Work a job has done, in part-steps (GPU-steps): steps run for a one-part job."""
    if job.status == PENDING:
        return 0.0
    if job.parts is None:
        return float(job.model.work_steps - job.work_left)
    return job.model.work_steps * job.model.slots - job.parts.work_left


def _parts_presence(
    job: _Job,
    parts: _Parts,
    site_load_w: FloatArray | None,
    hosted: IntArray,
    busy: npt.NDArray[np.bool_] | None,
) -> None:
    """Add a data-parallel job's slots (and its load and busy link, when given) to per-site totals."""
    staying = ~parts.flying
    np.add.at(hosted, parts.site[staying], 1)
    running = job.status == RUNNING or (job.status == MIGRATING and parts.stayers_running)
    if site_load_w is not None and running and parts.work_left > 0.0:
        np.add.at(site_load_w, parts.site[staying], parts.part_power_w)
    if job.status != MIGRATING:
        return
    n_flying = int(parts.flying.sum())
    hosted[job.mig_src] += n_flying
    hosted[job.mig_dst] += n_flying
    if site_load_w is not None:
        site_load_w[job.mig_src] += job.mig_src_w
        site_load_w[job.mig_dst] += job.mig_dst_w
    if busy is not None:
        busy[job.mig_src, job.mig_dst] = busy[job.mig_dst, job.mig_src] = True


def _progress_cv(state: npt.NDArray[np.int8], jobs: list[_Job], step_s: float, n_steps: int) -> float:
    """Mean over jobs of the coefficient of variation of hourly progress while the job is alive."""
    per_hour = max(1, round(3600.0 / step_s))
    cvs = []
    for j, job in enumerate(jobs):
        start = job.model.arrival_step
        end = job.completion if job.completion is not None else n_steps
        n_hours = (end - start) // per_hour
        if n_hours < 2:
            continue
        if job.parts is None:
            running = state[j, start : start + n_hours * per_hour] == JobState.RUNNING
            hourly = running.reshape(n_hours, per_hour).sum(axis=1).astype(np.float64)
        else:  # the rate, not just whether it runs: parts in flight or spread over sites slow it down
            rate = np.zeros(n_steps)
            for a, b, part_steps in job.parts.progress:
                rate[a:b] += part_steps
            hourly = rate[start : start + n_hours * per_hour].reshape(n_hours, per_hour).sum(axis=1)
        mean = hourly.mean()
        if mean > 0:
            cvs.append(float(hourly.std() / mean))
    return float(np.mean(cvs)) if cvs else 0.0
