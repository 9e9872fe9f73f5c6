"""Several heald workers on one PostgreSQL database (issue 14): real ``heald serve`` processes
on loopback ports sharing a fresh database, killed with SIGKILL.

- the worker running a healing is killed during act (after the remedy ran, before it was
  recorded) and during verification: another worker recovers the healing through DBOS and
  finishes it, the remedy's side effect happened once, the audit chain is intact;
- the worker running a probe is killed: another runs it within its interval plus the
  heartbeat timeout, and never two at once;
- the same Alertmanager message POSTed to two workers is stored once;
- a second worker on a SQLite database is refused with a clear message.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from dbos import DBOSClient

from heald.engine import workflow_id
from heald.models import ActionStatus, IncidentState
from heald.store import Store
from tests.conftest import free_port, heald_cmd, run_heald, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

INTERVAL, TIMEOUT = 0.5, 3.0  # cluster heartbeat interval and timeout of these tests, seconds
PROBE_INTERVAL = 0.2


class Target:
    """The service the workers heal: ``GET /healthz`` answers 200 once the fix file exists
    (500 before); the remedy (a ``run_command``) appends one line to the fix file, so its
    lines count how many times the remedy ran, whichever worker ran it."""

    def __init__(self, root: Path, healthy: bool = False):
        self.fixes = root / "fixes"
        if healthy:
            self.fixes.write_text("")
        self.hits: list[float] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.hits.append(time.monotonic())
                ok = outer.fixes.exists()
                self.send_response(200 if ok else 500)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok" if ok else b"no")

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/healthz"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def runs(self) -> int:
        return len(self.fixes.read_text().splitlines()) if self.fixes.exists() else 0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_config(tmp_path: Path, pg_url: str, target: Target) -> Path:
    """One heald.yaml for every worker (each gets its executor id, state directory and port
    from the environment and the command line): service "web" watched by an HTTP probe, healed
    by a non-idempotent allowlisted command that writes the fix file."""
    rb = tmp_path / "runbooks.yaml"
    rb.write_text(json.dumps({"runbooks": [{
        "name": "web-down", "match": {"labels": ['source="probe"', 'service="web"']},
        "diagnosis": {"category": "service_down", "confidence": 0.95, "explanation": "web answers 500"},
        "remedies": [{"remedy": "run_command", "risk": "low", "params": {"name": "fix-web"}}]}]}))
    fix = f"open({str(target.fixes)!r}, 'a').write('fixed\\n')"
    cfg = {"database_url": pg_url, "database_lock": False, "api": {"auth": False}, "log_level": "info",
           "log_format": "console", "default_runbooks": False, "runbooks": [str(rb)],
           "cluster": {"heartbeat_interval_seconds": INTERVAL, "heartbeat_timeout_seconds": TIMEOUT},
           "policy": {"auto_min_confidence": 0.5, "escalate_below_confidence": 0.3},
           "remedies": {"commands": {"fix-web": {"argv": [sys.executable, "-c", fix], "idempotent": False}}},
           "healing": {"group_wait_seconds": 0.05, "stabilization_seconds": 0.5, "verify_interval_seconds": 0.1,
                       "verify_timeout_seconds": 20},
           "services": {"web": {"probes": [{"url": target.url, "interval_seconds": PROBE_INTERVAL,
                                            "timeout_seconds": 1, "failure_threshold": 2}]}}}
    path = tmp_path / "heald.yaml"
    path.write_text(json.dumps(cfg))
    return path


@dataclass
class Worker:
    """One ``heald serve`` process of the cluster."""

    executor_id: str
    port: int
    state_dir: Path
    log: Path
    proc: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def probe_checks(self) -> float:
        """This worker's count of checks of web's probe (``heald_probe_checks_total``)."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        m = re.search(r'^heald_probe_checks_total\{probe="[^"]*",service="web"\} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0


