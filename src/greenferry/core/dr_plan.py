"""The demand-response planner: what a node does about an event, and what it costs in training progress.

An event asks for less power (shed X W, a SIMPLE level, a price, an import limit, an operating-limit
fraction). :func:`target_for` turns the payloads in force into one number, the reduction in W below the node's
baseline; :func:`plan_dr` meets it with the cheapest mix of

- **power caps** on the GPUs of running jobs (within each card's allowed range). Capping a GPU from its
  training power ``P0`` to ``L`` costs throughput: with dynamic power growing as the cube of the clock
  (voltage follows frequency), throughput is ``((L - P_idle) / (P0 - P_idle)) ** e`` of uncapped with
  ``e = 1/3`` by default. That is the cost model; the measured reduction is what gets reported;
- **pausing** a job at a checkpoint: it sheds its GPUs down to idle plus its host share, and costs its whole
  progress over the event plus the checkpoint write and restore;
- **migrating** a job away, only when the move completes within the event: it sheds the same power here
  and costs only the move's downtime (the job trains on at the destination);
- or an honest **opt-out** when no mix delivers ``min_delivery_fraction`` of the request. An opted-out event
  changes nothing on the node: the grid was told not to count on it.

Progress is counted in *work-seconds*: a job's relative throughput times seconds (an H100 SXM training for
one second does 1.0). The optimisation is exact: each job either keeps running (possibly capped) or stops
(the cheaper of pause and migrate). For each set of stopped jobs the caps that shed the rest at least cost
follow from one Lagrange multiplier (the cost of capping is convex in the power shed), found by bisection.
Up to :data:`EXACT_JOBS` jobs every set is tried; beyond, jobs stop greedily by cost per watt.

Pure: no I/O, no clock. Powers in W, durations in s.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from greenferry.core.dr import DrPayload

__all__ = [
    "DEFAULT_CAP_EXPONENT",
    "EXACT_JOBS",
    "DrPlan",
    "DrRules",
    "DrTarget",
    "JobAction",
    "JobLoad",
    "capped_throughput",
    "combine_targets",
    "plan_dr",
    "target_for",
]

DEFAULT_CAP_EXPONENT = 1.0 / 3.0
EXACT_JOBS = 10  # every subset of stopped jobs is tried up to this many jobs (2**10 sets)
_BISECT_STEPS = 60
_SHED_TOLERANCE_W = 1e-6

Mode = Literal["run", "cap", "pause", "migrate"]


@dataclass(frozen=True, slots=True)
class DrRules:
    """How events map to a power target and which actions the planner may take (from ``[dr]``)."""

    enabled: bool = True
    simple_shed_fractions: tuple[float, float, float, float] = (0.0, 0.25, 0.5, 1.0)
    price_threshold_per_kwh: float | None = None
    price_level: int = 1
    allow_power_cap: bool = True
    allow_pause: bool = True
    allow_migrate: bool = True
    min_delivery_fraction: float = 0.95

    def __post_init__(self) -> None:
        if len(self.simple_shed_fractions) != 4 or not all(
            0.0 <= f <= 1.0 for f in self.simple_shed_fractions
        ):
            raise ValueError(
                f"simple_shed_fractions must be 4 values in 0..1, got {self.simple_shed_fractions}"
            )
        if not 0 <= self.price_level <= 3:
            raise ValueError(f"price_level must be 0..3, got {self.price_level}")
        if not 0.0 < self.min_delivery_fraction <= 1.0:
            raise ValueError(f"min_delivery_fraction must be in (0, 1], got {self.min_delivery_fraction}")

    @classmethod
    def from_config(cls, config: Any) -> DrRules:
        """Rules from a :class:`~greenferry.config.DrConfig` (duck-typed: core/ does not import config)."""
        fractions = tuple(float(f) for f in config.simple_shed_fractions)
        return cls(
            enabled=bool(config.enabled),
            simple_shed_fractions=(fractions[0], fractions[1], fractions[2], fractions[3]),
            price_threshold_per_kwh=config.price_threshold_per_kwh,
            price_level=int(config.price_level),
            allow_power_cap=bool(config.allow_power_cap),
            allow_pause=bool(config.allow_pause),
            allow_migrate=bool(config.allow_migrate),
            min_delivery_fraction=float(config.min_delivery_fraction),
        )


@dataclass(frozen=True, slots=True)
class JobLoad:
    """One job on the node as the planner sees it.

    ``gpu_power_w`` is what each of its GPUs draws now (measured, else the profile's training power);
    ``idle_power_w`` what each draws with the job stopped. ``limit_min_w``/``limit_max_w``: the cards'
    settable cap range. ``rate``: work-seconds per second while uncapped. ``stop_lead_s``: time from the
    decision to the job being stopped (its checkpoint write); ``restart_s``: restore time when it resumes.
    ``migration_s``/``migration_dst``: the best feasible move (predicted total time, destination), if any.
    """

    job_id: str
    gpu_indices: tuple[int, ...]
    gpu_power_w: float
    idle_power_w: float
    host_power_w: float
    limit_min_w: float
    limit_max_w: float
    rate: float
    pausable: bool = True
    stop_lead_s: float = 0.0
    restart_s: float = 0.0
    migration_s: float | None = None
    migration_dst: str | None = None
    cap_exponent: float = DEFAULT_CAP_EXPONENT

    def __post_init__(self) -> None:
        for name in ("gpu_power_w", "idle_power_w", "host_power_w", "limit_min_w", "limit_max_w", "rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"job {self.job_id}: {name} must be finite and >= 0, got {value!r}")
        if self.limit_min_w > self.limit_max_w:
            raise ValueError(
                f"job {self.job_id}: limit_min_w {self.limit_min_w} > limit_max_w {self.limit_max_w}"
            )
        if not 0 < self.cap_exponent <= 1:
            raise ValueError(f"job {self.job_id}: cap_exponent must be in (0, 1], got {self.cap_exponent}")

    @property
    def gpu_count(self) -> int:
        """GPUs the job runs on."""
        return len(self.gpu_indices)

    @property
    def _cap_floor_w(self) -> float:
        """Lowest per-GPU draw a cap can force (never below idle)."""
        return max(self.limit_min_w, self.idle_power_w)

    @property
    def max_cap_shed_w(self) -> float:
        """Reduction from capping every GPU of the job at the lowest allowed limit."""
        return self.gpu_count * max(0.0, self.gpu_power_w - self._cap_floor_w)

    @property
    def stop_shed_w(self) -> float:
        """Reduction from stopping the job: its GPUs fall to idle and its host share goes."""
        return self.gpu_count * max(0.0, self.gpu_power_w - self.idle_power_w) + self.host_power_w


@dataclass(frozen=True, slots=True)
class DrTarget:
    """What the events in force ask of this node: ``shed_w`` below the baseline, and why."""

    shed_w: float
    reason: str


@dataclass(frozen=True, slots=True)
class JobAction:
    """What the plan does with one job. ``limit_w``: the per-GPU cap (``cap`` only)."""

    job_id: str
    mode: Mode
    shed_w: float
    cost_work_s: float
    limit_w: float | None = None
    gpu_indices: tuple[int, ...] = ()
    destination: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "job_id": self.job_id,
            "mode": self.mode,
            "shed_w": round(self.shed_w, 3),
            "cost_work_s": round(self.cost_work_s, 3),
            "limit_w": None if self.limit_w is None else round(self.limit_w, 3),
            "gpu_indices": list(self.gpu_indices),
            "destination": self.destination,
        }


@dataclass(frozen=True, slots=True)
class DrPlan:
    """The planner's answer: opt in or out, the actions, what they shed and what they cost."""

    requested_shed_w: float
    planned_shed_w: float
    opt_in: bool
    reason: str
    duration_s: float
    actions: tuple[JobAction, ...] = ()
    cost_work_s: float = 0.0
    max_shed_w: float = 0.0

    @property
    def caps(self) -> dict[int, float]:
        """GPU index -> power limit (W) for every capped GPU."""
        return {
            index: action.limit_w
            for action in self.actions
            if action.mode == "cap" and action.limit_w is not None
            for index in action.gpu_indices
        }

    def jobs_in(self, mode: Mode) -> tuple[str, ...]:
        """Ids of the jobs the plan puts in ``mode``."""
        return tuple(a.job_id for a in self.actions if a.mode == mode)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (status, MQTT, reports)."""
        return {
            "opt_in": self.opt_in,
            "reason": self.reason,
            "requested_shed_w": round(self.requested_shed_w, 3),
            "planned_shed_w": round(self.planned_shed_w, 3),
            "max_shed_w": round(self.max_shed_w, 3),
            "duration_s": None if math.isinf(self.duration_s) else self.duration_s,
            "cost_work_s": round(self.cost_work_s, 3),
            "actions": [a.to_json() for a in self.actions if a.mode != "run"],
        }


def capped_throughput(limit_w: float, gpu_power_w: float, idle_power_w: float, exponent: float) -> float:
    """Share of uncapped throughput a GPU keeps capped at ``limit_w`` (1.0 when the cap does not bite)."""
    if limit_w >= gpu_power_w or gpu_power_w <= idle_power_w:
        return 1.0
    x = max(0.0, (limit_w - idle_power_w) / (gpu_power_w - idle_power_w))
    return float(x**exponent)


# ------------------------------------------------------------------------------------------ targets

_ALERT_LEVELS = {"ALERT_GRID_EMERGENCY": 3, "ALERT_FLEX_ALERT": 1}


def target_for(
    payloads: Iterable[DrPayload],
    *,
    baseline_w: float,
    flexible_w: float,
    max_power_w: float,
    rules: DrRules,
) -> DrTarget | None:
    """The reduction the payloads in force ask for; None when nothing in them asks this node for anything.

    Args:
        payloads: the payloads of the interval in force.
        baseline_w: the node's measured power before the event (GPUs and host).
        flexible_w: what the node could shed at most (every job stopped).
        max_power_w: the node's rated power (for OLS, a fraction of it).
        rules: the level fractions and the price threshold.

    Mapping (the strictest payload wins): SIMPLE level n sheds ``simple_shed_fractions[n]`` of
    ``flexible_w``; PRICE at or above the threshold counts as SIMPLE ``price_level``; IMPORT_CAPACITY_LIMIT,
    IMPORT_CAPACITY_AVAILABLE and DISPATCH_SETPOINT cap the node's power at the value (W); negative
    DISPATCH_SETPOINT_RELATIVE sheds its magnitude (W); OLS caps the node at that fraction of
    ``max_power_w``; ALERT_GRID_EMERGENCY counts as SIMPLE 3, ALERT_FLEX_ALERT as SIMPLE 1. Other types
    (export limits, GHG, other alerts...) ask nothing of a consumer.
    """
    best: DrTarget | None = None

    def consider(shed_w: float, reason: str) -> None:
        nonlocal best
        shed_w = max(0.0, shed_w)
        if best is None or shed_w > best.shed_w:
            best = DrTarget(shed_w, reason)

    def level(n: int, why: str) -> None:
        n = min(3, max(0, n))
        consider(rules.simple_shed_fractions[n] * flexible_w, f"{why}: level {n}")

    for payload in payloads:
        numbers = [v for v in payload.values if isinstance(v, float | int) and not isinstance(v, bool)]
        kind = payload.type
        if kind == "SIMPLE" and numbers:
            level(int(max(numbers)), "SIMPLE")
        elif kind == "PRICE" and numbers and rules.price_threshold_per_kwh is not None:
            if max(numbers) >= rules.price_threshold_per_kwh:
                level(rules.price_level, f"PRICE {max(numbers):g} >= {rules.price_threshold_per_kwh:g}")
            else:
                consider(0.0, f"PRICE {max(numbers):g} below the threshold")
        elif kind in ("IMPORT_CAPACITY_LIMIT", "IMPORT_CAPACITY_AVAILABLE", "DISPATCH_SETPOINT") and numbers:
            limit_w = min(numbers)
            consider(baseline_w - limit_w, f"{kind} {limit_w:g} W")
        elif kind == "DISPATCH_SETPOINT_RELATIVE" and numbers:
            consider(-min(numbers), f"{kind} {min(numbers):g} W")
        elif kind == "OLS" and numbers:
            fraction = min(numbers)
            consider(baseline_w - fraction * max_power_w, f"OLS {fraction:g} of {max_power_w:g} W")
        elif kind in _ALERT_LEVELS:
            level(_ALERT_LEVELS[kind], kind)
    return best


def combine_targets(targets: Iterable[DrTarget | None]) -> DrTarget | None:
    """Overlapping events: the node meets the strictest one (meeting it meets the others)."""
    best: DrTarget | None = None
    for target in targets:
        if target is not None and (best is None or target.shed_w > best.shed_w):
            best = target
    return best


# ------------------------------------------------------------------------------------------ planning


def _stop_option(job: JobLoad, duration_s: float, rules: DrRules) -> JobAction | None:
    """The cheaper of pausing and migrating ``job`` for an event of ``duration_s`` (None: neither allowed)."""
    shed_w = job.stop_shed_w * _active_share(job.stop_lead_s, duration_s)
    options: list[JobAction] = []
    if rules.allow_pause and job.pausable:
        # Progress stops over the whole event; the restart costs the restore on top.
        cost = job.rate * (_finite(duration_s) + job.restart_s)
        options.append(JobAction(job.job_id, "pause", shed_w, cost, gpu_indices=job.gpu_indices))
    if (
        rules.allow_migrate
        and job.pausable
        and job.migration_s is not None
        and job.migration_dst is not None
        and job.migration_s <= duration_s
    ):
        cost = job.rate * job.migration_s
        options.append(
            JobAction(
                job.job_id,
                "migrate",
                shed_w,
                cost,
                gpu_indices=job.gpu_indices,
                destination=job.migration_dst,
            )
        )
    return min(options, key=lambda a: (a.cost_work_s, a.mode)) if options else None


def _finite(duration_s: float) -> float:
    # An open-ended event is costed over a day: enough to rank options, finite for arithmetic.
    return duration_s if math.isfinite(duration_s) else 86400.0


def _active_share(lead_s: float, duration_s: float) -> float:
    """Share of the event an action that takes ``lead_s`` to bite is in force."""
    if math.isinf(duration_s):
        return 1.0
    if duration_s <= 0:
        return 0.0
    return max(0.0, duration_s - lead_s) / duration_s


def _cap_for(job: JobLoad, marginal: float, duration_s: float) -> float:
    """Shed (W) where the marginal throughput cost of capping ``job`` equals ``marginal`` (work-s per W)."""
    span_w = job.gpu_power_w - job.idle_power_w
    if job.max_cap_shed_w <= 0 or span_w <= 0:
        return 0.0
    x_min = (job._cap_floor_w - job.idle_power_w) / span_w
    e = job.cap_exponent
    scale = job.rate * _finite(duration_s) * e / (job.gpu_count * span_w)  # d cost / d shed at x = 1
    if marginal <= scale:
        x = 1.0
    elif e >= 1.0:
        x = x_min
    else:
        x = (marginal / scale) ** (1.0 / (e - 1.0))
    x = min(1.0, max(x_min, x))
    return job.gpu_count * span_w * (1.0 - x)


def _cap_action(job: JobLoad, shed_w: float, duration_s: float) -> JobAction:
    shed_w = min(shed_w, job.max_cap_shed_w)
    if shed_w <= _SHED_TOLERANCE_W:
        return JobAction(job.job_id, "run", 0.0, 0.0, gpu_indices=job.gpu_indices)
    limit_w = job.gpu_power_w - shed_w / job.gpu_count
    keep = capped_throughput(limit_w, job.gpu_power_w, job.idle_power_w, job.cap_exponent)
    cost = job.rate * _finite(duration_s) * (1.0 - keep)
    return JobAction(job.job_id, "cap", shed_w, cost, limit_w=limit_w, gpu_indices=job.gpu_indices)


def _caps(kept: Sequence[JobLoad], need_w: float, duration_s: float) -> list[JobAction] | None:
    """The least-cost caps on ``kept`` that shed ``need_w``; None when even the lowest caps fall short."""
    if need_w <= _SHED_TOLERANCE_W:
        return [JobAction(j.job_id, "run", 0.0, 0.0, gpu_indices=j.gpu_indices) for j in kept]
    if sum(j.max_cap_shed_w for j in kept) < need_w - _SHED_TOLERANCE_W:
        return None
    low, high = 0.0, 1.0
    while sum(_cap_for(j, high, duration_s) for j in kept) < need_w:
        high *= 4.0
        if high > 1e300:
            break
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (low + high)
        if sum(_cap_for(j, mid, duration_s) for j in kept) < need_w:
            low = mid
        else:
            high = mid
    sheds = [_cap_for(j, high, duration_s) for j in kept]
    # Bisection leaves the sum a hair above need_w; trim the overshoot from the job with most headroom.
    over = sum(sheds) - need_w
    if over > 0 and sheds:
        i = max(range(len(sheds)), key=lambda k: sheds[k])
        sheds[i] = max(0.0, sheds[i] - over)
    return [_cap_action(j, s, duration_s) for j, s in zip(kept, sheds, strict=True)]


def _evaluate(
    jobs: Sequence[JobLoad],
    stopped: Sequence[bool],
    stops: Sequence[JobAction | None],
    need_w: float,
    duration_s: float,
    rules: DrRules,
) -> list[JobAction] | None:
    actions: list[JobAction | None] = [None] * len(jobs)
    kept: list[int] = []
    shed = 0.0
    for i, is_stopped in enumerate(stopped):
        if is_stopped:
            stop = stops[i]
            if stop is None:
                return None
            actions[i] = stop
            shed += stop.shed_w
        else:
            kept.append(i)
    rest = need_w - shed
    if rest > _SHED_TOLERANCE_W and not rules.allow_power_cap:
        return None
    caps = _caps([jobs[i] for i in kept], rest if rules.allow_power_cap else 0.0, duration_s)
    if caps is None:
        return None
    for i, action in zip(kept, caps, strict=True):
        actions[i] = action
    return [a for a in actions if a is not None]


def _max_shed(jobs: Sequence[JobLoad], stops: Sequence[JobAction | None], rules: DrRules) -> float:
    total = 0.0
    for job, stop in zip(jobs, stops, strict=True):
        cap = job.max_cap_shed_w if rules.allow_power_cap else 0.0
        total += max(cap, stop.shed_w if stop is not None else 0.0)
    return total


def plan_dr(target: DrTarget | None, duration_s: float, jobs: Sequence[JobLoad], rules: DrRules) -> DrPlan:
    """The least-cost plan that sheds ``target.shed_w`` for ``duration_s`` (inf: open-ended), or an opt-out.

    The plan aims at the full request; when the node can shed at least ``min_delivery_fraction`` of it but
    not all, it sheds all it can and opts in. Below that it opts out and does nothing.
    """
    jobs = tuple(jobs)
    if target is None:
        return DrPlan(0.0, 0.0, True, "nothing asked of this node", duration_s, _idle(jobs))
    requested = target.shed_w
    if not rules.enabled:
        return DrPlan(requested, 0.0, False, "demand response is disabled ([dr] enabled = false)", duration_s)
    if requested <= _SHED_TOLERANCE_W:
        return DrPlan(requested, 0.0, True, f"{target.reason}: no reduction needed", duration_s, _idle(jobs))
    stops = [_stop_option(j, duration_s, rules) for j in jobs]
    max_shed = _max_shed(jobs, stops, rules)
    if max_shed < rules.min_delivery_fraction * requested - _SHED_TOLERANCE_W:
        reason = (
            f"{target.reason}: asks {requested:.0f} W, this node can shed at most {max_shed:.0f} W "
            f"(below {rules.min_delivery_fraction:.0%} of the request)"
        )
        return DrPlan(requested, 0.0, False, reason, duration_s, max_shed_w=max_shed)
    need = min(requested, max_shed)
    best: list[JobAction] | None = None
    best_cost = math.inf
    for stopped in _stop_sets(jobs, stops, need):
        actions = _evaluate(jobs, stopped, stops, need, duration_s, rules)
        if actions is None:
            continue
        cost = sum(a.cost_work_s for a in actions)
        if cost < best_cost - 1e-9:
            best, best_cost = actions, cost
    if best is None:  # numerically at the edge: stop everything that can stop, cap the rest fully
        best = [
            stop if stop is not None else _cap_action(job, job.max_cap_shed_w, duration_s)
            for job, stop in zip(jobs, stops, strict=True)
        ]
        best_cost = sum(a.cost_work_s for a in best)
    planned = sum(a.shed_w for a in best)
    return DrPlan(
        requested,
        planned,
        True,
        f"{target.reason}: shed {planned:.0f} W of {requested:.0f} W asked",
        duration_s,
        tuple(best),
        best_cost,
        max_shed,
    )


def _idle(jobs: Sequence[JobLoad]) -> tuple[JobAction, ...]:
    return tuple(JobAction(j.job_id, "run", 0.0, 0.0, gpu_indices=j.gpu_indices) for j in jobs)


def _stop_sets(
    jobs: Sequence[JobLoad], stops: Sequence[JobAction | None], need_w: float
) -> Iterable[tuple[bool, ...]]:
    """Sets of jobs to stop: all of them up to EXACT_JOBS jobs, else greedy prefixes by cost per watt."""
    stoppable = [(i, s) for i, s in enumerate(stops) if s is not None]
    n = len(jobs)
    if len(stoppable) <= EXACT_JOBS:
        for choice in itertools.product((False, True), repeat=len(stoppable)):
            stopped = [False] * n
            for (i, _), flag in zip(stoppable, choice, strict=True):
                stopped[i] = flag
            yield tuple(stopped)
        return
    order = sorted(stoppable, key=lambda item: item[1].cost_work_s / max(item[1].shed_w, 1e-9))
    stopped = [False] * n
    yield tuple(stopped)
    for i, _ in order:
        stopped[i] = True
        yield tuple(stopped)
