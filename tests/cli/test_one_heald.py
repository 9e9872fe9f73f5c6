"""Nothing acts outside the workflow and the gate (issue 12 item 4, DESIGN.md invariant 1), with
real ``heald serve`` processes on a temporary state directory:

- a second heald on the same state exits non-zero naming the first one's pid, having started,
  audited and bound nothing, and the first runs on untouched;
- a heald whose port is taken exits before anything acts;
- a heald killed while an incident awaits approval, and started again, leaves the service down
  until a human approves; then the incident's workflow restarts it;
- a service heald started before, found down at heald's start with no incident, is not started
  by the supervisor: its probe opens an incident and the gate decides;
- on PostgreSQL, one heald per database (an advisory lock naming the holder's pid).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from heald.config import HealdConfig
from heald.models import IncidentState
from heald.store import Store
from tests.conftest import free_port, heald_cmd, make_config, run_heald, wait_for

PY = sys.executable
SLEEPER = [PY, "-c", "import time; time.sleep(600)"]


def write_config(tmp_path: Path, *, probes: bool = True, risk: str = "medium") -> Path:
    """heald.yaml: one managed service "svc" (with a fast process probe), restarted by a runbook
    of the given risk (medium: needs an approval)."""
    rb = tmp_path / "runbooks.yaml"
    rb.write_text(json.dumps({"runbooks": [{
        "name": "svc-down", "match": {"labels": ['source="probe"', 'process_state="exited"']},
        "diagnosis": {"category": "process_down", "confidence": 0.95, "explanation": "svc is down"},
        "remedies": [{"remedy": "restart_process", "risk": risk, "params": {"service": "${service}"}}]}]}))
    svc: dict[str, object] = {"command": SLEEPER, "start_period_seconds": 0.3}
    if probes:
        svc["probes"] = [{"type": "process", "interval_seconds": 0.2, "failure_threshold": 1}]
    cfg = {"state_dir": "state", "api": {"auth": False}, "default_runbooks": False, "runbooks": [str(rb)],
           "audit": {"checkpoints": False}, "log_level": "warning",
           "healing": {"group_wait_seconds": 0.05, "stabilization_seconds": 0.3, "verify_interval_seconds": 0.05,
                       "verify_timeout_seconds": 10},
           "services": {"svc": svc}}
    path = tmp_path / "heald.yaml"
    path.write_text(json.dumps(cfg))
    return path


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HEALD_")}


def serve(cfg: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(heald_cmd("--config", str(cfg), "serve", "--port", str(port)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env())


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def instance(tmp_path: Path) -> dict[str, object] | None:
    """The service's recorded instance (pid, start time), or None."""
    try:
        return json.loads((tmp_path / "state" / "services" / "svc.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rfind(")") + 2] not in "ZX"


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """heald processes to kill at the end (their managed services are killed by the test)."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.communicate()


def open_store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'state' / 'heald.db'}")


def events(store: Store, event: str) -> list[object]:
    return [e for e in store.audit_entries(limit=100_000) if e.event == event]


@pytest.mark.slow
def test_a_second_heald_on_the_same_state_refuses_to_start(tmp_path: Path,
                                                           procs: list[subprocess.Popen[str]]) -> None:
    cfg = write_config(tmp_path, probes=False)
    port1, port2 = free_port(), free_port()
    first = serve(cfg, port1)
    procs.append(first)
    wait_for(lambda: healthy(port1) or first.poll() is not None, timeout=60, what="the first heald")
    assert first.poll() is None, first.communicate()[1]
    svc = instance(tmp_path)
    assert svc is not None and alive(int(svc["pid"]))  # type: ignore[arg-type]
    kill_group(int(svc["pid"]))  # down, unnoticed (no probe): a second heald must not start it
    wait_for(lambda: not alive(int(svc["pid"])), what="the service to die")  # type: ignore[arg-type]
    store = open_store(tmp_path)
    try:
        seq = store.last_audit_seq()
        second = serve(cfg, port2)  # another port: only the state is shared
        procs.append(second)
        _, err = second.communicate(timeout=60)
        assert second.returncode != 0
        assert "another heald" in err and f"pid {first.pid}" in err and "state" in err, err
        assert store.last_audit_seq() == seq  # nothing audited (no heald.started, no service.started)
        assert instance(tmp_path) == svc  # the service was not started
        assert not listening(port2)
        assert first.poll() is None and healthy(port1)  # the first is untouched
        assert (tmp_path / "state" / "heald.lock").read_text().startswith(f"pid {first.pid} ")
    finally:
        store.close()


@pytest.mark.slow
def test_a_heald_whose_port_is_taken_exits_before_anything_acts(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(heald_cmd("--config", str(cfg), "serve", "--port", str(port)), capture_output=True,
                              text=True, timeout=60, env=env())
    assert done.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
    assert instance(tmp_path) is None  # no service was started
    assert not (tmp_path / "state" / "heald.db").exists()  # nor the store touched, nor anything audited


@pytest.mark.slow
def test_a_heald_restarted_while_an_incident_awaits_approval_acts_only_once_approved(
        tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    cfg = write_config(tmp_path, risk="medium")
    port = free_port()
    first = serve(cfg, port)
    procs.append(first)
    wait_for(lambda: instance(tmp_path) or first.poll() is not None, timeout=60, what="the service's start")
    svc = instance(tmp_path)
    assert svc is not None, first.communicate()[1]
    store = open_store(tmp_path)
    try:
        kill_group(int(svc["pid"]))  # type: ignore[arg-type]
        inc = wait_for(lambda: next((i for i in store.list_incidents() if i.state == IncidentState.awaiting_approval),
                                    None), timeout=60, what="the incident awaiting approval")
        first.kill()  # heald dies while the restart waits for a human
        first.communicate()
        assert instance(tmp_path) == svc and not alive(int(svc["pid"]))  # type: ignore[arg-type]

        second = serve(cfg, free_port())
        procs.append(second)
        wait_for(lambda: len(events(store, "heald.started")) == 2 or second.poll() is not None, timeout=60,
                 what="the second heald's start")
        assert second.poll() is None, second.communicate()[1]
        # the supervisor ran before heald.started: had it started the service, it would run now
        assert instance(tmp_path) == svc and not alive(int(svc["pid"]))  # type: ignore[arg-type]
        left = events(store, "service.left_down")
        assert len(left) == 1 and left[0].incident_id == inc.id, left  # type: ignore[attr-defined]
        assert store.actions_for(inc.id) == []
        assert store.get_incident(inc.id).state == IncidentState.awaiting_approval
        assert events(store, "service.started") == [] or all(  # only the first heald's initial start
            e.seq < events(store, "heald.started")[1].seq for e in events(store, "service.started"))  # type: ignore[attr-defined]

        approved = run_heald("--config", str(cfg), "approve", str(inc.id), "--as", "alice", env=env())
        assert approved.returncode == 0, approved.stderr
        done = wait_for(lambda: (i := store.get_incident(inc.id)).state.terminal and i, timeout=60,
                        what="the approved restart to heal the incident")
        assert done.state == IncidentState.resolved, done
        actions = store.actions_for(inc.id)
        assert [(a.remedy, a.status.value) for a in actions] == [("restart_process", "succeeded")]
        now = instance(tmp_path)
        assert now is not None and now["pid"] != svc["pid"] and alive(int(now["pid"]))  # type: ignore[arg-type]
    finally:
        store.close()
        for rec in (svc, instance(tmp_path)):
            if rec:
                kill_group(int(rec["pid"]))  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_service_down_at_start_goes_through_its_probe_and_the_gate(
        tmp_path: Path, procs: list[subprocess.Popen[str]]) -> None:
    """heald stopped (the service keeps running), the service then crashes; the next heald does not
    start it by itself: its probe opens an incident whose (low-risk, automatic) restart is an
    audited action of that incident."""
    cfg = write_config(tmp_path, risk="low")
    port = free_port()
    first = serve(cfg, port)
    procs.append(first)
    wait_for(lambda: healthy(port) or first.poll() is not None, timeout=60, what="the first heald")
    svc = instance(tmp_path)
    assert svc is not None, first.communicate()[1]
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    kill_group(int(svc["pid"]))  # type: ignore[arg-type]
    wait_for(lambda: not alive(int(svc["pid"])), what="the service to die")  # type: ignore[arg-type]
    store = open_store(tmp_path)
    try:
        second = serve(cfg, free_port())
        procs.append(second)
        wait_for(lambda: len(events(store, "heald.started")) == 2 or second.poll() is not None, timeout=60,
                 what="the second heald's start")
        assert second.poll() is None, second.communicate()[1]
        assert len(events(store, "service.down_at_start")) == 1
        inc = wait_for(lambda: next((i for i in store.list_incidents() if i.service == "svc" and i.state.terminal),
                                    None), timeout=60, what="the incident to end")
        assert inc.state == IncidentState.resolved, inc
        assert [(a.remedy, a.status.value) for a in store.actions_for(inc.id)] == [("restart_process", "succeeded")]
        # one start by the first heald (its initial start), none by the second's supervisor
        assert len(events(store, "service.started")) == 1
    finally:
        store.close()
        for rec in (svc, instance(tmp_path)):
            if rec:
                kill_group(int(rec["pid"]))  # type: ignore[arg-type]


def test_a_stale_lock_file_of_a_dead_heald_does_not_block(tmp_path: Path) -> None:
    """The lock is the kernel's (flock), not the file's existence: a killed heald leaves none."""
    from heald.engine.lock import acquire

    cfg = make_config(tmp_path)
    cfg.state_dir.mkdir(parents=True)
    (cfg.state_dir / "heald.lock").write_text("pid 999999 on elsewhere\n")
    lock = acquire(cfg)
    try:
        assert (cfg.state_dir / "heald.lock").read_text().startswith(f"pid {os.getpid()} ")
    finally:
        lock.release()


@pytest.mark.postgres
def test_one_heald_per_postgresql_database(tmp_path: Path, pg_url: str) -> None:
    """Two healds with their own state directories on one PostgreSQL database: the second is
    refused (naming the first's pid) unless database_lock is false."""
    from heald.engine.lock import AlreadyRunning, acquire

    one: HealdConfig = make_config(tmp_path / "one", database_url=pg_url)
    two: HealdConfig = make_config(tmp_path / "two", database_url=pg_url)
    lock = acquire(one)
    try:
        with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()} .*advisory lock"):
            acquire(two)
        assert not (tmp_path / "two" / "state" / "heald.lock").read_text()  # nothing held or written for two
        multi = acquire(make_config(tmp_path / "two", database_url=pg_url, database_lock=False))
        multi.release()
    finally:
        lock.release()
    acquire(two).release()  # free again once the first is gone
