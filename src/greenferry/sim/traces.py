"""Trace loaders: every recorded time series becomes a UTC, SI-unit :class:`Trace`.

Conventions (all loaders):

* ``times_s`` are UTC epoch seconds marking the START of each interval, strictly increasing.
  Sources that stamp the END of a period (Solcast, TMY3) are shifted back by one period.
* Values are converted once, here, to the units below; the rest of greenferry never sees
  vendor units.

  =================  ======================================================================
  unit               meaning
  =================  ======================================================================
  ``W``              power (files in kW or MW are multiplied by 1e3 / 1e6)
  ``W/m2``           irradiance
  ``fraction``       0-1 (e.g. PV output as a share of peak)
  ``%``              0-100 (cloud cover, relative humidity)
  ``m/s``            wind speed (files in km/h are divided by 3.6)
  ``gCO2/kWh``       grid carbon intensity
  ``<CUR>/MWh``      an energy price in a 3-letter ISO currency, e.g. ``USD/MWh``
  ``degC``           air temperature (kept in Celsius: every model here takes ``temp_c``)
  ``deg``            an angle (wind direction, zenith)
  ``Pa``             pressure (files in mbar are multiplied by 100)
  =================  ======================================================================

* Every loader accepts plain or gzip-compressed files (recognised by the gzip magic bytes,
  whatever the name) and a ``str`` or :class:`~pathlib.Path`.

Bad input is never silent. A :class:`~greenferry.errors.TraceError` names the file, and the row
(the 1-based line number in the file; for Open-Meteo JSON, the 1-based position in the hourly
arrays) and the column where known, for: a missing or unreadable file, an empty or binary file,
missing columns (the message lists those that exist), unparsable numbers or times, duplicate or
unordered timestamps, unknown time zones or units, negative power/irradiance/speed/intensity,
fractions above 1 and percentages above 100.

Missing values (empty cells, NaN, inf, JSON null, TMY3's ``-9900``) and missing timestamps in an
otherwise regular series are repaired only when a run is at most ``max_gap_steps`` intervals long
(default 3): such runs are linearly interpolated and a WARNING naming the file, column and rows is
logged on this module's logger. Longer runs, and runs at the very start or end, are errors.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import math
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt

from greenferry.errors import TraceError

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

DEFAULT_MAX_GAP_STEPS = 3
"""Longest run of missing intervals that loaders repair by linear interpolation."""

MAX_TEXT_BYTES = 512 * 1024 * 1024
"""Largest decompressed size a gzip trace may have (guards against decompression bombs)."""

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
"""Directory of the data files shipped inside the package (see its README.md)."""

_FIXED_UNITS = frozenset({"W", "W/m2", "fraction", "%", "m/s", "gCO2/kWh", "degC", "deg", "Pa"})
_PRICE_UNIT = re.compile(r"^[A-Z]{3}/MWh$")
_NON_NEGATIVE_UNITS = frozenset({"W", "W/m2", "fraction", "%", "m/s", "gCO2/kWh", "Pa"})
_UPPER_BOUND = {"fraction": 1.0, "%": 100.0}
_BOUND_TOLERANCE = 1e-6

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_ONE_SECOND = timedelta(seconds=1)
_DAY_S = 86_400
_HOUR_S = 3_600


def is_known_unit(unit: str) -> bool:
    """Whether ``unit`` is one of the units a :class:`Trace` may carry (see the module docstring)."""
    return unit in _FIXED_UNITS or _PRICE_UNIT.match(unit) is not None


@dataclass(frozen=True, eq=False)
class Trace:
    """A recorded time series in UTC and SI units.

    Each value holds over ``[times_s[i], times_s[i + 1])``; the last one over one :attr:`step_s`.
    The arrays are copied and made read-only on construction.

    Attributes:
        name: short human-readable label, e.g. ``"open-meteo America/Los_Angeles windspeed_10m"``.
        times_s: UTC epoch seconds of the START of each interval, strictly increasing, int64.
        values: one value per interval, float64, all finite.
        unit: one of the units in the module docstring, e.g. ``"W/m2"`` or ``"USD/MWh"``.
        source: where the data came from (the file path for loaded traces); used in error messages.
    """

    name: str
    times_s: IntArray
    values: FloatArray
    unit: str
    source: str

    def __post_init__(self) -> None:
        times_s = np.array(self.times_s, dtype=np.int64)
        values = np.array(self.values, dtype=np.float64)
        if times_s.ndim != 1 or values.shape != times_s.shape:
            raise ValueError(
                f"trace {self.name!r}: times_s and values must be 1-D of equal length, "
                f"got shapes {times_s.shape} and {values.shape}"
            )
        if times_s.size < 2:
            raise ValueError(f"trace {self.name!r}: needs at least 2 samples, got {times_s.size}")
        if np.any(np.diff(times_s) <= 0):
            raise ValueError(f"trace {self.name!r}: times_s must be strictly increasing")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"trace {self.name!r}: values must be finite")
        if not is_known_unit(self.unit):
            raise ValueError(f"trace {self.name!r}: unknown unit {self.unit!r}")
        times_s.setflags(write=False)
        values.setflags(write=False)
        object.__setattr__(self, "times_s", times_s)
        object.__setattr__(self, "values", values)

    @property
    def step_s(self) -> float:
        """Median spacing of ``times_s``, in seconds."""
        return float(np.median(np.diff(self.times_s)))

    @property
    def start_s(self) -> int:
        """UTC epoch seconds of the start of the first interval."""
        return int(self.times_s[0])

    @property
    def end_s(self) -> int:
        """UTC epoch seconds of the end of the last interval (last start + :attr:`step_s`)."""
        return int(self.times_s[-1]) + round(self.step_s)

    def __len__(self) -> int:
        return int(self.times_s.size)


@dataclass(frozen=True, eq=False)
class ForecastTable:
    """Forecasts in long form: row ``i`` says, at ``issue_times_s[i]``, what the value over the
    interval starting at ``target_start_s[i]`` will be.

    Rows are sorted by issue time, then target time. The arrays are copied and made read-only.

    Attributes:
        name: short label, e.g. ``"solcast forecast San Francisco"``.
        issue_times_s: UTC epoch seconds when each forecast was issued, int64.
        target_start_s: UTC epoch seconds of the START of each forecast target interval, int64.
        values: forecast value per row, float64, finite.
        unit: as for :class:`Trace`.
        source: the file path.
        target_step_s: length of each target interval, seconds.
    """

    name: str
    issue_times_s: IntArray
    target_start_s: IntArray
    values: FloatArray
    unit: str
    source: str
    target_step_s: int

    def __post_init__(self) -> None:
        issue = np.array(self.issue_times_s, dtype=np.int64)
        target = np.array(self.target_start_s, dtype=np.int64)
        values = np.array(self.values, dtype=np.float64)
        if issue.ndim != 1 or issue.shape != target.shape or issue.shape != values.shape:
            raise ValueError(f"forecast {self.name!r}: arrays must be 1-D of equal length")
        if not is_known_unit(self.unit):
            raise ValueError(f"forecast {self.name!r}: unknown unit {self.unit!r}")
        for array in (issue, target, values):
            array.setflags(write=False)
        object.__setattr__(self, "issue_times_s", issue)
        object.__setattr__(self, "target_start_s", target)
        object.__setattr__(self, "values", values)

    @property
    def lead_times_s(self) -> IntArray:
        """Target start minus issue time, seconds (0 = the interval starting at the issue time)."""
        return (self.target_start_s - self.issue_times_s).astype(np.int64)

    def __len__(self) -> int:
        return int(self.issue_times_s.size)


# --------------------------------------------------------------------------------------------
# Shipped data
# --------------------------------------------------------------------------------------------


def data_path(*parts: str) -> Path:
    """Path of a data file shipped in the package, e.g. ``data_path("open-meteo", "ZA", "2022.json.gz")``.

    Raises:
        ValueError: a part is absolute or contains ``..``.
        FileNotFoundError: no such shipped file (the message lists the shipped files).
    """
    for part in parts:
        if Path(part).is_absolute() or ".." in Path(part).parts:
            raise ValueError(f"data_path parts must be relative names inside the package, got {part!r}")
    path = DATA_DIR.joinpath(*parts)
    if not path.is_file():
        shipped = sorted(
            str(p.relative_to(DATA_DIR))
            for p in DATA_DIR.rglob("*")
            if p.is_file() and p.name not in ("README.md", "SHA256SUMS")
        )
        raise FileNotFoundError(f"no shipped data file {'/'.join(parts)!r}; shipped: {', '.join(shipped)}")
    return path


# --------------------------------------------------------------------------------------------
# Low-level reading helpers
# --------------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    """The file's text, gunzipped if it starts with the gzip magic bytes."""
    where = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TraceError(where, "file not found") from None
    except OSError as err:
        raise TraceError(where, f"cannot read the file: {err.strerror or err}") from err
    if raw[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
                raw = stream.read(MAX_TEXT_BYTES + 1)
        except (OSError, EOFError, zlib.error) as err:
            raise TraceError(where, f"corrupt gzip data: {err}") from err
        if len(raw) > MAX_TEXT_BYTES:
            raise TraceError(where, f"decompresses to more than {MAX_TEXT_BYTES} bytes: refusing to read it")
    if not raw.strip():
        raise TraceError(where, "the file is empty")
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise TraceError(where, "binary data (NUL byte): not a text file", row=raw.count(b"\n", 0, nul) + 1)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise TraceError(
            where, f"not UTF-8 text (byte {err.start}): binary or mis-encoded file", row=line
        ) from err


@dataclass
class _Table:
    """A CSV body: the header, the data rows and each row's 1-based line number in the file."""

    path: str
    header: list[str]
    rows: list[list[str]]
    lines: list[int]

    def index(self, column: str) -> int:
        try:
            return self.header.index(column)
        except ValueError:
            present = ", ".join(repr(h) for h in self.header if h)
            raise TraceError(
                self.path, f"missing column; columns present: {present}", column=column
            ) from None

    def cells(self, column: str) -> list[str]:
        j = self.index(column)
        out: list[str] = []
        for row, line in zip(self.rows, self.lines, strict=True):
            if j >= len(row):
                raise TraceError(
                    self.path, f"row has {len(row)} fields, too few for this column", row=line, column=column
                )
            out.append(row[j])
        return out


def _read_csv(
    path: Path, text: str, *, skip_lines: int = 0, stop: Callable[[list[str]], bool] | None = None
) -> _Table:
    """Parse CSV text whose header is on line ``skip_lines + 1``; blank lines are ignored.

    Args:
        stop: called on every data row; reading ends before the first row for which it is true.
    """
    where = str(path)
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        for row in reader:
            if reader.line_num <= skip_lines:
                continue
            if header is None:
                header = [h.strip() for h in row]
                continue
            if stop is not None and stop(row):
                break
            if not row or all(not cell.strip() for cell in row):
                continue
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as err:
        raise TraceError(where, f"malformed CSV: {err}", row=reader.line_num) from err
    if header is None or not any(header):
        raise TraceError(where, "no header line", row=skip_lines + 1)
    if len(rows) < 2:
        raise TraceError(where, f"needs at least 2 data rows, found {len(rows)}")
    return _Table(where, header, rows, lines)


def _parse_floats(cells: Sequence[str], path: str, column: str, lines: Sequence[int]) -> FloatArray:
    """Numbers from CSV cells; empty cells become NaN (missing). Raises on anything unparsable."""
    try:
        return np.array(cells, dtype=np.float64)
    except ValueError:
        pass
    out = np.empty(len(cells), dtype=np.float64)
    for i, cell in enumerate(cells):
        text = cell.strip()
        if not text:
            out[i] = math.nan
            continue
        try:
            out[i] = float(text)
        except ValueError:
            raise TraceError(path, f"not a number: {cell[:40]!r}", row=lines[i], column=column) from None
    return out


def _epoch_from_naive_utc(value: datetime) -> int:
    return (value.replace(tzinfo=UTC) - _EPOCH) // _ONE_SECOND


def _epoch_from_aware(value: datetime) -> int:
    return (value - _EPOCH) // _ONE_SECOND


def _parse_iso_utc(cells: Sequence[str], path: str, column: str, lines: Sequence[int]) -> IntArray:
    """ISO-8601 timestamps that are UTC: naive, ``Z`` or with an explicit offset."""
    cache: dict[str, int] = {}
    out = np.empty(len(cells), dtype=np.int64)
    for i, cell in enumerate(cells):
        epoch = cache.get(cell)
        if epoch is None:
            try:
                parsed = datetime.fromisoformat(cell.strip())
            except ValueError:
                raise TraceError(
                    path, f"not an ISO-8601 time: {cell[:40]!r}", row=lines[i], column=column
                ) from None
            epoch = _epoch_from_naive_utc(parsed) if parsed.tzinfo is None else _epoch_from_aware(parsed)
            cache[cell] = epoch
        out[i] = epoch
    return out


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe_run(line_numbers: Sequence[int], first_time_s: int, previous_line: int | None) -> str:
    """'rows 5-7', or 'N missing timestamp(s) from <time> (after row R)' for rows absent from the file.

    ``line_numbers`` holds -1 where a timestamp is missing from the file.
    """
    real = [n for n in line_numbers if n >= 0]
    missing = len(line_numbers) - len(real)
    parts = []
    if real:
        parts.append(f"row {real[0]}" if len(real) == 1 else f"rows {real[0]}-{real[-1]}")
    if missing:
        after = f" (after row {previous_line})" if previous_line is not None and previous_line >= 0 else ""
        parts.append(f"{missing} missing timestamp(s) from {_iso(first_time_s)}{after}")
    return " and ".join(parts)


def _runs(mask: BoolArray) -> tuple[IntArray, IntArray]:
    """Start indices and lengths of the maximal runs of True in a 1-D mask."""
    padded = np.concatenate(([0], mask.astype(np.int8), [0]))
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == 1).astype(np.int64)
    ends = np.flatnonzero(edges == -1).astype(np.int64)
    return starts, (ends - starts).astype(np.int64)


