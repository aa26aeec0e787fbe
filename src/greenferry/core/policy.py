"""What an orchestration policy sees and decides; shared by the simulator and the node daemon.

A policy is asked at each decision epoch, ``decide(now_s, view)``, and answers for every job that is not
in flight. The view carries plain numpy arrays so that the simulator (recorded traces) and the daemon
(live MQTT signals) build it the same way. Policies never read a clock: ``now_s`` is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import numpy as np
import numpy.typing as npt

from greenferry.core.feasibility import MigrationParams

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class Action(Enum):
    """What a job should do until the next decision epoch."""

    RUN = "run"  # run (or resume) at its current site
    PAUSE = "pause"  # stop drawing power; keep its checkpoint at the current site
    MIGRATE = "migrate"  # checkpoint, ship to ``dst_site``, restore there


@dataclass(frozen=True, slots=True)
class Decision:
    """A policy's answer for one job.

    ``parts`` (migrations only): the indices of the parts to move (all at one site, none pinned); None
    moves the whole job, which needs every part at one site and none pinned.
    """

    action: Action
    dst_site: int = -1
    parts: tuple[int, ...] | None = None

    @staticmethod
    def run() -> Decision:
        """Keep (or resume) running where the job is."""
        return _RUN

    @staticmethod
    def pause() -> Decision:
        """Pause the job where it is."""
        return _PAUSE

    @staticmethod
    def migrate(dst_site: int, parts: tuple[int, ...] | None = None) -> Decision:
        """Move the job (or only its ``parts``) to site index ``dst_site``."""
        return Decision(Action.MIGRATE, dst_site, parts)


_RUN = Decision(Action.RUN)
_PAUSE = Decision(Action.PAUSE)


@dataclass(frozen=True, slots=True)
class PartsView:
    """The parts (data-parallel workers) of a job, as a policy sees them; every array is (P,).

    Every part runs at the same rate and power; a job whose parts run on more than one site progresses at
    ``cross_site_efficiency`` of the sum of their rates (synchronisation over the WAN). A job with parts in
    flight is not asked, so every part has a site.
    """

    state_bytes: FloatArray  # checkpoint state of each part (bytes)
    pinned: npt.NDArray[np.bool_]  # parts that never leave the job's home site
    site: IntArray  # where each part is
    part_power_w: float  # power of one running part, host share included
    cross_site_efficiency: float  # in (0, 1]

    @property
    def n_parts(self) -> int:
        """Number of parts."""
        return int(self.state_bytes.size)

    @property
    def co_located(self) -> bool:
        """Whether every part is at one site."""
        return bool(np.all(self.site == self.site[0]))


@dataclass(slots=True)
class JobView:
    """One job as a policy sees it. Powers include the job's share of host power.

    A job made of parts (``parts`` set) is seen whole: ``site`` hosts most of its parts, ``power_w`` is
    that of every part, ``checkpoint_bytes`` their total state and ``slots`` their number.
    """

    job_id: int
    site: int  # index of the hosting site
    running: bool  # False when paused
    power_w: float
    checkpoint_bytes: float
    remaining_work_s: float  # compute time still needed at full speed
    since_migration_s: float  # time since its last migration landed (inf if never moved)
    params: MigrationParams  # migration parameters with this job's power
    parts: PartsView | None = None  # None: one movable part, the whole job
    slots: int = 1  # GPU slots a move of the whole job needs at the destination
    # (S,) bytes a move from ``site`` to each site would send: what that site's chunk cache lacks of the
    # checkpoint, plus what changes between checkpoints. None: all of ``checkpoint_bytes`` to every site.
    send_bytes: FloatArray | None = None

    def bytes_to(self, n_sites: int) -> FloatArray:
        """(S,) bytes a move from ``site`` to each site sends (all of ``checkpoint_bytes`` if unknown)."""
        if self.send_bytes is None:
            return np.full(n_sites, float(self.checkpoint_bytes))
        return np.minimum(np.asarray(self.send_bytes, dtype=np.float64), float(self.checkpoint_bytes))

    def bytes_between(self, n_sites: int) -> FloatArray:
        """(S, S) bytes a move sends between every pair: ``bytes_to`` from ``site``, the whole elsewhere.

        A plan's later hops start where no chunk cache is known, so they count the whole checkpoint.
        """
        out = np.full((n_sites, n_sites), float(self.checkpoint_bytes))
        out[self.site] = self.bytes_to(n_sites)
        return out

    @property
    def moves_whole(self) -> bool:
        """Whether a move of the whole job is possible: one part, or co-located parts none of them pinned."""
        parts = self.parts
        return parts is None or (parts.co_located and not bool(parts.pinned.any()))


@dataclass
class ClusterView:
    """The state of every site at one decision epoch.

    ``forecast_surplus_w[s, k]`` is the forecast mean surplus of site ``s`` over epoch ``k`` from now
    (``k = 0`` is the epoch starting now), each ``epoch_s`` long; it is computed on first use, so policies
    that ignore forecasts cost nothing. ``site_load_w`` is the power greenferry's own jobs (running or
    migrating) draw at each site now; ``inbound_w`` the power that jobs in flight will draw at their
    destinations once they land (a window they are heading for is theirs, not another job's).
    """

    now_s: float
    epoch_s: float
    surplus_w: FloatArray  # (S,) measured surplus now
    forecast_fn: Callable[[], FloatArray]  # returns (S, H)
    site_load_w: FloatArray  # (S,)
    free_slots: IntArray  # (S,)
    bandwidth_bps: FloatArray  # (S, S); 0 where there is no link
    link_busy: npt.NDArray[np.bool_]  # (S, S) True while a transfer occupies the link
    jobs: list[JobView] = field(default_factory=list)
    inbound_w: FloatArray | None = None  # (S,) power of jobs in flight that will run at each site on landing
    _forecast: FloatArray | None = field(default=None, repr=False)

    @property
    def forecast_surplus_w(self) -> FloatArray:
        """Forecast surplus (S, H), computed once per view."""
        if self._forecast is None:
            self._forecast = self.forecast_fn()
        return self._forecast

    @property
    def n_sites(self) -> int:
        """Number of sites."""
        return int(self.surplus_w.shape[0])

    def headroom_w(self, job: JobView) -> FloatArray:
        """Surplus left for ``job`` at each site now, after greenferry's other load there."""
        headroom = self.surplus_w - self.site_load_w
        headroom[job.site] += job.power_w if job.running else 0.0
        return headroom

    def committed_load_w(self) -> FloatArray:
        """(S,) greenferry's load at each site now plus what the jobs in flight will add on landing."""
        if self.inbound_w is None:
            return self.site_load_w.copy()
        committed: FloatArray = self.site_load_w + self.inbound_w
        return committed

    def forecast_headroom_w(self, job: JobView) -> FloatArray:
        """Forecast surplus left for ``job`` per site and epoch, assuming the other load stays put and the
        jobs in flight land where they are going."""
        other = self.committed_load_w()
        if job.running:
            other[job.site] -= job.power_w
        return self.forecast_surplus_w - other[:, None]


def covered_run_epochs(covered: npt.NDArray[np.bool_]) -> IntArray:
    """Length, in epochs, of the run of True at the start of each row (the window still ahead)."""
    n_epochs = covered.shape[1]
    first_gap = np.argmin(covered, axis=1)
    runs: IntArray = np.where(covered.all(axis=1), n_epochs, first_gap).astype(np.int64)
    return runs


class Policy(Protocol):
    """An orchestration policy. Stateful policies keep per-job memory keyed by ``job_id``."""

    name: str

    def decide(self, now_s: float, view: ClusterView) -> dict[int, Decision]:
        """Return a decision per job in ``view.jobs``; a job left out keeps its current state."""
        ...


PolicyFactory = Callable[[], Policy]
_REGISTRY: dict[str, PolicyFactory] = {}


def register_policy(name: str, factory: PolicyFactory) -> None:
    """Make a policy available by name to the simulator, the daemon config and the CLI."""
    if name in _REGISTRY:
        raise ValueError(f"policy {name!r} is already registered")
    _REGISTRY[name] = factory


def policy_names() -> list[str]:
    """Names of every registered policy, in registration order."""
    import greenferry.core.policies  # noqa: F401  (registers the built-in policies)

    return list(_REGISTRY)


def make_policy(name: str) -> Policy:
    """Build a fresh policy instance by name."""
    names = policy_names()
    if name not in _REGISTRY:
        from greenferry.errors import ConfigError

        raise ConfigError(f"unknown policy {name!r}; known policies: {', '.join(names)}")
    return _REGISTRY[name]()
