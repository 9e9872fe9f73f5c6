"""Containers heald adopts by reference, on real podman through its Docker Engine API: the
probe's view of their state, their logs as evidence, restart_container and
rollback_container_image (guard and undo), and heald healing a killed container and a bad
image end to end."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from heald import remedies
from heald.config import HealdConfig
from heald.engine import Runtime
from heald.models import ActionStatus, IncidentState, SignalStatus
from heald.remedies import RemedyContext, RemedyError, RemedyParamsError
from heald.sources.probes import ProbeResult, make_checker
from heald.supervise import Supervisor
from heald.targets import TargetError
from heald.targets import containers as ct
from tests.conftest import free_port, make_config, wait_for
from tests.targets.conftest import Images, container_inspect, podman, run_web

pytestmark = pytest.mark.slow


def web_config(tmp_path: Path, name: str, docker_api: str, port: int, container_checks: int = 2) -> HealdConfig:
    """``web`` adopted on podman, with a container probe (``container_checks`` failures in a
    row fire it) and an HTTP probe that fires later (the container's state says more)."""
    return make_config(tmp_path, containers={"web": {"name": name, "docker_host": docker_api,
                                                     "start_period_seconds": 1.0, "stop_timeout_seconds": 2}},
                       services={"web": {"probes": [
                           {"type": "container", "container": "web", "interval_seconds": 0.25,
                            "failure_threshold": container_checks},
                           {"url": f"http://127.0.0.1:{port}/", "interval_seconds": 0.25, "timeout_seconds": 0.5,
                            "failure_threshold": container_checks + 4}]}},
                       healing={"group_wait_seconds": 1.0, "verify_timeout_seconds": 15.0,
                                "stabilization_seconds": 0.5})


def serves(port: int) -> str | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=1).text
    except httpx.HTTPError:
        return None


def ctx_of(cfg: HealdConfig) -> RemedyContext:
    return RemedyContext(config=cfg, supervisor=Supervisor(cfg))


def test_params_are_validated() -> None:
    for bad in ("web; reboot", "--all", "../web", "web svc", ""):
        with pytest.raises(RemedyParamsError, match="restart_container: invalid parameters: container"):
            remedies.validate_params("restart_container", {"container": bad})
    for bad in ("web:1 --privileged", "-v/:/host", "web:1;id", "$(id)"):
        with pytest.raises(RemedyParamsError, match="rollback_container_image: invalid parameters: to"):
            remedies.validate_params("rollback_container_image", {"container": "web", "to": bad})
    with pytest.raises(RemedyParamsError, match="Extra inputs"):
        remedies.validate_params("restart_container", {"container": "web", "image": "x"})


def test_an_undeclared_container_is_refused(tmp_path: Path) -> None:
    ctx = ctx_of(make_config(tmp_path))
    with pytest.raises(RemedyError, match="container 'web' is not declared under containers"):
        remedies.get("restart_container").apply(remedies.validate_params("restart_container", {"container": "web"}), ctx)


def test_probe_reads_state_restarts_and_image_changes(tmp_path: Path, images: Images, docker_api: str,
                                                      container_name: str) -> None:
    port = free_port()
    run_web(container_name, images.good, port)
    cfg = web_config(tmp_path, container_name, docker_api, port)
    check = make_checker(cfg.services["web"].probes[0], "web", None, cfg)
    r: ProbeResult = check()
    assert r.ok, r.detail
    assert r.labels["container_state"] == "running" and r.labels["container_image"] == images.good
    assert "container_previous_image" not in r.labels
    podman("kill", container_name)
    r = wait_for(lambda: (x := check()) and "code 137" in x.detail and x, what="the probe to see the kill")
    assert not r.ok
    assert r.labels["container_state"] == "exited" and "exited with code 137" in r.detail
    assert r.labels["oom_killed"] == "false"
    # someone deploys a new image: the probe remembers the one before
    podman("rm", "-f", "-t", "0", container_name)
    run_web(container_name, images.good2, port)
    r = check()
    assert r.ok and r.labels["container_previous_image"] == images.good and r.labels["container_image"] == images.good2


