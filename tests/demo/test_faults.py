"""Every fault of ``heald demo`` on one running demo system (real processes, real HTTP, a real
git repository and release directory, heald's runtime in this process): heald heals each with
the remedy it calls for, and does nothing for the false alarm."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from heald.demo.faults import FAULTS
from heald.demo.runner import DemoEnv, run_fault, start_demo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoEnv]:
    e = start_demo(tmp_path_factory.mktemp("demo"))
    yield e
    e.stop()


def log(message: str) -> None:
    print(message)


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault_is_healed_as_it_calls_for(env: DemoEnv, name: str) -> None:
    fault = FAULTS[name]
    if fault.needs_targets and env.targets is None:
        pytest.skip(f"the demo's container and systemd unit need podman: {env.targets_missing}")
    r = run_fault(env, fault, log, timeout=60)
    assert r.expected, (r.outcome, r.reason, r.problems, r.remedy, r.target)
    assert not r.problems
    if not fault.expect_incident:
        assert r.incident_id is None and r.remedy is None
        return
    assert r.outcome == "resolved" and r.remedy == fault.remedy
    assert r.time_to_detect_s is not None and r.time_to_recover_s is not None
    assert 0 < r.time_to_detect_s <= r.time_to_recover_s
    assert r.incident_time_to_detect_s is not None and r.incident_time_to_recover_s is not None
    assert r.incident_time_to_detect_s <= r.incident_time_to_recover_s


def test_the_demo_incidents_are_in_an_intact_audit_chain(env: DemoEnv) -> None:
    report = env.runtime.store.verify_audit()
    assert report.intact and report.entries > 50


def test_the_adopted_targets_were_acted_on_through_their_own_remedies(env: DemoEnv) -> None:
    if env.targets is None:
        pytest.skip(f"the demo's container and systemd unit need podman: {env.targets_missing}")
    by_service = {}
    for inc in env.runtime.store.list_incidents(limit=200):
        if inc.service in ("web", "worker"):
            by_service[inc.service] = [(a.remedy, a.params, a.target) for a in env.runtime.store.actions_for(inc.id)]
    assert by_service == {"web": [("restart_container", {"container": "web"}, "container:web")],
                          "worker": [("restart_unit", {"unit": "worker"}, "unit:worker")]}


def test_dependency_down_is_one_incident_about_payments(env: DemoEnv) -> None:
    incidents = [i for i in env.runtime.store.list_incidents(limit=200) if i.service == "payments"]
    assert incidents, "the dependency-down fault ran before this test"
    inc = incidents[-1]
    services = {s.service for s in env.runtime.store.signals_for(inc.id)}
    assert "payments" in services
    [action] = env.runtime.store.actions_for(inc.id)
    assert action.params == {"service": "payments"}
    assert inc.closed_at is not None
    overlapping = [i for i in env.runtime.store.list_incidents(limit=200)
                   if i.service == "shop" and inc.started_at <= i.detected_at <= inc.closed_at]
    assert overlapping == []  # the shop's failing checkouts did not open an incident of their own

