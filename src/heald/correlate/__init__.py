"""Correlation: signals become incidents. One root cause, one incident (DESIGN.md invariant 4).

:func:`ingest` is the stage's entry: it resolves the configured service a signal is about
(:mod:`heald.correlate.targets`), fingerprints it, stores it, and, unless a silence or an
inhibition rule suppresses it (:mod:`heald.correlate.inhibit`), joins it to the open incident
with the same fingerprint, of the same sender's group (Alertmanager's ``groupKey``) or grouping
key, about the same target (whatever its alert name), or of a service it depends on
(:mod:`heald.correlate.dependencies`), or opens a new incident. It runs in the caller's
transaction, so a signal that was accepted is stored before anything answers (DESIGN.md
invariant 6), and writers on one grouping key, one target (and on the dependency map) are
serialized. :func:`ingest_all` does the same for a chunk of a message's signals at the cost of
a few statements for the whole chunk: the newest incidents of its fingerprints and grouping keys
read at once (an index seek each, never the fingerprint's history), its signals stored in one
flush, their audit entries appended together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from heald.config import HealdConfig
from heald.correlate.dependencies import dependencies_of, dependents_of, has_dependencies
from heald.correlate.fingerprint import fingerprint, group_key
from heald.correlate.inhibit import suppressed_by
from heald.correlate.targets import COMMIT_LABEL, group_by_for, resolve_service, target_of
from heald.models import OPEN_STATES, Signal, SignalStatus, utcnow
from heald.store import audit
from heald.store.db import lock, lock_all
from heald.store.tables import IncidentRow, SignalRow

__all__ = ["IngestResult", "Join", "JoinedBy", "audit_join", "find_incident", "fingerprint", "group_key",
           "grouping_key", "ingest", "ingest_all", "open_incident", "store_signal"]


class JoinedBy(StrEnum):
    """How a signal joined an incident (or why it joined none); see :func:`find_incident`."""

    new_incident = "new_incident"  #: a firing signal nothing explains: it opens an incident
    same_fingerprint = "same_fingerprint"  #: the open incident where its fingerprint fired before
    same_group = "same_group"  #: the open incident with its grouping key (the sender's group, else ``group_by``)
    same_target = "same_target"  #: the open incident about the same target, whatever its alert name
    dependency = "dependency"  #: the open incident of a service its service depends on
    took_over_dependent = "took_over_dependent"  #: a dependent's incident still ``observing``, retargeted at it
    explained_by_dependency = "explained_by_dependency"  #: a dependency's incident, closed since, open when it began
    resolves_closed = "resolves_closed"  #: a resolved signal, recorded with the latest incident of its fingerprint
    unmatched = "unmatched"  #: a resolved signal of no incident: stored, joins nothing
    silenced = "silenced"  #: suppressed by a silence: stored, joins nothing
    inhibited = "inhibited"  #: suppressed by an inhibition rule: stored, joins nothing


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest` did: the stored signal's id, the incident it joined or opened (None
    when it joined nothing), whether that incident is new, why it was suppressed, if so, and
    how it joined (:class:`JoinedBy`)."""

    signal_id: int
    incident_id: int | None
    opened: bool
    suppressed_by: str | None = None
    joined: JoinedBy = JoinedBy.unmatched


@dataclass(frozen=True)
class Join:
    """The incident a signal joins (None: it opens one, or joins none), how, and the other
    service involved: the dependency it joined, the dependent it took over, or the dependency
    whose incident explains it."""

    how: JoinedBy
    incident: IncidentRow | None = None
    related: str | None = None


def ingest(session: Session, signal: Signal, config: HealdConfig, actor: str | None = None) -> IngestResult:
    """Store ``signal`` and correlate it (see the module docstring), in the caller's
    transaction: check suppression, take the locks, :func:`find_incident`, open one
    (:func:`open_incident`) or join it, :func:`store_signal`, :func:`audit_join`. Returns
    IngestResult.

    A firing signal that a silence or an inhibition rule suppresses is stored with its
    ``suppressed_by`` reason and joins nothing. A signal that began before the incident it joins
    moves that incident's start back (not a closed incident it is only recorded with).
    """
    stored = _correlate(session, signal, config)
    session.flush()
    return _record(session, stored, actor)


