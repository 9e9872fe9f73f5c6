"""The knowledge-base reasoner: runs the failure-signature classifiers over every signal's text
and turns their findings into one hypothesis.

How findings combine (per incident):
- Per category, the best classification's confidence, plus 0.02 for each further independent
  classifier that saw it (at most 0.97).
- A cause absorbs its symptoms: when a category that *explains* another (see
  :mod:`heald.diagnose.categories`) is present, the symptom drops out of the ranking and adds
  0.02 corroboration to the cause.
- The best remaining category is the hypothesis. A second, unrelated category is a competing
  explanation; the confidence is lowered by ``0.3 × its confidence`` so that a muddled picture
  is not acted on alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from heald.diagnose import Finding
from heald.diagnose.categories import CATEGORIES, explains
from heald.diagnose.runbooks import signal_text
from heald.diagnose.signatures import Classification, classify
from heald.models import Diagnosis, Incident, Signal, SignalStatus

MIN_CONFIDENCE = 0.5


@dataclass
class _Scored:
    category: str
    confidence: float
    hits: list[tuple[str, Classification]]


def rank(found: list[tuple[str, Classification]]) -> list[_Scored]:
    """Combine classifications (each with where it came from, may be '') into scored
    categories, best first (see the module docstring)."""
    by_cat: dict[str, list[tuple[str, Classification]]] = {}
    for where, c in found:
        by_cat.setdefault(c.category, []).append((where, c))
    scored = []
    for cat, hits in by_cat.items():
        best = max(c.confidence for _, c in hits)
        classifiers = {c.classifier for _, c in hits}
        scored.append(_Scored(cat, min(0.97, best + 0.02 * (len(classifiers) - 1)), hits))
    kept = []
    for s in scored:
        causes = [o for o in scored if o is not s and o.confidence >= MIN_CONFIDENCE and explains(o.category, s.category)]
        if not causes:
            kept.append(s)
    for s in kept:
        absorbed = sum(1 for o in scored if o is not s and explains(s.category, o.category))
        s.confidence = min(0.97, s.confidence + 0.02 * min(absorbed, 2))
    return sorted(kept, key=lambda s: -s.confidence)


class KnowledgeBaseReasoner:
    """Diagnoses from the text of the firing signals (summary, annotations, log lines, CI
    output) with the signature knowledge base (:mod:`heald.diagnose.signatures`)."""

    name = "kb"

    def __init__(self, limit_bytes: int = 2_000_000):
        self.limit_bytes = limit_bytes

    def diagnose(self, incident: Incident, signals: list[Signal]) -> Finding | None:
        firing = [s for s in signals if s.status == SignalStatus.firing] or signals
        # One text for the whole incident, so that a change in one signal and the failures in
        # another are seen together; each signal's part starts with its labels line.
        text = "\n".join(signal_text(s) for s in firing[-50:])
        found = [("", c) for c in classify(text, self.limit_bytes)]
        ranked = [s for s in rank(found) if s.confidence >= MIN_CONFIDENCE]
        if not ranked:
            return None
        top = ranked[0]
        conf = top.confidence
        competing = next((s for s in ranked[1:] if not explains(s.category, top.category)), None)
        if competing is not None:
            conf = conf * (1 - 0.3 * competing.confidence)
        evidence: list[str] = []
        for _, c in top.hits:
            for line in c.evidence:
                if line not in evidence:
                    evidence.append(line)
        details = {k: v for _, c in top.hits for k, v in c.details.items() if v not in (None, "", [], {})}
        desc = CATEGORIES[top.category].description if top.category in CATEGORIES else top.category
        explanation = f"{desc} (recognised by {', '.join(sorted({c.classifier for _, c in top.hits}))})"
        facts = ", ".join(f"{k}={v}" for k, v in list(details.items())[:6] if isinstance(v, (str, int, float)))
        if facts:
            explanation += f"; {facts}"
        if competing is not None:
            explanation += f"; also seen: {competing.category} ({competing.confidence:.2f}), which lowers the confidence"
        return Finding(Diagnosis(category=top.category, explanation=explanation[:2000], evidence=evidence[:20],
                                 confidence=round(conf, 3), reasoner=self.name))