def test_probe_fails_on_an_unhealthy_health_check(tmp_path: Path, images: Images, docker_api: str,
                                                   container_name: str) -> None:
    port = free_port()
    # --health-interval 0: no timer (this machine has no systemd to run podman's); checks run on demand
    run_web(container_name, images.good, port, "--health-cmd", "test -f /www/ok", "--health-retries", "1",
            "--health-interval", "0")
    podman("healthcheck", "run", container_name)
    cfg = web_config(tmp_path, container_name, docker_api, port)
    check = make_checker(cfg.services["web"].probes[0], "web", None, cfg)
    r = check()
    assert r.ok and r.labels["container_health"] == "healthy", r.detail
    podman("exec", container_name, "/bin/busybox", "rm", "/www/ok")
    podman("healthcheck", "run", container_name, check=False)
    r = check()
    assert not r.ok and r.labels["container_health"] == "unhealthy" and r.labels["container_state"] == "running"
    assert "is running (unhealthy)" in r.detail


def test_probe_fails_when_a_restart_policy_restarts_the_container(tmp_path: Path, images: Images, docker_api: str,
                                                                  container_name: str) -> None:
    """A crash loop the engine hides by restarting (``--restart on-failure``): the container is
    mostly "running", but its restart count grows between two checks."""
    podman("run", "-d", "--name", container_name, "--restart", "on-failure:100", "--network", "none",
           "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", images.good, "/bin/sh", "-c",
           "echo crashing; sleep 0.5; exit 3")
    cfg = make_config(tmp_path, containers={"web": {"name": container_name, "docker_host": docker_api}},
                      services={"web": {"probes": [{"type": "container", "container": "web"}]}})
    check = make_checker(cfg.services["web"].probes[0], "web", None, cfg)
    check()
    r = wait_for(lambda: (x := check()) and "since the last check" in x.detail and x, what="a restart between checks")
    assert not r.ok and r.value is not None and r.value >= 1


def test_an_unreachable_engine_is_no_data_and_a_missing_container_fails(tmp_path: Path, docker_api: str) -> None:
    cfg = make_config(tmp_path, containers={"gone": {"name": "heald-test-no-such-container", "docker_host": docker_api},
                                            "far": {"name": "x", "docker_host": f"unix://{tmp_path}/none.sock"}},
                      services={"s": {"probes": [{"type": "container", "container": "gone"},
                                                 {"type": "container", "container": "far"}]}})
    gone = make_checker(cfg.services["s"].probes[0], "s", None, cfg)()
    assert not gone.ok and not gone.no_data and "not found" in gone.detail
    far = make_checker(cfg.services["s"].probes[1], "s", None, cfg)()
    assert far.ok and far.no_data and "did not answer" in far.detail


def test_restart_container_guard_and_logs(tmp_path: Path, images: Images, docker_api: str, container_name: str) -> None:
    port = free_port()
    run_web(container_name, images.good, port)
    ctx = ctx_of(web_config(tmp_path, container_name, docker_api, port))
    remedy = remedies.get("restart_container")
    params = remedies.validate_params("restart_container", {"container": "web"})
    podman("kill", container_name)
    wait_for(lambda: serves(port) is None, what="the web server to die")
    snap = remedy.snapshot(params, ctx)
    assert not remedy.already_applied(params, ctx, snap)
    out = remedy.apply(params, ctx)
    assert "was exited with code 137" in out.output and "now running" in out.output
    assert remedy.already_applied(params, ctx, snap)  # after a crash mid-apply this restart is not repeated
    assert serves(port) == "release 1\n"
    lines = ct.logs_tail(ctx.config.containers["web"], 10)
    assert sum(f"web starting on {port}" in line for line in lines) == 2  # started twice, timestamps included
    assert remedy.touches_heald(params, remedies.HealdSelf(ctx.config)) is None


