"""The domain model: the words of DESIGN.md as pydantic types.

Every stage of the pipeline takes and returns these types; the store persists them and the API
serves them as JSON. Times are timezone-aware UTC datetimes; durations are float seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from heald.jsontext import clean


def utcnow() -> datetime:
    """The current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


class Severity(StrEnum):
    info = "info"
    warning = "warning"
    error = "error"
    critical = "critical"


class SignalStatus(StrEnum):
    """Whether the condition a signal reports is still true (firing) or over (resolved)."""

    firing = "firing"
    resolved = "resolved"


class IncidentState(StrEnum):
    """The stage of the healing an incident is in (DESIGN.md, "The pipeline")."""

    observing = "observing"
    diagnosing = "diagnosing"
    deciding = "deciding"
    awaiting_approval = "awaiting_approval"
    acting = "acting"
    verifying = "verifying"
    #: heald has stopped acting but the target still fails: a human must act (retry,
    #: acknowledge, resolve); heald waits for them and keeps reminding the channels. Open,
    #: like ``awaiting_approval``: its workflow lives on and new signals join it.
    needs_attention = "needs_attention"
    resolved = "resolved"
    escalated = "escalated"
    failed = "failed"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({IncidentState.resolved, IncidentState.escalated, IncidentState.failed})
OPEN_STATES = frozenset(set(IncidentState) - TERMINAL_STATES)

#: The transitions the state machine allows; anything else is a bug and is refused by the store.
#: Every open state may also end escalated or failed (a bound reached, an error), or be handed
#: over to a human (``needs_attention``) while its target still fails; a human's retry takes a
#: ``needs_attention`` incident back to ``diagnosing`` with a new attempt budget.
ALLOWED_TRANSITIONS: dict[IncidentState, frozenset[IncidentState]] = {
    IncidentState.observing: frozenset({IncidentState.diagnosing, IncidentState.resolved}),
    IncidentState.diagnosing: frozenset({IncidentState.deciding, IncidentState.resolved}),
    IncidentState.deciding: frozenset(
        {IncidentState.awaiting_approval, IncidentState.acting, IncidentState.resolved}
    ),
    IncidentState.awaiting_approval: frozenset({IncidentState.acting, IncidentState.resolved}),
    IncidentState.acting: frozenset({IncidentState.verifying, IncidentState.diagnosing}),
    IncidentState.verifying: frozenset({IncidentState.resolved, IncidentState.diagnosing}),
    IncidentState.needs_attention: frozenset({IncidentState.diagnosing, IncidentState.resolved}),
}
for _state in OPEN_STATES:
    ALLOWED_TRANSITIONS[_state] = ALLOWED_TRANSITIONS.get(_state, frozenset()) | {
        IncidentState.escalated,
        IncidentState.failed,
        IncidentState.needs_attention,
    }


class _Ranked(StrEnum):
    """A string enum whose members are ordered as declared."""

    @property
    def rank(self) -> int:
        return list(type(self)).index(self)


class Risk(_Ranked):
    """How much harm a remedy can do if the diagnosis is wrong."""

    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


class Role(_Ranked):
    """What an API token may do; each role includes the ones before it:
    viewer (read) < operator (send signals, silences, reset breakers) < approver (approve and
    reject remedies) < admin (manage tokens)."""

    viewer = "viewer"
    operator = "operator"
    approver = "approver"
    admin = "admin"

    def allows(self, needed: Role) -> bool:
        """Does this role include ``needed``?"""
        return self.rank >= needed.rank


class DecisionKind(StrEnum):
    auto = "auto"
    approval = "approval"
    escalate = "escalate"
    refuse = "refuse"


class ActionStatus(StrEnum):
    started = "started"
    succeeded = "succeeded"
    failed = "failed"


