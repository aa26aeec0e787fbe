"""The error hierarchy: every error a user can cause says what is wrong and where."""

from __future__ import annotations


class GreenferryError(Exception):
    """Base class for every error greenferry raises on purpose."""


class UnitError(GreenferryError, ValueError):
    """A quantity with a missing, unknown or malformed unit (e.g. ``--bandwidth 1 Gbq``)."""


class ConfigError(GreenferryError, ValueError):
    """A scenario, profile or configuration file that does not validate."""


class TraceError(GreenferryError, ValueError):
    """A trace file that cannot be read: names the file, and the row/column where known."""

    def __init__(self, path: str, problem: str, *, row: int | None = None, column: str | None = None) -> None:
        where = path
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.problem = problem
        self.row = row
        self.column = column


class PayloadError(GreenferryError, ValueError):
    """A message from outside (MQTT payload, peer request, OpenADR event) that cannot be accepted.

    ``reason`` is short and stable (it labels a metric); the message adds the detail.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ServiceUnavailableError(GreenferryError):
    """A configured service (broker, InfluxDB, NVML) could not be reached or refused us; says which, why."""


class HardwareError(GreenferryError):
    """The hardware refused an operation (e.g. a power limit outside the card's range, or without root)."""
