"""The offline optimum for one job: exact dynamic programming over (step, site, work done).

With perfect knowledge of every site's surplus, the oracle chooses at every step to run, pause, or start
a migration (which occupies ``m`` whole steps, as in the simulator), so as to finish the job's work with
the least non-renewable energy by a deadline. Because pausing is free, the value of a state at step ``D``
is the least energy of any plan that has done that much work by ``D``: one forward pass answers every
(deadline, work) pair the comparison needs.

Several jobs are solved one at a time, each seeing the whole surplus of a site. Sharing a site can only
raise the energy a set of jobs needs (``max(0, kP - s) >= k * max(0, P - s)``), and ignoring slot limits
only enlarges the set of plans, so the sum of per-job optima is a valid lower bound for many jobs, and
exact for one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

RUN, PAUSE, MIGRATE, IN_FLIGHT = 0, 1, 2, 3


@dataclass(frozen=True)
class JobProblem:
    """One job's oracle problem over steps ``0 .. L-1`` of its own lifetime (step 0 = arrival).

    Attributes:
        run_cost_j: (S, L) non-renewable energy of running one step at each site.
        migration_steps: (S, S) steps a migration occupies (>= 1 off the diagonal; 0 where no link).
        migration_cost_j: (S, S, L) non-renewable energy of a migration departing at each step.
        start_site: where the job arrives.
        work_steps: steps of running needed to finish.
    """

    run_cost_j: FloatArray
    migration_steps: IntArray
    migration_cost_j: FloatArray
    start_site: int
    work_steps: int

    @property
    def n_sites(self) -> int:
        """Number of sites."""
        return int(self.run_cost_j.shape[0])

    @property
    def n_steps(self) -> int:
        """Length of the lifetime covered by the cost arrays."""
        return int(self.run_cost_j.shape[1])


@dataclass(frozen=True)
class OracleSolution:
    """Optimal values at the requested deadlines, and the plan for the chosen one."""

    values_j: dict[int, FloatArray]  # deadline step -> (work_steps + 1,) least energy for each work done
    plan_actions: IntArray  # (D,) RUN / PAUSE / MIGRATE / IN_FLIGHT per step, for the plan deadline
    plan_sites: IntArray  # (D,) site (destination for MIGRATE and IN_FLIGHT) per step
    plan_cost_j: float

    def value_j(self, deadline_step: int, work_steps: int) -> float:
        """Least non-renewable energy to do ``work_steps`` of work by ``deadline_step``."""
        return float(self.values_j[deadline_step][work_steps])


def solve(
    problem: JobProblem, deadlines: list[int], plan_deadline: int | None = None, plan_work: int | None = None
) -> OracleSolution:
    """Solve the job's problem forward to the latest deadline.

    Args:
        problem: costs over the job's lifetime.
        deadlines: steps (from arrival, at most ``problem.n_steps``) at which to report optimal values.
        plan_deadline: deadline for which to return the optimal plan; the latest deadline when None.
        plan_work: work (steps) the plan must have done by ``plan_deadline``; all of it when None.

    Raises:
        ValueError: if a deadline lies outside the cost arrays, or the work cannot be finished by
            ``plan_deadline``, or ``plan_work`` is more work than the job has.
    """
    n_sites, work = problem.n_sites, problem.work_steps
    horizon = max([*deadlines, plan_deadline or 0])
    if horizon > problem.n_steps or min(deadlines, default=0) < 0:
        raise ValueError(f"deadlines must lie in 0..{problem.n_steps}, got {sorted(deadlines)}")
    plan_deadline = horizon if plan_deadline is None else plan_deadline
    plan_work = work if plan_work is None else plan_work
    if not 0 <= plan_work <= work:
        raise ValueError(f"plan_work must lie in 0..{work} (the job's work in steps), got {plan_work}")
    steps = problem.migration_steps
    pairs = [
        (o, d, int(steps[o, d])) for o in range(n_sites) for d in range(n_sites) if o != d and steps[o, d] > 0
    ]
    ring = max([m for _, _, m in pairs], default=0) + 1
    incoming = np.full((ring, n_sites, n_sites, work + 1), np.inf)
    codes = np.zeros((horizon, n_sites, work + 1), dtype=np.int8)
    value = np.full((n_sites, work + 1), np.inf)
    value[problem.start_site, 0] = 0.0
    wanted = set(deadlines)
    values: dict[int, FloatArray] = {}
    if 0 in wanted:
        values[0] = value.min(axis=0)
    stacked = np.empty((n_sites, 2 + n_sites, work + 1))
    for t in range(horizon):
        for o, d, m in pairs:
            if t + m <= horizon:
                slot = incoming[(t + m) % ring, d, o]
                slot[:work] = value[o, :work] + problem.migration_cost_j[o, d, t]
                slot[work] = np.inf
        stacked[:, 0, 0] = np.inf
        stacked[:, 0, 1:] = value[:, :-1] + problem.run_cost_j[:, t][:, None]
        stacked[:, 1, :] = value
        stacked[:, 2:, :] = incoming[(t + 1) % ring]
        choice = np.argmin(stacked, axis=1)
        value = np.take_along_axis(stacked, choice[:, None, :], axis=1)[:, 0, :]
        codes[t] = choice
        incoming[(t + 1) % ring] = np.inf
        if t + 1 in wanted:
            values[t + 1] = value.min(axis=0)
        if t + 1 == plan_deadline:
            final = value[:, plan_work].copy()
    if plan_deadline == 0:
        final = np.where(np.arange(n_sites) == problem.start_site, 0.0 if plan_work == 0 else np.inf, np.inf)
    site = int(np.argmin(final))
    cost = float(final[site])
    if not np.isfinite(cost):
        raise ValueError(f"{plan_work} steps of work cannot be done within {plan_deadline} steps")
    actions = np.full(plan_deadline, PAUSE, dtype=np.int64)
    sites = np.full(plan_deadline, site, dtype=np.int64)
    t, w = plan_deadline, plan_work
    while t > 0:
        code = int(codes[t - 1, site, w])
        if code == 0:
            actions[t - 1], sites[t - 1] = RUN, site
            w -= 1
            t -= 1
        elif code == 1:
            actions[t - 1], sites[t - 1] = PAUSE, site
            t -= 1
        else:
            origin = code - 2
            m = int(steps[origin, site])
            actions[t - m], sites[t - m] = MIGRATE, site
            actions[t - m + 1 : t], sites[t - m + 1 : t] = IN_FLIGHT, site
            t -= m
            site = origin
    return OracleSolution(values, actions, sites, cost)
