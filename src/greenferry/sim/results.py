"""What a simulation run produces: per-run records and the cross-policy comparison."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Metrics every run reports (summary.json keys). Means over seeds; "<name>_std" is added when seeds > 1.
METRIC_NAMES: tuple[str, ...] = (
    "nonrenewable_kwh",
    "renewable_kwh",
    "migration_kwh",
    "co2_kg",
    "migrations",
    "failed_migrations",
    "uncovered_landings",
    "downtime_s",
    "work_done_gpu_h",
    "mean_jct_h",
    "p95_jct_h",
    "progress_cv",
    "ratio_to_oracle",
)


class JobState(IntEnum):
    """Per-step state of a job in a timeline."""

    ABSENT = 0  # not yet arrived, or finished
    RUNNING = 1
    PAUSED = 2
    MIGRATING = 3


@dataclass(frozen=True)
class MigrationRecord:
    """One migration as it happened in a run (times are UTC epoch seconds)."""

    job_id: int
    src_site: str
    dst_site: str
    start_s: float
    end_s: float
    checkpoint_bytes: float
    bandwidth_bps: float
    window_s: float  # destination's remaining renewable window seen at decision time (actual trace)
    failed: bool  # the destination's window was open at departure and had closed by landing
    energy_j: float
    uncovered_landing: bool = False  # landed where the surplus did not cover the job (any reason)


@dataclass
class RunResult:
    """One policy on one seed.

    Arrays are indexed [site or job, step]; ``times_s`` holds the start of each step (UTC epoch s).
    """

    policy: str
    seed: int
    metrics: dict[str, float]
    times_s: FloatArray
    step_s: float
    site_names: list[str]
    surplus_w: FloatArray  # (S, T) renewable surplus available to the datacenter
    site_load_w: FloatArray  # (S, T) power drawn by greenferry's jobs and migrations
    job_site: IntArray  # (J, T) index of the hosting site, -1 when absent
    job_state: IntArray  # (J, T) JobState codes
    migrations: list[MigrationRecord] = field(default_factory=list)


@dataclass
class Comparison:
    """Every policy on every seed of one scenario, plus what the report needs to explain it."""

    scenario: str
    description: str
    policies: list[str]
    seeds: list[int]
    runs: dict[str, list[RunResult]]  # policy -> one run per seed
    summary: dict[str, dict[str, float]]  # policy -> metric means (+ "_std" keys when seeds > 1)
    window_lengths_s: dict[str, FloatArray]  # site -> lengths of its renewable windows (s)
    forecast: str = "perfect"
    extra: dict[str, object] = field(default_factory=dict)
