"""heald never remedies itself, however a signal names it (issue 12 item 7, DESIGN.md invariant 7),
and a remedy that cannot act on its target is never planned nor counted against in learning.

A real Runtime (DBOS on SQLite) heals real incidents; the managed service "svc" is configured
(so restart_process could act on it) but not started: any action would start it.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from heald import remedies
from heald.diagnose import Finding
from heald.diagnose.runbooks import load_runbooks
from heald.engine import Runtime, steps
from heald.learn import success_rates
from heald.models import (
    ActionStatus,
    Diagnosis,
    IncidentState,
    OutcomeResult,
    RemedyCandidate,
    Risk,
    Signal,
    SignalStatus,
)
from heald.plan import make_plan
from tests.conftest import make_config, wait_for
from tests.engine.test_steps import make_deps
from tests.engine.test_workflow import PY, runbook, terminal

PORT = 18077  # heald's api.port in these configurations (nothing listens on it: only its identity matters)


def config(tmp_path: Path, **data: object):  # type: ignore[no-untyped-def]
    data.setdefault("services", {"svc": {"command": [PY, "-c", "import time; time.sleep(600)"]}})
    return make_config(tmp_path, runbooks=[str(runbook(tmp_path))], api={"port": PORT}, **data)


def broken(labels: dict[str, str], service: str = "svc") -> Signal:
    """An alert the runbook answers with an auto-approved low-risk restart_process of ``service``."""
    return Signal(source="alertmanager", service=service, summary="svc broken",
                  labels={"alertname": "SvcBroken", "service": service, **labels})


def escalated_without_remedy(rt: Runtime, sig: Signal) -> str:
    """Ingest ``sig``; wait for its incident to end; check that no remedy was planned nor run and
    that the service was not touched. Returns the incident's closing reason."""
    inc_id = rt.ingest(sig).incident_id
    assert inc_id is not None
    inc = wait_for(lambda: terminal(rt, inc_id), timeout=30, what="the incident to end")
    assert inc.state == IncidentState.needs_attention, inc
    assert rt.store.actions_for(inc_id) == []
    assert all(p.candidates == [] for p in rt.store.plans_for(inc_id))
    assert not rt.supervisor.processes["svc"].is_running()
    return inc.closed_reason or ""


@pytest.mark.parametrize("labels", [
    {"job": "heald"},
    {"job": "HEALD"},
    {"instance": f"127.0.0.1:{PORT}"},
    {"instance": f"localhost:{PORT}"},
    {"instance": f"{socket.gethostname()}:{PORT}"},
    {"instance": "heald"},
    {"pid": str(os.getpid())},
], ids=["job", "job-case", "instance-loopback", "instance-localhost", "instance-hostname", "instance-name", "pid"])
def test_an_alert_naming_heald_gets_no_remedy_and_escalates_with_the_reason(
        tmp_path: Path, start_runtime: Callable[..., Runtime], labels: dict[str, str]) -> None:
    rt = start_runtime(config(tmp_path), manage_services=False, run_probes=False)
    reason = escalated_without_remedy(rt, broken(labels))
    assert "about heald itself" in reason and "never remedies itself" in reason, reason
    dropped = [e.reason for e in rt.store.audit_entries() if e.event == "plan.candidate_dropped"]
    assert any("restart_process" in d and "heald itself" in d for d in dropped), dropped


def test_an_alert_about_the_service_heald_gets_no_remedy(tmp_path: Path,
                                                        start_runtime: Callable[..., Runtime]) -> None:
    """service="heald" (InstanceDown for heald, its memory alert): no restart of heald is planned,
    although heald is not declared under services."""
    rt = start_runtime(config(tmp_path), manage_services=False, run_probes=False)
    reason = escalated_without_remedy(rt, broken({"job": "node"}, service="heald"))
    assert "heald itself" in reason, reason


def test_extra_identity_names_and_addresses_are_heald(tmp_path: Path, start_runtime: Callable[..., Runtime]) -> None:
    cfg = config(tmp_path, identity={"names": ["heald", "healer-prod"], "addresses": ["lb.example:443"]})
    rt = start_runtime(cfg, manage_services=False, run_probes=False)
    assert "heald itself" in escalated_without_remedy(rt, broken({"job": "healer-prod"}))
    assert "heald itself" in escalated_without_remedy(rt, broken({"instance": "LB.example:443", "job": "x"}))


