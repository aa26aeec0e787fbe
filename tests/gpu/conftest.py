"""GPU tests need NVML with at least one device; elsewhere they skip, saying why."""

from __future__ import annotations

import functools

import pytest

from greenferry.adapters.nvml import probe_nvml
from greenferry.errors import ServiceUnavailableError


@functools.cache
def nvml_unavailable_reason() -> str | None:
    """None when NVML loads and sees a GPU, else why not (NVML's own message)."""
    try:
        found = probe_nvml()
    except ServiceUnavailableError as err:
        return f"needs NVML and an NVIDIA GPU: {err}"
    if " 0 GPU(s)" in found:
        return f"needs an NVIDIA GPU: {found}"
    return None


@pytest.fixture(autouse=True)
def _skip_without_nvml(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("gpu") is None:
        return
    reason = nvml_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
