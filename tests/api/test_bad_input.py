"""Issue 11 item 9: never a 5xx for bad input, and no input can poison the store. Each attack
of the issue over real HTTP on loopback (uvicorn), each answered 4xx with a reason; rows that
an older heald stored with a lone surrogate stay readable by the API and the dashboard."""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from heald.sources.github import signature
from tests.conftest import CORPUS, wait_for

GH = CORPUS / "github"
SECRET = "a-github-webhook-secret"
JSON = {"content-type": "application/json"}
SOURCES = ("generic", "alertmanager", "cloudevents", "github", "grafana", "pagerduty", "sentry", "datadog", "kubernetes")
HUGE = 2**64
ALERT = {"version": "4", "status": "firing",
         "alerts": [{"labels": {"alertname": "DiskFull", "service": "db"}, "startsAt": "2025-01-01T00:00:00Z"}]}


def _no_server_error(r: httpx.Response, what: str) -> dict[str, Any] | list[Any]:
    assert 400 <= r.status_code < 500, f"{what}: {r.status_code} {r.text[:300]}"
    assert "Traceback" not in r.text
    return r.json()


def _detail_text(r: httpx.Response) -> str:
    return json.dumps(r.json()["detail"])


def test_json_nested_10000_deep_is_a_422_for_every_parser(api_server) -> None:
    client, rt = api_server()
    deep = ("[" * 10_000 + "]" * 10_000).encode()
    deep_obj = ('{"a":' * 10_000 + "1" + "}" * 10_000).encode()
    for body in (deep, deep_obj):
        r = client.post("/v1/signals", content=body, headers=JSON)
        _no_server_error(r, "/v1/signals")
        assert r.status_code == 422 and "nested at most 64 levels" in _detail_text(r)
        for source in SOURCES:
            r = client.post(f"/v1/webhooks/{source}", content=body,
                            headers={**JSON, "X-GitHub-Event": "workflow_run", "Sentry-Hook-Resource": "event_alert"})
            _no_server_error(r, source)
            assert r.status_code == 422 and "nested at most 64 levels" in _detail_text(r), (source, r.text)
    assert rt.store.count_signals_by_source() == {}


def test_a_5000_digit_integer_is_a_422(api_server) -> None:
    client, _ = api_server()
    body = ('{"source": "mon", "labels": {"alertname": "A"}, "n": ' + "7" * 5000 + "}").encode()
    r = client.post("/v1/signals", content=body, headers=JSON)
    _no_server_error(r, "/v1/signals")
    assert r.status_code == 422 and "digits" in _detail_text(r)
    for source in SOURCES:
        r = client.post(f"/v1/webhooks/{source}", content=body,
                        headers={**JSON, "X-GitHub-Event": "check_run", "Sentry-Hook-Resource": "metric_alert"})
        _no_server_error(r, source)
        assert "digits" in _detail_text(r)


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_integers_beyond_64_bits_in_ids_offsets_and_lifetimes_are_422(api_server, database: str,
                                                                       request: pytest.FixtureRequest) -> None:
    extra = {"database_url": request.getfixturevalue("pg_url")} if database == "postgresql" else {}
    client, _ = api_server(**extra)
    client.cookies.set("heald_token", client.headers["authorization"].split()[1])
    beyond_32_bits = 2**31  # ids are PostgreSQL integers
    for method, url, body in [
        ("GET", f"/v1/incidents/{beyond_32_bits}", None),
        ("POST", f"/v1/tokens/{beyond_32_bits}/revoke", None),
        ("GET", f"/incidents/{beyond_32_bits}", None),
        ("GET", f"/events?incident={beyond_32_bits}", None),
        ("GET", f"/v1/incidents?offset={HUGE}", None),
        ("GET", "/v1/incidents?offset=" + "9" * 5000, None),
        ("GET", f"/v1/incidents/{HUGE}", None),
        ("GET", f"/v1/incidents/{HUGE}/report", None),
        ("POST", f"/v1/incidents/{HUGE}/approve", {}),
        ("POST", f"/v1/incidents/{HUGE}/reject", {}),
        ("POST", f"/v1/silences/{HUGE}/expire", None),
        ("POST", f"/v1/tokens/{HUGE}/revoke", None),
        ("POST", "/v1/tokens", {"name": "later", "role": "viewer", "expires_in_seconds": 9007199254740992}),
        ("POST", "/v1/tokens", {"name": "later", "role": "viewer", "expires_in_seconds": 1e308}),
        ("GET", f"/incidents/{HUGE}", None),
        ("GET", f"/audit?before={HUGE}", None),
        ("GET", f"/audit?incident={HUGE}", None),
        ("GET", f"/events?since={HUGE}", None),
        ("GET", f"/events?incident={HUGE}", None),
    ]:
        r = client.request(method, url, json=body)
        assert 400 <= r.status_code < 500, (url, r.status_code, r.text[:200])
        assert "Traceback" not in r.text
    r = client.get(f"/v1/incidents/{HUGE}")
    assert r.json()["detail"][0]["loc"] == ["path", "incident_id"]
    r = client.post("/v1/tokens", json={"name": "later", "role": "viewer", "expires_in_seconds": 9007199254740992})
    assert r.json()["detail"][0]["loc"] == ["body", "expires_in_seconds"]
    assert client.get("/audit?incident=99999999999999999999999").status_code == 422


