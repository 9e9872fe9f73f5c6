"""Suppression at intake: silences, then inhibition rules, before correlation.

:func:`suppressed_by` is the one place that decides whether a firing signal starts nothing:

1. an active silence matching it (:mod:`heald.correlate.silences`);
2. an inhibition rule (``correlation.inhibit_rules``, Alertmanager's ``inhibit_rules``): a
   signal matching a rule's ``target_matchers`` is muted while a *firing* signal of an open
   incident matches the rule's ``source_matchers`` with the same values of the ``equal``
   labels (a signal never inhibits itself: same fingerprint).

The service dependency map is the other form of inhibition heald knows
(:mod:`heald.correlate.dependencies`): there the dependency's incident does not mute its
dependents' signals but absorbs them, so that they are kept as evidence of one incident and its
verification covers them. Label rules come first: a muted signal joins nothing.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from heald.config import HealdConfig, InhibitRule
from heald.correlate.silences import active_silence, describe, signal_labels
from heald.matchers import matches_all, parse_matcher
from heald.models import OPEN_STATES, Signal, SignalStatus
from heald.store.tables import IncidentRow, SignalRow


def _firing_sources(session: Session) -> list[SignalRow]:
    """The latest signal of each fingerprint in an open incident, when it is firing."""
    rows = session.scalars(sa.select(SignalRow).join(IncidentRow, SignalRow.incident_id == IncidentRow.id)
                           .where(IncidentRow.state.in_([s.value for s in OPEN_STATES])).order_by(SignalRow.id))
    latest: dict[str, SignalRow] = {}
    for row in rows:
        latest[row.fingerprint] = row
    return [r for r in latest.values() if r.status == SignalStatus.firing.value]


def _row_labels(row: SignalRow) -> dict[str, str]:
    return signal_labels(Signal(source=row.source, kind=row.kind, service=row.service, labels=row.labels or {}))


def inhibiting(session: Session, rules: list[InhibitRule], labels: dict[str, str],
               fingerprint: str) -> tuple[int, SignalRow] | None:
    """(rule index, source signal) of the first rule that inhibits a signal with ``labels`` and
    ``fingerprint``, or None."""
    applicable = [(i, r) for i, r in enumerate(rules)
                  if matches_all([parse_matcher(m) for m in r.target_matchers], labels)]
    if not applicable:
        return None
    sources = [(row, _row_labels(row)) for row in _firing_sources(session) if row.fingerprint != fingerprint]
    for i, rule in applicable:
        wanted = [parse_matcher(m) for m in rule.source_matchers]
        for row, src in sources:
            if matches_all(wanted, src) and all(src.get(lbl, "") == labels.get(lbl, "") for lbl in rule.equal):
                return i, row
    return None


def suppressed_by(session: Session, signal: Signal, fingerprint: str, config: HealdConfig,
                  now: datetime | None = None) -> str | None:
    """Why ``signal`` starts nothing (``silence N: …`` or ``inhibited by …``), or None. Only a
    firing signal is suppressed: a resolved one may still end an incident."""
    if signal.status != SignalStatus.firing:
        return None
    labels = signal_labels(signal)
    if (silence := active_silence(session, labels, now)) is not None:
        return describe(silence)
    rules = config.correlation.inhibit_rules
    if rules and (hit := inhibiting(session, rules, labels, fingerprint)) is not None:
        i, source = hit
        rule = rules[i]
        equal = f" with equal {', '.join(rule.equal)}" if rule.equal else ""
        return (f"inhibited by signal {source.id} of incident {source.incident_id} "
                f"({source.summary or source.kind}; inhibit_rules[{i}]: {', '.join(rule.source_matchers)}{equal})")[:500]
    return None
