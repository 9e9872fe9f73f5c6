"""The running heald: :class:`Runtime` and what starts, stops and feeds the healings.

:class:`Runtime` holds what the stages use (configuration, store, supervisor, runbooks,
reasoners, notifier; :meth:`Runtime.deps` hands them to :mod:`heald.engine.steps`), starts DBOS
(which resumes unfinished healings) and wires sources to correlation: :meth:`Runtime.ingest`
stores a signal and, once committed, enqueues the healing (:func:`heald.engine.workflow.heal_incident`)
of the incident it opens on DBOS's healing queue (:data:`HEALING_QUEUE`), delayed by its
group_wait. A healing waiting for a human or for a block to lift gives its slot on that queue
up meanwhile (:func:`leave_healing_queue`, :func:`rejoin_healing_queue`).
:func:`submit_approval` records a human's verdict and wakes the workflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import queue
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog
from dbos import DBOS, DBOSClient, Queue, SetEnqueueOptions, SetWorkflowID
from sqlalchemy.orm import Session

from heald import __version__, correlate
from heald._failpoints import failpoint
from heald.config import HealdConfig
from heald.correlate.changes import ChangeTracker
from heald.diagnose import Reasoner, RunbookReasoner
from heald.diagnose.kb import KnowledgeBaseReasoner
from heald.diagnose.metrics import metrics_evidence
from heald.diagnose.runbooks import Runbook, load_runbooks, runbook_log_patterns
from heald.diagnose.targets import target_logs_evidence
from heald.engine import signals_first
from heald.engine.cluster import Cluster, log_lease, probe_lease
from heald.engine.lock import InstanceLock
from heald.engine.lock import acquire as acquire_instance_lock
from heald.engine.steps import Deps, workflow_id
from heald.files import private_dir, private_file
from heald.models import IncidentState, Signal, SignalStatus, utcnow
from heald.notify import Notifier
from heald.policy import count_approvers
from heald.sources.logs import LogTailer
from heald.sources.probes import ProbeRunner
from heald.store import InvalidTransition, Store
from heald.store.checkpoints import Checkpointer
from heald.store.db import BACKGROUND_THREADS, MAX_POOLED_WORKFLOWS, sqlite_file, urgent_writes
from heald.store.retry import TransientDatabaseError, is_transient
from heald.supervise import Supervisor

log = structlog.get_logger("heald.engine")

APPROVAL_TOPIC = "approval"
#: The DBOS topic that wakes a healing waiting for a human (a human's retry or resolve, a resolved signal).
ATTENTION_TOPIC = "attention"
#: An incident opened this recently without a workflow is left to its opener by the reaper.
_JUST_OPENED_SECONDS = 10.0
_runtime: Runtime | None = None

#: Times a chunk is stored again after its signals joined an incident whose workflow was dead.
_DEAD_JOIN_TRIES = 3


class _JoinedDead(Exception):
    """A chunk's signals joined open incidents whose workflows are dead (rolls the chunk back)."""

    def __init__(self, incident_ids: list[int]):
        super().__init__(f"signals joined incidents {incident_ids}, whose healing workflows are dead")
        self.incident_ids = incident_ids


class IngestIncomplete(RuntimeError):
    """Storing a message of ``total`` signals stopped on ``cause``, a transient database error
    (:func:`heald.store.retry.is_transient`) that outlived the store's retries, after this call had stored (committed, their incidents'
    healings started) ``accepted``, possibly none. Sending the message again is safe: a
    redelivery with a delivery id stores only what is missing; signals without one join the
    incidents their fingerprints already have."""

    def __init__(self, accepted: list[correlate.IngestResult], total: int, cause: Exception):
        first_line = str(cause).splitlines()[0] if str(cause) else ""
        super().__init__(f"{len(accepted)} of {total} signals stored before {type(cause).__name__}: {first_line}")
        self.accepted = accepted
        self.total = total
        self.cause = cause


def runtime() -> Runtime:
    """The running Runtime of this process. Raises RuntimeError when none was started."""
    if _runtime is None:
        raise RuntimeError("heald's runtime is not started in this process")
    return _runtime


#: Seconds between DBOS's checks for the messages its waiting healings (an approval, a human's
#: action) wait for, on a SQLite system database (PostgreSQL's DBOS is told by LISTEN/NOTIFY).
#: Each check costs one query per waiting healing: at 0.1 s, a hundred healings waiting for a
#: human took half of heald's CPU; at 1 s, three hundred a third. A message this process sends wakes its waiter at once
#: (:func:`send_now`); this only bounds how late one sent by another process (the CLI's
#: ``approve``, ``retry``, ``resolve`` on the same database) is seen.
SQLITE_NOTIFICATION_POLL_SECONDS = 2.0


def send_now(wf: str, message: dict[str, Any], topic: str) -> None:
    """``DBOS.send(wf, message, topic)`` (durable: committed when it returns), then wake this
    process's healing waiting on that workflow and topic at once rather than at DBOS's next
    check (:data:`SQLITE_NOTIFICATION_POLL_SECONDS`). Raises what DBOS.send raises."""
    DBOS.send(wf, message, topic=topic)
    waiters = getattr(_system_database(), "notifications_map", None)
    if waiters is None or not hasattr(waiters, "snapshot"):  # another DBOS version: its listener tells it
        return
    for _, components, signal in waiters.snapshot():
        if components[0] == wf and components[1] == topic:
            signal.set()  # the waiter reads its message from the database, as when the listener wakes it


def dbos_config(config: HealdConfig) -> dict[str, Any]:
    """DBOS's configuration for heald: its system database, a version pinned to heald's (so a
    restarted heald recovers the workflows the previous one left), this worker's executor id."""
    cfg: dict[str, Any] = {
        "name": "heald", "system_database_url": config.dbos_database, "application_version": __version__,
        "executor_id": config.executor_id, "log_level": "WARNING",
        "notification_listener_polling_interval_sec": SQLITE_NOTIFICATION_POLL_SECONDS
        if sqlite_file(config.dbos_database) is not None else 0.1,
        # DBOS records every step of every running healing: a connection each, as the store's pool
        "sys_db_pool_size": max(20, min(config.healing.max_concurrent, MAX_POOLED_WORKFLOWS) + BACKGROUND_THREADS)}
    if sqlite_file(config.dbos_database) is not None:
        cfg["system_database_engine"] = sqlite_system_engine(config)
    return cfg


