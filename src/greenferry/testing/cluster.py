"""Two real daemons as separate processes in two network namespaces, joined by a shaped link.

Mosquitto runs in namespace ``a``; daemon ``a`` in ``a`` and daemon ``b`` in ``b`` reach it, and each other's
peer API (mutual TLS), over the veth pair shaped with tbf (testing/netns.py). Namespaces do not separate
the file system, so the test process talks to each daemon through its local API's Unix socket and reads
each journal directly. Used by bench/migration.py and the fault tests; needs root.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from greenferry.core.jobs import JobInfo
from greenferry.daemon.journal import Journal, MigrationRecord
from greenferry.testing.netns import NetnsPair

__all__ = ["EXAMPLE_JOB", "NetnsCluster", "example_job_spec", "run_example_job"]

EXAMPLE_JOB = Path(__file__).resolve().parents[3] / "examples" / "numpy_job.py"


def example_job_spec(
    job_id: str, state_mb: int, frozen_mb: int = 0, checkpoint_timeout_s: float = 300, gpu_count: int = 1
) -> dict[str, Any]:
    """A JobSpec (as a dict) of the numpy example job with a checkpoint of ``state_mb + frozen_mb`` MiB."""
    return {
        "gpu_count": gpu_count,
        "name": job_id,
        "command": [
            sys.executable,
            str(EXAMPLE_JOB),
            "--steps",
            "10000000",
            "--step-time-s",
            "0.01",
            "--state-mb",
            str(state_mb),
            "--frozen-mb",
            str(frozen_mb),
            "--report-interval-s",
            "0.25",
        ],
        "checkpoint_size_bytes": (state_mb + frozen_mb) * 2**20,
        "checkpoint_timeout_s": checkpoint_timeout_s,
    }


async def run_example_job(daemon: Any, name: str, gpu_count: int = 1) -> str:
    """Submit the numpy example job to an in-process NodeDaemon, wait until it runs and the node's DR
    controller has a power sample; returns the job id."""
    from greenferry.core.jobs import JobSpec, JobState
    from greenferry.testing.wait import until

    orchestrator, dr = daemon._components["orchestrator"], daemon._components["dr"]
    spec = JobSpec(**example_job_spec(name, state_mb=1, checkpoint_timeout_s=30, gpu_count=gpu_count))
    info = await orchestrator.submit(spec)
    await until(lambda: orchestrator._jobs[info.job_id].state is JobState.RUNNING, 30, f"job {name} to run")
    await until(dr.measured_load_w, 10, "a power sample")
    return str(info.job_id)


_MQTT_PORT = 1883
_PEER_PORT = 9471


class NetnsCluster:
    """Daemons ``a`` (no surplus) and ``b`` (surplus for hours) with a ``rate_bps`` link between them.

    Args:
        work: a scratch directory (configs, data dirs, certificates, logs).
        rate_bps: the shaped link rate (None: unshaped veth).
        node_settings: extra TOML lines per node name, appended to its config (in its [migration] table).
        node_env: extra environment per node name (``GREENFERRY_<SECTION>__<KEY>`` overrides).
        data_dir_limit_bytes: per node name, mount a tmpfs of this size as its data directory (a full disk).
    """

    def __init__(
        self,
        work: Path,
        rate_bps: float | None,
        node_settings: dict[str, str] | None = None,
        *,
        node_env: dict[str, dict[str, str]] | None = None,
        data_dir_limit_bytes: dict[str, int] | None = None,
    ) -> None:
        self.work = work
        self.pair = NetnsPair(rate_bps)
        self.addr = {"a": self.pair.addr_a, "b": self.pair.addr_b}
        self.node_settings = node_settings or {}
        self.node_env = node_env or {}
        self.data_dir_limit_bytes = data_dir_limit_bytes or {}
        self._mounts: list[Path] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._broker: subprocess.Popen[bytes] | None = None
        self.prefix = "gfc/v1"

    def __enter__(self) -> Self:
        self.pair.__enter__()
        try:
            self._start_broker()
            self._make_certs()
            for name, limit in self.data_dir_limit_bytes.items():
                path = self.data_dir(name)
                path.mkdir(parents=True, exist_ok=True)
                subprocess.run(
                    ["mount", "-t", "tmpfs", "-o", f"size={limit}", "tmpfs", str(path)], check=True
                )
                self._mounts.append(path)
            for name in ("a", "b"):
                self._write_config(name)
            self.surplus_only_at("b", "a")
            for name in ("a", "b"):
                self.start(name)
            self.wait_for(
                lambda: self.hears("a", "b") and self.hears("b", "a"), 30, "the nodes to hear each other"
            )
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the daemons (SIGTERM, then kill), the broker, and delete the namespaces."""
        for name in list(self.procs):
            self.stop(name)
        if self._broker is not None and self._broker.poll() is None:
            self._broker.kill()
            self._broker.wait(10)
        for path in self._mounts:
            subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)
        self._mounts.clear()
        self.pair.close()

    # -- set-up --------------------------------------------------------------------------------------

    def _start_broker(self) -> None:
        conf = self.work / "mosquitto.conf"
        conf.write_text(
            f"listener {_MQTT_PORT} 0.0.0.0\nallow_anonymous true\npersistence false\nuser root\n"
        )
        self._broker = self.pair.popen(
            "a", ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.wait_for(
            lambda: (
                self.pair.run(
                    "b", ["bash", "-c", f"echo > /dev/tcp/{self.addr['a']}/{_MQTT_PORT}"]
                ).returncode
                == 0
            ),
            10,
            "the broker",
        )

    def _make_certs(self) -> None:
        from greenferry.adapters.pki import init_ca, issue_node_cert

        ca = self.work / "ca"
        init_ca(ca)
        for name in ("a", "b"):
            issue_node_cert(ca, name, hosts=[self.addr[name]], out_dir=self.work / "certs" / name)

    def config_path(self, name: str) -> Path:
        """The node's TOML file."""
        return self.work / f"{name}.toml"

    def data_dir(self, name: str) -> Path:
        """The node's data directory."""
        return self.work / "data" / name

    def _write_config(self, name: str) -> None:
        certs = self.work / "certs" / name
        self.config_path(name).write_text(
            f"""
[node]
name = "{name}"
site = "site-{name}"
hardware_profile = "l4"
gpu_count = 1
data_dir = "{self.data_dir(name)}"
decision_interval_s = 0.5

[mqtt]
host = "{self.addr["a"]}"
port = {_MQTT_PORT}
topic_prefix = "{self.prefix}"
reconnect_min_s = 0.1
reconnect_max_s = 1.0
status_interval_s = 1

[signals.production]
topic = "{self.prefix}/sites/{name}/production_w"
max_age_s = 86400

[signals.surplus_forecast]
topic = "{self.prefix}/sites/{name}/forecast"
format = "greenferry"
max_age_s = 86400

[power]
source = "model"

[http]
enabled = false

[peer]
host = "{self.addr[name]}"
port = {_PEER_PORT}
advert_interval_s = 0.5
default_bandwidth_bps = {self.pair.rate_bps or 1e9}

[peer.tls]
ca_file = "{certs / "ca.crt"}"
cert_file = "{certs / f"{name}.crt"}"
key_file = "{certs / f"{name}.key"}"

[migration]
forecast_step_s = 300
horizon_s = 21600
confirm_timeout_s = 5
{self.node_settings.get(name, "")}
"""
        )

    def surplus_only_at(self, node: str, other: str) -> None:
        """Retained signals: site ``node`` has 5 kW for the next six hours, site ``other`` none."""
        now = time.time()
        windows = json.dumps([{"start": now - 60, "end": now + 6 * 3600, "power_w": 5000.0}])
        for topic, payload in (
            (f"{self.prefix}/sites/{other}/production_w", "0"),
            (f"{self.prefix}/sites/{other}/forecast", "[]"),
            (f"{self.prefix}/sites/{node}/production_w", "5000"),
            (f"{self.prefix}/sites/{node}/forecast", windows),
        ):
            done = self.pair.run(
                "a",
                [
                    "mosquitto_pub",
                    "-h",
                    self.addr["a"],
                    "-p",
                    str(_MQTT_PORT),
                    "-q",
                    "1",
                    "-r",
                    "-t",
                    topic,
                    "-m",
                    payload,
                ],
            )
            if done.returncode != 0:
                raise RuntimeError(f"mosquitto_pub {topic}: {done.stderr}")

    # -- daemons -------------------------------------------------------------------------------------

    def start(self, name: str) -> None:
        """Start (or restart) daemon ``name``; its log goes to ``<work>/<name>.log``."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.node_env.get(name, {})}
        with (self.work / f"{name}.log").open("ab") as log:  # the child keeps its own descriptor
            self.procs[name] = self.pair.popen(
                name,
                [sys.executable, "-m", "greenferry.cli", "daemon", "--config", str(self.config_path(name))],
                stdout=log,
                stderr=log,
                env=env,
            )
        path = self.data_dir(name) / "api.sock"
        self.wait_for(lambda: _accepts(path) and self.procs[name].poll() is None, 30, f"daemon {name}'s API")

    def stop(self, name: str) -> None:
        """Graceful stop (SIGTERM), bounded."""
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def kill(self, name: str) -> None:
        """kill -9 the daemon (``ip netns exec`` execs it, so the pid is the daemon's); its jobs see EOF."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    # -- observing -----------------------------------------------------------------------------------

    def journal(self, name: str) -> Journal:
        """A reader of the node's journal (open a new one for every look)."""
        return Journal(self.data_dir(name) / "journal.sqlite")

    def job(self, name: str, job_id: str) -> JobInfo | None:
        """The node's view of a job."""
        journal = self.journal(name)
        try:
            return journal.job(job_id)
        finally:
            journal.close()

    def migrations(self, name: str) -> list[MigrationRecord]:
        """The node's migrations, oldest first."""
        journal = self.journal(name)
        try:
            return journal.migrations()
        finally:
            journal.close()

    def hears(self, name: str, peer: str) -> bool:
        """Whether the broker holds ``peer``'s advert (``name`` receives the same retained message)."""
        done = self.pair.run(
            name,
            [
                "mosquitto_sub",
                "-h",
                self.addr["a"],
                "-p",
                str(_MQTT_PORT),
                "-t",
                f"{self.prefix}/nodes/{peer}/state",
                "-C",
                "1",
                "-W",
                "2",
            ],
            timeout_s=10,
        )
        return done.returncode == 0 and bool(done.stdout.strip())

    def submit(self, spec: dict[str, Any], node: str = "a") -> None:
        """Submit a job spec (a JobSpec as a dict) through the node's local API."""
        path = self.work / f"{spec['name']}.json"
        path.write_text(json.dumps(spec))
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "greenferry.cli",
                "jobs",
                "submit",
                str(path),
                "--socket",
                str(self.data_dir(node) / "api.sock"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"jobs submit: {done.stdout}{done.stderr}")

    @staticmethod
    def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
        """Poll ``predicate`` until it is truthy; AssertionError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")

    def job_processes(self, job_id: str) -> list[int]:
        """PIDs of live processes whose environment names ``job_id`` (the one-runner check)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if f"GREENFERRY_JOB_ID={job_id}".encode() in environ.split(b"\0") and ") Z" not in stat:
                pids.append(int(entry.name))
        return pids


def _accepts(path: Path) -> bool:
    """Whether a process listens on the Unix socket at ``path`` (a stale file from a killed one does not)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True
