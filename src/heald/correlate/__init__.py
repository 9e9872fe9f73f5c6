"""Correlation: signals become incidents.

:func:`ingest` is the stage's entry: it fingerprints a signal, stores it, and, unless a silence
or an inhibition rule suppresses it (:mod:`heald.correlate.inhibit`), joins it to the
open incident with the same fingerprint or grouping key, or to an open incident of a service
it depends on (:mod:`heald.correlate.dependencies`), or opens a new incident. It runs in the
caller's transaction, so a signal that was accepted is stored before anything answers
(DESIGN.md invariant 6), and writers on one grouping key (and on the dependency map) are
serialized.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from heald.config import HealdConfig
from heald.correlate.dependencies import dependencies_of, dependents_of, has_dependencies
from heald.correlate.fingerprint import fingerprint, group_key
from heald.correlate.inhibit import suppressed_by
from heald.models import OPEN_STATES, Signal, SignalStatus, utcnow
from heald.store import audit
from heald.store.db import lock
from heald.store.tables import IncidentRow, SignalRow

__all__ = ["IngestResult", "fingerprint", "group_key", "ingest"]


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest` did: the stored signal's id, the incident it joined or opened (None
    when it joined nothing), whether that incident is new, and why it was suppressed, if so."""

    signal_id: int
    incident_id: int | None
    opened: bool
    suppressed_by: str | None = None


def _open_incident(session: Session, fp: str, key: str) -> IncidentRow | None:
    open_states = [s.value for s in OPEN_STATES]
    by_fp = sa.select(IncidentRow).join(SignalRow, SignalRow.incident_id == IncidentRow.id).where(
        SignalRow.fingerprint == fp, IncidentRow.state.in_(open_states)).order_by(IncidentRow.id.desc()).limit(1)
    row = session.scalar(by_fp)
    if row is not None:
        return row
    by_key = sa.select(IncidentRow).where(IncidentRow.group_key == key, IncidentRow.state.in_(open_states)) \
        .order_by(IncidentRow.id.desc()).limit(1)
    return session.scalar(by_key)


def _open_incident_of(session: Session, services: list[str], states: list[str]) -> IncidentRow | None:
    """The newest incident in one of ``states`` whose service is one of ``services``, nearest
    service first."""
    for service in services:
        row = session.scalar(sa.select(IncidentRow).where(IncidentRow.service == service, IncidentRow.state.in_(states))
                             .order_by(IncidentRow.id.desc()).limit(1))
        if row is not None:
            return row
    return None


def _explaining_incident(session: Session, services: list[str], began: datetime) -> IncidentRow | None:
    """The newest closed incident of one of ``services`` that was open when ``began``."""
    return session.scalar(sa.select(IncidentRow).where(
        IncidentRow.service.in_(services), IncidentRow.closed_at.is_not(None), IncidentRow.started_at <= began,
        IncidentRow.closed_at >= began).order_by(IncidentRow.id.desc()).limit(1))


def _latest_with_fingerprint(session: Session, fp: str) -> IncidentRow | None:
    return session.scalar(sa.select(IncidentRow).join(SignalRow, SignalRow.incident_id == IncidentRow.id)
                          .where(SignalRow.fingerprint == fp).order_by(IncidentRow.id.desc()).limit(1))


def _store_suppressed(session: Session, signal: Signal, fp: str, key: str, why: str, now: datetime,
                      actor: str | None) -> IngestResult:
    """Record a silenced or inhibited signal: stored and audited, joined to no incident."""
    row = SignalRow(
        source=signal.source, kind=signal.kind, service=signal.service, status=signal.status.value,
        severity=signal.severity.value, summary=signal.summary, labels=signal.labels,
        annotations=signal.annotations, fingerprint=fp, starts_at=signal.starts_at or now, ends_at=signal.ends_at,
        received_at=now, raw_ref=signal.raw_ref, incident_id=None, suppressed_by=why,
    )
    session.add(row)
    session.flush()
    audit.append(session, actor=actor or f"source:{signal.source}",
                 event="signal.silenced" if why.startswith("silence ") else "signal.inhibited",
                 reason=f"{signal.summary or signal.kind} from {signal.source}: {why}; it starts nothing",
                 details={"signal_id": row.id, "fingerprint": fp, "group_key": key, "service": signal.service})
    return IngestResult(row.id, None, False, why)


