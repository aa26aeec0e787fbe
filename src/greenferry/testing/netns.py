"""Two network namespaces joined by a veth pair shaped with tbf: a WAN link of a known rate, for real.

Needs root (CI has it; see /work/shared/guide/INFRA.md section 5). tbf shapes egress only, so both ends are
shaped. There is no netem on these kernels: no emulated delay or loss, only bandwidth, and a link can be cut
(``set_link(False)``) to emulate a partition.

    with NetnsPair(rate_bps=100e6) as pair:
        pair.popen("a", [python, "-m", "greenferry.cli", "daemon", ...])
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

__all__ = ["NetnsPair", "netns_available"]


def netns_available() -> str | None:
    """None if namespaces can be made here, else why not (for a skip reason)."""
    if os.geteuid() != 0:
        return "needs root for ip netns"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs iproute2 (ip, tc)"
    probe = f"gfprobe{uuid.uuid4().hex[:6]}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"ip netns add failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


class NetnsPair:
    """Namespaces ``a`` and ``b`` with addresses :attr:`addr_a` / :attr:`addr_b` on a shaped veth pair."""

    def __init__(self, rate_bps: float | None, *, subnet: int | None = None) -> None:
        tag = uuid.uuid4().hex[:6]
        third = subnet if subnet is not None else int(tag[:2], 16)
        self.ns = {"a": f"gfa-{tag}", "b": f"gfb-{tag}"}
        self.dev = {"a": f"gfva{tag}", "b": f"gfvb{tag}"}
        self.addr_a = f"10.201.{third}.1"
        self.addr_b = f"10.201.{third}.2"
        self.rate_bps = rate_bps
        self._procs: list[subprocess.Popen[Any]] = []

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    def __enter__(self) -> Self:
        try:
            for side in ("a", "b"):
                self._ip("netns", "add", self.ns[side])
            self._ip("link", "add", self.dev["a"], "type", "veth", "peer", "name", self.dev["b"])
            for side, addr in (("a", self.addr_a), ("b", self.addr_b)):
                ns, dev = self.ns[side], self.dev[side]
                self._ip("link", "set", dev, "netns", ns)
                self._ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
                self._ip("-n", ns, "link", "set", "lo", "up")
                self._ip("-n", ns, "link", "set", dev, "up")
                if self.rate_bps is not None:
                    rate = f"{int(self.rate_bps / 1000)}kbit"
                    subprocess.run(
                        [
                            "tc",
                            "-n",
                            ns,
                            "qdisc",
                            "add",
                            "dev",
                            dev,
                            "root",
                            "tbf",
                            "rate",
                            rate,
                            "burst",
                            "256kb",
                            "latency",
                            "100ms",
                        ],
                        check=True,
                        capture_output=True,
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
        """Kill what runs inside, delete both namespaces (and with them the veth pair)."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    def popen(self, side: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside namespace ``side`` ("a" or "b"); killed at close."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns[side], *argv], **kwargs)
        self._procs.append(proc)
        return proc

    def run(
        self, side: str, argv: Sequence[str], timeout_s: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside namespace ``side`` to completion."""
        return subprocess.run(
            ["ip", "netns", "exec", self.ns[side], *argv],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def set_link(self, up: bool) -> None:
        """Bring the link up or down (down: a partition between the namespaces)."""
        for side in ("a", "b"):
            self._ip("-n", self.ns[side], "link", "set", self.dev[side], "up" if up else "down")

    def sent_bytes(self, side: str) -> int:
        """Bytes the tbf qdisc of ``side`` sent (on the wire, headers included)."""
        out = subprocess.run(
            ["tc", "-n", self.ns[side], "-s", "qdisc", "show", "dev", self.dev[side]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for line in out.splitlines():
            words = line.split()
            if words[:1] == ["Sent"]:
                return int(words[1])
        return 0
