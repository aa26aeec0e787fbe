"""docs/peer-api.yaml is generated from the protocol's models and must match them."""

from __future__ import annotations

from pathlib import Path

import yaml

from greenferry.daemon.peer_openapi import openapi_document, openapi_yaml

PAGE = Path(__file__).resolve().parents[2] / "docs" / "peer-api.yaml"


def test_the_file_matches_the_models() -> None:
    assert PAGE.read_text(encoding="utf-8") == openapi_yaml(), "run: python -m greenferry.daemon.peer_openapi"


def test_every_route_of_the_server_is_documented() -> None:
    paths = openapi_document()["paths"]
    for route in ("/v1/info", "/v1/chunks/held", "/v1/migrations", "/v1/migrations/{migration_id}/commit"):
        assert route in paths
    offer = yaml.safe_load(PAGE.read_text())["components"]["schemas"]["Offer"]
    assert {"migration_id", "job", "epoch", "checkpoint_bytes"} <= set(offer["required"])
