"""sd_notify against a real AF_UNIX datagram socket standing in for systemd's notification socket."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from greenferry.adapters.systemd import SystemdNotifier, WatchdogPinger
from greenferry.testing.clock import ManualClock


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET: a bound datagram socket we read messages from."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address  # as systemd writes it into $NOTIFY_SOCKET

    def receive(self) -> str:
        """The next datagram (waits up to 5 s: the sender has already sent it when we call this)."""
        self.sock.settimeout(5)
        return self.sock.recv(65536).decode()

    def pending(self) -> list[str]:
        """Every datagram queued right now, without waiting."""
        self.sock.setblocking(False)
        out = []
        while True:
            try:
                out.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                return out


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield FakeSystemd(sock, str(path))
    sock.close()


@pytest.fixture
def abstract_systemd() -> Iterator[FakeSystemd]:
    name = f"greenferry-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    yield FakeSystemd(sock, "@" + name)
    sock.close()


NotifierFactory = Callable[..., SystemdNotifier]


@pytest.fixture
def notifier_for() -> Iterator[NotifierFactory]:
    """Make notifiers for a fake systemd from extra environment; all are closed after the test."""
    made: list[SystemdNotifier] = []

    def make(systemd: FakeSystemd, **env: str) -> SystemdNotifier:
        notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": systemd.address, **env})
        assert notifier is not None
        made.append(notifier)
        return notifier

    yield make
    for notifier in made:
        notifier.close()


def test_not_under_systemd_gives_none() -> None:
    assert SystemdNotifier.from_env({}) is None
    assert SystemdNotifier.from_env({"NOTIFY_SOCKET": ""}) is None


def test_non_unix_notify_socket_is_refused_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="greenferry.adapters.systemd"):
        assert SystemdNotifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}) is None
    assert "vsock:2:1234" in caplog.text
    with pytest.raises(ValueError, match="absolute path"):
        SystemdNotifier("relative/notify.sock")


def test_lifecycle_messages_on_a_path_socket(notifier_for: NotifierFactory, systemd: FakeSystemd) -> None:
    with notifier_for(systemd) as notifier:
        assert notifier.ready(status="online: node a\nsecond line")
        assert systemd.receive() == "READY=1\nSTATUS=online: node a second line"
        assert notifier.ready()
        assert systemd.receive() == "READY=1"
        assert notifier.status("spooling\r\n 12 MB")
        assert systemd.receive() == "STATUS=spooling  12 MB"
        assert notifier.watchdog()
        assert systemd.receive() == "WATCHDOG=1"
        assert notifier.stopping()
        assert systemd.receive() == "STOPPING=1"
        assert notifier.notify_raw("ERRNO=5\nSTATUS=x")
        assert systemd.receive() == "ERRNO=5\nSTATUS=x"
    # closed by the with block: nothing more is sent
    assert not notifier.ready()
    assert systemd.pending() == []


def test_reloading_carries_the_monotonic_timestamp(
    notifier_for: NotifierFactory, systemd: FakeSystemd
) -> None:
    with notifier_for(systemd) as notifier:
        assert notifier.reloading()
        lines = systemd.receive().split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert int(value) > 0


def test_abstract_socket(notifier_for: NotifierFactory, abstract_systemd: FakeSystemd) -> None:
    with notifier_for(abstract_systemd) as notifier:
        assert notifier.ready(status="up")
        assert abstract_systemd.receive() == "READY=1\nSTATUS=up"


def test_notify_rejects_bad_keys_and_multiline_values(
    notifier_for: NotifierFactory, systemd: FakeSystemd
) -> None:
    with notifier_for(systemd) as notifier:
        with pytest.raises(ValueError, match="upper-case"):
            notifier.notify(ready=1)
        with pytest.raises(ValueError, match="newline"):
            notifier.notify(STATUS="a\nb")
        assert notifier.notify(READY=1, STATUS="ok")
        assert systemd.receive() == "READY=1\nSTATUS=ok"


@pytest.mark.parametrize(
    ("env", "interval_s"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "500000"}, 0.25),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),  # meant for another pid
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "self"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(
    notifier_for: NotifierFactory, systemd: FakeSystemd, env: dict[str, str], interval_s: float | None
) -> None:
    with notifier_for(systemd, **env) as notifier:
        assert notifier.watchdog_interval_s == interval_s


def test_missing_socket_logs_once_and_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier is not None
    with notifier, caplog.at_level(logging.DEBUG, logger="greenferry.adapters.systemd"):
        assert not notifier.ready(status="online")
        assert not notifier.watchdog()
        assert not notifier.stopping()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "gone.sock" in warnings[0].getMessage()
    notifier.close()  # a second close is fine


def test_recovers_when_the_socket_comes_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "later.sock"
    with SystemdNotifier(str(path)) as notifier:
        with caplog.at_level(logging.INFO, logger="greenferry.adapters.systemd"):
            assert not notifier.watchdog()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(path))
            try:
                assert notifier.watchdog()
                assert FakeSystemd(sock, str(path)).receive() == "WATCHDOG=1"
            finally:
                sock.close()
        assert "works again" in caplog.text


def test_full_receive_queue_is_a_failed_send_not_a_stall(
    notifier_for: NotifierFactory, systemd: FakeSystemd
) -> None:
    with notifier_for(systemd) as notifier:
        # Nobody reads: the kernel queue fills and sends must fail instead of blocking.
        results = [notifier.status("x" * 1024) for _ in range(10_000)]
    assert results[0]
    assert not all(results)


async def wait_for(predicate: Callable[[], bool]) -> None:
    """Yield to the event loop until ``predicate()`` holds (bounded, never sleeps on the wall clock)."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


