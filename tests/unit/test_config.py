"""The node config: TOML validated per field, environment overrides, and hostile files."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenferry.cli import main
from greenferry.config import (
    InfluxTelemetryConfig,
    SqliteTelemetryConfig,
    config_from_mapping,
    load_config,
)
from greenferry.core.signals import SignalKind
from greenferry.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "node.toml"

MINIMAL = """
[node]
name = "node-a"
site = "caiso"
data_dir = "{data_dir}"
"""


def write(tmp_path: Path, text: str, name: str = "node.toml") -> Path:
    path = tmp_path / name
    path.write_text(text.replace("{data_dir}", str(tmp_path / "data")))
    return path


def test_minimal_config_gets_documented_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), environ={})
    assert config.node.policy == "lookahead"
    assert config.mqtt is None
    assert isinstance(config.telemetry, SqliteTelemetryConfig)
    assert config.telemetry_sqlite_path == tmp_path / "data" / "telemetry.sqlite"
    assert config.status_topic() == "greenferry/v1/nodes/node-a/status"
    assert config.client_id == "greenferry-node-a"


def test_shipped_example_validates() -> None:
    config = load_config(EXAMPLE, environ={})
    assert set(config.signals.configured()) == set(SignalKind)
    assert isinstance(config.telemetry, InfluxTelemetryConfig)
    assert config.mqtt is not None
    assert config.mqtt.tls is not None


def test_environment_overrides_nested_keys_and_wins_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '[mqtt]\nport = 1883\n[signals.production]\ntopic = "pv/w"\n')
    config = load_config(
        path,
        environ={
            "GREENFERRY_MQTT__PORT": "1999",
            "GREENFERRY_MQTT__PASSWORD": "pw",
            "GREENFERRY_MQTT__USERNAME": "u",
            "GREENFERRY_SIGNALS__PRODUCTION__MAX_AGE_S": "12.5",
            "GREENFERRY_NODE__POLICY": "static",
        },
    )
    assert config.mqtt is not None
    assert config.mqtt.port == 1999
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "pw"
    assert config.signals.production is not None
    assert config.signals.production.topic == "pv/w"
    assert config.signals.production.max_age_s == 12.5
    assert config.node.policy == "static"


def test_environment_can_switch_the_telemetry_backend(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, MINIMAL),
        environ={"GREENFERRY_TELEMETRY__TYPE": "influxdb", "GREENFERRY_TELEMETRY__URL": "http://127.0.0.1:1"},
    )
    assert isinstance(config.telemetry, InfluxTelemetryConfig)
    assert config.telemetry.url == "http://127.0.0.1:1"


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL + "[mqtt]\n"), environ={"GREENFERRY_MQTT__PORT": "eighty"})
    assert "mqtt.port (from $GREENFERRY_MQTT__PORT)" in str(info.value)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("[mqtt]\nport = 70000\n", "mqtt.port"),
        ("[mqtt]\nprot = 1883\n", "mqtt.prot: unknown key"),
        ('[mqtt]\ntopic_prefix = "a/#"\n', "mqtt.topic_prefix"),
        ('[mqtt]\npassword = "x"\n', "password needs a username"),
        ("[mqtt]\nreconnect_min_s = 10\nreconnect_max_s = 1\n", "reconnect_min_s"),
        ('[mqtt.tls]\ncert_file = "a.crt"\n', "cert_file and key_file go together"),
        ('[mqtt]\n[signals.production]\ntopic = "t"\nformat = "json"\n', "needs `field`"),
        ('[mqtt]\n[signals.production]\ntopic = "t"\nfield = "a.b"\n', "only applies to format 'json'"),
        ('[mqtt]\n[signals.production]\ntopic = "t"\nformat = "xml"\n', "signals.production.format"),
        ('[mqtt]\n[signals.carbon]\ntopic = "t"\nmax_age_s = nan\n', "signals.carbon.max_age_s"),
        ('[mqtt]\n[signals.carbon]\ntopic = "t"\nscale = -1\n', "signals.carbon.scale"),
        ('[mqtt]\n[signals.weather]\ntopic = "t"\n', "signals.weather: unknown key"),
        ('[signals.production]\ntopic = "t"\n', "no [mqtt] section"),
        ('[telemetry]\ntype = "graphite"\n', "telemetry"),
        ('[telemetry]\ntype = "influxdb"\n', "telemetry.influxdb.url: required key is missing"),
        ('[telemetry]\ntype = "influxdb"\nurl = "ftp://x"\n', "telemetry.influxdb.url"),
        ('[power]\nsource = "ipmi"\n', "power.source"),
        ("[http]\nport = -1\n", "http.port"),
        ("shutdown_timeout_s = 0\n", "shutdown_timeout_s"),
    ],
)
def test_invalid_fields_are_named(tmp_path: Path, extra: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL + extra), environ={})
    assert expected in str(info.value)
    assert str(tmp_path / "node.toml") in str(info.value)


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ('name = "a/b"\nsite = "s"\n', "node.name"),
        ('name = "a+"\nsite = "s"\n', "node.name"),
        ('site = "s"\n', "node.name: required key is missing"),
        ('name = "a"\nsite = "s"\npolicy = "yolo"\n', "unknown policy 'yolo'"),
        ('name = "a"\nsite = "s"\nhardware_profile = "tpu-v9"\n', "node.hardware_profile"),
        ('name = "a"\nsite = "s"\ngpu_count = -1\n', "node.gpu_count"),
    ],
)
def test_invalid_node_section(tmp_path: Path, node: str, expected: str) -> None:
    with pytest.raises(ConfigError, match="node") as info:
        load_config(write(tmp_path, "[node]\n" + node), environ={})
    assert expected in str(info.value)


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    text = '[node]\nname = "a"\nsite = "s"\ngpu_count = -1\n[http]\nport = 99999\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    message = str(info.value)
    assert "2 problem(s)" in message
    assert "node.gpu_count" in message
    assert "http.port" in message


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[node\nname="), environ={})
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[node]")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary, environ={})
    huge = tmp_path / "huge.toml"
    huge.write_bytes(b"# " + b"x" * (2 * 1024 * 1024))
    with pytest.raises(ConfigError, match="too large"):
        load_config(huge, environ={})


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["node", "mqtt", "signals", "telemetry", "power", "http", "junk"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=5,
    )
)
def test_arbitrary_structures_give_config_errors_only(data: dict[str, object]) -> None:
    with contextlib.suppress(ConfigError):
        config_from_mapping(data, environ={})


def test_check_config_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, MINIMAL + '[power]\nsource = "model"\n')
    assert main(["check-config", "--config", str(good), "--no-connect"]) == 0
    assert "configuration is valid" in capsys.readouterr().out
    # With connections: only the data dir and the model meter are configured, both fine here.
    assert main(["check-config", "--config", str(good)]) == 0
    assert "ok   data_dir" in capsys.readouterr().out
    bad = write(tmp_path, MINIMAL + "[http]\nport = 99999\n", name="bad.toml")
    assert main(["check-config", "--config", str(bad)]) == 2
    assert "http.port" in capsys.readouterr().err
    assert main(["daemon", "--config", str(bad)]) == 2


def test_check_config_reports_an_unreachable_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from greenferry.testing.services import free_port

    path = write(tmp_path, MINIMAL + f'[mqtt]\nport = {free_port()}\n[power]\nsource = "model"\n')
    assert main(["check-config", "--config", str(path), "--timeout", "2"]) == 1
    out = capsys.readouterr().out
    assert "FAIL broker" in out
