"""JobSupervisor with real job processes: examples/numpy_job.py and small scripts that misbehave."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from greenferry.core.jobs import JobSpec
from greenferry.daemon.jobs import (
    LOG_NAME,
    CheckpointFailedError,
    CheckpointTimeoutError,
    JobAlreadyRunningError,
    JobEvent,
    JobEventKind,
    JobEventStream,
    JobNotRunningError,
    JobStartError,
    JobSupervisor,
    checkpoint_size,
)
from greenferry.job import read_meta

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
NUMPY_JOB = ROOT / "examples" / "numpy_job.py"
TORCH_JOB = ROOT / "examples" / "torch_job.py"
HAS_TORCH = importlib.util.find_spec("torch") is not None
SAFETY_S = 60.0  # only against hangs; no assertion depends on how fast anything is


def _spec(name: str, *argv: str, **env: str) -> JobSpec:
    return JobSpec(
        name=name,
        command=[sys.executable, *argv],
        env={"PYTHONPATH": str(SRC), **env},
        checkpoint_size_bytes=0,
    )


def _numpy(name: str, *extra: str, example: Path = NUMPY_JOB) -> JobSpec:
    return _spec(name, str(example), "--report-interval-s", "0", "--log-every", "0", *extra)


def _script(tmp_path: Path, name: str, code: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(code))
    return str(path)


async def _until(stream: JobEventStream, match: Callable[[JobEvent], bool]) -> JobEvent:
    async with asyncio.timeout(SAFETY_S):
        async for event in stream:
            if match(event):
                return event
    raise AssertionError("event stream ended")


def _progress_of(job_id: str, at_least: int) -> Callable[[JobEvent], bool]:
    def match(event: JobEvent) -> bool:
        return (
            event.job_id == job_id
            and event.kind is JobEventKind.PROGRESS
            and event.step is not None
            and event.step >= at_least
        )

    return match


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for a reaper is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


async def _dead(pid: int) -> bool:
    """Wait for ``pid`` to die (SIGKILL is delivered asynchronously); TimeoutError past the safety bound."""
    async with asyncio.timeout(SAFETY_S):
        while _alive(pid):
            await asyncio.sleep(0.01)
    return True


def _losses(path: Path) -> list[float]:
    return list(json.loads(path.read_text())["losses"])


@pytest.mark.parametrize(
    "example",
    [
        NUMPY_JOB,
        # CI installs the optional torch extra (.ci/run) and must run this; elsewhere it may be missing.
        pytest.param(
            TORCH_JOB,
            marks=pytest.mark.skipif(
                not HAS_TORCH and os.environ.get("CI") != "true", reason="torch not installed"
            ),
        ),
    ],
    ids=["numpy", "torch"],
)
async def test_checkpoints_and_resumes_give_the_same_losses_as_one_run(tmp_path: Path, example: Path) -> None:
    if example == TORCH_JOB and not HAS_TORCH:
        pytest.fail("torch is required in CI: .ci/run installs torch==2.13.0 (the CPU build)")
    steps = "300"
    async with JobSupervisor() as supervisor:
        stream = supervisor.events()
        reference_spec = _numpy("reference", "--steps", steps, example=example)
        await supervisor.start(reference_spec, tmp_path / "reference", resume=False)
        pads = ("--state-mb", "1", "--frozen-mb", "1")
        moved = _numpy("moved", "--steps", steps, "--step-time-s", "0.002", *pads, example=example)
        job_dir = tmp_path / "moved"
        await supervisor.start(moved, job_dir, resume=False)

        checkpoints = []
        for _ in range(2):
            at_least = checkpoints[-1].step + 10 if checkpoints else 20
            await _until(stream, _progress_of("moved", at_least))
            result = await supervisor.request_checkpoint("moved", timeout_s=SAFETY_S)
            assert not supervisor.is_running("moved")
            checkpoints.append(result)
            assert at_least <= result.step < 300
            assert result.path == job_dir / "checkpoint"
            meta = read_meta(result.path)
            assert meta is not None
            assert meta["step"] == result.step
            assert (result.size_bytes, result.file_count) == checkpoint_size(result.path)
            assert result.size_bytes > 2 * 1024 * 1024  # the padding moves real bytes
            assert result.duration_s is not None
            await supervisor.start(moved, job_dir, resume=True)

        done = await supervisor.wait("moved")
        reference = await supervisor.wait("reference")

    assert done.kind is JobEventKind.COMPLETED
    assert reference.kind is JobEventKind.COMPLETED
    assert checkpoints[0].step < checkpoints[1].step
    expected = _losses(tmp_path / "reference" / "losses.json")
    assert len(expected) == 300
    assert _losses(job_dir / "losses.json") == expected  # bit for bit
    log = (job_dir / LOG_NAME).read_text()
    assert f"resumed from {job_dir / 'checkpoint'} at step {checkpoints[1].step}" in log
    assert log.count("--- greenferry: starting moved") == 3


_STUBBORN = """
import os, sys, time
from pathlib import Path
import greenferry.job as gf

