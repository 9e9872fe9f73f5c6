"""Runbook loading (precise errors) and runbook diagnosis."""

from __future__ import annotations

from pathlib import Path

import pytest

from heald.diagnose import RunbookReasoner, diagnose
from heald.diagnose.runbooks import load_runbooks
from heald.models import Incident, IncidentState, Signal, utcnow
from heald.yamlfile import YamlFileError


def incident() -> Incident:
    now = utcnow()
    return Incident(id=1, title="t", service="shop", state=IncidentState.diagnosing, severity="critical",
                    fingerprint="f", group_key="g", started_at=now, detected_at=now, updated_at=now)


def test_default_library_loads_and_diagnoses_process_down() -> None:
    rbs = load_runbooks([])
    assert "process-down" in {r.name for r in rbs}
    sig = Signal(source="probe", kind="probe_failed", service="shop", summary="shop /healthz failed",
                 labels={"alertname": "ProbeFailed", "service": "shop", "process_state": "exited"},
                 annotations={"process_exit": "killed by SIGKILL"})
    f = diagnose(incident(), [sig], [RunbookReasoner(rbs)])
    assert f.diagnosis.category == "process_down" and f.diagnosis.confidence == 0.95
    assert "killed by SIGKILL" in f.diagnosis.explanation and f.runbook.name == "process-down"


def test_running_process_is_not_process_down() -> None:
    sig = Signal(source="probe", service="shop", labels={"alertname": "ProbeFailed", "process_state": "running"})
    f = diagnose(incident(), [sig], [RunbookReasoner(load_runbooks([]))])
    assert f.diagnosis.category == "unknown" and f.diagnosis.confidence == 0


def test_errors_name_file_line_and_key(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(
        "runbooks:\n"
        "  - name: a\n"
        "    match: {labels: ['x=~\"(\"']}\n"
        "    diagnosis: {category: c, confidence: 1.5}\n"
        "    remedies:\n"
        "      - {remedy: reboot_universe}\n"
        "      - {remedy: restart_process, params: {service: s, force: true}}\n"
    )
    with pytest.raises(YamlFileError) as e:
        load_runbooks([p], include_defaults=False)
    msg = str(e.value)
    assert f"{p}:3: runbooks.0.match.labels" in msg and "invalid regex" in msg
    assert f"{p}:4: runbooks.0.diagnosis.confidence" in msg
    assert f"{p}:6: runbooks.0.remedies.0" in msg and "unknown remedy 'reboot_universe'" in msg
    assert f"{p}:7: runbooks.0.remedies.1" in msg and "no parameter(s) ['force']" in msg


def test_user_runbook_overrides_a_default(tmp_path: Path) -> None:
    p = tmp_path / "mine.yaml"
    p.write_text("runbooks:\n  - name: process-down\n    match: {labels: ['source=\"probe\"']}\n"
                 "    diagnosis: {category: mine, confidence: 0.5}\n")
    rbs = load_runbooks([tmp_path])
    assert [r.diagnosis.category for r in rbs if r.name == "process-down"] == ["mine"]
