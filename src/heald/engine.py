"""The engine: one durable DBOS workflow heals one incident.

:func:`heal_incident` is the whole pipeline in order, top to bottom: wait for the group to
fill, diagnose and plan, decide, wait for approval if needed, act, verify, learn; repeat with
the next candidate while attempts remain; end resolved, escalated or failed. Each stage is a
DBOS step, so a heald killed at any point resumes the workflow on restart, replaying completed
steps from their recorded results instead of running them again. The act step is additionally
guarded by the action's idempotency key and the remedy's snapshot, so a crash *inside* it does
not apply the remedy twice either (DESIGN.md invariants 3 and 4).

:class:`Runtime` holds what the steps use (configuration, store, supervisor, runbooks) and
wires sources to correlation: :meth:`Runtime.ingest` stores a signal and starts the healing of
the incident it opens.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from datetime import UTC, datetime
from typing import Any

import structlog
from dbos import DBOS, DBOSClient, SetWorkflowID

from heald import __version__, correlate, remedies
from heald._failpoints import failpoint
from heald.config import HealdConfig
from heald.correlate.changes import ChangeTracker
from heald.diagnose import Reasoner, RunbookReasoner, diagnose
from heald.diagnose.kb import KnowledgeBaseReasoner
from heald.diagnose.runbooks import Runbook, load_runbooks
from heald.files import private_dir, private_file
from heald.learn import success_rates
from heald.models import (
    Action,
    ActionStatus,
    DecisionKind,
    Incident,
    IncidentState,
    Outcome,
    OutcomeResult,
    RemedyCandidate,
    Signal,
    SignalStatus,
    utcnow,
)
from heald.notify import Notifier
from heald.plan import candidate_key, make_plan
from heald.policy import count_approvers, gate
from heald.sources.logs import LogTailer
from heald.sources.probes import ProbeRunner
from heald.store import InvalidTransition, NotFound, Store
from heald.store.checkpoints import Checkpointer
from heald.supervise import Supervisor
from heald.verify import checks_for, verify

log = structlog.get_logger("heald.engine")

APPROVAL_TOPIC = "approval"
_runtime: Runtime | None = None


def runtime() -> Runtime:
    """The running Runtime of this process. Raises RuntimeError when none was started."""
    if _runtime is None:
        raise RuntimeError("heald's runtime is not started in this process")
    return _runtime


def workflow_id(incident_id: int) -> str:
    return f"incident-{incident_id}"


def dbos_config(config: HealdConfig) -> dict[str, Any]:
    """DBOS's configuration for heald: its system database, a version pinned to heald's (so a
    restarted heald recovers the workflows the previous one left), this worker's executor id."""
    return {"name": "heald", "system_database_url": config.dbos_database, "application_version": __version__,
            "executor_id": config.executor_id, "log_level": "WARNING",
            "notification_listener_polling_interval_sec": 0.1}


def prepare_state_dir(config: HealdConfig) -> None:
    """Create the state directory readable by its owner only (0700) and DBOS's SQLite file
    0600. When heald runs as root and CI work trees live inside it (the default
    ``<state_dir>/ci``), it is 0711 instead: the sandbox's unprivileged user must traverse it
    to reach the work trees, and still cannot list it (the files in it are 0600 themselves)."""
    mode = 0o700
    if os.geteuid() == 0 and config.ci_work_dir.resolve().is_relative_to(config.state_dir.resolve()):
        mode = 0o711
    private_dir(config.state_dir, mode)
    if config.dbos_database.startswith("sqlite"):
        private_file(config.state_dir / "dbos.sqlite")


def audit_checkpointer(config: HealdConfig, store: Store, notifier: Notifier) -> Checkpointer | None:
    """The writer of signed audit checkpoints that ``audit`` configures (None when
    ``audit.checkpoints`` is false); each new checkpoint also goes to ``audit.notify_channels``."""
    if not config.audit.checkpoints:
        return None
    channels = list(config.audit.notify_channels)
    return Checkpointer(store, config.audit_checkpoint_file, config.audit_key_file,
                        config.audit.checkpoint_interval_seconds,
                        on_written=(lambda cp: notifier.send_audit_checkpoint(channels, cp.as_json())) if channels else None)


