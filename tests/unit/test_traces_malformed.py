"""Malformed and hostile trace files: every problem is a TraceError naming the file, row and column."""

from __future__ import annotations

import gzip
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from greenferry.errors import TraceError
from greenferry.sim import traces
from greenferry.sim.traces import (
    Trace,
    load_electricitymaps_carbon,
    load_generic_csv,
    load_open_meteo,
    load_price,
    load_psm3,
    load_pvgis_tmy,
    load_solcast_actual,
    load_solcast_forecast,
    load_tmy3,
)

LOGGER = "greenferry.sim.traces"


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def hourly_csv(values: list[str], *, header: str = "time,power_kw", start_hour: int = 0) -> str:
    rows = [header] + [f"2022-06-01T{start_hour + i:02d}:00:00Z,{v}" for i, v in enumerate(values)]
    return "\n".join(rows) + "\n"


def generic(path: Path, **kwargs: object) -> Trace:
    options: dict[str, object] = {"time_column": "time", "value_column": "power_kw", "unit": "kW"}
    options.update(kwargs)
    return load_generic_csv(path, **options)  # type: ignore[arg-type]


# --- the generic loader: happy paths ------------------------------------------------------------


def test_generic_csv_converts_units_offsets_and_gzip(tmp_path: Path) -> None:
    path = tmp_path / "site.csv.gz"
    path.write_bytes(gzip.compress(hourly_csv(["1.5", "2", "0"]).encode()))
    trace = load_generic_csv(path, time_column="time", value_column="power_kw", unit="kW")
    assert trace.unit == "W"
    assert trace.values.tolist() == [1500.0, 2000.0, 0.0]
    assert trace.times_s[0] == utc("2022-06-01T00:00:00")
    offset = write(tmp_path, "offset.csv", "t,v\n2022-06-01 14:00+02:00,36\n2022-06-01 15:00+02:00,18\n")
    wind = load_generic_csv(offset, time_column="t", value_column="v", unit="km/h")
    assert wind.unit == "m/s"
    assert wind.values.tolist() == pytest.approx([10.0, 5.0])
    assert wind.times_s[0] == utc("2022-06-01T12:00:00")
    price = load_generic_csv(offset, time_column="t", value_column="v", unit="EUR/MWh", scale=2.0)
    assert price.unit == "EUR/MWh"
    assert price.values.tolist() == [72.0, 36.0]


def test_generic_csv_localises_naive_times_across_daylight_saving(tmp_path: Path) -> None:
    labels = ["00:00", "01:00", "02:00", "02:00", "03:00"]  # 2022-10-30: 02:00 happens twice in Berlin
    text = "time,v\n" + "".join(f"2022-10-30 {label},{i}\n" for i, label in enumerate(labels))
    trace = load_generic_csv(
        write(tmp_path, "fall.csv", text),
        time_column="time",
        value_column="v",
        unit="W",
        timezone="Europe/Berlin",
    )
    assert trace.times_s.tolist() == [utc("2022-10-29T22:00:00") + 3600 * i for i in range(5)]
    spring = "time,v\n2022-03-27 01:00,1\n2022-03-27 02:30,1\n2022-03-27 03:00,1\n"
    with pytest.raises(
        TraceError, match=r"spring\.csv, row 3, column 'time': local time 2022-03-27T02:30:00 does not"
    ):
        load_generic_csv(
            write(tmp_path, "spring.csv", spring),
            time_column="time",
            value_column="v",
            unit="W",
            timezone="Europe/Berlin",
        )


def test_generic_csv_with_strptime_format(tmp_path: Path) -> None:
    path = write(tmp_path, "fmt.csv", "when;x\n")
    path.write_text("when,x\n01/06/2022 10:00,0.5\n01/06/2022 11:00,0.25\n")
    trace = load_generic_csv(
        path,
        time_column="when",
        value_column="x",
        unit="fraction",
        time_format="%d/%m/%Y %H:%M",
        timezone="Asia/Tokyo",
    )
    assert trace.times_s[0] == utc("2022-06-01T01:00:00")
    with pytest.raises(TraceError, match=r"fmt\.csv, row 2, column 'when': not a time in format"):
        load_generic_csv(path, time_column="when", value_column="x", unit="fraction", time_format="%Y")


# --- structural problems --------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"nothere\.csv: file not found"):
        generic(tmp_path / "nothere.csv")


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"empty\.csv: the file is empty"):
        generic(write(tmp_path, "empty.csv", ""))
    with pytest.raises(TraceError, match=r"header\.csv: needs at least 2 data rows, found 0"):
        generic(write(tmp_path, "header.csv", "time,power_kw\n"))