job = gf.connect(report_interval_s=0)
job.save(lambda d: (d / "state.bin").write_bytes(b"first"), step=1)
mode = sys.argv[1]
if mode == "ignores":
    job.report(step=2, force=True)
    while True:
        job.checkpoint_requested()
        time.sleep(0.01)
if mode == "hangs-in-save":
    with job.saving(step=2) as tmp_dir:
        (tmp_dir / "state.bin").write_bytes(b"second, half written")
        job.report(step=2, force=True)
        while True:
            time.sleep(0.01)
if mode == "hangs-between-renames":
    real_rename = Path.rename
    def rename_then_hang(self, target):
        result = real_rename(self, target)
        if Path(target).name == ".checkpoint.prev":
            job.report(step=2, force=True)
            while True:
                time.sleep(0.01)
        return result
    Path.rename = rename_then_hang
    job.save(lambda d: (d / "state.bin").write_bytes(b"second"), step=2)
"""


@pytest.mark.parametrize("mode", ["ignores", "hangs-in-save", "hangs-between-renames"])
async def test_a_job_that_does_not_checkpoint_is_killed_and_its_previous_checkpoint_kept(
    tmp_path: Path, mode: str
) -> None:
    job_dir = tmp_path / "stubborn"
    async with JobSupervisor() as supervisor:
        stream = supervisor.events()
        await supervisor.start(
            _spec("stubborn", _script(tmp_path, "stubborn", _STUBBORN), mode), job_dir, resume=False
        )
        await _until(stream, _progress_of("stubborn", 2))
        pid = supervisor.pid("stubborn")
        assert pid is not None
        with pytest.raises(CheckpointTimeoutError, match="previous checkpoint kept"):
            await supervisor.request_checkpoint("stubborn", timeout_s=0.2)
        event = supervisor.last_exit("stubborn")
        assert event is not None
        assert event.kind is JobEventKind.STOPPED
        assert "no checkpoint within 0.2 s" in event.detail
        assert await _dead(pid)
        assert (await _until(stream, lambda e: e.kind in {JobEventKind.STOPPED})) == event

    meta = read_meta(job_dir / "checkpoint")
    assert meta is not None
    assert meta["step"] == 1
    assert (job_dir / "checkpoint" / "state.bin").read_bytes() == b"first"
    assert sorted(p.name for p in job_dir.iterdir()) == ["checkpoint", LOG_NAME]


async def test_a_crash_is_reported_with_its_exit_code_and_the_end_of_its_log(tmp_path: Path) -> None:
    code = """
    import sys
    print("hello from stdout", flush=True)
    sys.stderr.write("noise " * 2000 + "\\n")
    1 / 0
    """
    job_dir = tmp_path / "crash"
    async with JobSupervisor(log_tail_bytes=1000) as supervisor:
        stream = supervisor.events()
        await supervisor.start(_spec("crash", _script(tmp_path, "crash", code)), job_dir, resume=False)
        event = await supervisor.wait("crash")
        assert (await _until(stream, lambda e: e.kind is not JobEventKind.STARTED)) == event
        with pytest.raises(JobNotRunningError):
            await supervisor.request_checkpoint("crash", timeout_s=1)

    assert event.kind is JobEventKind.FAILED
    assert event.exit_code == 1
    assert "ZeroDivisionError: division by zero" in event.detail
    assert len(event.detail.encode()) <= 1000
    log = (job_dir / LOG_NAME).read_text()
    assert "hello from stdout" in log
    assert "ZeroDivisionError" in log


async def test_hostile_status_lines_are_counted_and_ignored(tmp_path: Path) -> None:
    code = """
    import json, os
    fd = int(os.environ["GREENFERRY_JOB_STATUS_FD"])
    lines = [
        b"not json",
        b"\\xff\\xfe",
        b"[" * 30000 + b"]" * 30000,
        b"[1, 2]",
        b'{"type": "launch-missiles"}',
        b'{"type": "progress", "step": true}',
        b'{"type": "progress", "step": -5}',
        b'{"type": "progress"}',
        b'{"type": "progress", "step": 3, "loss": NaN}',
        b'{"type": "progress", "step": 3, "progress": 2.0}',
        b'{"type": "progress", "step": 3, "metrics": {"a": "b"}}',
        json.dumps({"type": "progress", "step": 3, "metrics": {f"m{i}": 1 for i in range(100)}}).encode(),
        b"x" * 200000,
        b'{"type": "progress", "step": 7, "loss": 0.5, "progress": 0.25, "metrics": {"acc": 0.9}}',
        b"",
    ]
    for line in lines:
        os.write(fd, line + b"\\n")
    os.write(fd, b'{"type": "progress", "step": 99')
    """
    async with JobSupervisor() as supervisor:
        stream = supervisor.events()
        await supervisor.start(
            _spec("hostile", _script(tmp_path, "hostile", code)), tmp_path / "h", resume=False
        )
        event = await supervisor.wait("hostile")
        progress = await _until(stream, lambda e: e.kind is JobEventKind.PROGRESS)

    assert event.kind is JobEventKind.COMPLETED
    assert event.step == 7
    latest = supervisor.progress("hostile")
    assert latest is not None
    assert (latest.step, latest.loss, latest.progress, dict(latest.metrics)) == (7, 0.5, 0.25, {"acc": 0.9})
    assert progress.step == 7
    assert dict(supervisor.bad_status_lines("hostile")) == {
        "not_json": 3,
        "not_object": 1,
        "unknown_type": 1,
        "bad_step": 3,
        "bad_loss": 1,
        "bad_progress": 1,
        "bad_metrics": 2,
        "too_long": 1,
        "unterminated": 1,
    }
    assert supervisor.bad_status_lines_total == 14


_LEAVES_A_CHILD = """
import subprocess, sys, time
from pathlib import Path
child = subprocess.Popen(["sleep", "600"])
Path(sys.argv[1]).write_text(str(child.pid))
if sys.argv[2] == "exit":
    sys.exit(0)