class Runtime:
    """A running heald: store, supervisor, probes, log tailers, runbooks, reasoners and the DBOS
    engine.

    ``manage_services`` starts (or adopts) the managed services; ``run_probes`` runs the
    probes; ``tail_logs`` follows the configured logs. One Runtime per process (DBOS is a per-process singleton).
    """

    def __init__(self, config: HealdConfig, *, manage_services: bool = True, run_probes: bool = True,
                 tail_logs: bool = True):
        self.config = config
        self.store = Store(config.database)
        self.supervisor = Supervisor(config)
        self.runbooks: list[Runbook] = load_runbooks(config.runbooks, config.default_runbooks)
        self.reasoners: list[Reasoner] = [RunbookReasoner(self.runbooks), KnowledgeBaseReasoner()]
        if config.llm.enabled:
            from heald.diagnose.llm import LLMReasoner

            self.reasoners.append(LLMReasoner(config.llm, self.runbooks))
        self.manage_services = manage_services
        self.probes = ProbeRunner(config, self.supervisor, self.ingest) if run_probes else None
        self.log_tailers = [LogTailer(lg, self.ingest, config.state_dir / "logs") for lg in config.logs] if tail_logs else []
        self.changes = ChangeTracker(config)
        self.rng = random.Random()  # the plan's Thompson draws; a test may seed it
        self.notifier = Notifier(config.notifications, self.store)
        self.checkpointer: Checkpointer | None = None
        self.started = False
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Migrate the store, start the audit checkpoints, adopt or start managed services,
        launch DBOS (which resumes any healing a previous heald left unfinished), start missing
        workflows, start probes. Raises CheckpointError for an unusable audit key file."""
        global _runtime
        if _runtime is not None and _runtime is not self:
            raise RuntimeError("another heald Runtime is already running in this process")
        prepare_state_dir(self.config)
        self.store.migrate()
        self.checkpointer = audit_checkpointer(self.config, self.store, self.notifier)
        if self.checkpointer is not None:
            self.checkpointer.start()  # a bad key file stops heald here, before anything runs
        _runtime = self
        services = self.supervisor.start_all() if self.manage_services else {}
        DBOS(config=dbos_config(self.config))  # type: ignore[arg-type]
        DBOS.launch()
        self.started = True
        self.store.record(actor="heald", event="heald.started", reason=f"heald {__version__} started",
                          details={"executor_id": self.config.executor_id, "services": services,
                                   "database": self.store.engine.url.render_as_string(hide_password=True)})
        self.resume_open_incidents()
        if self.probes:
            self.probes.start()
        for tailer in self.log_tailers:
            tailer.start()

    def stop(self, *, stop_services: bool = False) -> None:
        """Stop probes and DBOS, write a last audit checkpoint; with ``stop_services`` also
        the managed services."""
        global _runtime
        if self.probes:
            self.probes.stop()
        for tailer in self.log_tailers:
            tailer.stop()
        if self.started:
            # Workflows still waiting (an approval, a cooldown) stay PENDING and resume at the next
            # start; their threads fail noisily as DBOS goes away, which is expected here.
            logging.getLogger("dbos").setLevel(logging.CRITICAL)
            sys_db = _system_database()
            DBOS.destroy(destroy_registry=False)
            _wake_recv_waiters(sys_db)  # a healing in DBOS.recv (an approval wait) would hold the exit for up to 300 s
            self.started = False
        if self.checkpointer is not None:
            self.checkpointer.stop()  # a last checkpoint covers everything written until now
            self.checkpointer = None
        if stop_services:
            self.supervisor.stop_all()
        self.store.close()
        if _runtime is self:
            _runtime = None

    def resume_open_incidents(self) -> int:
        """Start the workflow of every open incident that has none (a crash between storing a
        signal and starting its workflow). Idempotent: a workflow id is never started twice."""
        started = 0
        for inc in self.store.list_incidents(limit=10_000):
            if not inc.state.terminal:
                self.start_healing(inc.id)
                started += 1
        return started

    # -- intake ----------------------------------------------------------------------------
    def ingest(self, signal: Signal, actor: str | None = None) -> correlate.IngestResult:
        """Store and correlate ``signal``; start healing the incident it opens."""
        return self.ingest_many([signal], actor)[0]

    def ingest_many(self, signals: list[Signal], actor: str | None = None) -> list[correlate.IngestResult]:
        """Store and correlate ``signals`` in one transaction (all or none: a webhook's batch is
        accepted whole), then start healing the incidents they open. Each signal is first
        annotated with the changes that may have caused it (:mod:`heald.correlate.changes`);
        one claiming to be heald's own sandbox finding is made inert
        (:func:`heald.ci.incident.from_outside`)."""
        from heald.ci.incident import from_outside

        signals = [self.changes.annotate(from_outside(s)) for s in signals]
        with self.store.tx() as session:
            results = [correlate.ingest(session, s, self.config, actor=actor) for s in signals]
        failpoint("ingest.after_commit")
        for signal, result in zip(signals, results, strict=True):
            log.info("signal.ingested", source=signal.source, service=signal.service, status=signal.status.value,
                     incident_id=result.incident_id, opened=result.opened)
            if result.opened and result.incident_id is not None:
                self.start_healing(result.incident_id)
        return results

    def ingest_delivery(self, source: str, delivery_id: str, signals: list[Signal],
                        actor: str | None = None) -> list[correlate.IngestResult] | None:
        """Store and correlate one webhook delivery's signals together with its delivery id;
        None (nothing stored) for a redelivery. Each signal is annotated with its suspect
        changes first (as in :meth:`ingest_many`). Starts healing the incidents they open."""
        from heald.ci.incident import from_outside
        from heald.correlate.deliveries import ingest_delivery

        signals = [self.changes.annotate(from_outside(s)) for s in signals]
        with self.store.tx() as session:
            results = ingest_delivery(session, source, delivery_id, signals, self.config, actor=actor)
        if results is None:
            log.info("delivery.duplicate_dropped", source=source, delivery=delivery_id)
            return None
        for r in results:
            if r.opened and r.incident_id is not None:
                self.start_healing(r.incident_id)
        return results

    def start_healing(self, incident_id: int) -> None:
        """Start (or find, if already started) the durable workflow of an incident."""
        with SetWorkflowID(workflow_id(incident_id)):
            DBOS.start_workflow(heal_incident, incident_id)

    # -- approvals -------------------------------------------------------------------------
    def approve(self, incident_id: int, approver: str, verdict: str, comment: str = "") -> dict[str, Any]:
        """Record an approver's verdict and wake the workflow. See :func:`submit_approval`."""
        return submit_approval(self.store, incident_id, approver, verdict, comment,
                               lambda wf, msg: DBOS.send(wf, msg, topic=APPROVAL_TOPIC))


