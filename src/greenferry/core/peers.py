"""What nodes tell each other about themselves, and the cluster view a node's policy decides on.

Each daemon publishes a :class:`NodeAdvert` retained at ``<prefix>/nodes/<node>/state``; every daemon keeps
the latest advert of every peer in a :class:`PeerDirectory` and, at each decision, turns it into the same
:class:`~greenferry.core.policy.ClusterView` the simulator builds (site 0 is this node, the peers follow in
name order). Pure: the caller passes ``now_s`` and the payload bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from greenferry.core.payloads import parse_windows
from greenferry.core.signals import SurplusWindow
from greenferry.errors import PayloadError

if TYPE_CHECKING:  # numpy and the policies load with the first decision, not with the daemon
    from greenferry.core.feasibility import MigrationParams
    from greenferry.core.policy import ClusterView, FloatArray, JobView

__all__ = [
    "ADVERT_VERSION",
    "MAX_ADVERT_BYTES",
    "NodeAdvert",
    "PeerDirectory",
    "forecast_matrix",
    "parse_advert",
]

ADVERT_VERSION = 1
MAX_ADVERT_BYTES = 256 * 1024
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class NodeAdvert(BaseModel):
    """A node's retained state advert (docs/peer-protocol.md)."""

    model_config = ConfigDict(extra="ignore", frozen=True)  # later versions may add fields

    version: int = Field(ge=1)
    node: str = Field(pattern=_NAME)
    site: str = Field(pattern=_NAME)
    peer_url: str | None = Field(None, pattern=r"^https?://[^\s]{1,2000}$")
    gpu_slots: int = Field(ge=0, le=4096)
    free_gpu_slots: int = Field(ge=0, le=4096)
    surplus_w: float = Field(ge=0, allow_inf_nan=False)
    load_w: float = Field(0.0, ge=0, allow_inf_nan=False, description="greenferry's own jobs' power")
    windows: list[dict[str, object]] = Field(default_factory=list, max_length=1000)
    jobs: list[str] = Field(default_factory=list, max_length=4096)
    time_s: float = Field(ge=0, allow_inf_nan=False)

    def surplus_windows(self) -> tuple[SurplusWindow, ...]:
        """The advertised forecast windows, validated."""
        return parse_windows(self.windows)

    def to_json(self) -> bytes:
        """The advert as compact JSON."""
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":")).encode()


def parse_advert(payload: bytes, topic_node: str | None = None) -> NodeAdvert:
    """Parse and validate one advert payload.

    Args:
        payload: the MQTT payload.
        topic_node: the node name in the topic; the advert must name the same node.

    Raises:
        PayloadError: ``too_large``, ``bad_json``, ``bad_schema`` (naming the field), ``unsupported_version``,
            ``node_mismatch``, or a window problem from :func:`~greenferry.core.payloads.parse_windows`.
    """
    if len(payload) > MAX_ADVERT_BYTES:
        raise PayloadError("too_large", f"{len(payload)} bytes (limit {MAX_ADVERT_BYTES})")
    try:
        raw = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise PayloadError("bad_json", f"not JSON: {err}") from None
    if not isinstance(raw, dict):
        raise PayloadError("bad_schema", "an advert is a JSON object")
    version = raw.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > ADVERT_VERSION:
        # Newer minor fields are ignored; a newer major version is refused rather than misread.
        raise PayloadError(
            "unsupported_version", f"advert version {version} (this node reads {ADVERT_VERSION})"
        )
    try:
        advert = NodeAdvert.model_validate(raw)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "(advert)"
        raise PayloadError("bad_schema", f"{where}: {first['msg']}") from None
    if advert.free_gpu_slots > advert.gpu_slots:
        raise PayloadError("bad_schema", "free_gpu_slots exceeds gpu_slots")
    if topic_node is not None and advert.node != topic_node:
        raise PayloadError("node_mismatch", f"advert for {advert.node!r} on the topic of {topic_node!r}")
    advert.surplus_windows()  # validate now, not at decision time
    return advert


@dataclass(frozen=True, slots=True)
class _Entry:
    advert: NodeAdvert
    received_s: float


