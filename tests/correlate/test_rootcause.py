"""One root cause, one incident (issue 12 item 6), through the real ingest path with real
payloads (Alertmanager's and GitHub's, from the shared corpus), a real redis-server under heald's
supervisor probed by a real tcp probe, and the store on a SQLite file and on PostgreSQL.

Each test reproduces a case seen on an older heald:
- a ``RedisDown`` alert opened its own incident beside the redis probe's (alert names differ);
- a dependency's alert and a dependent's 5xx alert made two incidents, or one about the dependent;
- one Alertmanager notification group of 19 alerts became 7 incidents;
- two CI failures of different commits joined one incident (their grouping key had no alertname);
- the knowledge base read "Redis down" as ``database_unavailable``, the runbook said
  ``process_down``, and the gate saw a disagreement and a lowered confidence.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from heald import correlate
from heald.config import HealdConfig
from heald.correlate import JoinedBy
from heald.correlate.targets import group_wait_for, resolve_service, route_for, target_of
from heald.diagnose import RunbookReasoner, diagnose
from heald.diagnose.categories import CATEGORIES, agree
from heald.diagnose.kb import KnowledgeBaseReasoner
from heald.diagnose.runbooks import load_runbooks
from heald.models import Incident, IncidentState, Signal, SignalStatus
from heald.plan import make_plan
from heald.sources.alertmanager import AlertmanagerSource
from heald.sources.github import GitHubSource
from heald.sources.probes import ProbeResult, make_checker, probe_signal
from heald.store import Store
from heald.supervise import Supervisor
from tests.conftest import CORPUS, free_port, make_config, wait_for

ROOT = Path(__file__).resolve().parents[2]
AM = AlertmanagerSource()
GH = GitHubSource()


# -- payloads ------------------------------------------------------------------------------

def am_message(alerts: list[dict[str, Any]], group_key: str | None = None) -> bytes:
    """Alertmanager's own webhook message (corpus ``received.json``) carrying ``alerts``: each
    alert is the corpus alert with the given labels and annotations."""
    message = json.loads((CORPUS / "alertmanager" / "received.json").read_text())
    template = message["alerts"][0]
    out = []
    for a in alerts:
        alert = copy.deepcopy(template)
        alert.pop("fingerprint")  # Alertmanager's own, computed from the labels by the source
        alert["labels"] = a["labels"]
        alert["annotations"] = a.get("annotations", {"summary": a["labels"]["alertname"]})
        out.append(alert)
    message["alerts"] = out
    if group_key is None:
        message.pop("groupKey")
    else:
        message["groupKey"] = group_key
    return json.dumps(message).encode()


def am_signals(alerts: list[dict[str, Any]], group_key: str | None = None) -> list[Signal]:
    return AM.parse({}, am_message(alerts, group_key))


REDIS_DOWN = {"labels": {"alertname": "RedisDown", "job": "redis", "instance": "127.0.0.1:9121", "severity": "critical"},
              "annotations": {"summary": "Redis down (instance 127.0.0.1:9121)",
                              "description": "Redis instance is down\n  VALUE = 0\n  LABELS = map[job:redis]"}}
SHOP_5XX = {"labels": {"alertname": "HighErrorRate", "job": "shop", "instance": "127.0.0.1:8080", "severity": "critical"},
            "annotations": {"summary": "shop: 38% of requests answer HTTP 5xx",
                            "description": "HTTP 500 on 38% of POST /checkout over 5m"}}


def ci_failure(sha: str, event: str = "workflow_run") -> Signal:
    """GitHub's own ``workflow_run`` fixture (corpus), failed, for commit ``sha``."""
    data = json.loads((CORPUS / "github" / "workflow_run" / "completed.payload.json").read_text())
    data["workflow_run"]["conclusion"] = "failure"
    data["workflow_run"]["head_sha"] = sha
    [sig] = GH.parse({"X-GitHub-Event": event, "X-GitHub-Delivery": sha[:8]}, json.dumps(data).encode())
    return sig


# -- a real redis-server, down ---------------------------------------------------------------

def redis_config(tmp_path: Path, port: int, **extra: Any) -> HealdConfig:
    services = {
        "redis": {"command": ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                  "probes": [{"type": "tcp", "port": port, "interval_seconds": 0.1, "timeout_seconds": 0.5}]},
        "shop": {"depends_on": ["redis"]},
        "blog": {},
    }
    return make_config(tmp_path, services=services, **extra)