while True:
    time.sleep(0.01)
"""


async def test_what_a_job_spawned_does_not_outlive_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = _script(tmp_path, "parent", _LEAVES_A_CHILD)
    async with JobSupervisor() as supervisor:
        await supervisor.start(_spec("parent", script, str(pid_file), "exit"), tmp_path / "p", resume=False)
        event = await supervisor.wait("parent")
    assert event.kind is JobEventKind.COMPLETED
    assert await _dead(int(pid_file.read_text()))


async def test_closing_checkpoints_cooperative_jobs_and_kills_the_rest(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    async with JobSupervisor(shutdown_timeout_s=SAFETY_S) as supervisor:
        stream = supervisor.events()
        await supervisor.start(_numpy("nice", "--steps", "1000000"), tmp_path / "nice", resume=False)
        script = _script(tmp_path, "parent", _LEAVES_A_CHILD)
        rude_spec = _spec("rude", script, str(pid_file), "stay").model_copy(
            update={"checkpoint_timeout_s": 0.2}
        )
        await supervisor.start(rude_spec, tmp_path / "rude", resume=False)
        await _until(stream, _progress_of("nice", 1))
        while not pid_file.exists():
            await asyncio.sleep(0.01)
        pids = [supervisor.pid("nice"), supervisor.pid("rude"), int(pid_file.read_text())]
    seen = [event async for event in stream]  # the stream ends with the supervisor

    nice, rude = supervisor.last_exit("nice"), supervisor.last_exit("rude")
    assert nice is not None
    assert nice.kind is JobEventKind.CHECKPOINTED
    assert rude is not None
    assert rude.kind is JobEventKind.STOPPED
    assert nice in seen
    assert rude in seen
    assert supervisor.running() == []
    for pid in pids:
        assert pid is not None
        assert await _dead(pid)
    meta = read_meta(tmp_path / "nice" / "checkpoint")
    assert meta is not None
    assert nice.checkpoint is not None
    assert meta["step"] == nice.checkpoint.step


async def test_stop_kills_without_a_checkpoint(tmp_path: Path) -> None:
    async with JobSupervisor() as supervisor:
        stream = supervisor.events()
        await supervisor.start(_numpy("victim", "--steps", "1000000"), tmp_path / "v", resume=False)
        await _until(stream, _progress_of("victim", 1))
        event = await supervisor.stop("victim")
        assert event is not None
        assert event.kind is JobEventKind.STOPPED
        assert event.exit_code == -9
        assert event.detail == "stopped by the daemon"
        assert await supervisor.stop("victim") == event
        assert await supervisor.stop("never-ran") is None
    assert not (tmp_path / "v" / "checkpoint").exists()


async def test_exit_75_without_a_checkpoint_is_a_failure(tmp_path: Path) -> None:
    script = _script(tmp_path, "liar", "import sys\nsys.exit(75)\n")
    async with JobSupervisor() as supervisor:
        await supervisor.start(_spec("liar", script), tmp_path / "l", resume=False)
        event = await supervisor.wait("liar")
    assert event.kind is JobEventKind.FAILED
    assert event.exit_code == 75
    assert "holds no checkpoint" in event.detail


async def test_a_job_that_completes_when_asked_is_no_checkpoint(tmp_path: Path) -> None:
    code = """
    import time
    import greenferry.job as gf
    job = gf.connect(report_interval_s=0)
    job.report(step=1)
    while not job.checkpoint_requested():
        time.sleep(0.01)
    """
    async with JobSupervisor() as supervisor:
        stream = supervisor.events()
        await supervisor.start(_spec("quitter", _script(tmp_path, "q", code)), tmp_path / "q", resume=False)
        await _until(stream, _progress_of("quitter", 1))
        with pytest.raises(CheckpointFailedError, match="completed") as caught:
            await supervisor.request_checkpoint("quitter", timeout_s=SAFETY_S)
    assert caught.value.event.kind is JobEventKind.COMPLETED


async def test_the_job_gets_its_environment_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GREENFERRY_JOB_STOWAWAY", "from the daemon's own environment")
    code = """
    import json, os
    names = [n for n in os.environ if n.startswith("GREENFERRY_JOB_")] + ["DATASET"]
    print("ENV" + json.dumps({"cwd": os.getcwd(), **{n: os.environ.get(n) for n in names}}))
    """
    job_dir = tmp_path / "env"
    async with JobSupervisor() as supervisor:
        for resume in (False, True):
            await supervisor.start(
                _spec("env", _script(tmp_path, "env", code), DATASET="/data"), job_dir, resume=resume
            )
            assert (await supervisor.wait("env")).kind is JobEventKind.COMPLETED
    lines = [line for line in (job_dir / LOG_NAME).read_text().splitlines() if line.startswith("ENV")]
    first, second = (json.loads(line[3:]) for line in lines)
    assert first["cwd"] == str(job_dir)
    assert first["GREENFERRY_JOB_ID"] == "env"
    assert first["GREENFERRY_JOB_CHECKPOINT_DIR"] == str(job_dir / "checkpoint")
    assert first["DATASET"] == "/data"
    assert "GREENFERRY_JOB_STOWAWAY" not in first
    assert int(first["GREENFERRY_JOB_CONTROL_FD"]) >= 0
    assert int(first["GREENFERRY_JOB_STATUS_FD"]) >= 0
    assert (first["GREENFERRY_JOB_RESUME"], second["GREENFERRY_JOB_RESUME"]) == ("0", "1")


async def test_start_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await JobSupervisor().start(_numpy("early"), tmp_path / "e", resume=False)
    async with JobSupervisor() as supervisor:
        missing = JobSpec(name="missing", command=["/nonexistent/trainer"], checkpoint_size_bytes=0)
        with pytest.raises(JobStartError, match="/nonexistent/trainer"):
            await supervisor.start(missing, tmp_path / "m", resume=False)
        nowhere = JobSpec(
            name="nowhere",
            command=[sys.executable, "-c", "pass"],
            working_dir="/nonexistent",
            checkpoint_size_bytes=0,
        )
        with pytest.raises(JobStartError, match="nowhere"):
            await supervisor.start(nowhere, tmp_path / "n", resume=False)
        await supervisor.start(_numpy("twice", "--steps", "1000000"), tmp_path / "t", resume=False)
        with pytest.raises(JobAlreadyRunningError, match="twice"):
            await supervisor.start(_numpy("twice"), tmp_path / "t", resume=False)
        with pytest.raises(JobNotRunningError):
            await supervisor.request_checkpoint("unknown", timeout_s=1)
        with pytest.raises(JobNotRunningError):
            await supervisor.wait("unknown")
        await supervisor.stop("twice")
    assert supervisor.running() == []


_LOADS_UNTIL = """
import json, os, sys, time
from pathlib import Path
import greenferry.job as gf