@dataclass
class _Stored:
    """A signal correlated and added to the session (not yet flushed: no id before the flush),
    waiting for its audit entry and result (:func:`_record`)."""

    signal: Signal
    fp: str
    key: str
    row: SignalRow | PendingSignal
    join: Join | None = None  #: None: suppressed
    incident: IncidentRow | None = None
    suppressed: str | None = None


def _correlate(session: Session, signal: Signal, config: HealdConfig) -> _Stored:
    """The first half of :func:`ingest`: suppression, locks, :func:`find_incident`, the incident
    opened or joined, the signal added to the session (unflushed)."""
    now = utcnow()
    if (service := resolve_service(signal, config)) is not None and service != signal.service:
        signal = signal.model_copy(update={"service": service})
    fp = signal.fingerprint or fingerprint(signal)
    key = grouping_key(signal, config)
    if config.correlation.inhibit_rules:
        insert_pending(session)  # inhibition reads the firing signals: those of this chunk too
    if (why := suppressed_by(session, signal, fp, config, now)) is not None:
        return _Stored(signal, fp, key, store_signal(session, signal, fp, now, None, why, key, flush=False),
                       suppressed=why)
    for name in _lock_names(signal, key, config):
        lock(session, name)
    join = find_incident(session, signal, fp, key, config, now)
    incident = open_incident(session, signal, fp, key, config, now) if join.how == JoinedBy.new_incident \
        else _join(session, join, signal, fp, key, now)
    row = store_signal(session, signal, fp, now, incident.id if incident else None, signal.suppressed_by, key,
                       flush=False)
    return _Stored(signal, fp, key, row, join, incident)


def _lock_names(signal: Signal, key: str, config: HealdConfig) -> list[str]:
    """The locks correlating ``signal`` (its service resolved) takes, in order: the dependency
    map's (one lock for the whole map, first, always: no race), its target's, its grouping key's."""
    names = ["heald.correlate.dependencies"] if has_dependencies(config, signal.service) else []
    if (target := target_of(signal.service, signal.labels, config)) is not None:  # target before key, always
        names.append(f"heald.correlate.target.{target}")
    return [*names, f"heald.correlate.{key}"]


def _record(session: Session, stored: _Stored, actor: str | None) -> IngestResult:
    """The second half of :func:`ingest`, once the signal is flushed: its audit entry and result."""
    signal, row, incident, join = stored.signal, stored.row, stored.incident, stored.join
    if join is None:
        why = stored.suppressed or ""
        silenced = why.startswith("silence ")
        audit.append_later(session, actor=actor or f"source:{signal.source}",
                           event="signal.silenced" if silenced else "signal.inhibited",
                           reason=f"{signal.summary or signal.kind} from {signal.source}: {why}; it starts nothing",
                           details={"signal_id": row.id, "fingerprint": stored.fp, "group_key": stored.key,
                                    "service": signal.service})
        return IngestResult(row.id, None, False, why, JoinedBy.silenced if silenced else JoinedBy.inhibited)
    audit_join(session, signal, join, row, incident, stored.key, actor)
    return IngestResult(row.id, incident.id if incident else None, join.how == JoinedBy.new_incident,
                        signal.suppressed_by, join.how)


def ingest_all(session: Session, signals: list[Signal], config: HealdConfig,
               actor: str | None = None) -> list[IngestResult]:
    """:func:`ingest` each of ``signals`` in order, in the caller's transaction, their audit
    entries appended together at the end (:func:`heald.store.audit.batched`: one head read and
    one insert for all of them, the same chain as one by one). Returns their results in order."""
    fps, keys, names, targeted = set(), set(), [], set()
    for signal in signals:
        if (service := resolve_service(signal, config)) is not None and service != signal.service:
            signal = signal.model_copy(update={"service": service})
        fps.add(signal.fingerprint or fingerprint(signal))
        keys.add(key := grouping_key(signal, config))
        names += _lock_names(signal, key, config)
        if signal.service and target_of(signal.service, signal.labels, config) is not None:
            targeted.add(signal.service)
    # PostgreSQL: the writer lock and every lock ingest() takes, in one statement; what is read
    # below stays true until the commit
    lock_all(session, names)
    session.info[_NEWEST] = {**_newest_of(session, SignalRow.fingerprint, fps),
                             **_newest_of(session, SignalRow.group_key, keys)}
    session.info[_OPEN] = _OpenIncidents(keys, targeted)
    try:
        session.info[_PENDING] = []
        with audit.batched(session):
            stored = [_correlate(session, s, config) for s in signals]
            insert_pending(session)  # the signals not inserted yet by a read in between: one multi-row INSERT
            session.flush()
            return [_record(session, st, actor) for st in stored]
    finally:
        session.info.pop(_PENDING, None)
        session.info.pop(_NEWEST, None)
        session.info.pop(_HELD, None)
        session.info.pop(_OPEN, None)