def test_restart_that_does_not_stay_up_fails_with_the_state(tmp_path: Path, images: Images, docker_api: str,
                                                            container_name: str) -> None:
    podman("create", "--name", container_name, "--network", "host", "--ulimit", "nofile=1024:1024",
           "--ulimit", "nproc=1024:1024", images.bad, *Images.command(free_port()))
    ctx = ctx_of(web_config(tmp_path, container_name, docker_api, free_port()))
    with pytest.raises(RemedyError, match=r"did not take: container .* did not stay up .*exited with code 1"):
        remedies.get("restart_container").apply(remedies.validate_params("restart_container", {"container": "web"}), ctx)


def test_rollback_recreates_with_the_same_configuration_and_undo_goes_forward(
        tmp_path: Path, images: Images, docker_api: str, container_name: str) -> None:
    port = free_port()
    run_web(container_name, images.good2, port, "--env", "GREETING=hello", "--label", "team=shop",
            "--restart", "on-failure:3")
    ctx = ctx_of(web_config(tmp_path, container_name, docker_api, port))
    remedy = remedies.get("rollback_container_image")
    params = remedies.validate_params("rollback_container_image", {"container": "web"})  # default: the previous image
    snap = remedy.snapshot(params, ctx)
    assert snap is not None and snap["to"] == images.good
    assert not remedy.already_applied(params, ctx, snap)
    out = remedy.apply(params, ctx)
    assert f"on {images.good} (was {images.good2}" in out.output
    assert out.undo == {"image": images.good2, "container_id": out.undo["container_id"]}  # type: ignore[index]
    assert remedy.already_applied(params, ctx, snap)
    assert serves(port) == "release 1\n"
    after = container_inspect(container_name)
    assert after["Config"]["Image"] == images.good  # type: ignore[index]
    assert "GREETING=hello" in after["Config"]["Env"]  # type: ignore[index]
    assert after["Config"]["Labels"]["team"] == "shop"  # type: ignore[index]
    assert after["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}  # type: ignore[index]
    assert after["HostConfig"]["NetworkMode"] == "host"  # type: ignore[index]
    names = podman("ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert not [n for n in names if n.startswith(f"{container_name}-heald-replaced-")]  # the old one is gone
    undone = remedy.undo(params, ctx, out.undo or {})
    assert f"on {images.good2} again" in undone.output and serves(port) == "release 2\n"


def test_rollback_keeps_published_ports_networks_and_volumes(tmp_path: Path, images: Images, docker_api: str,
                                                            container_name: str) -> None:
    port = free_port()
    volume = f"{container_name}-data"
    podman("run", "-d", "--name", container_name, "-p", f"127.0.0.1:{port}:8080", "-v", f"{volume}:/data",
           "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", images.good2, *Images.command(8080, "0.0.0.0"))
    try:
        wait_for(lambda: serves(port) == "release 2\n", what="the bridged container")
        ctx = ctx_of(make_config(tmp_path, containers={"web": {"name": container_name, "docker_host": docker_api,
                                                               "start_period_seconds": 1.0}}))
        apply_params = remedies.validate_params("rollback_container_image", {"container": "web", "to": images.good})
        remedies.get("rollback_container_image").apply(apply_params, ctx)
        assert wait_for(lambda: serves(port), what="the recreated container") == "release 1\n"
        after = container_inspect(container_name)
        assert after["HostConfig"]["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}  # type: ignore[index]
        assert after["HostConfig"]["NetworkMode"] == "bridge"  # type: ignore[index]
        assert [m.get("Name") for m in after["Mounts"]] == [volume]  # type: ignore[attr-defined]
    finally:
        podman("rm", "-f", "-t", "0", container_name, check=False)
        podman("volume", "rm", "-f", volume, check=False)


def test_rollback_onto_an_image_that_fails_puts_the_old_container_back(
        tmp_path: Path, images: Images, docker_api: str, container_name: str) -> None:
    port = free_port()
    run_web(container_name, images.good, port)
    before = container_inspect(container_name)["Id"]
    ctx = ctx_of(web_config(tmp_path, container_name, docker_api, port))
    params = remedies.validate_params("rollback_container_image", {"container": "web", "to": images.bad})
    with pytest.raises(RemedyError, match=r"did not stay up.*the old container \(image .*:1\) was put back"):
        remedies.get("rollback_container_image").apply(params, ctx)
    wait_for(lambda: serves(port) == "release 1\n", what="the old container to serve again")
    assert container_inspect(container_name)["Id"] == before
    with pytest.raises(RemedyError, match="is not on the engine"):
        remedies.get("rollback_container_image").apply(
            remedies.validate_params("rollback_container_image", {"container": "web", "to": "localhost/nope:9"}), ctx)


def test_heald_refuses_to_act_on_the_container_it_runs_in(tmp_path: Path, docker_api: str,
                                                         container_name: str) -> None:
    """heald itself in a podman container with the engine's socket mounted (as people run
    it), configured to heal that very container: both remedies refuse; the same check from
    outside the container does not."""
    import sys

    from tests.conftest import REPO
    from tests.targets.conftest import ULIMITS, merged_image

    sock = docker_api.removeprefix("unix://")
    script = ("from heald.config import HealdConfig\n"
              "from heald.remedies import HealdSelf, get, validate_params\n"
              f"cfg = HealdConfig.model_validate({{'containers': {{'me': {{'name': {container_name!r}, "
              "'docker_host': 'unix:///engine.sock'}}})\n"
              "for name in ('restart_container', 'rollback_container_image'):\n"
              "    print(get(name).touches_heald(validate_params(name, {'container': 'me'}), HealdSelf(cfg)))\n")
    r = podman("run", "--name", container_name, "--network", "none", *ULIMITS, "-e", "PYTHONDONTWRITEBYTECODE=1",
               "-v", "/usr:/usr:ro", "-v", f"{sys.base_prefix}:{sys.base_prefix}:ro", "-v", f"{REPO}:{REPO}:ro",
               "-v", f"{sock}:/engine.sock", merged_image(), sys.executable, "-c", script, timeout=120)
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and all(f"refused: container:me ({container_name}) is the container heald itself runs in"
                                   in line for line in lines), r.stdout + r.stderr
    cfg = make_config(tmp_path, containers={"me": {"name": container_name, "docker_host": docker_api}})
    params = remedies.validate_params("restart_container", {"container": "me"})
    assert remedies.get("restart_container").touches_heald(params, remedies.HealdSelf(cfg)) is None


def test_container_target_config_is_checked(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="'nope' is not a container of containers"):
        make_config(tmp_path, services={"s": {"probes": [{"type": "container", "container": "nope"}]}})
    with pytest.raises(ValidationError, match="a container probe needs 'container'"):
        make_config(tmp_path, services={"s": {"probes": [{"type": "container"}]}})
    with pytest.raises(ValidationError, match="containers.web.name"):
        make_config(tmp_path, containers={"web": {"name": "web; rm -rf /"}})
    with pytest.raises(ValidationError, match="docker_host"):
        make_config(tmp_path, containers={"web": {"name": "web", "docker_host": "/var/run/docker.sock"}})


# -- end to end: heald heals --------------------------------------------------------------

def start(cfg: HealdConfig, seen: list[ProbeResult] | None = None) -> Runtime:
    rt = Runtime(cfg, manage_services=False)
    if seen is not None:
        assert rt.probes is not None
        rt.probes.on_result = lambda service, probe, result: seen.append(result) if probe.type == "container" else None
    rt.start()
    return rt


def ended(rt: Runtime, inc_id: int):  # type: ignore[no-untyped-def]
    inc = rt.store.get_incident(inc_id)
    return inc if inc is not None and inc.state.terminal else None


def test_a_killed_container_is_restarted_through_the_docker_api(tmp_path: Path, images: Images, docker_api: str,
                                                                 container_name: str) -> None:
    port = free_port()
    run_web(container_name, images.good, port)
    wait_for(lambda: serves(port), what="the web container")
    rt = start(web_config(tmp_path, container_name, docker_api, port))
    try:
        started = container_inspect(container_name)["State"]["StartedAt"]  # type: ignore[index]
        podman("kill", container_name)
        inc = wait_for(lambda: rt.store.list_incidents(), timeout=30, what="an incident")[0]
        done = wait_for(lambda: ended(rt, inc.id), timeout=60, what="the incident to end")
        assert done.state == IncidentState.resolved, done.closed_reason
        assert done.category == "process_down"
        actions = rt.store.actions_for(inc.id)
        assert [(a.remedy, a.status, a.target) for a in actions] == [
            ("restart_container", ActionStatus.succeeded, "container:web")]
        assert actions[0].snapshot and actions[0].snapshot["container"]["status"] == "exited"
        diagnosis = rt.store.diagnoses_for(inc.id)[-1]
        assert diagnosis.runbook == "container-down"
        assert any(e.startswith("container web: ") and f"web starting on {port}" in e for e in diagnosis.evidence), \
            diagnosis.evidence
        state = container_inspect(container_name)["State"]
        assert state["Running"] and state["StartedAt"] != started  # type: ignore[index]
        assert serves(port) == "release 1\n"
        events = [e.event for e in rt.store.audit_entries(incident_id=inc.id)]
        for expected in ("gate.decided", "action.started", "action.succeeded", "verification.passed"):
            assert expected in events
    finally:
        rt.stop()


def test_a_container_failing_on_a_new_image_is_rolled_back(tmp_path: Path, images: Images, docker_api: str,
                                                           container_name: str) -> None:
    port = free_port()
    run_web(container_name, images.good, port)
    wait_for(lambda: serves(port), what="the web container")
    seen: list[ProbeResult] = []
    rt = start(web_config(tmp_path, container_name, docker_api, port, container_checks=4), seen)
    try:
        wait_for(lambda: any(r.ok for r in seen), what="heald to see the container on its first image")
        # a deploy: the same container recreated on a release whose start fails
        podman("create", "--name", f"{container_name}-next", "--network", "host", "--ulimit", "nofile=1024:1024",
               "--ulimit", "nproc=1024:1024", images.bad, *Images.command(port))
        podman("rm", "-f", "-t", "0", container_name)
        podman("rename", f"{container_name}-next", container_name)
        podman("start", container_name)
        inc = wait_for(lambda: rt.store.list_incidents(), timeout=30, what="an incident")[0]
        done = wait_for(lambda: ended(rt, inc.id), timeout=60, what="the incident to end")
        assert done.state == IncidentState.resolved, done.closed_reason
        assert done.category == "bad_release"
        actions = rt.store.actions_for(inc.id)
        assert [(a.remedy, a.status) for a in actions] == [("rollback_container_image", ActionStatus.succeeded)]
        assert actions[0].params == {"container": "web", "to": images.good}
        assert actions[0].undo and actions[0].undo["image"] == images.bad
        assert container_inspect(container_name)["Config"]["Image"] == images.good  # type: ignore[index]
        assert serves(port) == "release 1\n"
        signal = next(s for s in rt.store.signals_for(inc.id) if s.status == SignalStatus.firing)
        assert signal.labels["container_previous_image"] == images.good
        diagnosis = rt.store.diagnoses_for(inc.id)[-1]
        assert any("FATAL: /www/ok missing" in e for e in diagnosis.evidence), diagnosis.evidence
    finally:
        rt.stop()


def test_target_error_names_the_container(tmp_path: Path, docker_api: str) -> None:
    cfg = make_config(tmp_path, containers={"web": {"name": "heald-test-absent", "docker_host": docker_api}})
    with pytest.raises(TargetError, match="container heald-test-absent on unix://.*: inspect: not found"):
        ct.inspect(cfg.containers["web"])
    t0 = time.monotonic()
    with pytest.raises(TargetError, match="did not answer"):
        ct.inspect(make_config(tmp_path, containers={"w": {"name": "w", "docker_host": f"unix://{tmp_path}/x.sock"}})
                   .containers["w"])
    assert time.monotonic() - t0 < 30
