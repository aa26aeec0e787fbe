"""OpenADR 2.0b events (openleadr's dicts) into the DR model: the documentation examples, every signal
mapping, merging signals, cancellation, and malformed or hostile events (each a PayloadError naming where)."""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openleadr.messaging import parse_message

from greenferry.core.dr import MAX_INTERVALS, DemandResponseEvent, DrEventBook, DrPayload
from greenferry.core.openadr2b import MAX_SIGNALS, is_test_event, parse_openleadr_event
from greenferry.errors import PayloadError

EXAMPLES = Path("/work/shared/data/dr-events/openadr2b_openleadr_docs")
needs_examples = pytest.mark.skipif(not EXAMPLES.is_dir(), reason=f"{EXAMPLES} is not here")

T0 = dt.datetime(2026, 12, 2, 17, 0, tzinfo=dt.UTC)
T0_S = T0.timestamp()
MIN = dt.timedelta(minutes=1)


def signal(
    name: str = "SIMPLE",
    signal_type: str = "level",
    payloads: tuple[float, ...] = (1.0, 2.0, 0.0),
    *,
    start: dt.datetime | None = T0,
    step: dt.timedelta = 15 * MIN,
    measurement: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An event signal with one interval of ``step`` per payload, back to back from ``start``."""
    intervals = []
    for index, value in enumerate(payloads):
        interval: dict[str, Any] = {"duration": step, "uid": index, "signal_payload": value}
        if start is not None:
            interval["dtstart"] = start + index * step
        intervals.append(interval)
    out: dict[str, Any] = {
        "signal_name": name,
        "signal_type": signal_type,
        "signal_id": f"sig-{name}",
        "intervals": intervals,
    }
    if measurement is not None:
        out["measurement"] = measurement
    return out


def event(*signals: dict[str, Any], duration: dt.timedelta = 45 * MIN, **descriptor: Any) -> dict[str, Any]:
    """An openleadr event dict (as on_event receives it) with the given signals (default: one SIMPLE)."""
    base_descriptor: dict[str, Any] = {
        "event_id": "ev-1",
        "modification_number": 0,
        "modification_date_time": T0 - 60 * MIN,
        "priority": 1,
        "market_context": "http://MarketContext1",
        "created_date_time": T0 - 60 * MIN,
        "event_status": "far",
        "test_event": False,
    }
    base_descriptor.update(descriptor)
    return {
        "event_descriptor": base_descriptor,
        "active_period": {"dtstart": T0, "duration": duration},
        "event_signals": list(signals) or [signal()],
        "targets": [{"ven_id": "ven-1"}],
        "response_required": "always",
    }


def refused(obj: object) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        parse_openleadr_event(obj)
    return caught.value


POWER_REAL_KW = {"name": "powerReal", "description": "RealPower", "unit": "W", "scale": "k"}


# --- the openleadr documentation examples -------------------------------------------------------------------


def _example_event() -> dict[str, Any]:
    message = json.loads((EXAMPLES / "oadrDistributeEvent_1.openleadr.json").read_text())
    assert message["message_type"] == "oadrDistributeEvent"
    (raw,) = message["payload"]["events"]
    return dict(raw)


@needs_examples
def test_the_distribute_event_example_converts_to_the_model() -> None:
    parsed = parse_openleadr_event(_example_event())
    start_s = dt.datetime(2020, 12, 3, 14, 23, 7, 606894, tzinfo=dt.UTC).timestamp()
    assert parsed.id == "541c76cb-36db-4ece-bf06-1ec80d06aa5d"
    assert parsed.program_id == "http://MarketContext1"
    assert parsed.event_name == "This is an event"
    assert parsed.modification_number == 1
    assert parsed.priority == 1
    assert parsed.modified_s == pytest.approx(start_s - 60.0)
    assert not parsed.cancelled
    # x-loadControlCapacity 8..20: above 1, so read as percent of capacity -> OLS fractions.
    assert [i.payloads for i in parsed.intervals] == [
        (DrPayload("OLS", (v,)),) for v in (0.08, 0.10, 0.12, 0.14, 0.16, 0.18, 0.20, 0.10, 0.20)
    ]
    # Intervals without dtstart follow each other from the active period's start: 9 x 60 s = its 540 s.
    assert parsed.start_s == pytest.approx(start_s)
    assert [i.duration_s for i in parsed.intervals] == [60.0] * 9
    for before, after in zip(parsed.intervals, parsed.intervals[1:], strict=False):
        assert after.start_s == before.end_s
    assert parsed.end_s == pytest.approx(start_s + 540.0)
    assert parsed.payloads_at(start_s + 90.0) == (DrPayload("OLS", (0.10,)),)


@needs_examples
def test_the_xml_example_as_openleadr_parses_it_gives_the_same_event() -> None:
    """openleadr's own parse (datetimes, timedeltas) and the JSON rendering (ISO strings, seconds) agree."""
    _, payload = parse_message((EXAMPLES / "oadrDistributeEvent_1.xml").read_bytes())
    (raw,) = payload["events"]
    assert isinstance(raw["active_period"]["duration"], dt.timedelta)
    assert parse_openleadr_event(raw) == parse_openleadr_event(_example_event())


@needs_examples
@pytest.mark.parametrize(
    "name",
    [
        "oadrCreatedEvent_1.openleadr.json",
        "oadrCreatedEvent_2.openleadr.json",
        "oadrRequestEvent_1.openleadr.json",
        "oadrResponse_1.openleadr.json",
        "oadrResponse_2.openleadr.json",
    ],
)
def test_the_other_example_messages_are_not_events(name: str) -> None:
    message = json.loads((EXAMPLES / name).read_text())
    err = refused(message["payload"])
    assert err.reason == "missing_field"
    assert "event_descriptor" in str(err)


@needs_examples
def test_the_example_applies_to_the_event_book_and_a_cancellation_removes_it() -> None:
    book = DrEventBook()
    raw = _example_event()
    assert book.apply(parse_openleadr_event(raw))
    cancelled = copy.deepcopy(raw)
    cancelled["event_descriptor"]["event_status"] = "cancelled"
    cancelled["event_descriptor"]["modification_number"] = 2
    assert book.apply(parse_openleadr_event(cancelled))
    assert len(book) == 0
    assert not book.apply(parse_openleadr_event(raw))  # the older version does not come back


# --- descriptor ---------------------------------------------------------------------------------------------


def test_descriptor_fields_map_onto_the_model() -> None:
    parsed = parse_openleadr_event(event(modification_number=4, priority=2, vtn_comment="evening peak"))
    assert parsed == DemandResponseEvent(
        id="ev-1",
        program_id="http://MarketContext1",
        event_name="evening peak",
        modification_number=4,
        intervals=parsed.intervals,
        priority=2,
        modified_s=T0_S - 3600.0,
        cancelled=False,
    )
    assert [(i.start_s, i.duration_s) for i in parsed.intervals] == [
        (T0_S, 900.0),
        (T0_S + 900.0, 900.0),
        (T0_S + 1800.0, 900.0),
    ]
    assert [i.payloads for i in parsed.intervals] == [(DrPayload("SIMPLE", (v,)),) for v in (1.0, 2.0, 0.0)]


def test_priority_zero_is_no_priority() -> None:
    """2.0b: priority 0 means none (the lowest); the model's None sorts after every number."""
    assert parse_openleadr_event(event(priority=0)).priority is None


def test_missing_optional_descriptor_fields_have_defaults() -> None:
    raw = event()
    for key in (
        "modification_number",
        "priority",
        "market_context",
        "modification_date_time",
        "event_status",
    ):
        del raw["event_descriptor"][key]
    parsed = parse_openleadr_event(raw)
    assert (parsed.modification_number, parsed.priority, parsed.program_id, parsed.modified_s) == (
        0,
        None,
        "",
        None,
    )


def test_times_as_iso_strings_and_durations_as_seconds_or_iso_are_the_same_event() -> None:
    as_objects = event()
    as_text = copy.deepcopy(as_objects)
    as_text["active_period"] = {"dtstart": "2026-12-02T18:00:00+01:00", "duration": "PT45M"}
    as_text["event_descriptor"]["modification_date_time"] = "2026-12-02T16:00:00Z"
    for index, interval in enumerate(as_text["event_signals"][0]["intervals"]):
        interval["dtstart"] = (T0 + index * 15 * MIN).isoformat()
        interval["duration"] = 900 if index % 2 else 900.0
    assert parse_openleadr_event(as_text) == parse_openleadr_event(as_objects)


def test_a_zero_duration_active_period_is_open_ended() -> None:
    """As openleadr treats it; the last interval of duration 0 runs to the event's end."""
    raw = event(signal(payloads=(1.0, 2.0)), duration=dt.timedelta(0))
    raw["event_signals"][0]["intervals"][-1]["duration"] = dt.timedelta(0)
    parsed = parse_openleadr_event(raw)
    assert parsed.intervals[-1].duration_s == math.inf
    assert parsed.is_active(T0_S + 10 * 365 * 86400)


def test_a_last_interval_of_duration_zero_lasts_to_the_end_of_the_active_period() -> None:
    raw = event(signal(payloads=(1.0, 2.0)), duration=60 * MIN)
    raw["event_signals"][0]["intervals"][-1]["duration"] = 0
    parsed = parse_openleadr_event(raw)
    assert parsed.end_s == T0_S + 3600.0


# --- signal mappings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "expected"),
    [
        (signal("simple", "level", (3.0,)), DrPayload("SIMPLE", (3.0,))),
        (signal("ELECTRICITY_PRICE", "price", (0.31,)), DrPayload("PRICE", (0.31,))),
        (signal("ENERGY_PRICE", "price", (-0.02,)), DrPayload("PRICE", (-0.02,))),
        (
            signal(
                "ELECTRICITY_PRICE",
                "price",
                (31.0,),
                measurement={"name": "currencyPerKWh", "unit": "EUR", "scale": "c"},
            ),
            DrPayload("PRICE", (0.31,), "EUR/kWh"),
        ),
        (signal("LOAD_DISPATCH", "setpoint", (2500.0,)), DrPayload("DISPATCH_SETPOINT", (2500.0,), "W")),
        (
            signal("LOAD_DISPATCH", "setpoint", (2.5,), measurement=POWER_REAL_KW),
            DrPayload("DISPATCH_SETPOINT", (2500.0,), "W"),
        ),
        (
            signal("LOAD_DISPATCH", "x-loadDispatchSetpoint", (1.5,), measurement={"unit": "MW"}),
            DrPayload("DISPATCH_SETPOINT", (1.5e6,), "W"),
        ),
        (
            signal("LOAD_CONTROL", "x-loadControlSetpoint", (700.0,), measurement={"unit": "W"}),
            DrPayload("DISPATCH_SETPOINT", (700.0,), "W"),
        ),
        (signal("LOAD_CONTROL", "x-loadControlCapacity", (0.5,)), DrPayload("OLS", (0.5,))),
        (signal("LOAD_CONTROL", "x-loadControlCapacity", (1.0,)), DrPayload("OLS", (1.0,))),
        (signal("LOAD_CONTROL", "x-loadControlCapacity", (40.0,)), DrPayload("OLS", (0.4,))),
        (signal("LOAD_CONTROL", "x-loadControlPercentOffset", (-20.0,)), DrPayload("OLS", (0.8,))),
        (signal("LOAD_CONTROL", "x-loadControlPercentOffset", (0.0,)), DrPayload("OLS", (1.0,))),
        (signal("LOAD_CONTROL", "x-loadControlLevelOffset", (2.0,)), DrPayload("SIMPLE", (2.0,))),
        (signal("LOAD_CONTROL", "x-loadControlLevelOffset", (7.0,)), DrPayload("SIMPLE", (3.0,))),
    ],
    ids=lambda v: v.type if isinstance(v, DrPayload) else f"{v['signal_name']}/{v['signal_type']}",
)
def test_each_supported_signal_maps_onto_a_model_payload(sig: dict[str, Any], expected: DrPayload) -> None:
    parsed = parse_openleadr_event(event(sig))
    assert parsed.intervals[0].payloads == (expected,)