#: ``session.info`` key, during :func:`ingest_all`: {(column, value): the newest incident holding
#: a signal with that fingerprint or grouping key, or None}, read for the whole chunk at once and
#: kept exact as its signals are stored (:func:`store_signal`).
_NEWEST = "heald.correlate.newest"
_OPEN_VALUES = {s.value for s in OPEN_STATES}
_HELD = "heald.correlate.incidents"
#: ``session.info`` key, during :func:`ingest_all`: its :class:`_OpenIncidents`.
_OPEN = "heald.correlate.open"

#: How many open incidents of one service :func:`_open_incident_of_target` looks through.
_TARGET_SCAN = 50


class _OpenIncidents:
    """The open incidents a chunk's signals may join by grouping key or by target, read for the
    whole chunk at once by :func:`ingest_all` when a signal first needs them (two queries
    instead of two per new signal; none for a chunk of duplicates, which join by fingerprint)
    and kept exact as the chunk opens incidents and takes dependents' incidents over
    (:meth:`opened`, :meth:`retargeted`): within the chunk's transaction nothing else changes
    them (the chunk holds the locks of its keys and targets; an incident's state changes only
    outside ingest).

    ``by_key``: grouping key → the newest open incident with that key (None: none), for every
    key of the chunk. ``by_service``: service → its newest open incidents (at most
    :data:`_TARGET_SCAN`, newest first), for the chunk's services whose signals name a target."""

    def __init__(self, keys: set[str], services: set[str]) -> None:
        self.keys, self.services = keys, services
        self.by_key: dict[str, IncidentRow | None] = {}
        self.by_service: dict[str, list[IncidentRow]] = {}
        self.loaded = False

    def load(self, session: Session) -> _OpenIncidents:
        """Read both maps once (the rows stay in ``session``'s identity map while referenced here)."""
        if self.loaded:
            return self
        self.loaded = True
        open_states = [s.value for s in OPEN_STATES]
        self.by_key = dict.fromkeys(self.keys)
        if self.keys:
            for row in session.scalars(sa.select(IncidentRow).where(
                    IncidentRow.group_key.in_(sorted(self.keys)), IncidentRow.state.in_(open_states))
                    .order_by(IncidentRow.id.desc())):
                if row.group_key is not None and self.by_key.get(row.group_key) is None:
                    self.by_key[row.group_key] = row
        self.by_service = {svc: [] for svc in self.services}
        if self.services:
            rank = sa.func.row_number().over(partition_by=IncidentRow.service, order_by=IncidentRow.id.desc())
            newest = sa.select(IncidentRow.id.label("id"), rank.label("rank")).where(
                IncidentRow.service.in_(sorted(self.services)), IncidentRow.state.in_(open_states)).subquery()
            for row in session.scalars(sa.select(IncidentRow).join(newest, IncidentRow.id == newest.c.id)
                                       .where(newest.c.rank <= _TARGET_SCAN).order_by(IncidentRow.id.desc())):
                self.by_service[row.service or ""].append(row)
        return self

    def opened(self, row: IncidentRow) -> None:
        """Incident ``row`` was just opened (the newest of its key and service)."""
        if not self.loaded:  # the read, when it comes, finds it
            return
        if row.group_key is not None and row.group_key in self.by_key:
            self.by_key[row.group_key] = row
        if row.service in self.by_service:
            self.by_service[row.service].insert(0, row)

    def retargeted(self, row: IncidentRow, service: str | None, key: str | None) -> None:
        """Incident ``row`` was moved from ``service`` and grouping ``key`` to its own now."""
        if not self.loaded:  # the read, when it comes, finds it moved (the session flushes first)
            return
        if key is not None and self.by_key.get(key) is row:  # its old key's newest open incident: look again
            self.by_key.pop(key)
        if row.group_key in self.by_key and (self.by_key[row.group_key] is None
                                             or self.by_key[row.group_key].id < row.id):  # type: ignore[union-attr]
            self.by_key[row.group_key] = row
        if service in self.by_service and row in self.by_service[service]:
            self.by_service.pop(service)  # read again on demand: an older one may move up
        if row.service in self.by_service:
            self.by_service.pop(row.service)


