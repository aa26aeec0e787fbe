"""Session-wide fixtures: the real services (Mosquitto, VictoriaMetrics) the integration tests talk to.

Locally a missing binary skips the tests that need it, with the reason; in CI (CI=true) it fails them,
because CI must run everything except the ``gpu`` tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from greenferry.testing.services import Mosquitto, VictoriaMetrics

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI must run this test)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    """One real broker for the session (anonymous, password and TLS listeners)."""
    try:
        broker = Mosquitto()
    except FileNotFoundError as err:
        _unavailable(str(err))
        raise
    broker.start()
    yield broker
    broker.close()


@pytest.fixture
def fresh_mosquitto() -> Iterator[Mosquitto]:
    """A broker of the test's own, for tests that kill and restart it."""
    try:
        broker = Mosquitto()
    except FileNotFoundError as err:
        _unavailable(str(err))
        raise
    broker.start()
    yield broker
    broker.close()


@pytest.fixture(scope="session")
def victoria() -> Iterator[VictoriaMetrics]:
    """One real VictoriaMetrics for the session (InfluxDB /api/v2/write)."""
    try:
        server = VictoriaMetrics()
    except FileNotFoundError as err:
        _unavailable(str(err))
        raise
    server.start()
    yield server
    server.close()


@pytest.fixture
def fresh_victoria() -> Iterator[VictoriaMetrics]:
    """A VictoriaMetrics of the test's own, for tests that stop and restart it."""
    try:
        server = VictoriaMetrics()
    except FileNotFoundError as err:
        _unavailable(str(err))
        raise
    server.start()
    yield server
    server.close()
