"""Hardware profiles: every shipped file loads and is consistent; bad files fail with the file's name."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import yaml

from greenferry.errors import ConfigError
from greenferry.hardware_profiles import (
    HardwareProfile,
    get_profile,
    list_profiles,
    load_profile_file,
    resolve_profile,
)

EXPECTED_NAMES = {
    "h100-sxm",
    "h100-pcie",
    "a100-40gb",
    "a100-80gb",
    "l40s",
    "l4",
    "rtx-4090",
    "jetson-agx-orin",
    "jetson-orin-nano",
    "jetson-thor",
}
SHIPPED_FILES = sorted(
    entry.name
    for entry in resources.files("greenferry.hardware_profiles").iterdir()
    if entry.name.endswith(".yaml")
)
GOOD = {
    "name": "test-gpu",
    "display_name": "Test GPU 16GB (PCIe)",
    "vendor": "Acme",
    "category": "workstation",
    "memory_gib": 16,
    "idle_power_w": 15,
    "train_power_w": 200,
    "max_power_w": 250,
    "power_limit_min_w": 100,
    "power_limit_max_w": 250,
    "relative_throughput": 0.2,
    "host_power_w": 40,
    "notes": "",
}


@pytest.mark.parametrize("file_name", SHIPPED_FILES)
def test_every_shipped_file_loads_and_its_stem_is_its_name(file_name: str) -> None:
    with resources.as_file(resources.files("greenferry.hardware_profiles") / file_name) as path:
        profile = load_profile_file(path)
    assert profile.name == Path(file_name).stem
    assert get_profile(profile.name) == profile


def test_the_shipped_set_is_complete_sorted_and_unique() -> None:
    names = [profile.name for profile in list_profiles()]
    assert set(names) == EXPECTED_NAMES
    assert names == sorted(names)
    assert len(names) == len(set(names))


def test_board_powers_match_public_figures() -> None:
    # Typical board power from the domain notes (one form factor per profile).
    expected_max_w = {
        "h100-sxm": 700,
        "a100-40gb": 250,
        "l40s": 350,
        "rtx-4090": 450,
        "l4": 72,
        "jetson-agx-orin": 60,
        "jetson-orin-nano": 15,
        "jetson-thor": 130,
    }
    for name, max_w in expected_max_w.items():
        assert get_profile(name).max_power_w == max_w
    assert get_profile("h100-sxm").relative_throughput == 1.0
    assert all(p.relative_throughput <= 1.0 for p in list_profiles())
    assert {p.category for p in list_profiles() if p.name.startswith("jetson")} == {"edge"}
    assert all(p.host_power_w < 10 for p in list_profiles() if p.category == "edge")


def test_derived_quantities() -> None:
    profile = get_profile("a100-40gb")
    assert profile.memory_bytes == 40 * 1024**3
    assert profile.job_power_w == profile.train_power_w + profile.host_power_w
    assert profile.idle_site_power_w == profile.idle_power_w + profile.host_power_w


def test_unknown_name_lists_known_profiles() -> None:
    with pytest.raises(ConfigError, match=r"unknown hardware profile 'h200'.*h100-sxm.*jetson-thor"):
        get_profile("h200")


def _write(tmp_path: Path, text: str, name: str = "test-gpu.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_user_file_loads_and_resolves_by_path(tmp_path: Path) -> None:
    path = _write(tmp_path, yaml.safe_dump(GOOD))
    assert load_profile_file(path) == HardwareProfile(**GOOD)  # type: ignore[arg-type]
    assert resolve_profile(str(path)).name == "test-gpu"
    assert resolve_profile("l4").name == "l4"


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"idle_power_w": None}, "idle_power_w"),  # missing field
        ({"memory_gib": "lots"}, "memory_gib"),  # wrong type
        ({"memory_gib": "80"}, "memory_gib"),  # strict: no string-to-number coercion
        ({"idle_power_w": 300}, "idle_power_w < train_power_w"),  # idle above max
        ({"train_power_w": 260}, "train_power_w <= max_power_w"),
        ({"power_limit_min_w": 260}, "power_limit_min_w <= power_limit_max_w"),
        ({"power_limit_max_w": 300}, "power_limit_max_w <= max_power_w"),
        ({"relative_throughput": 0}, "relative_throughput"),
        ({"category": "mainframe"}, "category"),
        ({"name": "Test GPU"}, "name"),
        ({"watts": 5}, "watts"),  # extra field
        ({"max_power_w": float("inf")}, "max_power_w"),
    ],
)
def test_invalid_profiles_name_the_file_and_field(
    tmp_path: Path, change: dict[str, object], needle: str
) -> None:
    data = {**GOOD, **change}
    data = {key: value for key, value in data.items() if value is not None}
    path = _write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(ConfigError) as excinfo:
        load_profile_file(path)
    assert str(path) in str(excinfo.value)
    assert needle in str(excinfo.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        ("", "expected a mapping"),
        ("\tname: tab-indented: nope\n", "not valid YAML"),
    ],
)
def test_non_profile_yaml_is_rejected(tmp_path: Path, text: str, needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=needle) as excinfo:
        load_profile_file(path)
    assert str(path) in str(excinfo.value)


def test_yaml_alias_bombs_are_rejected_before_expansion(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        previous = f"*a{level - 1}"
        lines.append(f"a{level}: &a{level} [{', '.join([previous] * 9)}]")
    lines.append("notes: *a9")
    path = _write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="aliases are not allowed") as excinfo:
        load_profile_file(path)
    assert str(path) in str(excinfo.value)


def test_huge_files_are_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, yaml.safe_dump(GOOD) + "#" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="too large"):
        load_profile_file(path)


def test_missing_or_binary_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_profile_file(tmp_path / "absent.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=r"binary\.yaml"):
        load_profile_file(binary)
