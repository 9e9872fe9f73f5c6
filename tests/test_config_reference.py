"""The configuration reference (docs/config.md) is generated from the models and kept current;
the two cooldowns have names that say what they do, and the old names still work with a
warning."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from heald.config import ConfigDeprecationWarning, ConfigError, HealdConfig, load_config
from heald.config_reference import json_schema, missing_descriptions, render_reference, sections
from tests.conftest import REPO


def test_docs_config_md_is_the_generated_reference() -> None:
    committed = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert committed == render_reference(), (
        "docs/config.md is out of date: run `heald config reference > docs/config.md`")


def test_every_key_has_a_description() -> None:
    assert missing_descriptions() == []


def test_the_reference_names_every_key_with_type_default_and_unit() -> None:
    text = render_reference()
    for section in sections():
        heading = f"## `{section.path}`" if section.path else "## top level"
        assert heading in text
        for name, field in section.model.model_fields.items():
            if not field.exclude:
                assert f"| `{name}` |" in text, f"{section.path}.{name} missing"
    row = next(line for line in text.splitlines() if line.startswith("| `retry_delay_seconds` |"))
    assert "number (≥ 0)" in row and "`5.0`" in row and "| seconds |" in row and "deprecated alias: `cooldown_seconds`" in row
    assert "| `max_body_bytes` | integer (≥ 1024, ≤ 1073741824) | `4194304` | bytes |" in text
    assert "| `memory_mb` |" in text and "| MiB |" in text


def test_a_field_without_description_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    field = HealdConfig.model_fields["environment"]
    monkeypatch.setattr(field, "description", None)
    assert missing_descriptions() == ["environment"]
    with pytest.raises(ValueError, match="no description: environment"):
        render_reference()


def test_json_schema_describes_the_file() -> None:
    schema = json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert "source_file" not in schema["properties"]
    assert schema["additionalProperties"] is False
    healing = schema["$defs"]["HealingConfig"]["properties"]
    assert healing["retry_delay_seconds"]["default"] == 5.0 and healing["retry_delay_seconds"]["description"]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "heald.yaml"
    p.write_text(text)
    return p


def test_new_names_load_without_warnings(tmp_path: Path) -> None:
    p = _write(tmp_path, "healing:\n  retry_delay_seconds: 2\npolicy:\n  budgets:\n    remedy_cooldown_seconds: 60\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = load_config(p)
    assert cfg.healing.retry_delay_seconds == 2 and cfg.policy.budgets.remedy_cooldown_seconds == 60
    assert cfg.deprecations == []


def test_old_names_still_work_and_are_reported_with_file_line_and_new_key(tmp_path: Path) -> None:
    p = _write(tmp_path, "healing:\n  max_attempts: 2\n  cooldown_seconds: 3\npolicy:\n  budgets:\n"
                         "    cooldown_seconds: 7\n")
    cfg = load_config(p)
    assert cfg.healing.retry_delay_seconds == 3 and cfg.policy.budgets.remedy_cooldown_seconds == 7
    assert cfg.healing.cooldown_seconds == 3 and cfg.policy.budgets.cooldown_seconds == 7  # old attribute names
    assert cfg.policy.for_environment("production").budgets.remedy_cooldown_seconds == 7
    assert [str(d) for d in cfg.deprecations] == [
        f"{p}:3: healing.cooldown_seconds: deprecated: use healing.retry_delay_seconds (the old name still works)",
        f"{p}:6: policy.budgets.cooldown_seconds: deprecated: use policy.budgets.remedy_cooldown_seconds "
        "(the old name still works)",
    ]


def test_old_name_warns_when_validated_from_python() -> None:
    with pytest.warns(ConfigDeprecationWarning, match="healing.cooldown_seconds is deprecated: use healing.retry_delay_seconds"):
        cfg = HealdConfig.model_validate({"healing": {"cooldown_seconds": 1}})
    assert cfg.healing.retry_delay_seconds == 1


def test_old_and_new_name_together_are_refused(tmp_path: Path) -> None:
    p = _write(tmp_path, "policy:\n  budgets:\n    cooldown_seconds: 7\n    remedy_cooldown_seconds: 8\n")
    with pytest.raises(ConfigError, match="give remedy_cooldown_seconds or the deprecated cooldown_seconds, not both"):
        load_config(p)


def test_a_bad_value_under_the_old_name_names_the_old_key(tmp_path: Path) -> None:
    p = _write(tmp_path, "healing:\n  cooldown_seconds: -1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}:2: healing.cooldown_seconds" in str(e.value) and "greater than or equal to 0" in str(e.value)