def submit_approval(store: Store, incident_id: int, approver: str, verdict: str, comment: str,
                    send: Any) -> dict[str, Any]:
    """Record ``verdict`` (``approve`` or ``reject``) by ``approver`` on the incident's pending
    decision and send the workflow a wake-up through ``send(workflow_id, message)``.

    Returns {"incident_id", "counted", "approvals", "required", "state", "counts_as"}. An
    approver counts once per decision (``counted`` False on a repeat), and approvals count
    once per human (:func:`approval_tally`): ``counts_as`` is the approver's root identity.
    Raises NotFound, and InvalidTransition when the incident is not awaiting approval.
    """
    if verdict not in ("approve", "reject"):
        raise ValueError(f"verdict: expected 'approve' or 'reject', got {verdict!r}")
    inc = store.get_incident(incident_id)
    if inc.state != IncidentState.awaiting_approval:
        raise InvalidTransition(f"incident {incident_id} is {inc.state.value}, not awaiting_approval")
    decision_id = store.latest_decision_id(incident_id)
    assert decision_id is not None
    root = store.identity_roots([approver])[approver]
    counted = store.add_approval(incident_id, decision_id, approver, verdict, comment, counts_as=root)
    send(workflow_id(incident_id), {"decision_id": decision_id, "approver": approver, "verdict": verdict})
    required = next((d["required_approvals"] for d in store.decisions_for(incident_id) if d["id"] == decision_id), 1)
    return {"incident_id": incident_id, "counted": counted, "approvals": approval_tally(store, incident_id, decision_id),
            "required": required, "state": store.get_incident(incident_id).state.value, "counts_as": root}


def approval_tally(store: Store, incident_id: int, decision_id: int) -> int:
    """How many humans approved the decision: distinct root identities
    (:func:`heald.policy.count_approvers`)."""
    votes = store.approvals_for(incident_id, decision_id)
    return len(count_approvers(votes, store.identity_roots(v["approver"] for v in votes)))


def client_send(config: HealdConfig) -> Any:
    """A ``send`` for :func:`submit_approval` from a process that does not run the engine (the
    CLI): a DBOS client on the system database."""
    def send(wf: str, message: dict[str, Any]) -> None:
        client = DBOSClient(system_database_url=config.dbos_database, application_name="heald")
        try:
            client.send(wf, message, topic=APPROVAL_TOPIC)
        finally:
            client.destroy()
    return send