def sqlite_system_engine(config: HealdConfig) -> sa.Engine:
    """DBOS's SQLite system database engine, as DBOS makes it (``IMMEDIATE`` transactions, a
    30 s busy timeout, foreign keys) but in WAL mode with ``synchronous=NORMAL``, as heald's
    own store: a commit (each workflow checkpoint, each enqueue) no longer waits for an fsync;
    a power cut may lose the last ones, which the reaper and :meth:`Runtime.resume_open_incidents`
    redo. Its pool grows by ``healing.max_concurrent`` (at most :data:`MAX_POOLED_WORKFLOWS`) beyond DBOS's 20 connections."""
    # no pre-ping: a SQLite file's connection does not drop, and a ping is one more statement per
    # checkpoint (DBOS checks out a connection twice per step)
    engine = sa.create_engine(config.dbos_database, pool_size=20,
                               max_overflow=min(config.healing.max_concurrent, MAX_POOLED_WORKFLOWS),
                              pool_timeout=30)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = "IMMEDIATE"
        dbapi_conn.execute("PRAGMA busy_timeout=30000")
        dbapi_conn.execute("PRAGMA foreign_keys=ON")
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    return engine


#: DBOS's queue the healing workflows run from (:meth:`Runtime.start_healing`).
HEALING_QUEUE = "heald-healing"
#: A group_wait shorter than this (seconds) is slept in the healing's workflow rather than spent
#: DELAYED in DBOS's queue (:meth:`Runtime.start_healing`).
SLEPT_GROUP_WAIT_SECONDS = 1.0
#: Seconds between two polls of :data:`HEALING_QUEUE` by DBOS (the latency of a start).
HEALING_QUEUE_POLL_SECONDS = 0.1


def register_healing_queue(config: HealdConfig) -> Queue:
    """Declare :data:`HEALING_QUEUE` in the launched DBOS, running at most
    ``healing.max_concurrent`` healings at once in this process; a healing waiting for a human
    or for a block to lift holds no slot meanwhile (:func:`leave_healing_queue`). Not
    partitioned by target: a healing waiting hours for an approval would hold its target's
    partition and starve a second incident about it; the per-target lease
    (:mod:`heald.budgets`) keeps two healings from acting on one target at once."""
    global _healing_queue
    _healing_queue = off_event_loop(lambda: DBOS.register_queue(
        HEALING_QUEUE, worker_concurrency=config.healing.max_concurrent,
        polling_interval_sec=HEALING_QUEUE_POLL_SECONDS, on_conflict="always_update"))
    if not slot_release_supported():
        log.error("healing.slot_release_unsupported",
                  reason="this DBOS version keeps no registry of running workflows that heald knows: a healing "
                         "waiting for a human holds its slot on the healing queue (healing.max_concurrent)")
    return _healing_queue


T = TypeVar("T")


def off_event_loop(fn: Callable[[], T]) -> T:
    """``fn()``, called in a short-lived thread when this thread runs an asyncio event loop, else
    here. DBOS's synchronous calls (``register_queue``, ``retrieve_queue``, ``list_workflows``…)
    refuse to run on a thread whose loop is running — an application embedding heald in async
    code, or Playwright's sync API in the same process. Re-raises what ``fn`` raises."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="heald-dbos") as pool:
        return pool.submit(fn).result()


_healing_queue: Queue | None = None


def healing_queue() -> Queue:
    """:data:`HEALING_QUEUE` of the launched DBOS (kept when it was registered: DBOS's
    ``retrieve_queue`` cannot run where an event loop runs). Raises RuntimeError before
    :func:`register_healing_queue`."""
    queue = _healing_queue or off_event_loop(lambda: DBOS.retrieve_queue(HEALING_QUEUE))
    if queue is None:
        raise RuntimeError(f"DBOS queue {HEALING_QUEUE} is not registered (heald's runtime is not started)")
    return queue


# -- a healing's slot on the healing queue, given up while it waits for a human -------------------
#
# DBOS 3.4 counts a queue's ``worker_concurrency`` in memory: each poll of the queue subtracts,
# from the limit, the workflows of this process registered as running from that queue
# (``DBOS._active_workflows_set.count_for_queue``, one ``(queue_name, partition_key)`` entry per
# execution, added when the workflow starts and removed when it ends; ``_queue.queue_worker_thread``).
# The workflow_status row's ``queue_name`` plays no part in that count (only in a queue-wide
# ``concurrency``, which heald does not set, and in recovery, which puts a PENDING workflow back
# on its own queue). DBOS has no public call to give a slot back, so a healing that waits for a
# human swaps its entry for one that names no queue, and swaps it back to act again.
# tests/engine/test_human_waits.py::test_dbos_counts_the_healing_queue_as_heald_expects fails
# if a DBOS upgrade changes these internals; without them the waits hold their slot, as before.

#: Seconds between two looks for a free slot by a healing taking its slot back after a wait.
REJOIN_POLL_SECONDS = 0.05
#: A healing's entry in DBOS's registry of running workflows while it holds its slot …
_SLOT: tuple[str, None] = (HEALING_QUEUE, None)
#: … and while it waits for a human (an entry naming no queue DBOS counts).
_WAITING: tuple[str, None] = (f"{HEALING_QUEUE} (waiting, no slot)", None)
_turns = threading.Condition()
_rejoining: list[object] = []  # healings of this process taking their slot back, first come first served


def _running_workflows() -> tuple[Any, Any] | None:
    """(the launched DBOS, its registry of the workflows running in this process), or None when
    DBOS is not launched or this DBOS version keeps no such registry (then a waiting healing
    keeps its slot)."""
    try:
        from dbos import _dbos as dbos_module
    except ImportError:
        return None
    instance = getattr(dbos_module, "_dbos_global_instance", None)
    registry = getattr(instance, "_active_workflows_set", None)
    if registry is None or not all(hasattr(registry, a) for a in ("_lock", "_m", "count_for_queue")):
        return None
    return instance, registry


def slot_release_supported() -> bool:
    """Whether this DBOS lets a healing give its :data:`HEALING_QUEUE` slot up while it waits
    for a human (:func:`leave_healing_queue`); False before DBOS is launched."""
    return _running_workflows() is not None


def _swap(registry: Any, wf: str, old: tuple[str, None], new: tuple[str, None]) -> bool:
    """Replace one ``old`` entry of workflow ``wf`` in DBOS's registry by ``new``; False when it has none."""
    with registry._lock:
        entries = registry._m.get(wf)
        if not entries or old not in entries:
            return False
        entries[entries.index(old)] = new
        return True


