"""The incident report (Markdown) on real incidents healed and escalated by the engine."""

from __future__ import annotations

from pathlib import Path

import httpx
from markdown_it import MarkdownIt

from heald.explain import incident_report
from heald.models import IncidentState, Signal, SignalStatus
from tests.conftest import bearer, free_port, make_config, run_heald, serving, wait_for
from tests.engine.test_workflow import PY, alert, runbook, sleeper_config, terminal


def plain(token) -> str:  # type: ignore[no-untyped-def]
    """The text an inline token shows (escapes and code spans resolved)."""
    return "".join(c.content for c in token.children or [] if c.type in ("text", "code_inline", "html_inline"))


def structure(md: str) -> tuple[list[str], list[list[str]]]:
    """(headings, table rows as cell texts) of a CommonMark + tables document, as rendered text."""
    tokens = MarkdownIt("commonmark").enable("table").parse(md)
    headings, rows, row = [], [], None
    for i, t in enumerate(tokens):
        if t.type == "heading_open":
            headings.append(plain(tokens[i + 1]))
        elif t.type == "tr_open":
            row = []
        elif t.type in ("td_open", "th_open") and row is not None:
            row.append(plain(tokens[i + 1]) if tokens[i + 1].type == "inline" else "")
        elif t.type == "tr_close" and row is not None:
            rows.append(row)
            row = None
    return headings, rows


def test_report_of_an_incident_healed_after_approval(tmp_path: Path, start_runtime) -> None:
    rt = start_runtime(sleeper_config(tmp_path, risk="medium"), run_probes=False)
    inc_id = rt.ingest(alert()).incident_id
    wait_for(lambda: rt.store.get_incident(inc_id).state == IncidentState.awaiting_approval, what="approval wait")
    rt.approve(inc_id, "alice", "approve", "go ahead")
    wait_for(lambda: rt.store.get_incident(inc_id).state == IncidentState.verifying, what="verifying")
    rt.ingest(alert(SignalStatus.resolved))
    done = wait_for(lambda: terminal(rt, inc_id), what="resolution")
    assert done.state == IncidentState.resolved

    md = incident_report(rt.store, inc_id)
    headings, rows = structure(md)
    assert headings[5].startswith("Attempt 1: restart_process (service=svc) — succeeded in ")
    assert headings[:5] + headings[6:] == [f"Incident #{inc_id}: svc broken", "What was seen", "Hypothesis", "Decision",
                                           "What was done", "Verification", "Outcome and timings", "Audit", "Timeline"]
    assert "**State:** resolved" in md and "**Category:** svc\\_broken" in md
    # what was seen: both signals, firing then resolved
    signal_rows = [r for r in rows if r[1:2] == ["test"]]
    assert [r[3] for r in signal_rows] == ["firing", "resolved"] and signal_rows[0][5] == "svc broken"
    # the hypothesis
    assert "with confidence **0.95**, by the `runbook` reasoner (runbook `svc-broken`)" in md
    assert "> svc is broken" in md
    # the decision and why, with the approver
    [decision] = rt.store.decisions_for(inc_id)
    assert "1. **approval** for `restart_process` (`service=svc`), 1 approval required: " in md
    assert decision["reason"].split(";")[0][:30].replace("_", "\\_") in md
    assert "approve by **alice**" in md and "go ahead" in md
    assert ["1", "restart_process", "medium", "svc-broken", "—", "0", "—"] in rows  # plan, no history yet
    # what was done and the verification
    [action] = rt.store.actions_for(inc_id)
    assert action.output.strip().splitlines()[0] in md
    [v] = rt.store.verifications_for(inc_id)
    assert "- **passed**" in md and f"{sum(c.ok for c in v.checks)} of {len(v.checks)} check results ok" in md
    # timings are the incident's own
    timings = {r[0]: r[1] for r in rows if len(r) == 2}
    assert timings["time to detect"] == f"{done.time_to_detect_s:.2f} s"
    assert timings["time to recover"] == f"{done.time_to_recover_s:.2f} s"
    assert "- the incident: restart\\_process → **healed**" in md
    # the audit summary counts every entry of the incident
    entries = rt.store.audit_entries(incident_id=inc_id)
    assert f"{len(entries)} entries (seq {entries[0].seq}–{entries[-1].seq})" in md
    counts = {r[0]: r[1] for r in rows[rows.index(["event", "count"]) + 1:] if len(r) == 2}
    assert counts["approval.approve"] == "1" and counts["action.started"] == "1"
    assert sum(int(n) for n in counts.values()) == len(entries)