def test_capacity_signal_is_percent_as_a_whole_when_any_value_is_above_one() -> None:
    parsed = parse_openleadr_event(event(signal("LOAD_CONTROL", "x-loadControlCapacity", (1.0, 50.0, 0.5))))
    assert [i.payloads[0].values[0] for i in parsed.intervals] == [0.01, 0.5, 0.005]


@pytest.mark.parametrize(
    ("sig", "reason", "detail"),
    [
        (
            signal("LOAD_CONTROL", "x-loadControlCapacity", (50.0, 150.0)),
            "bad_dr_value",
            "event_signals[0].intervals[1].signal_payload: x-loadControlCapacity 150.0 is above 100 %",
        ),
        (
            signal("LOAD_CONTROL", "x-loadControlCapacity", (-0.5,)),
            "bad_dr_value",
            "event_signals[0].intervals[0]: OLS values lie in 0..1",
        ),
        (
            signal("LOAD_CONTROL", "x-loadControlPercentOffset", (10.0,)),
            "bad_dr_value",
            "intervals[0].signal_payload: x-loadControlPercentOffset 10.0",
        ),
        (
            signal("LOAD_CONTROL", "x-loadControlPercentOffset", (-120.0,)),
            "bad_dr_value",
            "x-loadControlPercentOffset -120.0",
        ),
        (
            signal("LOAD_CONTROL", "x-loadControlLevelOffset", (1.0, -1.0)),
            "bad_dr_value",
            "intervals[1].signal_payload: x-loadControlLevelOffset -1.0",
        ),
        (
            signal("LOAD_CONTROL", "x-loadControlLevelOffset", (1.5,)),
            "bad_dr_value",
            "x-loadControlLevelOffset 1.5",
        ),
        (
            signal("LOAD_CONTROL", "x-loadControlSetpoint", (20.0,)),
            "bad_dr_value",
            "needs a power unit",
        ),
        (
            signal("LOAD_DISPATCH", "setpoint", (230.0,), measurement={"name": "voltage", "unit": "V"}),
            "bad_dr_value",
            "event_signals[0].measurement (LOAD_DISPATCH/setpoint): a setpoint in 'V' ('voltage') is not",
        ),
        (
            signal("LOAD_DISPATCH", "setpoint", (5.0,), measurement={"unit": "W", "scale": "huge"}),
            "bad_dr_value",
            "scale 'huge' is not an SI scale code",
        ),
        (
            signal("LOAD_DISPATCH", "setpoint", (1.0, -2500.0)),
            "negative_power",
            "event_signals[0].intervals[1]: DISPATCH_SETPOINT -2500.0 is negative",
        ),
        (
            signal(
                "ELECTRICITY_PRICE", "price", (1.0,), measurement={"name": "currencyPerKW", "unit": "USD"}
            ),
            "bad_dr_value",
            "'currencyPerKW' prices are not per kWh",
        ),
        (
            signal("SIMPLE", "level", (1.0, 4.0)),
            "bad_dr_value",
            "event_signals[0].intervals[1]: SIMPLE levels are 0, 1, 2 or 3, got 4.0",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 20 else None,
)
def test_values_outside_a_mapping_are_refused_naming_where(
    sig: dict[str, Any], reason: str, detail: str
) -> None:
    err = refused(event(sig))
    assert err.reason == reason
    assert detail in str(err)
    assert "event 'ev-1'" in str(err)


@pytest.mark.parametrize(
    ("name", "signal_type"),
    [
        ("BID_PRICE", "price"),
        ("DEMAND_CHARGE", "price"),
        ("ELECTRICITY_PRICE", "priceRelative"),
        ("SIMPLE", "price"),
        ("LOAD_DISPATCH", "delta"),
        ("LOAD_CONTROL", "level"),
        ("x-customSignal", "level"),
    ],
)
def test_signals_without_a_model_meaning_are_refused_as_unknown(name: str, signal_type: str) -> None:
    good = signal()
    err = refused(event(good, signal(name, signal_type, (1.0, 1.0, 1.0))))
    assert err.reason == "unknown_dr_payload"
    assert f"event 'ev-1': event_signals[1]: greenferry does not read signal '{name}'/'{signal_type}'" in str(
        err
    )


# --- several signals ----------------------------------------------------------------------------------------


def test_aligned_signals_share_intervals() -> None:
    parsed = parse_openleadr_event(event(signal(), signal("ELECTRICITY_PRICE", "price", (0.2, 0.5, 0.1))))
    assert len(parsed.intervals) == 3
    assert parsed.intervals[1].payloads == (DrPayload("SIMPLE", (2.0,)), DrPayload("PRICE", (0.5,)))


def test_signals_with_other_boundaries_split_the_intervals() -> None:
    """SIMPLE 15-minute steps and one 30-minute price: the model intervals follow both."""
    price = signal("ELECTRICITY_PRICE", "price", (0.4,), start=T0 + 10 * MIN, step=30 * MIN)
    parsed = parse_openleadr_event(event(signal(), price))
    assert [(i.start_s - T0_S, i.duration_s) for i in parsed.intervals] == [
        (0.0, 600.0),
        (600.0, 300.0),
        (900.0, 900.0),
        (1800.0, 600.0),
        (2400.0, 300.0),
    ]
    assert [tuple(p.type for p in i.payloads) for i in parsed.intervals] == [
        ("SIMPLE",),
        ("SIMPLE", "PRICE"),
        ("SIMPLE", "PRICE"),
        ("SIMPLE", "PRICE"),
        ("SIMPLE",),
    ]
    assert [i.id for i in parsed.intervals] == [0, 1, 2, 3, 4]


def test_gaps_between_intervals_are_left_out() -> None:
    sig = signal(payloads=(1.0,))
    sig["intervals"].append({"dtstart": T0 + 30 * MIN, "duration": 15 * MIN, "signal_payload": 2.0})
    parsed = parse_openleadr_event(event(sig))
    assert [(i.start_s - T0_S, i.duration_s) for i in parsed.intervals] == [(0.0, 900.0), (1800.0, 900.0)]
    assert not parsed.is_active(T0_S + 1200.0)


def test_two_signals_giving_the_same_payload_at_once_are_refused() -> None:
    err = refused(event(signal(), signal("LOAD_CONTROL", "x-loadControlLevelOffset", (1.0, 1.0, 1.0))))
    assert err.reason == "bad_schema"
    assert "event_signals[0].intervals[0].signal_payload and event_signals[1].intervals[0]" in str(err)
    assert "both give SIMPLE" in str(err)


# --- cancellation and test events ---------------------------------------------------------------------------


def test_a_cancelled_event_names_only_the_event() -> None:
    raw = event(event_status="cancelled", modification_number=3)
    raw["event_signals"] = "not read"
    parsed = parse_openleadr_event(raw)
    assert parsed.cancelled
    assert (parsed.id, parsed.modification_number, parsed.intervals) == ("ev-1", 3, ())


@pytest.mark.parametrize(
    ("flag", "expected"),
    [(False, False), (None, False), ("false", False), (True, True), ("true", True), ("drill", True)],
)
def test_test_events_are_recognised(flag: object, expected: bool) -> None:
    assert is_test_event(event(test_event=flag)) is expected


def test_is_test_event_is_false_for_what_is_not_an_event() -> None:
    assert not is_test_event([1])
    assert not is_test_event({"event_descriptor": "x"})


# --- malformed and hostile events ---------------------------------------------------------------------------


def _with(path: tuple[Any, ...], value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A valid event with the field at ``path`` set to ``value`` (a ``...`` value deletes it)."""
    obj = copy.deepcopy(base if base is not None else event())
    target: Any = obj
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return obj


SIG0 = ("event_signals", 0)
IV1 = (*SIG0, "intervals", 1)


@pytest.mark.parametrize(
    ("path", "value", "reason", "detail"),
    [
        # end before start
        (("active_period", "duration"), dt.timedelta(minutes=-5), "interval_order", "active_period.duration"),
        ((*IV1, "duration"), -60.0, "interval_order", "event_signals[0].intervals[1].duration: -60.0 s"),
        ((*IV1, "duration"), "-PT5M", "interval_order", "event_signals[0].intervals[1].duration"),
        ((*IV1, "dtstart"), T0, "interval_order", "event_signals[0].intervals[1] starts before intervals[0]"),
        ((*IV1, "dtstart"), T0 - MIN, "interval_order", "intervals[1] starts before intervals[0] ends"),
        ((*SIG0, "intervals", 0, "dtstart"), T0 - MIN, "interval_order", "before the event's active period"),
        (
            (*IV1, "duration"),
            120 * MIN,
            "interval_order",
            "intervals[1] ends after the event's active period",
        ),
        # times
        (("active_period", "dtstart"), dt.datetime(2026, 12, 2, 17), "bad_time", "naive datetime"),
        (("active_period", "dtstart"), "2026-12-02T17:00:00", "bad_time", "has no UTC offset"),
        (("active_period", "dtstart"), 1796230800, "bad_time", "active_period.dtstart: expected a date-time"),
        ((*IV1, "dtstart"), "tomorrow", "bad_time", "intervals[1].dtstart: 'tomorrow' is not an ISO 8601"),
        (("event_descriptor", "modification_date_time"), "x", "bad_time", "modification_date_time"),
        # durations
        (("active_period", "duration"), "P1M", "bad_duration", "years and months"),
        (("active_period", "duration"), "P9999Y", "bad_duration", "finite"),
        (("active_period", "duration"), 1e300, "bad_duration", "longer than the calendar"),
        (("active_period", "duration"), math.nan, "not_finite", "active_period.duration"),
        ((*IV1, "duration"), True, "bad_duration", "expected a duration"),
        ((*IV1, "duration"), [60], "bad_duration", "got list"),
        # values
        ((*IV1, "signal_payload"), math.nan, "not_finite", "event_signals[0].intervals[1].signal_payload"),
        ((*IV1, "signal_payload"), math.inf, "not_finite", "intervals[1].signal_payload"),
        ((*IV1, "signal_payload"), 10**400, "not_finite", "too large"),
        (
            (*IV1, "signal_payload"),
            "2",
            "bad_dr_value",
            "intervals[1].signal_payload: expected a number, got str",
        ),
        ((*IV1, "signal_payload"), True, "bad_dr_value", "got bool"),
        # missing fields
        (("event_descriptor",), ..., "missing_field", "event_descriptor"),
        (("event_descriptor", "event_id"), ..., "missing_field", "event_descriptor.event_id"),
        (("event_descriptor", "event_id"), "", "missing_field", "event_descriptor.event_id is empty"),
        (("active_period",), ..., "missing_field", "event 'ev-1': active_period"),
        (("active_period", "dtstart"), ..., "missing_field", "active_period.dtstart"),
        (("event_signals",), ..., "missing_field", "event_signals: an event needs a signal"),
        (("event_signals",), [], "missing_field", "event_signals: an event needs a signal"),
        ((*SIG0, "signal_name"), ..., "missing_field", "event_signals[0].signal_name"),
        ((*SIG0, "intervals"), [], "missing_field", "event_signals[0].intervals"),
        ((*IV1, "duration"), ..., "missing_field", "event_signals[0].intervals[1].duration"),
        ((*IV1, "signal_payload"), ..., "missing_field", "event_signals[0].intervals[1].signal_payload"),
        # wrong types
        (("event_descriptor",), "ev-1", "bad_schema", "event_descriptor: expected a mapping, got str"),
        (("event_descriptor", "event_id"), 7, "bad_schema", "event_descriptor.event_id: expected a string"),
        (("event_descriptor", "event_id"), "x" * 300, "bad_schema", "(limit 256)"),
        (("event_descriptor", "modification_number"), -1, "bad_schema", "modification_number"),
        (("event_descriptor", "modification_number"), 1.5, "bad_schema", "modification_number"),
        (("event_descriptor", "priority"), True, "bad_schema", "event_descriptor.priority"),
        (("event_descriptor", "event_status"), "maybe", "bad_schema", "event_status 'maybe' is not one of"),
        (("event_descriptor", "vtn_comment"), "c" * 2000, "bad_schema", "vtn_comment: 2000 characters"),
        (("active_period",), [T0], "bad_schema", "active_period: expected a mapping"),
        (("event_signals",), {"signal_name": "SIMPLE"}, "bad_schema", "event_signals: expected a list"),
        ((*SIG0,), "SIMPLE", "bad_schema", "event_signals[0]: expected a mapping, got str"),
        ((*SIG0, "signal_type"), 1, "bad_schema", "event_signals[0].signal_type"),
        ((*SIG0, "intervals"), "all of them", "bad_schema", "event_signals[0].intervals: expected a list"),
        ((*SIG0, "intervals", 1), 5, "bad_schema", "event_signals[0].intervals[1]: expected a mapping"),
        ((*SIG0, "measurement"), "kW", "bad_schema", "measurement (SIMPLE/level)"),
        (("targets",), "everyone", "bad_schema", "targets: expected a list of mappings"),
    ],
)
def test_malformed_events_are_refused_naming_what_and_where(
    path: tuple[Any, ...], value: Any, reason: str, detail: str
) -> None:
    raw = _with(path, value)
    if path[-1] == "measurement":  # a SIMPLE signal ignores a measurement; a setpoint reads it
        raw["event_signals"][0]["signal_name"] = "LOAD_DISPATCH"
        raw["event_signals"][0]["signal_type"] = "setpoint"
        detail = "measurement (LOAD_DISPATCH/setpoint)"
    err = refused(raw)
    assert err.reason == reason, str(err)
    assert detail in str(err)


@pytest.mark.parametrize("obj", [None, [], "event", 3, [event()]])
def test_what_is_not_an_event_mapping_is_refused(obj: object) -> None:
    err = refused(obj)
    assert err.reason == "bad_schema"
    assert "expected an OpenADR 2.0b event" in str(err)


def test_huge_interval_counts_are_refused_before_any_is_read() -> None:
    sig = signal(payloads=(1.0,))
    sig["intervals"] = [{"duration": 1.0, "signal_payload": 1.0}] * (MAX_INTERVALS + 1)
    err = refused(event(sig, duration=dt.timedelta(hours=2)))
    assert err.reason == "too_many_intervals"
    assert f"more than {MAX_INTERVALS} intervals" in str(err)


def test_interval_counts_add_up_across_signals() -> None:
    half = MAX_INTERVALS // 2 + 1
    sig = signal(payloads=(1.0,))
    sig["intervals"] = [{"duration": 1.0, "signal_payload": 1.0}] * half
    err = refused(event(sig, copy.deepcopy(sig), duration=dt.timedelta(hours=2)))
    assert err.reason == "too_many_intervals"
    assert "event_signals[1]" in str(err)


def test_merged_intervals_are_bounded_too() -> None:
    """Two signals of 500 two-second intervals, offset by one second, merge into 1001 one-second spans."""
    first, second = signal(payloads=(1.0,)), signal("ELECTRICITY_PRICE", "price", (1.0,))
    first["intervals"] = [{"duration": 2.0, "signal_payload": 1.0}] * (MAX_INTERVALS // 2)
    second["intervals"] = [{"dtstart": T0 + dt.timedelta(seconds=1), "duration": 2.0, "signal_payload": 1.0}]
    second["intervals"] += [{"duration": 2.0, "signal_payload": 0.5}] * (MAX_INTERVALS // 2 - 1)
    err = refused(event(first, second, duration=dt.timedelta(hours=1)))
    assert err.reason == "too_many_intervals"
    assert "the signals make more than" in str(err)


def test_an_event_ending_after_the_year_9999_is_refused() -> None:
    start = dt.datetime(9999, 12, 31, 23, tzinfo=dt.UTC)
    raw = event(signal(payloads=(1.0,), start=start, step=20 * MIN), duration=dt.timedelta(hours=3))
    raw["active_period"]["dtstart"] = start
    err = refused(raw)
    assert err.reason == "bad_duration"
    assert "active_period ends after the year 9999" in str(err)


def test_too_many_signals_are_refused() -> None:
    err = refused(event(*[signal() for _ in range(MAX_SIGNALS + 1)]))
    assert err.reason == "too_many_signals"


def test_too_many_targets_are_refused() -> None:
    err = refused(_with(("targets",), [{"ven_id": "v"}] * 2000))
    assert err.reason == "too_many_values"


def test_an_event_whose_only_interval_lasts_zero_seconds_is_refused() -> None:
    """A last interval of duration 0 runs to the end of the event; starting at that end, it is empty."""
    sig = signal(payloads=(1.0,), start=T0 + 45 * MIN, step=dt.timedelta(0))
    err = refused(event(sig))
    assert err.reason == "missing_field"
    assert "no interval of the event lasts longer than 0 s" in str(err)


# --- fuzz ---------------------------------------------------------------------------------------------------

_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**20), 10**20),
        st.floats(allow_nan=True, allow_infinity=True),
        st.datetimes(timezones=st.one_of(st.none(), st.just(dt.UTC))),
        st.timedeltas(),
        st.sampled_from(["PT15M", "-PT1H", "P9999Y", "2026-12-02T17:00:00Z", "SIMPLE", "level", "cancelled"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=4), children)
    ),
    max_leaves=20,
)
_PATHS = [
    ("event_descriptor", "event_id"),
    ("event_descriptor", "modification_number"),
    ("event_descriptor", "priority"),
    ("event_descriptor", "event_status"),
    ("active_period", "dtstart"),
    ("active_period", "duration"),
    ("active_period",),
    ("event_signals",),
    (*SIG0, "signal_name"),
    (*SIG0, "signal_type"),
    (*SIG0, "measurement"),
    (*SIG0, "intervals"),
    (*IV1, "dtstart"),
    (*IV1, "duration"),
    (*IV1, "signal_payload"),
    ("targets",),
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_PATHS), _values)
def test_any_one_bad_field_gives_a_payload_error_or_a_valid_event(path: tuple[Any, ...], value: Any) -> None:
    raw = _with(path, value)
    try:
        parsed = parse_openleadr_event(raw)
    except PayloadError:
        return  # refused with a reason: fine (any other exception fails the test)
    assert isinstance(parsed, DemandResponseEvent)
    for before, after in zip(parsed.intervals, parsed.intervals[1:], strict=False):
        assert before.end_s <= after.start_s
