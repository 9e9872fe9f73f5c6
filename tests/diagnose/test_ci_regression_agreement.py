"""A reproduced regression (the tests fail at the culprit and pass at its parent, in the same
sandbox) is not outvoted by the knowledge base reading the failing tests' own output as an
environment fault (issue 15: decorator's doctest printing ``PermissionError: User does not have
the permission to run insert!`` made the gate escalate a revertable regression at 0.65)."""

from __future__ import annotations

import pytest

from heald.diagnose import RunbookReasoner, diagnose
from heald.diagnose.kb import KnowledgeBaseReasoner
from heald.diagnose.runbooks import load_runbooks
from heald.models import Incident, IncidentState, Severity, Signal, utcnow


def _incident() -> Incident:
    now = utcnow()
    return Incident(id=1, title="t", service="decorator", state=IncidentState.diagnosing, severity="error",
                    fingerprint="f", group_key="g", started_at=now, detected_at=now, updated_at=now)


def _reproduced(verdict: str, log: str) -> Signal:
    return Signal(source="sandbox", kind="ci_reproduced", service="decorator", severity=Severity.error,
                  summary=f"reproduced: {verdict}",
                  labels={"repo": "decorator", "head_sha": "a" * 40, "head_branch": "main", "verdict": verdict},
                  annotations={"log": log, "culprit_sha": "b" * 40})


DOCTEST_OUTPUT = (
    "FAILED src/tests/test.py::DocumentationTestCase::test - doctest failure\n"
    "Traceback (most recent call last):\n"
    "PermissionError: User does not have the permission to run insert!\n")


@pytest.mark.parametrize("output", [
    DOCTEST_OUTPUT,
    "FAILED tests/test_io.py::test_write - PermissionError: [Errno 13] Permission denied: '/x'\n",
    "FAILED tests/test_net.py::test_get - ConnectionRefusedError: [Errno 111] Connection refused\n",
    "FAILED tests/test_big.py::test_alloc - MemoryError\n",
])
def test_a_regression_is_not_outvoted_by_an_environment_reading_of_its_test_output(output: str) -> None:
    rbs = load_runbooks([])
    reasoners = [RunbookReasoner(rbs), KnowledgeBaseReasoner()]
    kb_alone = diagnose(_incident(), [_reproduced("regression", output)], [KnowledgeBaseReasoner()])
    assert kb_alone.diagnosis.category not in ("regression", "unknown")  # the output alone reads as something else
    found = diagnose(_incident(), [_reproduced("regression", output)], reasoners)
    assert found.diagnosis.category == "regression" and found.runbook is not None
    assert found.runbook.name == "ci-regression"
    assert found.diagnosis.confidence == 0.95, found.diagnosis.explanation  # not lowered to the gate's escalation


def test_an_environment_reading_still_lowers_a_verdict_without_a_differential() -> None:
    """Only the differential verdict is shielded: red everywhere (no commit where the tests
    pass) with a PermissionError in the output keeps the disagreement visible."""
    rbs = load_runbooks([])
    found = diagnose(_incident(), [_reproduced("red_everywhere", DOCTEST_OUTPUT)],
                     [RunbookReasoner(rbs), KnowledgeBaseReasoner()])
    assert "disagree" in found.diagnosis.explanation or found.diagnosis.category == "permission_denied"
