"""Real services for tests and benchmarks: a Mosquitto broker and a VictoriaMetrics server on loopback.

Each starts the real binary on free 127.0.0.1 ports with its state in a temp dir, and can be stopped and
restarted on the same ports (for the reconnect and zero-loss tests). Used by tests/conftest.py and bench/.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Mosquitto", "TlsFiles", "VictoriaMetrics", "free_port", "make_test_ca"]


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s} s")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throwaway CA and a server certificate for localhost/127.0.0.1."""

    ca: Path
    cert: Path
    key: Path


def make_test_ca(directory: Path) -> TlsFiles:
    """Write a test CA and a localhost server certificate (EC P-256, valid one day) into ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "greenferry-test-ca")])

    def builder(subject: x509.Name, public_key: Any, is_ca: bool) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        )

    ca_cert = (
        builder(ca_name, ca_key.public_key(), True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_cert = (
        builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), key.public_key(), False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return files


@dataclass
class Mosquitto:
    """A real Mosquitto broker with three listeners: anonymous, password (alice/s3cret), and TLS.

    ``stop()`` and ``start()`` keep the ports, so clients can be tested across a broker restart.
    """

    username: str = "alice"
    password: str = "s3cret"
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gf-mosq-")))
    port: int = field(default_factory=free_port)
    auth_port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)
    tls: TlsFiles | None = None
    tcp_nodelay: bool = False  # mosquitto's set_tcp_nodelay: no Nagle delay on what it sends
    _proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if shutil.which("mosquitto") is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        self.tls = make_test_ca(self.dir)
        subprocess.run(
            ["mosquitto_passwd", "-c", "-b", str(self.dir / "passwd"), self.username, self.password],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        d = self.dir
        (d / "mosquitto.conf").write_text(
            "per_listener_settings true\npersistence false\nuser root\n"
            f"log_dest file {d}/mosquitto.log\nmax_packet_size 16777216\n"
            f"set_tcp_nodelay {'true' if self.tcp_nodelay else 'false'}\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"listener {self.auth_port} 127.0.0.1\nallow_anonymous false\npassword_file {d}/passwd\n"
            f"listener {self.tls_port} 127.0.0.1\nallow_anonymous true\n"
            f"cafile {self.tls.ca}\ncertfile {self.tls.cert}\nkeyfile {self.tls.key}\n"
        )

    def start(self) -> None:
        """Start (or restart) the broker on its ports."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self._proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.dir / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in (self.port, self.auth_port, self.tls_port):
            _wait_port(port, self._proc, "mosquitto")

    def stop(self, kill: bool = False) -> None:
        """Stop the broker (SIGKILL with ``kill=True``); retained messages are lost (no persistence)."""
        if self._proc is None:
            return
        if kill:
            self._proc.kill()
        else:
            self._proc.terminate()
        self._proc.wait(10)
        self._proc = None

    def close(self) -> None:
        """Stop and remove the temp dir."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class VictoriaMetrics:
    """A real VictoriaMetrics server: it accepts InfluxDB line protocol on /api/v2/write."""

    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gf-vm-")))
    port: int = field(default_factory=free_port)
    _proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if shutil.which("victoria-metrics") is None:
            raise FileNotFoundError("victoria-metrics is not installed (apt-get install victoria-metrics)")

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:8428."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (or restart) the server on its port, keeping its data."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self._proc = subprocess.Popen(
            [
                "victoria-metrics",
                f"-httpListenAddr=127.0.0.1:{self.port}",
                f"-storageDataPath={self.dir}",
                "-retentionPeriod=100y",
                "-search.latencyOffset=0s",
                "-search.disableCache",
                "-loggerLevel=ERROR",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as response:
                    if response.read() == b"OK":
                        return
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("victoria-metrics did not start") from None
                time.sleep(0.05)

    def stop(self, kill: bool = False) -> None:
        """Stop the server (SIGKILL with ``kill=True``)."""
        if self._proc is None:
            return
        if kill:
            self._proc.kill()
        else:
            self._proc.terminate()
        self._proc.wait(15)
        self._proc = None

    def close(self) -> None:
        """Stop and remove the data dir."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def export(self, match: str, min_series: int = 1, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """Force-flush, then poll /api/v1/export until ``min_series`` series match (JSON objects)."""
        with urllib.request.urlopen(self.url + "/internal/force_flush", timeout=5) as response:
            response.read()
        query = urllib.parse.urlencode({"match[]": match})
        deadline = time.monotonic() + timeout_s
        while True:
            with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=5) as response:
                body = response.read().decode()
            series = [json.loads(line) for line in body.splitlines() if line.strip()]
            if len(series) >= min_series or time.monotonic() > deadline:
                return series
            time.sleep(0.05)

    def count_samples(self, match: str) -> int:
        """Total number of samples in the series matching ``match``."""
        return sum(len(s["values"]) for s in self.export(match, min_series=0, timeout_s=0))