if sys.argv[1] == "raw-progress":  # an SDK that does not know the resumed line
    os.write(int(os.environ["GREENFERRY_JOB_STATUS_FD"]), b'{"type": "progress", "step": 1}\\n')
    time.sleep(600)
job = gf.connect(report_interval_s=0)
while not Path(sys.argv[1]).exists():  # loading its checkpoint
    time.sleep(0.01)
job.resumed()
while not job.checkpoint_requested():
    time.sleep(0.01)
"""


async def test_a_job_has_resumed_once_it_says_so_or_reports_progress(tmp_path: Path) -> None:
    loaded = tmp_path / "loaded"
    script = _script(tmp_path, "loads", _LOADS_UNTIL)
    async with JobSupervisor() as supervisor:
        stream = supervisor.events()
        await supervisor.start(_spec("sdk", script, str(loaded)), tmp_path / "sdk", resume=False)
        await supervisor.start(_spec("old", script, "raw-progress"), tmp_path / "old", resume=False)
        await supervisor.start(
            _spec("plain", "-c", "import time; time.sleep(600)"), tmp_path / "plain", resume=False
        )
        assert await supervisor.wait_resumed("sdk", 0.2) is None  # still loading
        loaded.touch()
        after_s = await supervisor.wait_resumed("sdk", SAFETY_S)
        assert after_s is not None
        event = await _until(stream, lambda e: e.kind is JobEventKind.RESUMED and e.job_id == "sdk")
        assert event.after_s == after_s
        assert await supervisor.wait_resumed("old", SAFETY_S) is not None  # its first progress report
        assert await supervisor.wait_resumed("plain", 0.2) is None  # says nothing
        await supervisor.stop("plain")
        assert await supervisor.wait_resumed("plain", SAFETY_S) is None  # exited without
        assert await supervisor.wait_resumed("never-ran", SAFETY_S) is None
        await supervisor.stop("old")


_PRINTER = """
import time
import greenferry.job as gf

