"""Silences, maintenance windows and inhibition rules: stored, matched at intake, enforced by
the gate; over the API (roles, field-naming errors) and the CLI."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from dbos import DBOS

from heald import correlate
from heald.correlate.silences import SilenceError, create_silence, expire_silence, list_silences
from heald.engine import workflow_id
from heald.models import IncidentState, Signal, SignalStatus, utcnow
from heald.store import NotFound, Store
from tests.api.conftest import api_config, serve
from tests.cli.test_cli import env_for
from tests.conftest import bearer, make_config, make_token, run_heald, wait_for
from tests.engine.test_workflow import alert, sleeper_config, terminal


def sig(status: SignalStatus = SignalStatus.firing, **labels: str) -> Signal:
    service = labels.pop("service", "shop")
    return Signal(source="test", service=service, status=status, summary="x",
                  labels={"alertname": "HighErrors", **labels})


def ingest(store: Store, signal: Signal, cfg) -> correlate.IngestResult:  # type: ignore[no-untyped-def]
    with store.tx() as s:
        return correlate.ingest(s, signal, cfg)


def test_silence_lifecycle_in_the_store(store: Store) -> None:
    now = utcnow()
    active = create_silence(store, ['service="shop"'], now + timedelta(hours=1), created_by="user:alice",
                            comment="deploy")
    pending = create_silence(store, ['alertname=~"Disk.*"'], now + timedelta(hours=3), created_by="user:alice",
                             comment="window", starts_at=now + timedelta(hours=2))
    assert active["state"] == "active" and pending["state"] == "pending"
    assert [s["id"] for s in list_silences(store, "active")] == [active["id"]]
    done = expire_silence(store, pending["id"], "user:bob")
    assert done["state"] == "expired" and done["expired_by"] == "user:bob"
    assert expire_silence(store, pending["id"], "user:carol")["expired_by"] == "user:bob"  # once
    assert {s["id"] for s in list_silences(store)} == {active["id"], pending["id"]}  # never deleted
    with pytest.raises(NotFound):
        expire_silence(store, 999, "user:bob")
    events = [e.event for e in store.audit_entries()]
    assert events == ["silence.created", "silence.created", "silence.expired"]


@pytest.mark.parametrize(("matchers", "end", "kw", "field", "text"), [
    ([], 3600, {}, "matchers", "at least one matcher"),
    (['service="shop"', "service"], 3600, {}, "matchers[1]", "invalid matcher"),
    (['service=~"("'], 3600, {}, "matchers[0]", "invalid regex"),
    (['service=~".*"', 'x=""'], 3600, {}, "matchers", "must not match the empty string"),
    (['service="shop"'], -10, {}, "ends_at", "must be after starts_at"),
    (['service="shop"'], 3600, {"comment": " "}, "comment", "say why"),
])
def test_bad_silences_are_refused_naming_the_field(tmp_path: Path, matchers, end, kw, field, text) -> None:  # type: ignore[no-untyped-def]
    store = Store(f"sqlite:///{tmp_path / 'h.db'}")
    store.migrate()
    with pytest.raises(SilenceError) as exc:
        create_silence(store, matchers, utcnow() + timedelta(seconds=end), created_by="t",
                       comment=kw.get("comment", "c"))
    assert exc.value.field == field and text in str(exc.value)
    assert list_silences(store) == []
    store.close()


def test_a_silenced_signal_is_recorded_and_starts_nothing(tmp_path: Path, store: Store) -> None:
    cfg = make_config(tmp_path)
    silence = create_silence(store, ['service="shop"', 'alertname=~"High.*"'], utcnow() + timedelta(hours=1),
                             created_by="user:alice", comment="maintenance")
    muted = ingest(store, sig(), cfg)
    assert muted.incident_id is None and not muted.opened
    assert muted.suppressed_by.startswith(f"silence {silence['id']}: ") and "maintenance" in muted.suppressed_by
    assert store.list_incidents() == []
    other = ingest(store, sig(service="cart"), cfg)  # not matched: heals as usual
    assert other.opened and other.suppressed_by is None
    resolved = ingest(store, sig(SignalStatus.resolved), cfg)  # a resolution is never silenced
    assert resolved.suppressed_by is None
    expire_silence(store, silence["id"], "user:alice")
    after = ingest(store, sig(), cfg)
    assert after.opened and after.suppressed_by is None
    entry = next(e for e in store.audit_entries() if e.event == "signal.silenced")
    assert entry.details["signal_id"] == muted.signal_id and "starts nothing" in entry.reason
    with store.tx() as s:
        from heald.store.tables import SignalRow

        row = s.get(SignalRow, muted.signal_id)
        assert row.suppressed_by == muted.suppressed_by and row.incident_id is None


def test_inhibition_rule_mutes_targets_with_equal_labels(tmp_path: Path, store: Store) -> None:
    cfg = make_config(tmp_path, correlation={"inhibit_rules": [
        {"source_matchers": ['alertname="NodeDown"'], "target_matchers": ['severity_label=~"warning|info"'],
         "equal": ["node"]}]})
    source = ingest(store, Signal(source="am", service="node-a", summary="node a down",
                                  labels={"alertname": "NodeDown", "node": "a"}), cfg)
    assert source.opened
    target = Signal(source="am", service="app", labels={"alertname": "Slow", "severity_label": "warning", "node": "a"})
    muted = ingest(store, target, cfg)
    assert muted.incident_id is None
    assert muted.suppressed_by.startswith(f"inhibited by signal {source.signal_id} of incident {source.incident_id}")
    assert "inhibit_rules[0]" in muted.suppressed_by and "with equal node" in muted.suppressed_by
    elsewhere = ingest(store, target.model_copy(update={"labels": {**target.labels, "node": "b"}}), cfg)
    assert elsewhere.opened and elsewhere.suppressed_by is None  # another node: not inhibited
    critical = target.model_copy(update={"labels": {**target.labels, "severity_label": "critical",
                                                    "alertname": "Down"}})
    assert ingest(store, critical, cfg).suppressed_by is None  # not a target of the rule
    ingest(store, Signal(source="am", service="node-a", status=SignalStatus.resolved,
                         labels={"alertname": "NodeDown", "node": "a"}), cfg)
    again = ingest(store, target.model_copy(update={"labels": {**target.labels, "alertname": "Slow2"}}), cfg)
    assert again.suppressed_by is None  # the source resolved: nothing mutes it any more
    assert [e.event for e in store.audit_entries()].count("signal.inhibited") == 1


def test_inhibit_rules_config_is_validated(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as exc:
        make_config(tmp_path, correlation={"inhibit_rules": [{"source_matchers": ["bad matcher"],
                                                              "target_matchers": ['a="b"']}]})
    assert "source_matchers" in str(exc.value) and "invalid matcher" in str(exc.value)
    with pytest.raises(ValidationError) as exc:
        make_config(tmp_path, correlation={"inhibit_rules": [{"source_matchers": ['a="b"'], "target_matchers": []}]})
    assert "target_matchers" in str(exc.value)


def test_silenced_signal_starts_no_healing(tmp_path: Path, start_runtime) -> None:
    """End to end: the silenced alert is stored, no incident, no action; the same alert after
    the silence expired is healed."""
    rt = start_runtime(sleeper_config(tmp_path), run_probes=False)
    silence = create_silence(rt.store, ['service="svc"'], utcnow() + timedelta(hours=1), created_by="user:ops",
                             comment="upgrade")
    result = rt.ingest(alert())
    assert result.incident_id is None and result.suppressed_by.startswith(f"silence {silence['id']}")
    # the healings of the incidents a message opened are enqueued once it is stored
    # (Runtime.dispatcher): none was
    assert rt.dispatcher.wait_idle()
    assert DBOS.list_workflows() == []
    assert rt.store.list_incidents() == [] and rt.store.count_actions_by() == {}
    expire_silence(rt.store, silence["id"], "user:ops")
    inc_id = rt.ingest(alert()).incident_id
    wait_for(lambda: rt.store.actions_for(inc_id), what="the healing after the silence expired")
    assert [w.workflow_id for w in DBOS.list_workflows()] == [workflow_id(inc_id)]


def test_maintenance_window_begun_during_an_incident_stops_the_gate(tmp_path: Path, start_runtime) -> None:
    cfg = sleeper_config(tmp_path)
    cfg.healing.group_wait_seconds = 1.0
    rt = start_runtime(cfg, run_probes=False)
    inc_id = rt.ingest(alert()).incident_id
    create_silence(rt.store, ['service="svc"'], utcnow() + timedelta(hours=1), created_by="user:ops",
                   comment="maintenance")
    done = wait_for(lambda: terminal(rt, inc_id), what="the gate")
    assert done.state == IncidentState.needs_attention and "silenced by silence 1" in done.closed_reason
    assert rt.store.actions_for(inc_id) == []


def test_silences_api(tmp_path: Path) -> None:
    with serve(api_config(tmp_path), token_role="operator") as (client, rt):
        base = str(client.base_url)
        good = {"matchers": ['service="svc"'], "duration": "2h", "comment": "deploy"}
        assert httpx.post(f"{base}/v1/silences", json=good).status_code == 401
        viewer = bearer(make_token(rt.store, "viewer", "vic"))
        assert httpx.post(f"{base}/v1/silences", json=good, headers=viewer).status_code == 403
        assert httpx.get(f"{base}/v1/silences").status_code == 401

        def refused(body: dict, field: str, text: str) -> None:  # type: ignore[type-arg]
            r = client.post("/v1/silences", json=body)
            assert r.status_code == 422, r.text
            detail = r.json()["detail"]
            assert any(field in [str(p) for p in d["loc"]] and text in d["msg"] for d in detail), detail

        refused({**good, "matchers": ["nope nope"]}, "matchers", "invalid matcher")
        refused({**good, "matchers": []}, "matchers", "at least 1")
        refused({**good, "matchers": ['x=~".*"']}, "matchers", "must not match the empty string")
        refused({**good, "duration": "soon"}, "duration", "invalid duration")
        refused({k: v for k, v in good.items() if k != "duration"}, "body", "exactly one of ends_at and duration")
        refused({**good, "duration": None, "ends_at": "2030-01-01T00:00:00"}, "ends_at", "timezone")
        refused({**good, "duration": None, "starts_at": "2030-01-02T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"},
                "ends_at", "must be after starts_at")
        refused({**good, "comment": ""}, "comment", "at least 1")
        refused({**good, "extra": 1}, "extra", "Extra inputs")
        assert rt.store.audit_entries() and list_silences(rt.store) == []  # nothing half-created

        created = client.post("/v1/silences", json=good)
        assert created.status_code == 201 and created.json()["state"] == "active"
        assert created.json()["created_by"] == "user:root"
        sid = created.json()["id"]
        posted = client.post("/v1/signals", json={"source": "test", "service": "svc", "labels": {"alertname": "X"}})
        assert posted.status_code == 202 and posted.json()["suppressed_by"].startswith(f"silence {sid}")
        assert posted.json()["incident_id"] is None
        assert [s["id"] for s in httpx.get(f"{base}/v1/silences?state=active", headers=viewer).json()] == [sid]
        assert client.get("/v1/silences?state=bogus").status_code == 422
        assert httpx.post(f"{base}/v1/silences/{sid}/expire", headers=viewer).status_code == 403
        assert client.post("/v1/silences/999/expire").status_code == 404
        expired = client.post(f"/v1/silences/{sid}/expire")
        assert expired.status_code == 200 and expired.json()["state"] == "expired"
        assert [s["state"] for s in client.get("/v1/silences").json()] == ["expired"]


def test_silences_cli(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    add = run_heald("silences", "add", 'service="shop"', "alertname=~High.*", "--duration", "30m", "-m", "deploy",
                    "--json", env=env, cwd=tmp_path)
    assert add.returncode == 0, add.stderr
    row = json.loads(add.stdout)
    assert row["state"] == "active" and row["matchers"] == ['service="shop"', 'alertname=~"High.*"']
    bad = run_heald("silences", "add", "service", "-m", "x", env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "MATCHERS[0]" in bad.stderr and "invalid matcher" in bad.stderr
    bad_dur = run_heald("silences", "add", 'service="a"', "-d", "forever", "-m", "x", env=env, cwd=tmp_path)
    assert bad_dur.returncode == 2 and "--duration" in bad_dur.stderr
    naive = run_heald("silences", "add", 'service="a"', "--start", "2030-01-01T00:00", "-m", "x", env=env, cwd=tmp_path)
    assert naive.returncode == 2 and "--start: give a time zone" in naive.stderr
    later = run_heald("silences", "add", 'service="a"', "--start", "2030-01-01T00:00Z", "-m", "x", "--json",
                      env=env, cwd=tmp_path)
    assert json.loads(later.stdout)["state"] == "pending"
    listing = run_heald("silences", "list", env=env, cwd=tmp_path)
    assert listing.returncode == 0 and "deploy" in listing.stdout and "pending" in listing.stdout
    assert run_heald("silences", "expire", str(row["id"]), env=env, cwd=tmp_path).returncode == 0
    assert run_heald("silences", "expire", "999", env=env, cwd=tmp_path).returncode == 1
    shown = json.loads(run_heald("silences", "list", "--json", env=env, cwd=tmp_path).stdout)
    assert [s["id"] for s in shown] != [] and row["id"] not in [s["id"] for s in shown]
    everything = json.loads(run_heald("silences", "list", "--all", "--json", env=env, cwd=tmp_path).stdout)
    assert {s["id"]: s["state"] for s in everything}[row["id"]] == "expired"