async def test_pinger_pings_only_while_healthy(notifier_for: NotifierFactory, systemd: FakeSystemd) -> None:
    clock = ManualClock()
    healthy = True
    checks = 0

    def health() -> bool:
        nonlocal checks
        checks += 1
        return healthy

    registry = CollectorRegistry()
    notifier = notifier_for(systemd, WATCHDOG_USEC="30000000")
    async with WatchdogPinger(notifier, clock, health, registry=registry) as pinger:
        assert pinger.interval_s == 15.0
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(pinger.run())
            await wait_for(lambda: checks == 1)  # pings at once, then sleeps 15 s
            assert systemd.pending() == ["WATCHDOG=1"]
            clock.advance(14.0)
            await asyncio.sleep(0)
            assert checks == 1
            assert systemd.pending() == []
            clock.advance(1.0)
            await wait_for(lambda: checks == 2)
            assert systemd.pending() == ["WATCHDOG=1"]

            healthy = False
            clock.advance(15.0)
            await wait_for(lambda: checks == 3)
            clock.advance(15.0)
            await wait_for(lambda: checks == 4)
            assert systemd.pending() == []  # withheld: systemd will time out and restart us

            healthy = True
            clock.advance(15.0)
            await wait_for(lambda: checks == 5)
            assert systemd.pending() == ["WATCHDOG=1"]
            task.cancel()
    assert registry.get_sample_value("greenferry_watchdog_pings_total") == 3
    assert registry.get_sample_value("greenferry_watchdog_withheld_total") == 2


async def test_pinger_treats_a_raising_health_check_as_unhealthy(
    notifier_for: NotifierFactory, systemd: FakeSystemd, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    checks = 0

    def health() -> bool:
        nonlocal checks
        checks += 1
        raise RuntimeError("component state unknown")

    notifier = notifier_for(systemd, WATCHDOG_USEC="2000000")
    with caplog.at_level(logging.ERROR, logger="greenferry.adapters.systemd"):
        async with WatchdogPinger(notifier, clock, health) as pinger, asyncio.TaskGroup() as tg:
            task = tg.create_task(pinger.run())
            await wait_for(lambda: checks == 1)
            clock.advance(1.0)
            await wait_for(lambda: checks == 2)
            task.cancel()
    assert systemd.pending() == []
    assert caplog.text.count("health check raised") == 1  # logged once, not every interval


async def test_pinger_without_watchdog_waits_until_cancelled(
    notifier_for: NotifierFactory, systemd: FakeSystemd
) -> None:
    clock = ManualClock()
    notifier = notifier_for(systemd)  # no WATCHDOG_USEC
    async with WatchdogPinger(notifier, clock, lambda: True) as pinger, asyncio.TaskGroup() as tg:
        task = tg.create_task(pinger.run())
        clock.advance(3600.0)
        for _ in range(10):
            await asyncio.sleep(0)
        assert not task.done()
        task.cancel()
    assert task.cancelled()
    assert systemd.pending() == []


def test_pinger_rejects_a_bad_interval(notifier_for: NotifierFactory, systemd: FakeSystemd) -> None:
    with notifier_for(systemd) as notifier, pytest.raises(ValueError, match="positive"):
        WatchdogPinger(notifier, ManualClock(), lambda: True, interval_s=0.0)