class Cluster:
    def __init__(self, tmp_path: Path, config: Path):
        self.tmp_path, self.config = tmp_path, config
        self.workers: dict[str, Worker] = {}

    def start(self, executor_id: str, failpoints: str = "") -> Worker:
        state = self.tmp_path / f"state-{executor_id}"
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("HEALD_")},
               "HEALD_EXECUTOR_ID": executor_id, "HEALD_STATE_DIR": str(state), "HEALD_FAILPOINTS": failpoints}
        port = free_port()
        log = self.tmp_path / f"{executor_id}.log"
        proc = subprocess.Popen(heald_cmd("--config", str(self.config), "serve", "--port", str(port)), env=env,
                                stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
        w = self.workers[executor_id] = Worker(executor_id, port, state, log, proc, env)
        return w

    def wait_up(self, *workers: Worker) -> None:
        for w in workers:
            wait_for(lambda w=w: w.up() or w.proc.poll() is not None, timeout=60, what=f"worker {w.executor_id}")
            assert w.proc.poll() is None, w.log.read_text()[-3000:]

    def stop(self) -> None:
        for w in self.workers.values():
            if w.proc.poll() is None:
                w.proc.terminate()
        for w in self.workers.values():
            try:
                w.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, tmp_path / "heald.yaml")
    yield c
    c.stop()


def workers_table(pg_url: str) -> dict[str, dict[str, object]]:
    import sqlalchemy as sa

    from heald.store.db import normalize_url

    engine = sa.create_engine(normalize_url(pg_url))
    try:
        with engine.connect() as c:
            return {r["executor_id"]: dict(r) for r in c.execute(sa.text("SELECT * FROM heald_workers")).mappings()}
    finally:
        engine.dispose()


def lease_holder(pg_url: str) -> str | None:
    import sqlalchemy as sa

    from heald.store.db import normalize_url

    engine = sa.create_engine(normalize_url(pg_url))
    try:
        with engine.connect() as c:
            return c.execute(sa.text("SELECT executor_id FROM heald_leases WHERE name LIKE 'probe:web/%' "
                                     "AND expires_at > extract(epoch from clock_timestamp())")).scalar()
    finally:
        engine.dispose()


@pytest.mark.parametrize("failpoint", ["act.after_apply", "verify.before"])
def test_the_worker_running_a_healing_is_killed_and_another_finishes_it_applying_the_remedy_once(
        tmp_path: Path, pg_url: str, cluster: Cluster, failpoint: str) -> None:
    """w1 runs alone until a fail point holds its healing (act.after_apply: the command ran, its
    end is recorded nowhere; verify.before: the act step is recorded in DBOS); w2 and w3 join;
    w1 is SIGKILLed. Within the heartbeat timeout one of them claims w1, DBOS re-enqueues its
    workflow and a live worker resumes it: the remedy is not run again (the act step's
    idempotency key and the command's guard; DBOS's recorded step), the incident ends
    resolved, the audit chain is intact."""
    target = Target(tmp_path)
    write_config(tmp_path, pg_url, target)
    try:
        w1 = cluster.start("w1", failpoints=failpoint)
        cluster.wait_up(w1)
        wait_for(lambda: f"failpoint {failpoint} reached" in w1.log.read_text(), timeout=60,
                 what=f"w1 at fail point {failpoint}")
        assert target.runs() == 1
        w2, w3 = cluster.start("w2"), cluster.start("w3")
        cluster.wait_up(w2, w3)
        store = Store(pg_url)
        [inc] = store.list_incidents()
        assert inc.state == IncidentState.acting
        killed_at = time.monotonic()
        w1.proc.send_signal(signal.SIGKILL)
        w1.proc.wait(timeout=10)

        done = wait_for(lambda: (i := store.get_incident(inc.id)).state.terminal and i, timeout=60,
                        what="another worker to finish the healing")
        failover = time.monotonic() - killed_at
        print(f"failover ({failpoint}): killed → resolved in {failover:.2f} s")
        assert done.state == IncidentState.resolved, done.closed_reason
        assert failover < TIMEOUT + 15, failover
        assert target.runs() == 1, "the remedy ran twice"
        [action] = store.actions_for(inc.id)
        assert action.status == ActionStatus.succeeded
        if failpoint == "act.after_apply":
            assert "not applied again" in action.output
        rows = workers_table(pg_url)
        assert rows["w1"]["state"] == "dead" and rows["w1"]["recovered_by"] in ("w2", "w3"), rows["w1"]
        assert rows["w1"]["recovered_workflows"] >= 1
        client = DBOSClient(system_database_url=pg_url, application_name="heald")
        try:
            [wf] = client.list_workflows(workflow_ids=[workflow_id(inc.id)], load_input=False, load_output=False)
        finally:
            client.destroy()
        assert wf.executor_id in ("w2", "w3"), wf
        events = [e.event for e in store.audit_entries(incident_id=inc.id)]
        assert events.count("action.started") == 1
        recovered = [e for e in store.audit_entries() if e.event == "worker.recovered"]
        assert len(recovered) == 1 and recovered[0].details["dead"] == "w1", recovered
        store.close()
        cluster.stop()  # the leader writes its last signed checkpoint
        for w in (w1, w2, w3):
            verified = run_heald("--config", str(cluster.config), "audit", "verify",
                                 env={**w.env, "HEALD_FAILPOINTS": ""})
            assert verified.returncode == 0, verified.stdout + verified.stderr
            assert "audit chain intact" in verified.stdout
    finally:
        target.close()