def test_an_alert_about_another_instance_still_heals(tmp_path: Path, start_runtime: Callable[..., Runtime]) -> None:
    """The identities do not over-reach: another job, and heald's port on another host, are not heald."""
    rt = start_runtime(config(tmp_path), manage_services=False, run_probes=False)
    sig = broken({"job": "shop", "instance": f"10.9.8.7:{PORT}"})
    inc_id = rt.ingest(sig).incident_id
    assert inc_id is not None
    wait_for(lambda: rt.store.actions_for(inc_id), timeout=30, what="the restart")
    rt.ingest(sig.model_copy(update={"status": SignalStatus.resolved}))
    inc = wait_for(lambda: terminal(rt, inc_id), timeout=30, what="the incident to end")
    assert inc.state == IncidentState.resolved, inc
    assert [a.remedy for a in rt.store.actions_for(inc_id)] == ["restart_process"]


def test_restart_process_for_an_unmanaged_service_is_never_planned(
        tmp_path: Path, start_runtime: Callable[..., Runtime]) -> None:
    """The runbook offers restart_process for "ext", which heald does not manage: it is dropped from
    the plan with the reason, nothing runs, and learning has nothing against restart_process."""
    cfg = config(tmp_path, services={"svc": {"command": [PY, "-c", "import time; time.sleep(600)"]},
                                     "ext": {"probes": [{"type": "tcp", "host": "127.0.0.1", "port": 9}]}})
    rt = start_runtime(cfg, manage_services=False, run_probes=False)
    inc_id = rt.ingest(broken({}, service="ext")).incident_id
    assert inc_id is not None
    inc = wait_for(lambda: terminal(rt, inc_id), timeout=30, what="the incident to end")
    assert inc.state == IncidentState.needs_attention and "no remedy left" in (inc.closed_reason or ""), inc
    assert rt.store.actions_for(inc_id) == []
    dropped = [e.reason for e in rt.store.audit_entries(incident_id=inc_id) if e.event == "plan.candidate_dropped"]
    assert any("restart_process cannot act on 'ext'" in d and "does not manage it" in d for d in dropped), dropped
    assert "restart_process" not in success_rates(rt.store, "svc_broken")


def test_make_plan_drops_remedies_that_cannot_apply(tmp_path: Path) -> None:
    cfg = config(tmp_path, remedies={"commands": {"flush": {"argv": ["true"]}}})
    rb = load_runbooks([runbook(tmp_path)], False)[0]
    finding = Finding(Diagnosis(category="svc_broken", confidence=0.95, explanation="x", reasoner="runbook"), rb, (
        RemedyCandidate(remedy="run_command", params={"name": "flush"}, risk=Risk.low),
        RemedyCandidate(remedy="run_command", params={"name": "not-allowed"}, risk=Risk.low),
        RemedyCandidate(remedy="rollback_release", params={"service": "svc"}, risk=Risk.low),
    ))
    heald = remedies.HealdSelf(cfg)
    for service, kept in [("svc", ["restart_process", "run_command"]), ("ext", ["run_command"])]:
        sig = broken({}, service=service)
        sig.id = 1
        result = make_plan(1, finding, [sig], set(), {}, random.Random(1), heald=heald)
        assert [c.remedy for c in result.plan.candidates] == kept, result
        assert any("not-allowed" in d for d in result.dropped) and any("releases is not configured" in d
                                                                       for d in result.dropped), result.dropped


def test_a_remedy_that_could_not_apply_does_not_count_in_learning(tmp_path: Path) -> None:
    """Applied anyway (a plan from before the service was unmanaged): the action fails, and its
    outcome is not_applicable, which learning ignores."""
    deps = make_deps(tmp_path)
    try:
        inc_id = _incident(deps)
        found = steps.diagnose(deps, inc_id, attempt=1)
        assert isinstance(found, steps.Found)
        steps.decide(deps, inc_id, 1, found, steps.plan(deps, inc_id, found, []))
        candidate = RemedyCandidate(remedy="restart_process", params={"service": "gone"}, risk=Risk.low)
        acted = steps.act(deps, inc_id, 1, candidate)
        assert isinstance(acted, steps.Acted) and acted.status == ActionStatus.failed, acted
        steps.learn(deps, inc_id, 1, "svc_broken", "restart_process", healed=False)
        assert [o.result for o in deps.store.outcomes(incident_id=inc_id)] == [OutcomeResult.not_applicable]
        assert success_rates(deps.store, "svc_broken") == {}
        # a real failure still counts
        steps.learn(deps, inc_id, 2, "svc_broken", "restart_process", healed=False)
        assert success_rates(deps.store, "svc_broken")["restart_process"].failures == 1
    finally:
        deps.store.close()


