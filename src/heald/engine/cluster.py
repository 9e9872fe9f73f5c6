"""Several heald workers on one PostgreSQL database: :class:`Cluster`.

DBOS runs the healings: each workflow is tagged with the executor id of the worker that runs
it, and a worker recovers at start the pending workflows of its own id
(https://docs.dbos.dev/production/self-hosting/workflow-recovery). What DBOS leaves to the
application is noticing that another executor is gone and asking a live one to recover its
workflows. That is all this module adds, with two tables of the store and one advisory lock:

- **heartbeats** (``heald_workers``): every worker updates its row every
  ``cluster.heartbeat_interval_seconds``. A worker whose last heartbeat is older than
  ``cluster.heartbeat_timeout_seconds`` is dead; one that stopped cleanly says so. One live
  worker of the same version claims it (a conditional ``UPDATE``: exactly one claim succeeds)
  and calls DBOS's recovery of that executor's pending workflows
  (``DBOS._recover_pending_workflows``), which puts them back on their queue so that exactly
  one live worker dequeues and resumes each (DBOS's own ``ENQUEUED → PENDING`` handover), from
  its last completed step. A remedy begun before the death is not applied twice: the act
  step's idempotency key and the remedy's guard (:func:`heald.engine.steps.act`) see it.
  Times are the database's clock, so workers whose clocks differ agree.
- **leases** (``heald_leases``): each probe and log tailer is run by the one worker holding its
  lease; the holder renews it with every heartbeat for ``heartbeat_timeout_seconds``, and stops
  running it locally one heartbeat interval *before* that (so two never run it at once, even
  when its heartbeats fail). A free or expired lease goes to the live worker that rendezvous
  hashing prefers, so the leases spread over the workers, and a dead worker's move within
  the heartbeat timeout.
- **election**: work that must run once per cluster (the stranded-incident sweep, audit
  checkpoints, the safety net of recovery) runs on the worker holding a session-level
  PostgreSQL advisory lock; when its session ends (the worker died), another takes it.

A worker that finds its own row claimed by another (it was declared dead while it still ran,
e.g. a long pause) stops at once through ``on_fenced``: its healings belong to another worker now.

On SQLite there is one worker (:mod:`heald.engine.lock` refuses a second): it heartbeats, holds
every lease and is the leader, and recovers no one.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
import structlog

from heald import __version__
from heald.config import HealdConfig
from heald.models import Signal
from heald.store import Store
from heald.store.db import create_engine, is_sqlite, normalize_url, write_gate
from heald.store.tables import ClusterLeaseRow, WebhookDeliveryRow, WorkerRow

log = structlog.get_logger("heald.cluster")

#: The leader's advisory lock (``pg_try_advisory_lock(int4, int4)``): "heal", "L".
LEADER_KEYS = (0x6865616C, 0x4C)
_W: sa.Table = WorkerRow.__table__  # type: ignore[assignment]
_L: sa.Table = ClusterLeaseRow.__table__  # type: ignore[assignment]


class ExecutorIdInUse(RuntimeError):
    """Another live worker already runs with this executor id; the message names its pid, host
    and last heartbeat."""


def probe_lease(service: str, probe: str) -> str:
    """The lease name of a service's probe (``probe:<service>/<probe label>``)."""
    return f"probe:{service}/{probe}"


def log_lease(name: str) -> str:
    """The lease name of a log tailer (``log:<name>``)."""
    return f"log:{name}"


def db_now(conn: sa.Connection) -> float:
    """The database's clock, in seconds since the epoch (PostgreSQL ``clock_timestamp()``,
    SQLite ``julianday('now')``, millisecond precision)."""
    if conn.dialect.name == "postgresql":
        return float(conn.execute(sa.text("SELECT extract(epoch from clock_timestamp())")).scalar_one())
    return float(conn.execute(sa.text("SELECT (julianday('now') - 2440587.5) * 86400.0")).scalar_one())