def test_a_probe_runs_on_one_worker_and_moves_when_its_owner_is_killed(
        tmp_path: Path, pg_url: str, cluster: Cluster) -> None:
    """Three workers: web's probe runs on exactly one (its checks count up on one worker's
    /metrics only); its owner SIGKILLed, another runs it within the probe's interval plus the
    heartbeat timeout, and again only one."""
    target = Target(tmp_path, healthy=True)
    write_config(tmp_path, pg_url, target)
    try:
        ws = [cluster.start(f"w{i}") for i in (1, 2, 3)]
        cluster.wait_up(*ws)
        owner = wait_for(lambda: lease_holder(pg_url), timeout=20, what="a worker to hold web's probe")

        def running(workers: list[Worker], seconds: float) -> set[str]:
            """The workers whose check count grew over ``seconds``."""
            before = {w.executor_id: w.probe_checks() for w in workers}
            time.sleep(seconds)
            return {w.executor_id for w in workers if w.probe_checks() > before[w.executor_id]}

        time.sleep(3 * INTERVAL)  # the lease settles where rendezvous hashing puts it
        owner = lease_holder(pg_url)
        for _ in range(3):
            assert running(ws, 1.0) == {owner}
        dead = cluster.workers[str(owner)]
        alive = [w for w in ws if w is not dead]
        dead.proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        dead.proc.wait(timeout=10)
        base = {w.executor_id: w.probe_checks() for w in alive}
        successor = wait_for(lambda: next((w.executor_id for w in alive if w.probe_checks() > base[w.executor_id]),
                                          None), timeout=TIMEOUT + 10, interval=0.05, what="another worker to probe")
        moved = time.monotonic() - killed_at
        print(f"probe moved from {owner} to {successor} in {moved:.2f} s")
        assert moved <= PROBE_INTERVAL + TIMEOUT + 0.5, moved  # + the time to scrape three /metrics
        for _ in range(3):
            assert running(alive, 1.0) == {successor}
        assert lease_holder(pg_url) == successor
        listed = httpx.get(f"{alive[0].url}/v1/workers", timeout=5).json()
        states = {w["executor_id"]: w for w in listed["workers"]}
        assert states[str(owner)]["live"] is False
        assert states[successor]["leases"] and not states[str(owner)]["leases"]
        assert sum(1 for w in listed["workers"] if w["leader"]) == 1
    finally:
        target.close()


