"""An idle node daemon's memory and CPU, printed as JSON (targets: RSS <= 80 MB, CPU <= 1 %).

Starts the real ``greenferry daemon`` as a child process against a real Mosquitto (and, with
``--influx``, a real VictoriaMetrics), with two signals subscribed, the model power meter sampling every
second and the HTTP endpoint up; waits until it is ready, lets it settle, then reads its resident memory
and the CPU time it used over ``--seconds`` of idling from /proc.

Usage: python bench/daemon_idle.py [--seconds 30] [--influx]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from greenferry.testing.services import Mosquitto, VictoriaMetrics, free_port

RSS_TARGET_MB = 80.0
CPU_TARGET = 0.01


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def _proc_status_mb(pid: int, *keys: str) -> dict[str, float]:
    """Fields of /proc/PID/status in MB: VmRSS and its anonymous and file-backed parts."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in keys:
            values[key] = int(rest.split()[0]) / 1024
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0, help="idle measurement span (s)")
    parser.add_argument("--settle", type=float, default=5.0, help="wait after ready before measuring (s)")
    parser.add_argument("--influx", action="store_true", help="telemetry to a real VictoriaMetrics")
    args = parser.parse_args()

    broker = Mosquitto()
    broker.start()
    victoria = VictoriaMetrics() if args.influx else None
    if victoria is not None:
        victoria.start()
    work = Path(tempfile.mkdtemp(prefix="gf-idle-"))
    http_port = free_port()
    telemetry = (
        f'[telemetry]\ntype = "influxdb"\nurl = "{victoria.url}"\n'
        if victoria is not None
        else '[telemetry]\ntype = "sqlite"\n'
    )
    config = work / "node.toml"
    config.write_text(
        f'[node]\nname = "idle"\nsite = "bench"\ndata_dir = "{work / "data"}"\n'
        f"[mqtt]\nport = {broker.port}\n"
        '[signals.production]\ntopic = "bench/production_w"\n'
        '[signals.carbon]\ntopic = "bench/carbon"\n'
        f'{telemetry}[power]\nsource = "model"\ninterval_s = 1.0\n[http]\nport = {http_port}\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "greenferry.cli", "daemon", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("daemon did not become ready")
            time.sleep(0.1)
        time.sleep(args.settle)
        cpu0, t0 = _proc_cpu_s(proc.pid), time.monotonic()
        time.sleep(args.seconds)
        cpu1, t1 = _proc_cpu_s(proc.pid), time.monotonic()
        memory = _proc_status_mb(proc.pid, "VmRSS", "RssAnon", "RssFile")
    finally:
        proc.terminate()
        proc.wait(20)
        broker.close()
        if victoria is not None:
            victoria.close()
    cpu_share = (cpu1 - cpu0) / (t1 - t0)
    rss_mb = memory["VmRSS"]
    print(
        json.dumps(
            {
                "telemetry": "influxdb" if args.influx else "sqlite",
                "idle_s": round(t1 - t0, 1),
                "rss_mb": round(rss_mb, 1),
                # RssFile is mapped library text and data (numpy's OpenBLAS alone is ~20 MB of it), shared
                # with every other process that maps the same files; RssAnon is the daemon's own heap.
                "rss_anon_mb": round(memory.get("RssAnon", float("nan")), 1),
                "rss_file_mb": round(memory.get("RssFile", float("nan")), 1),
                "cpu_share": round(cpu_share, 5),
                "targets": {"rss_mb": RSS_TARGET_MB, "cpu_share": CPU_TARGET},
                "pass": {"rss_mb": rss_mb <= RSS_TARGET_MB, "cpu_share": cpu_share <= CPU_TARGET},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
