"""The policy gate: risk × confidence × environment → auto, approval, escalate or refuse.

:func:`decide` is the stage's entry. Nothing runs that it did not pass (DESIGN.md invariant 1).
The order of the rules is the order of this function; each decision carries the reason a human
reads in the audit log and the dashboard.
"""

from __future__ import annotations

from heald.config import PolicyConfig
from heald.models import Decision, DecisionKind, Diagnosis, RemedyCandidate


def decide(diagnosis: Diagnosis, candidate: RemedyCandidate | None, policy: PolicyConfig, *,
           attempt: int, max_attempts: int) -> Decision:
    """Decide what to do with ``candidate`` (the plan's best remaining remedy) for attempt
    number ``attempt`` (1-based)."""
    conf = diagnosis.confidence
    if attempt > max_attempts:
        return Decision(kind=DecisionKind.escalate, candidate=candidate,
                        reason=f"attempt budget spent: {max_attempts} attempts made, none healed it")
    if diagnosis.category == "unknown":
        return Decision(kind=DecisionKind.escalate, candidate=candidate,
                        reason="the cause is unknown: no runbook or reasoner recognised the signals")
    if candidate is None:
        return Decision(kind=DecisionKind.escalate, candidate=None,
                        reason=f"no remedy left to try for {diagnosis.category}")
    if conf < policy.escalate_below_confidence:
        return Decision(kind=DecisionKind.escalate, candidate=candidate,
                        reason=f"confidence {conf:.2f} is below {policy.escalate_below_confidence:.2f}: a human should look")
    risk = candidate.risk
    if risk.rank <= policy.auto_max_risk.rank and conf >= policy.auto_min_confidence:
        return Decision(kind=DecisionKind.auto, candidate=candidate,
                        reason=f"risk {risk.value} and confidence {conf:.2f} ≥ {policy.auto_min_confidence:.2f}: safe to act")
    approvals = max(1, policy.approvals_by_risk.get(risk, 1))
    why = (f"risk {risk.value} is above {policy.auto_max_risk.value}" if risk.rank > policy.auto_max_risk.rank
           else f"confidence {conf:.2f} is below {policy.auto_min_confidence:.2f}")
    return Decision(kind=DecisionKind.approval, candidate=candidate, required_approvals=approvals,
                    reason=f"{why}: needs {approvals} approval{'s' if approvals > 1 else ''}")
