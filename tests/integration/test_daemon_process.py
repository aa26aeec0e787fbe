"""The real daemon as systemd runs it: a child process, a real broker, a real time-series server,
sd_notify over a real datagram socket, SIGTERM for a graceful stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from greenferry.testing.services import Mosquitto, VictoriaMetrics, free_port

pytestmark = pytest.mark.integration


def _node_config(
    tmp_path: Path, broker: Mosquitto, victoria: VictoriaMetrics, http_port: int, node: str
) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f"""
[node]
name = "{node}"
site = "caiso"
hardware_profile = "l4"
gpu_count = 2
data_dir = "{tmp_path / "data"}"

[mqtt]
host = "127.0.0.1"
port = {broker.port}
reconnect_min_s = 0.05
reconnect_max_s = 0.5
status_interval_s = 1

[signals.production]
topic = "it/{node}/production_w"
max_age_s = 60

[signals.carbon]
topic = "it/{node}/carbon"
format = "json"
field = "data.intensity"

[telemetry]
type = "influxdb"
url = "{victoria.url}"
batch_size = 100
flush_interval_s = 0.2
sample_interval_s = 0.2

[power]
source = "model"
interval_s = 0.2

[http]
port = {http_port}
"""
    )
    return path


class Retained:
    """A paho subscriber that keeps the latest payload per topic."""

    def __init__(self, port: int, topic: str) -> None:
        self.latest: dict[str, bytes] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"it-{os.getpid()}-{time.time_ns()}")
        self.client.on_message = lambda _c, _u, msg: self.latest.__setitem__(msg.topic, msg.payload)
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def wait_for(self, topic: str, predicate: object, timeout_s: float = 15.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            payload = self.latest.get(topic)
            if payload:
                status: dict[str, object] = json.loads(payload)
                if callable(predicate) and predicate(status):
                    return status
            time.sleep(0.05)
        raise AssertionError(f"no matching payload on {topic}; last: {self.latest.get(topic)!r}")

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    yield path, sock
    sock.close()


def _datagrams_until(sock: socket.socket, wanted: str) -> list[str]:
    seen: list[str] = []
    while True:
        message = sock.recv(4096).decode()
        seen.append(message)
        if wanted in message.split("\n"):
            return seen


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_daemon_lifecycle_end_to_end(
    tmp_path: Path,
    mosquitto: Mosquitto,
    victoria: VictoriaMetrics,
    notify_socket: tuple[str, socket.socket],
) -> None:
    node = f"it-node-{time.time_ns() % 10**9}"
    http_port = free_port()
    config = _node_config(tmp_path, mosquitto, victoria, http_port, node)
    status_topic = f"greenferry/v1/nodes/{node}/status"
    watcher = Retained(mosquitto.port, f"greenferry/v1/nodes/{node}/#")
    # A retained reading published before the daemon starts must be read on connect.
    watcher.publish(f"it/{node}/production_w", b"1500", retain=True)
    env = {
        **os.environ,
        "NOTIFY_SOCKET": notify_socket[0],
        "WATCHDOG_USEC": "2000000",
        "GREENFERRY_NODE__GPU_COUNT": "3",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "greenferry.cli", "daemon", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        ready = _datagrams_until(notify_socket[1], "READY=1")
        assert any("READY=1" in d for d in ready)
        watcher.wait_for(status_topic, lambda s: s.get("state") == "online")
        # The watchdog is pinged while healthy (WATCHDOG_USEC=2 s -> every 1 s).
        _datagrams_until(notify_socket[1], "WATCHDOG=1")

        base = f"http://127.0.0.1:{http_port}"
        assert _get(base + "/healthz")[0] == 200
        deadline = time.monotonic() + 10
        while _get(base + "/readyz")[0] != 200:
            assert time.monotonic() < deadline, _get(base + "/readyz")
            time.sleep(0.1)

        watcher.publish(f"it/{node}/carbon", json.dumps({"data": {"intensity": 212.5}}).encode())
        watcher.publish(f"it/{node}/carbon", b"{not json")
        deadline = time.monotonic() + 10
        while True:
            status = json.loads(_get(base + "/v1/status")[1])
            signals = status["signals"]
            if signals["carbon"]["value"] == 212.5 and signals["production"]["value"] == 1500.0:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert status["surplus_w"] == 1500.0
        # The retained status carries the surplus and power too, refreshed every status_interval_s.
        retained = watcher.wait_for(
            status_topic, lambda s: s.get("surplus_w") == 1500.0 and s.get("gpu_power_w") is not None
        )
        assert retained["state"] == "online"
        assert retained["stale_signals"] == []
        assert retained["site"] == "caiso"
        assert status["power"]["source"] == "model"
        assert len(status["power"]["gpus"]) == 3  # the environment override reached the daemon
        metrics = _get(base + "/metrics")[1].decode()
        assert "greenferry_daemon_up 1.0" in metrics
        assert "greenferry_mqtt_rejected_total" in metrics

        proc.send_signal(signal.SIGTERM)
        stopping = _datagrams_until(notify_socket[1], "STOPPING=1")
        assert stopping
        assert proc.wait(20) == 0
        offline = watcher.wait_for(status_topic, lambda s: s.get("state") == "offline")
        assert offline.get("reason") == "shutdown"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        watcher.close()
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    assert "Traceback" not in stderr, stderr
    # Telemetry was flushed before exit: power samples and the carbon signal are in the server.
    gpu = victoria.export(f'gpu_power_w{{node="{node}"}}', min_series=3)
    assert len(gpu) == 3
    carbon = victoria.export(f'signal_value{{node="{node}",kind="carbon"}}')
    assert carbon
    assert 212.5 in carbon[0]["values"]
