"""greenferry.job, the SDK inside a training process: control channel, atomic checkpoints, recovery."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import greenferry.job as gf
from greenferry.job import (
    ENV_CHECKPOINT_DIR,
    ENV_CONTROL_FD,
    ENV_JOB_ID,
    ENV_RESUME,
    ENV_STATUS_FD,
    EXIT_CHECKPOINTED,
    MAX_METRICS,
    MAX_STATUS_LINE_BYTES,
    META_NAME,
    JobSDKError,
    is_complete,
    read_meta,
    recover_checkpoint,
)

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(autouse=True)
def _fresh_sdk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in (ENV_JOB_ID, ENV_CHECKPOINT_DIR, ENV_CONTROL_FD, ENV_STATUS_FD, ENV_RESUME):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    gf._reset_for_tests()
    yield
    gf._reset_for_tests()


class Channel:
    """The daemon's ends of the two pipes, with the job's ends in the environment."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, checkpoint_dir: Path, *, resume: str = "1") -> None:
        self.control_r, self.control_w = os.pipe()
        self.status_r, self.status_w = os.pipe()
        os.set_blocking(self.status_r, False)
        monkeypatch.setenv(ENV_JOB_ID, "train-1")
        monkeypatch.setenv(ENV_CHECKPOINT_DIR, str(checkpoint_dir))
        monkeypatch.setenv(ENV_CONTROL_FD, str(self.control_r))
        monkeypatch.setenv(ENV_STATUS_FD, str(self.status_w))
        monkeypatch.setenv(ENV_RESUME, resume)

    def lines(self) -> list[dict[str, object]]:
        data = b""
        while True:
            try:
                chunk = os.read(self.status_r, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        for line in data.splitlines():
            assert len(line) + 1 <= MAX_STATUS_LINE_BYTES
        return [json.loads(line) for line in data.splitlines()]

    def close(self) -> None:
        for fd in (self.control_w, self.status_r):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def channel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Channel]:
    chan = Channel(monkeypatch, tmp_path / "job" / "checkpoint")
    yield chan
    chan.close()


def _write(files: dict[str, bytes]) -> object:
    def writer(directory: Path) -> None:
        for name, data in files.items():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_bytes(data)

    return writer


# ----------------------------------------------------------------------------------- standalone


def test_standalone_never_asks_and_checkpoints_to_the_current_directory(tmp_path: Path) -> None:
    job = gf.connect()
    assert not job.managed
    assert job.job_id == "standalone"
    assert job.checkpoint_dir == tmp_path / "checkpoint"
    assert job.resume_path() is None
    assert not job.checkpoint_requested()
    assert job.report(step=1, loss=0.5) is False  # nobody to tell
    assert gf.connect() is job


def test_save_writes_files_and_meta_then_a_new_process_resumes(tmp_path: Path) -> None:
    job = gf.connect(checkpoint_dir=tmp_path / "ck")
    info = job.save(_write({"model.bin": b"x" * 1000, "sub/opt.bin": b"y" * 24}), step=12, extra={"lr": 0.1})
    assert info.step == 12
    assert info.path == tmp_path / "ck"
    meta = read_meta(tmp_path / "ck")
    assert meta is not None
    assert meta["step"] == 12
    assert meta["files"] == {"model.bin": 1000, "sub/opt.bin": 24}
    assert meta["size_bytes"] == 1024
    assert meta["extra"] == {"lr": 0.1}
    assert info.size_bytes == 1024 + (tmp_path / "ck" / META_NAME).stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary or previous left

    gf._reset_for_tests()
    again = gf.connect(checkpoint_dir=tmp_path / "ck")
    assert again.resume_path() == tmp_path / "ck"
    resumed = again.resume_meta()
    assert resumed is not None
    assert resumed["step"] == 12
    assert (tmp_path / "ck" / "sub" / "opt.bin").read_bytes() == b"y" * 24


def test_a_second_save_replaces_the_first_completely(tmp_path: Path) -> None:
    job = gf.connect()
    job.save(_write({"a.bin": b"1", "old.bin": b"2"}), step=1)
    job.save(_write({"a.bin": b"3"}), step=2)
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["a.bin", META_NAME]
    assert (tmp_path / "checkpoint" / "a.bin").read_bytes() == b"3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_saving_defaults_to_the_last_reported_step(tmp_path: Path) -> None:
    job = gf.connect()
    with pytest.raises(JobSDKError, match="step"):
        job.save(_write({}))
    job.report(step=41, loss=1.0)
    assert job.save(_write({"a": b""})).step == 41


