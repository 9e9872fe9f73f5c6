"""Where each probe stands, kept in the store (``probe_state``) so that it survives a restart of
heald: a probe signal that was firing when heald stopped resolves after it starts again
(:class:`heald.sources.probes.ProbeRunner` loads it at start and saves each change)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from heald.models import utcnow
from heald.store import Store
from heald.store.tables import ProbeStateRow


@dataclass(frozen=True)
class ProbeState:
    """One probe's streak: consecutive ``failures`` and ``successes`` (counted as far as they
    change what the probe emits), whether its signal is ``firing``, when the failure streak
    began (``first_failure``, UTC) and the fingerprint of the signal it fired."""

    failures: int = 0
    successes: int = 0
    firing: bool = False
    first_failure: datetime | None = None
    fingerprint: str | None = None


def load_probe_states(store: Store) -> dict[tuple[str, str], ProbeState]:
    """Every stored probe state by (service, probe label)."""
    with store.tx() as s:
        return {(r.service, r.probe): ProbeState(r.failures, r.successes, r.firing, r.first_failure, r.fingerprint)
                for r in s.scalars(sa.select(ProbeStateRow))}


def save_probe_state(store: Store, service: str, probe: str, state: ProbeState) -> None:
    """Store ``state`` as where probe ``probe`` (its label) of ``service`` stands now."""
    with store.tx() as s:
        row = s.get(ProbeStateRow, (service, probe))
        if row is None:
            row = ProbeStateRow(service=service, probe=probe, updated_at=utcnow())
            s.add(row)
        row.failures, row.successes, row.firing = state.failures, state.successes, state.firing
        row.first_failure, row.fingerprint, row.updated_at = state.first_failure, state.fingerprint, utcnow()


def read_probe_states(store: Store) -> dict[tuple[str, str], tuple[ProbeState, datetime]]:
    """Every stored probe state by (service, probe label), with when it last changed (UTC);
    a read-only transaction (:meth:`heald.store.Store.read`), for pages and reports."""
    with store.read() as s:
        return {(r.service, r.probe): (ProbeState(r.failures, r.successes, r.firing, r.first_failure, r.fingerprint),
                                       r.updated_at)
                for r in s.scalars(sa.select(ProbeStateRow))}
