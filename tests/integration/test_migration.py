"""Two real daemons, one real broker: a real training job follows the surplus from one node to the other.

The daemons run in this process (NodeDaemon, the same code `greenferry daemon` runs), each with its own data
directory, peer API and job supervisor; the job is examples/numpy_job.py as a real subprocess. Only the
power meter is the hardware-profile model (there is no GPU here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from greenferry.adapters.local_api import JobConflictError
from greenferry.config import DaemonConfig, config_from_mapping
from greenferry.core.jobs import JobInfo, JobSpec, JobState
from greenferry.daemon.app import NodeDaemon, running_daemon
from greenferry.daemon.journal import MigrationRole, MigrationStep
from greenferry.testing.services import Mosquitto
from greenferry.testing.wait import until as _until

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "numpy_job.py"


def _publish_retained(broker: Mosquitto, messages: dict[str, bytes]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"gf-it-{uuid.uuid4().hex[:8]}")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    for topic, payload in messages.items():
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


def _config(
    tmp_path: Path,
    broker: Mosquitto,
    prefix: str,
    name: str,
    extra: dict[str, Any] | None = None,
) -> DaemonConfig:
    data: dict[str, Any] = {
        "node": {
            "name": name,
            "site": f"site-{name}",
            "hardware_profile": "l4",
            "gpu_count": 1,
            "data_dir": str(tmp_path / name),
            "decision_interval_s": 0.3,
        },
        "mqtt": {
            "port": broker.port,
            "topic_prefix": prefix,
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.5,
            "status_interval_s": 1,
        },
        "signals": {
            "production": {"topic": f"{prefix}/sites/{name}/production_w", "max_age_s": 3600},
            "surplus_forecast": {
                "topic": f"{prefix}/sites/{name}/forecast",
                "format": "greenferry",
                "max_age_s": 3600,
            },
        },
        "power": {"source": "model", "interval_s": 0.5},
        "http": {"enabled": False},
        "peer": {"insecure": True, "port": 0, "advert_interval_s": 0.2, "default_bandwidth_bps": 1e9},
        "migration": {"forecast_step_s": 300, "horizon_s": 6 * 3600, "confirm_timeout_s": 5},
    }
    for key, value in (extra or {}).items():
        data[key] = {**data.get(key, {}), **value}
    return config_from_mapping(data, environ={})


def _spec(name: str, steps: int = 100_000) -> JobSpec:
    return JobSpec(
        name=name,
        command=[
            sys.executable,
            str(EXAMPLE),
            "--steps",
            str(steps),
            "--step-time-s",
            "0.005",
            "--state-mb",
            "2",
            "--frozen-mb",
            "4",
            "--report-interval-s",
            "0.1",
        ],
        checkpoint_size_bytes=6 * 2**20,
        checkpoint_timeout_s=30,
    )


def _job(daemon: NodeDaemon, job_id: str) -> JobInfo | None:
    return daemon._components["orchestrator"].journal.job(job_id)


def _windows(power_w: float, hours: float) -> bytes:
    now = time.time()
    return json.dumps([{"start": now - 60, "end": now + hours * 3600, "power_w": power_w}]).encode()


def _surplus_at_b_only(broker: Mosquitto, prefix: str) -> None:
    """Node a has no surplus; node b has 5 kW for the next six hours."""
    _publish_retained(
        broker,
        {
            f"{prefix}/sites/a/production_w": b"0",
            f"{prefix}/sites/a/forecast": b"[]",
            f"{prefix}/sites/b/production_w": b"5000",
            f"{prefix}/sites/b/forecast": _windows(5000.0, 6),
        },
    )


@pytest.fixture
def prefix() -> str:
    return f"gfm/{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def two_nodes(
    tmp_path: Path, mosquitto: Mosquitto, prefix: str
) -> AsyncIterator[tuple[NodeDaemon, NodeDaemon]]:
    _surplus_at_b_only(mosquitto, prefix)
    a = NodeDaemon(_config(tmp_path, mosquitto, prefix, "a"))
    b = NodeDaemon(_config(tmp_path, mosquitto, prefix, "b"))
    async with running_daemon(a), running_daemon(b):
        yield a, b


async def test_a_job_follows_the_surplus_to_the_peer_and_keeps_its_progress(
    two_nodes: tuple[NodeDaemon, NodeDaemon],
) -> None:
    a, b = two_nodes
    orch_a = a._components["orchestrator"]
    orch_b = b._components["orchestrator"]
    await _until(lambda: orch_a.directory.get("b", a.clock.monotonic_s()), 10, "a to hear b's advert")
    await orch_a.submit(_spec("follow-1"))
    moved = await _until(
        lambda: (info := _job(b, "follow-1")) is not None and info.state is JobState.RUNNING and info,
        60,
        "the job to run on b",
    )
    assert moved.epoch == 1
    assert moved.node == "b"
    at_a = _job(a, "follow-1")
    assert at_a is not None
    assert at_a.state is JobState.MIGRATED
    assert at_a.node == "b"
    assert at_a.epoch == 1
    # One runner: a's supervisor runs nothing, b's runs the job, which resumed from a's checkpoint.
    assert not orch_a.supervisor.is_running("follow-1")
    assert orch_b.supervisor.is_running("follow-1")
    checkpoint_step = moved.checkpoint_step
    assert checkpoint_step is not None
    assert checkpoint_step >= 0
    stepped = await _until(
        lambda: (info := _job(b, "follow-1")) is not None and (info.step or 0) > checkpoint_step and info,
        30,
        "the job to step on b",
    )
    assert stepped.step is not None
    # Both ends journaled the migration to its end.
    (src,) = orch_a.journal.migrations(job_id="follow-1")
    (dst,) = orch_b.journal.migrations(job_id="follow-1")
    assert src.step is MigrationStep.RELEASED
    assert dst.step is MigrationStep.OWNED
    assert orch_a.stats.migrations == 1
    # b's advert now names the job and one slot fewer.
    advert = orch_b.advert()
    assert advert.jobs == ["follow-1"]
    assert advert.free_gpu_slots == 0


def _tls_config(tmp_path: Path, broker: Mosquitto, prefix: str, name: str) -> DaemonConfig:
    from greenferry.adapters.pki import init_ca, issue_node_cert

    ca_dir = tmp_path / "ca"
    if not (ca_dir / "ca.crt").exists():
        init_ca(ca_dir)
    paths = issue_node_cert(ca_dir, name, hosts=["127.0.0.1"], out_dir=tmp_path / "certs" / name)
    tls = {"ca_file": str(paths.ca), "cert_file": str(paths.cert), "key_file": str(paths.key)}
    config = _config(tmp_path, broker, prefix, name)
    data = config.model_dump(mode="json")
    data["peer"] = {**data["peer"], "insecure": False, "tls": tls}
    data["mqtt"]["password"] = None
    data["telemetry"].pop("path", None) if data["telemetry"].get("path") is None else None
    return config_from_mapping(_without_nones(data), environ={})


def _without_nones(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nones(v) for k, v in value.items() if v is not None}
    return value


async def test_mutual_tls_peers_migrate_with_a_signed_manifest(
    tmp_path: Path, mosquitto: Mosquitto, prefix: str
) -> None:
    _publish_retained(
        mosquitto,
        {
            f"{prefix}/sites/a/production_w": b"0",
            f"{prefix}/sites/b/production_w": b"5000",
            f"{prefix}/sites/b/forecast": _windows(5000.0, 6),
        },
    )
    a = NodeDaemon(_tls_config(tmp_path, mosquitto, prefix, "a"))
    b = NodeDaemon(_tls_config(tmp_path, mosquitto, prefix, "b"))
    async with running_daemon(a), running_daemon(b):
        assert a._components["peer"].url.startswith("https://")
        orch_a = a._components["orchestrator"]
        # Submitted before a has heard of b: the job starts at a, and moves once b's advert arrives.
        await orch_a.submit(_spec("tls-1"))
        moved = await _until(
            lambda: (info := _job(b, "tls-1")) is not None and info.state is JobState.RUNNING and info,
            60,
            "the job to run on b over mutual TLS",
        )
        assert moved.epoch == 1
        assert _job(a, "tls-1").state is JobState.MIGRATED  # type: ignore[union-attr]


async def test_a_destination_in_its_cooldown_leaves_the_job_running_where_it_is(
    two_nodes: tuple[NodeDaemon, NodeDaemon],
) -> None:
    """The policy wants the job at b, but b failed its move a moment ago: it runs at a, fresh and resumed.

    Before, a MIGRATE that could not start was no decision at all: a pending job never started and a
    paused one (as after every aborted move) stayed paused until the ten-minute cooldown ended.
    """
    a, b = two_nodes
    orch_a = a._components["orchestrator"]
    await _until(lambda: orch_a.directory.get("b", a.clock.monotonic_s()), 10, "a to hear b's advert")
    orch_a._cooldown_m[("cool-1", "b")] = a.clock.monotonic_s() + 600
    await orch_a.submit(_spec("cool-1"))

    def running_at_a(after_step: int) -> JobInfo | None:
        info = _job(a, "cool-1")
        ok = info is not None and info.state is JobState.RUNNING and (info.step or 0) > after_step
        return info if ok else None

    first = await _until(lambda: running_at_a(0), 30, "the pending job to start at a")
    assert first.node == "a"
    assert await orch_a.hold("cool-1", "test")
    paused = await _until(
        lambda: (i := _job(a, "cool-1")) is not None and i.state is JobState.PAUSED and i, 30, "the pause"
    )
    orch_a.release("cool-1")
    await _until(lambda: running_at_a(paused.step or 0), 30, "the paused job to resume at a")
    assert orch_a.journal.migrations() == []
    assert _job(b, "cool-1") is None


async def test_no_move_when_the_peer_has_no_window(tmp_path: Path, mosquitto: Mosquitto, prefix: str) -> None:
    """Neither node has surplus: the job runs where it was submitted, and nothing is offered."""
    _publish_retained(
        mosquitto,
        {f"{prefix}/sites/a/production_w": b"0", f"{prefix}/sites/b/production_w": b"0"},
    )
    a = NodeDaemon(_config(tmp_path, mosquitto, prefix, "a"))
    b = NodeDaemon(_config(tmp_path, mosquitto, prefix, "b"))
    async with running_daemon(a), running_daemon(b):
        orch_a = a._components["orchestrator"]
        await _until(lambda: orch_a.directory.get("b", a.clock.monotonic_s()), 10, "a to hear b")
        await orch_a.submit(_spec("stay-1"))
        await _until(
            lambda: (i := _job(a, "stay-1")) is not None and (i.step or 0) > 20, 30, "the job to step on a"
        )
        assert orch_a.journal.migrations() == []
        assert _job(b, "stay-1") is None


async def test_the_destination_rechecks_and_refuses_a_manual_move(
    two_nodes: tuple[NodeDaemon, NodeDaemon],
) -> None:
    """`jobs migrate --to a` towards a node without surplus: a refuses, the job keeps running at b."""
    a, b = two_nodes
    orch_b = b._components["orchestrator"]
    spec = _spec("manual-1")
    await orch_b.submit(spec)
    await _until(
        lambda: (i := _job(b, "manual-1")) is not None and i.state is JobState.RUNNING, 30, "running on b"
    )
    await _until(lambda: orch_b.directory.get("a", b.clock.monotonic_s()), 10, "b to hear a")
    await orch_b.migrate("manual-1", "a")
    await _until(lambda: not orch_b._local_of("manual-1").busy, 30, "the attempt to end")
    info = _job(b, "manual-1")
    assert info is not None
    assert info.node == "b"
    assert info.state is JobState.RUNNING
    assert orch_b.journal.migrations() == []  # refused at the offer: nothing was stopped or sent
    assert _job(a, "manual-1") is None


async def test_two_concurrent_offers_for_one_job_get_one_reservation(
    two_nodes: tuple[NodeDaemon, NodeDaemon],
) -> None:
    from greenferry.core.protocol import Offer

    _, b = two_nodes
    orch_b = b._components["orchestrator"]

    def offer() -> Offer:
        return Offer(
            migration_id=uuid.uuid4().hex,
            source_node="a",
            job=_spec("twice-1"),
            epoch=0,
            checkpoint_bytes=6 * 2**20,
            predicted_migration_s=5.0,
            deadline_in_s=60.0,
        )

    await _until(lambda: orch_b._window_ahead_s(1000.0) > 3600, 10, "b to receive its surplus forecast")
    replies = await asyncio.gather(orch_b.on_offer("a", offer()), orch_b.on_offer("a", offer()))
    assert [r.reason for r in replies if not r.accepted] != [], replies
    assert sorted(r.accepted for r in replies) == [False, True], [r.reason for r in replies]
    refused = next(r for r in replies if not r.accepted)
    assert "already reserved" in refused.reason
    # The reservation holds b's only GPU slot: another job is refused until it is used or expires.
    reply = await orch_b.on_offer("a", offer().model_copy(update={"job": _spec("twice-2")}))
    assert not reply.accepted
    assert "free GPU slot" in reply.reason


async def test_a_replayed_commit_is_refused(two_nodes: tuple[NodeDaemon, NodeDaemon]) -> None:
    from greenferry.core.protocol import Commit
    from greenferry.daemon.peer import PeerRequestError

    a, b = two_nodes
    orch_a = a._components["orchestrator"]
    orch_b = b._components["orchestrator"]
    await orch_a.submit(_spec("replay-1"))
    await _until(
        lambda: (i := _job(b, "replay-1")) is not None and i.state is JobState.RUNNING, 60, "the move"
    )
    (record,) = orch_b.journal.migrations(job_id="replay-1")
    with pytest.raises(PeerRequestError) as err:
        await orch_b.on_commit("a", record.migration_id, Commit(epoch=1))
    assert err.value.status in (404, 409)  # reservation gone, or (before the confirm) already started
    assert orch_b.supervisor.running() == ["replay-1"]


async def test_a_cached_move_fits_a_window_the_whole_checkpoint_would_not(
    tmp_path: Path, mosquitto: Mosquitto, prefix: str
) -> None:
    """At 40 kbit/s (the assumed bandwidth: neither node has sent to the other) the 6 MiB checkpoint takes
    about 1,400 s to send, which a 6 h window allows (alpha 0.1: 2,160 s) and a 2 h one does not (720 s).
    The job (4 MiB frozen, 2 MiB trained) moves a -> b -> a -> b. The move back to a predicts the whole
    checkpoint although a still holds most of it: nothing has yet measured how much of a checkpoint
    changes, and a prediction must not count on a cache it only hopes for. That move measures it (2 MiB),
    so the third move, into b's 2 h window, predicts what b lacks plus what changed, and fits."""
    _surplus_at_b_only(mosquitto, prefix)
    slow = {"peer": {"default_bandwidth_bps": 40e3}}
    a = NodeDaemon(_config(tmp_path, mosquitto, prefix, "a", slow))
    b = NodeDaemon(_config(tmp_path, mosquitto, prefix, "b", slow))
    job_id = "cached-1"

    def source_record(orch: Any) -> Any:
        return [m for m in orch.journal.migrations(job_id=job_id) if m.role is MigrationRole.SOURCE][-1]

    async def move(src: NodeDaemon, dst: NodeDaemon, name: str, hours: float, epoch: int) -> Any:
        """Surplus at ``dst`` only, for ``hours``; the job moves there (by the policy or by hand)."""
        _publish_retained(
            mosquitto,
            {
                f"{prefix}/sites/{src.config.node.name}/production_w": b"0",
                f"{prefix}/sites/{src.config.node.name}/forecast": b"[]",
                f"{prefix}/sites/{name}/production_w": b"5000",
                f"{prefix}/sites/{name}/forecast": _windows(5000.0, hours),
            },
        )
        orch_src, orch_dst = src._components["orchestrator"], dst._components["orchestrator"]
        await _until(lambda: orch_dst._window_ahead_s(1000.0) >= hours * 3600 - 120, 10, "the window")
        await _until(lambda: orch_src.directory.get(name, src.clock.monotonic_s()), 10, "the peer")
        with contextlib.suppress(JobConflictError):  # the source's own policy may have started the move
            await orch_src.migrate(job_id, name)
        arrived = await _until(
            lambda: (i := _job(dst, job_id)) is not None and i.state is JobState.RUNNING and i,
            60,
            f"the move to {name}",
        )
        assert arrived.epoch == epoch
        record = source_record(orch_src)
        assert record.step is MigrationStep.RELEASED
        return record

    async with running_daemon(a), running_daemon(b):
        orch_a = a._components["orchestrator"]
        await _until(lambda: orch_a.directory.get("b", a.clock.monotonic_s()), 10, "a to hear b")
        await orch_a.submit(_spec(job_id))
        await _until(lambda: (i := _job(b, job_id)) is not None and i.state is JobState.RUNNING, 60, "a -> b")
        out = source_record(orch_a)
        size = int(out.data["total_bytes"])
        assert out.data["held_bytes"] == 0  # nothing cached at b: the whole checkpoint
        assert out.data["predicted_send_bytes"] == out.data["offered_bytes"]

        back = await move(b, a, "a", 6, epoch=2)
        # a holds most of the checkpoint, but how much of one changes is not known yet: the whole
        # checkpoint is predicted, and a is not asked what it holds.
        assert back.data["predicted_send_bytes"] == back.data["offered_bytes"]
        assert back.data["held_bytes"] == 0
        assert back.data["bytes_sent"] < size // 2  # the frozen part stayed where it was

        # a measured the real link to b on the first move; the third move sees it at 40 kbit/s again.
        orch_a._bandwidth_bps.pop("b")
        whole_s = orch_a.predicted_migration_s(size, "b", job_id)
        assert whole_s > 0.1 * 2 * 3600  # the whole checkpoint would not fit b's 2 h window
        third = await move(a, b, "b", 2, epoch=3)
        assert third.data["held_bytes"] > 0.9 * size  # b holds every chunk of the checkpoint it sent
        changed = int(back.data["bytes_sent"])
        assert third.data["predicted_send_bytes"] < size // 2
        assert third.data["predicted_send_bytes"] >= 0.5 * changed  # what changed is still sent
        assert third.data["bytes_sent"] < size // 2