def _system_database() -> Any:
    """DBOS's system database object of this process, or None (DBOS has no public call for it)."""
    try:
        from dbos._dbos import _dbos_global_instance

        return getattr(_dbos_global_instance, "_sys_db_field", None)
    except ImportError:
        return None


def _wake_recv_waiters(sys_db: Any, grace: float = 5.0) -> None:
    """After ``DBOS.destroy``: wake this process's workflow threads blocked in ``DBOS.recv`` (an
    approval wait), including one that reaches its recv during the next ``grace`` seconds, so
    they end now — their workflows stay PENDING in the system database and resume at the next
    start — instead of at the end of their recv timeout, which holds the process's exit.
    Without DBOS's internals (another DBOS version) the exit waits for the timeouts, as before."""
    waiters = getattr(sys_db, "notifications_map", None)
    if waiters is None or not hasattr(waiters, "snapshot"):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        for _, _, signal in waiters.snapshot():
            signal.set()
        if not any(t.name.startswith("dbos-executor") and t.is_alive() for t in threading.enumerate()):
            return
        time.sleep(0.05)


# == the workflow ==========================================================================

@DBOS.workflow(max_recovery_attempts=50)
def heal_incident(incident_id: int) -> str:
    """Heal one incident; returns its final state. Reads top to bottom as the pipeline."""
    cfg = runtime().config.healing
    if cfg.group_wait_seconds > 0:
        DBOS.sleep(cfg.group_wait_seconds)  # let correlated signals join before diagnosing
    reproduce_step(incident_id)  # a CI failure: reproduced in the sandbox once; the findings join as a signal
    tried: list[dict[str, Any]] = []  # per failed attempt: {"key": candidate_key, "rolled_back": bool}
    attempt = 0
    while True:
        attempt += 1
        found = diagnose_step(incident_id, attempt, tried)
        if found.get("closed"):
            return found["closed"]
        decision = decide_step(incident_id, attempt, found)
        if decision["kind"] in (DecisionKind.escalate.value, DecisionKind.refuse.value):
            return close_step(incident_id, IncidentState.escalated.value, decision["reason"], None)
        if decision["kind"] == DecisionKind.approval.value:
            verdict = await_approval(incident_id, decision)
            if verdict != "approved":
                return close_step(incident_id, IncidentState.escalated.value, verdict, None)
        candidate = decision["candidate"]
        if (busy := await_lease(incident_id, decision["target"])) is not None:
            return close_step(incident_id, IncidentState.escalated.value, busy, None)
        acted = act_step(incident_id, attempt, candidate)
        if acted.get("closed"):
            return acted["closed"]
        if acted["status"] == ActionStatus.succeeded.value:
            verification = verify_step(incident_id, acted["action_id"], found.get("verify", {}))
        else:
            verification = {"passed": False, "reason": f"the remedy failed: {acted['output'][-300:]}"}
        undone = False
        if not verification["passed"] and acted.get("undo") is not None:
            undone = undo_step(incident_id, acted["action_id"], candidate)  # back to how it was before
        learn_step(incident_id, attempt, found["category"], candidate["remedy"], verification["passed"], undone)
        breaker_step(incident_id, decision["target"], verification["passed"], verification["reason"])
        if verification["passed"]:
            return close_step(incident_id, IncidentState.resolved.value,
                              f"healed by {candidate['remedy']}: {verification['reason']}", verification)
        tried.append({"key": candidate_key(candidate["remedy"], candidate["params"]), "rolled_back": undone})
        if attempt >= cfg.max_attempts:
            return close_step(incident_id, IncidentState.escalated.value,
                              f"attempt budget spent: {attempt} of {cfg.max_attempts} attempts made, none healed it; "
                              f"last: {verification['reason']}", None)
        if cfg.cooldown_seconds > 0:
            DBOS.sleep(cfg.cooldown_seconds)


def _firing(signals: list[Signal]) -> bool:
    """Is any fingerprint of these signals still firing (its latest signal not resolved)?"""
    return bool(still_firing(signals))


def still_firing(signals: list[Signal]) -> list[Signal]:
    """The signals whose fingerprint has not resolved since (in arrival order)."""
    latest: dict[str, SignalStatus] = {}
    for s in signals:
        latest[s.fingerprint or ""] = s.status
    return [s for s in signals if s.status == SignalStatus.firing and latest[s.fingerprint or ""] == SignalStatus.firing]