def ingest(session: Session, signal: Signal, config: HealdConfig, actor: str | None = None) -> IngestResult:
    """Store ``signal`` and correlate it (see the module docstring). Returns IngestResult.

    A firing signal that a silence or an inhibition rule suppresses is stored with its
    ``suppressed_by`` reason and joins nothing.
    A firing signal joins, in this order: the open incident with its fingerprint; the open
    incident with its grouping key (``correlation.group_by``); the open incident of a service
    its service depends on. Else, when a service depending on its service has an incident still
    in ``observing``, that incident is taken over (retargeted at this service); else, when its
    failure began while an incident of a service it depends on was open and that incident has
    closed since (its verification covered the dependents), it is recorded with that incident;
    else it opens an incident in state ``observing``. A resolved signal is stored with the open incident it
    resolves, else with the latest incident its fingerprint fired in (for the record), and
    never opens one.
    """
    now = utcnow()
    fp = signal.fingerprint or fingerprint(signal)
    key = group_key(signal, config.correlation.group_by)
    if (why := suppressed_by(session, signal, fp, config, now)) is not None:
        return _store_suppressed(session, signal, fp, key, why, now, actor)
    mapped = has_dependencies(config, signal.service)
    if mapped:  # one lock for the whole map (taken first, always), so two sides cannot race
        lock(session, "heald.correlate.dependencies")
    lock(session, f"heald.correlate.{key}")
    incident = _open_incident(session, fp, key)
    open_states = [s.value for s in OPEN_STATES]
    joined_dependency: str | None = None
    retargeted_from: str | None = None
    if incident is None and mapped and signal.status == SignalStatus.firing and signal.service:
        incident = _open_incident_of(session, dependencies_of(config, signal.service), open_states)
        if incident is not None:
            joined_dependency = incident.service
        else:
            incident = _open_incident_of(session, dependents_of(config, signal.service), ["observing"])
            if incident is not None:
                retargeted_from = incident.service
                incident.service = signal.service
                incident.group_key = key
                incident.fingerprint = fp
                incident.labels = {**incident.labels, "service": signal.service}
                incident.title = ((signal.summary or signal.labels.get("alertname") or signal.kind)[:180]
                                  + f" on {signal.service} (and its dependent {retargeted_from})")[:500]
    explained_by: IncidentRow | None = None
    if incident is None and mapped and signal.status == SignalStatus.firing and signal.service:
        explained_by = _explaining_incident(session, dependencies_of(config, signal.service), signal.starts_at or now)
        incident = explained_by
    resolves_closed = False
    if incident is None and signal.status == SignalStatus.resolved:
        incident = _latest_with_fingerprint(session, fp)
        resolves_closed = incident is not None
    opened = False
    starts_at = signal.starts_at or now
    if incident is None and signal.status == SignalStatus.firing:
        labels = {"service": signal.service or "", **signal.labels} if signal.service else dict(signal.labels)
        incident = IncidentRow(
            title=(signal.summary or labels.get("alertname") or signal.kind)[:200]
            + (f" on {signal.service}" if signal.service and not signal.summary else ""),
            service=signal.service, state="observing", severity=signal.severity.value, fingerprint=fp,
            group_key=key, labels=labels, category=None, environment=config.environment, attempts=0,
            started_at=starts_at, detected_at=now, updated_at=now,
        )
        session.add(incident)
        session.flush()
        opened = True
    elif incident is not None and starts_at < incident.started_at and not resolves_closed and explained_by is None:
        incident.started_at = starts_at
    row = SignalRow(
        source=signal.source, kind=signal.kind, service=signal.service, status=signal.status.value,
        severity=signal.severity.value, summary=signal.summary, labels=signal.labels,
        annotations=signal.annotations, fingerprint=fp, starts_at=starts_at, ends_at=signal.ends_at,
        received_at=now, raw_ref=signal.raw_ref, incident_id=incident.id if incident else None,
        suppressed_by=signal.suppressed_by,
    )
    session.add(row)
    session.flush()
    who = actor or f"source:{signal.source}"
    if opened:
        audit.append(session, actor=who, event="incident.opened", incident_id=incident.id,
                     reason=signal.summary or f"{signal.kind} from {signal.source}",
                     details={"signal_id": row.id, "fingerprint": fp, "group_key": key, "service": signal.service})
    elif incident is not None:
        reason = signal.summary or f"{signal.kind} from {signal.source}"
        details: dict[str, object] = {"signal_id": row.id, "fingerprint": fp}
        if joined_dependency:
            reason += f" (joined: {signal.service} depends on {joined_dependency}, whose incident is open)"
            details["inhibited_by_dependency"] = joined_dependency
        if resolves_closed:
            reason += f" (the incident was already {incident.state})"
        if explained_by is not None:
            reason += (f" (it began while {incident.service}'s incident was open, which explains it; that incident "
                       f"is {incident.state} and its verification covered {signal.service}: recorded, not reopened)")
            details["explained_by_dependency"] = incident.service
        audit.append(session, actor=who, event=f"signal.{signal.status.value}", incident_id=incident.id,
                     reason=reason, details=details)
        if retargeted_from:
            audit.append(session, actor="heald", event="incident.retargeted", incident_id=incident.id,
                         reason=f"{retargeted_from} depends on {signal.service}, which fails too: the incident is "
                                f"now about {signal.service}, the likelier root cause",
                         details={"from": retargeted_from, "to": signal.service, "group_key": key})
    return IngestResult(row.id, incident.id if incident else None, opened, signal.suppressed_by)
