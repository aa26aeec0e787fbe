"""The Docker image and local stack, checked statically (no Docker engine here) and against each other."""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from greenferry.config import DaemonConfig, HttpConfig, InfluxTelemetryConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
PROVISIONING = DOCKER / "grafana" / "provisioning"
DASHBOARD = PROVISIONING / "dashboards" / "greenferry.json"
NODES = ("node-a", "node-b", "node-c")
CONFIG_TARGET = "/etc/greenferry/node.toml"
DATA_TARGET = "/var/lib/greenferry"

# The telemetry schema the dashboard may query: measurement -> fields (daemon/telemetry.py declares it).
SCHEMA: dict[str, set[str]] = {
    "gpu": {"power_w", "energy_j", "utilization", "power_limit_w"},
    "node_power": {"gpu_power_w", "host_power_w", "host_energy_j"},
    "signal": {"value", "windows", "active", "age_s"},
    "signal_rejected": {"count"},
    "job_progress": {"step", "progress", "power_w"},
    "migration": {"bytes", "duration_s"},
    "telemetry": {"spooled_bytes", "dropped_points"},
}
SIGNAL_KINDS = {"production", "load", "surplus_forecast", "carbon", "price", "demand_response"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each short-syntax volume entry, ignoring a trailing :ro/:rw."""
    out = []
    for entry in service.get("volumes", []):
        source, target, *_ = entry.split(":")
        out.append((source, target))
    return out


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "use the mapping form of environment"
    return {str(k): str(v) for k, v in env.items()}


def node_config(name: str, environ: dict[str, str] | None = None) -> DaemonConfig:
    return load_config(DOCKER / "nodes" / f"{name}.toml", environ={} if environ is None else environ)


# -- compose ----------------------------------------------------------------------------------------------


def test_services_present(services: dict[str, dict[str, Any]]) -> None:
    assert {"mosquitto", "influxdb", "grafana", *NODES} <= set(services)
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    assert services["influxdb"]["image"].startswith("influxdb:2.7")
    assert services["grafana"]["image"].startswith("grafana/grafana-oss")


@pytest.mark.parametrize("name", NODES)
def test_node_is_built_from_the_repo_with_its_own_config_and_volume(
    services: dict[str, dict[str, Any]], compose: dict[str, Any], name: str
) -> None:
    node = services[name]
    context = (DOCKER / node["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / node["build"]["dockerfile"]).resolve() == DOCKERFILE
    mounts = dict((target, source) for source, target in volume_mounts(node))
    config_source = DOCKER / mounts[CONFIG_TARGET]
    assert config_source.is_file()
    assert config_source.name == f"{name}.toml"
    data_volume = mounts[DATA_TARGET]
    assert data_volume == f"{name}-data"
    assert data_volume in compose["volumes"]
    assert {"mosquitto", "influxdb"} <= set(node["depends_on"])


def test_nodes_do_not_share_configs_volumes_or_ports(services: dict[str, dict[str, Any]]) -> None:
    configs, volumes, host_ports = set(), set(), set()
    for name in NODES:
        mounts = dict((target, source) for source, target in volume_mounts(services[name]))
        configs.add(mounts[CONFIG_TARGET])
        volumes.add(mounts[DATA_TARGET])
        host_ports.update(p.split(":")[1] for p in services[name]["ports"])
    assert len(configs) == len(volumes) == len(NODES)
    assert host_ports == {"9471", "9472", "9473"}


@pytest.mark.parametrize("name", NODES)
def test_node_port_is_published_on_loopback_to_the_configured_http_port(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    config = node_config(name)
    assert config.http.enabled
    assert config.http.host == "0.0.0.0"  # reachable from outside the container, published on loopback only
    (port,) = services[name]["ports"]
    host_ip, _, container_port = port.split(":")
    assert host_ip == "127.0.0.1"
    assert int(container_port) == config.http.port == 9470


def test_every_port_is_bound_to_loopback(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is published on every interface"


def test_named_volumes_are_declared_and_used(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used = set()
    for name, service in compose["services"].items():
        for source, _ in volume_mounts(service):
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared


def test_graceful_stop_fits_in_the_grace_period(services: dict[str, dict[str, Any]]) -> None:
    shutdown_timeout_s = DaemonConfig.model_fields["shutdown_timeout_s"].default
    for name in NODES:
        grace = services[name]["stop_grace_period"]
        assert re.fullmatch(r"\d+s", grace)
        assert int(grace[:-1]) > shutdown_timeout_s


def test_brokers_and_databases_have_healthchecks_the_nodes_wait_for(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("mosquitto", "influxdb", "grafana"):
        assert services[name]["healthcheck"]["test"], name
    for name in NODES:
        for dependency in ("mosquitto", "influxdb"):
            assert services[name]["depends_on"][dependency]["condition"] == "service_healthy"


def test_mosquitto_config(services: dict[str, dict[str, Any]]) -> None:
    mounts = dict((target, source) for source, target in volume_mounts(services["mosquitto"]))
    conf_lines = [
        line.split(None, 1)
        for line in (DOCKER / mounts["/mosquitto/config/mosquitto.conf"]).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    conf = {key: value for key, value in conf_lines}
    assert conf["listener"] == "1883"
    assert conf["allow_anonymous"] == "true"
    assert conf["persistence"] == "true"
    # persistence lands on the named volume, not in the container layer
    assert conf["persistence_location"].rstrip("/") in mounts
    assert mounts[conf["persistence_location"].rstrip("/")] == "mosquitto-data"


def test_influxdb_setup_matches_the_node_and_grafana_configs(services: dict[str, dict[str, Any]]) -> None:
    influx = env_of(services["influxdb"])
    assert influx["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    assert influx["DOCKER_INFLUXDB_INIT_ORG"] == "greenferry"
    assert influx["DOCKER_INFLUXDB_INIT_BUCKET"] == "greenferry"
    token = influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    assert re.fullmatch(r"\$\{INFLUXDB_TOKEN:-[^}]+\}", token), "token from an env var with a dev default"
    assert env_of(services["grafana"])["INFLUXDB_TOKEN"] == token
    for name in NODES:
        assert env_of(services[name])["GREENFERRY_TELEMETRY__TOKEN"] == token
        telemetry = node_config(name).telemetry
        assert isinstance(telemetry, InfluxTelemetryConfig)
        assert telemetry.url == "http://influxdb:8086"
        assert (telemetry.org, telemetry.bucket) == ("greenferry", "greenferry")


# -- node configs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NODES)
def test_node_config_validates(name: str) -> None:
    config = node_config(name)
    assert config.node.name == name
    assert config.mqtt is not None
    assert config.mqtt.host == "mosquitto"
    assert config.power.source == "auto"
    assert str(config.node.data_dir) == DATA_TARGET
    signals = config.signals.configured()
    assert signals, "a node without signals has nothing to follow"
    for kind, signal in signals.items():
        assert signal.topic.startswith(f"sites/{config.node.site}/"), (kind, signal.topic)
    production = config.signals.production
    assert production is not None
    assert production.topic == f"sites/{config.node.site}/production_w"
    assert production.format == "number"


def test_node_configs_are_at_three_sites() -> None:
    assert {node_config(name).node.site for name in NODES} == {"caiso", "de-lu", "au-nsw"}


def test_token_comes_from_the_environment_not_the_file() -> None:
    for name in NODES:
        raw = tomllib.loads((DOCKER / "nodes" / f"{name}.toml").read_text())
        assert "token" not in raw["telemetry"]
        telemetry = node_config(name, {"GREENFERRY_TELEMETRY__TOKEN": "s3cret-token"}).telemetry
        assert isinstance(telemetry, InfluxTelemetryConfig)
        assert telemetry.token.get_secret_value() == "s3cret-token"


# -- Grafana ----------------------------------------------------------------------------------------------


def test_grafana_provisioning(services: dict[str, dict[str, Any]]) -> None:
    mounts = dict((target, source) for source, target in volume_mounts(services["grafana"]))
    assert (DOCKER / mounts["/etc/grafana/provisioning"]).resolve() == PROVISIONING
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "influxdb.yaml").read_text())["datasources"]
    assert source["type"] == "influxdb"
    assert source["url"] == "http://influxdb:8086"
    assert source["jsonData"]["version"] == "Flux"
    assert source["jsonData"]["organization"] == "greenferry"
    assert source["jsonData"]["defaultBucket"] == "greenferry"
    assert source["secureJsonData"]["token"] == "$INFLUXDB_TOKEN"
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yaml").read_text())["providers"]
    assert provider["type"] == "file"
    container_dir = Path(provider["options"]["path"])
    assert container_dir.relative_to("/etc/grafana/provisioning") == DASHBOARD.parent.relative_to(
        PROVISIONING
    )
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if p["type"] != "row"}
    assert uids == {source["uid"]}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def panel_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            yield panel["title"], target["query"]


def test_dashboard_queries_only_the_telemetry_schema(dashboard: dict[str, Any]) -> None:
    seen: set[str] = set()
    for title, query in panel_queries(dashboard):
        measurements = set(re.findall(r'r\._measurement == "([^"]+)"', query))
        assert measurements, f"{title}: no measurement filter"
        assert measurements <= set(SCHEMA), f"{title}: {measurements - set(SCHEMA)} not in the schema"
        fields = set(re.findall(r'r\._field == "([^"]+)"', query))
        assert fields, f"{title}: no field filter"
        allowed = set().union(*(SCHEMA[m] for m in measurements))
        assert fields <= allowed, f"{title}: fields {fields - allowed} not in {measurements}"
        kinds = set(re.findall(r'r\.kind == "([^"]+)"', query))
        assert kinds <= SIGNAL_KINDS, f"{title}: unknown signal kinds {kinds - SIGNAL_KINDS}"
        assert 'from(bucket: "greenferry")' in query, title
        assert "v.timeRangeStart" in query, title
        assert "${node:regex}" in query, f"{title}: ignores the node variable"
        seen |= measurements
    assert seen == set(SCHEMA), f"measurements without a panel: {set(SCHEMA) - seen}"


def test_dashboard_matches_the_declared_measurements(dashboard: dict[str, Any]) -> None:
    telemetry = pytest.importorskip("greenferry.daemon.telemetry")
    declared = telemetry.MEASUREMENTS
    assert set(declared) == set(SCHEMA)
    for title, query in panel_queries(dashboard):
        (measurement,) = set(re.findall(r'r\._measurement == "([^"]+)"', query))
        spec = declared[measurement]
        fields = set(re.findall(r'r\._field == "([^"]+)"', query))
        assert fields <= {f.name for f in spec.fields}, title
        group = re.search(r"group\(columns: \[([^\]]*)\]", query)
        assert group is not None, title
        columns = {c.strip().strip('"') for c in group.group(1).split(",")} - {"_field"}
        assert columns <= {t.name for t in spec.tags}, f"{title}: groups by undeclared tags"


def test_dashboard_layout_and_node_variable(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    (variable,) = dashboard["templating"]["list"]
    assert variable["name"] == "node"
    assert variable["includeAll"]
    assert 'measurement: "node_power"' in variable["query"]
    assert 'tag: "node"' in variable["query"]
    occupied: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells


# -- Dockerfile -------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, pending = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def instruction(name: str) -> list[str]:
    return [args for inst, args in dockerfile_instructions() if inst == name]


def test_dockerfile_basics() -> None:
    assert instruction("FROM") == ["python:3.11-slim"]
    (user,) = instruction("USER")
    assert user.split(":")[0] not in {"root", "0"}
    assert json.loads(instruction("ENTRYPOINT")[-1]) == ["greenferry"]
    assert json.loads(instruction("CMD")[-1]) == ["daemon", "--config", CONFIG_TARGET]
    assert instruction("EXPOSE") == [str(HttpConfig.model_fields["port"].default)]
    assert any("pip install ." in args for args in instruction("RUN"))


def test_dockerfile_copies_only_what_the_dockerignore_keeps() -> None:
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore  # allow-list: the .venv and data of the checkout stay out of the build context
    for args in instruction("COPY"):
        *sources, _ = args.split()
        for source in sources:
            assert source in kept, f"COPY {source} is excluded by Dockerfile.dockerignore"
            assert (ROOT / source).exists()


def _healthcheck_argv() -> list[str]:
    (args,) = instruction("HEALTHCHECK")
    _, _, command = args.partition("CMD ")
    argv = json.loads(command)
    assert isinstance(argv, list)
    return [str(a) for a in argv]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join()
    server.server_close()


def run_healthcheck(port: int) -> int:
    argv = _healthcheck_argv()
    assert argv[0] == "python"
    assert "http://127.0.0.1:9470/healthz" in argv[-1]
    code = argv[-1].replace(":9470/", f":{port}/")
    result = subprocess.run([sys.executable, *argv[1:-1], code], capture_output=True, timeout=30, check=False)
    return result.returncode


def test_healthcheck_passes_on_200_and_fails_otherwise(health_server: http.server.HTTPServer) -> None:
    port = health_server.server_address[1]
    _Health.status = 200
    assert run_healthcheck(port) == 0
    _Health.status = 503
    try:
        assert run_healthcheck(port) != 0
    finally:
        _Health.status = 200


def test_healthcheck_fails_when_nothing_listens(health_server: http.server.HTTPServer) -> None:
    port = health_server.server_address[1]
    health_server.shutdown()
    health_server.server_close()
    assert run_healthcheck(port) != 0


def test_http_port_and_commands_in_the_operations_guide() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    assert str(HttpConfig.model_fields["port"].default) in text
    assert "greenferry check-config --config" in text
    assert "docker compose -f docker/compose.yaml up" in text
