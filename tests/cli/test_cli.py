"""The CLI as a user runs it: real subprocesses, JSON output, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from heald.models import Signal
from heald.store import Store
from tests.conftest import make_config, run_heald


def env_for(tmp_path: Path) -> dict[str, str]:
    return {"HEALD_STATE_DIR": str(tmp_path / "state"), "HEALD_CONFIG": ""}


def test_incidents_json_is_json_only(tmp_path: Path) -> None:
    from heald import correlate

    store = Store(f"sqlite:///{tmp_path / 'state' / 'heald.db'}")
    store.migrate()
    with store.tx() as s:
        correlate.ingest(s, Signal(source="t", service="a", summary="a down"), make_config(tmp_path))
    store.close()
    r = run_heald("incidents", "--json", env=env_for(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    [inc] = json.loads(r.stdout)
    assert inc["state"] == "observing" and inc["title"] == "a down" and isinstance(inc["time_to_detect_s"], float)
    one = run_heald("incident", str(inc["id"]), "--json", env=env_for(tmp_path), cwd=tmp_path)
    assert json.loads(one.stdout)["timeline"][0]["event"] == "incident.opened"
    human = run_heald("incident", str(inc["id"]), env=env_for(tmp_path), cwd=tmp_path)
    assert "a down" in human.stdout and "incident.opened" in human.stdout
    missing = run_heald("incident", "42", env=env_for(tmp_path), cwd=tmp_path)
    assert missing.returncode == 1 and "no incident 42" in missing.stderr


def test_config_error_names_file_line_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "heald.yaml"
    cfg.write_text("healing:\n  cooldown_seconds: -1\n")
    r = run_heald("--config", str(cfg), "incidents", cwd=tmp_path)
    assert r.returncode == 2
    assert f"{cfg}:2: healing.cooldown_seconds" in r.stderr and "greater than or equal to 0" in r.stderr
    assert r.stdout == ""


def test_config_with_an_unknown_remedy_names_it(tmp_path: Path) -> None:
    """The configuration does not import the remedy catalog; the CLI checks remedy names
    against it after parsing, with the same file:line: key message."""
    cfg = tmp_path / "heald.yaml"
    cfg.write_text("policy:\n  environments:\n    production:\n      allowed_remedies: [restart_process, reboot_the_world]\n")
    r = run_heald("--config", str(cfg), "incidents", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert f"{cfg}:4: policy.environments.production.allowed_remedies" in r.stderr
    assert "unknown remedies ['reboot_the_world']" in r.stderr and "revert_commit" in r.stderr  # CI plugin known
    assert r.stdout == ""


def test_approve_refuses_an_incident_not_awaiting_approval(tmp_path: Path) -> None:
    from heald import correlate

    store = Store(f"sqlite:///{tmp_path / 'state' / 'heald.db'}")
    store.migrate()
    with store.tx() as s:
        inc = correlate.ingest(s, Signal(source="t", service="a"), make_config(tmp_path)).incident_id
    r = run_heald("approve", str(inc), env=env_for(tmp_path), cwd=tmp_path)
    assert r.returncode == 1 and "not awaiting_approval" in r.stderr


def test_unknown_fault_is_refused(tmp_path: Path) -> None:
    r = run_heald("demo", "--fault", "meteor", env=env_for(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and "unknown fault 'meteor'" in r.stderr and "process-crash" in r.stderr


@pytest.mark.slow
def test_demo_json_reports_process_crash_healed(tmp_path: Path) -> None:
    r = run_heald("demo", "--fault", "process-crash", "--json", env=env_for(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    [row] = json.loads(r.stdout)
    assert row["fault"] == "process-crash" and row["outcome"] == "resolved" and row["expected"]
    assert row["diagnosis"] == "process_down" and row["remedy"] == "restart_process"
    assert 0 < row["time_to_detect_s"] < 5 and row["time_to_detect_s"] <= row["time_to_recover_s"] < 10
