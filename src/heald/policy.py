"""The policy gate: risk × confidence × environment → auto, approval, escalate or refuse.

:func:`gate` is the stage's entry: it walks the plan's candidates best first, skips the ones the
budgets forbid (cooldown, rate limit per target), refuses the ones the environment forbids (not
on its allowlist, above its highest risk, aimed at heald itself), and hands the first one left
to :func:`decide`. An open circuit breaker on the target turns an ``auto`` decision into an
approval. Nothing runs that it did not pass (DESIGN.md invariant 1). The order of the rules is
the order of these functions; every decision and every skipped candidate carries the reason a
human reads in the audit log.

**Only deterministic confidence acts by itself** (DESIGN.md invariant 1): the confidence the
gate compares with ``auto_min_confidence`` is :func:`grounded_confidence` — a runbook's or the
signature knowledge base's. An LLM's confidence can lower it (a disagreement, see
:func:`heald.diagnose.diagnose`), never raise it above the deterministic reasoners'; and a
finding that rests on the LLM alone (no deterministic reasoner supports its category) is never
``auto``, however confident the model and whatever runbook its category brought along: it
needs a human approval (or escalates below ``escalate_below_confidence``). The rule is applied
here, on the diagnosis, so that no path to a candidate (a category runbook, a remedy the model
proposed, a runbook's own risk) can skip it.

The checks that need the store or the running system (cooldowns, rate limits, breakers, heald's
own process) come through :class:`GateFacts`, implemented by :class:`heald.budgets.Budgets`;
this module stays free of I/O so that its rules can be tested alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from heald.config import PolicyConfig
from heald.models import DETERMINISTIC_REASONERS, Decision, DecisionKind, Diagnosis, RemedyCandidate


def grounded_confidence(diagnosis: Diagnosis) -> float | None:
    """The confidence the deterministic reasoners (:data:`heald.models.DETERMINISTIC_REASONERS`)
    give ``diagnosis``: its own confidence when a deterministic reasoner made it; for any other
    reasoner's (the LLM's) the lower of its confidence and ``deterministic_confidence``; None
    when no deterministic reasoner supports it (the finding rests on that reasoner alone)."""
    if diagnosis.reasoner in DETERMINISTIC_REASONERS:
        if diagnosis.deterministic_confidence is None:
            return diagnosis.confidence
        return min(diagnosis.confidence, diagnosis.deterministic_confidence)
    if diagnosis.deterministic_confidence is None:
        return None
    return min(diagnosis.confidence, diagnosis.deterministic_confidence)


def decide(diagnosis: Diagnosis, candidate: RemedyCandidate | None, policy: PolicyConfig, *,
           attempt: int, max_attempts: int, environment: str | None = None) -> Decision:
    """Decide what to do with ``candidate`` (the plan's best remaining remedy) for attempt
    number ``attempt`` (1-based), under the rules of ``environment``
    (:meth:`PolicyConfig.for_environment`)."""
    rules = policy.for_environment(environment)
    grounded = grounded_confidence(diagnosis)
    conf = diagnosis.confidence if grounded is None else grounded
    conf_text = f"confidence {conf:.2f}"
    if grounded is not None and diagnosis.reasoner not in DETERMINISTIC_REASONERS:
        conf_text += f" (the deterministic reasoners'; the {diagnosis.reasoner} reasoner's cannot raise it)"
    if attempt > max_attempts:
        return Decision(kind=DecisionKind.escalate, candidate=candidate,
                        reason=f"attempt budget spent: {max_attempts} attempts made, none healed it")
    if diagnosis.category == "unknown":
        return Decision(kind=DecisionKind.escalate, candidate=candidate,
                        reason="the cause is unknown: no runbook or reasoner recognised the signals")
    if candidate is None:
        return Decision(kind=DecisionKind.escalate, candidate=None,
                        reason=f"no remedy left to try for {diagnosis.category}")
    if (why := refusal(candidate, policy, environment)) is not None:
        return Decision(kind=DecisionKind.refuse, candidate=candidate, reason=why)
    if conf < rules.escalate_below_confidence:
        return Decision(kind=DecisionKind.escalate, candidate=candidate,
                        reason=f"{conf_text} is below {rules.escalate_below_confidence:.2f}: a human should look")
    risk = candidate.risk
    if (grounded is not None and rules.auto and risk.rank <= rules.auto_max_risk.rank
            and conf >= rules.auto_min_confidence):
        return Decision(kind=DecisionKind.auto, candidate=candidate,
                        reason=f"risk {risk.value} and confidence {conf:.2f} ≥ {rules.auto_min_confidence:.2f}: safe to act")
    approvals = max(1, rules.approvals_by_risk.get(risk, 1))
    if grounded is None:
        why = (f"{diagnosis.category} rests on the {diagnosis.reasoner} reasoner alone (confidence "
               f"{diagnosis.confidence:.2f}; no runbook or signature supports it): heald never acts on it without a human")
    elif not rules.auto:
        why = f"auto-remediation is off in {environment or 'this environment'}"
    elif risk.rank > rules.auto_max_risk.rank:
        why = f"risk {risk.value} is above {rules.auto_max_risk.value}"
    else:
        why = f"{conf_text} is below {rules.auto_min_confidence:.2f}"
    return Decision(kind=DecisionKind.approval, candidate=candidate, required_approvals=approvals,
                    reason=f"{why}: needs {approvals} approval{'s' if approvals > 1 else ''}")


def count_approvers(votes: list[dict[str, Any]], roots: Mapping[str, str]) -> dict[str, list[str]]:
    """The humans who approved: ``votes`` are approval rows (``approver``, ``verdict``) in the
    order given, ``roots`` maps an approver identity to its root identity (an identity missing
    from it is its own root). Returns {root identity: [approving identities that count as it]};
    its length is the number of approvals that count. Two identities with one root — one made
    by the other, or both made by the same human — are one approver (:mod:`heald.auth`)."""
    humans: dict[str, list[str]] = {}
    for v in votes:
        if v["verdict"] != "approve":
            continue
        names = humans.setdefault(roots.get(v["approver"], v["approver"]), [])
        if v["approver"] not in names:
            names.append(v["approver"])
    return humans


def refusal(candidate: RemedyCandidate, policy: PolicyConfig, environment: str | None) -> str | None:
    """Why ``environment``'s rules refuse ``candidate`` outright (not on the allowlist, above
    the highest risk allowed), or None."""
    rules = policy.for_environment(environment)
    where = f"environment {environment}" if environment else "this environment"
    if rules.allowed_remedies is not None and candidate.remedy not in rules.allowed_remedies:
        return (f"{candidate.remedy} is not on the allowlist of {where} "
                f"({', '.join(rules.allowed_remedies) or 'empty'})")
    if candidate.risk.rank > rules.max_risk.rank:
        return f"{candidate.remedy} has risk {candidate.risk.value}, above the highest allowed in {where} ({rules.max_risk.value})"
    return None


class GateFacts(Protocol):
    """What the gate needs to know about the world; each check returns the reason it blocks,
    or None. ``target`` is what a remedy acts on (``service:shop``, ``url:http://…``)."""

    def target(self, candidate: RemedyCandidate) -> str: ...
    def heald_itself(self, candidate: RemedyCandidate, target: str) -> str | None: ...
    def about_heald(self) -> str | None: ...
    def cooldown(self, target: str, remedy: str) -> str | None: ...
    def target_rate_limited(self, target: str) -> str | None: ...
    def global_rate_limited(self) -> str | None: ...
    def breaker_open(self, target: str) -> str | None: ...
    def silenced(self) -> str | None: ...


@dataclass
class GateResult:
    """The gate's verdict: the decision, the target of its candidate (None without one), and
    the candidates passed over with the reason for each (``skipped``: (candidate, reason))."""

    decision: Decision
    target: str | None = None
    skipped: list[tuple[RemedyCandidate, str]] = field(default_factory=list)


def gate(diagnosis: Diagnosis, candidates: list[RemedyCandidate], policy: PolicyConfig, facts: GateFacts, *,
         attempt: int, max_attempts: int, environment: str | None = None) -> GateResult:
    """Run the whole gate over the plan's ``candidates`` (best first); see the module docstring.

    An incident about heald itself (:meth:`GateFacts.about_heald`) is refused before anything
    else. A candidate refused by the environment or aimed at heald itself, in cooldown, or on a target
    over its rate limit is skipped with its reason, and the next one is considered. With none
    left the decision is ``refuse`` when every candidate was refused, else ``escalate``; both
    carry the reasons. An active silence matching the incident's labels (a maintenance window
    begun after it opened) or the global rate limit reached escalates before any candidate is
    looked at.
    """
    def plain(candidate: RemedyCandidate | None) -> Decision:
        return decide(diagnosis, candidate, policy, attempt=attempt, max_attempts=max_attempts, environment=environment)

    if (itself := facts.about_heald()) is not None:  # invariant 7, whatever the plan holds
        return GateResult(Decision(kind=DecisionKind.refuse, candidate=candidates[0] if candidates else None,
                                   reason=itself))
    if not candidates or attempt > max_attempts or diagnosis.category == "unknown":
        return GateResult(plain(candidates[0] if candidates else None))
    if (silence := facts.silenced()) is not None:  # a maintenance window that began after the incident opened
        return GateResult(Decision(kind=DecisionKind.escalate, candidate=candidates[0],
                                   reason=f"silenced by {silence}: heald does not act during it"))
    if (limited := facts.global_rate_limited()) is not None:
        return GateResult(Decision(kind=DecisionKind.escalate, candidate=candidates[0], reason=limited))
    skipped: list[tuple[RemedyCandidate, str]] = []
    refused_only = True
    for candidate in candidates:
        try:
            target = facts.target(candidate)
        except ValueError as exc:  # parameters a remedy does not accept: never run it
            skipped.append((candidate, str(exc)))
            continue
        refused = refusal(candidate, policy, environment) or facts.heald_itself(candidate, target)
        if refused is not None:
            skipped.append((candidate, refused))
            continue
        blocked = facts.cooldown(target, candidate.remedy) or facts.target_rate_limited(target)
        if blocked is not None:
            skipped.append((candidate, blocked))
            refused_only = False
            continue
        decision = plain(candidate)
        if decision.kind == DecisionKind.auto and (open_reason := facts.breaker_open(target)) is not None:
            rules = policy.for_environment(environment)
            n = max(1, rules.approvals_by_risk.get(candidate.risk, 1))
            decision = Decision(kind=DecisionKind.approval, candidate=candidate, required_approvals=n,
                                reason=f"{open_reason}: auto-remediation is off for {target}, needs "
                                       f"{n} approval{'s' if n > 1 else ''}")
        return GateResult(decision, target, skipped)
    reasons = "; ".join(f"{c.remedy}: {why}" for c, why in skipped)
    kind = DecisionKind.refuse if refused_only else DecisionKind.escalate
    verb = "refused" if refused_only else "blocked"
    return GateResult(Decision(kind=kind, candidate=candidates[0], reason=f"every candidate is {verb}: {reasons}"),
                      None, skipped)