@pytest.fixture
def redis_down(tmp_path: Path) -> Iterator[tuple[HealdConfig, Signal]]:
    """A configuration with a real redis-server managed by heald, killed; and the signal its
    tcp probe emits (``process_state="exited"``)."""
    if not Path("/usr/bin/redis-server").exists():
        pytest.skip("redis-server is not installed (scripts/apt-packages.txt)")
    port = free_port()
    config = redis_config(tmp_path, port)
    sup = Supervisor(config)
    proc = sup.get("redis")
    assert proc is not None
    proc.start()
    probe = config.services["redis"].probes[0]
    check = make_checker(probe, "redis", sup)
    wait_for(lambda: check().ok, what="redis-server to listen")
    identity = proc.identity()
    assert identity is not None
    os.kill(identity.pid, signal.SIGKILL)
    wait_for(lambda: not proc.is_running(), what="redis-server to die")

    def failed() -> ProbeResult | None:
        r = check()
        return None if r.ok else r

    result = wait_for(failed, what="the probe to fail")
    yield config, probe_signal("redis", probe, SignalStatus.firing, result, result.at, 3, sup)
    sup.stop_all()


def ingest(store: Store, config: HealdConfig, s: Signal) -> correlate.IngestResult:
    with store.tx() as session:
        return correlate.ingest(session, s, config)


def ingest_all(store: Store, config: HealdConfig, signals: list[Signal]) -> list[correlate.IngestResult]:
    """One webhook delivery: its signals in one transaction, as the API ingests them."""
    with store.tx() as session:
        return [correlate.ingest(session, s, config) for s in signals]


# -- one target, one incident ----------------------------------------------------------------

def test_redisdown_alert_joins_the_redis_probes_incident(store: Store, redis_down: tuple[HealdConfig, Signal]) -> None:
    config, probe = redis_down
    assert config.correlation.group_by == ["service", "alertname"]  # the default that split them
    opened = ingest(store, config, probe)
    [alert] = am_signals([REDIS_DOWN], group_key='{}:{alertname="RedisDown"}')
    joined = ingest_all(store, config, [alert])[0]
    assert opened.opened and not joined.opened
    assert joined.incident_id == opened.incident_id and joined.joined == JoinedBy.same_target
    assert len(store.list_incidents()) == 1
    entry = next(e for e in store.audit_entries(incident_id=opened.incident_id) if e.event == "signal.firing")
    assert "it is about redis" in entry.reason and entry.details["joined_by"] == "same_target"


def test_an_exporter_alert_is_about_the_service_whose_address_it_names(tmp_path: Path, store: Store) -> None:
    port = free_port()
    config = redis_config(tmp_path, port)
    exporter = am_signals([{"labels": {"alertname": "RedisDown", "job": "redis_exporter",
                                       "instance": f"localhost:{port}"}}])[0]
    assert exporter.service == "redis_exporter" and resolve_service(exporter, config) == "redis"
    first = ingest(store, config, exporter)
    assert store.get_incident(first.incident_id).service == "redis"
    [stored] = store.signals_for(first.incident_id)
    assert stored.service == "redis"
    again = ingest(store, config, am_signals([{"labels": {"alertname": "RedisRejectedConnections", "job": "redis",
                                                          "instance": "10.0.0.9:9121"}}])[0])
    assert again.incident_id == first.incident_id and again.joined == JoinedBy.same_target
    # a service heald does not know is one target per instance: two hosts, two incidents; a
    # second alert about the first host joins the first
    node = [am_signals([{"labels": {"alertname": name, "job": "node", "instance": f"10.0.0.{i}:9100"}}])[0]
            for name, i in (("HostOutOfMemory", 1), ("HostHighCpuLoad", 2), ("HostOomKillDetected", 1))]
    assert target_of(node[0].service, node[0].labels, config) == "node/10.0.0.1:9100"
    a, b, c = (ingest(store, config, s) for s in node)
    assert a.opened and b.opened and a.incident_id != b.incident_id
    assert c.incident_id == a.incident_id and c.joined == JoinedBy.same_target


# -- a dependency and its dependents: one incident about the dependency -----------------------