def _close_if_resolved_by_source(rt: Runtime, incident: Incident, signals: list[Signal]) -> str | None:
    """Never act on a resolved alert: when every signal has resolved, end the incident."""
    if _firing(signals):
        return None
    ended = max((s.ends_at or s.received_at or utcnow() for s in signals if s.status == SignalStatus.resolved),
                default=utcnow())
    rt.store.transition(incident.id, IncidentState.resolved, reason="every signal resolved at its source before heald acted",
                        recovered_at=ended)
    rt.store.add_outcome(Outcome(incident_id=incident.id, category=incident.category or "unknown", remedy=None,
                                 result=OutcomeResult.healed, time_to_detect_s=incident.time_to_detect_s,
                                 time_to_recover_s=max(0.0, (ended - incident.started_at).total_seconds())))
    notify(rt, incident.id, IncidentState.resolved.value, "every signal resolved at its source before heald acted")
    return IncidentState.resolved.value


@DBOS.step()
def reproduce_step(incident_id: int) -> str | None:
    """CI incidents: reproduce the failure in the sandbox, once (:func:`heald.ci.incident.reproduce_incident`).
    Returns the verdict, or None for an incident that is not a CI failure."""
    from heald.ci.incident import reproduce_incident

    rt = runtime()
    if rt.store.get_incident(incident_id).state.terminal:
        return None
    return reproduce_incident(rt.config, rt.store, incident_id)


@DBOS.step()
def diagnose_step(incident_id: int, attempt: int, tried: list[dict[str, Any]]) -> dict[str, Any]:
    """Diagnose and plan: the next candidate is one not tried yet on this incident when there
    is one; a remedy that was tried and rolled back is not tried again. Returns {"category",
    "confidence", "candidates", "verify", ...} or {"closed": state} when the incident ended
    (its signals resolved)."""
    rt = runtime()
    inc = rt.store.get_incident(incident_id)
    if inc.state.terminal:
        return {"closed": inc.state.value}
    signals = rt.store.signals_for(incident_id)
    if (closed := _close_if_resolved_by_source(rt, inc, signals)) is not None:
        return {"closed": closed}
    rt.store.transition(incident_id, IncidentState.diagnosing, reason=f"attempt {attempt}: diagnosing {len(signals)} signals")
    rt.store.bump_attempts(incident_id, attempt)
    active = still_firing(signals)  # a condition that has resolved (a restart's blip) is not evidence
    finding = diagnose(inc, active, rt.reasoners, rt.runbooks)
    record_diagnosis(rt.store, incident_id, finding)
    result = make_plan(incident_id, finding, active, {t["key"] for t in tried},
                       success_rates(rt.store, finding.diagnosis.category), rng=rt.rng)
    rolled_back = {t["key"] for t in tried if t.get("rolled_back")}
    kept = [c for c in result.plan.candidates if candidate_key(c.remedy, c.params) not in rolled_back]
    for c in result.plan.candidates:
        if c not in kept:
            result.dropped.append(f"{c.remedy} {c.params}: tried on this incident, did not heal it, and was undone")
    result.plan = result.plan.model_copy(update={"candidates": kept})
    rt.store.add_plan(result.plan)
    for why in result.dropped:
        rt.store.record(actor="heald", event="plan.candidate_dropped", incident_id=incident_id, reason=why)
    verify_overrides = finding.runbook.verify.model_dump(exclude_none=True) if finding.runbook else {}
    return {"category": finding.diagnosis.category, "confidence": finding.diagnosis.confidence,
            "diagnosis": finding.diagnosis.model_dump(mode="json"),
            "candidates": [c.model_dump(mode="json") for c in result.plan.candidates], "verify": verify_overrides}


def record_diagnosis(store: Store, incident_id: int, finding: Any) -> None:
    """Store the diagnosis the gate will see, with every reasoner's own hypothesis and the
    fallbacks taken (audit), what the LLM calls cost, and each LLM answer refused for being
    off-catalog or malformed (``llm.answer_refused``)."""
    if len(finding.hypotheses) > 1 or finding.notes:
        store.record(actor="heald", event="diagnosis.hypotheses", incident_id=incident_id,
                     reason="; ".join([*(f"{h.reasoner}: {h.category} ({h.confidence:.2f})" for h in finding.hypotheses),
                                       *finding.notes]),
                     details={"hypotheses": [h.model_dump(mode="json", exclude_none=True) for h in finding.hypotheses],
                              "notes": list(finding.notes)})
    for u in finding.usage:
        store.add_llm_usage(incident_id, u)
        if u.get("refused"):
            store.record(actor="heald", event="llm.answer_refused", incident_id=incident_id,
                         reason=f"the {u.get('reasoner', 'llm')} answer was refused, heald fell back to the deterministic "
                                f"reasoners: {u['refused']}",
                         details={"model": u.get("model"), "reasoner": u.get("reasoner")})
    store.add_diagnosis(incident_id, finding.diagnosis)