def _newest_of(session: Session, column: sa.orm.InstrumentedAttribute[Any],
               values: set[str]) -> dict[tuple[str, str], int | None]:
    """{(column, value): :func:`_newest_incident_holding`} for every value, in one query (an
    index seek each), and the incidents found loaded into ``session`` (one more query)."""
    if not values:
        return {}
    ordered = sorted(values)
    table, name = SignalRow.__tablename__, column.key
    rows_sql = ", ".join(f"(:v{i})" for i in range(len(ordered)))
    # only placeholders and heald's own table and column names are formatted in (no value)
    stmt = sa.text(f"SELECT v.column1, (SELECT s.incident_id FROM {table} s WHERE s.{name} = v.column1 "
                   f"AND s.incident_id IS NOT NULL ORDER BY s.incident_id DESC LIMIT 1) FROM (VALUES {rows_sql}) AS v")
    found: dict[tuple[str, str], int | None] = {
        (name, str(row[0])): (int(row[1]) if row[1] is not None else None)
        for row in session.execute(stmt, {f"v{i}": v for i, v in enumerate(ordered)})}
    if ids := sorted({i for i in found.values() if i is not None}):
        # into the identity map, held until the chunk ends (the map itself only holds weak references)
        session.info.setdefault(_HELD, []).extend(session.scalars(sa.select(IncidentRow).where(IncidentRow.id.in_(ids))))
    return found


def find_incident(session: Session, signal: Signal, fp: str, key: str, config: HealdConfig,
                  now: datetime) -> Join:
    """The incident ``signal`` (fingerprint ``fp``, grouping key ``key``, its service already
    resolved by :func:`heald.correlate.targets.resolve_service`) joins, and how. Reads only; the
    caller holds the locks.

    A signal joins, in this order: the open incident with its fingerprint; the open incident
    with its grouping key (the sender's group, see :func:`grouping_key`: every signal of one
    Alertmanager notification group joins one incident); the open incident about the same
    target (:func:`heald.correlate.targets.target_of`), whatever its alert name. A firing
    signal of a service in the dependency map then joins the open incident of a service its
    service depends on (nearest first); else, when a service depending on its service has an
    incident still in ``observing``, takes that incident over (the caller retargets it); else,
    when its failure began while an incident of a service it depends on was open and that
    incident has closed since (its verification covered the dependents), it is recorded with
    that incident. A firing signal about a dependency of the incident it joined by group or
    target takes that incident over too while it is ``observing``: the incident is about the
    root cause. A resolved signal is else recorded with the latest incident its fingerprint
    fired in, and never opens one. Anything else firing opens a new incident."""
    open_states = [s.value for s in OPEN_STATES]
    if (by_fp := _open_incident_holding(session, SignalRow.fingerprint, fp, open_states)) is not None:
        return Join(JoinedBy.same_fingerprint, by_fp)
    if (by_key := _open_incident_of_group(session, key, open_states)) is not None:
        return _root(Join(JoinedBy.same_group, by_key), signal, config)
    if (by_target := _open_incident_of_target(session, signal, config, open_states)) is not None:
        return _root(Join(JoinedBy.same_target, by_target), signal, config)
    if (by_map := _join_by_dependency(session, signal, config, now)) is not None:
        return by_map
    if signal.status == SignalStatus.resolved and (latest := _latest_with_fingerprint(session, fp)) is not None:
        return Join(JoinedBy.resolves_closed, latest)
    return Join(JoinedBy.new_incident if signal.status == SignalStatus.firing else JoinedBy.unmatched)


def grouping_key(signal: Signal, config: HealdConfig) -> str:
    """The grouping key of ``signal`` (its service already resolved): ``group:<source>:<group>``
    for a signal its sender grouped (Alertmanager's ``groupKey``; hashed when longer than 120
    characters), else :func:`group_key` over its route's ``group_by``
    (:func:`heald.correlate.targets.group_by_for`), to which a CI signal's commit is always added:
    CI failures are one incident per (repository, commit)."""
    if signal.group:
        key = f"group:{signal.source}:{signal.group}"
        return key if len(key) <= 120 else "group:sha256:" + hashlib.sha256(key.encode()).hexdigest()[:32]
    group_by = group_by_for(signal, config)
    if signal.labels.get(COMMIT_LABEL) and COMMIT_LABEL not in group_by:
        group_by = [*group_by, COMMIT_LABEL]
    return group_key(signal, group_by)


