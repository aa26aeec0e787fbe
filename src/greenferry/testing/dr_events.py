"""OpenADR 3 event payloads for tests and benches: one interval and one payload, as grid operators send."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

__all__ = ["openadr3_event", "simple_event"]


def _iso(time_s: float) -> str:
    return dt.datetime.fromtimestamp(time_s, dt.UTC).isoformat().replace("+00:00", "Z")


def openadr3_event(
    event_id: str,
    start_s: float,
    duration_s: float,
    payload: dict[str, Any],
    *,
    modification: int = 0,
    units: str | None = None,
    cancelled: bool = False,
    program_id: str = "greenferry-test",
) -> bytes:
    """The JSON of an event with one interval [start_s, start_s + duration_s) carrying ``payload``.

    ``units`` adds a payload descriptor (W, KW, MW for power payloads); ``cancelled`` marks it cancelled.
    """
    body: dict[str, Any] = {
        "id": event_id,
        "programID": program_id,
        "objectType": "EVENT",
        "modificationNumber": modification,
        "intervalPeriod": {"start": _iso(start_s), "duration": f"PT{duration_s:g}S"},
        "intervals": [{"id": 0, "payloads": [payload]}],
    }
    if units is not None:
        body["payloadDescriptors"] = [{"payloadType": payload["type"], "units": units}]
    if cancelled:
        body["cancelled"] = True
    return json.dumps(body).encode()


def simple_event(
    event_id: str, start_s: float, level: int, *, duration_s: float = 3600.0, cancelled: bool = False
) -> bytes:
    """A SIMPLE level event; a cancelled copy carries the next modification number."""
    return openadr3_event(
        event_id,
        start_s,
        duration_s,
        {"type": "SIMPLE", "values": [level]},
        modification=int(cancelled),
        cancelled=cancelled,
    )
