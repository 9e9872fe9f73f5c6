"""Planning: from a diagnosis to ranked candidate remedies.

:func:`make_plan` renders the matched runbook's remedies with the incident's signal labels,
validates each against the catalog (an invalid one is dropped with its reason), and ranks them:
remedies not yet tried on this incident first, then by Thompson sampling (one draw from each
candidate's Beta posterior for the diagnosed category, :mod:`heald.learn`; the draw is kept on
the candidate as ``score``), then in runbook order. A remedy with no history for the category
counts as its prior mean, 0.5, and is not drawn; a remedy that healed at least as often as it
failed is never ranked below one never tried (see :func:`_rank_score`): untried alternatives
are explored when the tried ones look worse than a coin flip, not while they work. When no
candidate has any history the runbook author's order holds. A remedy already tried stays a
candidate (a restart can fail once and work the next time); the attempt budget bounds retries.
A tried remedy is a remedy name, or a :func:`candidate_key` (the remedy with those parameters).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from heald import remedies
from heald.diagnose import Finding, signal_context
from heald.diagnose.runbooks import render
from heald.learn import Posterior, thompson_scores
from heald.models import Plan, RemedyCandidate, Signal, SignalStatus


def candidate_key(remedy: str, params: dict[str, Any]) -> str:
    """One remedy with its parameters, as a string: ``http_request:{"method": "PUT", …}``."""
    return f"{remedy}:{json.dumps(params, sort_keys=True, separators=(',', ':'))}"


@dataclass
class PlanResult:
    plan: Plan
    dropped: list[str] = field(default_factory=list)


def make_plan(incident_id: int, finding: Finding, signals: list[Signal], tried: set[str],
              rates: dict[str, Posterior], rng: random.Random | None = None,
              heald: remedies.HealdSelf | None = None, service: str | None = None) -> PlanResult:
    """Build the plan: the runbook's remedies, then remedies the reasoner proposed itself
    (``finding.remedies``). ``tried`` holds remedy names or candidate keys already applied on this
    incident; ``rates`` the learned posteriors for the diagnosed category; ``rng`` the source of
    the Thompson draws (default: a fresh, unseeded one; tests pass a seeded one). With ``heald``
    (its configuration), a remedy that cannot act on its target at all
    (:meth:`heald.remedies.Remedy.cannot_apply`, e.g. ``restart_process`` for a service heald does
    not manage) is dropped with its reason. The runbook's parameters are filled from the newest
    firing signal it applies to, one about ``service`` (the incident's: the root cause, when a
    dependent's signals joined a dependency's incident) first."""
    candidates: list[RemedyCandidate] = []
    dropped: list[str] = []
    if finding.runbook is not None:
        firing = [s for s in reversed(signals) if s.status == SignalStatus.firing] or list(reversed(signals))
        if service:  # stable: newest first within each side
            firing.sort(key=lambda s: s.service != service)
        context = signal_context(next((s for s in firing if finding.runbook.applies_to(s, finding.diagnosis.category)), firing[0]))
        for rr in finding.runbook.remedies:
            try:
                params = render(rr.params, context)
                validated = remedies.validate_params(rr.remedy, params)
            except KeyError as exc:
                dropped.append(f"{rr.remedy}: parameter refers to label {exc.args[0]!r}, which the signals lack")
                continue
            except remedies.RemedyParamsError as exc:
                dropped.append(str(exc))
                continue
            post = rates.get(rr.remedy)
            candidates.append(RemedyCandidate(remedy=rr.remedy, params=validated.model_dump(mode="json"), risk=rr.risk,
                                              runbook=finding.runbook.name,
                                              success_rate=post.mean if post else None,
                                              samples=post.samples if post else 0))
    for proposed in finding.remedies:  # a reasoner's own proposals (validated against the catalog)
        if any(c.remedy == proposed.remedy and c.params == proposed.params for c in candidates):
            continue
        post = rates.get(proposed.remedy)
        candidates.append(proposed.model_copy(update={"success_rate": post.mean if post else None,
                                                      "samples": post.samples if post else 0}))
    if heald is not None:
        kept = []
        for c in candidates:
            try:
                why = remedies.get(c.remedy).cannot_apply(remedies.validate_params(c.remedy, c.params), heald)
            except remedies.RemedyParamsError as exc:
                why = str(exc)
            if why is None:
                kept.append(c)
            else:
                dropped.append(why)
        candidates = kept
    if any(c.samples for c in candidates):
        scores = thompson_scores([c.remedy for c in candidates], rates, rng or random.Random())
        candidates = [c.model_copy(update={"score": round(s, 6) if c.samples else None})
                      for c, s in zip(candidates, scores, strict=True)]
    order = {id(c): i for i, c in enumerate(candidates)}
    candidates.sort(key=lambda c: (c.remedy in tried or candidate_key(c.remedy, c.params) in tried,
                                   -_rank_score(c), -(c.score or 0.0), order[id(c)]))
    return PlanResult(Plan(incident_id=incident_id, candidates=candidates), dropped)


def _rank_score(c: RemedyCandidate) -> float:
    """What a candidate is ranked by: a remedy never tried for this category counts as its prior
    mean (0.5, no gamble on it); a tried one by its Thompson draw, except that one that healed at
    least as often as it failed is never ranked below an untried one (an outage is a costly
    place to explore)."""
    if c.score is None:
        return 0.5
    if c.success_rate is not None and c.success_rate >= 0.5:
        return max(c.score, 0.5)
    return c.score
