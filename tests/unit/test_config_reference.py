"""docs/configuration.md's reference is generated from the models and must match them."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenferry.config import DaemonConfig, SignalsConfig
from greenferry.config_reference import BEGIN, END, reference_markdown, update_page

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_page_matches_the_models() -> None:
    text = PAGE.read_text(encoding="utf-8")
    assert update_page(text) == text, "run: python -m greenferry.config_reference docs/configuration.md"


def test_every_key_has_a_row_with_its_environment_variable() -> None:
    reference = reference_markdown()
    assert "`GREENFERRY_MQTT__TLS__CA_FILE`" in reference
    assert "`GREENFERRY_SIGNALS__<KIND>__MAX_AGE_S`" in reference
    for kind in SignalsConfig.model_fields:
        assert f"`{kind}`" in reference
    for section in ("node", "mqtt", "power", "http"):
        model = DaemonConfig.model_fields[section].annotation
        models = [m for m in (model, *getattr(model, "__args__", ())) if hasattr(m, "model_fields")]
        for name, field in models[0].model_fields.items():
            if not hasattr(field.annotation, "model_fields") and name != "tls":
                assert f"`GREENFERRY_{section.upper()}__{name.upper()}`" in reference, name


def test_every_field_is_described() -> None:
    for line in reference_markdown().splitlines():
        if line.startswith("| `"):
            assert not line.rstrip().endswith("|  |"), f"field without a description: {line}"


def test_a_page_without_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="markers"):
        update_page("# nothing here\n")
    assert update_page(f"a\n{BEGIN}\nstale\n{END}\nb\n").startswith(f"a\n{BEGIN}\n\n### top level")


def test_every_config_section_has_a_table() -> None:
    from greenferry.config import DaemonConfig
    from greenferry.config_reference import _is_section

    text = reference_markdown()
    sections = [name for name, field in DaemonConfig.model_fields.items() if _is_section(field.annotation)]
    missing = [name for name in sections if f"[{name}" not in text]
    assert not missing, f"sections without a reference table: {missing}"