def test_lone_surrogates_are_refused_naming_the_field_and_reads_keep_working(api_server) -> None:
    client, rt = api_server()
    client.cookies.set("heald_token", client.headers["authorization"].split()[1])
    # raw JSON text: json.dumps would escape the backslash
    attacks = [
        ("/v1/signals", '{"source": "mon", "labels": {"alertname": "Disk\\ud83d"}}', "labels.alertname"),
        ("/v1/signals", '{"source": "mon", "summary": "boom \\ud83d"}', "summary"),
        ("/v1/webhooks/generic", '{"source": "mon", "labels": {"alertname": "A\\ud83d"}}', "labels.alertname"),
        ("/v1/webhooks/generic", '{"source": "mon", "annotations": {"\\udc00": "x"}}', "annotations"),
        ("/v1/webhooks/alertmanager", json.dumps(ALERT).replace("DiskFull", "Disk\\ud83d"), "alerts[0].labels.alertname"),
        ("/v1/webhooks/alertmanager",
         json.dumps({**ALERT, "alerts": [{**ALERT["alerts"][0], "annotations": {"summary": "S\\ud83d"}}]})
         .replace("\\\\ud83d", "\\ud83d"), "alerts[0].annotations.summary"),
        ("/v1/webhooks/cloudevents", '{"specversion": "1.0", "id": "1", "source": "s", "type": "t", "subject": "\\ud83d"}',
         "subject"),
        ("/v1/silences", '{"matchers": ["a=\\"\\ud83d\\""], "duration": "1h", "comment": "c"}', "matchers[0]"),
        ("/v1/breakers/reset", '{"target": "service:x", "comment": "\\ud83d"}', "comment"),
    ]
    for url, body, field in attacks:
        r = client.post(url, content=body.encode(), headers=JSON)
        _no_server_error(r, url)
        assert r.status_code == 422, (url, r.text)
        text = _detail_text(r)
        assert "surrogate" in text and field.split("[")[0].split(".")[0] in text, (url, text)
    assert rt.store.count_signals_by_source() == {}
    assert client.get("/v1/incidents").status_code == 200
    assert client.get("/").status_code == 200


def test_rows_stored_with_lone_surrogates_before_the_fix_stay_readable(api_server) -> None:
    """An older heald stored labels with ``\\ud83d`` escapes (JSON columns keep the escape):
    every read of the incident failed with 500 for good. Such rows must still be served, with
    U+FFFD in place of the surrogate."""
    client, rt = api_server()
    client.cookies.set("heald_token", client.headers["authorization"].split()[1])
    r = client.post("/v1/signals", json={"source": "mon", "service": "svc", "labels": {"alertname": "Poison"}})
    incident_id = r.json()["incident_id"]
    wait_for(lambda: rt.store.get_incident(incident_id).state.value != "observing", what="diagnosis to start")
    poisoned = '{"alertname": "Poison\\ud83d", "\\udc00": "x"}'  # the JSON text an older heald wrote
    with rt.store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE incidents SET labels = :j WHERE id = :i"), {"j": poisoned, "i": incident_id})
        conn.execute(sa.text("UPDATE signals SET labels = :j WHERE incident_id = :i"), {"j": poisoned, "i": incident_id})
    for url in ("/v1/incidents", f"/v1/incidents/{incident_id}", f"/v1/incidents/{incident_id}/report",
                "/", f"/incidents/{incident_id}", "/audit", "/sources"):
        r = client.get(url)
        assert r.status_code == 200, (url, r.status_code, r.text[:300])
    listed = client.get("/v1/incidents").json()
    assert listed[0]["labels"]["alertname"] == "Poison\ufffd"
    assert "Poison\ufffd" in client.get(f"/incidents/{incident_id}").text


def _github(event: str, fixture: str, mutate: Any) -> tuple[bytes, dict[str, str]]:
    data = copy.deepcopy(json.loads((GH / fixture).read_text()))
    data[event]["conclusion"] = "failure"
    mutate(data[event])
    body = json.dumps(data).encode()
    return body, {**JSON, "X-GitHub-Event": event, "X-Hub-Signature-256": signature(SECRET, body)}


