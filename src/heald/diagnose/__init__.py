"""Diagnosis: what heald believes is wrong, and how sure it is.

:func:`diagnose` is the stage's entry. It asks every reasoner for a hypothesis: the runbook
reasoner (signals matching a runbook), the signature knowledge base (:mod:`heald.diagnose.kb`)
and, when configured, an LLM (:mod:`heald.diagnose.llm`). A hypothesis without a runbook gets
the most specific runbook that matches its category. The most confident hypothesis wins; when
another reasoner's hypothesis disagrees with it (neither category explains the other, see
:mod:`heald.diagnose.categories`), the gate sees the lower of the two confidences. With no
hypothesis at all the category is ``unknown`` with confidence 0, which the gate escalates.

A model's hypothesis (any reasoner outside :data:`heald.models.DETERMINISTIC_REASONERS`: the
LLM) never carries more confidence than the deterministic reasoners give it: when it wins,
its confidence is capped at the best confidence of a runbook or knowledge-base hypothesis that
*supports* it (the same category, or a cause of it), recorded as ``deterministic_confidence``;
with no such support it is left as is and ``deterministic_confidence`` stays None, which the
gate reads as "rests on the LLM alone: never without a human" (:func:`heald.policy.decide`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import structlog

from heald.diagnose.categories import agree, explains
from heald.diagnose.runbooks import Runbook, match_labels, render
from heald.models import DETERMINISTIC_REASONERS, Diagnosis, Incident, RemedyCandidate, Signal, SignalStatus

log = structlog.get_logger("heald.diagnose")


class Reasoner(Protocol):
    """Turns an incident and its signals into a hypothesis, or None when it has none. May raise
    :class:`ReasonerUnavailable` (heald then falls back to the other reasoners)."""

    name: str

    def diagnose(self, incident: Incident, signals: list[Signal]) -> Finding | None: ...


@runtime_checkable
class EvidenceGatherer(Protocol):
    """A reasoner that also (or only) gathers evidence, e.g. recent metric values
    (:mod:`heald.diagnose.metrics`): ``evidence`` returns lines added to the diagnosis. Must
    not raise (an exception is noted and skipped)."""

    def evidence(self, incident: Incident, signals: list[Signal]) -> list[str]: ...


class ReasonerUnavailable(RuntimeError):
    """A reasoner could not give a valid answer (endpoint down, answer invalid, circuit open).
    ``usage`` is the accounting of what the attempt cost, if anything (see :class:`Finding`)."""

    def __init__(self, reason: str, usage: dict[str, Any] | None = None):
        super().__init__(reason)
        self.usage = usage


@dataclass(frozen=True)
class Finding:
    """A hypothesis plus the runbook whose remedies become the plan.

    ``remedies`` are extra candidates a reasoner proposed (an LLM), already validated against
    the catalog. After :func:`diagnose`: ``hypotheses`` holds every reasoner's own diagnosis,
    ``notes`` what went wrong with reasoners that gave none (fallbacks), ``usage`` the LLM
    accounting records (model, prompt/completion tokens, cost in USD, latency in seconds).
    """

    diagnosis: Diagnosis
    runbook: Runbook | None = None
    remedies: tuple[RemedyCandidate, ...] = ()
    hypotheses: tuple[Diagnosis, ...] = ()
    notes: tuple[str, ...] = ()
    usage: tuple[dict[str, Any], ...] = field(default=())


def signal_context(signal: Signal) -> dict[str, str]:
    """Values ``${name}`` may refer to in runbook text: the signal's labels, its pseudo-labels
    and its annotations (labels win on a clash). ``summary`` and ``detail`` are always there:
    ``detail`` falls back to the ``description`` annotation, then the summary, then the kind."""
    summary = signal.summary or signal.kind
    detail = signal.annotations.get("detail") or signal.annotations.get("description") or summary
    return {"summary": summary, "detail": detail, **signal.annotations, **match_labels(signal)}


def _firing_newest_first(signals: list[Signal]) -> list[Signal]:
    return [s for s in reversed(signals) if s.status == SignalStatus.firing] or list(reversed(signals))


class RunbookReasoner:
    """Diagnoses by the most specific matching runbook (most conditions, then highest
    confidence); each runbook is tried against the firing signals, newest first. Runbooks that
    match on a category are not used here: they give remedies to other reasoners' hypotheses."""

    name = "runbook"

    def __init__(self, runbooks: list[Runbook]):
        self.runbooks = runbooks

    def diagnose(self, incident: Incident, signals: list[Signal]) -> Finding | None:
        firing = _firing_newest_first(signals)
        firing.sort(key=lambda s: s.service != incident.service)  # the incident's own service (the root) first
        best: tuple[tuple[int, float], Runbook, Signal] | None = None
        for rb in self.runbooks:
            if rb.diagnosis is None:
                continue
            for sig in firing:
                if rb.applies_to(sig):
                    rank = (rb.specificity, rb.diagnosis.confidence)
                    if best is None or rank > best[0]:
                        best = (rank, rb, sig)
                    break
        if best is None:
            return None
        _, rb, sig = best
        assert rb.diagnosis is not None
        # every variable is known (checked at load): declared ones fall back to their text
        explanation = render(rb.diagnosis.explanation, {**rb.variables, **signal_context(sig)})
        evidence = [f"{s.source}: {s.summary or s.kind}" + (f" ({s.annotations.get('detail')})" if s.annotations.get("detail") else "")
                    for s in firing[:10]]
        return Finding(Diagnosis(category=rb.diagnosis.category, explanation=explanation, evidence=evidence,
                                 confidence=rb.diagnosis.confidence, reasoner=self.name, runbook=rb.name), rb)


