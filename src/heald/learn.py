"""Learning from outcomes: which remedies work for which category of incident.

Every attempt's outcome is stored (:meth:`heald.store.Store.add_outcome`). Per (category,
remedy) the success probability has a Beta(1 + successes, 1 + failures) posterior;
:func:`success_rates` gives its mean and sample count, which the plan uses to rank candidates.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from heald.models import OutcomeResult
from heald.store import Store


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


def success_rates(store: Store, category: str) -> dict[str, Posterior]:
    """{remedy: Posterior} from every recorded attempt for ``category``."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for o in store.outcomes(category=category):
        if o.remedy is None or o.attempt == 0:  # attempt 0 is the incident as a whole, not one try
            continue
        if o.result == OutcomeResult.healed:
            counts[o.remedy][0] += 1
        elif o.result in (OutcomeResult.not_healed, OutcomeResult.rolled_back):
            counts[o.remedy][1] += 1
    return {r: Posterior(s, f) for r, (s, f) in counts.items()}