def test_binary_garbage(tmp_path: Path) -> None:
    path = tmp_path / "garbage.csv"
    path.write_bytes(b"time,power_kw\n\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    with pytest.raises(TraceError, match=r"garbage\.csv, row 4: binary data"):
        generic(path)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"time,power_kw\n2022-06-01T00:00Z,\xe9\n")
    with pytest.raises(TraceError, match=r"latin\.csv, row 2: not UTF-8"):
        generic(latin)
    fake_gzip = tmp_path / "broken.csv.gz"
    fake_gzip.write_bytes(b"\x1f\x8b\x08\x00garbage-not-deflate")
    with pytest.raises(TraceError, match=r"broken\.csv\.gz: corrupt gzip data"):
        generic(fake_gzip)


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(traces, "MAX_TEXT_BYTES", 1000)
    path = tmp_path / "bomb.csv.gz"
    path.write_bytes(gzip.compress(hourly_csv(["1"] * 5).encode() + b"0" * 5000))
    with pytest.raises(TraceError, match=r"bomb\.csv\.gz: decompresses to more than 1000 bytes"):
        generic(path)


def test_missing_column_lists_the_columns_present(tmp_path: Path) -> None:
    path = write(tmp_path, "cols.csv", hourly_csv(["1", "2"], header="time,power"))
    with pytest.raises(
        TraceError, match=r"cols\.csv, column 'power_kw': missing column; columns present: 'time', 'power'"
    ):
        generic(path)
    with pytest.raises(TraceError, match=r"column 'Paris': unknown city; cities present: 'Berlin'"):
        load_solcast_actual(
            write(tmp_path, "s.csv", "datetime,Berlin\n2022-01-01 00:05:00,0\n2022-01-01 00:10:00,0\n"),
            "Paris",
        )


def test_short_row(tmp_path: Path) -> None:
    path = write(tmp_path, "short.csv", "time,a,power_kw\n2022-06-01T00:00Z,1,2\n2022-06-01T01:00Z,1\n")
    with pytest.raises(TraceError, match=r"short\.csv, row 3, column 'power_kw': row has 2 fields"):
        generic(path)


def test_non_numeric_cell(tmp_path: Path) -> None:
    path = write(tmp_path, "text.csv", hourly_csv(["1", "2", "n/a", "4"]))
    with pytest.raises(TraceError, match=r"text\.csv, row 4, column 'power_kw': not a number: 'n/a'"):
        generic(path)


def test_unparsable_time(tmp_path: Path) -> None:
    path = write(tmp_path, "time.csv", "time,power_kw\n2022-06-01T00:00Z,1\nyesterday,2\n")
    with pytest.raises(
        TraceError, match=r"time\.csv, row 3, column 'time': not a time in ISO-8601: 'yesterday'"
    ):
        generic(path)


def test_duplicate_timestamps(tmp_path: Path) -> None:
    text = "time,power_kw\n2022-06-01T00:00Z,1\n2022-06-01T01:00Z,2\n2022-06-01T01:00Z,3\n"
    with pytest.raises(TraceError, match=r"dup\.csv, row 4: duplicate timestamp: 2022-06-01T01:00:00Z"):
        generic(write(tmp_path, "dup.csv", text))


def test_unordered_timestamps(tmp_path: Path) -> None:
    text = "time,power_kw\n2022-06-01T00:00Z,1\n2022-06-01T02:00Z,2\n2022-06-01T01:00Z,3\n"
    with pytest.raises(TraceError, match=r"order\.csv, row 4: timestamps out of order"):
        generic(write(tmp_path, "order.csv", text))


def test_mixed_naive_and_aware_times(tmp_path: Path) -> None:
    text = "time,power_kw\n2022-06-01T00:00Z,1\n2022-06-01T01:00,2\n"
    with pytest.raises(TraceError, match=r"mixed\.csv, row 3, column 'time': mixes times"):
        generic(write(tmp_path, "mixed.csv", text))


def test_irregular_gap(tmp_path: Path) -> None:
    text = "time,power_kw\n" + "".join(f"2022-06-01T{t}Z,1\n" for t in ("00:00", "01:00", "02:00", "04:30"))
    with pytest.raises(TraceError, match=r"gap\.csv, row 5: irregular spacing: 9000 s"):
        generic(write(tmp_path, "gap.csv", text))


