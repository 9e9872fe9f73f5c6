"""systemd units heald adopts by reference, on a real systemd (PID 1 of a podman container),
reached "directly" (``command_prefix: [podman, exec, HOST]``) and over SSH (a real OpenSSH
server on a loopback port, inside that container): state, journal evidence, restart / reload
/ reset-failed with validated unit names, host keys checked against known_hosts, and heald
healing a killed unit both ways."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from heald import remedies
from heald.config import HealdConfig, SystemdUnitConfig
from heald.engine import Runtime
from heald.models import ActionStatus, IncidentState
from heald.remedies import RemedyContext, RemedyError, RemedyParamsError
from heald.sources.probes import make_checker
from heald.supervise import Supervisor
from heald.targets import TargetError
from heald.targets import systemd as sd
from heald.targets.ssh import SSHRunner
from heald.targets.transport import LocalRunner
from tests.conftest import free_port, make_config, wait_for
from tests.targets.conftest import PODMAN, SSHServer, SystemdHost

pytestmark = pytest.mark.slow


def web_unit(host: SystemdHost, port: int, extra: str = "") -> str:
    """Start a fresh unit serving HTTP on ``port`` inside ``host``; returns its name."""
    unit = f"heald-web-{uuid.uuid4().hex[:8]}.service"
    host.add_unit(unit, "[Unit]\nStartLimitIntervalSec=0\n[Service]\n"
                        f"ExecStart=/usr/bin/python3 -u -m http.server {port} --bind 127.0.0.1\n"
                        f"ExecReload=/bin/sh -c 'echo reloaded >> /run/{unit}.reloads'\n{extra}")
    wait_for(lambda: serves(port), what=f"{unit} to serve")
    return unit


def serves(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def local_units(host: SystemdHost, **units: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: {"command_prefix": [PODMAN or "podman", "exec", host.name], "start_period_seconds": 1.0, **v}
            for k, v in units.items()}


def ssh_hosts(server: SSHServer, known_hosts: Path | None = None, **extra: Any) -> dict[str, Any]:
    return {"box": {"address": "127.0.0.1", "port": server.port, "user": "root", "key_file": str(server.client_key),
                    "known_hosts": str(known_hosts or server.known_hosts), "connect_timeout_seconds": 5, **extra}}


def ctx_of(cfg: HealdConfig) -> RemedyContext:
    return RemedyContext(config=cfg, supervisor=Supervisor(cfg))


def apply(name: str, params: dict[str, Any], ctx: RemedyContext) -> remedies.RemedyResult:
    return remedies.get(name).apply(remedies.validate_params(name, params), ctx)


# -- unit names: the attack ------------------------------------------------------------------

HOSTILE = ["web.service; touch /heald-test/pwned", "--all", "-H.service", "web service.service", "../etc/x.service",
           "a/b.service", "web.service\nreboot", "$(touch /heald-test/pwned).service", "web", "web.exe", "\\x2d.service"]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_unit_name_is_refused_by_the_configuration(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValidationError, match=r"systemd_units\.w\.unit"):
        make_config(tmp_path, systemd_units={"w": {"unit": name}})
    with pytest.raises(TargetError, match="is not a systemd unit name"):
        sd.check_unit_name(name)


def test_a_hostile_remedy_parameter_is_refused(tmp_path: Path) -> None:
    for bad in ("web; reboot", "--all", "-x", "a/b", "a b", "", "../web"):
        for remedy in ("restart_unit", "reload_unit", "reset_failed_unit"):
            with pytest.raises(RemedyParamsError, match=f"{remedy}: invalid parameters: unit"):
                remedies.validate_params(remedy, {"unit": bad})
    with pytest.raises(RemedyError, match="unit 'web' is not declared under systemd_units"):
        apply("restart_unit", {"unit": "web"}, ctx_of(make_config(tmp_path)))


def test_a_name_that_slipped_past_validation_never_reaches_systemctl(systemd_host: SystemdHost) -> None:
    unit = SystemdUnitConfig.model_construct(unit="x.service; touch /heald-test/pwned", host=None,
                                             command_prefix=[], timeout_seconds=10.0, start_period_seconds=1.0,
                                             journal_lines=5)
    runner = LocalRunner(["podman", "exec", systemd_host.name])
    for call in (lambda: sd.unit_state(unit, runner), lambda: sd.journal_tail(unit, runner),
                 lambda: sd.act(unit, runner, "restart")):
        with pytest.raises(TargetError, match="is not a systemd unit name"):
            call()
    assert not (systemd_host.shared / "pwned").exists()


# -- state, journal, remedies (directly: podman exec) --------------------------------------

def test_probe_and_journal_read_a_killed_unit(tmp_path: Path, systemd_host: SystemdHost) -> None:
    port = free_port()
    unit = web_unit(systemd_host, port)
    cfg = make_config(tmp_path, systemd_units=local_units(systemd_host, web={"unit": unit}),
                      services={"web": {"probes": [{"type": "systemd", "unit": "web"}]}})
    check = make_checker(cfg.services["web"].probes[0], "web", None, cfg)
    r = check()
    assert r.ok and r.labels == {"unit": "web", "unit_active_state": "active", "unit_sub_state": "running",
                                 "unit_result": "success"}, r.detail
    systemd_host.sh(f"systemctl kill -s KILL {unit}")
    r = wait_for(lambda: (x := check()) and not x.ok and x, what="the probe to see the kill")
    assert r.labels["unit_active_state"] == "failed" and r.labels["unit_result"] == "signal"
    assert "main process killed status 9" in r.detail
    lines = sd.journal_tail(cfg.systemd_units["web"], sd.runner_for(cfg.systemd_units["web"], cfg), 20)
    assert any("Main process exited, code=killed, status=9/KILL" in line for line in lines), lines
    assert all(line[:4].isdigit() for line in lines)  # each with its UTC time


def test_restart_reload_reset_failed_with_the_guard(tmp_path: Path, systemd_host: SystemdHost) -> None:
    port = free_port()
    unit = web_unit(systemd_host, port)
    ctx = ctx_of(make_config(tmp_path, systemd_units=local_units(systemd_host, web={"unit": unit})))
    systemd_host.sh(f"systemctl kill -s KILL {unit}")
    wait_for(lambda: systemd_host.show(unit)["ActiveState"] == "failed", what="the unit to fail")
    restart = remedies.get("restart_unit")
    params = remedies.validate_params("restart_unit", {"unit": "web"})
    snap = restart.snapshot(params, ctx)
    assert snap and snap["unit"]["active_state"] == "failed"
    assert not restart.already_applied(params, ctx, snap)
    out = restart.apply(params, ctx)
    assert f"systemctl restart {unit}" in out.output and "was failed (failed), result signal" in out.output
    assert restart.already_applied(params, ctx, snap)  # a crash mid-apply: not restarted again
    assert serves(port)
    assert f"systemctl reload {unit}" in apply("reload_unit", {"unit": "web"}, ctx).output
    assert "reloaded" in systemd_host.sh(f"cat /run/{unit}.reloads").stdout
    systemd_host.sh(f"systemctl kill -s KILL {unit}")
    wait_for(lambda: systemd_host.show(unit)["ActiveState"] == "failed", what="the unit to fail again")
    out = apply("reset_failed_unit", {"unit": "web"}, ctx)
    assert "now inactive (dead)" in out.output


def test_a_restart_that_does_not_stay_up_fails(tmp_path: Path, systemd_host: SystemdHost) -> None:
    unit = f"heald-bad-{uuid.uuid4().hex[:8]}.service"
    systemd_host.sh(f"printf '[Service]\\nExecStart=/bin/sh -c \"echo FATAL: no config; sleep 0.3; exit 3\"\\n' "
                    f"> /run/systemd/system/{unit} && systemctl daemon-reload")
    ctx = ctx_of(make_config(tmp_path, systemd_units=local_units(systemd_host, bad={"unit": unit})))
    with pytest.raises(RemedyError, match=r"did not stay active .*failed \(failed\), result exit-code"):
        apply("restart_unit", {"unit": "bad"}, ctx)


def test_a_unit_that_hit_its_start_limit_is_reset_then_restarted(tmp_path: Path, systemd_host: SystemdHost) -> None:
    port = free_port()
    unit = f"heald-limit-{uuid.uuid4().hex[:8]}.service"
    (systemd_host.shared / unit).write_text(
        "[Unit]\nStartLimitIntervalSec=300\nStartLimitBurst=2\n[Service]\n"
        f"ExecStart=/bin/sh -c 'test -f /run/{unit}.ok || exit 3; "
        f"exec /usr/bin/python3 -m http.server {port} --bind 127.0.0.1'\nRestart=always\nRestartSec=0\n")
    systemd_host.sh(f"cp /heald-test/{unit} /run/systemd/system/ && systemctl daemon-reload && systemctl start {unit}",
                    check=False)
    wait_for(lambda: "Start request repeated too quickly" in systemd_host.sh(f"journalctl -u {unit} --no-pager").stdout,
             what="the start limit")
    systemd_host.sh(f"touch /run/{unit}.ok")  # the cause is fixed; systemd still refuses to start it
    assert systemd_host.sh(f"systemctl start {unit}", check=False).returncode != 0
    ctx = ctx_of(make_config(tmp_path, systemd_units=local_units(systemd_host, lim={"unit": unit})))
    out = apply("restart_unit", {"unit": "lim"}, ctx)
    assert "was failed (failed)" in out.output and "now active (running)" in out.output
    wait_for(lambda: serves(port), what="the unit to serve")


# -- SSH -------------------------------------------------------------------------------------

def test_ssh_runs_a_unit_action_and_quotes_arguments(tmp_path: Path, systemd_host: SystemdHost,
                                                     ssh_server: SSHServer) -> None:
    port = free_port()
    unit = web_unit(systemd_host, port)
    cfg = make_config(tmp_path, hosts=ssh_hosts(ssh_server),
                      systemd_units={"web": {"unit": unit, "host": "box", "start_period_seconds": 1.0}})
    before = systemd_host.show(unit)["InvocationID"]
    out = apply("restart_unit", {"unit": "web"}, ctx_of(cfg))
    assert "on host box (root@127.0.0.1:" in out.output and "now active (running)" in out.output
    assert systemd_host.show(unit)["InvocationID"] != before
    runner = SSHRunner("box", cfg.hosts["box"])
    r = runner.run(["echo", "a; touch /heald-test/pwned", "$(id)"])
    assert r.stdout == "a; touch /heald-test/pwned $(id)\n"  # one argument each, nothing ran
    assert not (systemd_host.shared / "pwned").exists()


def test_an_allowlisted_command_runs_on_its_host(tmp_path: Path, systemd_host: SystemdHost,
                                                 ssh_server: SSHServer) -> None:
    marker = f"flushed-{uuid.uuid4().hex[:6]}"
    cfg = make_config(tmp_path, hosts=ssh_hosts(ssh_server), remedies={"commands": {
        "flush": {"argv": ["sh", "-c", f"echo done > /heald-test/{marker}; echo flushed", "ignored; touch x"],
                  "host": "box"},
        "broken": {"argv": ["sh", "-c", "echo no cache >&2; exit 4"], "host": "box"}}})
    out = apply("run_command", {"name": "flush"}, ctx_of(cfg))
    assert out.output == "flush on host box succeeded: flushed"
    assert (systemd_host.shared / marker).read_text() == "done\n"
    with pytest.raises(RemedyError, match="broken on host box exited with code 4: no cache"):
        apply("run_command", {"name": "broken"}, ctx_of(cfg))
    with pytest.raises(ValidationError, match="cwd and env apply on this machine only"):
        make_config(tmp_path, hosts=ssh_hosts(ssh_server),
                    remedies={"commands": {"x": {"argv": ["true"], "host": "box", "cwd": "/tmp"}}})
    with pytest.raises(ValidationError, match="'nohost' is not a host of hosts"):
        make_config(tmp_path, remedies={"commands": {"x": {"argv": ["true"], "host": "nohost"}}})


@pytest.mark.parametrize("which", ["wrong", "unknown"])
def test_a_host_with_a_wrong_or_unknown_key_is_refused(tmp_path: Path, systemd_host: SystemdHost,
                                                       ssh_server: SSHServer, which: str) -> None:
    port = free_port()
    unit = web_unit(systemd_host, port)
    known = ssh_server.wrong_known_hosts
    if which == "unknown":
        known = tmp_path / "known_hosts"
        known.write_text("")
    cfg = make_config(tmp_path, hosts=ssh_hosts(ssh_server, known),
                      systemd_units={"web": {"unit": unit, "host": "box"}})
    before = systemd_host.show(unit)["InvocationID"]
    expected = "differs from the one in" if which == "wrong" else "its host key is not in"
    with pytest.raises(RemedyError, match=f"refused: .*{expected}"):
        apply("restart_unit", {"unit": "web"}, ctx_of(cfg))
    assert systemd_host.show(unit)["InvocationID"] == before  # nothing ran there
    with pytest.raises(TargetError, match="refused"):
        SSHRunner("box", cfg.hosts["box"]).run(["touch", "/heald-test/pwned"])
    assert not (systemd_host.shared / "pwned").exists()


def test_ssh_sessions_per_host_and_timeouts_are_bounded(tmp_path: Path, ssh_server: SSHServer) -> None:
    cfg = make_config(tmp_path, hosts=ssh_hosts(ssh_server, max_sessions=1, command_timeout_seconds=1.5))
    runner = SSHRunner("box", cfg.hosts["box"])
    with pytest.raises(TargetError, match="timed out after 1.5 s"):
        runner.run(["sleep", "30"])
    errors: list[Exception] = []
    started = threading.Event()

    def long() -> None:
        started.set()
        try:
            runner.run(["sleep", "2.75"], timeout=10)
        except Exception as exc:  # noqa: BLE001  (kept for the assertion)
            errors.append(exc)

    t = threading.Thread(target=long)
    t.start()
    started.wait()
    wait_for(lambda: "sleep 2.75" in _ps(), what="the first session to run")
    with pytest.raises(TargetError, match="all 1 sessions stayed busy"):
        runner.run(["true"], timeout=0.5)
    t.join()
    assert not errors
    assert runner.run(["true"]).returncode == 0  # free again


def _ps() -> str:
    import subprocess

    return subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


# -- heald heals a killed unit -----------------------------------------------------------------

def heal_config(tmp_path: Path, port: int, units: dict[str, Any], **extra: Any) -> HealdConfig:
    return make_config(tmp_path, systemd_units=units, services={"web": {"probes": [
        {"type": "systemd", "unit": "web", "interval_seconds": 0.25, "failure_threshold": 2},
        {"url": f"http://127.0.0.1:{port}/", "interval_seconds": 0.25, "timeout_seconds": 0.5,
         "failure_threshold": 8}]}},
        healing={"group_wait_seconds": 1.0, "verify_timeout_seconds": 20.0, "stabilization_seconds": 0.5}, **extra)


def heal_killed_unit(cfg: HealdConfig, host: SystemdHost, unit: str, port: int) -> None:
    rt = Runtime(cfg, manage_services=False)
    rt.start()
    try:
        before = host.show(unit)["InvocationID"]
        host.sh(f"systemctl kill -s KILL {unit}")
        inc = wait_for(lambda: rt.store.list_incidents(), timeout=30, what="an incident")[0]
        done = wait_for(lambda: (i := rt.store.get_incident(inc.id)) and i.state.terminal and i, timeout=60,
                        what="the incident to end")
        assert done.state == IncidentState.resolved, done.closed_reason
        assert done.category == "process_down"
        actions = rt.store.actions_for(inc.id)
        assert [(a.remedy, a.status, a.target) for a in actions] == [
            ("restart_unit", ActionStatus.succeeded, "unit:web")]
        diagnosis = rt.store.diagnoses_for(inc.id)[-1]
        assert diagnosis.runbook == "unit-down"
        assert any(e.startswith("unit web: ") and "status=9/KILL" in e for e in diagnosis.evidence), diagnosis.evidence
        now = host.show(unit)
        assert now["ActiveState"] == "active" and now["InvocationID"] != before
        assert serves(port)
        assert rt.store.verify_audit().intact
    finally:
        rt.stop()


def test_a_killed_unit_is_healed_directly(tmp_path: Path, systemd_host: SystemdHost) -> None:
    port = free_port()
    unit = web_unit(systemd_host, port)
    heal_killed_unit(heal_config(tmp_path, port, local_units(systemd_host, web={"unit": unit})), systemd_host, unit,
                     port)


def test_a_killed_unit_is_healed_over_ssh(tmp_path: Path, systemd_host: SystemdHost, ssh_server: SSHServer) -> None:
    port = free_port()
    unit = web_unit(systemd_host, port)
    cfg = heal_config(tmp_path, port, {"web": {"unit": unit, "host": "box", "start_period_seconds": 1.0}},
                      hosts=ssh_hosts(ssh_server))
    heal_killed_unit(cfg, systemd_host, unit, port)
