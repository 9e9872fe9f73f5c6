"""The knowledge-base reasoner, category runbooks and reasoner disagreement in diagnose()."""

from __future__ import annotations

from pathlib import Path

from heald.diagnose import Finding, RunbookReasoner, diagnose
from heald.diagnose.kb import KnowledgeBaseReasoner
from heald.diagnose.runbooks import load_runbooks
from heald.models import Diagnosis, Signal
from heald.plan import make_plan
from tests.diagnose.test_runbooks import incident


def log_signal(text: str, service: str = "shop") -> Signal:
    return Signal(source="logs", kind="error_log", service=service, summary=text.splitlines()[0],
                  labels={"service": service, "alertname": "ErrorLog"}, annotations={"log": text})


class Fixed:
    """A reasoner with a fixed answer (to test how diagnose() combines reasoners)."""

    def __init__(self, name: str, category: str, confidence: float):
        self.name, self.category, self.confidence = name, category, confidence

    def diagnose(self, incident, signals):  # type: ignore[no-untyped-def]
        return Finding(Diagnosis(category=self.category, confidence=self.confidence, reasoner=self.name))


def test_kb_diagnoses_the_cause_with_evidence_lines() -> None:
    text = ("2024-05-02 10:00:00 ERROR db pool: psycopg2.OperationalError: could not connect to server: "
            "Connection refused\n\tIs the server running on host \"db\" and accepting TCP/IP connections on port 5432?")
    f = KnowledgeBaseReasoner().diagnose(incident(), [log_signal(text)])
    assert f is not None and f.diagnosis.category == "database_unavailable"
    assert 0.85 <= f.diagnosis.confidence <= 0.97
    assert any("could not connect to server" in e for e in f.diagnosis.evidence)
    assert f.diagnosis.reasoner == "kb"


def test_kb_lowers_confidence_for_competing_unrelated_causes() -> None:
    one = KnowledgeBaseReasoner().diagnose(incident(), [log_signal("OSError: [Errno 28] No space left on device")])
    both = KnowledgeBaseReasoner().diagnose(incident(), [
        log_signal("OSError: [Errno 28] No space left on device"),
        log_signal("socket.gaierror: [Errno -2] Name or service not known", service="payments")])
    assert one and both and one.diagnosis.category == both.diagnosis.category == "disk_full"
    assert both.diagnosis.confidence < one.diagnosis.confidence - 0.2
    assert "dns_failure" in both.diagnosis.explanation


def test_kb_says_nothing_about_healthy_signals() -> None:
    assert KnowledgeBaseReasoner().diagnose(incident(), [log_signal("INFO started in 0.2 s")]) is None


def test_disagreeing_reasoners_give_the_gate_the_lower_confidence() -> None:
    f = diagnose(incident(), [log_signal("x")], [Fixed("a", "disk_full", 0.95), Fixed("b", "dns_failure", 0.6)])
    assert f.diagnosis.category == "disk_full" and f.diagnosis.confidence == 0.6
    assert "reasoners disagree" in f.diagnosis.explanation
    assert [h.reasoner for h in f.hypotheses] == ["a", "b"]


def test_agreeing_reasoners_keep_the_higher_confidence() -> None:
    # a process that is down explains connection refused: no disagreement
    f = diagnose(incident(), [log_signal("x")], [Fixed("a", "process_down", 0.95), Fixed("b", "connection_refused", 0.8)])
    assert f.diagnosis.category == "process_down" and f.diagnosis.confidence == 0.95


def test_runbook_explains_lets_a_custom_category_agree(tmp_path: Path) -> None:
    p = tmp_path / "rb.yaml"
    p.write_text("runbooks:\n  - name: chaos\n    match: {labels: ['alertname=\"CheckoutErrors\"']}\n"
                 "    diagnosis: {category: checkout_chaos, confidence: 0.92, explains: [http_5xx]}\n")
    rbs = load_runbooks([p], include_defaults=False)
    sig = Signal(source="alertmanager", service="shop", labels={"alertname": "CheckoutErrors"},
                 annotations={"description": "HTTP 500 on 80% of POST /checkout"})
    f = diagnose(incident(), [sig], [RunbookReasoner(rbs), KnowledgeBaseReasoner()], rbs)
    assert f.diagnosis.category == "checkout_chaos" and f.diagnosis.confidence == 0.92
    p.write_text(p.read_text().replace(", explains: [http_5xx]", ""))
    rbs = load_runbooks([p], include_defaults=False)
    f = diagnose(incident(), [sig], [RunbookReasoner(rbs), KnowledgeBaseReasoner()], rbs)
    assert f.diagnosis.category == "checkout_chaos" and f.diagnosis.confidence < 0.9


def test_category_runbook_gives_the_kb_hypothesis_its_remedies(tmp_path: Path) -> None:
    p = tmp_path / "rb.yaml"
    p.write_text("""runbooks:
  - name: oom-restart
    match: {category: out_of_memory, source: logs}
    remedies:
      - {remedy: restart_process, risk: low, params: {service: "${service}"}}
  - name: oom-restart-payments
    match: {category: out_of_memory, source: logs, labels: ['service="payments"']}
    remedies:
      - {remedy: restart_process, risk: medium, params: {service: payments}}
""")
    rbs = load_runbooks([p], include_defaults=False)
    sig = log_signal("shop.service: A process of this unit has been killed by the OOM killer.")
    f = diagnose(incident(), [sig], [RunbookReasoner(rbs), KnowledgeBaseReasoner()], rbs)
    assert f.diagnosis.category == "out_of_memory" and f.runbook is not None and f.runbook.name == "oom-restart"
    assert f.diagnosis.runbook == "oom-restart"
    plan = make_plan(1, f, [sig], set(), {}).plan
    assert [(c.remedy, c.params) for c in plan.candidates] == [("restart_process", {"service": "shop"})]
    pay = log_signal("Out of memory: Killed process 77 (gunicorn)", service="payments")
    f = diagnose(incident(), [pay], [RunbookReasoner(rbs), KnowledgeBaseReasoner()], rbs)
    assert f.runbook is not None and f.runbook.name == "oom-restart-payments"  # more specific (3 conditions)


def test_a_failing_reasoner_is_skipped_with_a_note() -> None:
    class Broken:
        name = "broken"

        def diagnose(self, incident, signals):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    f = diagnose(incident(), [log_signal("OSError: [Errno 28] No space left on device")],
                 [Broken(), KnowledgeBaseReasoner()])
    assert f.diagnosis.category == "disk_full" and any("broken failed" in n for n in f.notes)