def _rank(lease: str, executor_id: str) -> bytes:
    return hashlib.sha256(f"{lease}\0{executor_id}".encode()).digest()


def preferred_worker(lease: str, live: Iterable[str]) -> str | None:
    """The live worker (executor id) that rendezvous hashing gives ``lease`` to, or None."""
    return max(live, key=lambda eid: _rank(lease, eid), default=None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class WorkerInfo:
    """One worker as ``heald workers`` shows it. Times in seconds since the epoch (the
    database's clock); ``heartbeat_age`` in seconds; ``live``: heartbeating within the timeout;
    ``leases``: the probes and log tailers it holds."""

    executor_id: str
    host: str
    pid: int
    version: str
    api_url: str | None
    state: str
    started_at: float
    heartbeat_at: float
    heartbeat_age: float
    live: bool
    leader: bool
    recovered_by: str | None
    recovered_at: float | None
    recovered_workflows: int
    leases: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The worker as a JSON object (the API's and ``heald workers --json``'s shape)."""
        return asdict(self)


def list_workers(engine: sa.Engine, timeout: float) -> list[WorkerInfo]:
    """Every worker recorded in ``engine``'s database, live ones first, with the leases each
    holds; ``timeout`` (seconds) is ``cluster.heartbeat_timeout_seconds``."""
    with engine.connect() as conn:
        now = db_now(conn)
        rows = conn.execute(sa.select(_W).order_by(_W.c.executor_id)).mappings().all()
        leases: dict[str, list[str]] = {}
        for name, eid, expires in conn.execute(sa.select(_L.c.name, _L.c.executor_id, _L.c.expires_at)
                                               .order_by(_L.c.name)).tuples():
            if float(expires) >= now:
                leases.setdefault(str(eid), []).append(str(name))
    out = []
    for r in rows:
        live = r["state"] == "running" and now - r["heartbeat_at"] <= timeout
        out.append(WorkerInfo(r["executor_id"], r["host"], r["pid"], r["version"], r["api_url"],
                              r["state"] if live or r["state"] != "running" else "silent",
                              r["started_at"], r["heartbeat_at"], round(max(0.0, now - r["heartbeat_at"]), 3), live,
                              bool(r["leader"]) and live, r["recovered_by"], r["recovered_at"],
                              r["recovered_workflows"], leases.get(r["executor_id"], []) if live else []))
    return sorted(out, key=lambda w: (not w.live, w.executor_id))


class Cluster:
    """This worker's membership of the cluster (see the module docstring).

    ``recover(executor_ids)`` has DBOS recover those executors' pending workflows and returns
    how many; ``pending(executor_id)`` counts that executor's pending workflows (the leader's
    safety net); ``lease_names`` are the probes and log tailers this worker may run;
    ``on_lease(name, held)`` is called when this worker gains or loses one; ``on_recovered(
    executor_id, n)`` after a recovery; ``on_fenced(reason)`` when another worker claimed this
    worker's row (it must stop acting at once).
    """

    def __init__(self, config: HealdConfig, *, recover: Callable[[list[str]], int],
                 pending: Callable[[str], int] | None = None, lease_names: Iterable[str] = (),
                 on_lease: Callable[[str, bool], None] | None = None,
                 on_recovered: Callable[[str, int], None] | None = None,
                 on_fenced: Callable[[str], None] | None = None):
        self.config = config
        self.executor_id = config.executor_id
        self.interval = config.cluster.heartbeat_interval_seconds
        self.timeout = config.cluster.heartbeat_timeout_seconds
        self.recover, self.pending = recover, pending
        self.on_lease, self.on_recovered, self.on_fenced = on_lease, on_recovered, on_fenced
        self.lease_names = sorted(set(lease_names))
        self.single = is_sqlite(normalize_url(config.database))
        self.engine = create_engine(config.database, pool_size=1, max_overflow=2)  # a heartbeat at a time
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.api_url = config.cluster.advertise_url or f"http://{self.host}:{config.api.port}"
        self.leader = self.single
        self.recovered = 0  #: workflows this worker had DBOS recover from dead workers
        self.beats = 0
        self._owned: dict[str, float] = {}  # lease → monotonic deadline of running it here
        self._free_seen: dict[str, int] = {}  # lease → consecutive beats it was seen free
        self._leader_conn: sa.Connection | None = None
        self._leader_engine: sa.Engine | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fenced = False
        #: whether this worker recovers dead workers' healings (set once DBOS is launched)
        self.recovering = False
        self._joined = False

    @contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        with write_gate(self.engine), self.engine.begin() as conn:
            yield conn

    # -- membership ------------------------------------------------------------------------
    def join(self) -> None:
        """Record this worker as running (before DBOS launches). Raises ExecutorIdInUse when a
        live worker (heartbeating, and not a dead process of this host) has the same id."""
        with self._tx() as c:
            now = db_now(c)
            row = c.execute(sa.select(_W).where(_W.c.executor_id == self.executor_id)).mappings().first()
            if row is not None and row["state"] == "running" and now - row["heartbeat_at"] <= self.timeout:
                same_host = row["host"] == self.host
                if not (same_host and (row["pid"] == self.pid or not _pid_alive(row["pid"]))):
                    raise ExecutorIdInUse(
                        f"executor_id {self.executor_id!r} is in use by a live heald (pid {row['pid']} on {row['host']}, "
                        f"last heartbeat {now - row['heartbeat_at']:.1f} s ago): give each worker its own executor_id "
                        "(HEALD_EXECUTOR_ID), or wait cluster.heartbeat_timeout_seconds after stopping the other")
            values = {"host": self.host, "pid": self.pid, "version": __version__, "api_url": self.api_url,
                      "state": "running", "started_at": now, "heartbeat_at": now, "leader": self.single,
                      "recovered_by": None, "recovered_at": None, "recovered_workflows": 0}
            if row is None:
                c.execute(sa.insert(_W).values(executor_id=self.executor_id, **values))
            else:
                c.execute(sa.update(_W).where(_W.c.executor_id == self.executor_id).values(**values))
        self._joined = True
        log.info("cluster.joined", executor_id=self.executor_id, host=self.host, pid=self.pid, single=self.single)

    def start(self) -> None:
        """One heartbeat now (leases and leadership taken at once), then one every interval
        in a thread until :meth:`stop_heartbeats`. Right after :meth:`join`: DBOS's launch
        can take longer than the heartbeat timeout; dead workers are recovered only once
        :attr:`recovering` is set."""
        self._stop.clear()
        self._safe_beat()
        self._thread = threading.Thread(target=self._run, name="heald-cluster", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._safe_beat()

    def _safe_beat(self) -> None:
        try:
            self.beat()
        except Exception:  # the database is away: leases lapse locally, the next beat tries again
            log.exception("cluster.heartbeat_failed", executor_id=self.executor_id)
            self._drop_leader()

    def stop_heartbeats(self) -> None:
        """Stop the heartbeat thread and give up every lease and the leadership (at heald's
        stop, before DBOS goes: probes and tailers are already stopped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if not self._joined:
            return  # another worker's row and leases, if any, are not this one's to touch
        for name in list(self._owned):
            self._lose(name)
        try:
            with self._tx() as c:
                c.execute(sa.delete(_L).where(_L.c.executor_id == self.executor_id))
        except Exception:
            log.exception("cluster.release_failed", executor_id=self.executor_id)
        self._drop_leader()

    def leave(self) -> None:
        """Record this worker as stopped (after DBOS is destroyed: its pending healings are
        then recovered by a live worker at once) and close the connections."""
        if not self._joined:
            self.engine.dispose()
            return
        self._joined = False
        try:
            with self._tx() as c:
                c.execute(sa.update(_W).where(_W.c.executor_id == self.executor_id, _W.c.pid == self.pid,
                                              _W.c.host == self.host, _W.c.state == "running")
                          .values(state="stopped", leader=False, heartbeat_at=db_now(c)))
        except Exception:
            log.exception("cluster.leave_failed", executor_id=self.executor_id)
        self.engine.dispose()

    # -- what this worker runs --------------------------------------------------------------
    def owns(self, lease: str) -> bool:
        """Whether this worker may run ``lease`` now (always on SQLite)."""
        if self.single:
            return not self._fenced
        deadline = self._owned.get(lease)
        return deadline is not None and deadline > time.monotonic()

    def held(self) -> list[str]:
        """The leases this worker holds now."""
        return [n for n in self.lease_names if self.owns(n)]

    def is_leader(self) -> bool:
        """Whether this worker runs the once-per-cluster work now."""
        return self.leader and not self._fenced

    def _gain(self, name: str, deadline: float) -> None:
        fresh = name not in self._owned
        self._owned[name] = deadline
        if fresh:
            log.info("cluster.lease_taken", executor_id=self.executor_id, lease=name)
            if self.on_lease is not None:
                self.on_lease(name, True)

    def _lose(self, name: str) -> None:
        if self._owned.pop(name, None) is not None:
            log.info("cluster.lease_released", executor_id=self.executor_id, lease=name)
            if self.on_lease is not None:
                self.on_lease(name, False)

    # -- one heartbeat -----------------------------------------------------------------------
    def beat(self) -> None:
        """One heartbeat: renew this worker's row, its leases and its leadership, take the
        leases it should, and recover the workers that died. Raises on a database error (the
        leases then lapse locally at their deadline)."""
        if self._fenced:
            return
        t0 = time.monotonic()
        with self._tx() as c:
            now = db_now(c)
            mine = c.execute(sa.update(_W).where(_W.c.executor_id == self.executor_id, _W.c.pid == self.pid,
                                                 _W.c.host == self.host, _W.c.state == "running")
                             .values(heartbeat_at=now, leader=self.leader))
            if mine.rowcount != 1:
                self._fence(c)
                return
            live = [r[0] for r in c.execute(sa.select(_W.c.executor_id).where(
                _W.c.state == "running", _W.c.heartbeat_at >= now - self.timeout))]
            if not self.single:
                self._leases(c, now, t0, live)
        self.beats += 1
        self._elect()
        if not self.single and self.recovering:
            self._recover_dead()

    def _fence(self, c: sa.Connection) -> None:
        row = c.execute(sa.select(_W.c.recovered_by, _W.c.pid, _W.c.host).where(
            _W.c.executor_id == self.executor_id)).first()
        reason = (f"worker {self.executor_id} was declared dead and its healings recovered by {row[0]}" if row and row[0]
                  else f"executor_id {self.executor_id} was taken by pid {row[1]} on {row[2]}" if row
                  else f"worker {self.executor_id}'s row is gone")
        self._fenced = True
        for name in list(self._owned):
            self._lose(name)
        log.critical("cluster.fenced", executor_id=self.executor_id, reason=reason)
        if self.on_fenced is not None:
            self.on_fenced(reason)

    def _leases(self, c: sa.Connection, now: float, t0: float, live: list[str]) -> None:
        """Renew, take and hand over leases in the heartbeat's transaction."""
        if not self.lease_names:
            return
        # a dead holder's lease lapses within the heartbeat timeout of its last renewal, so another
        # worker's next heartbeat takes it within the timeout of the death
        ttl = self.timeout - self.interval
        deadline = t0 + ttl - self.interval  # stop running it here before anyone else may take it
        rows = {r[0]: (r[1], r[2]) for r in c.execute(sa.select(_L.c.name, _L.c.executor_id, _L.c.expires_at)
                                                      .where(_L.c.name.in_(self.lease_names)))}
        # who a lease is given to: workers heartbeating now (a dead one drops out long before its
        # timeout) that have been running for two heartbeats
        beating = c.execute(sa.select(_W.c.executor_id, _W.c.started_at).where(
            _W.c.executor_id.in_(live), _W.c.heartbeat_at >= now - 2 * self.interval)).tuples().all()
        settled = [e for e, started in beating if now - started >= 2 * self.interval] or [e for e, _ in beating]
        for name in self.lease_names:
            holder = rows.get(name)
            preferred = preferred_worker(name, settled)
            if holder is not None and holder[0] == self.executor_id and holder[1] >= now:
                if preferred is not None and preferred != self.executor_id:
                    self._lose(name)  # stop here first, then let the preferred worker take it
                    c.execute(sa.delete(_L).where(_L.c.name == name, _L.c.executor_id == self.executor_id))
                    continue
                c.execute(sa.update(_L).where(_L.c.name == name, _L.c.executor_id == self.executor_id)
                          .values(expires_at=now + ttl))
                self._gain(name, deadline)
                continue
            self._lose(name)  # not ours (any more)
            if holder is not None and holder[1] >= now:
                self._free_seen.pop(name, None)
                continue
            seen = self._free_seen[name] = self._free_seen.get(name, 0) + 1
            if preferred != self.executor_id and seen < 3:
                continue  # the preferred worker takes it; anyone does after three beats
            if holder is None:
                ins = _insert(c).values(name=name, executor_id=self.executor_id, acquired_at=now,
                                        expires_at=now + ttl).on_conflict_do_nothing(index_elements=["name"])
                got = c.execute(ins).rowcount == 1
            else:
                got = c.execute(sa.update(_L).where(_L.c.name == name, _L.c.expires_at < now).values(
                    executor_id=self.executor_id, acquired_at=now, expires_at=now + ttl)).rowcount == 1
            if got:
                self._free_seen.pop(name, None)
                self._gain(name, deadline)

    def _elect(self) -> None:
        """Take or keep the leader's advisory lock (PostgreSQL; SQLite: always the leader)."""
        if self.single:
            return
        try:
            if self._leader_conn is not None:
                held: int = self._leader_conn.execute(sa.text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                    "AND classid = :a AND objid = :b AND objsubid = 2 AND granted"),
                    {"a": LEADER_KEYS[0], "b": LEADER_KEYS[1]}).scalar_one()
                self._leader_conn.commit()
                if not held:
                    self._drop_leader()
                return
            if self._leader_engine is None:
                self._leader_engine = sa.create_engine(normalize_url(self.config.database), poolclass=sa.pool.NullPool,
                                                       connect_args={"application_name": f"heald leader {self.executor_id}"[:63]})
            conn = self._leader_engine.connect()
            got: bool = conn.execute(sa.text("SELECT pg_try_advisory_lock(:a, :b)"),
                               {"a": LEADER_KEYS[0], "b": LEADER_KEYS[1]}).scalar_one()
            conn.commit()
            if got:
                self._leader_conn, self.leader = conn, True
                log.info("cluster.leader", executor_id=self.executor_id)
            else:
                conn.close()
        except Exception:
            log.exception("cluster.election_failed", executor_id=self.executor_id)
            self._drop_leader()

    def _drop_leader(self) -> None:
        if self.single:
            return
        if self.leader:
            log.info("cluster.leader_lost", executor_id=self.executor_id)
        self.leader = False
        if self._leader_conn is not None:
            try:
                self._leader_conn.close()  # the session ends, and its advisory lock with it
            except Exception:
                pass
            self._leader_conn = None
        if self._leader_engine is not None:
            self._leader_engine.dispose()
            self._leader_engine = None

    # -- failover ----------------------------------------------------------------------------
    def _recover_dead(self) -> None:
        """Claim each dead or stopped worker of this version not yet recovered (one claim
        succeeds cluster-wide) and have DBOS recover its pending workflows; the leader also
        recovers again any that such a worker still has (its recoverer died before)."""
        gone = sa.or_(_W.c.state == "stopped", sa.and_(_W.c.state.in_(["running", "dead"]),
                                                       _W.c.heartbeat_at < sa.bindparam("cutoff")))
        claimed: list[str] = []
        with self._tx() as c:
            now = db_now(c)
            cutoff = now - self.timeout
            for (eid,) in c.execute(sa.select(_W.c.executor_id).where(
                    _W.c.executor_id != self.executor_id, _W.c.version == __version__, _W.c.recovered_at.is_(None),
                    gone), {"cutoff": cutoff}).tuples().all():
                res = c.execute(sa.update(_W).where(_W.c.executor_id == eid, _W.c.recovered_at.is_(None), gone).values(
                    state=sa.case((_W.c.state == "stopped", "stopped"), else_="dead"), recovered_by=self.executor_id,
                    recovered_at=now, leader=False), {"cutoff": cutoff})
                if res.rowcount == 1:
                    claimed.append(eid)
            again: list[str] = []
            if self.is_leader() and self.pending is not None and self.beats % 5 == 0:  # the safety net
                again = [r[0] for r in c.execute(sa.select(_W.c.executor_id).where(
                    _W.c.executor_id != self.executor_id, _W.c.version == __version__, _W.c.state != "running",
                    _W.c.recovered_at < now - self.timeout))]
        for eid in claimed:
            self._recover_one(eid, claim=True)
        for eid in again:
            if self.pending is not None and self.pending(eid) > 0:
                self._recover_one(eid, claim=False)

    def _recover_one(self, eid: str, *, claim: bool) -> None:
        try:
            n = self.recover([eid])
        except Exception:
            log.exception("cluster.recovery_failed", executor_id=self.executor_id, dead=eid)
            if claim:  # let a later heartbeat (this worker's or another's) claim it again
                with self._tx() as c:
                    c.execute(sa.update(_W).where(_W.c.executor_id == eid, _W.c.recovered_by == self.executor_id)
                              .values(recovered_at=None, recovered_by=None))
            return
        self.recovered += n
        with self._tx() as c:
            c.execute(sa.update(_W).where(_W.c.executor_id == eid).values(
                recovered_workflows=_W.c.recovered_workflows + n, recovered_at=db_now(c)))
        log.warning("cluster.worker_recovered", executor_id=self.executor_id, dead=eid, workflows=n)
        if self.on_recovered is not None:
            self.on_recovered(eid, n)


