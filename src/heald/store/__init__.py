"""heald's store: incidents, signals, the records of every healing step, and the audit chain.

:class:`Store` is the one way the rest of heald reads and writes them. Every state change is
written in the same transaction as its audit entry (DESIGN.md invariant 5). The schema comes
from the Alembic migrations, applied by :meth:`Store.migrate`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from heald.models import (
    ALLOWED_TRANSITIONS,
    Action,
    ActionStatus,
    ApiToken,
    AuditEntry,
    Decision,
    Diagnosis,
    Incident,
    IncidentState,
    Outcome,
    OutcomeResult,
    Plan,
    Role,
    Severity,
    Signal,
    SignalStatus,
    Verification,
    utcnow,
)
from heald.store import audit
from heald.store.db import (
    DEFAULT_CONCURRENCY,
    create_engine,
    install_lock_order,
    is_sqlite,
    sqlite_file,
    write_gate,
)
from heald.store.retry import inside_transaction, is_transient, retry_transient, retrying
from heald.store.tables import (
    ActionRow,
    ApiTokenRow,
    ApprovalRow,
    AuditRow,
    DecisionRow,
    DiagnosisRow,
    IncidentRow,
    LlmUsageRow,
    OutcomeRow,
    PlanRow,
    SignalRow,
    VerificationRow,
)

MIGRATIONS = Path(__file__).parent / "migrations"
#: The outcomes that carry a time to recover (:meth:`Store.recovery_summary`).
_HEALED: tuple[sa.ColumnElement[bool], ...] = (OutcomeRow.result == "healed", OutcomeRow.time_to_recover_s.is_not(None))
T = TypeVar("T")


#: The advisory lock key serializing migrations on PostgreSQL ("heald mig").
_MIGRATION_LOCK = 0x6865616C64206D69

class StoreError(RuntimeError):
    """A request the store refuses: an unknown incident, a transition the state machine forbids."""


class NotFound(StoreError):
    pass


class InvalidTransition(StoreError):
    pass


def incident_model(row: IncidentRow) -> Incident:
    return Incident(
        id=row.id, title=row.title, service=row.service, state=IncidentState(row.state),
        severity=Severity(row.severity), fingerprint=row.fingerprint, group_key=row.group_key,
        labels=row.labels or {}, category=row.category, environment=row.environment,
        attempts=row.attempts, started_at=row.started_at, detected_at=row.detected_at,
        updated_at=row.updated_at, recovered_at=row.recovered_at, closed_at=row.closed_at,
        closed_reason=row.closed_reason,
    )


def signal_model(row: SignalRow) -> Signal:
    return Signal(
        id=row.id, source=row.source, kind=row.kind, service=row.service, status=SignalStatus(row.status),
        severity=Severity(row.severity), summary=row.summary, labels=row.labels or {},
        annotations=row.annotations or {}, fingerprint=row.fingerprint, starts_at=row.starts_at,
        ends_at=row.ends_at, received_at=row.received_at, raw_ref=row.raw_ref,
        incident_id=row.incident_id, suppressed_by=row.suppressed_by,
    )


def action_model(row: ActionRow) -> Action:
    return Action(
        id=row.id, incident_id=row.incident_id, attempt=row.attempt, remedy=row.remedy,
        params=row.params, idempotency_key=row.idempotency_key, status=ActionStatus(row.status),
        output=row.output, snapshot=row.snapshot, undo=row.undo, started_at=row.started_at, finished_at=row.finished_at,
        target=row.target,
    )


class SignalStatusRow(NamedTuple):
    """What :meth:`Store.signal_statuses` gives of one signal."""

    id: int
    source: str
    service: str | None
    fingerprint: str
    status: SignalStatus


#: The signals and timeline entries :meth:`Store.incident_detail` gives at most, unless told.
DETAIL_SIGNALS = 200
DETAIL_TIMELINE = 1000


class IdentityConflict(ValueError):
    """A token for an identity would count as another human than the identity's first token."""


def _bound_root(s: Session, name: str) -> str | None:
    """The root identity ``name``'s first token fixed, or None when it has no token."""
    return s.scalar(sa.select(ApiTokenRow.root_identity).where(ApiTokenRow.name == name)
                    .order_by(ApiTokenRow.id).limit(1))


def _root_of(s: Session, identity: str) -> str:
    """The root identity of ``identity`` (itself when it has no token)."""
    return _bound_root(s, identity) or identity


def token_model(row: ApiTokenRow) -> ApiToken:
    return ApiToken(id=row.id, name=row.name, role=Role(row.role), prefix=row.prefix, created_by=row.created_by,
                    root_identity=row.root_identity, created_at=row.created_at, expires_at=row.expires_at, revoked_at=row.revoked_at,
                    revoked_by=row.revoked_by)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


