"""A heald killed with SIGKILL in the middle of a healing resumes it when restarted, and never
applies a completed remedy twice. heald runs as a real subprocess (``heald serve``); a fail
point (``HEALD_FAILPOINTS``) holds it at a known point while the test kills it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from dbos import DBOSClient

from heald.engine import workflow_id
from heald.models import ActionStatus, IncidentState
from heald.store import Store
from tests.conftest import free_port, heald_cmd, wait_for

pytestmark = pytest.mark.slow


def write_config(tmp_path: Path) -> tuple[Path, int, Path]:
    shop_port, api_port = free_port(), free_port()
    starts = tmp_path / "shop.starts"
    cfg = {
        "state_dir": str(tmp_path / "state"),
        "api": {"port": api_port},
        "log_level": "warning",
        "services": {"shop": {
            "command": [sys.executable, "-m", "heald.demo.shop", "--port", str(shop_port), "--starts-file", str(starts)],
            "probes": [{"url": f"http://127.0.0.1:{shop_port}/healthz", "interval_seconds": 0.1,
                        "timeout_seconds": 0.5, "failure_threshold": 2}]}},
        "healing": {"group_wait_seconds": 0.1, "stabilization_seconds": 0.5, "verify_interval_seconds": 0.1},
    }
    path = tmp_path / "heald.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, api_port, starts


def start_heald(config: Path, log: Path, failpoints: str = "") -> subprocess.Popen[bytes]:
    env = {**os.environ, "HEALD_FAILPOINTS": failpoints}
    return subprocess.Popen(heald_cmd("--config", str(config), "serve"), env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "ab"))


def api_up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def workflow_status(tmp_path: Path, incident_id: int) -> str | None:
    """The DBOS status of the incident's healing workflow, read from heald's system database."""
    client = DBOSClient(system_database_url=f"sqlite:///{tmp_path / 'state' / 'dbos.sqlite'}", application_name="heald")
    try:
        found = client.list_workflows(workflow_ids=[workflow_id(incident_id)], load_input=False, load_output=False)
        return found[0].status if found else None
    finally:
        client.destroy()


def shop_pid(tmp_path: Path) -> int:
    return json.loads((tmp_path / "state" / "services" / "shop.json").read_text())["pid"]


@pytest.mark.parametrize("failpoint", ["verify.before", "act.after_apply"])
def test_sigkill_mid_healing_resumes_and_applies_the_remedy_once(tmp_path: Path, failpoint: str) -> None:
    """verify.before: the remedy step completed and DBOS recorded it; the replay must skip it.
    act.after_apply: the restart happened but neither heald nor DBOS recorded its end; the
    replay must see the effect through the remedy's guard and not restart again."""
    config, api_port, starts = write_config(tmp_path)
    log = tmp_path / "heald.log"
    heald = start_heald(config, log, failpoints=failpoint)
    second = None
    try:
        wait_for(lambda: api_up(api_port) and starts.exists(), what="heald and the shop to start")
        os.kill(shop_pid(tmp_path), signal.SIGKILL)
        wait_for(lambda: f"failpoint {failpoint} reached" in log.read_text(), timeout=30, what=f"fail point {failpoint}")
        heald.send_signal(signal.SIGKILL)
        heald.wait(timeout=10)

        store = Store(f"sqlite:///{tmp_path / 'state' / 'heald.db'}")
        [inc] = store.list_incidents()
        assert inc.state == IncidentState.acting  # killed mid-healing
        [action] = store.actions_for(inc.id)
        expected = ActionStatus.succeeded if failpoint == "verify.before" else ActionStatus.started
        assert action.status == expected
        # first start + the one restart (the new process writes its line as it starts)
        wait_for(lambda: len(starts.read_text().splitlines()) == 2, timeout=10, what="the restarted shop")

        second = start_heald(config, log)
        done = wait_for(lambda: (i := store.get_incident(inc.id)).state.terminal and i, timeout=60,
                        what="the resumed healing to end")
        assert done.state == IncidentState.resolved, done.closed_reason
        actions = store.actions_for(inc.id)
        assert len(actions) == 1 and actions[0].status == ActionStatus.succeeded
        if failpoint == "act.after_apply":
            assert "not applied again" in actions[0].output
        # the resumed workflow has returned: nothing acts for the incident any more, and every shop
        # it (re)started wrote its line before it served the probes that verified it
        wait_for(lambda: workflow_status(tmp_path, inc.id) == "SUCCESS", what="the resumed workflow to return")
        assert len(starts.read_text().splitlines()) == 2, "the remedy ran twice"
        events = [e.event for e in store.audit_entries(incident_id=inc.id)]
        assert events.count("action.started") == 1
        assert store.verify_audit().intact
        store.close()
    finally:
        for p in (heald, second):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(timeout=15)
        try:
            os.killpg(shop_pid(tmp_path), signal.SIGKILL)
        except (ProcessLookupError, FileNotFoundError):
            pass