def test_unknown_time_zone(tmp_path: Path) -> None:
    path = write(tmp_path, "tz.csv", hourly_csv(["1", "2"]))
    with pytest.raises(TraceError, match=r"tz\.csv: unknown time zone 'Mars/Olympus_Mons'"):
        generic(path, timezone="Mars/Olympus_Mons")
    with pytest.raises(TraceError, match=r"tz\.csv: unknown time zone '../etc/passwd'"):
        generic(path, timezone="../etc/passwd")


def test_unknown_and_energy_units(tmp_path: Path) -> None:
    path = write(tmp_path, "unit.csv", hourly_csv(["1", "2"]))
    with pytest.raises(
        TraceError, match=r"unit\.csv, column 'power_kw': unknown unit 'furlongs'; accepted: W, kW"
    ):
        generic(path, unit="furlongs")
    with pytest.raises(TraceError, match=r"unit 'kWh' is an energy"):
        generic(path, unit="kWh")


def test_negative_power(tmp_path: Path) -> None:
    path = write(tmp_path, "neg.csv", hourly_csv(["1", "-2", "3"]))
    with pytest.raises(TraceError, match=r"neg\.csv, row 3, column 'power_kw': negative value -2000 W"):
        generic(path)
    # Prices may be negative.
    assert generic(path, unit="USD/MWh").values.tolist() == [1.0, -2.0, 3.0]


def test_fraction_above_one(tmp_path: Path) -> None:
    text = "datetime,Berlin\n2022-01-01 00:05:00,0.5\n2022-01-01 00:10:00,1.2\n"
    with pytest.raises(TraceError, match=r"frac\.csv, row 3, column 'Berlin': value 1\.2 is above 1"):
        load_solcast_actual(write(tmp_path, "frac.csv", text), "Berlin")


# --- missing values: short runs repaired with a warning, long runs rejected -----------------------


def test_short_nan_run_is_interpolated_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, "short_gap.csv", hourly_csv(["1", "nan", "", "4", "5"]))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        trace = generic(path)
    assert trace.values.tolist() == [1000.0, 2000.0, 3000.0, 4000.0, 5000.0]
    assert "short_gap.csv" in caplog.text
    assert "'power_kw'" in caplog.text
    assert "rows 3-4" in caplog.text
    assert caplog.records[0].levelno == logging.WARNING


def test_inf_is_missing_too(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        trace = generic(write(tmp_path, "inf.csv", hourly_csv(["1", "inf", "3"])))
    assert trace.values.tolist() == [1000.0, 2000.0, 3000.0]
    assert "row 3" in caplog.text


def test_long_nan_run_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "long_gap.csv", hourly_csv(["1", "nan", "nan", "nan", "nan", "6"]))
    with pytest.raises(
        TraceError, match=r"long_gap\.csv, row 3, column 'power_kw': 4 consecutive missing values"
    ):
        generic(path)
    assert generic(path, max_gap_steps=4).values[3] == pytest.approx(4000)


def test_missing_value_at_the_edges_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"edge\.csv, row 2, column 'power_kw': missing values at the start"):
        generic(write(tmp_path, "edge.csv", hourly_csv(["", "1", "2"])))
    with pytest.raises(TraceError, match=r"edge2\.csv, row 4, column 'power_kw': missing values at the end"):
        generic(write(tmp_path, "edge2.csv", hourly_csv(["1", "2", ""])))


