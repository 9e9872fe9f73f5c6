"""Learning from outcomes: which remedies work for which category of incident.

Every attempt's outcome is stored (:meth:`heald.store.Store.add_outcome`). Per (category,
remedy) the success probability has a Beta(1 + successes, 1 + failures) posterior (a uniform
prior updated by each healed / not healed / rolled back attempt). Only verified heals count: a
``healed`` attempt is a success of its remedy only when a verification of that very action
passed after it was applied (:func:`verified_heals`); any other ``healed`` — a target that
happened to be up, an outcome no verification backs — counts for nothing, and a target that
recovered on its own after a failed remedy (``recovered_unaided``) never counts as a heal.
:func:`success_rates` gives
the posteriors of one category, :func:`learned` those of every category (``heald learn``,
``GET /v1/learning``), and :func:`thompson_scores` one draw from each posterior: the plan
ranks candidates by these draws (Thompson sampling), so a remedy that keeps failing is tried
first less and less often while one with little evidence still gets explored.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from heald.models import Outcome, OutcomeResult
from heald.store import Store
from heald.store.tables import ActionRow, VerificationRow


@dataclass(frozen=True)
class Posterior:
    """Beta(alpha, beta) over a remedy's success probability for one category."""

    successes: int
    failures: int

    @property
    def alpha(self) -> float:
        return 1.0 + self.successes

    @property
    def beta(self) -> float:
        return 1.0 + self.failures

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    @property
    def samples(self) -> int:
        return self.successes + self.failures

    def draw(self, rng: random.Random) -> float:
        """One sample from Beta(alpha, beta), in [0, 1]."""
        return rng.betavariate(self.alpha, self.beta)


#: The posterior of a remedy never tried for a category: Beta(1, 1), uniform.
PRIOR = Posterior(0, 0)


def verified_heals(store: Store) -> set[tuple[int, int, str]]:
    """(incident id, attempt, remedy) of every action that a passed verification, begun after
    the action started, backs: the attempts that may count as heals."""
    stmt = (sa.select(ActionRow.incident_id, ActionRow.attempt, ActionRow.remedy)
            .join(VerificationRow, VerificationRow.action_id == ActionRow.id)
            .where(VerificationRow.passed.is_(True), VerificationRow.started_at >= ActionRow.started_at).distinct())
    with store.read() as s:
        return {(i, a, r) for i, a, r in s.execute(stmt)}


def _count(outcomes: Iterable[Outcome], verified: set[tuple[int, int, str]]) -> dict[tuple[str, str], list[int]]:
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for o in outcomes:
        if o.remedy is None or o.attempt == 0:  # attempt 0 is the incident as a whole, not one try
            continue
        if o.result == OutcomeResult.healed:
            if (o.incident_id, o.attempt, o.remedy) in verified:  # else nothing shows the remedy healed it
                counts[(o.category, o.remedy)][0] += 1
        elif o.result in (OutcomeResult.not_healed, OutcomeResult.rolled_back):
            counts[(o.category, o.remedy)][1] += 1
    return counts


def success_rates(store: Store, category: str) -> dict[str, Posterior]:
    """{remedy: Posterior} from every recorded attempt for ``category``."""
    return {r: Posterior(s, f) for (_, r), (s, f) in _count(store.outcomes(category=category), verified_heals(store)).items()}


def learned(store: Store, category: str | None = None) -> dict[str, dict[str, Posterior]]:
    """{category: {remedy: Posterior}} from every recorded attempt (only ``category`` if given),
    categories and remedies in name order."""
    result: dict[str, dict[str, Posterior]] = {}
    for (cat, remedy), (s, f) in sorted(_count(store.outcomes(category=category), verified_heals(store)).items()):
        result.setdefault(cat, {})[remedy] = Posterior(s, f)
    return result


def learned_rows(store: Store, category: str | None = None) -> list[dict[str, Any]]:
    """:func:`learned` as JSON-ready rows, best first within each category: {"category",
    "remedy", "successes", "failures", "samples", "success_rate" (posterior mean), "alpha",
    "beta"}."""
    rows = []
    for cat, posts in learned(store, category).items():
        for remedy, p in sorted(posts.items(), key=lambda kv: (-kv[1].mean, kv[0])):
            rows.append({"category": cat, "remedy": remedy, "successes": p.successes, "failures": p.failures,
                         "samples": p.samples, "success_rate": p.mean, "alpha": p.alpha, "beta": p.beta})
    return rows


def thompson_scores(remedies: list[str], rates: dict[str, Posterior], rng: random.Random) -> list[float]:
    """One Thompson draw per entry of ``remedies`` (names may repeat: each entry draws on its
    own) from its posterior in ``rates`` (:data:`PRIOR` when absent). Draws are in [0, 1]."""
    return [rates.get(r, PRIOR).draw(rng) for r in remedies]
