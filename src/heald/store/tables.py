"""SQLAlchemy 2 table mappings of heald's store.

The schema is created and changed only by the Alembic migrations in ``migrations/versions``;
these classes must match them (``tests/store/test_migrations.py`` checks that they do).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime, stored as naive UTC (SQLite keeps no zone)."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: sa.JSON(), list[Any]: sa.JSON()}


class IncidentRow(Base):
    __tablename__ = "incidents"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    title: Mapped[str] = mapped_column(sa.String(500))
    service: Mapped[str | None] = mapped_column(sa.String(200), index=True)
    state: Mapped[str] = mapped_column(sa.String(32), index=True)
    severity: Mapped[str] = mapped_column(sa.String(16))
    fingerprint: Mapped[str] = mapped_column(sa.String(128), index=True)
    group_key: Mapped[str] = mapped_column(sa.String(128), index=True)
    labels: Mapped[dict[str, Any]]
    category: Mapped[str | None] = mapped_column(sa.String(100))
    environment: Mapped[str] = mapped_column(sa.String(100))
    attempts: Mapped[int] = mapped_column(default=0)
    started_at: Mapped[datetime]
    detected_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    recovered_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None] = mapped_column(index=True)
    closed_reason: Mapped[str | None] = mapped_column(sa.Text)


class SignalRow(Base):
    __tablename__ = "signals"
    #: the incidents of a fingerprint or grouping key, newest first, found without reading the
    #: signals of their history (heald.correlate.find_incident; migration ingest_indexes); an
    #: incident's and a service's signals in order (migration growth_indexes)
    __table_args__ = (sa.Index("ix_signals_incident_id_id", "incident_id", "id"),
                      sa.Index("ix_signals_service_id", "service", "id"),
                      sa.Index("ix_signals_fingerprint_incident", "fingerprint", "incident_id"),
                      sa.Index("ix_signals_group_key_incident", "group_key", "incident_id"))
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(sa.String(100), index=True)
    kind: Mapped[str] = mapped_column(sa.String(100))
    service: Mapped[str | None] = mapped_column(sa.String(200))
    status: Mapped[str] = mapped_column(sa.String(16))
    severity: Mapped[str] = mapped_column(sa.String(16))
    summary: Mapped[str] = mapped_column(sa.Text)
    labels: Mapped[dict[str, Any]]
    annotations: Mapped[dict[str, Any]]
    fingerprint: Mapped[str] = mapped_column(sa.String(128), index=True)
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime | None]
    received_at: Mapped[datetime]
    raw_ref: Mapped[str | None] = mapped_column(sa.String(500))
    incident_id: Mapped[int | None] = mapped_column(sa.ForeignKey("incidents.id"), index=True)
    suppressed_by: Mapped[str | None] = mapped_column(sa.String(500))
    #: the grouping key the signal was correlated under (heald.correlate.ingest): the incident
    #: of a sender's group is found by it even after the incident's own key changed
    group_key: Mapped[str | None] = mapped_column(sa.String(128), index=True)


class DiagnosisRow(Base):
    __tablename__ = "diagnoses"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(sa.ForeignKey("incidents.id"), index=True)
    category: Mapped[str] = mapped_column(sa.String(100))
    explanation: Mapped[str] = mapped_column(sa.Text)
    evidence: Mapped[list[Any]]
    confidence: Mapped[float]
    reasoner: Mapped[str] = mapped_column(sa.String(100))
    runbook: Mapped[str | None] = mapped_column(sa.String(200))
    created_at: Mapped[datetime]


class PlanRow(Base):
    __tablename__ = "plans"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(sa.ForeignKey("incidents.id"), index=True)
    candidates: Mapped[list[Any]]
    created_at: Mapped[datetime]


class DecisionRow(Base):
    __tablename__ = "decisions"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(sa.ForeignKey("incidents.id"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str] = mapped_column(sa.Text)
    required_approvals: Mapped[int] = mapped_column(default=0)
    candidate: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    created_at: Mapped[datetime]


class ApprovalRow(Base):
    __tablename__ = "approvals"
    __table_args__ = (sa.UniqueConstraint("incident_id", "decision_id", "approver", name="uq_approval_once"),
                      sa.Index("ix_approvals_decision_id", "decision_id"))
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(sa.ForeignKey("incidents.id"), index=True)
    decision_id: Mapped[int] = mapped_column(sa.ForeignKey("decisions.id"))
    approver: Mapped[str] = mapped_column(sa.String(200))
    verdict: Mapped[str] = mapped_column(sa.String(16))
    comment: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime]


class ActionRow(Base):
    __tablename__ = "actions"
    __table_args__ = (sa.Index("ix_actions_target_started", "target", "started_at"),
                      sa.Index("ix_actions_started", "started_at"))
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(sa.ForeignKey("incidents.id"), index=True)
    attempt: Mapped[int]
    remedy: Mapped[str] = mapped_column(sa.String(100))
    params: Mapped[dict[str, Any]]
    idempotency_key: Mapped[str] = mapped_column(sa.String(200), unique=True)
    status: Mapped[str] = mapped_column(sa.String(16))
    output: Mapped[str] = mapped_column(sa.Text)
    snapshot: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    undo: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    target: Mapped[str | None] = mapped_column(sa.String(500))


class VerificationRow(Base):
    __tablename__ = "verifications"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(sa.ForeignKey("incidents.id"), index=True)
    action_id: Mapped[int | None] = mapped_column(sa.ForeignKey("actions.id"))
    passed: Mapped[bool]
    reason: Mapped[str] = mapped_column(sa.Text)
    checks: Mapped[list[Any]]
    recovered_at: Mapped[datetime | None]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]


class OutcomeRow(Base):
    __tablename__ = "outcomes"
    __table_args__ = (sa.Index("ix_outcomes_result_time_to_recover_s", "result", "time_to_recover_s"),)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(sa.ForeignKey("incidents.id"), index=True)
    category: Mapped[str] = mapped_column(sa.String(100), index=True)
    remedy: Mapped[str | None] = mapped_column(sa.String(100))
    result: Mapped[str] = mapped_column(sa.String(32))
    attempt: Mapped[int]
    time_to_detect_s: Mapped[float | None]
    time_to_recover_s: Mapped[float | None]
    created_at: Mapped[datetime]


class LlmUsageRow(Base):
    __tablename__ = "llm_usage"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(sa.ForeignKey("incidents.id"), index=True)
    reasoner: Mapped[str] = mapped_column(sa.String(100))
    model: Mapped[str] = mapped_column(sa.String(200))
    calls: Mapped[int]
    prompt_tokens: Mapped[int]
    completion_tokens: Mapped[int]
    cost_usd: Mapped[float]
    latency_s: Mapped[float]
    outcome: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[datetime]


class WebhookDeliveryRow(Base):
    """A webhook delivery heald accepted (``X-GitHub-Delivery``), kept to drop redeliveries."""

    __tablename__ = "webhook_deliveries"
    source: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    signal_ids: Mapped[list[Any]]
    received_at: Mapped[datetime]


class CiPullRequestRow(Base):
    """A fix branch heald pushed (and its pull request, when it opened one) for one failure
    signature of one repository."""

    __tablename__ = "ci_pull_requests"
    __table_args__ = (sa.UniqueConstraint("repo", "signature", name="uq_ci_pull_requests_repo_signature"),
                      sa.Index("ix_ci_pull_requests_repo_created", "repo", "created_at"))
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    repo: Mapped[str] = mapped_column(sa.String(300))
    signature: Mapped[str] = mapped_column(sa.String(64))
    branch: Mapped[str] = mapped_column(sa.String(300))
    base_branch: Mapped[str] = mapped_column(sa.String(300))
    sha: Mapped[str] = mapped_column(sa.String(64))
    number: Mapped[int | None]
    url: Mapped[str | None] = mapped_column(sa.String(1000))
    state: Mapped[str] = mapped_column(sa.String(16))
    incident_id: Mapped[int | None] = mapped_column(index=True)
    created_at: Mapped[datetime]


class AuditRow(Base):
    __tablename__ = "audit_log"
    __table_args__ = (sa.Index("ix_audit_log_incident_id_event", "incident_id", "event"),
                      sa.Index("ix_audit_log_actor", "actor"), sa.Index("ix_audit_log_event", "event"))
    seq: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=False)
    ts: Mapped[datetime]
    actor: Mapped[str] = mapped_column(sa.String(200))
    event: Mapped[str] = mapped_column(sa.String(100))
    incident_id: Mapped[int | None] = mapped_column(index=True)
    reason: Mapped[str] = mapped_column(sa.Text)
    details: Mapped[dict[str, Any]]
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    hash: Mapped[str] = mapped_column(sa.String(64))


class AuditHeadRow(Base):
    """The newest entry of the chain, so that removing entries from the end is detected too."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"))
    hash: Mapped[str] = mapped_column(sa.String(64))