class PeerDirectory:
    """The latest advert of every peer, with its arrival time; silent peers are dropped from views."""

    def __init__(self, own_node: str, max_age_s: float) -> None:
        self.own_node = own_node
        self.max_age_s = max_age_s
        self._entries: dict[str, _Entry] = {}

    def update(self, advert: NodeAdvert, received_s: float) -> None:
        """Keep ``advert`` unless it is this node's own or older than the one held."""
        if advert.node == self.own_node:
            return
        held = self._entries.get(advert.node)
        if held is not None and held.advert.time_s > advert.time_s:
            return
        self._entries[advert.node] = _Entry(advert, received_s)

    def forget(self, node: str) -> None:
        """Drop a peer (its retained advert was cleared, or it went offline)."""
        self._entries.pop(node, None)

    def peers(self, now_s: float) -> list[NodeAdvert]:
        """Fresh peers, by name."""
        return [
            e.advert for name, e in sorted(self._entries.items()) if now_s - e.received_s <= self.max_age_s
        ]

    def get(self, node: str, now_s: float) -> NodeAdvert | None:
        """One fresh peer's advert."""
        entry = self._entries.get(node)
        if entry is None or now_s - entry.received_s > self.max_age_s:
            return None
        return entry.advert


def forecast_matrix(
    windows_per_site: Sequence[Sequence[SurplusWindow]],
    surplus_now_w: Sequence[float],
    now_s: float,
    epoch_s: float,
    n_epochs: int,
) -> FloatArray:
    """Forecast surplus (S, H): each epoch's mean of the advertised windows (0 outside them).

    Epoch 0 uses the measured surplus where it is larger than the windows' (the windows may lag).
    """
    import numpy as np

    out = np.zeros((len(windows_per_site), n_epochs))
    edges = now_s + epoch_s * np.arange(n_epochs + 1)
    for site, windows in enumerate(windows_per_site):
        for window in windows:
            overlap = np.clip(
                np.minimum(edges[1:], window.end_s) - np.maximum(edges[:-1], window.start_s), 0, None
            )
            out[site] += window.power_w * overlap / epoch_s
        out[site, 0] = max(out[site, 0], surplus_now_w[site]) if n_epochs else 0.0
    return out


@dataclass(frozen=True, slots=True)
class SiteState:
    """One node as a site of the cluster view."""

    node: str
    surplus_w: float
    load_w: float
    free_slots: int
    windows: tuple[SurplusWindow, ...]


def cluster_view(
    now_s: float,
    sites: Sequence[SiteState],
    bandwidth_bps: Mapping[tuple[int, int], float],
    busy_links: set[tuple[int, int]],
    jobs: Sequence[JobView],
    epoch_s: float,
    horizon_s: float,
) -> ClusterView:
    """The policy's view of this node (site 0) and its peers."""
    import numpy as np

    from greenferry.core.policy import ClusterView

    n = len(sites)
    n_epochs = max(1, math.ceil(horizon_s / epoch_s))
    bandwidth = np.zeros((n, n))
    for (i, j), value in bandwidth_bps.items():
        bandwidth[i, j] = value
    busy = np.zeros((n, n), dtype=bool)
    for i, j in busy_links:
        busy[i, j] = True
    windows = [s.windows for s in sites]
    surplus = np.array([s.surplus_w for s in sites], dtype=np.float64)
    return ClusterView(
        now_s=now_s,
        epoch_s=epoch_s,
        surplus_w=surplus,
        forecast_fn=lambda: forecast_matrix(windows, list(surplus), now_s, epoch_s, n_epochs),
        site_load_w=np.array([s.load_w for s in sites], dtype=np.float64),
        free_slots=np.array([s.free_slots for s in sites], dtype=np.int64),
        bandwidth_bps=bandwidth,
        link_busy=busy,
        jobs=list(jobs),
    )


def job_view(
    job_index: int,
    power_w: float,
    checkpoint_bytes: float,
    remaining_work_s: float,
    since_migration_s: float,
    params: MigrationParams,
    running: bool = True,
) -> JobView:
    """A job hosted by this node (site 0) as the policy sees it."""
    from greenferry.core.policy import JobView

    return JobView(
        job_id=job_index,
        site=0,
        running=running,
        power_w=power_w,
        checkpoint_bytes=checkpoint_bytes,
        remaining_work_s=remaining_work_s,
        since_migration_s=since_migration_s,
        params=params.model_copy(update={"job_power_w": power_w}),
    )