def _incident(deps: steps.Deps) -> int:
    from heald import correlate

    with deps.store.tx() as s:
        result = correlate.ingest(s, broken({}), deps.config)
    assert result.incident_id is not None
    return result.incident_id


def alertmanager(labels: dict[str, str]) -> list[Signal]:
    """The signals of one Alertmanager webhook message (version 4) with one firing alert."""
    import json

    from heald.sources.alertmanager import AlertmanagerSource

    body = {"version": "4", "groupKey": "{}:{alertname}", "status": "firing", "receiver": "heald",
            "groupLabels": {}, "commonLabels": labels, "commonAnnotations": {}, "externalURL": "http://am:9093",
            "truncatedAlerts": 0,
            "alerts": [{"status": "firing", "labels": labels, "annotations": {"summary": "heald itself"},
                        "startsAt": "2026-11-22T01:56:05.915Z", "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "http://prom:9090/graph", "fingerprint": "0123456789abcdef"}]}
    return AlertmanagerSource().parse({}, json.dumps(body).encode())


@pytest.mark.parametrize("labels", [
    {"alertname": "HighMemoryUsage", "job": "heald", "instance": f"127.0.0.1:{PORT}", "severity": "warning"},
    {"alertname": "InstanceDown", "job": "heald", "instance": f"localhost:{PORT}", "severity": "critical"},
    {"alertname": "ProcessHighMemoryUsage", "job": "svc", "instance": f"127.0.0.1:{PORT}"},
], ids=["memory-job-heald", "instancedown-job-heald", "memory-instance-only"])
def test_alertmanager_alerts_about_heald_with_the_shipped_runbooks(
        tmp_path: Path, start_runtime: Callable[..., Runtime], labels: dict[str, str]) -> None:
    """As observed (issue 12 item 7): heald's memory alert and InstanceDown for heald, through the
    Alertmanager source and heald's own runbooks; "svc" is managed, so only the identity guards it."""
    cfg = make_config(tmp_path, services={"svc": {"command": [PY, "-c", "import time; time.sleep(600)"]}},
                      api={"port": PORT})
    rt = start_runtime(cfg, manage_services=False, run_probes=False)
    [sig] = alertmanager(labels)
    reason = escalated_without_remedy(rt, sig)
    assert "heald itself" in reason, reason


def test_heald_on_every_address_is_each_of_this_hosts_addresses_and_no_other() -> None:
    from heald.config import HealdConfig
    from heald.remedies.base import _local_addresses

    heald = remedies.HealdSelf(HealdConfig.model_validate({"api": {"host": "0.0.0.0", "port": 8080}}))
    mine = [f"[{a}]:8080" if a.version == 6 else f"{a}:8080" for a in _local_addresses() if not a.is_link_local]
    for instance in [*mine, "127.0.0.1:8080", "[::1]:8080", "localhost:8080", f"{socket.gethostname()}:8080",
                     "http://127.0.0.1:8080/metrics"]:
        assert heald.names_heald(None, {"instance": instance}) is not None, instance
    for instance in ["10.9.8.7:8080", "[2001:db8::7]:8080", "127.0.0.1:9100", "shop:8080", "heald-db:8080"]:
        assert heald.names_heald(None, {"instance": instance}) is None, instance
    assert heald.names_heald("Heald", {}) is not None and heald.names_heald("healdx", {"job": "node"}) is None


def test_a_ci_failure_of_a_repository_named_heald_is_not_heald_itself(tmp_path: Path) -> None:
    """heald healing its own source's CI: the repository "heald" is not the running heald."""
    from heald import correlate
    from heald.budgets import CI_SIGNAL_KINDS, about_heald
    from heald.ci.incident import FAILED, REPRODUCED

    assert set(CI_SIGNAL_KINDS) == {FAILED, REPRODUCED}
    deps = make_deps(tmp_path)
    try:
        with deps.store.tx() as s:
            ci = correlate.ingest(s, Signal(source="github", kind=FAILED, service="heald", summary="CI failed",
                                            labels={"repo": "heald", "head_sha": "abc", "head_branch": "main"}),
                                  deps.config)
            alert = correlate.ingest(s, broken({"job": "node"}, service="heald"), deps.config)
        assert ci.incident_id is not None and alert.incident_id is not None
        assert about_heald(deps.config, deps.store, ci.incident_id) is None
        assert "heald itself" in (about_heald(deps.config, deps.store, alert.incident_id) or "")
    finally:
        deps.store.close()