job = gf.connect(report_interval_s=0)
step = 0
while True:
    if job.checkpoint_requested():
        job.save(lambda d: (d / "state.txt").write_text(str(step)), step=step)
        print(f"checkpointed at step {step} ({job.checkpoint_reason})", flush=True)
        job.exit_checkpointed()
    step += 1
    job.report(step=step)
    time.sleep(0.01)
    print(f"step {step}", flush=True)
"""

_DAEMON = """
import asyncio, sys
from pathlib import Path
from greenferry.core.jobs import JobSpec
from greenferry.daemon.jobs import JobSupervisor

async def main() -> None:
    job_dir, script, pid_file = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    spec = JobSpec(name="printer", command=[sys.executable, script], checkpoint_size_bytes=0)
    async with JobSupervisor() as supervisor:
        await supervisor.start(spec, job_dir, resume=False)
        pid_file.write_text(str(supervisor.pid("printer")))
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_printing_job_whose_daemon_is_killed_saves_its_checkpoint_and_exits(tmp_path: Path) -> None:
    """kill -9 of the supervising process: the job's prints do not fail (no pipe to the dead daemon), the SDK
    sees its daemon gone, saves and says so in its log."""
    job_dir = tmp_path / "printer"
    pid_file = tmp_path / "job.pid"
    daemon = await asyncio.create_subprocess_exec(
        sys.executable,
        _script(tmp_path, "daemon", _DAEMON),
        str(job_dir),
        _script(tmp_path, "printer", _PRINTER),
        str(pid_file),
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    try:
        async with asyncio.timeout(SAFETY_S):
            while not (job_dir / LOG_NAME).exists() or "step 3\n" not in (job_dir / LOG_NAME).read_text():
                await asyncio.sleep(0.01)
        job_pid = int(pid_file.read_text())
        daemon.kill()
        await daemon.wait()
        assert await _dead(job_pid)
    finally:
        if daemon.returncode is None:
            daemon.kill()
            await daemon.wait()
    log = (job_dir / LOG_NAME).read_text()
    assert "(daemon gone)" in log.splitlines()[-1], log[-2000:]
    assert "Traceback" not in log
    meta = read_meta(job_dir / "checkpoint")
    assert meta is not None
    assert f"checkpointed at step {meta['step']} (daemon gone)" in log


async def test_the_log_rotates_past_its_limit(tmp_path: Path) -> None:
    code = "for i in range(200):\n    print('x' * 99, flush=True)\n"
    async with JobSupervisor(log_max_bytes=5000) as supervisor:
        await supervisor.start(
            _spec("chatty", _script(tmp_path, "chatty", code)), tmp_path / "c", resume=False
        )
        await supervisor.wait("chatty")
    assert (tmp_path / "c" / LOG_NAME).stat().st_size <= 5000
    assert (tmp_path / "c" / f"{LOG_NAME}.1").stat().st_size <= 5000


async def test_a_running_job_keeps_writing_its_log_after_a_copy_truncate(tmp_path: Path) -> None:
    code = """
    import sys, time
    from pathlib import Path
    for i in range(100):
        print('x' * 99, flush=True)
    while not Path(sys.argv[1]).exists():
        time.sleep(0.01)
    print('after the rotation', flush=True)
    """
    go = tmp_path / "go"
    log = tmp_path / "c" / LOG_NAME
    async with JobSupervisor(log_max_bytes=5000, log_check_interval_s=0.01) as supervisor:
        await supervisor.start(
            _spec("chatty", _script(tmp_path, "chatty", code), str(go)), tmp_path / "c", resume=False
        )
        async with asyncio.timeout(SAFETY_S):
            while not (tmp_path / "c" / f"{LOG_NAME}.1").exists() or log.stat().st_size > 5000:
                await asyncio.sleep(0.01)
        assert supervisor.is_running("chatty")
        go.touch()
        assert (await supervisor.wait("chatty")).kind is JobEventKind.COMPLETED
    assert log.read_text() == "after the rotation\n"  # appended at the new end, no hole before it
    assert (tmp_path / "c" / f"{LOG_NAME}.1").read_text().endswith("x" * 99 + "\n")


async def test_an_event_stream_drops_progress_but_never_lifecycle_events() -> None:
    stream = JobEventStream("test", maxsize=2)
    for step in range(5):
        stream.offer(JobEvent(JobEventKind.PROGRESS, "j", 0.0, step=step))
    assert stream.offer(JobEvent(JobEventKind.COMPLETED, "j", 0.0))
    assert stream.dropped == 3
    stream.close()
    kinds = [(event.kind, event.step) async for event in stream]
    assert kinds == [(JobEventKind.PROGRESS, 0), (JobEventKind.PROGRESS, 1), (JobEventKind.COMPLETED, None)]
    assert await stream.get() is None
    assert not stream.offer(JobEvent(JobEventKind.FAILED, "j", 0.0))
    with pytest.raises(ValueError, match="maxsize"):
        JobEventStream("bad", maxsize=0)