def leave_healing_queue() -> bool:
    """Give up the calling healing workflow's slot on :data:`HEALING_QUEUE` (one of the
    ``healing.max_concurrent`` of this process) while it waits for a human — an approval, a
    hand-over, a block to lift — so that DBOS dequeues the next queued healing at its next
    poll (:data:`HEALING_QUEUE_POLL_SECONDS`). Workflow code, called just before such a wait's
    ``DBOS.recv``; a healing already off the queue stays off. Nothing is written anywhere: the
    workflow stays PENDING on the queue in DBOS's system database, so a heald killed during the
    wait recovers it there, and its replay gives the slot up again at the same wait. Returns
    whether the healing is off the queue now (False: it was not dequeued from the healing queue
    in this process, or this DBOS keeps its count elsewhere — then it waits holding its slot)."""
    found, wf = _running_workflows(), DBOS.workflow_id
    if found is None or wf is None:
        return False
    registry = found[1]
    with registry._lock:
        if _WAITING in registry._m.get(wf, ()):
            return True
    limit = runtime().config.healing.max_waiting  # each waiting healing keeps a thread: bounded
    if registry.count_for_queue(_WAITING[0]) >= limit:
        log.info("healing.slot_kept", workflow_id=wf, reason=f"{limit} healings wait off the queue already "
                                                              f"(healing.max_waiting)")
        return False
    if _swap(registry, wf, _SLOT, _WAITING):
        log.debug("healing.slot_released", workflow_id=wf)
        return True
    with registry._lock:
        return _WAITING in registry._m.get(wf, ())


def rejoin_healing_queue() -> None:
    """Take the calling healing's slot on :data:`HEALING_QUEUE` back before it acts again
    (after :func:`leave_healing_queue`; at once when it never left). When
    ``healing.max_concurrent`` healings of this process are acting, it waits (in memory,
    looking every :data:`REJOIN_POLL_SECONDS`) until one ends or leaves for a wait of its own.
    Its slot is taken at once, so DBOS dequeues no new healing meanwhile: healings taking their
    slot back go first, first come first served, before any healing still ENQUEUED, and at most
    ``healing.max_concurrent`` act at once. It stops waiting when DBOS is destroyed (heald
    stops: the workflow's next step fails and it resumes at the next start)."""
    found, wf = _running_workflows(), DBOS.workflow_id
    if found is None or wf is None:
        return
    registry = found[1]
    if not _swap(registry, wf, _WAITING, _SLOT):
        return  # it holds its slot
    limit = runtime().config.healing.max_concurrent
    turn = object()
    waited = time.monotonic()
    with _turns:
        _rejoining.append(turn)
        try:
            while True:
                acting = registry.count_for_queue(HEALING_QUEUE) - len(_rejoining)
                if _rejoining[0] is turn and acting < limit:
                    break
                if (now := _running_workflows()) is None or now[1] is not registry:  # DBOS was destroyed
                    break
                _turns.wait(REJOIN_POLL_SECONDS)
        finally:
            _rejoining.remove(turn)
            _turns.notify_all()
    log.debug("healing.slot_taken_back", workflow_id=wf, waited_s=round(time.monotonic() - waited, 3))


@contextlib.contextmanager
def healing_slot() -> Iterator[None]:
    """Around a healing workflow's body: if it ends (returns or raises) off the healing queue,
    its slot is put back at once, without waiting for a free one — DBOS's own bookkeeping
    removes the slot a workflow was dequeued with as it ends, and must find it."""
    found, wf = _running_workflows(), DBOS.workflow_id  # now: DBOS may be destroyed by the end
    try:
        yield
    finally:
        if found is not None and wf is not None:
            _swap(found[1], wf, _WAITING, _SLOT)


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
        if (db_file := sqlite_file(config.dbos_database)) is not None:
            use_wal(db_file)


