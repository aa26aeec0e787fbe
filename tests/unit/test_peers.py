"""Node adverts (hostile payloads included), the peer directory, and the cluster view built from them."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenferry.core.feasibility import MigrationParams
from greenferry.core.peers import (
    MAX_ADVERT_BYTES,
    NodeAdvert,
    PeerDirectory,
    SiteState,
    cluster_view,
    forecast_matrix,
    job_view,
    parse_advert,
)
from greenferry.core.policy import Action, make_policy
from greenferry.core.signals import SurplusWindow
from greenferry.errors import PayloadError

T0 = 1_750_000_000.0


def _advert(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "version": 1,
        "node": "n2",
        "site": "s2",
        "peer_url": "https://10.0.0.2:9471",
        "gpu_slots": 4,
        "free_gpu_slots": 2,
        "surplus_w": 1500.0,
        "load_w": 0.0,
        "windows": [{"start": T0, "end": T0 + 7200, "power_w": 2000.0}],
        "jobs": [],
        "time_s": T0,
    }
    base.update(changes)
    return base


def _bytes(data: object) -> bytes:
    return json.dumps(data).encode()


def test_a_valid_advert_round_trips() -> None:
    advert = parse_advert(_bytes(_advert()), "n2")
    assert advert.free_gpu_slots == 2
    assert parse_advert(advert.to_json(), "n2") == advert
    assert advert.surplus_windows() == (SurplusWindow(T0, T0 + 7200, 2000.0),)


def test_unknown_fields_from_a_later_minor_version_are_ignored() -> None:
    assert parse_advert(_bytes(_advert(new_field={"x": 1})), "n2").node == "n2"


@pytest.mark.parametrize(
    ("payload", "reason", "fragment"),
    [
        (b"{not json", "bad_json", "not JSON"),
        (b"\xff\xfe", "bad_json", "not JSON"),
        (b"[1, 2]", "bad_schema", "object"),
        (_bytes(_advert(version=2)), "unsupported_version", "version 2"),
        (_bytes(_advert(surplus_w=-5)), "bad_schema", "surplus_w"),
        (_bytes(_advert(surplus_w="NaN")), "bad_schema", "surplus_w"),
        (_bytes(_advert(free_gpu_slots=9)), "bad_schema", "free_gpu_slots"),
        (_bytes(_advert(node="../etc")), "bad_schema", "node"),
        (_bytes(_advert(peer_url="file:///etc/passwd")), "bad_schema", "peer_url"),
        (_bytes(_advert(windows=[{"start": T0, "end": T0 - 1, "power_w": 1}])), "interval_order", ""),
        (_bytes({k: v for k, v in _advert().items() if k != "time_s"}), "bad_schema", "time_s"),
        (b"[" * 150_000 + b"]" * 150_000, "too_large", "limit"),
    ],
)
def test_hostile_adverts_are_refused_with_a_reason(payload: bytes, reason: str, fragment: str) -> None:
    with pytest.raises(PayloadError) as err:
        parse_advert(payload, "n2")
    assert err.value.reason == reason
    assert fragment in str(err.value)


def test_an_advert_must_name_the_node_of_its_topic() -> None:
    with pytest.raises(PayloadError) as err:
        parse_advert(_bytes(_advert()), "n3")
    assert err.value.reason == "node_mismatch"


def test_deep_json_is_refused_not_crashing() -> None:
    payload = b"[" * 5000 + b"]" * 5000
    assert len(payload) < MAX_ADVERT_BYTES
    with pytest.raises(PayloadError):
        parse_advert(payload, "n2")


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=12,
    )
)
def test_fuzzed_adverts_only_raise_payload_errors(data: object) -> None:
    try:
        payload = json.dumps(data).encode()
    except ValueError:
        return
    with contextlib.suppress(PayloadError):
        parse_advert(payload, "n2")


def test_directory_keeps_the_newest_advert_and_drops_silent_peers() -> None:
    directory = PeerDirectory("n1", max_age_s=60)
    new = NodeAdvert.model_validate(_advert(time_s=T0 + 10))
    old = NodeAdvert.model_validate(_advert(time_s=T0, surplus_w=1.0))
    directory.update(new, received_s=100.0)
    directory.update(old, received_s=101.0)
    assert directory.get("n2", 101.0) == new
    directory.update(NodeAdvert.model_validate(_advert(node="n1")), received_s=101.0)  # own advert
    assert [a.node for a in directory.peers(150.0)] == ["n2"]
    assert directory.peers(161.0) == []
    assert directory.get("n2", 161.0) is None
    directory.update(new, received_s=170.0)
    directory.forget("n2")
    assert directory.peers(170.0) == []


def test_forecast_matrix_averages_windows_over_epochs() -> None:
    windows = [[SurplusWindow(T0 + 150, T0 + 450, 1000.0)], []]
    matrix = forecast_matrix(windows, [0.0, 700.0], T0, 300.0, 3)
    np.testing.assert_allclose(matrix[0], [500.0, 500.0, 0.0])
    np.testing.assert_allclose(matrix[1], [700.0, 0.0, 0.0])  # epoch 0 takes the measured surplus


def test_the_policy_moves_a_job_from_a_dirty_node_to_a_covered_peer() -> None:
    """The daemon's view drives the same policy code as the simulator."""
    sites = [
        SiteState("n1", 0.0, 400.0, 0, ()),
        SiteState("n2", 2000.0, 0.0, 2, (SurplusWindow(T0, T0 + 6 * 3600, 2000.0),)),
    ]
    params = MigrationParams()
    job = job_view(0, 400.0, 1e9, 4 * 3600.0, float("inf"), params, running=True)
    view = cluster_view(T0, sites, {(0, 1): 1e9}, set(), [job], 300.0, 86400.0)
    for name in ("feasibility-aware", "lookahead", "energy-greedy"):
        decision = make_policy(name).decide(T0, view)[0]
        assert decision.action is Action.MIGRATE, name
        assert decision.dst_site == 1, name


def test_no_move_over_a_link_too_slow_for_the_window() -> None:
    sites = [
        SiteState("n1", 0.0, 400.0, 0, ()),
        SiteState("n2", 2000.0, 0.0, 2, (SurplusWindow(T0, T0 + 3600, 2000.0),)),
    ]
    job = job_view(0, 400.0, 100e9, 4 * 3600.0, float("inf"), MigrationParams(), running=True)
    view = cluster_view(T0, sites, {(0, 1): 1e8}, set(), [job], 300.0, 86400.0)
    decision = make_policy("feasibility-aware").decide(T0, view).get(0)
    assert decision is None or decision.action is not Action.MIGRATE
