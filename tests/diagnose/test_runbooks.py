"""Runbook loading (precise errors) and runbook diagnosis."""

from __future__ import annotations

from pathlib import Path

import pytest

from heald.diagnose import RunbookReasoner, diagnose
from heald.diagnose.runbooks import load_runbooks
from heald.models import Incident, IncidentState, Signal, utcnow
from heald.yamlfile import YamlFileError
from tests.conftest import run_heald


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


def test_log_regex_error_names_the_list_item(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("runbooks:\n  - name: a\n    match: {log: ['ok', 'x[']}\n"
                 "    diagnosis: {category: c, confidence: 1}\n")
    with pytest.raises(YamlFileError) as e:
        load_runbooks([p], include_defaults=False)
    assert f"{p}:3: runbooks.0.match.log: item 1: invalid regex 'x[': unterminated character set" in str(e.value)


def test_user_runbook_overrides_a_default(tmp_path: Path) -> None:
    p = tmp_path / "mine.yaml"
    p.write_text("runbooks:\n  - name: process-down\n    match: {labels: ['source=\"probe\"']}\n"
                 "    diagnosis: {category: mine, confidence: 0.5}\n")
    rbs = load_runbooks([tmp_path])
    assert [r.diagnosis.category for r in rbs if r.name == "process-down"] == ["mine"]


def test_match_on_source_fingerprint_and_log(tmp_path: Path) -> None:
    p = tmp_path / "rb.yaml"
    p.write_text("""runbooks:
  - name: by-log
    match: {source: [logs, generic], log: ['(?i)psycopg2?\\.OperationalError', 'could not connect']}
    diagnosis: {category: database_unavailable, confidence: 0.9}
  - name: by-fingerprint
    match: {fingerprint: abc123}
    diagnosis: {category: process_down, confidence: 0.8}
""")
    rbs = {r.name: r for r in load_runbooks([p], include_defaults=False)}
    hit = Signal(source="logs", annotations={"log": "x\npsycopg2.OperationalError: could not connect to server"})
    assert rbs["by-log"].applies_to(hit)
    assert not rbs["by-log"].applies_to(hit.model_copy(update={"source": "probe"}))
    assert not rbs["by-log"].applies_to(Signal(source="logs", summary="psycopg2.OperationalError: timeout"))
    assert rbs["by-fingerprint"].applies_to(Signal(source="x", fingerprint="abc123"))
    assert not rbs["by-fingerprint"].applies_to(Signal(source="x", fingerprint="abc124"))
    assert rbs["by-log"].specificity == 3


def test_category_runbook_rules(tmp_path: Path) -> None:
    p = tmp_path / "rb.yaml"
    p.write_text("runbooks:\n  - name: x\n    match: {labels: ['a=\"b\"']}\n")
    with pytest.raises(YamlFileError, match=r"rb.yaml:2: runbooks.0: a runbook needs 'diagnosis'"):
        load_runbooks([p], include_defaults=False)
    p.write_text("runbooks:\n  - name: x\n    match: {category: disk_full}\n"
                 "    diagnosis: {category: disk_full, confidence: 0.9}\n")
    with pytest.raises(YamlFileError, match=r"takes its diagnosis from the reasoner"):
        load_runbooks([p], include_defaults=False)


def test_examples_are_checked_when_loading(tmp_path: Path) -> None:
    p = tmp_path / "rb.yaml"
    p.write_text("""runbooks:
  - name: disk
    match: {category: disk_full, labels: ['service="shop"']}
    examples:
      - {category: disk_full, signal: {source: logs, labels: {service: shop}}}
      - {category: disk_full, signal: {source: logs, labels: {service: payments}}}
""")
    with pytest.raises(YamlFileError) as e:
        load_runbooks([p], include_defaults=False)
    assert [(x.line, x.key) for x in e.value.problems] == [(6, "runbooks.0.examples.1")]


def test_runbooks_check_cli(tmp_path: Path) -> None:
    from tests.conftest import run_heald

    good = tmp_path / "good.yaml"
    good.write_text("runbooks:\n  - name: odd\n    match: {source: probe}\n"
                    "    diagnosis: {category: weird_thing, confidence: 0.8}\n")
    r = run_heald("runbooks", "check", str(good), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import json

    data = json.loads(r.stdout)
    assert data["ok"] and data["problems"] == [] and [x["name"] for x in data["runbooks"]] == ["odd"]
    assert any("not in heald's vocabulary" in w["message"] for w in data["warnings"])
    assert run_heald("runbooks", "check", str(good), "--strict", cwd=tmp_path).returncode == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("runbooks:\n  - name: b\n    match:\n      log: '(unclosed'\n"
                   "    diagnosis: {category: x, confidence: 2}\n")
    r = run_heald("runbooks", "check", str(bad), cwd=tmp_path)
    assert r.returncode == 1
    assert f"{bad}:4: runbooks.0.match.log: invalid regex" in r.stderr
    assert f"{bad}:5: runbooks.0.diagnosis.confidence" in r.stderr
    r = run_heald("runbooks", "check", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert r.returncode == 1 and "no such file" in r.stderr
    # without a path: what heald serve would load (the shipped library here)
    r = run_heald("runbooks", "check", "--json", cwd=tmp_path)
    assert r.returncode == 0 and "process-down" in r.stdout


def test_unknown_template_variable_fails_loading_naming_runbook_field_and_variable(tmp_path: Path) -> None:
    p = tmp_path / "vars.yaml"
    p.write_text(
        "runbooks:\n"
        "  - name: mem\n"
        "    match: {labels: ['alertname=\"MemoryHigh\"']}\n"
        "    diagnosis: {category: out_of_memory, confidence: 0.9, explanation: '${service} uses ${rss_bytes}'}\n"
        "    remedies:\n"
        "      - {remedy: restart_process, params: {service: '${servcie}'}}\n"
    )
    with pytest.raises(YamlFileError) as e:
        load_runbooks([p], include_defaults=False)
    msg = str(e.value)
    assert f"{p}:4: runbooks.0.diagnosis.explanation: runbook 'mem': unknown variable ${{rss_bytes}}" in msg
    assert f"{p}:6: runbooks.0.remedies.0.params: runbook 'mem': unknown variable ${{servcie}}" in msg
    assert "${service}" not in msg.split("known:")[0]  # service is a pseudo-label: known
    r = run_heald("runbooks", "check", str(p), cwd=tmp_path)
    assert r.returncode == 1 and "unknown variable ${rss_bytes}" in r.stderr
    # declared (with its fallback text) or required by a matcher: accepted
    p.write_text(
        "runbooks:\n"
        "  - name: mem\n"
        "    variables: {rss_bytes: 'an unknown amount'}\n"
        "    match: {labels: ['alertname=\"MemoryHigh\"', 'pod!=\"\"']}\n"
        "    diagnosis: {category: out_of_memory, confidence: 0.9, explanation: '${service}/${pod} uses ${rss_bytes}'}\n"
    )
    (rb,) = load_runbooks([p], include_defaults=False)
    sig = Signal(source="alertmanager", kind="alert", service="shop", labels={"alertname": "MemoryHigh", "pod": "p1"})
    f = diagnose(incident(), [sig], [RunbookReasoner([rb])])
    assert f.diagnosis.explanation == "shop/p1 uses an unknown amount"


def test_every_shipped_runbook_explanation_is_filled(tmp_path: Path) -> None:
    """The memory runbook once read "${service}'s resident memory is over its limit (${detail})"
    for an Alertmanager alert: ``detail`` is now always filled (description, summary or kind)."""
    rbs = load_runbooks([])
    sig = Signal(source="alertmanager", kind="alert", service="shop", summary="shop RSS 2.1 GiB > 2 GiB",
                 labels={"alertname": "ContainerMemoryLimitReached", "service": "shop"})
    f = diagnose(incident(), [sig], [RunbookReasoner(rbs)])
    assert f.runbook.name == "memory-over-limit"
    assert f.diagnosis.explanation == "shop's resident memory is over its limit (shop RSS 2.1 GiB > 2 GiB): a leak; a restart frees it."
    for rb in rbs:
        for ex in rb.examples:
            if rb.diagnosis is not None:
                found = diagnose(incident(), [ex.signal], [RunbookReasoner([rb])])
                assert "${" not in found.diagnosis.explanation, (rb.name, found.diagnosis.explanation)
