"""The gate's defaults: risk × confidence → auto, approval, escalate."""

from __future__ import annotations

import pytest

from heald.config import PolicyConfig
from heald.models import DecisionKind, Diagnosis, RemedyCandidate, Risk
from heald.policy import decide


def d(conf: float, category: str = "process_down") -> Diagnosis:
    return Diagnosis(category=category, confidence=conf, reasoner="test")


@pytest.mark.parametrize(("conf", "risk", "kind", "approvals"), [
    (0.95, Risk.low, DecisionKind.auto, 0),
    (0.90, Risk.low, DecisionKind.auto, 0),
    (0.85, Risk.low, DecisionKind.approval, 1),
    (0.95, Risk.medium, DecisionKind.approval, 1),
    (0.95, Risk.high, DecisionKind.approval, 2),
    (0.95, Risk.critical, DecisionKind.approval, 2),
    (0.69, Risk.low, DecisionKind.escalate, 0),
])
def test_defaults(conf: float, risk: Risk, kind: DecisionKind, approvals: int) -> None:
    dec = decide(d(conf), RemedyCandidate(remedy="restart_process", risk=risk), PolicyConfig(), attempt=1, max_attempts=3)
    assert dec.kind == kind and dec.required_approvals == approvals
    assert dec.reason


def test_unknown_category_and_no_candidate_and_budget_escalate() -> None:
    cand = RemedyCandidate(remedy="restart_process")
    assert decide(d(0.99, "unknown"), cand, PolicyConfig(), attempt=1, max_attempts=3).kind == DecisionKind.escalate
    assert decide(d(0.99), None, PolicyConfig(), attempt=1, max_attempts=3).kind == DecisionKind.escalate
    over = decide(d(0.99), cand, PolicyConfig(), attempt=4, max_attempts=3)
    assert over.kind == DecisionKind.escalate and "budget" in over.reason
