"""restart_process on real processes, and its idempotency guard."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from heald import remedies
from heald.remedies import RemedyContext, RemedyError, RemedyParamsError
from heald.supervise import Supervisor
from tests.conftest import make_config, wait_for


@pytest.fixture
def ctx(tmp_path):  # type: ignore[no-untyped-def]
    cfg = make_config(tmp_path, services={"svc": {"command": [sys.executable, "-c", "import time; time.sleep(600)"]},
                                          "plain": {}})
    sup = Supervisor(cfg)
    sup.start_all()
    yield RemedyContext(config=cfg, supervisor=sup)
    sup.stop_all()


def test_params_are_validated() -> None:
    with pytest.raises(RemedyParamsError, match=r"restart_process: invalid parameters: service: Field required"):
        remedies.validate_params("restart_process", {})
    with pytest.raises(RemedyParamsError, match="unknown remedy 'rm_rf'"):
        remedies.validate_params("rm_rf", {})
    with pytest.raises(RemedyParamsError, match="force: Extra inputs are not permitted"):
        remedies.validate_params("restart_process", {"service": "svc", "force": True})


def test_restart_replaces_the_process_and_guard_sees_it(ctx) -> None:
    r = remedies.get("restart_process")
    params = remedies.validate_params("restart_process", {"service": "svc"})
    before = ctx.supervisor.get("svc").identity()
    snap = r.snapshot(params, ctx)
    assert not r.already_applied(params, ctx, snap)
    out = r.apply(params, ctx)
    after = ctx.supervisor.get("svc").identity()
    assert after is not None and after != before and "restarted svc" in out.output
    assert r.already_applied(params, ctx, snap)


def test_restart_after_crash_reports_how_it_died(ctx) -> None:
    proc = ctx.supervisor.get("svc")
    os.kill(proc.identity().pid, signal.SIGKILL)
    wait_for(lambda: not proc.is_running(), what="death")
    assert proc.exit_description() == "killed by SIGKILL"
    out = remedies.get("restart_process").apply(remedies.validate_params("restart_process", {"service": "svc"}), ctx)
    assert "was killed by SIGKILL" in out.output and proc.is_running()


def test_unmanaged_service_is_refused(ctx) -> None:
    with pytest.raises(RemedyError, match="not managed by heald"):
        remedies.get("restart_process").apply(remedies.validate_params("restart_process", {"service": "plain"}), ctx)


def test_a_new_supervisor_adopts_the_running_process(ctx, tmp_path) -> None:
    ident = ctx.supervisor.get("svc").identity()
    other = Supervisor(ctx.config)
    assert other.start_all() == {"svc": "adopted"}
    assert other.get("svc").identity() == ident