@DBOS.step()
def decide_step(incident_id: int, attempt: int, found: dict[str, Any]) -> dict[str, Any]:
    """Run the gate (:func:`heald.policy.gate`) over the plan's candidates under the incident's
    environment and the budgets; record every skipped candidate and the decision. Returns the
    decision as a dict with its ``decision_id`` and the ``target`` of its candidate."""
    rt = runtime()
    from heald.budgets import Budgets
    from heald.models import Diagnosis

    inc = rt.store.transition(incident_id, IncidentState.deciding, reason="the gate decides")
    candidates = [RemedyCandidate.model_validate(c) for c in found["candidates"]]
    result = gate(Diagnosis.model_validate(found["diagnosis"]), candidates, rt.config.policy,
                  Budgets(rt.config, rt.store, incident_id, supervisor=rt.supervisor),
                  attempt=attempt, max_attempts=rt.config.healing.max_attempts, environment=inc.environment)
    for skipped, why in result.skipped:
        rt.store.record(actor="policy", event="gate.skipped", incident_id=incident_id, reason=why,
                        details={"remedy": skipped.remedy, "params": skipped.params, "environment": inc.environment})
    d = result.decision
    decision_id = rt.store.add_decision(incident_id, d)
    return {"decision_id": decision_id, "kind": d.kind.value, "reason": d.reason,
            "required_approvals": d.required_approvals, "target": result.target,
            "candidate": d.candidate.model_dump(mode="json") if d.candidate else None}


def await_lease(incident_id: int, target: str) -> str | None:
    """Wait (durably) until this incident holds the lease on ``target`` (one healing per target
    at a time, :mod:`heald.budgets`). Returns None once held, or the reason to escalate when
    another healing kept it longer than ``policy.budgets.lease_wait_seconds``."""
    budgets = runtime().config.policy.budgets
    deadline = now_step() + budgets.lease_wait_seconds
    while True:
        lease = lease_step(incident_id, target)
        if lease["held"]:
            return None
        if now_step() >= deadline:
            return (f"{target} is being healed by incident {lease['incident_id']} ({lease['holder']}); waited "
                    f"{budgets.lease_wait_seconds:g} s for it")
        DBOS.sleep(budgets.lease_poll_seconds)


@DBOS.step()
def lease_step(incident_id: int, target: str) -> dict[str, Any]:
    """Take or renew the lease on ``target`` (see :func:`heald.budgets.acquire_lease`)."""
    from heald.budgets import acquire_lease

    rt = runtime()
    return acquire_lease(rt.store, target, incident_id, rt.config.executor_id, rt.config.policy.budgets.lease_seconds)


@DBOS.step()
def breaker_step(incident_id: int, target: str, passed: bool, reason: str) -> None:
    """Count the verification on the target's circuit breaker, and free the target's lease."""
    from heald.budgets import record_verification, release_lease

    rt = runtime()
    record_verification(rt.store, target, passed, incident_id, rt.config.policy.budgets.breaker_failures, reason)
    release_lease(rt.store, incident_id, target)


def await_approval(incident_id: int, decision: dict[str, Any]) -> str:
    """Wait (durably) until enough distinct humans approve (one per root identity), one
    rejects, or the TTL passes.
    Returns ``approved`` or the reason it was not."""
    ttl = runtime().config.healing.approval_ttl_seconds
    enter_approval_step(incident_id, decision)
    deadline = now_step() + ttl
    while True:
        status = approval_status_step(incident_id, decision["decision_id"], decision["required_approvals"])
        if status["verdict"] == "approved":
            return "approved"
        if status["verdict"] == "rejected":
            return f"rejected by {status['by']}: {status['comment'] or 'no reason given'}"
        remaining = deadline - now_step()
        if remaining <= 0:
            return expire_approval_step(incident_id, ttl)
        DBOS.recv(APPROVAL_TOPIC, timeout_seconds=min(remaining, 300.0))


@DBOS.step()
def now_step() -> float:
    """The wall clock (epoch seconds), recorded so a replay sees the same value."""
    return time.time()


