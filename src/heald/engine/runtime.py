"""The running heald: :class:`Runtime` and what starts, stops and feeds the healings.

:class:`Runtime` holds what the stages use (configuration, store, supervisor, runbooks,
reasoners, notifier; :meth:`Runtime.deps` hands them to :mod:`heald.engine.steps`), starts DBOS
(which resumes unfinished healings) and wires sources to correlation: :meth:`Runtime.ingest`
stores a signal and starts the healing (:func:`heald.engine.workflow.heal_incident`) of the
incident it opens. :func:`submit_approval` records a human's verdict and wakes the workflow.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import Any

import structlog
from dbos import DBOS, DBOSClient, SetWorkflowID

from heald import __version__, correlate
from heald._failpoints import failpoint
from heald.config import HealdConfig
from heald.correlate.changes import ChangeTracker
from heald.diagnose import Reasoner, RunbookReasoner
from heald.diagnose.kb import KnowledgeBaseReasoner
from heald.diagnose.metrics import metrics_evidence
from heald.diagnose.runbooks import Runbook, load_runbooks
from heald.diagnose.targets import target_logs_evidence
from heald.engine.steps import Deps, workflow_id
from heald.files import private_dir, private_file
from heald.models import IncidentState, Signal
from heald.notify import Notifier
from heald.policy import count_approvers
from heald.sources.logs import LogTailer
from heald.sources.probes import ProbeRunner
from heald.store import InvalidTransition, Store
from heald.store.checkpoints import Checkpointer
from heald.supervise import Supervisor

log = structlog.get_logger("heald.engine")

APPROVAL_TOPIC = "approval"
_runtime: Runtime | None = None


def runtime() -> Runtime:
    """The running Runtime of this process. Raises RuntimeError when none was started."""
    if _runtime is None:
        raise RuntimeError("heald's runtime is not started in this process")
    return _runtime


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
        self.reasoners += metrics_evidence(config)  # recent values of promql probes' queries as evidence
        self.reasoners += target_logs_evidence(config)  # adopted containers' logs, units' journals
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
        from heald.engine.workflow import heal_incident

        with SetWorkflowID(workflow_id(incident_id)):
            DBOS.start_workflow(heal_incident, incident_id)

    def deps(self) -> Deps:
        """What the healing's stages use (:mod:`heald.engine.steps`), from this Runtime."""
        return Deps(config=self.config, store=self.store, supervisor=self.supervisor, reasoners=self.reasoners,
                    runbooks=self.runbooks, notifier=self.notifier, rng=self.rng)

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