def runbook_for_category(runbooks: list[Runbook], category: str, signals: list[Signal]) -> Runbook | None:
    """The most specific runbook that matches on ``category`` and whose other conditions hold
    for one of the signals (on a tie, the one loaded last: yours over the defaults); None when
    there is none."""
    best: tuple[int, Runbook] | None = None
    for rb in runbooks:
        if rb.match.category is None or category not in rb.match.categories:
            continue
        if any(rb.applies_to(s, category) for s in _firing_newest_first(signals)):
            if best is None or rb.specificity >= best[0]:  # on a tie the later (a user's, not a default) wins
                best = (rb.specificity, rb)
    return best[1] if best else None


def _agree(a: Finding, b: Finding) -> bool:
    ca, cb = a.diagnosis.category, b.diagnosis.category
    if agree(ca, cb):
        return True
    for f, other in ((a, cb), (b, ca)):
        if f.runbook is not None and f.runbook.diagnosis is not None and other in f.runbook.diagnosis.explains:
            return True
    return False


def _supports(f: Finding, category: str) -> bool:
    """Does deterministic finding ``f`` support ``category``: the same category, or one that
    explains it (a cause implies its symptom; a symptom does not prove a cause)?"""
    c = f.diagnosis.category
    if c == "unknown":
        return False
    if c == category or explains(c, category):
        return True
    rb = f.runbook
    return f.diagnosis.reasoner == "runbook" and rb is not None and rb.diagnosis is not None \
        and category in rb.diagnosis.explains


def _ground(d: Diagnosis, findings: list[Finding]) -> Diagnosis:
    """``d`` with ``deterministic_confidence`` set, its confidence capped at it, and the
    explanation saying so (see the module docstring)."""
    if d.reasoner in DETERMINISTIC_REASONERS:
        return d.model_copy(update={"deterministic_confidence": d.confidence})
    support = [f.diagnosis.confidence for f in findings
               if f.diagnosis.reasoner in DETERMINISTIC_REASONERS and _supports(f, d.category)]
    if not support:
        return d.model_copy(update={
            "deterministic_confidence": None,
            "explanation": f"{d.explanation} [no runbook or signature supports {d.category}: this finding rests on "
                           f"{d.reasoner} alone, and heald does not act on it without a human]"})
    grounded = min(d.confidence, max(support))
    note = ""
    if grounded < d.confidence:
        note = (f" [{d.reasoner} said {d.confidence:.2f}; the deterministic reasoners give {grounded:.2f}, "
                f"which is what the gate sees]")
    return d.model_copy(update={"confidence": grounded, "deterministic_confidence": grounded,
                                "explanation": d.explanation + note})


