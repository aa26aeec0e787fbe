"""The CLI's dispatch: every command is listed, and running one imports only its own module."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from greenferry.cli import _COMMAND_MODULES, build_parser, main


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in _COMMAND_MODULES:
        assert command in out


def test_an_unknown_command_is_a_usage_error_naming_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["simulat"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "simulat" in err
    assert "simulate" in err


def test_options_before_the_command_still_select_it(tmp_path: Path) -> None:
    parser = build_parser(["-v", "feasibility", "--checkpoint", "1GB"])
    args = parser.parse_args(["-v", "feasibility", "--checkpoint", "1GB"])
    assert args.verbose
    assert args.checkpoint == "1GB"


def test_the_daemon_commands_do_not_import_the_simulator(tmp_path: Path) -> None:
    """An idle daemon's memory target (80 MB) leaves no room for numpy, HiGHS and matplotlib."""
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\nname = "n1"\nsite = "s"\ndata_dir = "{tmp_path / "data"}"\n')
    probe = (
        "import json, sys\n"
        "from greenferry.cli import main\n"
        f"code = main(['check-config', '--config', {str(config)!r}, '--no-connect'])\n"
        "names = ('numpy', 'highspy', 'matplotlib', 'greenferry.sim.runner')\n"
        "heavy = sorted(m for m in names if m in sys.modules)\n"
        "print(json.dumps({'code': code, 'heavy': heavy}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "heavy": []}
