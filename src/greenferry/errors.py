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
