"""Signal payload parsers: every format, every refusal reason, hostile payloads, and a property-based fuzz."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenferry.config import SignalConfig
from greenferry.core.dr import DemandResponseEvent
from greenferry.core.payloads import (
    MAX_WINDOWS,
    REASONS,
    ParsedSignal,
    Parser,
    make_parser,
    parse_number,
    parse_payload,
    parse_time_s,
    parse_windows,
)
from greenferry.core.signals import SignalKind, SurplusWindow
from greenferry.errors import ConfigError, PayloadError

DR_EXAMPLES = Path("/work/shared/data/dr-events")

NUMBER = SignalConfig(topic="t")
GREENFERRY = SignalConfig(topic="t", format="greenferry")


def json_at(field: str, **kw: Any) -> SignalConfig:
    return SignalConfig(topic="t", format="json", field=field, **kw)


def reason_of(kind: SignalKind, payload: bytes, signal: SignalConfig, limit: int = 256 * 1024) -> str:
    with pytest.raises(PayloadError) as caught:
        parse_payload(kind, payload, signal, limit)
    assert caught.value.reason in REASONS
    assert str(caught.value).startswith(caught.value.reason)
    return caught.value.reason


def value_of(kind: SignalKind, payload: bytes, signal: SignalConfig) -> Any:
    return parse_payload(kind, payload, signal).value


# --- number --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"1234.5", 1234.5),  # evcc, HA
        (b"0", 0.0),
        (b" 42\n", 42.0),
        (b'"1234.5"', 1234.5),  # JSON-quoted (HA statestream attributes, Node-RED)
        (b"1.5e3", 1500.0),
        (b"+7", 7.0),
        (b".5", 0.5),
        (b"3.", 3.0),
        (b"-0", 0.0),
    ],
)
def test_number_format_reads_plain_numbers(payload: bytes, expected: float) -> None:
    value = value_of(SignalKind.PRODUCTION_W, payload, NUMBER)
    assert value == expected
    assert math.copysign(1.0, value) == 1.0  # never -0.0


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"unavailable", "not_a_number"),  # what Home Assistant publishes for a dead sensor
        (b"unknown", "not_a_number"),
        (b"1234 W", "not_a_number"),
        (b"1,5", "not_a_number"),
        (b"1_000", "not_a_number"),  # float() would take it
        ("١٢٣".encode(), "not_a_number"),  # so would it these Arabic-Indic digits
        (b"nan", "not_a_number"),
        (b"inf", "not_a_number"),
        (b"Infinity", "not_a_number"),
        (b"0x10", "not_a_number"),
        (b'"12', "not_a_number"),
        (b"true", "not_a_number"),
        (b'{"value": 1}', "not_a_number"),
        (b"1e999", "not_finite"),
        (b"-1e999", "not_finite"),
        (b"", "empty"),
        (b"  \n", "empty"),
        (b"\xff\xfe1\x00", "invalid_utf8"),
        (b"12\xc3", "invalid_utf8"),
    ],
)
def test_number_format_refuses_anything_else(payload: bytes, reason: str) -> None:
    assert reason_of(SignalKind.PRICE_PER_MWH, payload, NUMBER) == reason


def test_scale_converts_to_si() -> None:
    kilowatts = SignalConfig(topic="t", scale=1000)
    assert value_of(SignalKind.PRODUCTION_W, b"1.5", kilowatts) == 1500.0
    assert value_of(SignalKind.LOAD_W, b'{"p": 2}', json_at("p", scale=1000)) == 2000.0
    assert (
        value_of(
            SignalKind.PRODUCTION_W, b'{"value": 3}', SignalConfig(topic="t", format="greenferry", scale=10)
        )
        == 30.0
    )
    huge = SignalConfig(topic="t", scale=1e300)
    assert (
        reason_of(SignalKind.PRODUCTION_W, b"1e10", huge) == "not_finite"
    )  # finite in, overflow after scale


@pytest.mark.parametrize("kind", [SignalKind.PRODUCTION_W, SignalKind.LOAD_W])
def test_power_may_not_be_negative(kind: SignalKind) -> None:
    assert reason_of(kind, b"-0.5", NUMBER) == "negative_power"
    assert reason_of(kind, b'{"p": -3}', json_at("p")) == "negative_power"
    assert reason_of(kind, b'{"value": -1}', GREENFERRY) == "negative_power"


def test_carbon_may_not_be_negative_but_price_may() -> None:
    assert reason_of(SignalKind.CARBON_G_PER_KWH, b"-12", NUMBER) == "negative_carbon"
    assert value_of(SignalKind.PRICE_PER_MWH, b"-42.5", NUMBER) == -42.5  # negative prices are real
    assert value_of(SignalKind.CARBON_G_PER_KWH, b"0", NUMBER) == 0.0


def test_too_large_is_refused_before_decoding() -> None:
    ten_mb = b"\xff" * (10 * 1024 * 1024)  # invalid UTF-8 and JSON: only the size may be looked at
    for signal in (NUMBER, json_at("a"), GREENFERRY):
        with pytest.raises(PayloadError) as caught:
            parse_payload(SignalKind.PRODUCTION_W, ten_mb, signal, 256 * 1024)
        assert caught.value.reason == "too_large"
        assert "10485760 bytes" in caught.value.detail
    assert value_of(SignalKind.PRODUCTION_W, b"1" * 64, NUMBER) == float("1" * 64)
    assert reason_of(SignalKind.PRODUCTION_W, b"1" * 65, NUMBER, limit=64) == "too_large"


# --- json ----------------------------------------------------------------------------------------------


def test_json_format_reads_a_dotted_path() -> None:
    tasmota = b'{"Time":"2026-12-02T10:00:00","ENERGY":{"Total":12.5,"Power":1234,"Voltage":231}}'
    assert value_of(SignalKind.PRODUCTION_W, tasmota, json_at("ENERGY.Power")) == 1234.0
    assert value_of(SignalKind.LOAD_W, b'{"a":[{"b":5},{"b":7}]}', json_at("a.1.b")) == 7.0
    assert value_of(SignalKind.LOAD_W, b"[3, 4]", json_at("0")) == 3.0
    assert value_of(SignalKind.LOAD_W, b'{"0": 9}', json_at("0")) == 9.0  # a digit key in an object
    assert value_of(SignalKind.LOAD_W, b'{"p": "12.5"}', json_at("p")) == 12.5  # a number in a string
    assert value_of(SignalKind.PRICE_PER_MWH, b'{"p": 10000000000000000000000}', json_at("p")) == 1e22


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"ENERGY": {"Total": 1}}', "missing_field"),
        (b'{"ENERGY": 5}', "missing_field"),
        (b'{"ENERGY": [1, 2]}', "missing_field"),
        (b"[]", "missing_field"),
        (b'{"ENERGY": {"Power": null}}', "not_a_number"),
        (b'{"ENERGY": {"Power": true}}', "not_a_number"),
        (b'{"ENERGY": {"Power": "abc"}}', "not_a_number"),
        (b'{"ENERGY": {"Power": "NaN"}}', "not_a_number"),
        (b'{"ENERGY": {"Power": [1]}}', "not_a_number"),
        (b'{"ENERGY": {"Power": {"v": 1}}}', "not_a_number"),
        (b'{"ENERGY": {"Power": NaN}}', "not_finite"),
        (b'{"ENERGY": {"Power": Infinity}}', "not_finite"),
        (b'{"ENERGY": {"Power": -Infinity}}', "not_finite"),
        (b'{"ENERGY": {"Power": 1e999}}', "not_finite"),
        (b'{"ENERGY": {"Power": 1' + b"0" * 400 + b"}}", "not_finite"),  # an int too large for a float
        (b'{"ENERGY": {"Power": ' + b"9" * 5000 + b"}}", "bad_json"),  # beyond Python's int digit limit
        (b'{"ENERGY": {"Power": 1}', "bad_json"),
        (b"{'ENERGY': 1}", "bad_json"),
        (b"1234 W", "bad_json"),
        (b"\xef\xbb\xbf{}", "bad_json"),  # a UTF-8 byte order mark
        ('{"a": 1}'.encode("utf-16"), "invalid_utf8"),
        (b'{"ENERGY": "\xff"}', "invalid_utf8"),
        (b"", "empty"),
        (b"[" * 100_000, "bad_json"),  # deeply nested
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "bad_json"),
    ],
)
def test_json_format_refusals(payload: bytes, reason: str) -> None:
    assert (
        reason_of(SignalKind.PRODUCTION_W, payload, json_at("ENERGY.Power"), limit=16 * 1024 * 1024) == reason
    )


def test_refusals_say_where() -> None:
    with pytest.raises(PayloadError, match=r"ENERGY\.Power"):
        parse_payload(SignalKind.LOAD_W, b'{"ENERGY": {}}', json_at("ENERGY.Power"))
    with pytest.raises(PayloadError, match=r"a\.5 \(the list has 2 items\)"):
        parse_payload(SignalKind.LOAD_W, b'{"a": [1, 2]}', json_at("a.5"))
    with pytest.raises(PayloadError, match="line 1 column"):
        parse_payload(SignalKind.LOAD_W, b'{"a": }', json_at("a"))


# --- greenferry scalars --------------------------------------------------------------------------------


def test_greenferry_scalar_with_and_without_time() -> None:
    parsed = parse_payload(
        SignalKind.CARBON_G_PER_KWH, b'{"value": 212.5, "time": "2026-12-02T10:00:00Z"}', GREENFERRY
    )
    assert parsed == ParsedSignal(212.5, 1796205600.0)
    assert parse_payload(
        SignalKind.PRICE_PER_MWH, b'{"value": -3, "time": 1796205600.5}', GREENFERRY
    ) == ParsedSignal(-3.0, 1796205600.5)
    assert parse_payload(SignalKind.LOAD_W, b'{"value": 5, "unit": "W"}', GREENFERRY) == ParsedSignal(
        5.0, None
    )
    offset = parse_payload(
        SignalKind.LOAD_W, b'{"value": 1, "time": "2026-12-02T11:00:00+01:00"}', GREENFERRY
    )
    assert offset.source_time_s == 1796205600.0


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"1234", "bad_schema"),
        (b"[1]", "bad_schema"),
        (b'{"val": 1}', "missing_field"),
        (b'{"value": "x"}', "not_a_number"),
        (b'{"value": 1, "time": "2026-12-02T10:00:00"}', "bad_time"),  # no offset: ambiguous
        (b'{"value": 1, "time": "yesterday"}', "bad_time"),
        (b'{"value": 1, "time": true}', "bad_time"),
        (b'{"value": 1, "time": -5}', "bad_time"),
        (b'{"value": 1, "time": 1e300}', "bad_time"),
        (b'{"value": 1, "time": "' + b"2" * 100 + b'"}', "bad_time"),
        (b'{"value": 1, "time": {}}', "bad_time"),
    ],
)
def test_greenferry_scalar_refusals(payload: bytes, reason: str) -> None:
    assert reason_of(SignalKind.LOAD_W, payload, GREENFERRY) == reason


def test_parse_time_accepts_iso_and_posix_seconds() -> None:
    assert parse_time_s("1970-01-01T00:00:00Z") == 0.0
    assert parse_time_s(0) == 0.0
    assert parse_time_s("2026-12-02T10:00:00.250Z") == 1796205600.25
    with pytest.raises(PayloadError, match="bad_time"):
        parse_time_s(float("nan"))
    with pytest.raises(PayloadError, match="bad_time"):
        parse_time_s(10**400)


# --- surplus forecast ----------------------------------------------------------------------------------


def test_surplus_windows_sorted_and_validated() -> None:
    payload = json.dumps(
        [
            {"start": "2026-12-02T12:00:00Z", "end": "2026-12-02T14:00:00Z", "power_w": 800},
            {"start": 1796205600, "end": 1796209200, "power_w": 1500.5},
        ]
    ).encode()
    parsed = parse_payload(SignalKind.SURPLUS_FORECAST, payload, GREENFERRY)
    assert parsed.value == (
        SurplusWindow(1796205600.0, 1796209200.0, 1500.5),
        SurplusWindow(1796212800.0, 1796220000.0, 800.0),
    )
    assert parsed.source_time_s is None
    issued = b'{"time": "2026-12-02T09:00:00Z", "windows": [{"start": 0, "end": 60, "power_w": 0}]}'
    parsed = parse_payload(SignalKind.SURPLUS_FORECAST, issued, GREENFERRY)
    assert parsed == ParsedSignal((SurplusWindow(0.0, 60.0, 0.0),), 1796202000.0)
    assert parse_payload(SignalKind.SURPLUS_FORECAST, b"[]", GREENFERRY).value == ()
    kw = SignalConfig(topic="t", format="greenferry", scale=1000)
    assert parse_payload(SignalKind.SURPLUS_FORECAST, b'[{"start":0,"end":1,"power_w":2}]', kw).value == (
        SurplusWindow(0.0, 1.0, 2000.0),
    )
    nested = b'{"forecast": {"windows": [{"start": 0, "end": 1, "power_w": 2}]}}'
    assert parse_payload(SignalKind.SURPLUS_FORECAST, nested, json_at("forecast.windows")).value == (
        SurplusWindow(0.0, 1.0, 2.0),
    )


@pytest.mark.parametrize(
    ("windows", "reason"),
    [
        ([{"start": 10, "end": 10, "power_w": 1}], "interval_order"),
        ([{"start": 10, "end": 5, "power_w": 1}], "interval_order"),
        ([{"start": "2026-12-02T12:00:00Z", "end": "2026-12-02T11:00:00Z", "power_w": 1}], "interval_order"),
        ([{"start": 0, "end": 10, "power_w": 1}, {"start": 5, "end": 20, "power_w": 1}], "windows_overlap"),
        ([{"start": 0, "end": 10, "power_w": -1}], "negative_power"),
        ([{"start": 0, "end": 10, "power_w": "lots"}], "not_a_number"),
        ([{"start": 0, "end": 10, "power_w": None}], "not_a_number"),
        ([{"start": 0, "end": 10}], "missing_field"),
        ([{"end": 10, "power_w": 1}], "missing_field"),
        ([{"start": "noon", "end": 10, "power_w": 1}], "bad_time"),
        ([[0, 10, 1]], "bad_schema"),
        ({"start": 0, "end": 10, "power_w": 1}, "missing_field"),  # an object needs "windows"
        ({"windows": 5}, "bad_schema"),
        ([{"start": i, "end": i + 1, "power_w": 1} for i in range(MAX_WINDOWS + 1)], "too_many_windows"),
    ],
)
def test_surplus_window_refusals(windows: object, reason: str) -> None:
    assert reason_of(SignalKind.SURPLUS_FORECAST, json.dumps(windows).encode(), GREENFERRY) == reason


def test_surplus_windows_not_finite() -> None:
    assert (
        reason_of(SignalKind.SURPLUS_FORECAST, b'[{"start":0,"end":1,"power_w":NaN}]', GREENFERRY)
        == "not_finite"
    )
    with pytest.raises(PayloadError, match="not_finite"):
        parse_windows([{"start": 0, "end": 1, "power_w": math.inf}])
    assert (
        len(parse_windows([{"start": i, "end": i + 1, "power_w": 1} for i in range(MAX_WINDOWS)]))
        == MAX_WINDOWS
    )


# --- demand response -----------------------------------------------------------------------------------

EVENT = {
    "id": "e1",
    "programID": "p1",
    "modificationDateTime": "2026-12-02T09:00:00Z",
    "intervalPeriod": {"start": "2026-12-02T17:00:00Z", "duration": "PT1H"},
    "intervals": [{"id": 0, "payloads": [{"type": "SIMPLE", "values": [2]}]}],
}


def test_demand_response_formats() -> None:
    parsed = parse_payload(SignalKind.DEMAND_RESPONSE, json.dumps(EVENT).encode(), GREENFERRY)
    assert isinstance(parsed.value, DemandResponseEvent)
    assert parsed.value.id == "e1"
    assert parsed.source_time_s == 1796202000.0
    wrapped = json.dumps({"data": {"event": EVENT}}).encode()
    assert isinstance(
        parse_payload(SignalKind.DEMAND_RESPONSE, wrapped, json_at("data.event")).value, DemandResponseEvent
    )
    unknown = {**EVENT, "intervals": [{"payloads": [{"type": "LOAD_SHED", "values": [1]}]}]}
    assert (
        reason_of(SignalKind.DEMAND_RESPONSE, json.dumps(unknown).encode(), GREENFERRY)
        == "unknown_dr_payload"
    )
    assert reason_of(SignalKind.DEMAND_RESPONSE, b"[1]", GREENFERRY) == "bad_schema"


@pytest.mark.skipif(not DR_EXAMPLES.is_dir(), reason=f"{DR_EXAMPLES} is not here")
def test_real_openadr3_example_through_the_payload_parser() -> None:
    (event,) = json.loads((DR_EXAMPLES / "openadr3_openleadr-rs/openadr3_event_example.json").read_bytes())
    parsed = parse_payload(SignalKind.DEMAND_RESPONSE, json.dumps(event).encode(), GREENFERRY)
    assert isinstance(parsed.value, DemandResponseEvent)
    assert parsed.value.event_name == "price event 11-18-2022"
    raw = (DR_EXAMPLES / "openadr3_openleadr-rs/openadr3_event_example.json").read_bytes()
    assert "one event per message" in _detail(
        SignalKind.DEMAND_RESPONSE, raw, GREENFERRY
    )  # the file is a list


@pytest.mark.parametrize("kind", [SignalKind.SURPLUS_FORECAST, SignalKind.DEMAND_RESPONSE])
def test_number_format_cannot_carry_structured_kinds(kind: SignalKind) -> None:
    with pytest.raises(ConfigError, match=f"signals.{kind.value}: format 'number'"):
        make_parser(kind, NUMBER, 1024)


def test_parse_number_directly() -> None:
    assert parse_number(b"12") == 12.0
    with pytest.raises(PayloadError, match="not_a_number"):
        parse_number(b"twelve")


# --- property-based fuzz -------------------------------------------------------------------------------

CONFIGS: list[tuple[SignalKind, SignalConfig]] = [
    (kind, signal)
    for kind in (
        SignalKind.PRODUCTION_W,
        SignalKind.LOAD_W,
        SignalKind.CARBON_G_PER_KWH,
        SignalKind.PRICE_PER_MWH,
    )
    for signal in (NUMBER, GREENFERRY, json_at("a"), json_at("a.0.b"), SignalConfig(topic="t", scale=1e300))
] + [
    (SignalKind.SURPLUS_FORECAST, GREENFERRY),
    (SignalKind.SURPLUS_FORECAST, json_at("a")),
    (SignalKind.DEMAND_RESPONSE, GREENFERRY),
    (SignalKind.DEMAND_RESPONSE, json_at("a")),
]

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["2026-12-02T10:00:00Z", "PT15M", "SIMPLE", "PRICE", "-1", "1e999", "1.5"]),
)
_json_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "a",
                    "b",
                    "0",
                    "value",
                    "time",
                    "start",
                    "end",
                    "power_w",
                    "windows",
                    "id",
                    "programID",
                    "intervals",
                    "payloads",
                    "type",
                    "values",
                    "intervalPeriod",
                    "duration",
                    "objectType",
                ]
            ),
            children,
            max_size=6,
        ),
    ),
    max_leaves=25,
)
_payloads = st.one_of(
    st.binary(max_size=64),
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=20).map(str.encode),
)


def _check_accepted(kind: SignalKind, parsed: ParsedSignal) -> None:
    value = parsed.value
    if parsed.source_time_s is not None:
        assert math.isfinite(parsed.source_time_s)
    if kind is SignalKind.SURPLUS_FORECAST:
        assert isinstance(value, tuple)
        assert len(value) <= MAX_WINDOWS
        for window in value:
            assert math.isfinite(window.power_w)
            assert window.power_w >= 0
            assert window.end_s > window.start_s
        assert all(a.end_s <= b.start_s for a, b in itertools.pairwise(value))
    elif kind is SignalKind.DEMAND_RESPONSE:
        assert isinstance(value, DemandResponseEvent)
        json.dumps(value.to_json())
    else:
        assert isinstance(value, float)
        assert math.isfinite(value)
        if kind is not SignalKind.PRICE_PER_MWH:
            assert value >= 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CONFIGS), _payloads)
def test_fuzz_parsers_raise_only_payload_errors(
    config: tuple[SignalKind, SignalConfig], payload: bytes
) -> None:
    kind, signal = config
    _check_outcome(kind, make_parser(kind, signal, 4096), payload)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(CONFIGS), _json_values)
def test_fuzz_structured_json_raises_only_payload_errors(
    config: tuple[SignalKind, SignalConfig], obj: object
) -> None:
    kind, signal = config
    wrapped = {"a": obj} if signal.format == "json" else obj
    _check_outcome(kind, make_parser(kind, signal, 1 << 20), json.dumps(wrapped).encode())


def _check_outcome(kind: SignalKind, parser: Parser, payload: bytes) -> None:
    """Either a PayloadError with a known reason, or an accepted value that keeps the rules."""
    try:
        parsed: ParsedSignal | None = parser(payload)
        reason = None
    except PayloadError as err:  # anything else propagates and fails the test
        parsed, reason = None, err.reason
    if parsed is None:
        assert reason in REASONS
    else:
        _check_accepted(kind, parsed)


def _detail(kind: SignalKind, payload: bytes, signal: SignalConfig) -> str:
    with pytest.raises(PayloadError) as caught:
        parse_payload(kind, payload, signal)
    return caught.value.detail