def fanout_delivery_id(store: Store, config: HealdConfig, source: str, signals: list[Signal]) -> str | None:
    """A delivery id for a webhook message that carries none, so that the same notification
    sent to two workers is stored once (:mod:`heald.correlate.deliveries` drops the second):
    ``same:<sha256 of the signals' fingerprints, statuses, starts and ends>:<window number>``,
    the previous window's id when a message with these signals was accepted in it less than
    ``cluster.dedup_window_seconds`` ago. None (no dedup) on SQLite, with ``database_lock``
    (one worker), or with a window of 0. Two copies arriving within milliseconds of a window's
    boundary, the first not yet committed, are both stored (joined to one incident)."""
    window = config.cluster.dedup_window_seconds
    if window <= 0 or config.database_lock or is_sqlite(normalize_url(config.database)) or not signals:
        return None
    from heald.correlate.fingerprint import fingerprint

    digest = hashlib.sha256(repr([(s.fingerprint or fingerprint(s), s.status.value,
                                   s.starts_at.isoformat() if s.starts_at else None,
                                   s.ends_at.isoformat() if s.ends_at else None) for s in signals]).encode()).hexdigest()
    n = int(time.time() // window)
    previous = f"same:{digest}:{n - 1}"
    with store.read() as session:
        row = session.get(WebhookDeliveryRow, (source, previous))
    if row is not None and (time.time() - row.received_at.timestamp()) < window:
        return previous
    return f"same:{digest}:{n}"


def _insert(c: sa.Connection) -> Any:
    """The dialect's ``INSERT`` with ``ON CONFLICT`` (PostgreSQL or SQLite)."""
    if c.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(_L)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(_L)