class Store:
    """Persistence for heald. ``url`` is a SQLAlchemy URL (``sqlite:///path`` or
    ``postgresql://…``). Thread-safe: each call uses its own session.

    Writes go through :meth:`tx`, reads through :meth:`read`: a read never waits for a writer
    (SQLite in WAL mode, a reader sees the last commit), see :mod:`heald.store.db`.
    ``concurrency`` is how many healing workflows run at once (``healing.max_concurrent``): it
    sizes both engines' connection pools (:func:`heald.store.db.pool_settings`)."""

    def __init__(self, url: str, *, concurrency: int = DEFAULT_CONCURRENCY):
        self.url = url
        # each engine's pool: one connection per healing workflow at once, plus the API's threads
        self.engine = create_engine(url, concurrency=concurrency)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        install_lock_order(self._sessions)  # the writer lock first, always (heald.store.db)
        # an in-memory SQLite database exists once per connection: reads must use the writers' engine
        in_memory = is_sqlite(self.engine) and sqlite_file(self.engine) is None
        self.read_engine = self.engine if in_memory else create_engine(url, read_only=True, concurrency=concurrency)
        self._read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)
        # the session of this thread's open transaction on this store, and whether it writes (tx/read join it)
        self._open: ContextVar[tuple[Session, bool] | None] = ContextVar(f"heald.store.open.{id(self)}", default=None)

    # -- lifecycle -------------------------------------------------------------------------
    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent). On PostgreSQL, workers
        starting at once migrate one after the other (a transaction-level advisory lock): the
        others then find the schema current."""
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with write_gate(self.engine), self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def schema_revisions(self) -> tuple[str | None, str]:
        """(the database's schema revision — None when it has no schema yet —, the newest this
        heald knows): one read of ``alembic_version`` and the migration scripts' headers, no
        migration run and no write lock taken."""
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        head = ScriptDirectory.from_config(cfg).get_current_head()
        with self.read_engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        return current, str(head)

    def close(self) -> None:
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()

    @contextmanager
    def tx(self) -> Iterator[Session]:
        """A session in one write transaction: committed on success, rolled back on error.
        SQLite: it holds the database's write lock from its start (``BEGIN IMMEDIATE``), and
        this process's writers get it in arrival order (:func:`heald.store.db.write_gate`).
        Reads belong in :meth:`read`.

        Opened while this thread is already in a write transaction of this store, it is that
        transaction (the same session; the outermost block commits): so the writes of one
        stage of a healing — each through its own method of :class:`Store` — commit together,
        and their audit entries can be appended in one batch (:func:`heald.store.audit.batched`).

        A commit whose answer is lost with its connection (a transient error, see
        :mod:`heald.store.retry`) counts as done when the audit entry the transaction appended
        is in the log, so a caller that retries the work does not do it twice. The public
        methods of :class:`Store` rerun their whole transaction on a transient error
        (:func:`heald.store.retry.retry_transient`) — inside an enclosing transaction they run
        once and its opener reruns it whole; code that calls ``tx()`` itself retries as fits its
        work.
        """
        current = self._open.get()
        if current is not None and current[1]:
            yield current[0]
            return
        with write_gate(self.engine), self._sessions() as session:
            session.begin()
            token = self._open.set((session, True))
            try:
                with inside_transaction():
                    yield session  # an error in the block: closing the session rolls back
            finally:
                self._open.reset(token)
            try:
                session.commit()
            except Exception as exc:
                if not (is_transient(exc) and self._committed(session.info.get(audit.LAST_ENTRY))):
                    raise

    def transact(self, work: Callable[[Session], T]) -> T:
        """``work(session)`` in one transaction (:meth:`tx`), run again whole on a transient
        database error (:func:`heald.store.retry.retry_transient`: bounded, jittered); returns
        what it returns. ``work`` must be safe to run again after a rollback (only database
        effects). Raises TransientDatabaseError when the retries are spent."""
        def once() -> T:
            with self.tx() as session:
                return work(session)
        result: T = retry_transient(once)()
        return result

    def _committed(self, entry: tuple[int, str] | None) -> bool:
        """Whether the transaction that appended audit ``entry`` committed (False: unknown or not)."""
        if entry is None:
            return False
        try:
            for attempt in retrying(attempts=4, max_seconds=5.0):
                with attempt, self._sessions() as s:
                    return audit.committed(s, entry)
        except Exception:
            return False
        return False

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session in one read-only transaction, for reads: it takes no write lock and never
        waits for a writer (SQLite: a deferred ``BEGIN`` in WAL mode, seeing the last commit;
        PostgreSQL: ``READ ONLY``, no advisory lock). A write in it raises (SQLite
        ``PRAGMA query_only``: ``attempt to write a readonly database``; PostgreSQL:
        ``cannot execute … in a read-only transaction``).

        Opened while this thread is in a transaction of this store (a :meth:`tx` or another
        ``read``), it is that transaction's session: the reads of one stage share one
        transaction (and, in a write transaction, see its writes)."""
        current = self._open.get()
        if current is not None:
            yield current[0]
            return
        with self._read_sessions.begin() as session:
            token = self._open.set((session, False))
            try:
                with inside_transaction():
                    yield session
            finally:
                self._open.reset(token)

    # -- incidents -------------------------------------------------------------------------
    @retry_transient
    def get_incident(self, incident_id: int) -> Incident:
        """Raises NotFound."""
        with self.read() as s:
            row = s.get(IncidentRow, incident_id)
            if row is None:
                raise NotFound(f"no incident {incident_id}")
            return incident_model(row)

    @retry_transient
    def list_incidents(self, state: IncidentState | None = None, service: str | None = None,
                       limit: int = 100, offset: int = 0, states: Iterable[IncidentState] | None = None) -> list[Incident]:
        """Incidents, newest first; only in ``state`` and/or one of ``states`` when given."""
        stmt = sa.select(IncidentRow).order_by(IncidentRow.id.desc()).limit(limit).offset(offset)
        if state is not None:
            stmt = stmt.where(IncidentRow.state == state.value)
        if states is not None:
            stmt = stmt.where(IncidentRow.state.in_([s.value for s in states]))
        if service is not None:
            stmt = stmt.where(IncidentRow.service == service)
        with self.read() as s:
            return [incident_model(r) for r in s.scalars(stmt)]

    @retry_transient
    def search_incidents(self, *, states: Iterable[IncidentState] | None = None, service: str | None = None,
                         environment: str | None = None, since: datetime | None = None,
                         until: datetime | None = None, text: str | None = None, limit: int = 25,
                         offset: int = 0) -> tuple[list[Incident], int]:
        """One page of incidents, newest first, and how many match in all: in one of ``states``,
        of ``service`` and ``environment`` exactly, detected at or after ``since`` and before
        ``until`` (UTC), ``text`` found (case-insensitively, as a substring) in the title, the
        labels or the summary of one of its signals."""
        conds: list[Any] = []
        if states is not None:
            conds.append(IncidentRow.state.in_([s.value for s in states]))
        if service:
            conds.append(IncidentRow.service == service)
        if environment:
            conds.append(IncidentRow.environment == environment)
        if since is not None:
            conds.append(IncidentRow.detected_at >= since)
        if until is not None:
            conds.append(IncidentRow.detected_at < until)
        if text:
            needle = text.lower()
            in_signals = sa.exists().where(SignalRow.incident_id == IncidentRow.id,
                                           sa.func.lower(SignalRow.summary).contains(needle, autoescape=True))
            conds.append(sa.or_(sa.func.lower(IncidentRow.title).contains(needle, autoescape=True),
                                sa.func.lower(sa.cast(IncidentRow.labels, sa.Text)).contains(needle, autoescape=True),
                                in_signals))
        page = sa.select(IncidentRow).where(*conds).order_by(IncidentRow.id.desc()).limit(limit).offset(offset)
        with self.read() as s:
            total = int(s.scalar(sa.select(sa.func.count()).select_from(IncidentRow).where(*conds)) or 0)
            return [incident_model(r) for r in s.scalars(page)], total

    @retry_transient
    def environments(self) -> list[str]:
        """The environments incidents were opened in, by name."""
        with self.read() as s:
            return sorted(s.scalars(sa.select(IncidentRow.environment).distinct()))

    @retry_transient
    def last_signal_by_service(self) -> dict[str, Signal]:
        """{service: its newest signal} over the signals that name a service."""
        with self.read() as s:
            latest = (sa.select(sa.func.max(SignalRow.id).label("last_id")).where(SignalRow.service.is_not(None))
                      .group_by(SignalRow.service).subquery())
            rows = s.scalars(sa.select(SignalRow).join(latest, SignalRow.id == latest.c.last_id))
            return {r.service: signal_model(r) for r in rows if r.service is not None}

    @retry_transient
    def count_incidents_by_state(self) -> dict[str, int]:
        with self.read() as s:
            rows = s.execute(sa.select(IncidentRow.state, sa.func.count()).group_by(IncidentRow.state))
            return {r[0]: r[1] for r in rows}  # not dict(rows): a Result has keys(); Result.tuples() is deprecated

    @retry_transient
    def transition(self, incident_id: int, to: IncidentState, *, actor: str = "heald", reason: str,
                   details: dict[str, Any] | None = None, outcome: Callable[[Incident], Outcome] | None = None,
                   only_from: Iterable[IncidentState] | None = None, **fields: Any) -> Incident:
        """Move an incident to state ``to`` and audit it, in one transaction.

        ``fields`` set other columns at the same time (``category``, ``recovered_at``, …).
        ``outcome``, given the incident as it now is, makes the outcome recorded in the same
        transaction (a closed incident is never seen without its outcome); only on a real move.
        A move to the state it is already in only updates ``fields`` (a replayed step).
        ``only_from``: the states it may move from (checked under the row's lock; a human's
        action decided on a state it read before).
        Raises NotFound, InvalidTransition (the state machine or ``only_from`` forbids it).
        """
        with self.tx() as s:
            row = s.get(IncidentRow, incident_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no incident {incident_id}")
            current = IncidentState(row.state)
            if only_from is not None and current not in set(only_from):
                raise InvalidTransition(f"incident {incident_id} is {current.value}: {to.value} only from "
                                        f"{', '.join(sorted(x.value for x in only_from))}")
            if current != to and to not in ALLOWED_TRANSITIONS.get(current, frozenset()):
                raise InvalidTransition(f"incident {incident_id}: {current.value} → {to.value} is not allowed")
            now = utcnow()
            for key, value in fields.items():
                setattr(row, key, value)
            row.updated_at = now
            if current != to:
                row.state = to.value
                if to.terminal:
                    row.closed_at = now
                    row.closed_reason = reason
                audit.append_later(s, actor=actor, event="incident.transition", incident_id=incident_id,
                             reason=reason, details={"from": current.value, "to": to.value, **(details or {})})
                if outcome is not None:
                    s.flush()
                    self._add_outcome(s, outcome(incident_model(row)))
            return incident_model(row)

    @retry_transient
    def bump_attempts(self, incident_id: int, attempt: int) -> None:
        """Record that attempt number ``attempt`` has begun (idempotent for a replay)."""
        with self.tx() as s:
            row = s.get(IncidentRow, incident_id)
            if row is None:
                raise NotFound(f"no incident {incident_id}")
            row.attempts = max(row.attempts, attempt)

    # -- signals ---------------------------------------------------------------------------
    @retry_transient
    def signals_for(self, incident_id: int, *, after_id: int = 0, limit: int | None = None) -> list[Signal]:
        """The incident's signals oldest first, those with an id above ``after_id`` only, at
        most ``limit`` (None: all of them — an incident can hold 100k signals; pages and polls
        should bound it or use :meth:`signal_statuses`)."""
        stmt = (sa.select(SignalRow).where(SignalRow.incident_id == incident_id, SignalRow.id > after_id)
                .order_by(SignalRow.id))
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.read() as s:
            return [signal_model(r) for r in s.scalars(stmt)]

    def signals_page(self, incident_id: int, *, after_id: int = 0, limit: int = 100) -> tuple[list[Signal], int | None]:
        """One page of the incident's signals (oldest first, ids above ``after_id``, at most
        ``limit``) and the ``after_id`` of the next page (None: this is the last)."""
        rows = self.signals_for(incident_id, after_id=after_id, limit=limit + 1)
        return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)

    @retry_transient
    def still_firing(self, incident_id: int) -> bool:
        """Whether some fingerprint of the incident's signals last arrived firing (its newest
        signal is firing): :func:`heald.engine.steps.still_firing` is not empty. Counted in the
        database (one grouped read of the incident's signals' ids, fingerprints and statuses),
        not by loading every signal."""
        newest = (sa.select(sa.func.max(SignalRow.id).label("id")).where(SignalRow.incident_id == incident_id)
                  .group_by(sa.func.coalesce(SignalRow.fingerprint, "")).subquery())
        with self.read() as s:
            return s.scalar(sa.select(SignalRow.id).join(newest, SignalRow.id == newest.c.id)
                            .where(SignalRow.status == SignalStatus.firing.value).limit(1)) is not None

    @retry_transient
    def signal_statuses(self, incident_id: int, *, after_id: int = 0) -> list[SignalStatusRow]:
        """(id, source, service, fingerprint, status) of the incident's signals with an id
        above ``after_id``, oldest first: what a poll that follows the incident's signals
        needs, without their labels, annotations and summaries."""
        stmt = (sa.select(SignalRow.id, SignalRow.source, SignalRow.service, SignalRow.fingerprint, SignalRow.status)
                .where(SignalRow.incident_id == incident_id, SignalRow.id > after_id).order_by(SignalRow.id))
        with self.read() as s:
            return [SignalStatusRow(i, src, svc, fp, SignalStatus(st)) for i, src, svc, fp, st in s.execute(stmt)]

    @retry_transient
    def signal_kinds(self, incident_id: int) -> list[tuple[str, str | None, SignalStatus]]:
        """The distinct (source, service, status) of the incident's signals, sorted: which
        sources and services it involves and how, in one query however many signals it has."""
        stmt = (sa.select(SignalRow.source, SignalRow.service, SignalRow.status).distinct()
                .where(SignalRow.incident_id == incident_id))
        with self.read() as s:
            rows = [(src, svc, SignalStatus(st)) for src, svc, st in s.execute(stmt)]
        return sorted(rows, key=lambda r: (r[0], r[1] or "", r[2].value))

    @retry_transient
    def count_signals_by_status(self, incident_id: int) -> dict[str, int]:
        """{status: how many of the incident's signals have it}."""
        with self.read() as s:
            rows = s.execute(sa.select(SignalRow.status, sa.func.count()).where(SignalRow.incident_id == incident_id)
                             .group_by(SignalRow.status))
            return {r[0]: int(r[1]) for r in rows}

    @retry_transient
    def count_signals(self, incident_id: int) -> int:
        """How many signals the incident has."""
        with self.read() as s:
            return int(s.scalar(sa.select(sa.func.count()).select_from(SignalRow)
                                .where(SignalRow.incident_id == incident_id)) or 0)

    @retry_transient
    def count_signals_by_source(self) -> dict[str, int]:
        """Every stored signal, counted by source (``""``: none)."""
        return self.count_signals_by_source_range()[0]

    @retry_transient
    def count_signals_by_source_range(self, after_id: int = 0,
                                      upto_id: int | None = None) -> tuple[dict[str, int], int]:
        """The signals with ``after_id < id <= upto_id`` (no upper bound when None), counted by
        source, and the largest id among them (``after_id`` when there are none). Reads only that
        range of the primary key, so counting the signals added since a mark costs those, not the
        history (``GET /metrics``, :mod:`heald.api.metrics`)."""
        # grouped by an expression of the source, not the column: SQLite would otherwise read
        # all of ix_signals_source (ordered by source) instead of the id range
        source = sa.func.coalesce(SignalRow.source, "")
        where = [SignalRow.id > after_id] + ([SignalRow.id <= upto_id] if upto_id is not None else [])
        with self.read() as s:
            rows = s.execute(sa.select(source, sa.func.count(), sa.func.max(SignalRow.id)).where(*where)
                             .group_by(source)).all()
        return {r[0]: int(r[1]) for r in rows}, max((int(r[2]) for r in rows), default=after_id)

    @retry_transient
    def count_escalations(self, after_seq: int = 0, upto_seq: int | None = None) -> tuple[int, int]:
        """The audited moves of an incident to ``escalated`` among the audit entries with
        ``after_seq < seq <= upto_seq`` (no upper bound when None), and the largest seq of those
        entries (``after_seq`` when there are none). Reads only that range of the chain (the
        ``event`` index holds the seq)."""
        where = [AuditRow.seq > after_seq] + ([AuditRow.seq <= upto_seq] if upto_seq is not None else [])
        with self.read() as s:
            top = s.scalar(sa.select(sa.func.max(AuditRow.seq)).where(*where))
            if top is None:
                return 0, after_seq
            n = s.scalar(sa.select(sa.func.count()).select_from(AuditRow).where(
                AuditRow.seq > after_seq, AuditRow.seq <= top, AuditRow.event == "incident.transition",
                AuditRow.details["to"].as_string() == "escalated"))
        return int(n or 0), int(top)

    # -- healing records --------------------------------------------------------------------
    @retry_transient
    def add_diagnosis(self, incident_id: int, d: Diagnosis, actor: str = "heald") -> Diagnosis:
        with self.tx() as s:
            row = DiagnosisRow(incident_id=incident_id, category=d.category, explanation=d.explanation,
                               evidence=list(d.evidence), confidence=d.confidence, reasoner=d.reasoner,
                               runbook=d.runbook, created_at=utcnow())
            s.add(row)
            inc = s.get(IncidentRow, incident_id)
            if inc is not None:
                inc.category = d.category
            s.flush()
            audit.append_later(s, actor=actor, event="diagnosis.made", incident_id=incident_id,
                         reason=d.explanation or d.category,
                         details={"category": d.category, "confidence": d.confidence, "reasoner": d.reasoner,
                                  "deterministic_confidence": d.deterministic_confidence,
                                  "runbook": d.runbook, "evidence": d.evidence[:20]})
            return d.model_copy(update={"id": row.id, "incident_id": incident_id, "created_at": row.created_at})

    @retry_transient
    def diagnoses_for(self, incident_id: int) -> list[Diagnosis]:
        with self.read() as s:
            rows = s.scalars(sa.select(DiagnosisRow).where(DiagnosisRow.incident_id == incident_id).order_by(DiagnosisRow.id))
            return [Diagnosis(id=r.id, incident_id=r.incident_id, category=r.category, explanation=r.explanation,
                              evidence=r.evidence, confidence=r.confidence, reasoner=r.reasoner,
                              runbook=r.runbook, created_at=r.created_at) for r in rows]

    @retry_transient
    def add_llm_usage(self, incident_id: int, usage: dict[str, Any]) -> None:
        """Record what one LLM reasoning cost: ``usage`` has reasoner, model, calls,
        prompt_tokens, completion_tokens, cost_usd (USD), latency_s (seconds) and outcome
        (``ok``, ``invalid``, ``error``)."""
        with self.tx() as s:
            fields = {k: usage[k] for k in ("reasoner", "model", "calls", "prompt_tokens", "completion_tokens",
                                            "cost_usd", "latency_s", "outcome")}
            s.add(LlmUsageRow(incident_id=incident_id, created_at=utcnow(), **fields))
            s.flush()
            audit.append_later(s, actor="heald", event="llm.usage", incident_id=incident_id,
                         reason=f"{fields['model']}: {fields['prompt_tokens']}+{fields['completion_tokens']} tokens, "
                                f"${fields['cost_usd']:.6f}, {fields['latency_s']:.2f} s ({fields['outcome']})",
                         details=fields)

    @retry_transient
    def llm_usage_for(self, incident_id: int) -> dict[str, Any]:
        """An incident's LLM accounting: {"calls": [...], "total": {prompt_tokens,
        completion_tokens, cost_usd, latency_s}}."""
        with self.read() as s:
            rows = s.scalars(sa.select(LlmUsageRow).where(LlmUsageRow.incident_id == incident_id)
                             .order_by(LlmUsageRow.id)).all()
            calls: list[dict[str, Any]] = [{"reasoner": r.reasoner, "model": r.model, "calls": r.calls, "prompt_tokens": r.prompt_tokens,
                      "completion_tokens": r.completion_tokens, "cost_usd": r.cost_usd, "latency_s": r.latency_s,
                      "outcome": r.outcome, "created_at": r.created_at.isoformat()} for r in rows]
        total = {k: sum(c[k] for c in calls) for k in ("prompt_tokens", "completion_tokens", "cost_usd", "latency_s")}
        return {"calls": calls, "total": total}

    @retry_transient
    def add_plan(self, plan: Plan) -> Plan:
        with self.tx() as s:
            row = PlanRow(incident_id=plan.incident_id,
                          candidates=[c.model_dump(mode="json") for c in plan.candidates], created_at=utcnow())
            s.add(row)
            s.flush()
            audit.append_later(s, actor="heald", event="plan.made", incident_id=plan.incident_id,
                         reason=f"{len(plan.candidates)} candidate remedies",
                         details={"candidates": [{"remedy": c.remedy, "risk": c.risk.value,
                                                  "success_rate": c.success_rate, "samples": c.samples,
                                                  "score": c.score} for c in plan.candidates]})
            return plan.model_copy(update={"created_at": row.created_at})

    @retry_transient
    def plans_for(self, incident_id: int) -> list[Plan]:
        with self.read() as s:
            rows = s.scalars(sa.select(PlanRow).where(PlanRow.incident_id == incident_id).order_by(PlanRow.id))
            return [Plan(incident_id=incident_id, candidates=r.candidates, created_at=r.created_at) for r in rows]

    @retry_transient
    def add_decision(self, incident_id: int, d: Decision) -> int:
        """Record the gate's decision; returns its id (approvals refer to it)."""
        with self.tx() as s:
            row = DecisionRow(incident_id=incident_id, kind=d.kind.value, reason=d.reason,
                              required_approvals=d.required_approvals,
                              candidate=d.candidate.model_dump(mode="json") if d.candidate else None,
                              created_at=utcnow())
            s.add(row)
            s.flush()
            audit.append_later(s, actor="policy", event="gate.decided", incident_id=incident_id, reason=d.reason,
                         details={"decision": d.kind.value, "required_approvals": d.required_approvals,
                                  "remedy": d.candidate.remedy if d.candidate else None, "decision_id": row.id})
            return row.id

    @retry_transient
    def decisions_for(self, incident_id: int) -> list[dict[str, Any]]:
        with self.read() as s:
            rows = s.scalars(sa.select(DecisionRow).where(DecisionRow.incident_id == incident_id).order_by(DecisionRow.id))
            return [{"id": r.id, "kind": r.kind, "reason": r.reason, "required_approvals": r.required_approvals,
                     "candidate": r.candidate, "created_at": r.created_at} for r in rows]

    @retry_transient
    def latest_decision_id(self, incident_id: int) -> int | None:
        with self.read() as s:
            return s.scalar(sa.select(sa.func.max(DecisionRow.id)).where(DecisionRow.incident_id == incident_id))

    @retry_transient
    def add_approval(self, incident_id: int, decision_id: int, approver: str, verdict: str, comment: str = "",
                     counts_as: str | None = None) -> bool:
        """Record one approver's verdict (``approve``/``reject``) on a decision; ``counts_as``
        (the approver's root identity, for the audit) when it is another identity.

        An approver counts once per decision: a repeat returns False and records nothing.
        """
        try:
            with self.tx() as s:
                s.add(ApprovalRow(incident_id=incident_id, decision_id=decision_id, approver=approver,
                                  verdict=verdict, comment=comment, created_at=utcnow()))
                s.flush()
                details: dict[str, Any] = {"decision_id": decision_id}
                if counts_as is not None and counts_as != approver:
                    details["counts_as"] = counts_as
                audit.append_later(s, actor=f"user:{approver}", event=f"approval.{verdict}", incident_id=incident_id,
                             reason=comment or verdict, details=details)
            return True
        except IntegrityError:
            return False

    @retry_transient
    def pending_approvals(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest ``limit`` incidents awaiting approval, each as ``{"incident", "decision"
        (its latest, as :meth:`decisions_for` gives it; None if it has none), "votes" (the
        verdicts on that decision, as :meth:`approvals_for`)}``, in three queries whatever
        ``limit`` is."""
        with self.read() as s:
            incidents = [incident_model(r) for r in s.scalars(
                sa.select(IncidentRow).where(IncidentRow.state == IncidentState.awaiting_approval.value)
                .order_by(IncidentRow.id.desc()).limit(limit))]
            ids = [i.id for i in incidents]
            latest = (sa.select(sa.func.max(DecisionRow.id)).where(DecisionRow.incident_id.in_(ids))
                      .group_by(DecisionRow.incident_id))
            decisions = {r.incident_id: r for r in s.scalars(sa.select(DecisionRow).where(DecisionRow.id.in_(latest)))} \
                if ids else {}
            votes: dict[int, list[dict[str, Any]]] = {}
            if decisions:
                for r in s.scalars(sa.select(ApprovalRow).where(ApprovalRow.decision_id.in_([d.id for d in decisions.values()]))
                                   .order_by(ApprovalRow.id)):
                    votes.setdefault(r.decision_id, []).append(
                        {"approver": r.approver, "verdict": r.verdict, "comment": r.comment,
                         "decision_id": r.decision_id, "created_at": r.created_at})
        out = []
        for inc in incidents:
            d = decisions.get(inc.id)
            decision = None if d is None else {"id": d.id, "kind": d.kind, "reason": d.reason,
                                               "required_approvals": d.required_approvals, "candidate": d.candidate,
                                               "created_at": d.created_at}
            out.append({"incident": inc, "decision": decision, "votes": votes.get(d.id, []) if d else []})
        return out

    @retry_transient
    def approvals_for(self, incident_id: int, decision_id: int | None = None) -> list[dict[str, Any]]:
        stmt = sa.select(ApprovalRow).where(ApprovalRow.incident_id == incident_id).order_by(ApprovalRow.id)
        if decision_id is not None:
            stmt = stmt.where(ApprovalRow.decision_id == decision_id)
        with self.read() as s:
            return [{"approver": r.approver, "verdict": r.verdict, "comment": r.comment,
                     "decision_id": r.decision_id, "created_at": r.created_at} for r in s.scalars(stmt)]

    @retry_transient
    def begin_action(self, action: Action) -> tuple[Action, bool]:
        """Record that an action is about to be applied, keyed by its idempotency key.

        Returns (action, new): when the key exists already (a replay after a crash) the stored
        action is returned with ``new`` False and nothing is written.
        """
        with self.tx() as s:
            existing = s.scalar(sa.select(ActionRow).where(ActionRow.idempotency_key == action.idempotency_key))
            if existing is not None:
                return action_model(existing), False
            row = ActionRow(incident_id=action.incident_id, attempt=action.attempt, remedy=action.remedy,
                            params=action.params, idempotency_key=action.idempotency_key,
                            status=ActionStatus.started.value, output="", snapshot=action.snapshot,
                            undo=None, started_at=utcnow(), target=action.target)
            s.add(row)
            s.flush()
            audit.append_later(s, actor="heald", event="action.started", incident_id=action.incident_id,
                         reason=f"applying {action.remedy}",
                         details={"action_id": row.id, "remedy": action.remedy, "params": action.params,
                                  "attempt": action.attempt, "idempotency_key": action.idempotency_key,
                                  "target": action.target})
            return action_model(row), True

    @retry_transient
    def finish_action(self, action_id: int, status: ActionStatus, output: str,
                      undo: dict[str, Any] | None = None, actor: str = "heald") -> Action:
        with self.tx() as s:
            row = s.get(ActionRow, action_id)
            if row is None:
                raise NotFound(f"no action {action_id}")
            row.status, row.output, row.undo, row.finished_at = status.value, output[-20_000:], undo, utcnow()
            audit.append_later(s, actor=actor, event=f"action.{status.value}", incident_id=row.incident_id,
                         reason=output[-500:] or status.value,
                         details={"action_id": action_id, "remedy": row.remedy})
            return action_model(row)

    @retry_transient
    def actions_for(self, incident_id: int) -> list[Action]:
        with self.read() as s:
            rows = s.scalars(sa.select(ActionRow).where(ActionRow.incident_id == incident_id).order_by(ActionRow.id))
            return [action_model(r) for r in rows]

    @retry_transient
    def count_actions_by(self) -> dict[tuple[str, str], int]:
        """{(remedy, status): count} over all actions."""
        with self.read() as s:
            rows = s.execute(sa.select(ActionRow.remedy, ActionRow.status, sa.func.count())
                             .group_by(ActionRow.remedy, ActionRow.status))
            return {(r, st): n for r, st, n in rows}

    @retry_transient
    def add_verification(self, v: Verification) -> Verification:
        with self.tx() as s:
            row = VerificationRow(incident_id=v.incident_id, action_id=v.action_id, passed=v.passed, reason=v.reason,
                                  checks=[c.model_dump(mode="json") for c in v.checks[-200:]],
                                  recovered_at=v.recovered_at, started_at=v.started_at or utcnow(),
                                  finished_at=v.finished_at or utcnow())
            s.add(row)
            s.flush()
            audit.append_later(s, actor="heald", event="verification.passed" if v.passed else "verification.failed",
                         incident_id=v.incident_id, reason=v.reason,
                         details={"action_id": v.action_id, "checks": len(v.checks),
                                  "recovered_at": v.recovered_at.isoformat() if v.recovered_at else None})
            return v

    @retry_transient
    def verifications_for(self, incident_id: int) -> list[Verification]:
        with self.read() as s:
            rows = s.scalars(sa.select(VerificationRow).where(VerificationRow.incident_id == incident_id).order_by(VerificationRow.id))
            return [Verification(incident_id=r.incident_id, action_id=r.action_id, passed=r.passed, reason=r.reason,
                                 checks=r.checks, recovered_at=r.recovered_at, started_at=r.started_at,
                                 finished_at=r.finished_at) for r in rows]

    @retry_transient
    def add_outcome(self, o: Outcome) -> Outcome:
        """Record one attempt's or one incident's outcome, audited; returns it with created_at."""
        with self.tx() as s:
            return self._add_outcome(s, o)

    @staticmethod
    def add_outcome_in(s: Session, o: Outcome) -> Outcome:
        """:meth:`add_outcome` inside the caller's write transaction ``s`` (a session of :meth:`tx`)."""
        return Store._add_outcome(s, o)

    @staticmethod
    def _add_outcome(s: Session, o: Outcome) -> Outcome:
        row = OutcomeRow(incident_id=o.incident_id, category=o.category, remedy=o.remedy, result=o.result.value,
                         attempt=o.attempt, time_to_detect_s=o.time_to_detect_s,
                         time_to_recover_s=o.time_to_recover_s, created_at=utcnow())
        s.add(row)
        s.flush()
        audit.append_later(s, actor="heald", event="outcome.recorded", incident_id=o.incident_id,
                     reason=f"{o.remedy or 'no remedy'}: {o.result.value}",
                     details=o.model_dump(mode="json", exclude={"created_at"}))
        return o.model_copy(update={"created_at": row.created_at})

    @retry_transient
    def outcomes(self, incident_id: int | None = None, category: str | None = None) -> list[Outcome]:
        stmt = sa.select(OutcomeRow).order_by(OutcomeRow.id)
        if incident_id is not None:
            stmt = stmt.where(OutcomeRow.incident_id == incident_id)
        if category is not None:
            stmt = stmt.where(OutcomeRow.category == category)
        with self.read() as s:
            return [Outcome(incident_id=r.incident_id, category=r.category, remedy=r.remedy, result=OutcomeResult(r.result),
                            attempt=r.attempt, time_to_detect_s=r.time_to_detect_s,
                            time_to_recover_s=r.time_to_recover_s, created_at=r.created_at)
                    for r in s.scalars(stmt)]

    @retry_transient
    def recovery_times(self, limit: int = 1000, before_id: int | None = None) -> list[float]:
        """Time to recover (seconds) of the newest ``limit`` healed outcomes (those older than
        outcome ``before_id`` when given), newest first. For figures over all of them use
        :meth:`recovery_summary`."""
        stmt = (sa.select(OutcomeRow.time_to_recover_s).where(*_HEALED).order_by(OutcomeRow.id.desc()).limit(limit))
        if before_id is not None:
            stmt = stmt.where(OutcomeRow.id < before_id)
        with self.read() as s:
            return [float(x) for x in s.scalars(stmt) if x is not None]

    @retry_transient
    def recovery_summary(self, bounds: Iterable[float] = ()) -> dict[str, Any]:
        """Time to recover over every healed outcome, in two indexed queries however many
        there are: ``count``, ``sum`` (seconds), ``median`` (seconds, None when there are
        none; for an even count the mean of the two middle values) and
        ``buckets``: [(upper bound, how many took at most that)] for each of ``bounds``
        (a Prometheus histogram's cumulative buckets)."""
        edges = sorted(float(b) for b in bounds)
        ttr = OutcomeRow.time_to_recover_s
        cols: list[sa.ColumnElement[Any]] = [sa.func.count(), sa.func.coalesce(sa.func.sum(ttr), 0.0),
                *(sa.func.coalesce(sa.func.sum(sa.case((ttr <= b, 1), else_=0)), 0) for b in edges)]
        with self.read() as s:
            row = s.execute(sa.select(*cols).where(*_HEALED)).one()
            count = int(row[0])
            median: float | None = None
            if count:
                middle = [float(x) for x in s.scalars(sa.select(ttr).where(*_HEALED).order_by(ttr)
                                                      .offset((count - 1) // 2).limit(2 - count % 2)) if x is not None]
                median = sum(middle) / len(middle)
        return {"count": count, "sum": float(row[1]), "median": median,
                "buckets": [(b, int(n)) for b, n in zip(edges, row[2:], strict=True)]}

    def incident_detail(self, incident_id: int, *, signals_limit: int = DETAIL_SIGNALS,
                        timeline_limit: int = DETAIL_TIMELINE) -> dict[str, Any]:
        """Everything known about one incident, as JSON-ready data: the incident, its signals,
        diagnoses, plans, decisions, approvals, actions, verifications, outcomes and its
        timeline (its audit entries in order). Raises NotFound.

        ``signals`` and ``timeline`` are bounded: the first ``signals_limit`` signals and
        ``timeline_limit`` entries, oldest first; ``signals_page`` and ``timeline_page`` say
        ``{"total", "limit", "next_after"}`` — the cursor of the next page (a signal id for
        :meth:`signals_page`, an audit ``seq`` for :meth:`audit_entries`' ``after_seq``), None
        when everything is shown."""
        inc = self.get_incident(incident_id)

        def dump(items: list[Any]) -> list[Any]:
            return [i.model_dump(mode="json") if hasattr(i, "model_dump") else _jsonable(i) for i in items]

        signals, next_signal = self.signals_page(incident_id, limit=signals_limit)
        timeline = self.audit_entries(incident_id=incident_id, limit=timeline_limit + 1)

        return {
            "incident": {**inc.model_dump(mode="json"), "time_to_detect_s": inc.time_to_detect_s,
                         "time_to_recover_s": inc.time_to_recover_s},
            "signals": dump(signals),
            "signals_page": {"total": self.count_signals(incident_id), "limit": signals_limit, "next_after": next_signal},
            "diagnoses": dump(self.diagnoses_for(incident_id)),
            "plans": dump(self.plans_for(incident_id)),
            "decisions": dump(self.decisions_for(incident_id)),
            "approvals": dump(self.approvals_for(incident_id)),
            "actions": dump(self.actions_for(incident_id)),
            "verifications": dump(self.verifications_for(incident_id)),
            "outcomes": dump(self.outcomes(incident_id=incident_id)),
            "llm_usage": self.llm_usage_for(incident_id),
            "timeline": dump(timeline[:timeline_limit]),
            "timeline_page": {"total": self.count_audit_entries(incident_id), "limit": timeline_limit,
                              "next_after": timeline[timeline_limit - 1].seq if len(timeline) > timeline_limit else None},
        }

    # -- API tokens ------------------------------------------------------------------------
    @retry_transient
    def add_token(self, *, name: str, role: Role, token_hash: str, prefix: str, created_by: str,
                  sponsor: str | None, expires_at: datetime | None = None) -> ApiToken:
        """Store a new API token by its hash (the token itself is never stored) and audit it.

        ``sponsor`` is the identity that makes it: ``name`` then counts as the sponsor's root
        identity when approvals are counted; None makes ``name`` a root of its own (a human
        vouched for on the database host). An identity's root never changes: a token for an
        existing ``name`` that would count as another root raises :class:`IdentityConflict`.
        """
        with self.tx() as s:
            if s.get_bind().dialect.name == "postgresql":  # two first tokens of one name at once: one root wins
                s.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"heald.identity:{name}"})
            root = name if sponsor is None else _root_of(s, sponsor)
            bound = _bound_root(s, name)
            if bound is not None and bound != root:
                maker = f"a token made by {sponsor} (root {root})" if sponsor is not None else f"a root token for {name}"
                raise IdentityConflict(
                    f"name: identity {name!r} counts as {bound!r} (fixed by its first token); {maker} would count "
                    f"as {root!r}; pick another name")
            row = ApiTokenRow(name=name, role=role.value, token_hash=token_hash, prefix=prefix, created_by=created_by,
                              root_identity=root, created_at=utcnow(), expires_at=expires_at, revoked_at=None,
                              revoked_by=None)
            s.add(row)
            s.flush()
            audit.append_later(s, actor=created_by, event="token.created", reason=f"token {row.id} for {name} with role {role.value}"
                         + (f", counting as {root}" if root != name else ", a root identity"),
                         details={"token_id": row.id, "name": name, "role": role.value, "prefix": prefix,
                                  "sponsor": sponsor, "root_identity": root,
                                  "expires_at": expires_at.isoformat() if expires_at else None})
            return token_model(row)

    @retry_transient
    def identity_roots(self, names: Iterable[str]) -> dict[str, str]:
        """The root identity (the human, for counting approvals) of each of ``names``: the
        ``root_identity`` of its tokens, or the name itself for a name without any (a login
        on the database host, or an approver named with ``api.auth`` off)."""
        wanted = sorted(set(names))
        if not wanted:
            return {}
        with self.read() as s:
            rows = s.execute(sa.select(ApiTokenRow.name, ApiTokenRow.root_identity)
                             .where(ApiTokenRow.name.in_(wanted)).order_by(ApiTokenRow.id))
            found: dict[str, str] = {}
            for name, root in rows:
                found.setdefault(name, root)
        return {n: found.get(n, n) for n in wanted}

    @retry_transient
    def token_by_hash(self, token_hash: str) -> ApiToken | None:
        """The token with this sha256 (hex), active or not; None when there is none."""
        with self.read() as s:
            row = s.scalar(sa.select(ApiTokenRow).where(ApiTokenRow.token_hash == token_hash))
            return token_model(row) if row is not None else None

    @retry_transient
    def list_tokens(self) -> list[ApiToken]:
        """Every token ever created (revoked ones too), oldest first."""
        with self.read() as s:
            return [token_model(r) for r in s.scalars(sa.select(ApiTokenRow).order_by(ApiTokenRow.id))]

    @retry_transient
    def count_active_tokens(self) -> int:
        now = utcnow()
        with self.read() as s:
            return s.scalar(sa.select(sa.func.count()).select_from(ApiTokenRow).where(
                ApiTokenRow.revoked_at.is_(None),
                sa.or_(ApiTokenRow.expires_at.is_(None), ApiTokenRow.expires_at > now))) or 0

    @retry_transient
    def revoke_token(self, token_id: int, by: str) -> ApiToken:
        """Revoke a token (it stays listed, marked revoked). Idempotent. Raises NotFound."""
        with self.tx() as s:
            row = s.get(ApiTokenRow, token_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no token {token_id}")
            if row.revoked_at is None:
                row.revoked_at, row.revoked_by = utcnow(), by
                audit.append_later(s, actor=by, event="token.revoked", reason=f"token {token_id} of {row.name} revoked",
                             details={"token_id": token_id, "name": row.name, "role": row.role})
            return token_model(row)

    # -- audit -----------------------------------------------------------------------------
    @retry_transient
    def record(self, *, actor: str, event: str, reason: str = "", incident_id: int | None = None,
               details: dict[str, Any] | None = None) -> AuditEntry | None:
        """Append a standalone audit entry (for events with no other row to write); returns it
        — or None inside a :func:`heald.store.audit.batched` block, which appends it with the
        others at its end."""
        with self.tx() as s:
            if audit.buffering(s):  # inside a batch (one stage's writes): appended with the others
                audit.append_later(s, actor=actor, event=event, reason=reason, incident_id=incident_id, details=details)
                return None
            return audit.append(s, actor=actor, event=event, reason=reason, incident_id=incident_id, details=details)

    @retry_transient
    def audit_entries(self, incident_id: int | None = None, after_seq: int = 0, limit: int = 1000,
                      events: Iterable[str] | None = None) -> list[AuditEntry]:
        """Audit entries in chain order, optionally for one incident, after ``after_seq``, at
        most ``limit``; only those whose event is one of ``events`` when given."""
        stmt = sa.select(AuditRow).where(AuditRow.seq > after_seq).order_by(AuditRow.seq).limit(limit)
        if incident_id is not None:
            stmt = stmt.where(AuditRow.incident_id == incident_id)
        if events is not None:
            stmt = stmt.where(AuditRow.event.in_(sorted(set(events))))
        with self.read() as s:
            return [audit.to_entry(r) for r in s.scalars(stmt)]

    @retry_transient
    def audit_summary(self, incident_id: int) -> dict[str, Any]:
        """The incident's audit entries in figures, by two grouped queries: ``count``,
        ``first_seq`` and ``last_seq`` (None when it has none), ``events`` ({event: count},
        most frequent first) and ``actors`` (sorted)."""
        where = AuditRow.incident_id == incident_id
        with self.read() as s:
            count, first, last = s.execute(sa.select(sa.func.count(), sa.func.min(AuditRow.seq), sa.func.max(AuditRow.seq))
                                           .where(where)).one()
            events = s.execute(sa.select(AuditRow.event, sa.func.count()).where(where).group_by(AuditRow.event)).all()
            actors = sorted(s.scalars(sa.select(AuditRow.actor).where(where).distinct()))
        return {"count": int(count), "first_seq": first, "last_seq": last, "actors": actors,
                "events": dict(sorted(((e, int(n)) for e, n in events), key=lambda x: (-x[1], x[0])))}

    @retry_transient
    def count_audit_entries(self, incident_id: int | None = None) -> int:
        """How many audit entries there are (about one incident when given)."""
        stmt = sa.select(sa.func.count()).select_from(AuditRow)
        if incident_id is not None:
            stmt = stmt.where(AuditRow.incident_id == incident_id)
        with self.read() as s:
            return int(s.scalar(stmt) or 0)

    @retry_transient
    def last_audit_seq(self) -> int:
        """The sequence number of the newest audit entry (0 when the log is empty)."""
        with self.read() as s:
            return s.scalar(sa.select(sa.func.max(AuditRow.seq))) or 0

    @retry_transient
    def verify_audit(self) -> audit.AuditReport:
        with self.read() as s:
            return audit.verify(s)

    def now(self) -> datetime:
        return utcnow()

    # -- dashboard queries -------------------------------------------------------------------
    @retry_transient
    def closed_since(self, since: datetime) -> dict[str, int]:
        """{terminal state: count} of the incidents closed at or after ``since``."""
        with self.read() as s:
            rows = s.execute(sa.select(IncidentRow.state, sa.func.count())
                             .where(IncidentRow.closed_at.is_not(None), IncidentRow.closed_at >= since)
                             .group_by(IncidentRow.state))
            return {r[0]: r[1] for r in rows}  # not dict(rows): a Result has keys(); Result.tuples() is deprecated

    @retry_transient
    def incident_outcomes(self, limit: int = 50) -> list[Outcome]:
        """The newest ``limit`` outcomes of whole incidents (attempt 0, with their time to
        detect and to recover in seconds), oldest first."""
        stmt = (sa.select(OutcomeRow).where(OutcomeRow.attempt == 0)
                .order_by(OutcomeRow.id.desc()).limit(limit))
        with self.read() as s:
            rows = list(s.scalars(stmt))
        return [Outcome(incident_id=r.incident_id, category=r.category, remedy=r.remedy, result=OutcomeResult(r.result),
                        attempt=r.attempt, time_to_detect_s=r.time_to_detect_s,
                        time_to_recover_s=r.time_to_recover_s, created_at=r.created_at) for r in reversed(rows)]

    @retry_transient
    def last_signal_by_source(self) -> dict[str, tuple[Signal, int]]:
        """{source: (its newest signal, how many signals it sent)}, sources by name."""
        with self.read() as s:
            latest = (sa.select(SignalRow.source, sa.func.max(SignalRow.id).label("last_id"),
                                sa.func.count().label("n")).group_by(SignalRow.source).subquery())
            rows = s.execute(sa.select(SignalRow, latest.c.n).join(latest, SignalRow.id == latest.c.last_id)
                             .order_by(SignalRow.source))
            return {r[0].source: (signal_model(r[0]), int(r[1])) for r in rows}

    @retry_transient
    def search_audit(self, *, incident_id: int | None = None, actor: str | None = None,
                     event: str | None = None, before_seq: int | None = None, limit: int = 100) -> list[AuditEntry]:
        """Audit entries newest first, filtered: ``actor`` exactly, ``event`` exactly or as a
        prefix of dotted names (``approval`` matches ``approval.approve``), entries older
        than ``before_seq``."""
        stmt = sa.select(AuditRow).order_by(AuditRow.seq.desc()).limit(limit)
        if incident_id is not None:
            stmt = stmt.where(AuditRow.incident_id == incident_id)
        if actor:
            stmt = stmt.where(AuditRow.actor == actor)
        if event:
            prefix = event.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ".%"
            stmt = stmt.where(sa.or_(AuditRow.event == event, AuditRow.event.like(prefix, escape="\\")))
        if before_seq is not None:
            stmt = stmt.where(AuditRow.seq < before_seq)
        with self.read() as s:
            return [audit.to_entry(r) for r in s.scalars(stmt)]

    @retry_transient
    def audit_facets(self) -> dict[str, list[str]]:
        """The distinct actors and events of the audit log (sorted), for filters."""
        with self.read() as s:
            return {"actors": list(s.scalars(sa.select(AuditRow.actor).distinct().order_by(AuditRow.actor))),
                    "events": list(s.scalars(sa.select(AuditRow.event).distinct().order_by(AuditRow.event)))}
