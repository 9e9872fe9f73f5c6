"""Diagnosis inside the healing workflow: an error in a service's log becomes an incident, the
signature knowledge base diagnoses it from the log lines, a category runbook gives the remedy,
the service is restarted and the incident resolves when its log goes quiet."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

from heald.models import IncidentState
from tests.conftest import make_config, wait_for

WORKER = textwrap.dedent("""
    import os, sys, time
    log, trigger, starts = sys.argv[1:4]
    with open(starts, "a") as f:
        f.write("start\\n")
    while True:
        if os.path.exists(trigger):
            os.remove(trigger)
            with open(log, "a") as f:
                f.write("2024-05-02 10:00:02,003 ERROR worker batch 17 aborted\\n"
                        "Traceback (most recent call last):\\n"
                        '  File "/srv/worker/batch.py", line 88, in run\\n'
                        "    rows = [decode(r) for r in cursor]\\n"
                        "MemoryError\\n")
        time.sleep(0.05)
""")


def test_log_error_is_diagnosed_by_the_kb_and_healed(tmp_path: Path, start_runtime) -> None:
    log, trigger, starts = tmp_path / "worker.log", tmp_path / "trigger", tmp_path / "starts"
    log.touch()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    rb = tmp_path / "rb.yaml"
    rb.write_text(textwrap.dedent("""
        runbooks:
          - name: oom-restart
            match: {category: out_of_memory, source: logs}
            remedies:
              - {remedy: restart_process, risk: low, params: {service: "${service}"}}
    """))
    cfg = make_config(tmp_path, services={"worker": {"command": [sys.executable, str(script), str(log), str(trigger),
                                                                 str(starts)]}},
                      runbooks=[str(rb)], healing={"verify_timeout_seconds": 15.0},
                      logs=[{"path": str(log), "service": "worker", "poll_interval_seconds": 0.05,
                             "resolve_after_seconds": 1.5}])
    rt = start_runtime(cfg)
    wait_for(lambda: starts.exists(), what="worker up")
    time.sleep(0.3)  # the tailer starts at the end of the file
    trigger.touch()
    inc = wait_for(lambda: rt.store.list_incidents(), what="incident from the log")[0]
    done = wait_for(lambda: (i := rt.store.get_incident(inc.id)).state.terminal and i, timeout=40, what="incident end")
    assert done.state == IncidentState.resolved, done.closed_reason
    detail = rt.store.incident_detail(inc.id)
    d = detail["diagnoses"][0]
    assert d["category"] == "out_of_memory" and d["reasoner"] == "kb" and d["runbook"] == "oom-restart"
    assert any("MemoryError" in e for e in d["evidence"])
    assert detail["actions"][0]["remedy"] == "restart_process"
    assert starts.read_text().count("start") == 2
    assert detail["signals"][0]["source"] == "logs" and "Traceback" in detail["signals"][0]["annotations"]["log"]


def test_llm_reasoner_in_the_workflow_with_accounting_and_fallback(tmp_path: Path, start_runtime) -> None:
    import json

    from heald.models import Signal
    from tests.diagnose.fake_openai import FakeOpenAI

    replies = iter([
        (200, json.dumps({"category": "disk_full", "root_cause": "the volume is full",
                          "reasoning_steps": ["ENOSPC in the log"], "confidence": 0.95, "evidence": [],
                          "remedies": [{"remedy": "restart_process", "params": {"service": "svc"}}]}), 0),
        (200, "sure! the disk is full", 0),
    ])
    server = FakeOpenAI(lambda body: next(replies))
    try:
        # svc is managed (never started here): restart_process for a service heald does not manage is never planned
        cfg = make_config(tmp_path, llm={"enabled": True, "base_url": server.url, "model": "test-model",
                                         "api_key": "k", "input_cost_per_million": 2.0,
                                         "output_cost_per_million": 8.0, "max_retries": 0},
                          services={"svc": {"command": [sys.executable, "-c", "import time; time.sleep(600)"]}})
        rt = start_runtime(cfg, manage_services=False, run_probes=False)
        assert [r.name for r in rt.reasoners] == ["runbook", "kb", "llm"]

        def raise_incident(service: str) -> int:
            rt.ingest(Signal(source="generic", service=service, summary="writes failing",
                             labels={"alertname": "WritesFailing", "service": service},
                             annotations={"log": "OSError: [Errno 28] No space left on device"}))
            return wait_for(lambda: [i for i in rt.store.list_incidents() if i.service == service], what="incident")[0].id

        first = raise_incident("svc")
        wait_for(lambda: rt.store.get_incident(first).state == IncidentState.awaiting_approval, what="approval wait")
        detail = rt.store.incident_detail(first)
        d = detail["diagnoses"][0]
        assert d["reasoner"] == "llm" and d["category"] == "disk_full" and "kb agree" in d["explanation"]
        assert detail["plans"][0]["candidates"][0]["risk"] == "medium"  # an LLM's own proposal: approval needed
        usage = detail["llm_usage"]
        assert usage["calls"][0]["outcome"] == "ok" and usage["total"]["prompt_tokens"] == 1200
        assert usage["total"]["cost_usd"] == 1200 * 2e-6 + 150 * 8e-6
        assert any(e["event"] == "llm.usage" for e in detail["timeline"])
        rt.approve(first, "alice", "reject", "not now")

        second = raise_incident("other")
        wait_for(lambda: (st := rt.store.get_incident(second).state).terminal or st == IncidentState.needs_attention,
                 what="second incident ends or is handed over")
        detail = rt.store.incident_detail(second)
        assert detail["diagnoses"][0]["reasoner"] == "kb"  # fell back
        assert detail["llm_usage"]["calls"][0]["outcome"] == "invalid"
        notes = [e for e in detail["timeline"] if e["event"] == "diagnosis.hypotheses"]
        assert notes and "answer rejected" in notes[0]["reason"]
    finally:
        server.close()
