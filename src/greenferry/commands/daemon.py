"""`greenferry daemon` runs the node; `greenferry check-config` validates a config and probes its services."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from greenferry.config import DaemonConfig, InfluxTelemetryConfig, load_config
from greenferry.errors import GreenferryError

logger = logging.getLogger(__name__)

EXIT_CONNECTION_FAILED = 1


def register(subparsers: Any) -> None:
    """Add the ``daemon`` and ``check-config`` subcommands."""
    daemon = subparsers.add_parser(
        "daemon",
        help="run the node daemon (signals over MQTT, power, telemetry, HTTP endpoint)",
        description="Run the greenferry node daemon until SIGTERM/SIGINT.",
    )
    daemon.add_argument("--config", required=True, help="node config file (TOML)")
    daemon.set_defaults(func=_run_daemon)

    check = subparsers.add_parser(
        "check-config",
        help="validate a node config and open each configured connection once",
        description=(
            "Validate a node config (exit 2 with every problem on bad config), then open each configured "
            "connection once (broker, InfluxDB, NVML) and report what failed (exit 1)."
        ),
    )
    check.add_argument("--config", required=True, help="node config file (TOML)")
    check.add_argument("--no-connect", action="store_true", help="only validate; open no connection")
    check.add_argument("--timeout", type=float, default=5.0, help="seconds per connection test (default 5)")
    check.set_defaults(func=_check_config)


def _run_daemon(args: argparse.Namespace) -> int:
    config = load_config(args.config)  # ConfigError -> exit 2 before anything starts
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("greenferry").setLevel(logging.INFO)
    return asyncio.run(_serve(config))


async def _serve(config: DaemonConfig) -> int:
    from greenferry.daemon.app import NodeDaemon

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, stop, signum)
    try:
        await NodeDaemon(config).run(stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0


def _on_signal(stop: asyncio.Event, signum: int) -> None:
    logger.info("received %s; shutting down", signal.Signals(signum).name)
    stop.set()


@dataclass
class ProbeResult:
    """One connection test: what was tested, and None or the reason it failed."""

    name: str
    target: str
    error: str | None
    detail: str = ""


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(f"{args.config}: configuration is valid (node {config.node.name}, site {config.node.site})")
    if args.no_connect:
        return 0
    results = asyncio.run(probe_connections(config, args.timeout))
    for result in results:
        mark = "ok  " if result.error is None else "FAIL"
        line = f"  {mark} {result.name:<10} {result.target}"
        if result.error is not None:
            line += f": {result.error}"
        elif result.detail:
            line += f" ({result.detail})"
        print(line)
    failed = [r for r in results if r.error is not None]
    if failed:
        print(f"{len(failed)} of {len(results)} connection(s) failed", file=sys.stderr)
        return EXIT_CONNECTION_FAILED
    return 0


async def probe_connections(config: DaemonConfig, timeout_s: float) -> list[ProbeResult]:
    """Open each configured connection once (broker, InfluxDB, NVML, data dir) and report each outcome."""
    results: list[ProbeResult] = [_probe_data_dir(config)]
    if config.mqtt is not None:
        from greenferry.adapters.mqtt import probe_broker

        mqtt = config.mqtt
        scheme = "mqtts" if mqtt.tls is not None else "mqtt"
        results.append(
            await _probe(
                "broker",
                f"{scheme}://{mqtt.host}:{mqtt.port}",
                lambda: probe_broker(mqtt, config.client_id + "-check", timeout_s),
            )
        )
    if isinstance(config.telemetry, InfluxTelemetryConfig):
        from greenferry.adapters.influx import probe_influx

        telemetry = config.telemetry
        results.append(await _probe("influxdb", telemetry.url, lambda: probe_influx(telemetry, timeout_s)))
    if config.power.source != "model":
        from greenferry.adapters.nvml import probe_nvml

        try:
            detail = await asyncio.to_thread(probe_nvml)
            results.append(ProbeResult("nvml", "NVIDIA driver", None, detail))
        except GreenferryError as err:
            if config.power.source == "nvml":
                results.append(ProbeResult("nvml", "NVIDIA driver", str(err)))
            else:
                results.append(
                    ProbeResult("nvml", "NVIDIA driver", None, f"unavailable ({err}); using the power model")
                )
    return results


async def _probe(name: str, target: str, call: Callable[[], Awaitable[None]]) -> ProbeResult:
    try:
        await call()
    except GreenferryError as err:
        return ProbeResult(name, target, str(err))
    return ProbeResult(name, target, None)


def _probe_data_dir(config: DaemonConfig) -> ProbeResult:
    from greenferry.daemon.app import writable_dir_problem

    data_dir = config.node.data_dir
    problem = writable_dir_problem(data_dir)
    return ProbeResult("data_dir", str(data_dir), problem, "writable" if problem is None else "")
