"""restart_process on real processes, and its idempotency guard."""

from __future__ import annotations

import os
import re
import signal
import sys
import time

import pytest

from heald import remedies
from heald.remedies import RemedyContext, RemedyError, RemedyParamsError
from heald.supervise import StartFailed, Supervisor
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


def _crashing_ctx(tmp_path, start_period: float, cap: float = 300.0):  # type: ignore[no-untyped-def]
    """A service that runs until ``crash`` exists, then writes its error and exits 3 at once."""
    marker = tmp_path / "crash"
    code = ("import os, sys, time\n"
            f"if os.path.exists({str(marker)!r}):\n"
            "    print('starting up', flush=True)\n"
            "    print('FATAL: cannot bind 127.0.0.1:6379: Address already in use', file=sys.stderr, flush=True)\n"
            "    sys.exit(3)\n"
            "time.sleep(600)\n")
    cfg = make_config(tmp_path, services={"svc": {"command": [sys.executable, "-c", code],
                                                  "start_period_seconds": start_period,
                                                  "restart_backoff_max_seconds": cap}})
    sup = Supervisor(cfg)
    sup.start_all()
    return RemedyContext(config=cfg, supervisor=sup), marker


def test_a_restart_that_exits_at_once_fails_with_its_last_output(tmp_path) -> None:
    ctx, marker = _crashing_ctx(tmp_path, start_period=20.0)
    try:
        marker.touch()
        params = remedies.validate_params("restart_process", {"service": "svc"})
        t0 = time.monotonic()
        with pytest.raises(RemedyError) as err:
            remedies.get("restart_process").apply(params, ctx)
        elapsed = time.monotonic() - t0
        msg = str(err.value)
        assert "did not take" in msg and "exited with code 3 within its start period" in msg
        assert "FATAL: cannot bind 127.0.0.1:6379: Address already in use" in msg and "starting up" in msg
        assert elapsed < 10, f"the failure waited {elapsed:.1f}s instead of reporting the exit"
        # a second attempt right away backs off instead of restarting
        starts = ctx.supervisor.get("svc").starts
        with pytest.raises(RemedyError, match=r"exponential backoff"):
            remedies.get("restart_process").apply(params, ctx)
        assert ctx.supervisor.get("svc").starts == starts
    finally:
        ctx.supervisor.stop_all()


def test_repeated_quick_exits_back_off_exponentially_up_to_the_cap(tmp_path) -> None:
    ctx, marker = _crashing_ctx(tmp_path, start_period=0.2, cap=0.5)
    try:
        marker.touch()
        proc = ctx.supervisor.get("svc")
        waits = []
        for _ in range(3):
            wait_for(lambda: not _backing_off(proc), timeout=5, what="end of backoff")
            with pytest.raises(StartFailed) as err:
                proc.restart_checked()
            waits.append(float(re.search(r"next restart allowed in ([\d.]+)s", str(err.value)).group(1)))
        assert waits == [0.2, 0.4, 0.5]
        marker.unlink()
        wait_for(lambda: not _backing_off(proc), timeout=5, what="end of backoff")
        proc.restart_checked()
        assert proc.is_running() and proc.quick_exits == 0
    finally:
        ctx.supervisor.stop_all()


def _backing_off(proc) -> bool:  # type: ignore[no-untyped-def]
    try:
        with proc._lock:
            return proc._next_start_at > time.monotonic()
    except AttributeError:
        return False