_SLOW_LOAD = """
import sys, time
from pathlib import Path
import greenferry.job as gf

job = gf.connect(report_interval_s=0.1)
step = 0
if job.resume_path() is not None:
    step = job.resume_meta()["step"]
    while not Path(sys.argv[1]).exists():  # loading a large checkpoint
        time.sleep(0.01)
job.resumed()
while True:
    if job.checkpoint_requested():
        job.save(lambda d: (d / "state.bin").write_bytes(str(step).encode() * 100000), step=step)
        job.exit_checkpointed()
    step += 1
    job.report(step=step)
    time.sleep(0.005)
"""


async def test_a_move_times_the_restore_until_the_job_resumed_and_carries_every_phase(
    tmp_path: Path, two_nodes: tuple[NodeDaemon, NodeDaemon]
) -> None:
    a, b = two_nodes
    orch_a = a._components["orchestrator"]
    orch_b = b._components["orchestrator"]
    loaded = tmp_path / "loaded"
    script = tmp_path / "slow_load.py"
    script.write_text(_SLOW_LOAD)
    spec = JobSpec(
        name="slow-load-1",
        command=[sys.executable, str(script), str(loaded)],
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
        checkpoint_size_bytes=2**20,
        checkpoint_timeout_s=30,
    )
    await _until(lambda: orch_a.directory.get("b", a.clock.monotonic_s()), 10, "a to hear b")
    await orch_a.submit(spec)
    await _until(lambda: orch_b.supervisor.is_running("slow-load-1"), 60, "the job to start on b")
    # Its process runs at b but is still loading: the restore is not measured yet, and a still waits (in
    # the confirm) to hear that it resumed.
    arrival = orch_b._local_of("slow-load-1").arrival
    assert arrival is not None
    assert arrival.restore_s is None
    (dst,) = orch_b.journal.migrations(job_id="slow-load-1")
    assert "restore_s" not in dst.data
    loaded.touch()
    src = await _until(
        lambda: (m := orch_a.journal.migrations(job_id="slow-load-1")[0]).data.get("resumed") and m,
        60,
        "a to hear that the job resumed at b",
    )
    measured_s = orch_b._local_of("slow-load-1").restore_s
    assert measured_s is not None
    assert measured_s > arrival.spawn_s  # until it said so, not until its process ran
    assert src.data["restore_s"] == measured_s
    (dst,) = orch_b.journal.migrations(job_id="slow-load-1")
    assert dst.data["restore_s"] == measured_s
    assert src.data["total_s"] > measured_s  # the move ran until the job trained again at b
    # The phases a's move measured travelled with the job: b predicts its next move with all of them.
    local = orch_b._local_of("slow-load-1")
    assert local.manifest_s == src.data["manifest_s"]
    assert local.rebuild_s == src.data["rebuild_s"]
    assert local.checkpoint_s is not None
    assert orch_b.predicted_migration_s(0, "a", "slow-load-1") == pytest.approx(
        local.checkpoint_s + local.manifest_s + local.rebuild_s + measured_s
    )