class ApiTokenRow(Base):
    """An API token: only its sha256 is stored; ``prefix`` (its first characters) lets a human
    tell tokens apart. ``name`` is the identity it authenticates; ``root_identity`` the human
    that identity counts as when approvals are counted (the same for every token of a name:
    the identity itself for a root, else the root of the identity that created it). Tokens are
    revoked, never deleted."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(sa.String(200), index=True)
    role: Mapped[str] = mapped_column(sa.String(16))
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    prefix: Mapped[str] = mapped_column(sa.String(16))
    created_by: Mapped[str] = mapped_column(sa.String(200))
    root_identity: Mapped[str] = mapped_column(sa.String(200), index=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    revoked_by: Mapped[str | None] = mapped_column(sa.String(200))


class TargetLeaseRow(Base):
    """The healing that may act on a target now (one per target, :mod:`heald.budgets`); a
    lease past ``expires_at`` is free to take (its worker died)."""

    __tablename__ = "target_leases"
    target: Mapped[str] = mapped_column(sa.String(500), primary_key=True)
    incident_id: Mapped[int]
    holder: Mapped[str] = mapped_column(sa.String(200))
    acquired_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class CircuitBreakerRow(Base):
    """A target's circuit breaker: consecutive failed verifications, the verdicts of its recent
    window (``recent``: [[epoch seconds, passed], …], oldest first), and since when it is open
    (auto-remediation off) until a human resets it. Rows are updated, never deleted; the
    history is in the audit log."""

    __tablename__ = "circuit_breakers"
    target: Mapped[str] = mapped_column(sa.String(500), primary_key=True)
    failures: Mapped[int] = mapped_column(default=0)
    recent: Mapped[list[Any] | None] = mapped_column(sa.JSON)
    opened_at: Mapped[datetime | None]
    opened_reason: Mapped[str | None] = mapped_column(sa.Text)
    reset_at: Mapped[datetime | None]
    reset_by: Mapped[str | None] = mapped_column(sa.String(200))
    updated_at: Mapped[datetime]


class SilenceRow(Base):
    """A silence (Alertmanager's): signals matching every matcher between ``starts_at`` and
    ``ends_at`` are recorded but start nothing. Expiring sets ``ends_at`` to the moment of
    expiry; silences are never deleted."""

    __tablename__ = "silences"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    matchers: Mapped[list[Any]]
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime] = mapped_column(index=True)
    comment: Mapped[str] = mapped_column(sa.Text)
    created_by: Mapped[str] = mapped_column(sa.String(200))
    created_at: Mapped[datetime]
    expired_at: Mapped[datetime | None]
    expired_by: Mapped[str | None] = mapped_column(sa.String(200))
    #: A recurring maintenance window: ``{"schedule": cron, "window_seconds", "timezone"}``
    #: (:func:`heald.correlate.silences.parse_recurrence`), or None for one window.
    recurrence: Mapped[dict[str, Any] | None]


class ProbeStateRow(Base):
    """Where one probe of one service stands (:class:`heald.sources.probes.ProbeRunner`), kept
    so that a restarted heald goes on from it: the current streak of failures or successes,
    whether its signal is firing (then ``fingerprint`` is that signal's and ``first_failure``
    its ``starts_at``), so a signal that fired before a restart resolves after it."""

    __tablename__ = "probe_state"
    service: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    probe: Mapped[str] = mapped_column(sa.String(500), primary_key=True)
    failures: Mapped[int] = mapped_column(default=0)
    successes: Mapped[int] = mapped_column(default=0)
    firing: Mapped[bool] = mapped_column(default=False)
    first_failure: Mapped[datetime | None]
    fingerprint: Mapped[str | None] = mapped_column(sa.String(200))
    updated_at: Mapped[datetime]


class PauseRow(Base):
    """The kill switch (:mod:`heald.pause`): one row (``id`` 1) per database, so every heald
    worker on a shared PostgreSQL sees it. While ``paused`` no remedy is applied anywhere; the
    history of pauses and resumes is in the audit log (``heald.paused``, ``heald.resumed``)."""

    __tablename__ = "heald_pause"
    id: Mapped[int] = mapped_column(primary_key=True)
    paused: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    actor: Mapped[str] = mapped_column(sa.String(200), default="")
    changed_at: Mapped[datetime]


class WorkerRow(Base):
    """One heald worker sharing this database (:mod:`heald.engine.cluster`): who it is, where,
    its last heartbeat and, once it stopped or died, which worker recovered its pending
    healings. Times are the database's clock in seconds since the epoch, so that workers on
    machines whose clocks differ compare them alike."""

    __tablename__ = "heald_workers"
    executor_id: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    host: Mapped[str] = mapped_column(sa.String(255))
    pid: Mapped[int]
    version: Mapped[str] = mapped_column(sa.String(50))
    api_url: Mapped[str | None] = mapped_column(sa.String(500))
    state: Mapped[str] = mapped_column(sa.String(20))  # running | stopped | dead
    started_at: Mapped[float]
    heartbeat_at: Mapped[float]
    leader: Mapped[bool] = mapped_column(default=False)
    recovered_by: Mapped[str | None] = mapped_column(sa.String(100))
    recovered_at: Mapped[float | None]
    recovered_workflows: Mapped[int] = mapped_column(default=0)


class ClusterLeaseRow(Base):
    """Which worker runs a probe or log tailer (``name``: ``probe:<service>/<probe>`` or
    ``log:<name>``) until ``expires_at`` (the database's clock, seconds since the epoch); its
    holder renews it with every heartbeat (:mod:`heald.engine.cluster`)."""

    __tablename__ = "heald_leases"
    name: Mapped[str] = mapped_column(sa.String(500), primary_key=True)
    executor_id: Mapped[str] = mapped_column(sa.String(100))
    acquired_at: Mapped[float]
    expires_at: Mapped[float]
