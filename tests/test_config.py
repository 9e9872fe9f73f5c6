"""heald.yaml loading: defaults, environment overrides, and errors naming file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from heald.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "heald.yaml"
    p.write_text(text)
    return p


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HEALD_CONFIG", raising=False)
    monkeypatch.delenv("HEALD_DATABASE_URL", raising=False)
    cfg = load_config()
    assert cfg.database == f"sqlite:///{tmp_path / '.heald' / 'heald.db'}"
    assert cfg.healing.max_attempts == 3


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    p = write(tmp_path / "conf", "state_dir: st\nrunbooks: [rb]\nservices: {a: {command: [x], cwd: w}}\n")
    cfg = load_config(p)
    assert cfg.state_dir == tmp_path / "conf" / "st"
    assert cfg.runbooks == [tmp_path / "conf" / "rb"]
    assert cfg.services["a"].cwd == tmp_path / "conf" / "w"


def test_environment_overrides_database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(tmp_path, "database_url: sqlite:///a.db\n")
    monkeypatch.setenv("HEALD_DATABASE_URL", "postgresql://u@h/db")
    cfg = load_config(p)
    assert cfg.database == "postgresql://u@h/db" and cfg.dbos_database == "postgresql://u@h/db"


def test_unknown_key_is_named_with_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, "environment: prod\nhealing:\n  max_attempts: 3\n  max_atempts: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}:4: healing.max_atempts: unknown key" in str(e.value)


def test_wrong_type_names_key_and_expectation(tmp_path: Path) -> None:
    p = write(tmp_path, "services:\n  shop:\n    probes:\n      - url: http://x/\n        interval_seconds: soon\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert f"{p}:5: services.shop.probes.0.interval_seconds" in msg and "valid number" in msg and "'soon'" in msg


def test_cross_field_errors(tmp_path: Path) -> None:
    p = write(tmp_path, "services:\n  shop: {depends_on: [db]}\n")
    with pytest.raises(ConfigError, match="depends on 'db', which is not a configured service"):
        load_config(p)
    p = write(tmp_path, "services:\n  shop:\n    probes: [{type: tcp}]\n")
    with pytest.raises(ConfigError, match=r"services.shop.probes.0: .*a tcp probe needs 'port'"):
        load_config(p)
    p = write(tmp_path, "database_url: mysql://x/y\n")
    with pytest.raises(ConfigError, match=r":1: database_url: .*expected a sqlite:/// or postgresql:// URL"):
        load_config(p)


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    p = write(tmp_path, "healing: [\n")
    with pytest.raises(ConfigError, match=r"heald.yaml:\d+: .*invalid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "absent.yaml")
    p = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(p)


def test_bad_environment_value_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALD_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError, match=r"\$HEALD_LOG_LEVEL: log_level"):
        load_config(write(tmp_path, ""))


def test_process_probe_without_command_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "services:\n  redis:\n    probes: [{type: process}]\n")
    with pytest.raises(ConfigError, match=r"services\.redis: .*probes\.0\.type: a process probe needs the service's "
                                          r"'command'"):
        load_config(p)
    p = write(tmp_path, "services:\n  redis:\n    command: [redis-server]\n    probes: [{type: process}]\n")
    assert load_config(p).services["redis"].probes[0].type == "process"
