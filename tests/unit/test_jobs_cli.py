"""``greenferry jobs ...`` end to end: the real CLI entry point against a real local API server (Unix socket).

The server runs on the test's event loop; the CLI (which runs its own ``asyncio.run``) runs in a thread.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_local_api import MemoryJobService, spec_dict

from greenferry import cli
from greenferry.adapters.local_api import LocalApiServer, validate_job_spec
from greenferry.commands.jobs import load_job_spec
from greenferry.core.jobs import JobState

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "examples" / "job.toml"


@pytest.fixture(autouse=True)
def _jobs_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    # cli.py does not list "jobs" yet (another change registers it); register it the same way here.
    monkeypatch.setitem(cli._COMMAND_MODULES, "jobs", "greenferry.commands.jobs")
    monkeypatch.setenv("COLUMNS", "200")  # rich tables: no truncated cells in the captured output


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def node_config(tmp_path: Path, data_dir: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(f'[node]\nname = "edge-1"\nsite = "site-a"\ndata_dir = "{data_dir}"\n')
    return path


@pytest.fixture
def service() -> MemoryJobService:
    return MemoryJobService()


@pytest.fixture
async def server(service: MemoryJobService, data_dir: Path) -> AsyncIterator[LocalApiServer]:
    async with LocalApiServer(service, data_dir) as api:
        yield api


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(cli.main, [str(word) for word in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_example_spec_through_every_command(
    server: LocalApiServer, service: MemoryJobService, node_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ("--config", str(node_config))
    code, out, err = await run_cli(capsys, "jobs", "submit", str(EXAMPLE), *where)
    assert (code, err) == (0, "")
    assert out == "submitted job numpy-demo: pending on edge-1\n"
    assert service.jobs["numpy-demo"].spec == load_job_spec(EXAMPLE)
    assert service.jobs["numpy-demo"].spec.command[1].endswith("/examples/numpy_job.py")

    code, out, err = await run_cli(capsys, "jobs", "list", *where)
    assert (code, err) == (0, "")
    header, row = out.splitlines()
    assert header.split() == ["JOB", "STATE", "NODE", "STEP", "CHECKPOINT", "MIGR.", "MESSAGE"]
    assert row.split() == ["numpy-demo", "pending", "edge-1", "-", "-", "0"]

    code, out, _ = await run_cli(capsys, "jobs", "show", "numpy-demo", *where)
    assert code == 0
    lines = dict(
        line.split(None, 1) for line in out.splitlines() if not line.startswith(("working", "checkpoint "))
    )
    assert lines["job"] == "numpy-demo"
    assert lines["state"] == "pending"
    assert lines["command"] == (
        "python3 /opt/greenferry/examples/numpy_job.py --steps 2000 --step-time-s 0.25 --state-mb 64"
    )
    assert "checkpoint size  64.0 MiB expected" in out

    code, out, _ = await run_cli(capsys, "jobs", "show", "numpy-demo", "--json", *where)
    assert code == 0
    assert json.loads(out)["spec"]["checkpoint_size_bytes"] == 67_108_864

    code, out, err = await run_cli(capsys, "jobs", "migrate", "numpy-demo", "--to", "edge-2", *where)
    assert (code, err) == (0, "")
    assert out == "job numpy-demo: migrating to edge-2\n"
    assert service.jobs["numpy-demo"].state is JobState.MIGRATING

    code, out, err = await run_cli(capsys, "jobs", "cancel", "numpy-demo", *where)
    assert (code, err) == (0, "")
    assert out == "job numpy-demo: cancelled (cancelled by user)\n"
    assert service.calls == [
        ("submit", "numpy-demo"),
        ("list",),
        ("get", "numpy-demo"),
        ("get", "numpy-demo"),
        ("migrate", "numpy-demo", "edge-2"),
        ("cancel", "numpy-demo"),
    ]


async def test_submit_json_spec_by_socket(
    server: LocalApiServer, service: MemoryJobService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_file = tmp_path / "job.json"
    spec_file.write_text(json.dumps(spec_dict("train-7", gpu_count=2)))
    code, out, _ = await run_cli(
        capsys, "jobs", "submit", spec_file, "--socket", server.socket_path, "--json"
    )
    assert code == 0
    assert json.loads(out)["job_id"] == "train-7"
    assert service.jobs["train-7"].spec.gpu_count == 2


async def test_list_json_and_empty(
    server: LocalApiServer, service: MemoryJobService, capsys: pytest.CaptureFixture[str]
) -> None:
    socket_args = ("--socket", str(server.socket_path))
    assert await run_cli(capsys, "jobs", "list", *socket_args) == (0, "no jobs\n", "")
    code, out, _ = await run_cli(capsys, "jobs", "list", "--json", *socket_args)
    assert (code, json.loads(out)) == (0, {"jobs": []})
    for name in ("b-job", "a-job"):
        await service.submit(validate_job_spec(spec_dict(name)))
    code, out, _ = await run_cli(capsys, "jobs", "list", "--json", *socket_args)
    assert code == 0
    assert [job["job_id"] for job in json.loads(out)["jobs"]] == ["a-job", "b-job"]


async def test_list_shows_progress_and_escapes_hostile_messages(
    server: LocalApiServer, service: MemoryJobService, capsys: pytest.CaptureFixture[str]
) -> None:
    info = await service.submit(validate_job_spec(spec_dict("train-1")))
    service.put(
        info.model_copy(
            update={
                "state": JobState.RUNNING,
                "step": 1200,
                "checkpoint_step": 1000,
                "checkpoint_bytes": 3 * 1024 * 1024,
                "message": "loss \x1b[31mNaN\x1b[0m [bold]x[/bold]",
            }
        )
    )
    code, out, _ = await run_cli(capsys, "jobs", "list", "--socket", server.socket_path)
    assert code == 0
    assert "\x1b" not in out
    assert "step 1000, 3.0 MiB" in out
    assert "1200" in out
    assert "\\x1b[31mNaN\\x1b[0m [bold]x[/bold]" in out  # shown, not interpreted (ANSI nor rich markup)
    code, out, _ = await run_cli(capsys, "jobs", "show", "train-1", "--socket", server.socket_path)
    assert "\x1b" not in out
    assert "message          loss \\x1b[31mNaN" in out


async def test_unknown_job_exits_2(server: LocalApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    for action in ("show", "cancel"):
        code, out, err = await run_cli(capsys, "jobs", action, "ghost", "--socket", server.socket_path)
        assert (code, out) == (2, "")
        assert err == "greenferry: error: no job 'ghost' on node edge-1\n"


async def test_bad_job_id_exits_2_without_a_request(
    server: LocalApiServer, service: MemoryJobService, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await run_cli(capsys, "jobs", "show", "../../etc", "--socket", server.socket_path)
    assert code == 2
    assert "job_id: '../../etc' is not a job id" in err
    assert service.calls == []


async def test_refused_destination_exits_2_naming_the_field(
    server: LocalApiServer, service: MemoryJobService, capsys: pytest.CaptureFixture[str]
) -> None:
    await service.submit(validate_job_spec(spec_dict("train-1")))
    code, _, err = await run_cli(
        capsys, "jobs", "migrate", "train-1", "--to", "edge-9", "--socket", server.socket_path
    )
    assert code == 2
    assert "to: no peer named 'edge-9'" in err


async def test_conflicts_exit_1(
    server: LocalApiServer, service: MemoryJobService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_file = tmp_path / "job.json"
    spec_file.write_text(json.dumps(spec_dict("train-1")))
    socket_args = ("--socket", str(server.socket_path))
    assert (await run_cli(capsys, "jobs", "submit", spec_file, *socket_args))[0] == 0
    code, out, err = await run_cli(capsys, "jobs", "submit", spec_file, *socket_args)
    assert (code, out) == (1, "")
    assert err == "greenferry: error: job train-1 already exists\n"
    assert (await run_cli(capsys, "jobs", "cancel", "train-1", *socket_args))[0] == 0
    code, _, err = await run_cli(capsys, "jobs", "cancel", "train-1", *socket_args)
    assert code == 1
    assert "cancelled: nothing to cancel" in err


async def test_daemon_side_crash_exits_1(
    server: LocalApiServer, service: MemoryJobService, capsys: pytest.CaptureFixture[str]
) -> None:
    service.fail_with = RuntimeError("boom")
    code, out, err = await run_cli(capsys, "jobs", "list", "--socket", server.socket_path)
    assert (code, out) == (1, "")
    assert "internal error (see the daemon's log) (HTTP 500 internal)" in err


async def test_daemon_not_running_exits_1(
    node_config: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run_cli(capsys, "jobs", "list", "--config", node_config)
    assert (code, out) == (1, "")
    assert err == (
        f"greenferry: error: no daemon listening on {data_dir}/api.sock: start it with "
        f"greenferry daemon --config {node_config}\n"
    )
    code, _, err = await run_cli(capsys, "jobs", "show", "x", "--socket", tmp_path / "nowhere.sock")
    assert code == 1
    assert f"no daemon listening on {tmp_path}/nowhere.sock: start it with greenferry daemon --config" in err


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("job.yaml", "name: x\n", "a job spec is a .toml or a .json file"),
        ("job.toml", "name = \n", "not valid TOML"),
        ("job.toml", b"name = '\xff'\n", "not UTF-8 text"),
        ("job.json", '{"name": "a", "name": "b"}', "duplicate key 'name'"),
        ("job.json", '{"name": ', "not valid JSON: Expecting value at line 1, column 10"),
        (
            "job.toml",
            'name = "x"\ncommand = "train.py"\ngpu_count = "1"\n',
            "command: Input should be a valid list",
        ),
        (
            "job.toml",
            'name = "../x"\ncommand = ["a"]\ncheckpoint_size_bytes = 1\nshell = true\n',
            "shell: unknown field",
        ),
        (
            "job.toml",
            'name = "x"\ncommand = ["a\\u0000"]\ncheckpoint_size_bytes = 1\n',
            "command: command[0] contains NUL",
        ),
        ("job.json", "[1, 2]", "(body): must be an object, got list"),
    ],
)
async def test_bad_spec_file_exits_2_naming_file_and_field(
    server: LocalApiServer,
    service: MemoryJobService,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: str | bytes,
    message: str,
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    code, out, err = await run_cli(capsys, "jobs", "submit", path, "--socket", server.socket_path)
    assert (code, out) == (2, "")
    assert err.startswith(f"greenferry: error: {path}")
    assert message in err
    assert service.calls == []  # refused before anything was sent


async def test_missing_spec_file_and_config_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await run_cli(capsys, "jobs", "submit", tmp_path / "none.toml", "--socket", tmp_path / "s")
    assert code == 2
    assert f"{tmp_path}/none.toml: cannot read: No such file or directory" in err
    code, _, err = await run_cli(capsys, "jobs", "list", "--config", tmp_path / "none.toml")
    assert code == 2
    assert f"{tmp_path}/none.toml: cannot read" in err


async def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = await run_cli(capsys, "jobs")
    assert code == 2
    assert "submit" in out  # the jobs help
    with pytest.raises(SystemExit) as caught:
        await run_cli(capsys, "jobs", "migrate", "train-1")  # no --to
    assert caught.value.code == 2
    assert "--to" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        await run_cli(capsys, "jobs", "list", "--config", tmp_path / "a.toml", "--socket", tmp_path / "s")
    assert caught.value.code == 2


def test_example_spec_matches_the_example_job() -> None:
    spec = load_job_spec(EXAMPLE)
    script = REPO / "examples" / "numpy_job.py"
    assert spec.command[1] == f"/opt/greenferry/{script.relative_to(REPO)}"
    module_spec = importlib.util.spec_from_file_location("numpy_job_example", script)
    assert module_spec is not None
    assert module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    args = module.parse_args(spec.command[2:])  # the example's own parser accepts the arguments
    assert (args.steps, args.state_mb) == (2000, 64.0)
    assert spec.checkpoint_size_bytes >= args.state_mb * 1024 * 1024
    assert spec.work_s == args.steps * args.step_time_s


async def test_list_never_cuts_ids_on_a_narrow_terminal(
    server: LocalApiServer,
    service: MemoryJobService,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    long_name = "a-rather-long-job-name-" + "x" * 30
    await service.submit(validate_job_spec(spec_dict(long_name)))
    code, out, _ = await run_cli(capsys, "jobs", "list", "--socket", server.socket_path)
    assert code == 0
    assert out.splitlines()[1].split()[:3] == [long_name, "pending", "edge-1"]