def diagnose(incident: Incident, signals: list[Signal], reasoners: list[Reasoner],
             runbooks: list[Runbook] | None = None) -> Finding:
    """Ask every reasoner; keep the most confident hypothesis (a runbook-backed one on a tie),
    give it the runbook for its category when it has none, and lower its confidence to the
    lowest confidence of any hypothesis that disagrees with it, and cap a model's confidence
    at the deterministic reasoners' (see the module docstring). Never raises for lack of an
    answer: returns category ``unknown`` with confidence 0. A reasoner that raises is skipped
    (the reason is kept in ``notes``)."""
    findings: list[Finding] = []
    notes: list[str] = []
    usage: list[dict[str, Any]] = []
    for r in reasoners:
        try:
            f = r.diagnose(incident, signals)
        except ReasonerUnavailable as exc:
            notes.append(f"{r.name}: {exc}; falling back to the other reasoners")
            if exc.usage:
                usage.append(exc.usage)
            continue
        except Exception as exc:  # a broken reasoner must not stop the healing; the others still answer
            log.exception("reasoner.failed", reasoner=r.name)
            notes.append(f"{r.name} failed: {exc.__class__.__name__}: {exc}")
            continue
        if f is None:
            continue
        usage.extend(f.usage)
        if f.runbook is None and runbooks:
            rb = runbook_for_category(runbooks, f.diagnosis.category, signals)
            if rb is not None:
                f = Finding(f.diagnosis.model_copy(update={"runbook": rb.name}), rb, f.remedies)
        findings.append(f)
    gathered: list[str] = []
    for r in reasoners:
        if isinstance(r, EvidenceGatherer):
            try:
                gathered.extend(r.evidence(incident, signals)[:10])
            except Exception as exc:  # evidence is a help, never a reason to stop the healing
                log.exception("evidence.failed", reasoner=r.name)
                notes.append(f"{r.name} evidence failed: {exc.__class__.__name__}: {exc}")
    hypotheses = tuple(f.diagnosis for f in findings)
    if not findings:
        return Finding(Diagnosis(category="unknown", confidence=0.0, reasoner="none",
                                 explanation="no runbook or reasoner recognised these signals",
                                 evidence=[*(f"{s.source}: {s.summary or s.kind}" for s in signals[:10]), *gathered]),
                       notes=tuple(notes), usage=tuple(usage))
    best = max(findings, key=lambda f: (f.diagnosis.confidence, f.runbook is not None or bool(f.remedies)))
    d = best.diagnosis
    against = [f for f in findings if not _agree(best, f)]
    if against:
        low = min(against, key=lambda f: f.diagnosis.confidence)
        conf = min(d.confidence, low.diagnosis.confidence)
        others = "; ".join(f"{f.diagnosis.reasoner} says {f.diagnosis.category} ({f.diagnosis.confidence:.2f})"
                           for f in against)
        d = d.model_copy(update={
            "confidence": conf,
            "explanation": f"{d.explanation} [reasoners disagree: {d.reasoner} says {d.category} "
                           f"({best.diagnosis.confidence:.2f}), {others}; the gate sees the lower confidence {conf:.2f}]"})
    else:
        agreeing = sorted({f.diagnosis.reasoner for f in findings} - {d.reasoner})
        if agreeing:
            d = d.model_copy(update={"explanation": f"{d.explanation} [{', '.join(agreeing)} agree]"})
    d = _ground(d, findings)
    extra = [e for f in findings if f is not best for e in f.diagnosis.evidence if e not in d.evidence]
    d = d.model_copy(update={"evidence": [*d.evidence, *gathered, *extra][:30]})
    return Finding(d, best.runbook, best.remedies, hypotheses, tuple(notes), tuple(usage))