@DBOS.step()
def enter_approval_step(incident_id: int, decision: dict[str, Any]) -> None:
    n = decision["required_approvals"]
    runtime().store.transition(incident_id, IncidentState.awaiting_approval,
                               reason=f"waiting for {n} approval{'s' if n > 1 else ''}: {decision['reason']}",
                               details={"decision_id": decision["decision_id"], "remedy": decision["candidate"]["remedy"]})
    notify(runtime(), incident_id, IncidentState.awaiting_approval.value,
           f"{decision['candidate']['remedy']} waits for {n} approval{'s' if n > 1 else ''}: {decision['reason']}")


@DBOS.step()
def approval_status_step(incident_id: int, decision_id: int, required: int) -> dict[str, Any]:
    votes = runtime().store.approvals_for(incident_id, decision_id)
    for v in votes:
        if v["verdict"] == "reject":
            return {"verdict": "rejected", "by": v["approver"], "comment": v["comment"]}
    humans = count_approvers(votes, runtime().store.identity_roots(v["approver"] for v in votes))
    return {"verdict": "approved" if len(humans) >= required else "pending", "count": len(humans)}


@DBOS.step()
def expire_approval_step(incident_id: int, ttl: float) -> str:
    reason = f"approval expired: no decision within {ttl:g} s"
    runtime().store.record(actor="heald", event="approval.expired", incident_id=incident_id, reason=reason)
    return reason


@DBOS.step()
def act_step(incident_id: int, attempt: int, candidate: dict[str, Any]) -> dict[str, Any]:
    """Apply the candidate remedy at most once (idempotency key + guard; see the module
    docstring). Returns {"action_id", "status", "output", "undo"} or {"closed": state}."""
    rt = runtime()
    inc = rt.store.get_incident(incident_id)
    closed = inc.state.value if inc.state.terminal else _close_if_resolved_by_source(rt, inc, rt.store.signals_for(incident_id))
    if closed is not None:
        from heald.budgets import release_lease

        release_lease(rt.store, incident_id)
        return {"closed": closed}
    remedy = remedies.get(candidate["remedy"])
    params = remedies.validate_params(remedy.name, candidate["params"])
    key = f"{workflow_id(incident_id)}:attempt-{attempt}:{remedy.name}"
    ctx = remedies.RemedyContext(config=rt.config, supervisor=rt.supervisor, incident=inc,
                                 extra={"idempotency_key": key}, store=rt.store)
    rt.store.transition(incident_id, IncidentState.acting, reason=f"applying {remedy.name} to {remedy.target(params)}",
                        details={"remedy": remedy.name, "params": candidate["params"]})
    try:
        snapshot = remedy.snapshot(params, ctx)
    except remedies.RemedyError as exc:
        snapshot = {"error": str(exc)}
    action, new = rt.store.begin_action(Action(incident_id=incident_id, attempt=attempt, remedy=remedy.name,
                                               params=candidate["params"], idempotency_key=key, snapshot=snapshot,
                                               target=str(remedy.target(params))))
    assert action.id is not None
    if not new and action.status != ActionStatus.started:
        return {"action_id": action.id, "status": action.status.value, "output": action.output, "undo": action.undo}
    if not new and _guard_saw_effect(remedy, params, ctx, action.snapshot):
        done = rt.store.finish_action(action.id, ActionStatus.succeeded,
                                      "already applied before heald restarted (the guard saw its effect); not applied again")
        return {"action_id": action.id, "status": done.status.value, "output": done.output, "undo": None}
    try:
        result = remedy.apply(params, ctx)
    except Exception as exc:  # any failure of a remedy is an outcome, recorded with its reason
        failed = rt.store.finish_action(action.id, ActionStatus.failed, f"{exc.__class__.__name__}: {exc}")
        return {"action_id": action.id, "status": failed.status.value, "output": failed.output, "undo": None}
    failpoint("act.after_apply")
    done = rt.store.finish_action(action.id, ActionStatus.succeeded, result.output, result.undo)
    return {"action_id": action.id, "status": done.status.value, "output": done.output, "undo": result.undo}


def _guard_saw_effect(remedy: remedies.Remedy, params: remedies.RemedyParams, ctx: remedies.RemedyContext,
                      snapshot: dict[str, Any] | None) -> bool:
    """The remedy's guard after a crash mid-apply; a guard that cannot tell says no (apply then
    runs and records its own failure, if any)."""
    try:
        return remedy.already_applied(params, ctx, snapshot)
    except Exception:  # the guard's failure is logged; apply decides and is recorded
        log.exception("guard.failed", remedy=remedy.name)
        return False