def test_report_of_an_escalated_incident_lists_every_attempt(tmp_path: Path, start_runtime) -> None:
    cfg = make_config(tmp_path, services={"svc": {
        "command": [PY, "-c", "import time; time.sleep(600)"],
        "probes": [{"type": "tcp", "port": free_port(), "interval_seconds": 0.1, "timeout_seconds": 0.2,
                    "failure_threshold": 1}]}},
        runbooks=[str(runbook(tmp_path))],
        healing={"max_attempts": 2, "retry_delay_seconds": 0.1, "verify_timeout_seconds": 0.4,
                 "attention_check_seconds": 0.05, "attention_max_seconds": 0.2})  # no human comes: it ends escalated
    rt = start_runtime(cfg, run_probes=False)
    inc_id = rt.ingest(alert()).incident_id
    done = wait_for(lambda: rt.store.get_incident(inc_id).state.terminal and rt.store.get_incident(inc_id),
                    timeout=30, what="escalation")
    assert done.state == IncidentState.escalated
    md = incident_report(rt.store, inc_id)
    headings, rows = structure(md)
    attempts = [h for h in headings if h.startswith("Attempt")]
    assert len(attempts) == 2 and all(h.startswith(f"Attempt {n}: restart_process (service=svc) — succeeded")
                                      for n, h in zip((1, 2), attempts, strict=True))
    assert md.count("- **failed**") == 2
    assert "**Closed because:** no human acted within 0.2 s of the hand-over" in md
    assert "attempt budget spent: 2 of 2 attempts made" in md
    assert [r for r in rows if r[0] == "time to recover"] == [["time to recover", "—"]]
    assert "- attempt 1: restart\\_process → **not\\_healed**" in md
    assert "- the incident: no remedy → **escalated**" in md
    # the second plan knew the first attempt had failed: a learned rate and a Thompson score
    assert rows[[r[:2] for r in rows].index(["1", "restart_process"])][4:6] == ["33%", "1"]


def test_signal_text_cannot_change_the_report_structure(tmp_path: Path, start_runtime) -> None:
    rt = start_runtime(sleeper_config(tmp_path, confidence=0.5), run_probes=False)
    evil = "evil | cell ` fence\n# Injected heading\n```\n<script>x</script> [link](http://x) **bold**"
    inc_id = rt.ingest(Signal(source="test", service="svc", summary=evil,
                              labels={"alertname": "SvcBroken", "service": "svc"})).incident_id
    wait_for(lambda: terminal(rt, inc_id), what="escalation")
    md = incident_report(rt.store, inc_id)
    headings, rows = structure(md)
    assert headings[0].startswith(f"Incident #{inc_id}: evil | cell ` fence # Injected heading")  # as text
    assert headings[1:] == ["What was seen", "Hypothesis", "Decision", "What was done", "Verification",
                            "Outcome and timings", "Audit", "Timeline"]
    [row] = [r for r in rows if r[1:2] == ["test"]]
    assert len(row) == 6 and "Injected heading" in row[5] and "<script>" not in md


def test_report_over_api_and_cli(tmp_path: Path, start_runtime) -> None:
    rt = start_runtime(sleeper_config(tmp_path, confidence=0.5), run_probes=False)
    inc_id = rt.ingest(alert()).incident_id
    wait_for(lambda: terminal(rt, inc_id), what="escalation")
    expected = incident_report(rt.store, inc_id)
    with serving(rt, "viewer") as client:
        r = client.get(f"/v1/incidents/{inc_id}/report")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/markdown")
        assert r.text.split("## Audit")[0] == expected.split("## Audit")[0]
        assert client.get("/v1/incidents/9999/report").status_code == 404
        base = str(client.base_url)
        assert httpx.get(f"{base}/v1/incidents/{inc_id}/report").status_code == 401
        assert httpx.get(f"{base}/v1/incidents/{inc_id}/report",
                         headers=bearer("heald_not-a-token")).status_code == 401
    env = {"HEALD_STATE_DIR": str(rt.config.state_dir), "HEALD_CONFIG": ""}
    cli = run_heald("incident", str(inc_id), "--report", env=env, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.startswith(f"# Incident #{inc_id}: svc broken") and "## Outcome and timings" in cli.stdout
    missing = run_heald("incident", "9999", "--report", env=env, cwd=tmp_path)
    assert missing.returncode == 1 and "no incident 9999" in missing.stderr