def open_incident(session: Session, signal: Signal, fp: str, key: str, config: HealdConfig,
                  now: datetime) -> IncidentRow:
    """Open an incident for ``signal`` in state ``observing``, in ``config.environment``; its
    labels are the signal's with ``service``, its title the signal's summary (or alert name or
    kind)."""
    labels = {"service": signal.service or "", **signal.labels} if signal.service else dict(signal.labels)
    incident = IncidentRow(
        title=(signal.summary or labels.get("alertname") or signal.kind)[:200]
        + (f" on {signal.service}" if signal.service and not signal.summary else ""),
        service=signal.service, state="observing", severity=signal.severity.value, fingerprint=fp,
        group_key=key, labels=labels, category=None, environment=config.environment, attempts=0,
        started_at=signal.starts_at or now, detected_at=now, updated_at=now,
    )
    session.add(incident)
    session.flush()
    if (memo := session.info.get(_OPEN)) is not None:
        memo.opened(incident)
    return incident


def _join_by_dependency(session: Session, signal: Signal, config: HealdConfig, now: datetime) -> Join | None:
    """For a firing signal of a service in the dependency map: the open incident of a service it
    depends on; else a dependent's incident still ``observing`` (to take over); else a
    dependency's closed incident that was open when the signal began. None otherwise."""
    service = signal.service
    if signal.status != SignalStatus.firing or not service or not has_dependencies(config, service):
        return None
    depended = dependencies_of(config, service)
    if (row := _open_incident_of(session, depended, [s.value for s in OPEN_STATES])) is not None:
        return Join(JoinedBy.dependency, row, row.service)
    if (row := _open_incident_of(session, dependents_of(config, service), ["observing"])) is not None:
        return Join(JoinedBy.took_over_dependent, row, row.service)
    if (row := _explaining_incident(session, depended, signal.starts_at or now)) is not None:
        return Join(JoinedBy.explained_by_dependency, row, row.service)
    return None


def _join(session: Session, join: Join, signal: Signal, fp: str, key: str, now: datetime) -> IncidentRow | None:
    """Join the incident ``join`` found (None: none): take a dependent's incident over, and move
    an incident's start back to the signal's when it began earlier (not for a closed incident it
    is only recorded with)."""
    incident = join.incident
    if incident is None:
        return None
    if join.how == JoinedBy.took_over_dependent:
        _retarget(session, join, signal, fp, key)
    starts_at = signal.starts_at or now
    if starts_at < incident.started_at and join.how not in (JoinedBy.resolves_closed, JoinedBy.explained_by_dependency):
        incident.started_at = starts_at
    return incident


def _retarget(session: Session, join: Join, signal: Signal, fp: str, key: str) -> None:
    """Make a dependent's ``observing`` incident about ``signal``'s service, the likelier root
    cause (:data:`JoinedBy.took_over_dependent`)."""
    incident = join.incident
    assert incident is not None
    was = (incident.service, incident.group_key)
    incident.service = signal.service
    incident.group_key = key
    incident.fingerprint = fp
    incident.labels = {**incident.labels, "service": signal.service}
    incident.title = ((signal.summary or signal.labels.get("alertname") or signal.kind)[:180]
                      + f" on {signal.service} (and its dependent {join.related})")[:500]
    if (memo := session.info.get(_OPEN)) is not None:
        memo.retargeted(incident, *was)


def store_signal(session: Session, signal: Signal, fp: str, now: datetime, incident_id: int | None,
                 suppressed: str | None, key: str | None = None, *, flush: bool = True) -> SignalRow | PendingSignal:
    """Store ``signal`` with its fingerprint, received ``now``, with incident ``incident_id``
    (None: none), the reason it was ``suppressed`` (None: it was not) and the grouping ``key``
    it was correlated under. Without ``flush`` the row is only added to the session (its id
    is known after the next flush) or, in :func:`ingest_all`, kept as a :class:`PendingSignal`
    to insert with the chunk's others (:func:`insert_pending`)."""
    values: dict[str, Any] = {
        "source": signal.source, "kind": signal.kind, "service": signal.service, "status": signal.status.value,
        "severity": signal.severity.value, "summary": signal.summary, "labels": signal.labels,
        "annotations": signal.annotations, "fingerprint": fp, "starts_at": signal.starts_at or now,
        "ends_at": signal.ends_at, "received_at": now, "raw_ref": signal.raw_ref, "incident_id": incident_id,
        "suppressed_by": suppressed, "group_key": key}
    pending: list[PendingSignal] | None = session.info.get(_PENDING)
    row: SignalRow | PendingSignal
    if pending is not None and not flush:  # ingest_all: inserted with the chunk's others
        row = PendingSignal(values)
        pending.append(row)
    else:
        row = SignalRow(**values)
        session.add(row)
        if flush:
            session.flush()
    memo: dict[tuple[str, str], int | None] | None = session.info.get(_NEWEST)
    if memo is not None and incident_id is not None:  # what _newest_incident_holding now answers
        for k in (("fingerprint", fp), ("group_key", key)):
            if k[1] is not None and k in memo:
                memo[k] = max(memo[k] or 0, incident_id)
    return row


