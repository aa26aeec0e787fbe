"""The checkpoint manifest: hostile manifests are refused with the field named, valid ones round-trip."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from greenferry.core import manifest as manifest_module
from greenferry.core.manifest import (
    MAX_DEPTH,
    MAX_FILES,
    MIN_CHUNK_SIZE_BYTES,
    ChunkRef,
    Manifest,
    canonical_manifest_bytes,
    check_relative_path,
    parse_manifest,
)
from greenferry.errors import PayloadError

CHUNK = MIN_CHUNK_SIZE_BYTES


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def file_entry(path: str, size_bytes: int, tag: str = "", mode: int = 0o644) -> dict[str, Any]:
    """A file of ``size_bytes`` cut into CHUNK-sized chunks whose hashes derive from ``tag or path``."""
    chunks = []
    left = size_bytes
    index = 0
    while left > 0:
        size = min(CHUNK, left)
        chunks.append({"sha256": sha(f"{tag or path}:{index}:{size}"), "size_bytes": size})
        left -= size
        index += 1
    return {"path": path, "size_bytes": size_bytes, "mode": mode, "chunks": chunks}


def manifest_dict(*files: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    entries = list(files) or [file_entry("model.safetensors", 3 * CHUNK + 10), file_entry("opt/state.pt", 5)]
    data: dict[str, Any] = {
        "version": 1,
        "job_id": "llm-7b",
        "epoch": 4,
        "source_node": "node-a",
        "created_s": 1_700_000_000.25,
        "chunk_size_bytes": CHUNK,
        "files": entries,
        "total_bytes": sum(entry["size_bytes"] for entry in entries),
        "compression": "none",
    }
    data.update(overrides)
    return data


def refused(data: Any) -> str:
    """The validation message for ``data``, which must be refused."""
    with pytest.raises(ValidationError) as caught:
        Manifest.model_validate(data)
    return str(caught.value)


# --- valid manifests ------------------------------------------------------------------------------------


def test_a_valid_manifest_round_trips_through_its_canonical_bytes() -> None:
    manifest = Manifest.model_validate(manifest_dict())
    canonical = manifest.canonical_bytes()
    assert canonical == canonical_manifest_bytes(manifest)
    assert Manifest.model_validate_json(canonical) == manifest
    # Key order and whitespace of the JSON it came from do not matter; the canonical form is compact.
    shuffled = json.dumps(dict(reversed(list(manifest_dict().items()))), indent=2)
    assert Manifest.model_validate_json(shuffled).canonical_bytes() == canonical
    assert b" " not in canonical
    assert canonical.startswith(b'{"chunk_size_bytes":')


def test_canonical_bytes_change_with_any_value() -> None:
    base = Manifest.model_validate(manifest_dict()).canonical_bytes()
    assert Manifest.model_validate(manifest_dict(epoch=5)).canonical_bytes() != base
    assert Manifest.model_validate(manifest_dict(created_s=1_700_000_000.5)).canonical_bytes() != base


def test_unicode_paths_are_canonical_ascii() -> None:
    manifest = Manifest.model_validate(manifest_dict(file_entry("données/état ü.pt", 7)))
    canonical = manifest.canonical_bytes()
    canonical.decode("ascii")
    assert Manifest.model_validate_json(canonical).files[0].path == "données/état ü.pt"


def test_distinct_and_missing_chunks() -> None:
    shared = file_entry("a.bin", 2 * CHUNK, tag="same")
    copy_of = file_entry("b/a-copy.bin", 2 * CHUNK, tag="same")
    other = file_entry("c.bin", CHUNK + 1)
    manifest = Manifest.model_validate(manifest_dict(shared, copy_of, other))
    distinct = manifest.distinct_chunks()
    assert [ref.sha256 for ref in distinct] == [
        shared["chunks"][0]["sha256"],
        shared["chunks"][1]["sha256"],
        other["chunks"][0]["sha256"],
        other["chunks"][1]["sha256"],
    ]
    assert manifest.distinct_bytes() == 3 * CHUNK + 1
    held = {shared["chunks"][0]["sha256"], other["chunks"][1]["sha256"], sha("unrelated")}
    assert [ref.sha256 for ref in manifest.missing_chunks(held)] == [
        shared["chunks"][1]["sha256"],
        other["chunks"][0]["sha256"],
    ]
    assert manifest.missing_bytes(held) == 2 * CHUNK
    assert manifest.missing_bytes(set()) == manifest.distinct_bytes()
    assert manifest.missing_bytes({ref.sha256 for ref in distinct}) == 0


def test_empty_files_and_an_empty_checkpoint_are_valid() -> None:
    manifest = Manifest.model_validate(manifest_dict(file_entry("empty", 0)))
    assert manifest.files[0].chunks == []
    assert manifest.total_bytes == 0
    nothing = manifest_dict()
    nothing["files"] = []
    nothing["total_bytes"] = 0
    assert Manifest.model_validate(nothing).distinct_chunks() == []


@pytest.mark.parametrize(
    "path",
    ["model.safetensors", "a/b/c.pt", ".hidden", "..dots-in-name", "name with spaces", "x" * 255, "step:100"],
)
def test_ordinary_paths_are_accepted(path: str) -> None:
    assert check_relative_path(path) == path
    Manifest.model_validate(manifest_dict(file_entry(path, 1)))


# --- hostile paths --------------------------------------------------------------------------------------


HOSTILE_PATHS = {
    "../../etc/passwd": "'..' component",
    "..": "'..' component",
    "a/../../b": "'..' component",
    "a/./b": "'.' component",
    "./a": "'.' component",
    "/etc/passwd": "absolute",
    "//server/share": "absolute",
    "C:/Windows/system32": "absolute",
    "c:evil": "absolute",
    "a//b": "empty component",
    "a/": "empty component",
    "": "empty path",
    "a\x00b": "NUL",
    "\x00": "NUL",
    "a\nb": "control character",
    "..\\..\\etc\\passwd": "backslash",
    "a\\b": "backslash",
    "bad\ud800surrogate": "not valid UTF-8",
    "/".join(["d"] * (MAX_DEPTH + 1)): "nested",
    "x" * 256: "longer than 255 bytes",
    "é" * 128: "longer than 255 bytes",
    "a/" * 2100 + "b": "longer than 4096",
}


@pytest.mark.parametrize(
    ("path", "problem"), HOSTILE_PATHS.items(), ids=[repr(p[:30]) for p in HOSTILE_PATHS]
)
def test_hostile_paths_are_refused_naming_the_path(path: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check_relative_path(path)
    message = refused(manifest_dict(file_entry(path, 1, tag="t")))
    assert "files.0.path" in message
    assert problem in message


def test_a_path_that_is_not_a_string_is_refused() -> None:
    entry = file_entry("ok", 1)
    entry["path"] = ["a", "b"]
    assert "files.0.path" in refused(manifest_dict(entry))


def test_duplicate_paths_are_refused() -> None:
    message = refused(manifest_dict(file_entry("a/b", 1), file_entry("a/b", 2, tag="other")))
    assert "'a/b' is listed twice" in message


@pytest.mark.parametrize(("outer", "inner"), [("a", "a/b"), ("a/b", "a/b/c/d"), ("x/y", "x/y/z")])
def test_a_file_under_another_files_path_is_refused(outer: str, inner: str) -> None:
    for order in ((outer, inner), (inner, outer)):
        message = refused(manifest_dict(*(file_entry(path, 1) for path in order)))
        assert f"{inner!r} lies under {outer!r}, which is a file" in message


def test_siblings_sharing_a_prefix_are_not_nested() -> None:
    Manifest.model_validate(manifest_dict(file_entry("a", 1), file_entry("ab/c", 1), file_entry("a.d/e", 1)))


# --- sizes, counts and versions -------------------------------------------------------------------------


def test_too_many_files_is_refused_before_each_is_validated() -> None:
    entry = file_entry("x", 1)
    data = manifest_dict(entry)
    data["files"] = [entry] * (MAX_FILES + 1)  # the same dict: cheap, and it fails on the count first
    message = refused(data)
    assert f"{MAX_FILES + 1} files (at most {MAX_FILES})" in message


def test_too_many_chunk_references_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_module, "MAX_CHUNKS", 5)
    assert "chunks in one file (at most 5)" in refused(manifest_dict(file_entry("big", 6 * CHUNK)))
    message = refused(manifest_dict(file_entry("a", 3 * CHUNK), file_entry("b", 3 * CHUNK)))
    assert "6 chunk references (at most 5)" in message


@pytest.mark.parametrize("version", [0, 2, "1", 1.0, True, None, [1]])
def test_a_wrong_version_is_refused(version: Any) -> None:
    message = refused(manifest_dict(version=version))
    assert "version" in message
    assert "this node reads 1" in message


def test_a_missing_version_means_version_one() -> None:
    data = manifest_dict()
    del data["version"]
    assert Manifest.model_validate(data).version == 1


def test_sizes_must_add_up() -> None:
    entry = file_entry("a", 2 * CHUNK)
    entry["size_bytes"] += 1
    assert "chunks add up to" in refused(manifest_dict(entry))
    assert "total_bytes is" in refused(manifest_dict(total_bytes=1))
    assert "total_bytes" in refused(manifest_dict(total_bytes=2**41))


def test_chunks_must_follow_the_chunk_size() -> None:
    short_inner = file_entry("a", 2 * CHUNK)
    short_inner["chunks"][0]["size_bytes"] = CHUNK - 1
    short_inner["size_bytes"] -= 1
    assert "every chunk but the last" in refused(manifest_dict(short_inner))


def test_a_chunk_larger_than_the_chunk_size_is_refused() -> None:
    entry = {"path": "a", "size_bytes": CHUNK + 1, "chunks": [{"sha256": sha("a"), "size_bytes": CHUNK + 1}]}
    assert "larger than chunk_size_bytes" in refused(manifest_dict(entry))


def test_one_hash_with_two_sizes_is_refused() -> None:
    first = {"path": "a", "size_bytes": 5, "chunks": [{"sha256": sha("x"), "size_bytes": 5}]}
    second = {"path": "b", "size_bytes": 6, "chunks": [{"sha256": sha("x"), "size_bytes": 6}]}
    assert "appears with sizes 5 and 6" in refused(manifest_dict(first, second))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("job_id", "../job"),
        ("job_id", "UPPER"),
        ("source_node", "node a"),
        ("source_node", ""),
        ("epoch", -1),
        ("epoch", True),
        ("epoch", "4"),
        ("created_s", float("nan")),
        ("created_s", float("inf")),
        ("created_s", -1.0),
        ("chunk_size_bytes", 1),
        ("chunk_size_bytes", 2**30),
        ("compression", "gzip"),
        ("files", "model.pt"),
        ("files", {"path": "a"}),
        ("surprise", 1),
    ],
)
def test_malformed_fields_are_refused_by_name(field: str, value: Any) -> None:
    assert field in refused(manifest_dict(**{field: value}))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("sha256", "A" * 64),
        ("sha256", "0" * 63),
        ("sha256", "../" + "0" * 61),
        ("sha256", 123),
        ("size_bytes", 0),
        ("size_bytes", -5),
        ("size_bytes", True),
        ("size_bytes", 2**40),
        ("extra", "x"),
    ],
)
def test_malformed_chunk_refs_are_refused(key: str, value: Any) -> None:
    entry = file_entry("a", 5)
    entry["chunks"][0][key] = value
    assert "files.0.chunks.0" in refused(manifest_dict(entry))


@pytest.mark.parametrize("mode", [-1, 0o1000, 0o4755, "0644", 420.0])
def test_modes_are_permission_bits_only(mode: Any) -> None:
    assert "files.0.mode" in refused(manifest_dict(file_entry("a", 1, mode=mode)))


def test_parse_manifest_names_the_field_in_a_payload_error() -> None:
    text = json.dumps(manifest_dict(file_entry("../../etc/passwd", 1)))
    with pytest.raises(PayloadError) as caught:
        parse_manifest(text.encode())
    assert caught.value.reason == "bad_manifest"
    assert caught.value.detail.startswith("files.0.path:")
    with pytest.raises(PayloadError, match="bad_manifest"):
        parse_manifest(b"{not json")
    assert parse_manifest(manifest_dict()) == Manifest.model_validate(manifest_dict())


def test_chunk_refs_are_strict() -> None:
    with pytest.raises(ValidationError):
        ChunkRef.model_validate({"sha256": sha("a"), "size_bytes": "5"})


# --- fuzz -----------------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
PATHS = st.one_of(
    st.sampled_from(list(HOSTILE_PATHS)),
    st.lists(
        st.sampled_from(["a", "b", "..", ".", "", "c\\d", "e\x00", "é", "C:", "~"]), min_size=1, max_size=4
    ).map("/".join),
    st.text(max_size=20),
    JSON,
)
SIZES = st.one_of(st.integers(-3, 3 * CHUNK), st.sampled_from([CHUNK, 2**40, 2**70]), JSON)
CHUNK_REFS = st.fixed_dictionaries(
    {
        "sha256": st.one_of(st.sampled_from([sha("a"), sha("b"), "f" * 64, "F" * 64]), JSON),
        "size_bytes": SIZES,
    }
)
FILES = st.fixed_dictionaries(
    {"path": PATHS, "size_bytes": SIZES, "chunks": st.lists(CHUNK_REFS, max_size=3) | JSON},
    optional={"mode": st.one_of(st.integers(-1, 0o1000), JSON), "owner": JSON},
)
MANIFESTS = st.fixed_dictionaries(
    {
        "job_id": st.one_of(st.just("job-1"), JSON),
        "epoch": st.one_of(st.integers(-1, 2**63), JSON),
        "source_node": st.one_of(st.just("node-a"), JSON),
        "created_s": st.one_of(st.floats(), JSON),
        "chunk_size_bytes": st.one_of(st.just(CHUNK), SIZES),
        "files": st.lists(FILES, max_size=4) | JSON,
        "total_bytes": SIZES,
    },
    optional={"version": st.one_of(st.just(1), JSON), "compression": st.one_of(st.just("zstd"), JSON)},
)


def _check_accepted(manifest: Manifest) -> None:
    """What every manifest that validates must satisfy."""
    paths = [file.path for file in manifest.files]
    assert len(set(paths)) == len(paths)
    for path in paths:
        check_relative_path(path)
    assert Manifest.model_validate_json(manifest.canonical_bytes()) == manifest
    assert manifest.total_bytes == sum(file.size_bytes for file in manifest.files)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MANIFESTS)
def test_fuzzed_manifest_dicts_only_raise_validation_errors(data: dict[str, Any]) -> None:
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError:
        return
    _check_accepted(manifest)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(PATHS, st.integers(0, 3 * CHUNK)), max_size=5))
def test_fuzzed_consistent_manifests_validate_or_name_a_path(files: list[tuple[Any, int]]) -> None:
    """Sizes add up here, so whatever is refused must be about a path (or a JSON value used as one)."""
    entries = [
        file_entry("x", size, tag=str(index)) | {"path": path} for index, (path, size) in enumerate(files)
    ]
    data = manifest_dict(*entries) if entries else manifest_dict()
    if not entries:
        data["files"], data["total_bytes"] = [], 0
    try:
        manifest = Manifest.model_validate(copy.deepcopy(data))
    except ValidationError as err:
        message = str(err)
    else:
        _check_accepted(manifest)
        return
    assert "path" in message or "lies under" in message or "listed twice" in message
