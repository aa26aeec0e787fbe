"""Demand-response events: OpenADR 3 parsing, durations, interval rules, the event book, examples, fuzz."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenferry.core.dr import (
    KNOWN_PAYLOAD_TYPES,
    MAX_INTERVALS,
    DemandResponseEvent,
    DrEventBook,
    DrInterval,
    DrPayload,
    parse_datetime_s,
    parse_dr_event,
    parse_duration_s,
)
from greenferry.errors import PayloadError

DR_EXAMPLES = Path("/work/shared/data/dr-events")
needs_examples = pytest.mark.skipif(not DR_EXAMPLES.is_dir(), reason=f"{DR_EXAMPLES} is not here")

T0 = 1796230800.0  # 2026-12-02T17:00:00Z


def event(**changes: Any) -> dict[str, Any]:
    """A valid OpenADR 3 event: three 15-minute intervals from T0, with changes applied."""
    base: dict[str, Any] = {
        "id": "ev-1",
        "objectType": "EVENT",
        "programID": "prog-1",
        "eventName": "evening peak",
        "priority": 1,
        "modificationDateTime": "2026-12-02T09:00:00Z",
        "intervalPeriod": {"start": "2026-12-02T17:00:00Z", "duration": "PT15M"},
        "intervals": [
            {"id": 0, "payloads": [{"type": "SIMPLE", "values": [1]}]},
            {"id": 1, "payloads": [{"type": "SIMPLE", "values": [2]}, {"type": "PRICE", "values": [-3.5]}]},
            {"id": 2, "payloads": [{"type": "SIMPLE", "values": [0]}]},
        ],
    }
    base.update(changes)
    return base


def reason(obj: object) -> str:
    with pytest.raises(PayloadError) as caught:
        parse_dr_event(obj)
    return caught.value.reason


# --- ISO 8601 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT15M", 900.0),
        ("PT1H30M", 5400.0),
        ("P1D", 86400.0),
        ("P1W", 604800.0),
        ("P1DT2H", 93600.0),
        ("PT0.5S", 0.5),
        ("PT0S", 0.0),
        ("PT90M", 5400.0),
        ("P9999Y", math.inf),  # OpenADR 3: indefinite
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize(
    "text", ["P1Y", "P2M", "PT", "P", "15M", "", "PT1H30", "pt15m", "PT-5M", "P1.5D", "PT15M "]
)
def test_bad_durations(text: str) -> None:
    with pytest.raises(PayloadError, match="bad_duration"):
        parse_duration_s(text)


def test_negative_duration_is_an_interval_ending_before_its_start() -> None:
    with pytest.raises(PayloadError) as caught:
        parse_duration_s("-PT1H")
    assert caught.value.reason == "interval_order"
    with pytest.raises(PayloadError, match="bad_duration"):
        parse_duration_s(900)


def test_datetimes() -> None:
    assert parse_datetime_s("2026-12-02T17:00:00Z") == T0
    assert parse_datetime_s("2026-12-02T18:00:00+01:00") == T0
    assert parse_datetime_s("2026-12-02T17:00:00.5Z") == T0 + 0.5
    for bad in ("2026-12-02T17:00:00", "2026-12-02", "tomorrow", "2026-13-02T17:00:00Z", "9" * 80, 5, None):
        with pytest.raises(PayloadError, match="bad_time"):
            parse_datetime_s(bad)


# --- events ----------------------------------------------------------------------------------------------


def test_intervals_inherit_the_event_period_back_to_back() -> None:
    parsed = parse_dr_event(event())
    assert [(i.start_s, i.duration_s) for i in parsed.intervals] == [
        (T0, 900.0),
        (T0 + 900, 900.0),
        (T0 + 1800, 900.0),
    ]
    assert parsed.id == "ev-1"
    assert parsed.program_id == "prog-1"
    assert parsed.event_name == "evening peak"
    assert parsed.priority == 1
    assert parsed.modified_s == T0 - 8 * 3600
    assert parsed.modification_number == 0
    assert not parsed.cancelled
    assert parsed.start_s == T0
    assert parsed.end_s == T0 + 2700
    assert parsed.intervals[1].payloads == (DrPayload("SIMPLE", (2.0,)), DrPayload("PRICE", (-3.5,)))


def test_interval_lookup() -> None:
    parsed = parse_dr_event(event())
    assert parsed.interval_at(T0 - 1) is None
    assert parsed.interval_at(T0) == parsed.intervals[0]
    assert parsed.interval_at(T0 + 900) == parsed.intervals[1]
    assert parsed.interval_at(T0 + 2700) is None  # end is exclusive
    assert parsed.is_active(T0 + 1000)
    simple = parsed.intervals[1].payload("SIMPLE")
    assert simple is not None
    assert simple.values == (2.0,)
    assert parsed.intervals[1].payload("GHG") is None
    assert [p.type for p in parsed.payloads_at(T0 + 1000)] == ["SIMPLE", "PRICE"]
    assert parsed.payloads_at(T0 + 99999) == ()


def test_an_interval_may_carry_its_own_period() -> None:
    own = event(
        intervals=[
            {"payloads": [{"type": "SIMPLE", "values": [1]}]},
            {
                "intervalPeriod": {"start": "2026-12-02T18:00:00Z"},
                "payloads": [{"type": "SIMPLE", "values": [2]}],
            },
            {"intervalPeriod": {"duration": "PT1H"}, "payloads": [{"type": "SIMPLE", "values": [3]}]},
        ]
    )
    parsed = parse_dr_event(own)
    assert [(i.start_s, i.duration_s) for i in parsed.intervals] == [
        (T0, 900.0),
        (T0 + 3600, 900.0),  # a gap is fine
        (T0 + 4500, 3600.0),
    ]
    no_event_period = event(intervalPeriod=None, intervals=[own["intervals"][1]])
    assert parse_dr_event(no_event_period).intervals[0].duration_s == 0.0  # OpenADR's default PT0S


@pytest.mark.parametrize(
    "intervals",
    [
        [{"intervalPeriod": {"duration": "-PT15M"}, "payloads": [{"type": "SIMPLE", "values": [1]}]}],
        [
            {"payloads": [{"type": "SIMPLE", "values": [1]}]},
            {
                "intervalPeriod": {"start": "2026-12-02T17:05:00Z"},
                "payloads": [{"type": "SIMPLE", "values": [1]}],
            },
        ],
        [
            {
                "intervalPeriod": {"start": "2026-12-02T18:00:00Z"},
                "payloads": [{"type": "SIMPLE", "values": [1]}],
            },
            {
                "intervalPeriod": {"start": "2026-12-02T17:00:00Z"},
                "payloads": [{"type": "SIMPLE", "values": [1]}],
            },
        ],
        [
            {"intervalPeriod": {"duration": "P9999Y"}, "payloads": [{"type": "SIMPLE", "values": [1]}]},
            {"payloads": [{"type": "SIMPLE", "values": [1]}]},  # after an open-ended interval
        ],
    ],
)
def test_intervals_ending_before_they_start_or_out_of_order(intervals: list[Any]) -> None:
    assert reason(event(intervals=intervals)) == "interval_order"


def test_open_ended_event() -> None:
    parsed = parse_dr_event(
        event(
            intervalPeriod={"start": "2026-12-02T17:00:00Z", "duration": "P9999Y"},
            intervals=[{"payloads": [{"type": "ALERT_FLEX_ALERT", "values": ["conserve power"]}]}],
        )
    )
    assert parsed.end_s == math.inf
    assert parsed.is_active(T0 + 1e9)
    assert parsed.to_json()["intervals"][0]["duration_s"] is None


@pytest.mark.parametrize("payload_type", ["LOAD_SHED", "x-custom", "simple", "READING", ""])
def test_unknown_payload_types_are_refused(payload_type: str) -> None:
    bad = event(intervals=[{"payloads": [{"type": payload_type, "values": [1]}]}])
    with pytest.raises(PayloadError) as caught:
        parse_dr_event(bad)
    assert caught.value.reason == "unknown_dr_payload"
    assert "intervals[0].payloads[0].type" in caught.value.detail


def test_known_payload_types_include_what_the_node_acts_on() -> None:
    for name in (
        "SIMPLE",
        "PRICE",
        "EXPORT_PRICE",
        "GHG",
        "IMPORT_CAPACITY_LIMIT",
        "EXPORT_CAPACITY_LIMIT",
        "DISPATCH_SETPOINT",
        "ALERT_GRID_EMERGENCY",
    ):
        assert name in KNOWN_PAYLOAD_TYPES


@pytest.mark.parametrize(
    ("payload", "expected_reason"),
    [
        ({"type": "SIMPLE", "values": [4]}, "bad_dr_value"),
        ({"type": "SIMPLE", "values": [1.5]}, "bad_dr_value"),
        ({"type": "SIMPLE", "values": [True]}, "bad_dr_value"),
        ({"type": "SIMPLE", "values": ["1"]}, "bad_dr_value"),
        ({"type": "PRICE", "values": [None]}, "bad_dr_value"),
        ({"type": "PRICE", "values": [float("nan")]}, "not_finite"),
        ({"type": "PRICE", "values": [math.inf]}, "not_finite"),
        ({"type": "PRICE", "values": [10**400]}, "not_finite"),
        ({"type": "IMPORT_CAPACITY_LIMIT", "values": [-1]}, "negative_power"),
        ({"type": "DISPATCH_SETPOINT", "values": [-1]}, "negative_power"),
        ({"type": "GHG", "values": [-1]}, "negative_carbon"),
        ({"type": "OLS", "values": [1.5]}, "bad_dr_value"),
        ({"type": "CTA2045_REBOOT", "values": [2]}, "bad_dr_value"),
        ({"type": "CHARGE_STATE_SETPOINT", "values": [-5]}, "bad_dr_value"),
        ({"type": "ALERT_GRID_EMERGENCY", "values": [3]}, "bad_dr_value"),
        ({"type": "CURVE", "values": [[1, 2]]}, "bad_dr_value"),
        ({"type": "PRICE", "values": 3}, "bad_schema"),
        ({"type": "PRICE"}, "missing_field"),
        ({"values": [1]}, "missing_field"),
        ({"type": "PRICE", "values": [1] * 1001}, "too_many_values"),
        ("PRICE", "bad_schema"),
    ],
)
def test_payload_values_are_checked(payload: Any, expected_reason: str) -> None:
    assert reason(event(intervals=[{"payloads": [payload]}])) == expected_reason


def test_payload_values_by_type() -> None:
    parsed = parse_dr_event(
        event(
            intervals=[
                {
                    "payloads": [
                        {"type": "PRICE", "values": [-20, 0.17]},
                        {"type": "IMPORT_CAPACITY_LIMIT", "values": [5]},
                        {"type": "EXPORT_CAPACITY_LIMIT", "values": [2000]},
                        {"type": "DISPATCH_SETPOINT", "values": [1.5]},
                        {"type": "DISPATCH_SETPOINT_RELATIVE", "values": [-2.5]},
                        {"type": "CURVE", "values": [{"x": 1, "y": 2}, {"x": 3.5, "y": -1}]},
                        {"type": "ALERT_FLEX_ALERT", "values": ["shift load"]},
                    ]
                }
            ],
            payloadDescriptors=[
                {
                    "objectType": "EVENT_PAYLOAD_DESCRIPTOR",
                    "payloadType": "IMPORT_CAPACITY_LIMIT",
                    "units": "KW",
                },
                {"payloadType": "EXPORT_CAPACITY_LIMIT", "units": "W"},
                {"payloadType": "DISPATCH_SETPOINT", "units": "MW"},
                {"payloadType": "DISPATCH_SETPOINT_RELATIVE", "units": "KW"},
                {"payloadType": "PRICE", "units": "KWH", "currency": "EUR"},
            ],
        )
    )
    payloads = {p.type: p for p in parsed.intervals[0].payloads}
    assert payloads["PRICE"] == DrPayload("PRICE", (-20.0, 0.17), "KWH")
    assert payloads["IMPORT_CAPACITY_LIMIT"] == DrPayload("IMPORT_CAPACITY_LIMIT", (5000.0,), "W")
    assert payloads["EXPORT_CAPACITY_LIMIT"] == DrPayload("EXPORT_CAPACITY_LIMIT", (2000.0,), "W")
    assert payloads["DISPATCH_SETPOINT"].values == (1.5e6,)
    assert payloads["DISPATCH_SETPOINT_RELATIVE"] == DrPayload("DISPATCH_SETPOINT_RELATIVE", (-2500.0,), "W")
    assert payloads["CURVE"].values == ((1.0, 2.0), (3.5, -1.0))
    assert payloads["ALERT_FLEX_ALERT"].values == ("shift load",)
    assert json.loads(json.dumps(parsed.to_json()))["intervals"][0]["payloads"][5]["values"][0] == {
        "x": 1.0,
        "y": 2.0,
    }


@pytest.mark.parametrize(
    ("obj", "expected_reason"),
    [
        ([event()], "bad_schema"),
        ("event", "bad_schema"),
        (event(id=None), "missing_field"),
        (event(id=""), "missing_field"),
        (event(id=5), "bad_schema"),
        (event(id="x" * 300), "bad_schema"),
        (event(programID=None), "missing_field"),
        (event(eventName=["x"]), "bad_schema"),
        (event(priority=-1), "bad_schema"),
        (event(priority=True), "bad_schema"),
        (event(priority="1"), "bad_schema"),
        (event(modificationNumber=1.5), "bad_schema"),
        (event(modificationDateTime="yesterday"), "bad_time"),
        (event(objectType="PROGRAM"), "bad_schema"),
        (event(cancelled="yes"), "bad_schema"),
        (event(intervals=None), "missing_field"),
        (event(intervals=[]), "missing_field"),
        (event(intervals={"0": {}}), "bad_schema"),
        (event(intervals=[5]), "bad_schema"),
        (event(intervals=[{"id": "zero", "payloads": [{"type": "SIMPLE", "values": [1]}]}]), "bad_schema"),
        (event(intervals=[{"payloads": []}]), "missing_field"),
        (event(intervalPeriod=None), "missing_field"),  # no start anywhere
        (event(intervalPeriod={"duration": "PT1H"}), "missing_field"),
        (event(intervalPeriod="PT1H"), "bad_schema"),
        (event(intervalPeriod={"start": "2026-12-02T17:00:00Z", "duration": "P1M"}), "bad_duration"),
        (event(intervalPeriod={"start": "2026-12-02T17:00:00Z", "duration": 900}), "bad_duration"),
        (event(intervalPeriod={"start": "9999-12-31T00:00:00Z", "duration": "P2D"}), "bad_duration"),
        (event(payloadDescriptors={"a": 1}), "bad_schema"),
        (event(payloadDescriptors=[5]), "bad_schema"),
        (
            event(intervals=[{"payloads": [{"type": "SIMPLE", "values": [1]}]}] * (MAX_INTERVALS + 1)),
            "too_many_intervals",
        ),
    ],
)
def test_schema_refusals(obj: object, expected_reason: str) -> None:
    assert reason(obj) == expected_reason


def test_notifications_wrap_events() -> None:
    posted = parse_dr_event({"objectType": "EVENT", "operation": "POST", "object": event()})
    assert not posted.cancelled
    deleted = parse_dr_event(
        {"objectType": "EVENT", "operation": "DELETE", "object": {"id": "ev-1", "programID": "p"}}
    )
    assert deleted.cancelled
    assert deleted.intervals == ()
    assert parse_dr_event(event(cancelled=True)).cancelled
    assert reason({"objectType": "PROGRAM", "operation": "POST", "object": {}}) == "bad_schema"
    assert reason({"objectType": "EVENT", "operation": "PATCH", "object": event()}) == "bad_schema"
    assert reason({"objectType": "EVENT", "operation": "PUT", "object": [event()]}) == "bad_schema"


def test_to_json_is_json() -> None:
    parsed = parse_dr_event(event())
    out = json.loads(json.dumps(parsed.to_json()))
    assert out["id"] == "ev-1"
    assert out["intervals"][1]["payloads"] == [
        {"type": "SIMPLE", "values": [2.0]},
        {"type": "PRICE", "values": [-3.5]},
    ]
    assert out["intervals"][0]["start_s"] == T0


# --- real example payloads -------------------------------------------------------------------------------


@needs_examples
def test_the_openadr3_specification_example_event() -> None:
    (raw,) = json.loads((DR_EXAMPLES / "openadr3_openleadr-rs/openadr3_event_example.json").read_text())
    parsed = parse_dr_event(raw)
    start = parse_datetime_s("2023-06-15T09:30:00Z")
    assert parsed == DemandResponseEvent(
        id="object-999-foo",
        program_id="object-999",
        event_name="price event 11-18-2022",
        modification_number=0,
        intervals=(DrInterval(start, 3600.0, (DrPayload("PRICE", (0.17,)),), 0),),
        priority=0,
        modified_s=start,
    )


@needs_examples
@pytest.mark.parametrize("name", ["openadr3_program_example.json", "openadr3_report_example.json"])
def test_openadr3_programs_and_reports_are_not_events(name: str) -> None:
    (raw,) = json.loads((DR_EXAMPLES / "openadr3_openleadr-rs" / name).read_text())
    with pytest.raises(PayloadError) as caught:
        parse_dr_event(raw)
    assert caught.value.reason == "bad_schema"
    assert raw["objectType"] in caught.value.detail


@needs_examples
def test_an_openadr2b_event_is_named_as_such() -> None:
    raw = json.loads(
        (DR_EXAMPLES / "openadr2b_openleadr_docs/oadrDistributeEvent_1.openleadr.json").read_text()
    )
    (event_2b,) = raw["payload"]["events"]
    with pytest.raises(PayloadError, match=r"OpenADR 2\.0b") as caught:
        parse_dr_event(event_2b)
    assert caught.value.reason == "bad_schema"
    assert reason(raw) == "bad_schema"


# --- the event book --------------------------------------------------------------------------------------


def version(number: int = 0, modified: str = "2026-12-02T09:00:00Z", **changes: Any) -> DemandResponseEvent:
    return parse_dr_event(event(modificationNumber=number, modificationDateTime=modified, **changes))


def test_book_newer_replaces_older_and_duplicates_are_ignored() -> None:
    book = DrEventBook()
    first = version(1)
    assert book.apply(first)
    assert not book.apply(version(1))  # duplicate
    second = version(2, eventName="moved")
    assert book.apply(second)
    assert book.get("ev-1") == second
    assert not book.apply(version(1))  # older
    assert book.get("ev-1") == second
    assert len(book) == 1


def test_book_orders_openadr3_versions_by_modification_time() -> None:
    book = DrEventBook()
    assert book.apply(version(modified="2026-12-02T09:00:00Z"))
    assert book.apply(version(modified="2026-12-02T10:00:00Z", eventName="later"))
    assert not book.apply(version(modified="2026-12-02T08:00:00Z"))
    current = book.get("ev-1")
    assert current is not None
    assert current.event_name == "later"


def test_book_cancellation_removes_and_is_remembered() -> None:
    book = DrEventBook()
    book.apply(version(2))
    assert not book.apply(version(1, cancelled=True))  # an older cancellation does not apply
    assert book.get("ev-1") is not None
    assert book.apply(version(2, cancelled=True))  # a DELETE repeats the current version: it applies
    assert book.get("ev-1") is None
    assert not book.apply(version(2))  # a late copy does not bring it back
    assert not book.apply(version(1))
    assert book.apply(version(3))  # a newer version does
    assert book.get("ev-1") is not None


def test_book_active_by_priority_and_prune() -> None:
    book = DrEventBook()
    book.apply(parse_dr_event(event(id="low", priority=5)))
    book.apply(parse_dr_event(event(id="high", priority=0)))
    book.apply(parse_dr_event(event(id="none", priority=None)))
    later = {"start": "2026-12-03T17:00:00Z", "duration": "PT1H"}
    book.apply(parse_dr_event(event(id="tomorrow", intervalPeriod=later)))
    assert [e.id for e in book.active(T0 + 10)] == ["high", "low", "none"]
    assert book.active(T0 - 10) == ()
    assert [e.id for e in book.events()][-1] == "tomorrow"
    state = json.loads(json.dumps(book.to_json(T0 + 10)))
    assert state["active"] == ["high", "low", "none"]
    assert book.prune(T0 + 2700) == 3
    assert [e.id for e in book.events()] == ["tomorrow"]


def test_book_is_bounded() -> None:
    book = DrEventBook(max_events=3)
    for day in range(5):
        period = {"start": f"2026-12-0{day + 1}T17:00:00Z", "duration": "PT1H"}
        book.apply(parse_dr_event(event(id=f"d{day}", intervalPeriod=period)))
    assert len(book) == 3
    assert [e.id for e in book.events()] == ["d2", "d3", "d4"]  # the ones ending first went
    for day in range(5):
        book.apply(parse_dr_event(event(id=f"c{day}", cancelled=True)))
    with pytest.raises(ValueError, match="at least one"):
        DrEventBook(max_events=0)


# --- fuzz ------------------------------------------------------------------------------------------------

_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**20), 10**20),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(
            [
                "PT15M",
                "-PT1H",
                "P9999Y",
                "P1M",
                "2026-12-02T17:00:00Z",
                "2026-12-02T17:00:00",
                "SIMPLE",
                "PRICE",
                "LOAD_SHED",
                "EVENT",
                "DELETE",
                "x",
            ]
        ),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "id",
                    "programID",
                    "eventName",
                    "priority",
                    "objectType",
                    "operation",
                    "object",
                    "intervals",
                    "intervalPeriod",
                    "start",
                    "duration",
                    "payloads",
                    "type",
                    "values",
                    "x",
                    "y",
                    "modificationNumber",
                    "modificationDateTime",
                    "cancelled",
                    "payloadDescriptors",
                    "payloadType",
                    "units",
                ]
            ),
            children,
            max_size=8,
        ),
    ),
    max_leaves=30,
)


def _mutations() -> st.SearchStrategy[dict[str, Any]]:
    """Valid events with one field replaced by an arbitrary value."""
    paths = [
        ("id",),
        ("priority",),
        ("intervalPeriod", "duration"),
        ("intervalPeriod", "start"),
        ("intervals", 1, "payloads", 0, "type"),
        ("intervals", 1, "payloads", 1, "values"),
        ("intervals", 0, "intervalPeriod"),
        ("modificationNumber",),
        ("payloadDescriptors",),
    ]

    def mutate(args: tuple[tuple[Any, ...], Any]) -> dict[str, Any]:
        path, value = args
        obj = copy.deepcopy(event())
        target: Any = obj
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return obj

    return st.tuples(st.sampled_from(paths), _values).map(mutate)


def _outcome(obj: object) -> DemandResponseEvent | str:
    try:
        return parse_dr_event(obj)
    except PayloadError as err:  # anything else propagates and fails the test
        return err.reason


@settings(max_examples=300, deadline=None)
@given(st.one_of(_values, _mutations()))
def test_fuzz_parse_dr_event_raises_only_payload_errors(obj: object) -> None:
    result = _outcome(obj)
    if isinstance(result, str):
        assert result
        return
    json.dumps(result.to_json())
    for before, after in zip(result.intervals, result.intervals[1:], strict=False):
        assert after.start_s >= before.end_s
    for interval in result.intervals:
        assert interval.duration_s >= 0
        for payload in interval.payloads:
            assert payload.type in KNOWN_PAYLOAD_TYPES
            for value in payload.values:
                if isinstance(value, float):
                    assert math.isfinite(value)