@pytest.mark.parametrize("failpoint", ["plan.after_decide", "finish.after_outcome"])
def test_sigkill_inside_a_merged_step_reruns_it_and_counts_everything_once(tmp_path: Path, failpoint: str) -> None:
    """plan.after_decide: killed inside the step that plans, decides and takes the lease, after
    the step's transaction (plan, decision, lease) committed; finish.after_outcome: killed inside
    the step that records the outcome and the breaker's verdict and closes, after their one
    transaction (the close with them) and before DBOS recorded the step. On restart the step runs
    again: the remedy is applied once, the attempt's outcome is recorded once, the breaker
    counted the verdict once, and the incident is resolved once."""
    from heald.store.tables import CircuitBreakerRow

    config, api_port, starts = write_config(tmp_path)
    log = tmp_path / "heald.log"
    heald = start_heald(config, log, failpoints=failpoint)
    second = None
    try:
        wait_for(lambda: api_up(api_port) and starts.exists(), what="heald and the shop to start")
        os.kill(shop_pid(tmp_path), signal.SIGKILL)
        wait_for(lambda: f"failpoint {failpoint} reached" in log.read_text(), timeout=30, what=f"fail point {failpoint}")
        heald.send_signal(signal.SIGKILL)
        heald.wait(timeout=10)

        store = Store(f"sqlite:///{tmp_path / 'state' / 'heald.db'}")
        [inc] = store.list_incidents()
        if failpoint == "plan.after_decide":
            assert inc.state == IncidentState.deciding and store.actions_for(inc.id) == []
        else:  # the outcome, the breaker's verdict and the close committed together
            assert inc.state == IncidentState.resolved
            assert sorted(o.attempt for o in store.outcomes(incident_id=inc.id)) == [0, 1]

        second = start_heald(config, log)
        done = wait_for(lambda: (i := store.get_incident(inc.id)).state.terminal and i, timeout=60,
                        what="the resumed healing to end")
        assert done.state == IncidentState.resolved, done.closed_reason
        wait_for(lambda: workflow_status(tmp_path, inc.id) == "SUCCESS", what="the resumed workflow to return")
        actions = store.actions_for(inc.id)
        assert [(a.remedy, a.status) for a in actions] == [("restart_process", ActionStatus.succeeded)]
        assert len(starts.read_text().splitlines()) == 2, "the remedy ran twice"
        assert sorted(o.attempt for o in store.outcomes(incident_id=inc.id)) == [0, 1]  # the attempt's, the incident's
        with store.read() as s:
            row = s.get(CircuitBreakerRow, actions[0].target)
            assert row is not None and row.failures == 0 and row.opened_at is None
            assert [ok for _, ok in row.recent or []] == [True]  # the verdict counted once
        events = [e.event for e in store.audit_entries(incident_id=inc.id)]
        assert events.count("action.started") == 1 and events.count("outcome.recorded") == 2
        assert store.verify_audit().intact
        store.close()
    finally:
        for p in (heald, second):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(timeout=15)
        try:
            os.killpg(shop_pid(tmp_path), signal.SIGKILL)
        except (ProcessLookupError, FileNotFoundError):
            pass