def test_an_error_inside_saving_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    job = gf.connect()
    job.save(_write({"a.bin": b"old"}), step=1)

    def half_then_fail(tmp_dir: Path) -> None:
        (tmp_dir / "a.bin").write_bytes(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        job.save(half_then_fail, step=2)
    assert read_meta(tmp_path / "checkpoint") is not None
    assert (tmp_path / "checkpoint" / "a.bin").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_links_and_the_meta_name_are_refused_in_a_checkpoint(tmp_path: Path) -> None:
    job = gf.connect()
    (tmp_path / "outside").write_text("secret")
    with pytest.raises(JobSDKError, match="not a regular file"), job.saving(step=1) as tmp_dir:
        (tmp_dir / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(JobSDKError, match="symbolic link"), job.saving(step=1) as tmp_dir:
        (tmp_dir / "dirlink").symlink_to(tmp_path)
    with pytest.raises(JobSDKError, match="reserved"), job.saving(step=1) as tmp_dir:
        (tmp_dir / META_NAME).write_text("{}")
    assert not (tmp_path / "checkpoint").exists()
    with pytest.raises(JobSDKError, match="no complete checkpoint"):
        job.exit_checkpointed()


# ----------------------------------------------------------------------------------- recovery


def _complete(directory: Path, step: int, payload: bytes = b"data") -> None:
    directory.mkdir(parents=True)
    (directory / "state.bin").write_bytes(payload)
    meta = {"format": 1, "job_id": "j", "step": step, "created_s": 0.0, "size_bytes": 4, "files": {}}
    (directory / META_NAME).write_text(json.dumps(meta))


def test_recover_without_any_checkpoint(tmp_path: Path) -> None:
    assert recover_checkpoint(tmp_path / "checkpoint") is None
    assert recover_checkpoint(tmp_path / "missing" / "checkpoint") is None


def test_recover_finishes_an_interrupted_clean_up(tmp_path: Path) -> None:
    _complete(tmp_path / "checkpoint", 2)
    _complete(tmp_path / ".checkpoint.prev", 1)
    assert recover_checkpoint(tmp_path / "checkpoint") == tmp_path / "checkpoint"
    assert not (tmp_path / ".checkpoint.prev").exists()
    assert read_meta(tmp_path / "checkpoint") == json.loads((tmp_path / "checkpoint" / META_NAME).read_text())


def test_recover_puts_the_previous_back_after_a_kill_between_the_renames(tmp_path: Path) -> None:
    _complete(tmp_path / ".checkpoint.prev", 1, b"old!")
    _complete(tmp_path / ".checkpoint.tmp-123-abcd", 2, b"new!")
    assert recover_checkpoint(tmp_path / "checkpoint") == tmp_path / "checkpoint"
    assert (tmp_path / "checkpoint" / "state.bin").read_bytes() == b"old!"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_recover_replaces_a_directory_without_meta_by_the_previous(tmp_path: Path) -> None:
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "half.bin").write_bytes(b"?")
    _complete(tmp_path / ".checkpoint.prev", 5)
    assert recover_checkpoint(tmp_path / "checkpoint") == tmp_path / "checkpoint"
    meta = read_meta(tmp_path / "checkpoint")
    assert meta is not None
    assert meta["step"] == 5
    assert not (tmp_path / "checkpoint" / "half.bin").exists()


@pytest.mark.parametrize(
    "meta_text",
    [
        "not json",
        "[1, 2]",
        json.dumps({"format": 2, "step": 1}),
        json.dumps({"format": 1, "step": -1}),
        json.dumps({"format": 1, "step": True}),
        json.dumps({"format": 1, "step": "3"}),
        json.dumps({"format": 1}),
    ],
)
def test_a_malformed_meta_file_is_not_a_checkpoint(tmp_path: Path, meta_text: str) -> None:
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / META_NAME).write_text(meta_text)
    assert not is_complete(tmp_path / "checkpoint")
    assert recover_checkpoint(tmp_path / "checkpoint") is None


def test_a_meta_symlink_is_not_trusted(tmp_path: Path) -> None:
    _complete(tmp_path / "real", 3)
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / META_NAME).symlink_to(tmp_path / "real" / META_NAME)
    assert not is_complete(tmp_path / "checkpoint")


_KILL_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {src!r})
import greenferry.job as gf

