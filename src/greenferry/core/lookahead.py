"""Receding-horizon planning: the oracle's problem solved over the forecast window.

For one job, ``plan_placement`` finds the sequence of sites (and migrations between them) that minimises
forecast non-renewable energy over the horizon: running at a site costs the part of the job's power the
forecast surplus does not cover; a migration takes ``ceil(T_mig / epoch)`` epochs (the feasibility model's
migration time), costs its energy terms weighted by how uncovered source and destination are, plus the
value of the progress lost while in flight. Backward dynamic programming over (epoch, site): O(H S^2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from greenferry.core.feasibility import MigrationParams, migration_time_s, transfer_time_s

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

STAY = -1


@dataclass(frozen=True)
class MigrationCosts:
    """Migration duration and energy split for every ordered site pair, for one job."""

    epochs: IntArray  # (S, S) epochs in flight; 0 on the diagonal
    src_energy_j: FloatArray  # (S, S) energy drawn at the source
    dst_energy_j: FloatArray  # (S, S) energy drawn at the destination
    network_energy_j: FloatArray  # (S, S) network energy (always counted as non-renewable)
    allowed: npt.NDArray[np.bool_]  # (S, S) a link exists


def migration_costs(
    checkpoint_bytes: float | FloatArray, bandwidth_bps: FloatArray, params: MigrationParams, epoch_s: float
) -> MigrationCosts:
    """Migration durations (in epochs) and energies between every pair of sites.

    ``checkpoint_bytes`` is what a move sends: one size, or an (S, S) matrix (a destination's chunk cache
    may already hold part of the checkpoint).
    """
    allowed = bandwidth_bps > 0
    np.fill_diagonal(allowed, False)
    safe_bw = np.where(allowed, bandwidth_bps, 1.0)
    t_transfer = np.asarray(transfer_time_s(checkpoint_bytes, safe_bw, params), dtype=np.float64)
    t_mig = np.asarray(migration_time_s(checkpoint_bytes, safe_bw, params), dtype=np.float64)
    epochs = np.where(allowed, np.maximum(1, np.ceil(t_mig / epoch_s - 1e-9)), 0).astype(np.int64)
    src = params.job_power_w * params.checkpoint_write_s + params.idle_power_src_w * t_transfer
    dst = params.job_power_w * params.restore_s + params.idle_power_dst_w * t_transfer
    net = np.full(t_transfer.shape, params.network_energy_j_per_byte * np.asarray(checkpoint_bytes))
    return MigrationCosts(epochs, src, dst, net, allowed)


@dataclass(frozen=True)
class Plan:
    """A planned path: ``moves[k]`` is the destination to leave for at epoch k, or STAY."""

    start_s: float
    epoch_s: float
    sites: IntArray  # (H,) planned site at the start of each epoch (-1 while in flight)
    moves: IntArray  # (H,) destination to depart for at epoch k, or STAY
    cost_j: float

    def epoch_index(self, now_s: float) -> int:
        """Index of the epoch containing ``now_s`` in this plan."""
        return int(np.floor((now_s - self.start_s) / self.epoch_s + 1e-9))


def plan_placement(
    start_site: int,
    job_power_w: float,
    headroom_w: FloatArray,
    costs: MigrationCosts,
    epoch_s: float,
    *,
    start_s: float = 0.0,
    departure_allowed: npt.NDArray[np.bool_] | None = None,
    downtime_value: float = 1.0,
    run_penalty_j: FloatArray | None = None,
) -> Plan:
    """Plan where one job runs over the forecast horizon.

    Args:
        start_site: site index where the job is now.
        job_power_w: power of the job, including its host share (W).
        headroom_w: (S, H) forecast surplus left for this job per site and epoch (W).
        costs: migration durations and energies from ``migration_costs``.
        epoch_s: length of one planning epoch (s).
        start_s: time of the first epoch, recorded in the plan.
        departure_allowed: (S,) sites the job may leave from at epoch 0 (e.g. links busy now).
        downtime_value: share of the job's power charged per second in flight. Progress lost in flight
            has to be made up later; at 1.0 it is assumed made up on grid power. Lower values let the
            plan use migrations as cheap pauses, which stretches the job (measured: see evaluation).
        run_penalty_j: (S, H) extra cost of running at each site and epoch (J), e.g. the slowdown of a
            data-parallel job whose parts would be spread over several sites; none when None.

    Returns:
        The minimum-cost plan.
    """
    n_sites, horizon = headroom_w.shape
    uncovered = np.clip(1.0 - np.maximum(headroom_w, 0.0) / job_power_w, 0.0, 1.0)  # (S, H)
    run_cost = uncovered * job_power_w * epoch_s
    if run_penalty_j is not None:
        run_cost = run_cost + run_penalty_j
    downtime_rate_w = downtime_value * job_power_w
    max_m = int(costs.epochs.max()) if costs.allowed.any() else 0
    value = np.zeros((horizon + max_m + 1, n_sites))
    choice = np.full((horizon, n_sites), STAY, dtype=np.int64)
    dst_index = np.arange(n_sites)[None, :]
    fixed = costs.network_energy_j + downtime_rate_w * costs.epochs * epoch_s
    big = np.inf
    for k in range(horizon - 1, -1, -1):
        stay = run_cost[:, k] + value[k + 1]
        if max_m:
            land = np.minimum(k + costs.epochs, horizon - 1)
            mig = (
                fixed
                + costs.src_energy_j * uncovered[:, k][:, None]
                + costs.dst_energy_j * uncovered[dst_index, land]
                + value[k + costs.epochs, dst_index]
            )
            mig = np.where(costs.allowed, mig, big)
            if k == 0 and departure_allowed is not None:
                mig = np.where(departure_allowed[:, None], mig, big)
            best_dst = np.argmin(mig, axis=1)
            best_mig = mig[np.arange(n_sites), best_dst]
            moving = best_mig < stay - 1e-6
            value[k] = np.where(moving, best_mig, stay)
            choice[k] = np.where(moving, best_dst, STAY)
        else:
            value[k] = stay
    sites = np.full(horizon, -1, dtype=np.int64)
    moves = np.full(horizon, STAY, dtype=np.int64)
    site, k = start_site, 0
    while k < horizon:
        sites[k] = site
        dst = int(choice[k, site])
        if dst == STAY:
            k += 1
            continue
        moves[k] = dst
        k += int(costs.epochs[site, dst])
        site = dst
    return Plan(start_s, epoch_s, sites, moves, float(value[0, start_site]) if horizon else 0.0)