def test_signed_but_malformed_github_payloads_are_422_naming_the_field(api_server) -> None:
    client, rt = api_server(token_role=None, webhooks={"github": {"secret": SECRET}})
    cases = [
        ("workflow_run", "workflow_run/completed.payload.json", lambda o: o.update(head_commit="x"),
         "workflow_run.head_commit"),
        ("workflow_run", "workflow_run/completed.payload.json", lambda o: o.update(head_commit=[1]),
         "workflow_run.head_commit"),
        ("check_run", "check_run/completed.payload.json", lambda o: o.update(check_suite="x"), "check_run.check_suite"),
        ("check_run", "check_run/completed.payload.json", lambda o: o.update(output=["x"]), "check_run.output"),
        ("workflow_job", "workflow_job/completed.failure.with-organization.payload.json",
         lambda o: o.update(steps=["x", 1]), "workflow_job.steps[0]"),
        ("workflow_job", "workflow_job/completed.failure.with-organization.payload.json",
         lambda o: o.update(steps={"a": 1}), "workflow_job.steps"),
        ("workflow_job", "workflow_job/completed.failure.with-organization.payload.json",
         lambda o: o.update(name={"a": 1}), "workflow_job.name"),
        ("check_run", "check_run/completed.payload.json", lambda o: o.update(head_branch=["main"]),
         "check_run.head_branch"),
    ]
    for event, fixture, mutate, field in cases:
        body, headers = _github(event, fixture, mutate)
        r = client.post("/v1/webhooks/github", content=body, headers=headers)
        _no_server_error(r, field)
        assert r.status_code == 422 and field in _detail_text(r), (field, r.text)
    assert rt.store.count_signals_by_source() == {}


def test_a_non_ascii_digit_in_last_event_id_is_ignored(api_server) -> None:
    client, _ = api_server()
    client.cookies.set("heald_token", client.headers["authorization"].split()[1])
    for value in ("²".encode("latin-1"), "¹²³".encode("latin-1"), b"9" * 40):
        with client.stream("GET", "/events", headers=[(b"Last-Event-ID", value)]) as r:
            assert r.status_code == 200, (value, r.status_code)
            first = next(r.iter_text())
            assert first.startswith("retry:")


def test_an_unexpected_exception_is_a_500_without_a_traceback(api_server, caplog) -> None:
    """The catch-all: a bug answers 500 with an error id and the exception's type; its message
    and traceback go to heald's log, not to the client."""
    import threading

    import uvicorn

    from heald.api.app import create_app
    from tests.conftest import free_port

    client, rt = api_server()

    def broken() -> None:
        raise RuntimeError("secret internals: /etc/heald/key")

    app = create_app(rt)
    app.add_api_route("/v1/broken", broken)  # a route with a bug
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, what="uvicorn")
        with caplog.at_level("ERROR", logger="heald.api"):
            r = httpx.get(f"http://127.0.0.1:{server.config.port}/v1/broken", timeout=10)
        assert r.status_code == 500
        assert "Traceback" not in r.text and "secret internals" not in r.text and "/etc/heald" not in r.text
        detail = r.json()["detail"]
        assert "RuntimeError" in detail and "internal error" in detail
        error_id = detail.split()[2]
        logged = [rec for rec in caplog.records if error_id in rec.getMessage()]
        assert logged and logged[0].exc_info is not None  # the bug stays visible in the log
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_nul_characters_are_refused_before_postgresql_sees_them(api_server, database: str,
                                                                 request: pytest.FixtureRequest) -> None:
    """PostgreSQL text cannot hold U+0000 (found by schemathesis: a NUL in a signal's ``kind``
    answered 500 on PostgreSQL)."""
    extra = {"database_url": request.getfixturevalue("pg_url")} if database == "postgresql" else {}
    client, rt = api_server(**extra)
    client.cookies.set("heald_token", client.headers["authorization"].split()[1])
    for url, body, field in [
        ("/v1/signals", '{"source": "mon", "kind": "a\\u0000b"}', "kind"),
        ("/v1/signals", '{"source": "mon", "labels": {"alertname": "A\\u0000"}}', "labels.alertname"),
        ("/v1/webhooks/generic", '{"source": "mon", "summary": "\\u0000"}', "summary"),
        ("/v1/webhooks/cloudevents", '{"specversion": "1.0", "id": "1", "source": "s\\u0000", "type": "t"}', "source"),
        ("/v1/silences", '{"matchers": ["a=\\"b\\""], "duration": "1h", "comment": "c\\u0000"}', "comment"),
    ]:
        r = client.post(url, content=body.encode(), headers=JSON)
        _no_server_error(r, url)
        assert r.status_code == 422 and "NUL" in _detail_text(r) and field in _detail_text(r), (url, r.text)
    for url in ("/v1/incidents?service=a%00b", "/v1/learning?category=%00", "/audit?actor=%00", "/v1/webhooks/a%00b"):
        r = client.request("POST" if "webhooks" in url else "GET", url)
        assert r.status_code == 400 and "NUL" in r.json()["detail"], (url, r.status_code, r.text[:200])
    assert rt.store.count_signals_by_source() == {}