def _make_trace(
    *,
    name: str,
    path: str,
    column: str,
    times_s: IntArray,
    values: FloatArray,
    lines: Sequence[int],
    unit: str,
    max_gap_steps: int,
) -> Trace:
    """Check order, fill short gaps (logged), check physical bounds, build the Trace."""
    if max_gap_steps < 0:
        raise ValueError(f"max_gap_steps must be >= 0, got {max_gap_steps}")
    if not is_known_unit(unit):
        raise TraceError(path, f"unknown unit {unit!r}", column=column)
    line_arr = np.asarray(lines, dtype=np.int64)
    if times_s.size < 2:
        raise TraceError(path, f"needs at least 2 samples, found {times_s.size}", column=column)
    diffs = np.diff(times_s)
    bad = np.flatnonzero(diffs <= 0)
    if bad.size:
        i = int(bad[0])
        kind = "duplicate timestamp" if diffs[i] == 0 else "timestamps out of order"
        raise TraceError(
            path,
            f"{kind}: {_iso(int(times_s[i + 1]))} follows {_iso(int(times_s[i]))} (row {int(line_arr[i])})",
            row=int(line_arr[i + 1]),
        )

    # Missing timestamps in a regular series become NaN rows, repaired or rejected below.
    step_s = int(np.median(diffs))
    gap_idx = np.flatnonzero(diffs * 2 > 3 * step_s)
    if gap_idx.size:
        off_grid = gap_idx[diffs[gap_idx] % step_s != 0]
        if off_grid.size:
            i = int(off_grid[0])
            raise TraceError(
                path,
                f"irregular spacing: {int(diffs[i])} s after {_iso(int(times_s[i]))} "
                f"is not a multiple of the {step_s} s step",
                row=int(line_arr[i + 1]),
            )
        insert_counts = (diffs[gap_idx] // step_s - 1).astype(np.int64)
        too_long = np.flatnonzero(insert_counts > max_gap_steps)
        if too_long.size:  # rejected before inserting: a hostile file must not allocate a huge grid
            k = int(too_long[0])
            i = int(gap_idx[k])
            count = int(insert_counts[k])
            first_missing = _iso(int(times_s[i]) + step_s)
            where = f"{count} missing timestamp(s) from {first_missing} (after row {int(line_arr[i])})"
            raise TraceError(
                path,
                f"{count} consecutive missing values ({where}); at most {max_gap_steps} are interpolated",
                row=int(line_arr[i]),
                column=column,
            )
        new_times = np.concatenate(
            [
                times_s[i] + step_s * np.arange(1, n + 1, dtype=np.int64)
                for i, n in zip(gap_idx, insert_counts, strict=True)
            ]
        )
        positions = np.repeat(gap_idx + 1, insert_counts)
        times_s = np.insert(times_s, positions, new_times)
        values = np.insert(values, positions, math.nan)
        line_arr = np.insert(line_arr, positions, -1)

    missing = ~np.isfinite(values)
    if missing.any():
        starts, lengths = _runs(missing)
        descriptions = []
        for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
            rows = line_arr[start : start + length].tolist()
            previous_line = int(line_arr[start - 1]) if start > 0 else None
            where = _describe_run(rows, int(times_s[start]), previous_line)
            descriptions.append(where)
            first_row = next((r for r in rows if r >= 0), previous_line)
            if start == 0 or start + length == values.size:
                edge = "start" if start == 0 else "end"
                raise TraceError(
                    path,
                    f"missing values at the {edge} of the series ({where})",
                    row=first_row,
                    column=column,
                )
            if length > max_gap_steps:
                raise TraceError(
                    path,
                    f"{length} consecutive missing values ({where}); "
                    f"at most {max_gap_steps} are interpolated",
                    row=first_row,
                    column=column,
                )
        good = ~missing
        values = values.copy()
        values[missing] = np.interp(times_s[missing], times_s[good], values[good])
        logger.warning(
            "%s: column %r: linearly interpolated %d missing value(s) in %d gap(s) of at most %d step(s): %s",
            path,
            column,
            int(missing.sum()),
            int(starts.size),
            max_gap_steps,
            "; ".join(descriptions),
        )

    if unit in _NON_NEGATIVE_UNITS:
        negative = np.flatnonzero(values < 0)
        if negative.size:
            i = int(negative[0])
            raise TraceError(
                path,
                f"negative value {values[i]:g} {unit} ({negative.size} in total): must be >= 0",
                row=int(line_arr[i]) if line_arr[i] >= 0 else None,
                column=column,
            )
    upper = _UPPER_BOUND.get(unit)
    if upper is not None:
        above = np.flatnonzero(values > upper + _BOUND_TOLERANCE)
        if above.size:
            i = int(above[0])
            raise TraceError(
                path,
                f"value {values[i]:g} is above {upper:g} for unit {unit!r}",
                row=int(line_arr[i]) if line_arr[i] >= 0 else None,
                column=column,
            )
    return Trace(name=name, times_s=times_s, values=values, unit=unit, source=path)


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def _solcast_cells(table: _Table, city: str) -> list[str]:
    if city not in table.header:
        cities = ", ".join(repr(h) for h in table.header if h not in ("datetime", "period_end"))
        raise TraceError(table.path, f"unknown city; cities present: {cities}", column=city)
    return table.cells(city)


def load_solcast_actual(path: str | Path, city: str, *, max_gap_steps: int = DEFAULT_MAX_GAP_STEPS) -> Trace:
    """Solcast estimated PV output (vessim ``solcast2022_global_actual.csv``) for one city.

    The file's ``datetime`` is the UTC END of each 5-minute period; it is shifted to the start.

    Args:
        path: the CSV (plain or gzip).
        city: a column name, e.g. ``"San Francisco"``.
        max_gap_steps: longest run of missing values that is interpolated.

    Returns:
        A Trace in ``fraction`` (0-1 of the plant's peak output).

    Raises:
        TraceError: unreadable file, unknown city or malformed data.
    """
    path = Path(path)
    table = _read_csv(path, _read_text(path))
    values = _parse_floats(_solcast_cells(table, city), table.path, city, table.lines)
    end_s = _parse_iso_utc(table.cells("datetime"), table.path, "datetime", table.lines)
    period_s = int(np.median(np.diff(end_s))) if end_s.size > 1 else 0
    return _make_trace(
        name=f"solcast {city}",
        path=table.path,
        column=city,
        times_s=end_s - period_s,
        values=values,
        lines=table.lines,
        unit="fraction",
        max_gap_steps=max_gap_steps,
    )


def load_solcast_forecast(path: str | Path, city: str) -> ForecastTable:
    """Solcast PV output forecasts (vessim ``solcast2022_global_forecast.csv[.gz]``) for one city.

    ``datetime`` is the UTC issue time; ``period_end`` the UTC END of the 5-minute target period,
    converted to its start. Points the source leaves empty are dropped (logged as a WARNING): a
    forecast issue may therefore hold fewer than 13 points. Nothing is interpolated.

    Returns:
        A ForecastTable in ``fraction``.

    Raises:
        TraceError: unreadable file, unknown city, malformed, duplicate or unordered rows.
    """
    path = Path(path)
    table = _read_csv(path, _read_text(path))
    values = _parse_floats(_solcast_cells(table, city), table.path, city, table.lines)
    issue_s = _parse_iso_utc(table.cells("datetime"), table.path, "datetime", table.lines)
    end_s = _parse_iso_utc(table.cells("period_end"), table.path, "period_end", table.lines)
    lines = np.asarray(table.lines, dtype=np.int64)

    bad_value = np.flatnonzero(np.isinf(values) | (values < 0) | (values > 1 + _BOUND_TOLERANCE))
    if bad_value.size:
        i = int(bad_value[0])
        raise TraceError(
            table.path, f"value {values[i]:g} is not a fraction in [0, 1]", row=int(lines[i]), column=city
        )
    later = np.flatnonzero(end_s <= issue_s)
    if later.size:
        i = int(later[0])
        raise TraceError(
            table.path,
            "target period ends at or before the issue time",
            row=int(lines[i]),
            column="period_end",
        )
    d_issue = np.diff(issue_s)
    d_end = np.diff(end_s)
    unordered = np.flatnonzero((d_issue < 0) | ((d_issue == 0) & (d_end <= 0)))
    if unordered.size:
        i = int(unordered[0]) + 1
        kind = (
            "duplicate (issue, target) row"
            if d_end[i - 1] == 0 and d_issue[i - 1] == 0
            else "rows out of order"
        )
        raise TraceError(table.path, kind, row=int(lines[i]))
    same_issue = d_end[d_issue == 0]
    period_s = int(np.median(same_issue)) if same_issue.size else 300

    missing = np.isnan(values)
    if missing.any():
        starts, _ = _runs(missing)
        logger.warning(
            "%s: column %r: dropped %d empty forecast point(s) in runs starting at %s",
            table.path,
            city,
            int(missing.sum()),
            ", ".join(f"row {int(lines[s])}" for s in starts.tolist()),
        )
    keep = ~missing
    return ForecastTable(
        name=f"solcast forecast {city}",
        issue_times_s=issue_s[keep],
        target_start_s=end_s[keep] - period_s,
        values=values[keep],
        unit="fraction",
        source=table.path,
        target_step_s=period_s,
    )


_PSM3_UNITS: dict[str, tuple[str, float]] = {
    "w/m2": ("W/m2", 1.0),
    "m/s": ("m/s", 1.0),
    "c": ("degC", 1.0),
    "%": ("%", 1.0),
    "mbar": ("Pa", 100.0),
    "degree": ("deg", 1.0),
    "degrees": ("deg", 1.0),
}


def _metadata_offset_s(path: str, raw: str, what: str, row: int) -> int:
    try:
        hours = float(raw)
    except ValueError:
        raise TraceError(path, f"{what} {raw!r} is not a UTC offset in hours", row=row) from None
    if not math.isfinite(hours) or abs(hours) > 14:
        raise TraceError(path, f"{what} {raw!r} is not a valid UTC offset in hours", row=row)
    return round(hours * _HOUR_S)


def _int_cells(table: _Table, column: str) -> IntArray:
    floats = _parse_floats(table.cells(column), table.path, column, table.lines)
    bad = np.flatnonzero(~np.isfinite(floats) | (floats != np.round(floats)))
    if bad.size:
        i = int(bad[0])
        raise TraceError(table.path, "not an integer", row=table.lines[i], column=column)
    return floats.astype(np.int64)


def load_psm3(path: str | Path, column: str = "GHI", *, max_gap_steps: int = DEFAULT_MAX_GAP_STEPS) -> Trace:
    """NREL NSRDB PSM3 CSV (2 metadata lines, then a header): one column as a Trace.

    Timestamps (Year..Minute) are local standard time at the metadata ``Time Zone`` offset (no
    daylight saving); they are taken as interval starts. Units come from the metadata
    ``<column> Units`` entry: ``GHI``/``DNI``/``DHI`` W/m2, ``Wind Speed`` m/s, ``Temperature`` degC,
    ``Pressure`` mbar -> Pa.

    Raises:
        TraceError: unreadable file, bad metadata, missing column, unsupported unit, bad data.
    """
    path = Path(path)
    text = _read_text(path)
    where = str(path)
    head = list(csv.reader(io.StringIO("\n".join(text.splitlines()[:2]))))
    if len(head) < 2:
        raise TraceError(where, "PSM3 needs 2 metadata lines before the header", row=1)
    meta = dict(zip((h.strip() for h in head[0]), (v.strip() for v in head[1]), strict=False))
    if "Time Zone" not in meta:
        raise TraceError(where, "metadata has no 'Time Zone' entry", row=1, column="Time Zone")
    offset_s = _metadata_offset_s(where, meta["Time Zone"], "metadata 'Time Zone'", 2)
    raw_unit = meta.get(f"{column} Units", "").lower()
    table = _read_csv(path, text, skip_lines=2)
    table.index(column)
    if raw_unit not in _PSM3_UNITS:
        raise TraceError(
            where, f"no supported unit for this column in the metadata (found {raw_unit!r})", column=column
        )
    unit, scale = _PSM3_UNITS[raw_unit]
    year, month, day = _int_cells(table, "Year"), _int_cells(table, "Month"), _int_cells(table, "Day")
    hour, minute = _int_cells(table, "Hour"), _int_cells(table, "Minute")
    local_s = np.empty(year.size, dtype=np.int64)
    for i, (y, m, d) in enumerate(zip(year.tolist(), month.tolist(), day.tolist(), strict=True)):
        try:
            local_s[i] = (date(y, m, d).toordinal() - _EPOCH_ORDINAL) * _DAY_S
        except ValueError:
            raise TraceError(where, f"invalid date {y}-{m}-{d}", row=table.lines[i], column="Day") from None
    bad = np.flatnonzero((hour < 0) | (hour > 23) | (minute < 0) | (minute > 59))
    if bad.size:
        raise TraceError(where, "hour/minute out of range", row=table.lines[int(bad[0])], column="Hour")
    local_s += hour * _HOUR_S + minute * 60
    values = _parse_floats(table.cells(column), where, column, table.lines) * scale
    return _make_trace(
        name=f"NSRDB {meta.get('Location ID', path.stem)} {column}",
        path=where,
        column=column,
        times_s=local_s - offset_s,
        values=values,
        lines=table.lines,
        unit=unit,
        max_gap_steps=max_gap_steps,
    )


_TMY3_UNITS: dict[str, tuple[str, float]] = {
    "W/m^2": ("W/m2", 1.0),
    "m/s": ("m/s", 1.0),
    "C": ("degC", 1.0),
    "%": ("%", 1.0),
    "mbar": ("Pa", 100.0),
    "degrees": ("deg", 1.0),
    "tenths": ("%", 10.0),
}
_TMY3_MISSING = -9900.0
_HEADER_UNIT = re.compile(r"^(?P<name>.*?)\s*\((?P<unit>[^()]*)\)$")


def _check_year(year: int) -> None:
    if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        raise ValueError(f"typical-year data have no 29 February; pick a non-leap year, not {year}")


def _find_unit_column(
    table: _Table, column: str, units: dict[str, tuple[str, float]]
) -> tuple[str, str, float]:
    """The full header of ``column`` (given with or without its '(unit)' suffix), its unit and scale."""
    for header in table.header:
        match = _HEADER_UNIT.match(header)
        if header == column or (match is not None and match["name"] == column):
            if match is None or match["unit"] not in units:
                raise TraceError(table.path, f"unsupported unit in header {header!r}", column=header)
            unit, scale = units[match["unit"]]
            return header, unit, scale
    table.index(column)  # raises, listing the columns
    raise AssertionError("unreachable")


def load_tmy3(
    path: str | Path, column: str = "GHI", *, year: int = 2022, max_gap_steps: int = DEFAULT_MAX_GAP_STEPS
) -> Trace:
    """NREL TMY3 CSV (e.g. pvlib's ``723170TYA.CSV``): one column as a Trace.

    Line 1 holds the station's UTC offset (hours); times are local standard time and mark the END
    of each hour (``24:00`` allowed), so they are shifted back one hour. A typical year stitches
    months from different real years, so every date is moved to ``year`` (default 2022, the
    scenario year; must not be a leap year). Values of ``-9900`` mean missing.

    Args:
        column: a header with or without its unit, e.g. ``"GHI"`` or ``"GHI (W/m^2)"``, ``"Wspd"``.

    Raises:
        TraceError: unreadable file, bad header line, missing column, unsupported unit, bad data.
        ValueError: ``year`` is a leap year.
    """
    _check_year(year)
    path = Path(path)
    text = _read_text(path)
    where = str(path)
    first = next(csv.reader(io.StringIO(text.splitlines()[0])), [])
    if len(first) < 4:
        raise TraceError(where, "TMY3 line 1 must hold station, name, state and UTC offset", row=1)
    offset_s = _metadata_offset_s(where, first[3].strip(), "UTC offset", 1)
    table = _read_csv(path, text, skip_lines=1)
    header, unit, scale = _find_unit_column(table, column, _TMY3_UNITS)
    date_cells = table.cells("Date (MM/DD/YYYY)")
    time_cells = table.cells("Time (HH:MM)")
    end_local_s = np.empty(len(date_cells), dtype=np.int64)
    for i, (d_cell, t_cell) in enumerate(zip(date_cells, time_cells, strict=True)):
        try:
            month_s, day_s, _ = d_cell.split("/")
            day_ordinal = date(year, int(month_s), int(day_s)).toordinal()
        except ValueError:
            raise TraceError(
                where, f"invalid date {d_cell!r}", row=table.lines[i], column="Date (MM/DD/YYYY)"
            ) from None
        try:
            hh, mm = (int(x) for x in t_cell.split(":"))
        except ValueError:
            hh, mm = -1, -1
        if not (0 <= hh <= 24 and 0 <= mm <= 59 and hh * 60 + mm <= 24 * 60):
            raise TraceError(where, f"invalid time {t_cell!r}", row=table.lines[i], column="Time (HH:MM)")
        end_local_s[i] = (day_ordinal - _EPOCH_ORDINAL) * _DAY_S + hh * _HOUR_S + mm * 60
    values = _parse_floats(table.cells(header), where, header, table.lines)
    values[values == _TMY3_MISSING] = math.nan
    return _make_trace(
        name=f"TMY3 {first[0].strip()} {column}",
        path=where,
        column=header,
        times_s=end_local_s - _HOUR_S - offset_s,
        values=values * scale,
        lines=table.lines,
        unit=unit,
        max_gap_steps=max_gap_steps,
    )


_PVGIS_UNITS: dict[str, tuple[str, float]] = {
    "T2m": ("degC", 1.0),
    "RH": ("%", 1.0),
    "G(h)": ("W/m2", 1.0),
    "Gb(n)": ("W/m2", 1.0),
    "Gd(h)": ("W/m2", 1.0),
    "IR(h)": ("W/m2", 1.0),
    "WS10m": ("m/s", 1.0),
    "WD10m": ("deg", 1.0),
    "SP": ("Pa", 1.0),
}
_PVGIS_TIME = re.compile(r"^(\d{4})(\d{2})(\d{2}):(\d{2})(\d{2})$")


def load_pvgis_tmy(
    path: str | Path, column: str = "G(h)", *, year: int = 2022, max_gap_steps: int = DEFAULT_MAX_GAP_STEPS
) -> Trace:
    """PVGIS TMY CSV: one column as a Trace.

    The data start after the ``time(UTC),...`` header and end at the first blank line (the
    legend follows). ``time(UTC)`` is ``YYYYMMDD:HHMM`` in UTC, taken as the start of the hour (PVGIS
    samples irradiance a few minutes into the hour; see the file's "Irradiance Time Offset"). Months
    come from different real years, so every date is moved to ``year`` (non-leap, default 2022).

    Args:
        column: one of T2m (degC), RH (%), G(h), Gb(n), Gd(h), IR(h) (W/m2), WS10m (m/s),
            WD10m (deg), SP (Pa).

    Raises:
        TraceError: unreadable file, no header, missing/unsupported column, bad data.
        ValueError: ``year`` is a leap year.
    """
    _check_year(year)
    path = Path(path)
    text = _read_text(path)
    where = str(path)
    lines = text.splitlines()
    header_at = next((i for i, line in enumerate(lines) if line.startswith("time(UTC)")), None)
    if header_at is None:
        raise TraceError(where, "no 'time(UTC),...' header line: not a PVGIS TMY CSV")
    table = _read_csv(path, text, skip_lines=header_at, stop=lambda row: not row or not "".join(row).strip())
    table.index(column)
    if column not in _PVGIS_UNITS:
        raise TraceError(where, f"unsupported column; supported: {', '.join(_PVGIS_UNITS)}", column=column)
    unit, scale = _PVGIS_UNITS[column]
    times_s = np.empty(len(table.rows), dtype=np.int64)
    for i, cell in enumerate(table.cells("time(UTC)")):
        match = _PVGIS_TIME.match(cell.strip())
        try:
            if match is None:
                raise ValueError(cell)
            _, mo, d, hh, mm = (int(g) for g in match.groups())
            if hh > 23 or mm > 59:
                raise ValueError(cell)
            times_s[i] = (date(year, mo, d).toordinal() - _EPOCH_ORDINAL) * _DAY_S + hh * _HOUR_S + mm * 60
        except ValueError:
            raise TraceError(
                where,
                f"invalid time {cell[:40]!r} (want YYYYMMDD:HHMM)",
                row=table.lines[i],
                column="time(UTC)",
            ) from None
    values = _parse_floats(table.cells(column), where, column, table.lines) * scale
    return _make_trace(
        name=f"PVGIS TMY {path.name} {column}",
        path=where,
        column=column,
        times_s=times_s,
        values=values,
        lines=table.lines,
        unit=unit,
        max_gap_steps=max_gap_steps,
    )


_OPEN_METEO_UNITS: dict[str, tuple[str, float]] = {
    "km/h": ("m/s", 1.0 / 3.6),
    "m/s": ("m/s", 1.0),
    "%": ("%", 1.0),
    "°C": ("degC", 1.0),
    "W/m²": ("W/m2", 1.0),
}


def load_open_meteo(path: str | Path, variable: str, *, max_gap_steps: int = DEFAULT_MAX_GAP_STEPS) -> Trace:
    """Open-Meteo historical-weather JSON (``hourly`` arrays) for one variable.

    Open-Meteo labels every hour with one fixed offset for the whole response (the offset valid
    when the request was made, ``utc_offset_seconds``; it does not follow daylight saving), so
    ``UTC = label - utc_offset_seconds``. Labels are hour starts. Units follow ``hourly_units``:
    ``cloudcover`` % , ``windspeed_10m`` km/h -> m/s, ``temperature_2m`` degC,
    ``relative_humidity_2m`` %.

    Raises:
        TraceError: unreadable or invalid JSON, missing keys or variable, unsupported unit, bad data.
    """
    path = Path(path)
    where = str(path)
    text = _read_text(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise TraceError(where, f"invalid JSON: {err.msg}", row=err.lineno) from err
    if not isinstance(doc, dict) or not isinstance(doc.get("hourly"), dict):
        raise TraceError(where, "no 'hourly' object: not an Open-Meteo response")
    hourly = doc["hourly"]
    offset = doc.get("utc_offset_seconds")
    if not isinstance(offset, int) or isinstance(offset, bool) or abs(offset) > 14 * _HOUR_S:
        raise TraceError(
            where, f"missing or invalid 'utc_offset_seconds': {offset!r}", column="utc_offset_seconds"
        )
    if variable not in hourly or variable == "time":
        present = ", ".join(repr(k) for k in hourly if k != "time")
        raise TraceError(where, f"missing variable; variables present: {present}", column=variable)
    labels = hourly.get("time")
    raw_values = hourly[variable]
    if not isinstance(labels, list) or not isinstance(raw_values, list) or len(labels) != len(raw_values):
        raise TraceError(
            where, "'hourly.time' and the variable must be lists of equal length", column=variable
        )
    units = doc.get("hourly_units", {})
    raw_unit = units.get(variable) if isinstance(units, dict) else None
    if raw_unit not in _OPEN_METEO_UNITS:
        raise TraceError(where, f"unsupported unit {raw_unit!r} in 'hourly_units'", column=variable)
    unit, scale = _OPEN_METEO_UNITS[raw_unit]
    row_numbers = list(range(1, len(labels) + 1))
    times_s = np.empty(len(labels), dtype=np.int64)
    for i, label in enumerate(labels):
        try:
            parsed = datetime.fromisoformat(label) if isinstance(label, str) else None
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is not None:
            raise TraceError(where, f"invalid local time label {str(label)[:40]!r}", row=i + 1, column="time")
        times_s[i] = _epoch_from_naive_utc(parsed) - offset
    values = np.empty(len(raw_values), dtype=np.float64)
    for i, value in enumerate(raw_values):
        if value is None:
            values[i] = math.nan
        elif isinstance(value, int | float) and not isinstance(value, bool):
            values[i] = float(value)
        else:
            raise TraceError(where, f"not a number: {str(value)[:40]!r}", row=i + 1, column=variable)
    return _make_trace(
        name=f"open-meteo {doc.get('timezone', path.parent.name)} {variable}",
        path=where,
        column=variable,
        times_s=times_s,
        values=values * scale,
        lines=row_numbers,
        unit=unit,
        max_gap_steps=max_gap_steps,
    )


_EM_TIME = "Datetime (UTC)"


def load_electricitymaps_carbon(
    path: str | Path, *, basis: Literal["lca", "direct"] = "lca", max_gap_steps: int = DEFAULT_MAX_GAP_STEPS
) -> Trace:
    """Electricity Maps hourly carbon intensity (``<ZONE>_2022_hourly.csv``) in gCO2/kWh.

    By default the life-cycle column ``Carbon Intensity gCO₂eq/kWh (LCA)`` is used: it is Electricity
    Maps' headline figure and charges wind and solar hours their (small, non-zero) manufacturing
    emissions, so renewable-following is not credited with a zero-carbon ideal. ``basis="direct"``
    selects operational emissions only (``... (direct)``). Both are consumption-based (flow-traced)
    hourly means; ``Datetime (UTC)`` is the hour start.

    Raises:
        TraceError: unreadable file, missing column, bad data.
    """
    if basis not in ("lca", "direct"):
        raise ValueError(f"basis must be 'lca' or 'direct', got {basis!r}")
    path = Path(path)
    table = _read_csv(path, _read_text(path))
    suffix = "(LCA)" if basis == "lca" else "(direct)"
    column = next((h for h in table.header if h.startswith("Carbon Intensity") and h.endswith(suffix)), None)
    if column is None:
        table.index(f"Carbon Intensity gCO₂eq/kWh {suffix}")  # raises, listing the columns
        raise AssertionError("unreachable")
    zone = table.cells("Zone Id")[0].strip() if "Zone Id" in table.header else path.stem
    return _make_trace(
        name=f"electricitymaps {zone} {basis}",
        path=table.path,
        column=column,
        times_s=_parse_iso_utc(table.cells(_EM_TIME), table.path, _EM_TIME, table.lines),
        values=_parse_floats(table.cells(column), table.path, column, table.lines),
        lines=table.lines,
        unit="gCO2/kWh",
        max_gap_steps=max_gap_steps,
    )


_PRICE_COLUMN = re.compile(r"^(?P<zone>.+)_(?P<currency>[A-Z]{3})_per_MWh$")
_PRICE_TIME = "datetime_utc_interval_start"


def load_price(path: str | Path, column: str, *, max_gap_steps: int = DEFAULT_MAX_GAP_STEPS) -> Trace:
    """One zone of the converted UTC wide price tables (``prices_*_hourly_utc_converted.csv``).

    ``datetime_utc_interval_start`` is ISO-8601 UTC. Columns are ``<ZONE>_<CUR>_per_MWh``; the unit
    becomes ``<CUR>/MWh`` in the original currency (no exchange-rate conversion). Empty cells
    before the zone's first and after its last value are outside its coverage and are trimmed
    (logged at INFO); empty cells inside follow the gap rule (the DE-LU column has a 24-hour hole
    on 2022-09-03, so it needs ``max_gap_steps=24`` to load). Prices may be negative.

    Raises:
        TraceError: unreadable file, missing column, column name without a currency, bad data.
    """
    path = Path(path)
    table = _read_csv(path, _read_text(path))
    table.index(column)
    match = _PRICE_COLUMN.match(column)
    if match is None:
        raise TraceError(
            table.path, "cannot tell the unit: price columns are named <ZONE>_<CUR>_per_MWh", column=column
        )
    values = _parse_floats(table.cells(column), table.path, column, table.lines)
    times_s = _parse_iso_utc(table.cells(_PRICE_TIME), table.path, _PRICE_TIME, table.lines)
    present = np.flatnonzero(~np.isnan(values))
    if present.size == 0:
        raise TraceError(table.path, "the column has no values", column=column)
    first, last = int(present[0]), int(present[-1]) + 1
    if first > 0 or last < values.size:
        logger.info(
            "%s: column %r covers rows %d-%d (%s to %s); %d empty row(s) outside are not part of the trace",
            table.path,
            column,
            table.lines[first],
            table.lines[last - 1],
            _iso(int(times_s[first])),
            _iso(int(times_s[last - 1])),
            values.size - (last - first),
        )
    return _make_trace(
        name=f"price {match['zone']}",
        path=table.path,
        column=column,
        times_s=times_s[first:last],
        values=values[first:last],
        lines=table.lines[first:last],
        unit=f"{match['currency']}/MWh",
        max_gap_steps=max_gap_steps,
    )


def load_caiso_curtailment(
    path: str | Path, column: str = "Total_Curtailment_NP15_MW", *, max_gap_steps: int = DEFAULT_MAX_GAP_STEPS
) -> Trace:
    """A Curtailed-2-Compute week vector (``vector_*_week.csv``): CAISO NP15 curtailment or price.

    ``datetime`` is the UTC hour start. ``Total_Curtailment_NP15_MW`` (hourly mean curtailed solar +
    wind power, MW) becomes W; ``LMP_NP15`` is returned in ``USD/MWh``.

    Raises:
        TraceError: unreadable file, missing or unsupported column, bad data.
    """
    path = Path(path)
    table = _read_csv(path, _read_text(path))
    table.index(column)
    if column.endswith("_MW"):
        unit, scale = "W", 1e6
    elif column.startswith("LMP"):
        unit, scale = "USD/MWh", 1.0
    else:
        raise TraceError(
            table.path, "unsupported column: want a '*_MW' power or an 'LMP*' price column", column=column
        )
    return _make_trace(
        name=f"CAISO {column}",
        path=table.path,
        column=column,
        times_s=_parse_iso_utc(table.cells("datetime"), table.path, "datetime", table.lines),
        values=_parse_floats(table.cells(column), table.path, column, table.lines) * scale,
        lines=table.lines,
        unit=unit,
        max_gap_steps=max_gap_steps,
    )


GENERIC_UNITS: dict[str, tuple[str, float]] = {
    "W": ("W", 1.0),
    "kW": ("W", 1e3),
    "MW": ("W", 1e6),
    "W/m2": ("W/m2", 1.0),
    "fraction": ("fraction", 1.0),
    "%": ("%", 1.0),
    "m/s": ("m/s", 1.0),
    "km/h": ("m/s", 1.0 / 3.6),
    "gCO2/kWh": ("gCO2/kWh", 1.0),
}
"""Units :func:`load_generic_csv` accepts, with the SI unit and factor they convert to
(``<CUR>/MWh`` prices are accepted too and kept as they are)."""

_ENERGY_UNITS = frozenset({"Wh", "kWh", "MWh", "J", "kJ", "MJ"})


def _localise(
    naive: datetime, zone: ZoneInfo, previous: datetime | None, in_repeat: bool
) -> tuple[int | None, bool]:
    """UTC epoch of a naive local time, or None if it does not exist; tracks the repeated DST hour.

    A label that does not move forward marks the start of the repeated hour after a fall-back; it
    and the following ambiguous labels take the second occurrence (``fold=1``).
    """
    first = naive.replace(tzinfo=zone, fold=0)
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive:
        return None, in_repeat
    ambiguous = first.utcoffset() != naive.replace(tzinfo=zone, fold=1).utcoffset()
    if previous is not None and naive <= previous and ambiguous:
        in_repeat = True
    elif not ambiguous:
        in_repeat = False
    chosen = naive.replace(tzinfo=zone, fold=1) if in_repeat and ambiguous else first
    return _epoch_from_aware(chosen), in_repeat


def load_generic_csv(
    path: str | Path,
    *,
    time_column: str,
    value_column: str,
    unit: str,
    timezone: str = "UTC",
    scale: float = 1.0,
    time_format: str | None = None,
    max_gap_steps: int = DEFAULT_MAX_GAP_STEPS,
) -> Trace:
    """A user's own CSV: one time column (interval starts) and one value column.

    Args:
        time_column: ISO-8601 timestamps with or without an offset (``2022-06-01T12:00:00Z``,
            ``2022-06-01 14:00+02:00``, ``2022-06-01 14:00``), or ``time_format`` for strptime.
        value_column: the numbers.
        unit: the file's unit, one of W, kW, MW, W/m2, fraction, %, m/s, km/h, gCO2/kWh or
            <CUR>/MWh (3 upper-case letters, e.g. EUR/MWh). kW and MW become W, km/h becomes m/s.
            Energies (kWh ...) are refused: convert them to mean power per interval first.
        timezone: IANA zone for timestamps without an offset (e.g. ``Europe/Berlin``). Local times
            that fall in a daylight-saving gap are errors; in the repeated fall-back hour, labels
            that step backwards are read as the second occurrence.
        scale: extra factor applied after the unit conversion (e.g. 1/peak_w to normalise).
        time_format: optional :meth:`datetime.strptime` format.

    Raises:
        TraceError: unreadable file, missing columns, unknown unit or time zone, bad data.
    """
    path = Path(path)
    where = str(path)
    if unit in GENERIC_UNITS:
        si_unit, factor = GENERIC_UNITS[unit]
    elif _PRICE_UNIT.match(unit):
        si_unit, factor = unit, 1.0
    elif unit in _ENERGY_UNITS:
        raise TraceError(
            where,
            f"unit {unit!r} is an energy; convert to mean power per interval (W, kW, MW)",
            column=value_column,
        )
    else:
        raise TraceError(
            where,
            f"unknown unit {unit!r}; accepted: {', '.join(GENERIC_UNITS)}, <CUR>/MWh",
            column=value_column,
        )
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise TraceError(
            where, f"unknown time zone {timezone!r} (want an IANA name such as 'Europe/Berlin')"
        ) from None
    table = _read_csv(path, _read_text(path))
    table.index(value_column)
    cells = table.cells(time_column)
    times_s = np.empty(len(cells), dtype=np.int64)
    previous: datetime | None = None
    in_repeat = False
    saw_aware = saw_naive = False
    for i, cell in enumerate(cells):
        try:
            parsed = (
                datetime.strptime(cell.strip(), time_format)
                if time_format
                else datetime.fromisoformat(cell.strip())
            )
        except ValueError:
            want = f"format {time_format!r}" if time_format else "ISO-8601"
            raise TraceError(
                where, f"not a time in {want}: {cell[:40]!r}", row=table.lines[i], column=time_column
            ) from None
        if parsed.tzinfo is not None:
            saw_aware = True
            times_s[i] = _epoch_from_aware(parsed)
        else:
            saw_naive = True
            epoch, in_repeat = _localise(parsed, zone, previous, in_repeat)
            if epoch is None:
                raise TraceError(
                    where,
                    f"local time {parsed.isoformat()} does not exist in {timezone} (daylight-saving gap)",
                    row=table.lines[i],
                    column=time_column,
                )
            times_s[i] = epoch
            previous = parsed
        if saw_aware and saw_naive:
            raise TraceError(
                where, "mixes times with and without a UTC offset", row=table.lines[i], column=time_column
            )
    values = _parse_floats(table.cells(value_column), where, value_column, table.lines) * (factor * scale)
    return _make_trace(
        name=f"{path.stem} {value_column}",
        path=where,
        column=value_column,
        times_s=times_s,
        values=values,
        lines=table.lines,
        unit=si_unit,
        max_gap_steps=max_gap_steps,
    )


# --------------------------------------------------------------------------------------------
# Operations on traces
# --------------------------------------------------------------------------------------------

ResampleMethod = Literal["mean", "hold", "linear"]


def resample(
    trace: Trace, start_s: float, step_s: float, n_steps: int, *, method: ResampleMethod = "mean"
) -> FloatArray:
    """Values on a regular grid of ``n_steps`` intervals starting at ``start_s``, each ``step_s`` long.

    Methods:
        ``mean``: time-weighted mean of the trace (a step function) over each grid interval;
            conserves energy: ``sum(out) * step_s`` equals the trace's integral over the grid.
        ``hold``: the trace value in force at each grid interval's start.
        ``linear``: linear interpolation between the trace samples (placed at their interval
            starts) at each grid start; the last sample is held to the end of the trace.

    The trace covers ``[times_s[0], times_s[-1] + trace.step_s)``; spacings above 1.5 trace
    steps are holes. Vectorised: O((n_steps + len(trace)) log len(trace)).

    Returns:
        float64 array of length ``n_steps``, in the trace's unit.

    Raises:
        TraceError: the grid reaches outside the trace or into a hole (says which part is missing).
        ValueError: ``step_s <= 0``, ``n_steps < 0`` or an unknown method.
    """
    if step_s <= 0 or n_steps < 0:
        raise ValueError(f"need step_s > 0 and n_steps >= 0, got step_s={step_s}, n_steps={n_steps}")
    if method not in ("mean", "hold", "linear"):
        raise ValueError(f"method must be 'mean', 'hold' or 'linear', got {method!r}")
    if n_steps == 0:
        return np.empty(0, dtype=np.float64)
    times = trace.times_s
    trace_step = trace.step_s
    trace_end = float(times[-1]) + trace_step
    grid_end = start_s + n_steps * step_s
    if start_s < times[0]:
        raise TraceError(
            trace.source,
            f"grid {_iso(start_s)}..{_iso(grid_end)} starts before the trace: "
            f"{_iso(start_s)}..{_iso(int(times[0]))} ({int(times[0]) - start_s:g} s) is missing",
        )
    if grid_end > trace_end:
        raise TraceError(
            trace.source,
            f"grid {_iso(start_s)}..{_iso(grid_end)} ends after the trace: "
            f"{_iso(trace_end)}..{_iso(grid_end)} ({grid_end - trace_end:g} s) is missing",
        )
    diffs = np.diff(times)
    holes = np.flatnonzero(diffs > 1.5 * trace_step)
    if holes.size:
        hole_start = times[holes] + trace_step
        hole_end = times[holes + 1]
        hit = np.flatnonzero((hole_start < grid_end) & (hole_end > start_s))
        if hit.size:
            k = int(hit[0])
            raise TraceError(
                trace.source,
                f"grid {_iso(start_s)}..{_iso(grid_end)} crosses a hole in the trace: "
                f"{_iso(float(hole_start[k]))}..{_iso(int(hole_end[k]))} is missing",
            )

    origin = int(times[0])
    grid = (start_s - origin) + step_s * np.arange(n_steps, dtype=np.float64)
    knots = (times - origin).astype(np.float64)
    values = trace.values
    if method == "hold":
        index = np.searchsorted(knots, grid, side="right") - 1
        return values[index].astype(np.float64)
    if method == "linear":
        interpolated: FloatArray = np.interp(grid, knots, values).astype(np.float64)
        return interpolated
    edges = np.append(knots, trace_end - origin)
    cumulative = np.concatenate(([0.0], np.cumsum(values * np.diff(edges))))
    integral: FloatArray = np.interp(np.append(grid, grid[-1] + step_s), edges, cumulative)
    means: FloatArray = np.diff(integral) / step_s
    return means


def shift(trace: Trace, offset_s: int) -> Trace:
    """The same trace moved ``offset_s`` seconds later (negative: earlier).

    Used to move a solar profile to another longitude: +240 s per degree further west.
    """
    return Trace(
        name=trace.name,
        times_s=trace.times_s + np.int64(offset_s),
        values=trace.values,
        unit=trace.unit,
        source=trace.source,
    )


def window_lengths_s(mask: npt.ArrayLike, step_s: float) -> FloatArray:
    """Lengths in seconds of the maximal runs of True in a 1-D boolean mask (renewable windows).

    Example: ``window_lengths_s([1, 1, 0, 1], 300)`` -> ``[600., 300.]``.
    """
    flags = np.asarray(mask, dtype=bool)
    if flags.ndim != 1:
        raise ValueError(f"mask must be 1-D, got shape {flags.shape}")
    _, lengths = _runs(flags)
    return lengths.astype(np.float64) * float(step_s)
