"""Hardware profiles: typical power and relative training speed of accelerators, shipped as YAML data.

Each ``<name>.yaml`` in this package is one :class:`HardwareProfile`. Files are read with ``yaml.safe_load``
through :mod:`importlib.resources`, so they work from an installed wheel too.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from greenferry.errors import ConfigError

__all__ = [
    "HardwareProfile",
    "get_profile",
    "list_profiles",
    "load_profile_file",
    "parse_profile_text",
    "resolve_profile",
]

# Profiles are a few hundred bytes; anything far larger is not a profile (and caps YAML parsing cost).
MAX_PROFILE_BYTES = 64 * 1024
_SLUG_RE = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"


class HardwareProfile(BaseModel):
    """One accelerator (with its host share) as the energy model sees it. Powers in W, memory in GiB."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str = Field(pattern=_SLUG_RE, description="Slug, equal to the file stem, e.g. 'h100-sxm'.")
    display_name: str = Field(min_length=1, description="Product name including the form factor.")
    vendor: str = Field(min_length=1)
    category: Literal["datacenter", "workstation", "edge"]
    memory_gib: float = Field(gt=0, allow_inf_nan=False, description="Accelerator memory (GiB).")
    idle_power_w: float = Field(gt=0, allow_inf_nan=False, description="Board power when idle (W).")
    train_power_w: float = Field(
        gt=0, allow_inf_nan=False, description="Typical sustained board power while training (W)."
    )
    max_power_w: float = Field(gt=0, allow_inf_nan=False, description="Board power limit, TDP/TGP (W).")
    power_limit_min_w: float = Field(gt=0, allow_inf_nan=False, description="Lowest settable power cap (W).")
    power_limit_max_w: float = Field(gt=0, allow_inf_nan=False, description="Highest settable power cap (W).")
    relative_throughput: float = Field(
        gt=0, allow_inf_nan=False, description="Training throughput relative to an H100 SXM (= 1.0)."
    )
    host_power_w: float = Field(
        ge=0, allow_inf_nan=False, description="Host share (CPU, memory, NIC, fans) while a job runs (W)."
    )
    notes: str = ""

    @model_validator(mode="after")
    def _consistent_powers(self) -> Self:
        if not self.idle_power_w < self.train_power_w <= self.max_power_w:
            raise ValueError(
                "powers must satisfy idle_power_w < train_power_w <= max_power_w "
                f"(got {self.idle_power_w} < {self.train_power_w} <= {self.max_power_w})"
            )
        if not self.power_limit_min_w <= self.power_limit_max_w <= self.max_power_w:
            raise ValueError(
                "power limits must satisfy power_limit_min_w <= power_limit_max_w <= max_power_w "
                f"(got {self.power_limit_min_w} <= {self.power_limit_max_w} <= {self.max_power_w})"
            )
        return self

    @property
    def memory_bytes(self) -> int:
        """Accelerator memory in bytes (GiB * 1024**3)."""
        return round(self.memory_gib * 1024**3)

    @property
    def job_power_w(self) -> float:
        """Power of a running training job including its host share, train_power_w + host_power_w (W)."""
        return self.train_power_w + self.host_power_w

    @property
    def idle_site_power_w(self) -> float:
        """Power while the accelerator idles with its host on, idle_power_w + host_power_w (W)."""
        return self.idle_power_w + self.host_power_w


def _reject_aliases(text: str, source: str) -> None:
    """Refuse YAML anchors/aliases: profiles never need them and nested aliases can expand exponentially."""
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise ConfigError(f"{source}: YAML aliases are not allowed in hardware profiles")
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from err


def _describe(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        field = ".".join(str(loc) for loc in item["loc"]) or "(profile)"
        parts.append(f"field {field!r}: {item['msg']}")
    return "; ".join(parts)


def parse_profile_text(text: str, source: str) -> HardwareProfile:
    """Validate YAML text as a profile.

    Args:
        text: the YAML document.
        source: where it came from (file name), used in error messages.

    Raises:
        ConfigError: too large, not YAML, uses aliases, not a mapping, or fails validation; names ``source``.
    """
    if len(text) > MAX_PROFILE_BYTES:
        raise ConfigError(f"{source}: {len(text)} bytes is too large for a hardware profile")
    _reject_aliases(text, source)
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as err:  # pragma: no cover - _reject_aliases parsed it already
        raise ConfigError(f"{source}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of profile fields, got {type(data).__name__}")
    try:
        return HardwareProfile.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_describe(err)}") from err


def load_profile_file(path: str | Path) -> HardwareProfile:
    """Load and validate one profile file (shipped or user-supplied).

    Raises:
        ConfigError: unreadable file, bad YAML or a failed validation; the message names the file and field.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_PROFILE_BYTES + 1)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read hardware profile: {err}") from err
    return parse_profile_text(text, str(path))


@functools.cache
def _shipped() -> dict[str, HardwareProfile]:
    profiles: dict[str, HardwareProfile] = {}
    for entry in resources.files(__name__).iterdir():
        if not entry.name.endswith(".yaml"):
            continue
        stem = entry.name.removesuffix(".yaml")
        profile = parse_profile_text(entry.read_text(encoding="utf-8"), f"{__name__}/{entry.name}")
        if profile.name != stem:
            raise ConfigError(f"{__name__}/{entry.name}: field 'name' is {profile.name!r}, expected {stem!r}")
        profiles[stem] = profile
    return dict(sorted(profiles.items()))


def list_profiles() -> list[HardwareProfile]:
    """Every shipped profile, sorted by name."""
    return list(_shipped().values())


def get_profile(name: str) -> HardwareProfile:
    """The shipped profile called ``name`` (e.g. ``"h100-sxm"``).

    Raises:
        ConfigError: unknown name; the message lists the known ones.
    """
    try:
        return _shipped()[name]
    except KeyError:
        known = ", ".join(_shipped())
        raise ConfigError(f"unknown hardware profile {name!r}; known profiles: {known}") from None


def resolve_profile(name_or_path: str) -> HardwareProfile:
    """A shipped profile by name, or a profile file when the argument looks like a path (``*.yaml``, ``a/b``).

    Raises:
        ConfigError: unknown name, or a file that does not load.
    """
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path or "\\" in name_or_path:
        return load_profile_file(name_or_path)
    return get_profile(name_or_path)