@DBOS.step()
def verify_step(incident_id: int, action_id: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """Re-check the system over the stabilization window; record the verification."""
    failpoint("verify.before")
    rt = runtime()
    cfg = rt.config.healing
    rt.store.transition(incident_id, IncidentState.verifying, reason="verifying recovery")
    inc = rt.store.get_incident(incident_id)
    v = verify(incident_id, checks_for(inc, rt.config, rt.store, rt.supervisor),
               stabilization=overrides.get("stabilization_seconds", cfg.stabilization_seconds),
               interval=cfg.verify_interval_seconds,
               timeout=overrides.get("timeout_seconds", cfg.verify_timeout_seconds), action_id=action_id)
    rt.store.add_verification(v)
    return {"passed": v.passed, "reason": v.reason,
            "recovered_at": v.recovered_at.isoformat() if v.recovered_at else None}


@DBOS.step()
def learn_step(incident_id: int, attempt: int, category: str, remedy: str, healed: bool,
               rolled_back: bool = False) -> None:
    """Record the attempt's outcome for learning (:mod:`heald.learn`): healed, not healed, or
    rolled back (not healed, and undone)."""
    result = OutcomeResult.healed if healed else OutcomeResult.rolled_back if rolled_back else OutcomeResult.not_healed
    runtime().store.add_outcome(Outcome(incident_id=incident_id, category=category, remedy=remedy, attempt=attempt,
                                        result=result))


@DBOS.step()
def undo_step(incident_id: int, action_id: int, candidate: dict[str, Any]) -> bool:
    """Undo a remedy that did not heal, when it has an undo. Returns whether it was undone (a
    failed undo is recorded, and the healing goes on)."""
    rt = runtime()
    remedy = remedies.get(candidate["remedy"])
    action = next(a for a in rt.store.actions_for(incident_id) if a.id == action_id)
    params = remedies.validate_params(remedy.name, candidate["params"])
    ctx = remedies.RemedyContext(config=rt.config, supervisor=rt.supervisor, incident=rt.store.get_incident(incident_id),
                                  store=rt.store)
    try:
        out = remedy.undo(params, ctx, action.undo or {}).output
        rt.store.record(actor="heald", event="action.undone", incident_id=incident_id, reason=out,
                        details={"action_id": action_id, "remedy": remedy.name})
        return True
    except Exception as exc:  # a failed undo is recorded, and the incident goes on
        rt.store.record(actor="heald", event="action.undo_failed", incident_id=incident_id,
                        reason=f"{exc.__class__.__name__}: {exc}", details={"action_id": action_id})
        return False


@DBOS.step()
def close_step(incident_id: int, state: str, reason: str, verification: dict[str, Any] | None) -> str:
    """End the incident (resolved or escalated) with its outcome and timings."""
    from heald.budgets import release_lease

    rt = runtime()
    release_lease(rt.store, incident_id)
    inc = rt.store.get_incident(incident_id)
    if inc.state.terminal:
        return inc.state.value
    target = IncidentState(state)
    fields: dict[str, Any] = {}
    if verification and verification.get("recovered_at"):
        fields["recovered_at"] = datetime.fromisoformat(verification["recovered_at"]).astimezone(UTC)
    try:
        inc = rt.store.transition(incident_id, target, reason=reason, **fields)
    except (InvalidTransition, NotFound):
        log.exception("close.failed", incident_id=incident_id, state=state)
        inc = rt.store.transition(incident_id, IncidentState.failed, reason=f"could not close as {state}: {reason}")
        notify(rt, incident_id, inc.state.value, inc.closed_reason or reason)
        return inc.state.value
    actions = rt.store.actions_for(incident_id)
    rt.store.add_outcome(Outcome(
        incident_id=incident_id, category=inc.category or "unknown",
        remedy=actions[-1].remedy if actions and target == IncidentState.resolved else None,
        result=OutcomeResult.healed if target == IncidentState.resolved else OutcomeResult.escalated,
        attempt=0, time_to_detect_s=inc.time_to_detect_s, time_to_recover_s=inc.time_to_recover_s))
    notify(rt, incident_id, inc.state.value, reason)
    return inc.state.value


def notify(rt: Runtime, incident_id: int, event: str, reason: str) -> None:
    """Tell the configured channels (:mod:`heald.notify`); a failure to notify never breaks the
    healing (it is in the audit log, and here only logged)."""
    try:
        rt.notifier.notify(incident_id, event, reason)
    except Exception:
        log.exception("notify.failed", incident_id=incident_id, notify_event=event)