def test_the_same_alertmanager_message_posted_to_two_workers_is_stored_once(
        tmp_path: Path, pg_url: str, cluster: Cluster) -> None:
    """Alertmanager with two webhook URLs (or an HA pair) sends one notification to two
    workers at the same time: one signal is stored, the other answer says duplicate; a
    different notification (the alert resolved) is stored."""
    target = Target(tmp_path, healthy=True)
    write_config(tmp_path, pg_url, target)
    try:
        w1, w2 = cluster.start("w1"), cluster.start("w2")
        cluster.wait_up(w1, w2)
        alert = {"labels": {"alertname": "Disk", "service": "db", "instance": "db1"}, "annotations": {},
                 "startsAt": "2026-11-28T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "abc123",
                 "status": "firing"}
        body = {"version": "4", "groupKey": "{}:{alertname=\"Disk\"}", "status": "firing", "receiver": "heald",
                "groupLabels": {"alertname": "Disk"}, "commonLabels": {}, "commonAnnotations": {},
                "externalURL": "http://am:9093", "alerts": [alert]}
        answers: list[httpx.Response] = []
        barrier = threading.Barrier(2)

        def post(w: Worker) -> None:
            barrier.wait()
            answers.append(httpx.post(f"{w.url}/v1/webhooks/alertmanager", json=body, timeout=30))

        threads = [threading.Thread(target=post, args=(w,)) for w in (w1, w2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
        assert sorted(len(a.json()["accepted"]) for a in answers) == [0, 1], [a.json() for a in answers]
        assert any(a.json().get("duplicate") for a in answers)
        store = Store(pg_url)
        assert store.count_signals_by_source() == {"alertmanager": 1}
        resolved = {**body, "status": "resolved",
                    "alerts": [{**alert, "status": "resolved", "endsAt": "2026-11-28T10:05:00Z"}]}
        assert httpx.post(f"{w2.url}/v1/webhooks/alertmanager", json=resolved, timeout=30).status_code == 202
        assert store.count_signals_by_source() == {"alertmanager": 2}
        store.close()

        # `heald workers` reads the database: both live, one leader
        listed = run_heald("--config", str(cluster.config), "workers", "--json", env=w1.env)
        assert listed.returncode == 0, listed.stderr
        rows = {w["executor_id"]: w for w in json.loads(listed.stdout)}
        assert set(rows) == {"w1", "w2"} and all(w["live"] and w["state"] == "running" for w in rows.values())
        assert sum(w["leader"] for w in rows.values()) == 1
        # a third worker given w1's executor id is refused, naming the live one, and w1 runs on
        twin = run_heald("--config", str(cluster.config), "serve", "--port", str(free_port()),
                         env={**w1.env, "HEALD_STATE_DIR": str(tmp_path / "state-twin")}, timeout=120)
        assert twin.returncode == 1, twin.stderr[-2000:]
        assert f"executor_id 'w1' is in use by a live heald (pid {w1.proc.pid}" in twin.stderr
        assert w1.up() and workers_table(pg_url)["w1"]["pid"] == w1.proc.pid
    finally:
        target.close()


def test_a_second_worker_on_one_sqlite_database_is_refused(tmp_path: Path) -> None:
    """SQLite serves one heald: a second one with its own state directory but the first one's
    database file exits 1, naming the file and PostgreSQL as the way to several workers."""
    db = tmp_path / "state-a" / "heald.db"
    cfg = tmp_path / "heald.yaml"
    cfg.write_text(json.dumps({"database_url": f"sqlite:///{db}", "api": {"auth": False}, "log_level": "warning",
                               "audit": {"checkpoints": False}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALD_")}
    first = subprocess.Popen(heald_cmd("--config", str(cfg), "serve", "--port", str(free_port())),
                             env={**env, "HEALD_STATE_DIR": str(tmp_path / "state-a"), "HEALD_EXECUTOR_ID": "a"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (db.parent / "heald.db.heald-lock").exists() and
                 "pid" in (db.parent / "heald.db.heald-lock").read_text(), timeout=30, what="the first heald")
        second = run_heald("--config", str(cfg), "serve", "--port", str(free_port()),
                           env={**env, "HEALD_STATE_DIR": str(tmp_path / "state-b"), "HEALD_EXECUTOR_ID": "b"},
                           timeout=60)
        assert second.returncode == 1, second.stderr
        assert f"pid {first.pid}" in second.stderr and "SQLite serves one heald process only" in second.stderr
        assert "PostgreSQL" in second.stderr
        assert first.poll() is None
    finally:
        first.terminate()
        first.wait(timeout=30)