@pytest.mark.parametrize("order", ["dependent_first", "dependency_first"])
def test_dependency_down_and_a_dependents_5xx_make_one_incident_about_the_dependency(
        store: Store, redis_down: tuple[HealdConfig, Signal], order: str) -> None:
    config, probe = redis_down
    [redis_alert] = am_signals([REDIS_DOWN], group_key='{}:{alertname="RedisDown"}')
    [shop_alert] = am_signals([SHOP_5XX], group_key='{}:{alertname="HighErrorRate"}')
    signals = [shop_alert, probe, redis_alert] if order == "dependent_first" else [probe, redis_alert, shop_alert]
    results = [ingest(store, config, s) for s in signals]
    assert len({r.incident_id for r in results}) == 1 and [r.opened for r in results] == [True, False, False]
    [inc] = store.list_incidents()
    assert inc.service == "redis"

    # diagnosis: the default runbooks and the knowledge base, on every signal of the incident
    stored = store.signals_for(inc.id)
    runbooks = load_runbooks([])
    finding = diagnose(inc, stored, [RunbookReasoner(runbooks), KnowledgeBaseReasoner()], runbooks)
    d = finding.diagnosis
    assert d.category == "process_down" and d.confidence == 0.95, d.explanation
    assert "disagree" not in d.explanation
    assert {h.reasoner for h in finding.hypotheses} == {"runbook", "kb"}
    assert all(agree(h.category, "process_down") for h in finding.hypotheses)
    # the remedy acts on the dependency, redis, not on the shop whose 5xx alert came last or first
    plan = make_plan(inc.id, finding, stored, set(), {}, service=inc.service).plan
    assert plan.candidates[0].remedy == "restart_process" and plan.candidates[0].params["service"] == "redis"


def test_a_dependency_in_the_dependents_alertmanager_group_takes_the_incident_over(tmp_path: Path, store: Store) -> None:
    config = redis_config(tmp_path, free_port())
    signals = am_signals([SHOP_5XX, REDIS_DOWN], group_key='{}:{severity="critical"}')
    first, second = ingest_all(store, config, signals)
    assert first.opened and second.incident_id == first.incident_id
    assert second.joined == JoinedBy.took_over_dependent
    inc = store.get_incident(first.incident_id)
    assert inc.service == "redis" and "(and its dependent shop)" in inc.title


# -- Alertmanager's groups ---------------------------------------------------------------------

def nineteen_alerts() -> list[dict[str, Any]]:
    """19 alerts of 7 alert names on several hosts, as a `group_by: [cluster]` route sends them."""
    names = ["HostHighCpuLoad", "HostOutOfMemory", "HostOutOfDiskSpace", "HostNetworkReceiveErrors",
             "HostClockSkew", "HostOomKillDetected", "HostSystemdServiceCrashed"]
    return [{"labels": {"alertname": names[i % 7], "job": "node", "instance": f"10.0.0.{i % 5}:9100",
                        "cluster": "eu-1", "severity": "warning"}} for i in range(19)]


def test_one_alertmanager_group_of_19_alerts_is_one_incident(tmp_path: Path, store: Store) -> None:
    config = make_config(tmp_path)
    group = '{}/{severity="warning"}:{cluster="eu-1"}'
    results = ingest_all(store, config, am_signals(nineteen_alerts(), group_key=group))
    assert len(store.list_incidents()) == 1
    assert results[0].opened and all(r.incident_id == results[0].incident_id for r in results)
    assert {r.joined for r in results[1:]} <= {JoinedBy.same_group, JoinedBy.same_fingerprint}
    # the group's next notification (group_interval later, one more alert) joins it too
    more = [*nineteen_alerts(), {"labels": {"alertname": "HostHighCpuLoad", "job": "node", "instance": "10.0.0.9:9100",
                                            "cluster": "eu-1", "severity": "warning"}}]
    later = ingest_all(store, config, am_signals(more, group_key=group))
    assert {r.incident_id for r in later} == {results[0].incident_id} and len(store.list_incidents()) == 1
    # without a groupKey (another sender), heald's own grouping applies: not one incident
    ungrouped = ingest_all(store, config, am_signals([{"labels": {**a["labels"], "cluster": "us-1"}}
                                                      for a in nineteen_alerts()]))
    assert len({r.incident_id for r in ungrouped}) > 1


def test_a_group_that_joined_an_incident_by_target_keeps_joining_it(store: Store,
                                                                    redis_down: tuple[HealdConfig, Signal]) -> None:
    config, probe = redis_down
    opened = ingest(store, config, probe)
    group = '{}:{team="cache"}'
    first = ingest_all(store, config, am_signals([REDIS_DOWN], group_key=group))[0]
    assert first.joined == JoinedBy.same_target and first.incident_id == opened.incident_id
    other = {"labels": {"alertname": "RedisMissingBackup", "job": "backup", "instance": "10.0.0.3:9100"}}
    second = ingest_all(store, config, am_signals([REDIS_DOWN, other], group_key=group))
    assert {r.incident_id for r in second} == {opened.incident_id} and len(store.list_incidents()) == 1


