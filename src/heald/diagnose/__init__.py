"""Diagnosis: what heald believes is wrong, and how sure it is.

:func:`diagnose` is the stage's entry. It asks each reasoner for a hypothesis and keeps the
best one; with no hypothesis at all the category is ``unknown`` with confidence 0, which the
gate escalates. The runbook reasoner is the first; later reasoners (a failure-signature
knowledge base, an LLM) plug in through :class:`Reasoner`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from heald.diagnose.runbooks import Runbook, match_labels, render
from heald.models import Diagnosis, Incident, Signal, SignalStatus


class Reasoner(Protocol):
    """Turns an incident and its signals into a hypothesis, or None when it has none."""

    name: str

    def diagnose(self, incident: Incident, signals: list[Signal]) -> Finding | None: ...


@dataclass(frozen=True)
class Finding:
    """A reasoner's hypothesis plus the runbook it came from (its remedies become the plan)."""

    diagnosis: Diagnosis
    runbook: Runbook | None = None


def signal_context(signal: Signal) -> dict[str, str]:
    """Values ``${name}`` may refer to in runbook text: the signal's labels, its pseudo-labels
    and its annotations (labels win on a clash)."""
    return {**signal.annotations, **match_labels(signal)}


class RunbookReasoner:
    """Diagnoses by the most specific matching runbook (most matchers, then highest confidence);
    each runbook is tried against the firing signals, newest first."""

    name = "runbook"

    def __init__(self, runbooks: list[Runbook]):
        self.runbooks = runbooks

    def diagnose(self, incident: Incident, signals: list[Signal]) -> Finding | None:
        firing = [s for s in reversed(signals) if s.status == SignalStatus.firing] or list(reversed(signals))
        best: tuple[tuple[int, float], Runbook, Signal] | None = None
        for rb in self.runbooks:
            for sig in firing:
                if rb.applies_to(sig):
                    rank = (rb.specificity, rb.diagnosis.confidence)
                    if best is None or rank > best[0]:
                        best = (rank, rb, sig)
                    break
        if best is None:
            return None
        _, rb, sig = best
        try:
            explanation = render(rb.diagnosis.explanation, signal_context(sig))
        except KeyError:
            explanation = rb.diagnosis.explanation
        evidence = [f"{s.source}: {s.summary or s.kind}" + (f" ({s.annotations.get('detail')})" if s.annotations.get("detail") else "")
                    for s in firing[:10]]
        return Finding(Diagnosis(category=rb.diagnosis.category, explanation=explanation, evidence=evidence,
                                 confidence=rb.diagnosis.confidence, reasoner=self.name, runbook=rb.name), rb)


def diagnose(incident: Incident, signals: list[Signal], reasoners: list[Reasoner]) -> Finding:
    """Ask every reasoner; keep the most confident finding. Never raises for lack of an answer:
    returns category ``unknown`` with confidence 0."""
    findings = [f for r in reasoners if (f := r.diagnose(incident, signals)) is not None]
    if not findings:
        return Finding(Diagnosis(category="unknown", confidence=0.0, reasoner="none",
                                 explanation="no runbook or reasoner recognised these signals",
                                 evidence=[f"{s.source}: {s.summary or s.kind}" for s in signals[:10]]))
    return max(findings, key=lambda f: f.diagnosis.confidence)