class OutcomeResult(StrEnum):
    healed = "healed"
    not_healed = "not_healed"
    rolled_back = "rolled_back"
    escalated = "escalated"
    #: every signal resolved at its source after a remedy failed its verification: the target
    #: recovered on its own, which is not a heal (never credited to the remedy)
    recovered_unaided = "recovered_unaided"
    not_applicable = "not_applicable"  # the remedy could not act on its target; learning ignores it
    #: a human closed the incident (``heald incidents resolve``): not a heal by heald
    resolved_by_human = "resolved_by_human"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False)


class Signal(_Model):
    """One normalized observation from a source.

    ``labels`` identify what is observed (they make the fingerprint, as in Alertmanager);
    ``annotations`` describe it. ``fingerprint`` is computed by :mod:`heald.correlate` when the
    source does not provide one. ``raw_ref`` points at the stored raw payload, if any.
    """

    source: str = Field(min_length=1, max_length=100, description="the source that emitted it, e.g. 'probe', 'alertmanager'")
    kind: str = Field(default="alert", min_length=1, max_length=100, description="e.g. 'alert', 'probe_failed', 'ci_failed', 'error_log'")
    service: str | None = Field(default=None, max_length=200, description="the affected service or target")
    status: SignalStatus = SignalStatus.firing
    severity: Severity = Severity.warning
    summary: str = Field(default="", max_length=10_000)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    fingerprint: str | None = Field(default=None, max_length=128)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    raw_ref: str | None = None
    id: int | None = None
    received_at: datetime | None = None
    incident_id: int | None = None
    suppressed_by: str | None = Field(default=None, description="why this signal starts nothing (silence, inhibition), if it does")
    group: str | None = Field(default=None, max_length=2000,
                              description="the sender's own grouping (Alertmanager's groupKey): the signals of one "
                                          "group join one incident")

    @field_validator("starts_at", "ends_at", "received_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            return v.replace(tzinfo=UTC)
        if v is not None:
            try:  # stored as UTC: a time whose UTC form leaves years 1-9999 cannot be
                return v.astimezone(UTC)
            except OverflowError:
                raise ValueError("a time whose UTC form lies within the years 1 to 9999") from None
        return v

    @field_validator("source", "kind", "service", "summary", "fingerprint", mode="before")
    @classmethod
    def _storable_text(cls, v: Any) -> Any:
        return clean(v) if isinstance(v, str) else v

    @field_validator("labels", "annotations", mode="after")
    @classmethod
    def _storable_dict(cls, v: dict[str, str]) -> dict[str, str]:
        # Lone UTF-16 surrogates cannot be encoded as UTF-8 (a stored one broke every read of
        # its incident), NUL cannot be stored in PostgreSQL text. Request bodies with either are
        # refused with 422 before this (heald.jsontext.loads); what remains (a log line read
        # with surrogateescape, probe output, a row an older heald stored) becomes U+FFFD here.
        return {clean(k): clean(x) for k, x in v.items()}


class Incident(_Model):
    """A group of signals with the same grouping key: the unit that gets healed.

    ``started_at`` is the earliest ``starts_at`` of its signals (when the failure began, as far
    as any source saw), ``detected_at`` when heald opened the incident, ``recovered_at`` when
    verification first saw the system healthy again, ``closed_at`` when it reached a terminal
    state. ``closed_reason`` says why it ended — or, while it is ``needs_attention``, why heald
    handed it over to a human.
    """

    id: int
    title: str
    service: str | None
    state: IncidentState
    severity: Severity
    fingerprint: str
    group_key: str
    labels: dict[str, str] = Field(default_factory=dict)
    category: str | None = None
    environment: str = "development"
    attempts: int = 0
    started_at: datetime
    detected_at: datetime
    updated_at: datetime
    recovered_at: datetime | None = None
    closed_at: datetime | None = None
    closed_reason: str | None = None

    @property
    def time_to_detect_s(self) -> float:
        return max(0.0, (self.detected_at - self.started_at).total_seconds())

    @property
    def time_to_recover_s(self) -> float | None:
        if self.recovered_at is None:
            return None
        return max(0.0, (self.recovered_at - self.started_at).total_seconds())


#: The reasoners whose findings are deterministic (runbooks, the signature knowledge base): the
#: only ones whose confidence the gate acts on by itself. Any other reasoner (the LLM) is a
#: proposal: see :func:`heald.policy.grounded_confidence`.
DETERMINISTIC_REASONERS = frozenset({"runbook", "kb"})


class Diagnosis(_Model):
    """A hypothesis about what is wrong: category, explanation, evidence, confidence in [0, 1].

    ``deterministic_confidence`` is, for a hypothesis of a reasoner outside
    :data:`DETERMINISTIC_REASONERS` (the LLM), the highest confidence a deterministic reasoner
    gives the same category (or a cause of it); None when none supports it, i.e. the finding
    rests on that reasoner alone. Set by :func:`heald.diagnose.diagnose`; read by the gate."""

    category: str
    explanation: str = ""
    evidence: list[str] = Field(default_factory=list)
    confidence: float = Field(ge=0.0, le=1.0)
    reasoner: str
    runbook: str | None = None
    deterministic_confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    id: int | None = None
    incident_id: int | None = None
    created_at: datetime | None = None


class RemedyCandidate(_Model):
    """One remedy the plan proposes, with rendered parameters and its risk."""

    remedy: str
    params: dict[str, Any] = Field(default_factory=dict)
    risk: Risk = Risk.low
    runbook: str | None = None
    success_rate: float | None = Field(default=None, description="learned posterior mean of success, if known")
    samples: int = 0
    score: float | None = Field(default=None, description="the Thompson draw the plan ranked it by (None: no "
                                                          "candidate had history, runbook order held)")


class Plan(_Model):
    """Candidate remedies for an incident, best first."""

    incident_id: int
    candidates: list[RemedyCandidate] = Field(default_factory=list)
    created_at: datetime | None = None


class Decision(_Model):
    """What the gate decided for one candidate, and why."""

    kind: DecisionKind
    reason: str
    required_approvals: int = 0
    candidate: RemedyCandidate | None = None


class Action(_Model):
    """One application of a remedy. ``idempotency_key`` makes a replay apply it at most once."""

    id: int | None = None
    incident_id: int
    attempt: int
    remedy: str
    params: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str
    status: ActionStatus = ActionStatus.started
    output: str = ""
    snapshot: dict[str, Any] | None = Field(default=None, description="the target's state before applying, for the idempotency guard")
    undo: dict[str, Any] | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    target: str | None = Field(default=None, description="what the remedy acts on (service:shop, url:…), for budgets")


class CheckResult(_Model):
    """One check run during verification (a probe, a query)."""

    name: str
    ok: bool
    detail: str = ""
    at: datetime | None = None


class Verification(_Model):
    """Whether the system recovered: checks passed continuously for the stabilization window."""

    incident_id: int
    action_id: int | None = None
    passed: bool
    reason: str = ""
    checks: list[CheckResult] = Field(default_factory=list)
    recovered_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Outcome(_Model):
    """What one attempt came to (``attempt`` ≥ 1), or the whole incident (``attempt`` 0, with
    its time to detect and time to recover in seconds)."""

    incident_id: int
    category: str
    remedy: str | None
    result: OutcomeResult
    attempt: int = 0
    time_to_detect_s: float | None = None
    time_to_recover_s: float | None = None
    created_at: datetime | None = None


class AuditEntry(_Model):
    """One entry of the hash-chained audit log (see :mod:`heald.store.audit`)."""

    seq: int
    ts: datetime
    actor: str
    event: str
    incident_id: int | None = None
    reason: str = ""
    details: dict[str, Any] = Field(default_factory=dict)
    prev_hash: str
    hash: str


class ApiToken(_Model):
    """An API token as heald shows it: never the token itself, which only its creator saw once.
    ``name`` is the identity it authenticates; ``root_identity`` the human it counts as when
    approvals are counted (see :mod:`heald.auth`)."""

    id: int
    name: str
    role: Role
    prefix: str
    created_by: str
    root_identity: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None

    def active(self, now: datetime | None = None) -> bool:
        """Not revoked and not expired at ``now`` (default: the current time)."""
        now = now or utcnow()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)