# -- CI: one incident per (repository, commit) -------------------------------------------------

def test_two_ci_failures_of_different_commits_are_two_incidents(tmp_path: Path, store: Store) -> None:
    config = make_config(tmp_path)
    a = ingest(store, config, ci_failure("a" * 40))
    b = ingest(store, config, ci_failure("b" * 40))
    assert a.opened and b.opened and a.incident_id != b.incident_id
    assert store.get_incident(a.incident_id).labels["head_sha"] == "a" * 40
    assert store.get_incident(b.incident_id).labels["head_sha"] == "b" * 40
    # the same commit's other failure (another workflow) joins its commit's incident
    again = ci_failure("b" * 40)
    again = again.model_copy(update={"labels": {**again.labels, "workflow": "lint"}, "fingerprint": None})
    joined = ingest(store, config, again)
    assert joined.incident_id == b.incident_id and not joined.opened
    # however the operator groups, a commit stays a target of its own
    by_service = make_config(tmp_path, correlation={"group_by": ["service"]})
    c = ingest(store, by_service, ci_failure("c" * 40))
    assert c.opened and c.incident_id not in (a.incident_id, b.incident_id)


# -- routes: group_by and group_wait per signal ------------------------------------------------

def test_routes_set_group_by_and_group_wait_first_match_wins(tmp_path: Path, store: Store) -> None:
    config = make_config(tmp_path, healing={"group_wait_seconds": 30}, correlation={"routes": [
        {"matchers": ['source="github"'], "group_wait_seconds": 0},
        {"matchers": ['severity="warning"'], "group_by": ["cluster"], "group_wait_seconds": 5},
        {"matchers": ['alertname=~"Host.*"'], "group_wait_seconds": 99},
    ]})
    ci = ci_failure("d" * 40)
    hosts = am_signals(nineteen_alerts()[:4])
    critical = am_signals([SHOP_5XX])[0]
    assert group_wait_for(ci, config) == 0 and group_wait_for(hosts[0], config) == 5
    assert group_wait_for(critical, config) == 30 and route_for(critical, config) is None
    # the warning route groups by cluster: four alerts of four hosts, no groupKey, one incident
    results = [ingest(store, config, s) for s in hosts]
    assert len({r.incident_id for r in results}) == 1
    assert store.get_incident(results[0].incident_id).group_key == "cluster=eu-1"


def test_a_bad_route_matcher_is_refused_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"correlation.routes.0.matchers|invalid matcher"):
        make_config(tmp_path, correlation={"routes": [{"matchers": ["cluster"]}]})


# -- related categories agree ----------------------------------------------------------------

def test_a_process_down_explains_the_database_its_users_cannot_reach() -> None:
    assert agree("process_down", "database_unavailable") and agree("database_unavailable", "process_down")
    assert agree("process_down", "http_5xx") and agree("process_down", "connection_refused")
    assert not agree("process_down", "dns_failure") and not agree("database_unavailable", "lint_error")


def test_the_category_relations_are_documented_as_they_are() -> None:
    """docs/diagnosis.md lists every category with the categories it explains, as in the table."""
    rows: dict[str, set[str]] = {}
    for line in (ROOT / "docs" / "diagnosis.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = {c.strip() for c in cells[3].split(",")} - {"—", ""}
    assert rows == {name: set(c.explains) for name, c in CATEGORIES.items()}


def test_runbook_and_knowledge_base_agree_on_a_redis_that_is_down(redis_down: tuple[HealdConfig, Signal]) -> None:
    _, probe = redis_down
    [alert] = am_signals([REDIS_DOWN])
    inc = Incident(id=1, title="redis", service="redis", state=IncidentState.diagnosing, severity=probe.severity,
                   fingerprint="x", group_key="service=redis", labels={}, environment="production",
                   started_at=probe.starts_at, detected_at=probe.starts_at, updated_at=probe.starts_at)
    runbooks = load_runbooks([])
    kb = KnowledgeBaseReasoner().diagnose(inc, [alert])
    assert kb is not None and kb.diagnosis.category == "database_unavailable"
    finding = diagnose(inc, [probe, alert], [RunbookReasoner(runbooks), KnowledgeBaseReasoner()], runbooks)
    assert finding.diagnosis.category == "process_down"
    assert finding.diagnosis.confidence == 0.95  # not lowered to the knowledge base's
    assert "kb agree" in finding.diagnosis.explanation


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("redis-server under heald's supervisor: Linux")