job = gf.connect()
job.save(lambda d: (d / "state.bin").write_bytes(b"first"), step=1)
real_rename = Path.rename

def rename_then_die(self, target):
    result = real_rename(self, target)
    if Path(target).name == ".checkpoint.prev":
        os.kill(os.getpid(), signal.SIGKILL)  # the worst moment: no checkpoint/ at all
    return result

Path.rename = rename_then_die
job.save(lambda d: (d / "state.bin").write_bytes(b"second"), step=2)
"""


def test_a_kill_9_during_save_leaves_the_previous_checkpoint_loadable(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(_KILL_BETWEEN_RENAMES.format(src=str(SRC)))
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert not (tmp_path / "checkpoint").exists()

    job = gf.connect()  # the next start recovers
    assert job.resume_path() == tmp_path / "checkpoint"
    meta = job.resume_meta()
    assert meta is not None
    assert meta["step"] == 1
    assert (tmp_path / "checkpoint" / "state.bin").read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "job.py"]


# ----------------------------------------------------------------------------------- the channel


def test_hello_then_a_checkpoint_command_split_across_writes(channel: Channel, tmp_path: Path) -> None:
    job = gf.connect()
    assert job.managed
    assert job.job_id == "train-1"
    assert job.checkpoint_dir == tmp_path / "job" / "checkpoint"
    [hello] = channel.lines()
    assert hello == {"type": "hello", "protocol": 1, "pid": os.getpid(), "resume_step": None}
    assert not job.checkpoint_requested()
    os.write(channel.control_w, b"future-command\nchec")
    assert not job.checkpoint_requested()
    os.write(channel.control_w, b"kpoint\n")
    assert job.checkpoint_requested()
    assert job.checkpoint_reason == "daemon"
    assert job.checkpoint_requested()  # stays requested


def test_resumed_is_said_once_when_loading_is_done(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _complete(tmp_path / "job" / "checkpoint", 4)
    explicit = Channel(monkeypatch, tmp_path / "job" / "checkpoint")
    try:
        job = gf.connect(report_interval_s=0)
        assert [line["type"] for line in explicit.lines()] == ["hello"]  # loading: not resumed yet
        job.resumed()
        job.resumed()
        assert not job.checkpoint_requested()
        job.report(step=5)
        assert [line["type"] for line in explicit.lines()] == ["resumed", "progress"]
    finally:
        explicit.close()
    gf._reset_for_tests()
    implicit = Channel(monkeypatch, tmp_path / "job" / "checkpoint", resume="0")
    try:
        job = gf.connect()
        implicit.lines()
        assert not job.checkpoint_requested()  # back in the training loop: loading is over
        assert implicit.lines() == [{"type": "resumed", "step": None}]
    finally:
        implicit.close()


def test_the_daemon_going_away_is_a_checkpoint_request(channel: Channel) -> None:
    job = gf.connect()
    os.close(channel.control_w)
    assert job.checkpoint_requested()
    assert job.checkpoint_reason == "daemon gone"


def test_a_closed_status_pipe_is_a_checkpoint_request(channel: Channel) -> None:
    job = gf.connect()
    os.close(channel.status_r)
    assert job.report(step=1, loss=1.0) is False
    assert job.checkpoint_requested()
    assert job.checkpoint_reason == "daemon gone"


def test_reports_are_rate_limited_and_clean(channel: Channel) -> None:
    gf._reset_for_tests()
    job = gf.connect(report_interval_s=3600)
    job.resumed()
    channel.lines()
    metrics = {f"m{i}": float(i) for i in range(MAX_METRICS + 10)}
    assert job.report(step=1, loss=float("nan"), progress=1.5, text="no", inf=float("inf"), **metrics)
    assert job.report(step=2, loss=0.5) is False  # within the interval
    assert job.report(step=3, loss=0.25, force=True)
    first, third = channel.lines()
    assert first["type"] == "progress"
    assert first["step"] == 1
    assert first["loss"] is None
    assert first["progress"] == 1.0
    assert isinstance(first["metrics"], dict)
    assert len(first["metrics"]) == MAX_METRICS
    assert "text" not in first["metrics"]
    assert "inf" not in first["metrics"]
    assert third == {"type": "progress", "step": 3, "loss": 0.25, "progress": None, "metrics": {}}
    with pytest.raises(JobSDKError, match="step"):
        job.report(step=-1)
    with pytest.raises(JobSDKError, match="step"):
        job.report(step=True)


def test_numpy_scalars_are_numbers(channel: Channel) -> None:
    job = gf.connect(report_interval_s=0)
    job.resumed()
    channel.lines()
    assert job.report(step=np.int64(5), loss=np.float32(0.5), progress=np.float64(0.25), lr=np.float16(0.125))
    [line] = channel.lines()
    assert line == {"type": "progress", "step": 5, "loss": 0.5, "progress": 0.25, "metrics": {"lr": 0.125}}
    with pytest.raises(JobSDKError, match="step"):
        job.report(step=np.float64(5.0))
    assert job.save(_write({"a": b""}), step=np.int64(6)).step == 6


def test_a_full_status_pipe_drops_lines_instead_of_blocking(channel: Channel) -> None:
    job = gf.connect(report_interval_s=0)
    job.resumed()
    os.set_blocking(channel.status_w, False)
    written = 0
    with contextlib.suppress(BlockingIOError):
        while written < 2**24:
            written += os.write(channel.status_w, b"x" * 65536)
    assert written < 2**24  # the pipe is full
    assert job.report(step=1, loss=1.0) is False
    assert job.dropped_lines == 1
    assert not job.checkpoint_requested()


def test_exit_checkpointed_says_so_and_exits_75(channel: Channel) -> None:
    job = gf.connect()
    job.save(_write({"w.bin": b"abc"}), step=9)
    with pytest.raises(SystemExit) as caught:
        job.exit_checkpointed()
    assert caught.value.code == EXIT_CHECKPOINTED
    lines = channel.lines()
    assert lines[-1]["type"] == "checkpointed"
    assert lines[-1]["step"] == 9
    assert lines[-1]["size_bytes"] == 3


def test_resume_0_starts_fresh_even_with_a_checkpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _complete(tmp_path / "job" / "checkpoint", 4)
    fresh = Channel(monkeypatch, tmp_path / "job" / "checkpoint", resume="0")
    try:
        assert gf.connect().resume_path() is None
        assert fresh.lines()[-1]["resume_step"] is None
    finally:
        fresh.close()
    gf._reset_for_tests()
    resumed = Channel(monkeypatch, tmp_path / "job" / "checkpoint", resume="1")
    try:
        assert gf.connect().resume_path() == tmp_path / "job" / "checkpoint"
        assert resumed.lines()[-1]["resume_step"] == 4
    finally:
        resumed.close()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (ENV_CONTROL_FD, "abc", "not a file descriptor number"),
        (ENV_CONTROL_FD, "-3", "not a file descriptor number"),
        (ENV_STATUS_FD, "987654", "not an open file descriptor"),
        (ENV_CHECKPOINT_DIR, "relative/dir", "absolute"),
        (ENV_RESUME, "yes", "0 or 1"),
    ],
)
def test_a_malformed_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(JobSDKError, match=message) as caught:
        gf.connect()
    assert name in str(caught.value)


def test_a_regular_file_is_not_a_channel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with open(tmp_path / "f", "wb") as handle:
        monkeypatch.setenv(ENV_CONTROL_FD, str(handle.fileno()))
        with pytest.raises(JobSDKError, match="not a pipe"):
            gf.connect()


# ----------------------------------------------------------------------------------- in a process


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENFERRY_JOB_")}
    env["PYTHONPATH"] = str(SRC)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_sdk_imports_nothing_but_the_standard_library(tmp_path: Path) -> None:
    done = _python(
        """
        import sys
        import greenferry.job
        job = greenferry.job.connect()
        job.save(lambda d: (d / "a").write_text("x"), step=1)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"numpy", "pydantic", "greenferry"})
        print(",".join(loaded))
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "greenferry,greenferry.job"


def test_sigterm_is_a_checkpoint_request_unless_the_job_handles_it(tmp_path: Path) -> None:
    done = _python(
        """
        import os, signal
        import greenferry.job
        job = greenferry.job.connect()
        os.kill(os.getpid(), signal.SIGTERM)
        print(job.checkpoint_requested(), job.checkpoint_reason)
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "SIGTERM"]
    own = _python(
        """
        import os, signal
        signal.signal(signal.SIGTERM, lambda *a: print("mine"))
        import greenferry.job
        job = greenferry.job.connect()
        os.kill(os.getpid(), signal.SIGTERM)
        print(job.checkpoint_requested())
        """,
        tmp_path,
    )
    assert own.stdout.split() == ["mine", "False"]
