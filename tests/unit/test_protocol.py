"""The peer protocol's messages refuse what a hostile or confused peer may send, naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from greenferry.core.jobs import JobSpec
from greenferry.core.protocol import Commit, Confirm, ConfirmReply, HeldQuery, Offer

_OFFER: dict[str, Any] = {
    "migration_id": "a" * 32,
    "source_node": "a",
    "job": JobSpec(name="j", command=["x"], checkpoint_size_bytes=100).model_dump(mode="json"),
    "epoch": 0,
    "checkpoint_bytes": 100,
    "predicted_migration_s": 5.0,
    "deadline_in_s": 60.0,
}


def test_an_offer_sends_at_most_its_checkpoint() -> None:
    assert Offer.model_validate(_OFFER).bytes_to_send == 100  # an older source: all of it
    assert Offer.model_validate({**_OFFER, "send_bytes": 7}).bytes_to_send == 7
    with pytest.raises(ValidationError, match=r"send_bytes \(101\) exceeds checkpoint_bytes \(100\)"):
        Offer.model_validate({**_OFFER, "send_bytes": 101})
    with pytest.raises(ValidationError, match="send_bytes"):
        Offer.model_validate({**_OFFER, "send_bytes": -1})


@pytest.mark.parametrize(
    ("model", "data", "field"),
    [
        (Confirm, {"resume_wait_s": -1}, "resume_wait_s"),
        (Confirm, {"resume_wait_s": 1e9}, "resume_wait_s"),
        (Confirm, {"resume_wait_s": float("nan")}, "resume_wait_s"),
        (ConfirmReply, {"confirmed": True, "restore_s": float("inf")}, "restore_s"),
        (Commit, {"epoch": 1, "manifest_s": -0.5}, "manifest_s"),
        (Commit, {"epoch": 1, "rebuild_s": 1e6}, "rebuild_s"),
        (Commit, {"epoch": 1, "changed_bytes": -1}, "changed_bytes"),
        (HeldQuery, {"chunks": "all of them"}, "chunks"),
    ],
)
def test_out_of_range_fields_are_named(model: Any, data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        model.model_validate(data)


def test_the_older_bodies_still_read() -> None:
    assert Confirm.model_validate({"protocol": 1, "reason": ""}).resume_wait_s == 0.0  # an Abort body
    assert ConfirmReply.model_validate({"confirmed": True}).resumed is False
    assert Commit.model_validate({"epoch": 1, "checkpoint_s": 2.0}).manifest_s is None