_PENDING = "heald.correlate.pending"


class PendingSignal:
    """A signal row :func:`ingest_all` stores with the rest of its chunk: one multi-row INSERT
    (:func:`insert_pending`) instead of an ORM object each (the ORM's unit of work cost more
    than the rest of correlation). ``id`` is 0 until inserted."""

    __slots__ = ("id", "values")

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.id = 0

    @property
    def fingerprint(self) -> str:
        return str(self.values["fingerprint"])


def insert_pending(session: Session) -> None:
    """Insert the signals :func:`ingest_all` has kept so far (in order: their ids grow in the
    order they were stored) and give each its id. Called before anything reads the signals
    table in the chunk's transaction (the ORM's autoflush does not know these rows)."""
    pending: list[PendingSignal] | None = session.info.get(_PENDING)
    if not pending:
        return
    table = cast(sa.Table, SignalRow.__table__)
    ids = list(session.scalars(sa.insert(table).returning(table.c.id, sort_by_parameter_order=True),
                               [p.values for p in pending]))
    for p, new_id in zip(pending, ids, strict=True):
        p.id = int(new_id)
    pending.clear()


def audit_join(session: Session, signal: Signal, join: Join, row: SignalRow | PendingSignal, incident: IncidentRow | None,
               key: str,
               actor: str | None) -> None:
    """Audit how the stored signal ``row`` joined ``incident``: ``incident.opened`` for a new
    one, else ``signal.<status>`` with the reason it joined, and ``incident.retargeted`` for a
    dependent's incident taken over. A signal that joined nothing is not audited here."""
    if incident is None:
        return
    who = actor or f"source:{signal.source}"
    if join.how == JoinedBy.new_incident:
        audit.append_later(session, actor=who, event="incident.opened", incident_id=incident.id,
                     reason=signal.summary or f"{signal.kind} from {signal.source}",
                     details={"signal_id": row.id, "fingerprint": row.fingerprint, "group_key": key,
                              "service": signal.service})
        return
    reason = signal.summary or f"{signal.kind} from {signal.source}"
    details: dict[str, object] = {"signal_id": row.id, "fingerprint": row.fingerprint}
    if join.how == JoinedBy.dependency:
        reason += f" (joined: {signal.service} depends on {join.related}, whose incident is open)"
        details["inhibited_by_dependency"] = join.related
    elif join.how == JoinedBy.same_target:
        reason += f" (joined: it is about {signal.service or signal.labels.get('instance')}, whose incident is open)"
        details["joined_by"] = "same_target"
    elif join.how == JoinedBy.same_group and key.startswith("group:"):
        reason += f" (joined: {signal.source} grouped it with this incident's signals)"
        details["joined_by"] = "sender_group"
    elif join.how == JoinedBy.resolves_closed:
        reason += f" (the incident was already {incident.state})"
    elif join.how == JoinedBy.explained_by_dependency:
        reason += (f" (it began while {incident.service}'s incident was open, which explains it; that incident "
                   f"is {incident.state} and its verification covered {signal.service}: recorded, not reopened)")
        details["explained_by_dependency"] = incident.service
    audit.append_later(session, actor=who, event=f"signal.{signal.status.value}", incident_id=incident.id,
                 reason=reason, details=details)
    if join.how == JoinedBy.took_over_dependent:
        audit.append_later(session, actor="heald", event="incident.retargeted", incident_id=incident.id,
                     reason=f"{join.related} depends on {signal.service}, which fails too: the incident is "
                            f"now about {signal.service}, the likelier root cause",
                     details={"from": join.related, "to": signal.service, "group_key": key})