def test_missing_timestamps_are_gaps(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = "time,power_kw\n" + "".join(f"2022-06-01T{h:02d}:00Z,{h}\n" for h in (0, 1, 2, 4, 5))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        trace = generic(write(tmp_path, "hole.csv", text))
    assert trace.values.tolist() == [0.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0]
    assert "1 missing timestamp(s) from 2022-06-01T03:00:00Z (after row 4)" in caplog.text
    long_text = "time,power_kw\n" + "".join(f"2022-06-01T{h:02d}:00Z,1\n" for h in (0, 1, 2, 9, 10))
    with pytest.raises(
        TraceError, match=r"holes\.csv, row 4, column 'power_kw': 6 consecutive missing values"
    ):
        generic(write(tmp_path, "holes.csv", long_text))


def test_a_huge_gap_is_rejected_without_building_it(tmp_path: Path) -> None:
    text = (
        "time,power_kw\n"
        + "".join(f"2022-06-01T00:00:{s:02d}Z,1\n" for s in range(5))
        + "9999-01-01T00:00Z,1\n"
    )
    with pytest.raises(
        TraceError, match=r"huge\.csv, row 6, column 'power_kw': \d+ consecutive missing values"
    ):
        generic(write(tmp_path, "huge.csv", text))


# --- format-specific loaders --------------------------------------------------------------------


def open_meteo_doc(values: list[object], **overrides: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "utc_offset_seconds": 3600,
        "timezone": "Europe/Berlin",
        "hourly_units": {"time": "iso8601", "windspeed_10m": "km/h"},
        "hourly": {"time": [f"2022-01-01T{h:02d}:00" for h in range(len(values))], "windspeed_10m": values},
    }
    doc.update(overrides)
    return doc


def test_open_meteo_problems(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ok = write(tmp_path, "om.json", json.dumps(open_meteo_doc([3.6, None, 7.2])))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        trace = load_open_meteo(ok, "windspeed_10m")
    assert trace.values.tolist() == pytest.approx([1.0, 1.5, 2.0])
    assert "om.json" in caplog.text
    assert trace.times_s[0] == utc("2021-12-31T23:00:00")
    with pytest.raises(
        TraceError, match=r"om\.json, column 'gusts': missing variable; variables present: 'windspeed_10m'"
    ):
        load_open_meteo(ok, "gusts")
    bad = write(tmp_path, "bad.json", '{"hourly": [1, 2,')
    with pytest.raises(TraceError, match=r"bad\.json, row 1: invalid JSON"):
        load_open_meteo(bad, "windspeed_10m")
    text = write(tmp_path, "text.json", json.dumps(open_meteo_doc([1, "fast", 2])))
    with pytest.raises(TraceError, match=r"text\.json, row 2, column 'windspeed_10m': not a number: 'fast'"):
        load_open_meteo(text, "windspeed_10m")
    no_offset = write(tmp_path, "nooff.json", json.dumps(open_meteo_doc([1, 2], utc_offset_seconds="CET")))
    with pytest.raises(TraceError, match=r"nooff\.json, column 'utc_offset_seconds': missing or invalid"):
        load_open_meteo(no_offset, "windspeed_10m")
    unit = write(
        tmp_path, "unit.json", json.dumps(open_meteo_doc([1, 2], hourly_units={"windspeed_10m": "kn"}))
    )
    with pytest.raises(TraceError, match=r"unit\.json, column 'windspeed_10m': unsupported unit 'kn'"):
        load_open_meteo(unit, "windspeed_10m")
    negative = write(tmp_path, "neg.json", json.dumps(open_meteo_doc([1, -2, 3])))
    with pytest.raises(TraceError, match=r"neg\.json, row 2, column 'windspeed_10m': negative value"):
        load_open_meteo(negative, "windspeed_10m")


def test_psm3_bad_time_zone_and_missing_column(tmp_path: Path) -> None:
    header = "Source,Location ID,Time Zone,GHI Units\nNSRDB,1,{tz},w/m2\nYear,Month,Day,Hour,Minute,GHI\n"
    rows = "2017,1,1,0,0,0\n2017,1,1,0,30,5\n"
    with pytest.raises(
        TraceError, match=r"psm\.csv, row 2: metadata 'Time Zone' 'Mountain' is not a UTC offset"
    ):
        load_psm3(write(tmp_path, "psm.csv", header.format(tz="Mountain") + rows))
    with pytest.raises(TraceError, match=r"psm2\.csv, column 'DNI': missing column; columns present: 'Year'"):
        load_psm3(write(tmp_path, "psm2.csv", header.format(tz="-7") + rows), "DNI")
    with pytest.raises(TraceError, match=r"psm3\.csv, row 4, column 'Day': invalid date 2017-2-30"):
        load_psm3(write(tmp_path, "psm3.csv", header.format(tz="-7") + "2017,2,30,0,0,0\n2017,3,1,0,30,5\n"))
    trace = load_psm3(write(tmp_path, "psm4.csv", header.format(tz="-7") + rows))
    assert trace.times_s[0] == utc("2017-01-01T07:00:00")


def test_tmy3_bad_rows(tmp_path: Path) -> None:
    head = (
        '723170,"GREENSBORO",NC,-5.0,36.1,-79.95,273\nDate (MM/DD/YYYY),Time (HH:MM),GHI (W/m^2),Wspd (m/s)\n'
    )
    with pytest.raises(TraceError, match=r"tmy\.csv, row 4, column 'Time \(HH:MM\)': invalid time '25:00'"):
        load_tmy3(write(tmp_path, "tmy.csv", head + "01/01/1988,01:00,0,1\n01/01/1988,25:00,0,1\n"))
    missing = head + "01/01/1988,01:00,0,1\n01/01/1988,02:00,0,-9900\n01/01/1988,03:00,0,3\n"
    trace = load_tmy3(write(tmp_path, "tmy2.csv", missing), "Wspd")
    assert trace.values.tolist() == [1.0, 2.0, 3.0]  # -9900 is TMY3's missing marker
    with pytest.raises(TraceError, match=r"tmy3\.csv, row 1: UTC offset 'EST' is not a UTC offset"):
        load_tmy3(
            write(
                tmp_path,
                "tmy3.csv",
                head.replace("-5.0", "EST") + "01/01/1988,01:00,0,1\n01/01/1988,02:00,0,1\n",
            )
        )


def test_pvgis_without_header(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"pvgis\.csv: no 'time\(UTC\),\.\.\.' header line"):
        load_pvgis_tmy(write(tmp_path, "pvgis.csv", "Latitude: 45\nsomething else\n"))
    text = "time(UTC),G(h)\n20180101:0000,0\n20180101:0100,-3\n\nG(h): legend\n"
    with pytest.raises(TraceError, match=r"pvgis2\.csv, row 3, column 'G\(h\)': negative value -3 W/m2"):
        load_pvgis_tmy(write(tmp_path, "pvgis2.csv", text))


def test_electricitymaps_and_price_columns(tmp_path: Path) -> None:
    em = write(
        tmp_path,
        "em.csv",
        "Datetime (UTC),Zone Id,Carbon\n2022-01-01 00:00:00,X,1\n2022-01-01 01:00:00,X,2\n",
    )
    with pytest.raises(
        TraceError, match=r"em\.csv, column 'Carbon Intensity gCO₂eq/kWh \(LCA\)': missing column"
    ):
        load_electricitymaps_carbon(em)
    price = write(
        tmp_path,
        "p.csv",
        "datetime_utc_interval_start,DE_price\n2022-01-01T00:00:00Z,1\n2022-01-01T01:00:00Z,2\n",
    )
    with pytest.raises(TraceError, match=r"p\.csv, column 'DE_price': cannot tell the unit"):
        load_price(price, "DE_price")


def test_solcast_forecast_rejects_duplicates_and_disorder(tmp_path: Path) -> None:
    head = "datetime,period_end,Berlin\n"
    dup = head + "2022-06-08 00:00:00,2022-06-08 00:05:00,0.1\n2022-06-08 00:00:00,2022-06-08 00:05:00,0.2\n"
    with pytest.raises(TraceError, match=r"fc\.csv, row 3: duplicate \(issue, target\) row"):
        load_solcast_forecast(write(tmp_path, "fc.csv", dup), "Berlin")
    back = head + "2022-06-08 00:05:00,2022-06-08 00:10:00,0.1\n2022-06-08 00:00:00,2022-06-08 00:05:00,0.2\n"
    with pytest.raises(TraceError, match=r"fc2\.csv, row 3: rows out of order"):
        load_solcast_forecast(write(tmp_path, "fc2.csv", back), "Berlin")
    early = (
        head + "2022-06-08 00:10:00,2022-06-08 00:05:00,0.1\n2022-06-08 00:10:00,2022-06-08 00:15:00,0.2\n"
    )
    with pytest.raises(
        TraceError, match=r"fc3\.csv, row 2, column 'period_end': target period ends at or before"
    ):
        load_solcast_forecast(write(tmp_path, "fc3.csv", early), "Berlin")


def test_hostile_inputs_never_escape_as_other_exceptions(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    loaders = [
        generic,
        lambda p: load_open_meteo(p, "windspeed_10m"),
        load_psm3,
        load_tmy3,
        load_pvgis_tmy,
        load_electricitymaps_carbon,
        lambda p: load_solcast_actual(p, "Berlin"),
        lambda p: load_solcast_forecast(p, "Berlin"),
        lambda p: load_price(p, "X_EUR_per_MWh"),
    ]
    blobs = [
        rng.bytes(256),
        b"\x1f\x8b" + rng.bytes(64),
        b"{}",
        b"[]",
        b",,,\n,,,\n,,,\n",
        b'"unterminated\n',
    ]
    for i, blob in enumerate(blobs):
        path = tmp_path / f"hostile{i}.csv"
        path.write_bytes(blob)
        for load in loaders:
            with pytest.raises(TraceError, match=rf"hostile{i}\.csv"):
                load(path)
