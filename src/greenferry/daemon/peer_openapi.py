"""The peer API as an OpenAPI 3.1 document, generated from the protocol's models.

``python -m greenferry.daemon.peer_openapi docs/peer-api.yaml`` writes it; a test fails when the file and
the models disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from greenferry.core import protocol
from greenferry.daemon.peer import HELD_BODY_LIMIT_BYTES

__all__ = ["openapi_document", "openapi_yaml"]

_MODELS: tuple[type[BaseModel], ...] = (
    protocol.HeldQuery,
    protocol.HeldReply,
    protocol.Offer,
    protocol.OfferReply,
    protocol.Prepare,
    protocol.Commit,
    protocol.CommitReply,
    protocol.Confirm,
    protocol.ConfirmReply,
    protocol.Abort,
    protocol.MigrationStatus,
)
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
_ERRORS = {
    "400": "the body is not JSON",
    "401": "no verified client certificate (or, insecure, no node header)",
    "403": "the caller is not the node the message names",
    "404": "no such migration or reservation for this caller",
    "409": "out of order (commit before prepare, wrong epoch, replay)",
    "413": f"the body exceeds peer.max_body_bytes ({HELD_BODY_LIMIT_BYTES} bytes for /v1/chunks/held)",
    "415": "the body is not application/json",
    "422": "a field is missing or out of range (the message names it), a bad signature or manifest",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(model)}}}


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": description, "content": {"application/json": {"schema": schema}}}
    }
    for code, text in _ERRORS.items():
        responses[code] = {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return responses


def _flag(name: str) -> dict[str, Any]:
    return {"type": "object", "required": [name], "properties": {name: {"type": "boolean"}}}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the peer API."""
    schemas: dict[str, Any] = {"Error": _ERROR}
    for model in _MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas[name] = sub
        schemas[model.__name__] = schema
    mid = {
        "name": "migration_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[a-f0-9]{32}$"},
    }
    paths: dict[str, Any] = {
        "/v1/info": {
            "get": {"summary": "The node's advert", "responses": _ok("the advert", {"type": "object"})}
        },
        "/v1/chunks/held": {
            "post": {
                "summary": "How much of these chunks the chunk cache holds (before an offer)",
                "description": (
                    "Added within version 1: a daemon without this route answers 404, and the source then"
                    " predicts the move with the whole checkpoint."
                ),
                "requestBody": _body(protocol.HeldQuery),
                "responses": _ok("held chunks and bytes", _ref(protocol.HeldReply)),
            }
        },
        "/v1/migrations": {
            "post": {
                "summary": "Offer a job",
                "requestBody": _body(protocol.Offer),
                "responses": _ok("accepted or not", _ref(protocol.OfferReply)),
            }
        },
        "/v1/migrations/{migration_id}": {
            "get": {
                "summary": "What this node journaled",
                "parameters": [mid],
                "responses": _ok("status", _ref(protocol.MigrationStatus)),
            }
        },
        "/v1/migrations/{migration_id}/prepare": {
            "post": {
                "summary": "The signed manifest",
                "parameters": [mid],
                "requestBody": _body(protocol.Prepare),
                "responses": _ok("rebuilt", _flag("prepared")),
            }
        },
        "/v1/migrations/{migration_id}/commit": {
            "post": {
                "summary": "Start the job at epoch + 1",
                "parameters": [mid],
                "requestBody": _body(protocol.Commit),
                "responses": _ok("running", _ref(protocol.CommitReply)),
            }
        },
        "/v1/migrations/{migration_id}/confirm": {
            "post": {
                "summary": "The source let go",
                "description": (
                    "With resume_wait_s > 0 the answer comes once the job said it resumed, or after so long."
                    " A version-1 daemon that predates Confirm sent an Abort body here and read nothing back"
                    " but confirmed."
                ),
                "parameters": [mid],
                "requestBody": _body(protocol.Confirm),
                "responses": _ok("owned", _ref(protocol.ConfirmReply)),
            }
        },
        "/v1/migrations/{migration_id}/abort": {
            "post": {
                "summary": "Forget the migration",
                "parameters": [mid],
                "requestBody": _body(protocol.Abort),
                "responses": _ok("forgotten", _flag("aborted")),
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "greenferry peer API",
            "version": str(protocol.PROTOCOL_VERSION),
            "description": (
                "Daemon-to-daemon migration protocol; see docs/peer-protocol.md."
                " Chunk routes: docs/transfer.md."
            ),
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }


def openapi_yaml() -> str:
    """The document as YAML text."""
    header = "# Generated by python -m greenferry.daemon.peer_openapi: do not edit by hand.\n"
    return header + yaml.safe_dump(openapi_document(), sort_keys=False, width=110)


def main(argv: list[str]) -> int:
    """Write the document to the path in ``argv`` (default docs/peer-api.yaml)."""
    Path(argv[0] if argv else "docs/peer-api.yaml").write_text(openapi_yaml(), encoding="utf-8")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