def _open_incident_of_group(session: Session, key: str, states: list[str]) -> IncidentRow | None:
    """The newest open incident with grouping key ``key``, or holding a signal correlated under it
    (a group that joined an incident by target or dependency keeps joining it)."""
    memo: _OpenIncidents | None = session.info.get(_OPEN)
    if memo is not None and key in memo.keys and set(states) == _OPEN_VALUES \
            and key in memo.load(session).by_key:
        by_key = memo.by_key[key]
    else:
        by_key = session.scalar(sa.select(IncidentRow).where(IncidentRow.group_key == key,
                                                             IncidentRow.state.in_(states))
                                .order_by(IncidentRow.id.desc()).limit(1))
    if by_key is not None:
        return by_key
    return _open_incident_holding(session, SignalRow.group_key, key, states)


def _newest_incident_holding(session: Session, column: sa.orm.InstrumentedAttribute[Any], value: str) -> int | None:
    """The id of the newest incident holding a signal whose ``column`` (fingerprint or grouping
    key) is ``value``: one seek in the index on (``column``, incident_id), whatever the history
    (none in :func:`ingest_all`, which read them for its chunk)."""
    memo: dict[tuple[str, str], int | None] | None = session.info.get(_NEWEST)
    if memo is not None and (column.key, value) in memo:
        return memo[(column.key, value)]
    insert_pending(session)
    return session.scalar(sa.select(SignalRow.incident_id).where(column == value, SignalRow.incident_id.is_not(None))
                          .order_by(SignalRow.incident_id.desc()).limit(1))


def _open_incident_holding(session: Session, column: sa.orm.InstrumentedAttribute[Any], value: str,
                           states: list[str]) -> IncidentRow | None:
    """The newest incident in one of ``states`` holding a signal whose ``column`` is ``value``.
    The newest incident holding one is almost always it (a fingerprint joins its open
    incident); only when that one has ended are the older incidents in ``states`` probed, one
    index seek each."""
    newest = _newest_incident_holding(session, column, value)
    if newest is None:
        return None
    incident = session.get(IncidentRow, newest)
    if incident is not None and incident.state in states:
        return incident
    insert_pending(session)
    holds = sa.select(SignalRow.id).where(SignalRow.incident_id == IncidentRow.id, column == value).exists()
    return session.scalar(sa.select(IncidentRow).where(IncidentRow.state.in_(states), IncidentRow.id < newest, holds)
                          .order_by(IncidentRow.id.desc()).limit(1))


def _open_incident_of_target(session: Session, signal: Signal, config: HealdConfig,
                             states: list[str]) -> IncidentRow | None:
    """The newest open incident about the target of ``signal`` (None when it names none)."""
    target = target_of(signal.service, signal.labels, config)
    if target is None:
        return None
    memo: _OpenIncidents | None = session.info.get(_OPEN)
    if memo is not None and signal.service in memo.services and set(states) == _OPEN_VALUES \
            and signal.service in memo.load(session).by_service:
        rows: Iterable[IncidentRow] = memo.by_service[signal.service][:_TARGET_SCAN]
    else:
        query = sa.select(IncidentRow).where(IncidentRow.state.in_(states))
        query = query.where(IncidentRow.service == signal.service) if signal.service \
            else query.where(IncidentRow.service.is_(None))
        rows = session.scalars(query.order_by(IncidentRow.id.desc()).limit(_TARGET_SCAN))
    for row in rows:
        if target_of(row.service, {k: str(v) for k, v in (row.labels or {}).items()}, config) == target:
            return row
    return None


def _root(join: Join, signal: Signal, config: HealdConfig) -> Join:
    """``join`` (by group or target), or a takeover when ``signal`` is about a service the
    joined incident's service depends on and the incident is still ``observing``: the incident
    is then about that dependency, the likelier root cause."""
    incident = join.incident
    if (incident is not None and signal.status == SignalStatus.firing and incident.state == "observing"
            and signal.service and incident.service and signal.service != incident.service
            and signal.service in dependencies_of(config, incident.service)):
        return Join(JoinedBy.took_over_dependent, incident, incident.service)
    return join


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
    """The newest incident, open or closed, where fingerprint ``fp`` was seen."""
    newest = _newest_incident_holding(session, SignalRow.fingerprint, fp)
    return session.get(IncidentRow, newest) if newest is not None else None