def use_wal(db_file: Path) -> None:
    """Put the SQLite database ``db_file`` (DBOS's system database) in WAL mode, which the
    file keeps: DBOS opens it in rollback-journal mode, where every checkpoint of a workflow
    waits for the readers and they for it."""
    with contextlib.closing(sqlite3.connect(db_file, timeout=30.0)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


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
                 tail_logs: bool = True, instance_lock: InstanceLock | None = None):
        self.config = config
        self.instance_lock = instance_lock  # taken by start() when not given (heald serve takes it before binding)
        self.store = Store(config.database, concurrency=config.healing.max_concurrent)  # pools sized with the healings
        self.supervisor = Supervisor(config)
        self.runbooks: list[Runbook] = load_runbooks(config.runbooks, config.default_runbooks)
        self.reasoners: list[Reasoner] = [RunbookReasoner(self.runbooks), KnowledgeBaseReasoner()]
        if config.llm.enabled:
            from heald.diagnose.llm import LLMReasoner

            self.reasoners.append(LLMReasoner(config.llm, self.runbooks))
        self.reasoners += metrics_evidence(config)  # recent values of promql probes' queries as evidence
        self.reasoners += target_logs_evidence(config)  # adopted containers' logs, units' journals
        self.manage_services = manage_services
        self.probes = ProbeRunner(config, self.supervisor, self.ingest, store=self.store) if run_probes else None
        named = runbook_log_patterns(self.runbooks)  # records a runbook is written for always signal
        self.log_tailers = [LogTailer(lg.model_copy(update={"always_signal": [*lg.always_signal, *named]}),
                                      self.ingest, config.state_dir / "logs") for lg in config.logs] if tail_logs else []
        self.cluster = self._cluster()
        if self.probes is not None:
            self.probes.owns = lambda service, probe: self.cluster.owns(probe_lease(service, probe))
        self.changes = ChangeTracker(config)
        self.rng = random.Random()  # the plan's Thompson draws; a test may seed it
        self.notifier = Notifier(config.notifications, self.store)
        self.checkpointer: Checkpointer | None = None
        self.started = False
        self._lock = threading.Lock()
        self._reaper_stop = threading.Event()
        self._dbos_engine: sa.Engine | None = None
        self.signals_first = signals_first.SignalsFirst(config.healing.signals_first_seconds)
        self.dispatcher = HealingDispatcher(self.start_healing, self.signals_first)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Take this heald's lock on its state directory and database (:mod:`heald.engine.lock`;
        raises AlreadyRunning, having done nothing, when another heald holds it), migrate the
        store, start the audit checkpoints, adopt the managed services still running and start
        those never started (:meth:`heald.supervise.Supervisor.start_all`; a service with an open
        incident is left to that incident's workflow), launch DBOS (which resumes any healing a
        previous heald left unfinished), start missing workflows, start probes (which open an
        incident for a managed service found down). Every effect on a service is audited
        (``service.started``, ``service.left_down``, ``service.down_at_start``). Raises
        CheckpointError for an unusable audit key file."""
        global _runtime
        if _runtime is not None and _runtime is not self:
            raise RuntimeError("another heald Runtime is already running in this process")
        if self.instance_lock is None:
            self.instance_lock = acquire_instance_lock(self.config)  # before anything acts
        try:
            prepare_state_dir(self.config)
            self.store.migrate()
            self.cluster.join()  # raises ExecutorIdInUse when a live worker has this executor id
            self.cluster.start()  # heartbeats from now on (DBOS's launch may outlast the heartbeat timeout)
            self.checkpointer = audit_checkpointer(self.config, self.store, self.notifier)
            if self.checkpointer is not None:
                self.checkpointer.should_run = self.cluster.is_leader  # once per cluster
                self.checkpointer.start()  # a bad key file stops heald here, before anything runs
        except BaseException:
            self.cluster.stop_heartbeats()
            self.cluster.leave()
            self.instance_lock.release()  # nothing acted: another heald may start on this state
            self.instance_lock = None
            raise
        _runtime = self
        signals_first.current = self.signals_first  # healings' steps yield to signals being stored
        open_incidents = self.open_incidents_by_service() if self.manage_services else {}
        services = self.supervisor.start_all(open_incidents) if self.manage_services else {}
        dbos_cfg = dbos_config(self.config)
        self._dbos_engine = dbos_cfg.get("system_database_engine")  # DBOS does not dispose an engine it was given
        try:
            DBOS(config=dbos_cfg)  # type: ignore[arg-type]
            DBOS.launch()
            register_healing_queue(self.config)
        except BaseException:  # nothing is left launched: the next start (or a test's) begins clean
            with contextlib.suppress(Exception):
                DBOS.destroy(destroy_registry=False)
            if self._dbos_engine is not None:
                self._dbos_engine.dispose()
                self._dbos_engine = None
            self.cluster.stop_heartbeats()
            self.cluster.leave()
            if self.checkpointer is not None:
                self.checkpointer.stop()
                self.checkpointer = None
            if self.instance_lock is not None:
                self.instance_lock.release()
                self.instance_lock = None
            _runtime = None
            signals_first.current = None
            raise
        self.started = True
        self.store.record(actor="heald", event="heald.started", reason=f"heald {__version__} started",
                          details={"executor_id": self.config.executor_id, "services": services, "pid": os.getpid(),
                                   "database": self.store.engine.url.render_as_string(hide_password=True)})
        self._record_services(services, open_incidents)
        off_event_loop(self.resume_open_incidents)  # DBOS's status calls refuse a thread running a loop
        self.cluster.recovering = True  # DBOS runs: this worker may recover dead workers' healings
        self.dispatcher.start()
        self._start_reaper()
        if self.probes:
            self.probes.start()  # each probe runs where its lease is held
        if self.cluster.single:
            for tailer in self.log_tailers:
                tailer.start()  # else started and stopped with their leases (_on_lease)

    def stop(self, *, stop_services: bool = False) -> None:
        """Stop probes and DBOS, write a last audit checkpoint; with ``stop_services`` also
        the managed services."""
        global _runtime, _healing_queue
        self._reaper_stop.set()
        if self.probes:
            self.probes.stop()  # closes the probes' HTTP client
        for tailer in self.log_tailers:
            tailer.stop()
        if self.started:
            if self.checkpointer is not None and self.cluster.is_leader():
                self.checkpointer.should_run = lambda: True  # the leader writes the last checkpoint
            self.cluster.stop_heartbeats()
            # Workflows still waiting (an approval, a cooldown) stay PENDING and resume at the next
            # start; their threads fail noisily as DBOS goes away, which is expected here.
            self.dispatcher.stop()  # the healings handed to it are enqueued first (else the next start's resume does)
            logging.getLogger("dbos").setLevel(logging.CRITICAL)
            sys_db = _system_database()
            DBOS.destroy(destroy_registry=False)
            _healing_queue = None  # registered again at the next launch
            _stop_retrying(sys_db)  # a wait woken below must not retry the gone database forever
            _wake_recv_waiters(sys_db)  # a healing in DBOS.recv (an approval wait) would hold the exit for up to 300 s
            if self._dbos_engine is not None:
                self._dbos_engine.dispose()
                self._dbos_engine = None
            self.cluster.leave()  # only now: a live worker recovers what is still pending here
            self.started = False
        from heald.verify import close_http_client

        close_http_client()  # the verifications' shared HTTP client (made again if a verification runs later)
        if self.checkpointer is not None:
            self.checkpointer.stop()  # a last checkpoint covers everything written until now
            self.checkpointer = None
        if stop_services:
            self.supervisor.stop_all()
        self.store.close()
        if _runtime is self:
            _runtime = None
        if signals_first.current is self.signals_first:
            signals_first.current = None
        if self.instance_lock is not None:
            self.instance_lock.release()
            self.instance_lock = None

    # -- the cluster (heald.engine.cluster) -------------------------------------------------
    def _cluster(self) -> Cluster:
        """This worker's membership of the cluster: leases for its probes and log tailers,
        DBOS's recovery of dead workers' healings, audited."""
        names = [probe_lease(svc, p.label) for svc, cfg in self.config.services.items() for p in cfg.probes] \
            if self.probes is not None else []
        names += [log_lease(t.miner.name) for t in self.log_tailers]
        return Cluster(self.config, recover=lambda ids: len(DBOS._recover_pending_workflows(ids)),
                       pending=lambda eid: len(DBOS.list_workflows(
                           status="PENDING", executor_id=eid, app_version=__version__, load_input=False,
                           load_output=False)),
                       lease_names=names, on_lease=self._on_lease, on_recovered=self._on_recovered,
                       on_fenced=_fenced)

    def _on_lease(self, name: str, held: bool) -> None:
        """Start or stop the log tailer of a lease this worker gained or lost (probes ask
        :meth:`Cluster.owns` before each check)."""
        for i, tailer in enumerate(self.log_tailers):
            if log_lease(tailer.miner.name) != name:
                continue
            if held and not self._reaper_stop.is_set():
                fresh = LogTailer(tailer.cfg, self.ingest, self.config.state_dir / "logs")
                self.log_tailers[i] = fresh  # a stopped tailer does not start again
                fresh.start()
            elif not held:
                tailer.stop()

    def _on_recovered(self, executor_id: str, workflows: int) -> None:
        self.store.record(actor="heald", event="worker.recovered",
                          reason=f"worker {executor_id} stopped heartbeating or stopped; {self.config.executor_id} had "
                                 f"DBOS recover its {workflows} pending workflow(s)",
                          details={"dead": executor_id, "by": self.config.executor_id, "workflows": workflows})

    def open_incidents_by_service(self) -> dict[str, int]:
        """{service: the id of its newest open incident} over the incidents not yet ended."""
        found: dict[str, int] = {}
        for inc in self.store.list_incidents(limit=10_000):  # newest first
            if not inc.state.terminal and inc.service:
                found.setdefault(inc.service, inc.id)
        return found

    def _record_services(self, services: dict[str, str], open_incidents: dict[str, int]) -> None:
        """Audit what :meth:`Supervisor.start_all` did to, or left of, each managed service."""
        for name, what in services.items():
            proc = self.supervisor.processes[name]
            if what in ("started", "started_unprobed"):
                ident = proc.identity()
                why = ("heald had never started it (no instance recorded)" if what == "started" else
                       "it was not running, no incident about it is open, and no probe watches it (heald could "
                       "neither notice its failure nor verify a healing)")
                self.store.record(actor="heald", event="service.started", reason=f"start of {name} at heald's start: {why}",
                                  details={"service": name, "pid": ident.pid if ident else None, "initial": what == "started"})
            elif what == "left":
                self.store.record(actor="heald", event="service.left_down", incident_id=open_incidents[name],
                                  reason=f"{name} is not running and incident {open_incidents[name]} about it is open: "
                                         "heald leaves it to that incident's workflow",
                                  details={"service": name})
            elif what == "down":
                self.store.record(actor="heald", event="service.down_at_start",
                                  reason=f"{name} is not running ({_last_instance(proc)}) and no incident about it is "
                                         "open: heald does not start it by itself; its probes open an incident, and the "
                                         "gate decides",
                                  details={"service": name})

    def resume_open_incidents(self) -> int:
        """Start the workflow of every open incident that has none (a crash between storing a
        signal and starting its workflow). Idempotent: a workflow id is never started twice."""
        started = 0
        for inc in self.store.list_incidents(limit=10_000):
            if not inc.state.terminal:
                self.start_healing(inc.id)
                started += 1
        return started

    # -- stranded incidents -------------------------------------------------------------------
    #: Seconds between two sweeps of :meth:`reap_stranded_incidents` (a test may lower it).
    reap_interval_seconds: float = 15.0

    def reap_stranded_incidents(self, incident_ids: list[int] | None = None) -> dict[str, list[int]]:
        """Make sure no open incident is left without a live healing workflow (DESIGN.md
        invariant 4), for every open incident or only ``incident_ids``.

        For each open incident, by its workflow's DBOS status: none (a crash between storing the
        signal and starting it) → started; ``CANCELLED`` or ``MAX_RECOVERY_ATTEMPTS_EXCEEDED`` →
        resumed (``DBOS.resume_workflow`` on the healing queue, from its last completed step); ``ERROR`` (a step
        raised: DBOS would replay the same error, it cannot be resumed), ``SUCCESS`` while the
        incident is still open, or a resume that fails → the incident ends ``failed`` with the
        reason, audited, its leases freed and the channels told — so the next signal about the
        target opens a new incident with a new workflow instead of joining a dead one. Live
        workflows (``PENDING``, ``ENQUEUED``, ``DELAYED``) are left alone; finding the others
        takes two queries (:meth:`_without_live_workflow`); ingestion checks only the
        incidents its signals join, in its transaction (:meth:`_commit_checked`). Nothing happens before :meth:`start` (no DBOS). Returns
        {"started": [...], "resumed": [...], "failed": [...]} (incident ids). Never raises for one
        incident's trouble (logged; the next sweep tries again)."""
        done: dict[str, list[int]] = {"started": [], "resumed": [], "failed": []}
        if not self.started:  # no DBOS yet (or any more): nothing can be started or resumed
            return done
        try:
            candidates = self._without_live_workflow(incident_ids)
        except Exception:
            log.exception("reaper.error")
            return done
        for incident_id in candidates:
            try:
                if (what := self._reap_one(incident_id)) is not None:
                    done[what].append(incident_id)
            except Exception:
                log.exception("reaper.error", incident_id=incident_id)
        if any(done.values()):
            log.warning("reaper.stranded_incidents", **done)
        return done

    def _without_live_workflow(self, incident_ids: list[int] | None) -> list[int]:
        """The open incidents (of ``incident_ids``, or all) whose workflow is not live: two
        queries, whatever their number (the open incidents, the live workflows among theirs)."""
        from dbos import WorkflowStatusString

        from heald.models import OPEN_STATES
        from heald.store.tables import IncidentRow

        stmt = sa.select(IncidentRow.id).where(IncidentRow.state.in_([s.value for s in OPEN_STATES]))
        if incident_ids is not None:
            stmt = stmt.where(IncidentRow.id.in_(sorted(set(incident_ids))))
        open_ids: list[int] = self.store.transact(lambda s: list(s.scalars(stmt.order_by(IncidentRow.id))))
        if not open_ids:
            return []
        live = {w.workflow_id for w in DBOS.list_workflows(
            workflow_ids=[workflow_id(i) for i in open_ids], load_input=False, load_output=False,
            status=[WorkflowStatusString.PENDING.value, WorkflowStatusString.ENQUEUED.value,
                    WorkflowStatusString.DELAYED.value])}
        return [i for i in open_ids if workflow_id(i) not in live]

    def reap_joined(self, results: list[correlate.IngestResult]) -> None:
        """After an ingestion: :meth:`reap_stranded_incidents` for the incidents the signals
        joined (not those they opened): the last resort of :meth:`_commit_checked` when a
        chunk kept joining dead incidents; they end now, and the target's next signal opens a
        new incident."""
        joined = [r.incident_id for r in results if r.incident_id is not None and not r.opened]
        if joined:
            self.reap_stranded_incidents(joined)

    def _reap_one(self, incident_id: int) -> str | None:
        """One incident of :meth:`reap_stranded_incidents`: "started", "resumed", "failed" or None."""
        from dbos import WorkflowStatusString

        incident = self.store.get_incident(incident_id)
        if incident.state.terminal:
            return None
        wf = workflow_id(incident_id)
        status = DBOS.get_workflow_status(wf)
        if status is None:
            if (utcnow() - incident.detected_at).total_seconds() < _JUST_OPENED_SECONDS:
                return None  # its opener is starting it right now (it commits first, then starts)
            self.start_healing(incident_id)
            return "started"
        state = status.status
        if state in (WorkflowStatusString.PENDING.value, WorkflowStatusString.ENQUEUED.value,
                     WorkflowStatusString.DELAYED.value):
            return None
        if state in (WorkflowStatusString.CANCELLED.value, WorkflowStatusString.MAX_RECOVERY_ATTEMPTS_EXCEEDED.value):
            try:
                DBOS.resume_workflow(wf, queue_name=HEALING_QUEUE)  # else DBOS's internal queue, which has no limit
                return "resumed"
            except Exception as exc:
                why = f"its healing workflow {wf} was {state.lower()} and could not be resumed: {exc}"
        elif state == WorkflowStatusString.ERROR.value:
            error = str(status.error).splitlines()[0][:300] if status.error else "no error recorded"
            why = f"its healing workflow {wf} failed ({error}) and cannot be resumed"
        else:  # SUCCESS, yet the incident is open
            why = f"its healing workflow {wf} ended ({state.lower()}) without closing it"
        if self.store.get_incident(incident_id).state.terminal:  # it closed while we looked
            return None
        return self._end_stranded(incident_id, why)

    def _end_stranded(self, incident_id: int, why: str) -> str | None:
        """End an incident whose workflow is dead: ``failed``, audited, leases freed, channels told."""
        from heald.budgets import release_lease
        from heald.engine.steps import notify

        reason = f"{why}; a new signal about the target opens a new incident"
        release_lease(self.store, incident_id)
        try:
            self.store.transition(incident_id, IncidentState.failed, reason=reason,
                                  details={"stranded": True})
        except InvalidTransition:  # it ended meanwhile
            return None
        notify(self.deps(), incident_id, IncidentState.failed.value, reason)
        return "failed"

    def _start_reaper(self) -> None:
        """Sweep :meth:`reap_stranded_incidents` now (an incident a previous heald left with a
        failed workflow) and then every :attr:`reap_interval_seconds` until stop()."""
        self._reaper_stop.clear()

        def loop() -> None:
            while True:
                if self.started and self.cluster.is_leader():  # once per cluster
                    self.reap_stranded_incidents()
                if self._reaper_stop.wait(self.reap_interval_seconds):
                    return

        threading.Thread(target=loop, name="heald-reaper", daemon=True).start()

    # -- intake ----------------------------------------------------------------------------
    def ingest(self, signal: Signal, actor: str | None = None) -> correlate.IngestResult:
        """Store and correlate ``signal``; start healing the incident it opens."""
        return self.ingest_many([signal], actor)[0]

    def ingest_many(self, signals: list[Signal], actor: str | None = None) -> list[correlate.IngestResult]:
        """Store and correlate ``signals``, then start healing the incidents they open. They are
        stored in transactions of at most ``api.signals_per_transaction`` (so that other writers
        and the healings' steps take turns with a big message); the healings of the incidents
        the message opened start once all of it is stored (or it stopped). Each signal is first annotated with the
        changes that may have caused it (:mod:`heald.correlate.changes`); one claiming to be
        heald's own sandbox finding is made inert (:func:`heald.ci.incident.from_outside`).
        Raises IngestIncomplete when a transient database error stops it after (or before) some
        chunks were committed."""
        from heald.ci.incident import from_outside

        signals = [self.changes.annotate(from_outside(s)) for s in signals]
        size = self.config.api.signals_per_transaction
        results: list[correlate.IngestResult] = []
        try:
            for start in range(0, len(signals), size):
                chunk = signals[start:start + size]
                part = self._commit_checked(functools.partial(self._ingest_chunk, chunk, actor), results, len(signals))
                assert part is not None
                _log_ingested(chunk, part)
        finally:
            self._after_ingest(signals[:len(results)], results)
        return results

    def ingest_delivery(self, source: str, delivery_id: str, signals: list[Signal],
                        actor: str | None = None) -> list[correlate.IngestResult] | None:
        """Store and correlate one webhook delivery's signals, remembering the delivery id, in
        transactions of at most ``api.signals_per_transaction`` (as :meth:`ingest_many`; see
        :func:`heald.correlate.deliveries.ingest_delivery`). Returns the signals this call
        stored, or None (nothing stored) for a redelivery of a delivery stored whole; a
        redelivery of one stored in part stores the rest. Starts healing the incidents they
        open. Raises IngestIncomplete as :meth:`ingest_many` does."""
        from heald.ci.incident import from_outside
        from heald.correlate.deliveries import ingest_delivery

        signals = [self.changes.annotate(from_outside(s)) for s in signals]
        size = self.config.api.signals_per_transaction
        results: list[correlate.IngestResult] = []
        try:
            for chunk in range(len(signals) // size + 2):  # each chunk stores signals, or the delivery without any
                part = self._commit_checked(lambda session: ingest_delivery(
                    session, source, delivery_id, signals, self.config, actor=actor, limit=size), results, len(signals))
                if part is None:
                    if chunk == 0:
                        log.info("delivery.duplicate_dropped", source=source, delivery=delivery_id)
                        return None
                    break
        finally:
            # a delivery's results are those of its last signals (an earlier attempt may have stored the first)
            self._after_ingest(signals[len(signals) - len(results):], results)
        return results

    def wake_waiting_healings(self, signals: list[Signal], results: list[correlate.IngestResult]) -> int:
        """Wake the wait of each incident that a resolved signal joined while it awaits approval
        or a human (``needs_attention``), so it ends at once when that was its last firing signal
        (:func:`heald.engine.steps.withdraw_if_resolved`, :func:`heald.engine.attention.await_human`)
        instead of at the approval TTL or the next periodic check. Returns how many were woken;
        a failed wake-up is logged (the wait still re-reads the signals at its next check)."""
        topics = {IncidentState.awaiting_approval: APPROVAL_TOPIC, IncidentState.needs_attention: ATTENTION_TOPIC}
        woken: set[int] = set()
        for signal, result in zip(signals, results, strict=True):
            inc_id = result.incident_id
            if signal.status != SignalStatus.resolved or inc_id is None or inc_id in woken:
                continue
            try:
                topic = topics.get(self.store.get_incident(inc_id).state)
                if topic is not None:
                    send_now(workflow_id(inc_id), {"signal_id": result.signal_id, "resolved": True}, topic)
                    woken.add(inc_id)
            except Exception:  # the wait re-reads the signals at its next wake-up anyway
                log.exception("wait.wake_failed", incident_id=inc_id)
        return len(woken)

    def _ingest_chunk(self, signals: list[Signal], actor: str | None, session: Session) -> list[correlate.IngestResult]:
        return correlate.ingest_all(session, signals, self.config, actor=actor)

    def _commit_checked(self, store: Callable[[Session], list[correlate.IngestResult] | None],
                        done: list[correlate.IngestResult], total: int) -> list[correlate.IngestResult] | None:
        """:meth:`_commit_chunk`, refusing to commit a chunk whose signals joined an open incident
        whose healing workflow is dead (:meth:`_dead_joined`, in the chunk's transaction): the
        chunk is rolled back, those incidents are reaped (:meth:`reap_stranded_incidents`: a
        cancelled workflow resumes, a failed one ends its incident ``failed``) and the chunk is
        stored again — so no signal joins an incident nobody heals, and each is stored once. The
        check costs one query of DBOS's system database per chunk, whatever the number of open
        incidents. After :data:`_DEAD_JOIN_TRIES` tries the chunk is stored and its incidents
        reaped right after (:meth:`reap_joined`)."""
        def checked(session: Session) -> list[correlate.IngestResult] | None:
            part = store(session)
            if part is not None and (dead := self._dead_joined(session, part)):
                raise _JoinedDead(dead)
            return part

        for _ in range(_DEAD_JOIN_TRIES):
            try:
                return self._commit_chunk(checked, done, total)
            except _JoinedDead as exc:
                self.reap_stranded_incidents(exc.incident_ids)
        part = self._commit_chunk(store, done, total)
        self.reap_joined(part or [])
        return part

    def _dead_joined(self, session: Session, results: list[correlate.IngestResult]) -> list[int]:
        """The open incidents ``results`` joined (not opened) whose healing workflow is dead:
        ERROR, CANCELLED, MAX_RECOVERY_ATTEMPTS_EXCEEDED, or SUCCESS with the incident open. An
        incident without a workflow yet is not among them: its opener enqueues it after its
        commit (the periodic sweep starts one left by a crash). Reads ``session`` (the chunk's
        transaction) and DBOS's system database, nothing else."""
        from dbos import WorkflowStatusString

        from heald.models import OPEN_STATES
        from heald.store.tables import IncidentRow

        if not self.started:
            return []
        joined = sorted({r.incident_id for r in results if r.incident_id is not None and not r.opened})
        if not joined:
            return []
        open_ids = list(session.scalars(sa.select(IncidentRow.id).where(
            IncidentRow.id.in_(joined), IncidentRow.state.in_([st.value for st in OPEN_STATES]))))
        if not open_ids:
            return []
        dead = {w.workflow_id for w in DBOS.list_workflows(
            workflow_ids=[workflow_id(i) for i in open_ids], load_input=False, load_output=False,
            status=[WorkflowStatusString.ERROR.value, WorkflowStatusString.CANCELLED.value,
                    WorkflowStatusString.MAX_RECOVERY_ATTEMPTS_EXCEEDED.value, WorkflowStatusString.SUCCESS.value])}
        return [i for i in open_ids if workflow_id(i) in dead]

    def _commit_chunk(self, store: Callable[[Session], list[correlate.IngestResult] | None],
                      done: list[correlate.IngestResult], total: int) -> list[correlate.IngestResult] | None:
        """Run ``store`` (storing one chunk of a message's signals) in a transaction of its
        own; once committed, add its results to ``done``. Returns its results (None: it stored
        nothing). Raises IngestIncomplete (``total``: the message's signals) on a transient
        database error."""
        try:
            # the sender waits for this commit: it goes before the healings' writes waiting, and
            # their steps take turns meanwhile (heald.engine.signals_first)
            with urgent_writes(), self.signals_first.ingesting():
                part = self.store.transact(store)  # a transient error is retried first (heald.store.retry)
        except Exception as exc:
            if not (isinstance(exc, TransientDatabaseError) or is_transient(exc)):
                raise
            incomplete = IngestIncomplete(list(done), total, exc)
            log.warning("ingest.incomplete", stored=len(done), total=total, error=str(incomplete))
            raise incomplete from exc
        if part is None:
            return None
        failpoint("ingest.after_commit")
        done.extend(part)
        return part

    def _after_ingest(self, signals: list[Signal], results: list[correlate.IngestResult]) -> None:
        """Once a message is stored (or stopped): wake the waits its resolved ``signals`` end
        (:meth:`wake_waiting_healings`), start the healings of the incidents ``results`` opened —
        only now, so that its alerts have joined their incidents before these are diagnosed, as
        with a message stored in one transaction (a crash before this point leaves them to
        :meth:`resume_open_incidents` and the periodic sweep). The incidents joined were checked
        in each chunk's transaction (:meth:`_commit_checked`)."""
        from heald.correlate.targets import group_wait_for, resolve_service

        self.wake_waiting_healings(signals, results)
        for signal, result in zip(signals, results, strict=True):
            if result.opened and result.incident_id is not None:
                if (service := resolve_service(signal, self.config)) != signal.service:
                    signal = signal.model_copy(update={"service": service})  # as correlation resolved it
                if self.dispatcher.running:  # off the request path: the sender has its answer sooner
                    self.dispatcher.put(result.incident_id, group_wait_for(signal, self.config))
                else:
                    self.start_healing(result.incident_id, group_wait_for(signal, self.config))

    def start_healing(self, incident_id: int, delay_seconds: float | None = None) -> None:
        """Enqueue the durable workflow of an incident on DBOS's healing queue
        (:data:`HEALING_QUEUE`: at most ``healing.max_concurrent`` run at once in this heald, the
        others wait ENQUEUED), to run once its group_wait is over: in ``delay_seconds`` (None:
        what is left of its route's group_wait since the incident was detected, read from the
        store). Until then it is DELAYED in DBOS's system database and holds no thread — but a
        group_wait under :data:`SLEPT_GROUP_WAIT_SECONDS` is slept by the workflow itself, as
        one of the queue's running healings (DBOS moves a delayed workflow to its queue only
        once a second, which would add up to a second to every short group_wait).
        Idempotent: the workflow id is the incident's (:func:`workflow_id`), and an incident
        whose workflow exists, in whatever state, is left to it."""
        from heald.engine.workflow import heal_incident

        delay = self._group_wait_left(incident_id) if delay_seconds is None else delay_seconds
        if delay < SLEPT_GROUP_WAIT_SECONDS:  # DBOS promotes delayed workflows once a second: sleep a short one
            with SetWorkflowID(workflow_id(incident_id)):
                healing_queue().enqueue(heal_incident, incident_id, False)
            return
        with SetWorkflowID(workflow_id(incident_id)), SetEnqueueOptions(delay_seconds=delay):
            healing_queue().enqueue(heal_incident, incident_id, True)

    def _group_wait_left(self, incident_id: int) -> float:
        """Seconds left of incident ``incident_id``'s group_wait (its first signal's route's,
        :func:`heald.correlate.targets.group_wait_for`), counted from its detection; 0 when over."""
        from heald.correlate.targets import group_wait_for
        from heald.store import signal_model
        from heald.store.tables import IncidentRow, SignalRow

        with self.store.read() as s:
            detected = s.scalar(sa.select(IncidentRow.detected_at).where(IncidentRow.id == incident_id))
            first = s.scalar(sa.select(SignalRow).where(SignalRow.incident_id == incident_id)
                             .order_by(SignalRow.id).limit(1))
            wait = group_wait_for(signal_model(first), self.config) if first is not None \
                else self.config.healing.group_wait_seconds
        if detected is None:
            return 0.0
        return max(0.0, wait - (utcnow() - detected).total_seconds())

    def deps(self) -> Deps:
        """What the healing's stages use (:mod:`heald.engine.steps`), from this Runtime."""
        return Deps(config=self.config, store=self.store, supervisor=self.supervisor, reasoners=self.reasoners,
                    runbooks=self.runbooks, notifier=self.notifier, rng=self.rng)

    # -- a human's action on an incident (heald.engine.attention) ----------------------------
    def send(self, wf: str, message: dict[str, Any], topic: str) -> None:
        """Send ``message`` to workflow ``wf`` on ``topic`` (wakes it where it waits)."""
        send_now(wf, message, topic)

    # -- approvals -------------------------------------------------------------------------
    def approve(self, incident_id: int, approver: str, verdict: str, comment: str = "") -> dict[str, Any]:
        """Record an approver's verdict and wake the workflow. See :func:`submit_approval`."""
        return submit_approval(self.store, incident_id, approver, verdict, comment,
                               lambda wf, msg: send_now(wf, msg, APPROVAL_TOPIC))


class HealingDispatcher:
    """Enqueues the healings of the incidents a message opened (``start(incident_id,
    delay_seconds)``: :meth:`Runtime.start_healing`) on a thread of its own, in order, off the
    request path: the webhook answers once its signals are committed, without waiting for DBOS
    to record a workflow per new incident (2–13 ms each, most of the cost of a message that
    opens incidents). The group_wait counts from when the message was stored. An incident
    whose healing was handed over here but not enqueued when heald died has none: the next
    start (:meth:`Runtime.resume_open_incidents`) and the periodic sweep
    (:meth:`Runtime.reap_stranded_incidents`) start it; a start that fails is logged and left
    to the sweep too."""

    def __init__(self, start: Callable[[int, float | None], None], gate: signals_first.SignalsFirst) -> None:
        self._start = start
        self._gate = gate  # while signals arrive, each enqueue waits its turn as a healing step does
        self._queue: queue.Queue[tuple[int, float] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the dispatching thread (once)."""
        if not self.running:
            self._thread = threading.Thread(target=self._run, name="heald-healing-dispatch", daemon=True)
            self._thread.start()

    def put(self, incident_id: int, delay_seconds: float) -> None:
        """Hand over the healing of ``incident_id``, to run ``delay_seconds`` from now."""
        self._queue.put((incident_id, time.monotonic() + delay_seconds))

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every healing handed over is enqueued; False when ``timeout`` seconds
        passed first."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Enqueue what was handed over (at most ``timeout`` seconds), then end the thread."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                incident_id, due = item
                try:
                    with self._gate.healing_turn():
                        self._start(incident_id, max(0.0, due - time.monotonic()))
                except Exception:  # the periodic sweep starts the workflow an open incident lacks
                    log.exception("healing.enqueue_failed", incident_id=incident_id)
            finally:
                self._queue.task_done()


def _log_ingested(signals: list[Signal], results: list[correlate.IngestResult]) -> None:
    """One log line per stored chunk (a line per signal cost more than storing it at
    Alertmanager's pace): how many, the incidents opened and joined, the sources; each signal
    at debug level."""
    if log.is_enabled_for(logging.DEBUG):
        for signal, result in zip(signals, results, strict=True):
            log.debug("signal.ingested", source=signal.source, service=signal.service, status=signal.status.value,
                      incident_id=result.incident_id, opened=result.opened)
    opened = sorted({r.incident_id for r in results if r.opened and r.incident_id is not None})
    joined = sorted({r.incident_id for r in results if not r.opened and r.incident_id is not None})
    log.info("signals.ingested", count=len(results), sources=sorted({s.source for s in signals}),
             opened=opened[:20], joined=joined[:20], suppressed=sum(1 for r in results if r.suppressed_by),
             **({"more_incidents": len(opened) + len(joined) - len(opened[:20]) - len(joined[:20])}
                if len(opened) > 20 or len(joined) > 20 else {}))


def _fenced(reason: str) -> None:
    """Another worker took over this one's healings (it was declared dead while it still ran):
    stop at once, before this process acts on anything that is now another worker's."""
    log.critical("heald.fenced", reason=reason)
    logging.shutdown()
    os._exit(70)


def _last_instance(proc: Any) -> str:
    """The managed process's last recorded instance, as text (from its state file)."""
    import json

    try:
        data = json.loads(proc.state_file.read_text())
        return f"its last instance, pid {data['pid']} started {data.get('started_at', '?')}, is gone"
    except (OSError, ValueError, KeyError):
        return "its last instance is gone"


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
    CLI): a DBOS client on the system database. It takes an optional third argument, the topic
    (default :data:`APPROVAL_TOPIC`; a human's action on an incident uses another)."""
    def send(wf: str, message: dict[str, Any], topic: str = APPROVAL_TOPIC) -> None:
        client = DBOSClient(system_database_url=config.dbos_database, application_name="heald")
        try:
            client.send(wf, message, topic=topic)
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


def _stop_retrying(sys_db: Any) -> None:
    """After ``DBOS.destroy``: make DBOS's own database calls in this process's remaining workflow
    threads fail instead of retrying without end (DBOS's ``db_retry`` retries a lost PostgreSQL
    connection, and any SQLite error it deems retriable, forever, which kept heald's process
    from exiting after Ctrl-C while a healing waited for a human). Those workflows stay PENDING
    and resume at the next start. Without DBOS's internals (another version) nothing changes."""
    if sys_db is None:
        return
    for attr, value in (("_retry_connection_errors", False), ("_is_sqlite", False)):
        if hasattr(sys_db, attr):
            setattr(sys_db, attr, value)


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
