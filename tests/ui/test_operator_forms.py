"""The operator's forms on the dashboard: silences (create, prefilled from an incident's labels
or a service, recurring windows; expire) and circuit-breaker reset. Same roles, CSRF and audit
as the API (``POST /v1/silences``, ``/v1/silences/{id}/expire``, ``/v1/breakers/reset``);
bad input answers 422 naming the field. Over plain HTTP here; Chromium drives them in
test_operator_browser.py."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from heald import budgets
from heald.correlate.silences import create_silence, list_silences
from heald.matchers import matches_all, parse_matcher
from heald.models import utcnow
from heald.ui.pages import prefill_matchers, quote_matcher
from tests.ui.conftest import Dashboard
from tests.ui.test_http import browser, csrf_of

FORM = {"matchers": 'service="svc"', "duration": "2h", "comment": "deploy", "starts_at": "", "schedule": "",
        "window": "1h", "timezone": "UTC"}


def test_silence_form_roles_csrf_and_audit(dashboard: Dashboard) -> None:
    viewer, operator = browser(dashboard, "viewer"), browser(dashboard, "operator")
    as_viewer = viewer.get("/silences").text
    assert 'action="/silences"' not in as_viewer and "needs role operator" in as_viewer
    denied = viewer.post("/silences", data={**FORM, "csrf": csrf_of(as_viewer)})
    assert denied.status_code == 403 and "needs role operator" in denied.text
    page = operator.get("/silences").text
    token = csrf_of(page)
    assert operator.post("/silences", data=FORM).status_code == 403  # no CSRF token
    cross = operator.post("/silences", data={**FORM, "csrf": token}, headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403
    assert list_silences(dashboard.rt.store) == []
    made = operator.post("/silences", data={**FORM, "csrf": token})
    assert made.status_code == 303 and made.headers["location"] == "/silences?notice=silenced"
    [silence] = list_silences(dashboard.rt.store)
    assert silence["matchers"] == ['service="svc"'] and silence["created_by"] == "user:operator-user"
    listed = operator.get("/silences?notice=silenced").text
    assert f'id="silence-{silence["id"]}"' in listed and "The silence is stored" in listed
    assert " UTC" in listed  # times say their zone

    expire = f"/silences/{silence['id']}/expire"
    assert viewer.post(expire, data={"csrf": csrf_of(as_viewer)}).status_code == 403
    assert operator.post(expire, data={}).status_code == 403
    assert operator.post(expire, data={"csrf": token}).headers["location"] == "/silences?notice=expired"
    assert operator.post("/silences/999/expire", data={"csrf": token}).status_code == 404
    [gone] = list_silences(dashboard.rt.store)
    assert gone["state"] == "expired" and gone["expired_by"] == "user:operator-user"
    assert f'id="silence-{silence["id"]}"' not in operator.get("/silences").text  # hidden unless all=1
    assert f'id="silence-{silence["id"]}"' in operator.get("/silences?all=1").text
    events = [(e.actor, e.event) for e in dashboard.rt.store.audit_entries() if e.event.startswith("silence.")]
    assert events == [("user:operator-user", "silence.created"), ("user:operator-user", "silence.expired")]


@pytest.mark.parametrize(("change", "field", "text"), [
    ({"matchers": ""}, "matchers", "at least one matcher"),
    ({"matchers": 'service="svc"\nnot a matcher'}, "matchers[1]", "invalid matcher"),
    ({"matchers": 'x=~".*"'}, "matchers", "must not match the empty string"),
    ({"duration": "forever"}, "duration", "invalid duration"),
    ({"starts_at": "next week"}, "starts_at", "expected a date"),
    ({"comment": "  "}, "comment", "say why"),
    ({"schedule": "every sunday"}, "schedule", "five fields"),
    ({"schedule": "0 2 * * 0", "window": "1s"}, "window", "1m to 7d"),
    ({"schedule": "0 2 * * 0", "timezone": "Nowhere/Land"}, "timezone", "IANA"),
    ({"comment": "a\x00b"}, "comment", "without NUL"),
    ({"matchers": "\n".join(f'a{i}="x"' for i in range(51))}, "matchers", "at most 50"),
])
def test_bad_silence_forms_answer_422_naming_the_field(dashboard: Dashboard, change: dict[str, str], field: str,
                                                        text: str) -> None:
    operator = browser(dashboard, "operator")
    token = csrf_of(operator.get("/silences").text)
    r = operator.post("/silences", data={**FORM, **change, "csrf": token})
    assert r.status_code == 422, r.text
    assert f"{field}: " in r.text and text in r.text
    assert 'aria-invalid="true"' in r.text or field.startswith("matchers[")  # the field is marked
    assert list_silences(dashboard.rt.store) == []


def test_recurring_silence_from_the_form(dashboard: Dashboard) -> None:
    operator = browser(dashboard, "operator")
    token = csrf_of(operator.get("/silences").text)
    r = operator.post("/silences", data={**FORM, "duration": "30d", "schedule": "0 2 * * 0", "window": "2h",
                                         "timezone": "Europe/Paris", "csrf": token})
    assert r.status_code == 303, r.text
    [silence] = list_silences(dashboard.rt.store)
    assert silence["recurrence"] == {"schedule": "0 2 * * 0", "window_seconds": 7200, "timezone": "Europe/Paris"}
    page = operator.get("/silences").text
    assert "<code>0 2 * * 0</code> (Europe/Paris)" in page and silence["next_window"] is not None


def test_prefill_from_an_incident_keeps_shared_labels_and_refuses_hostile_ones(dashboard: Dashboard) -> None:
    inc = dashboard.send_signal(labels={"alertname": 'Svc"Broken\\', "service": "svc", "team": "<b>ops</b>",
                                        "node": "a\nb"})
    dashboard.send_signal(labels={"alertname": 'Svc"Broken\\', "service": "svc", "team": "<b>ops</b>",
                                  "node": "c"})
    operator = browser(dashboard, "operator")
    page = operator.get(f"/silences?incident={inc}").text
    assert f"Prefilled from incident #{inc}" in page
    detail = dashboard.rt.store.incident_detail(inc)
    prefilled = prefill_matchers(detail["incident"]["service"], detail["signals"])
    assert prefilled[0] == 'service="svc"'
    assert 'alertname="Svc\\"Broken\\\\"' in prefilled and 'team="<b>ops</b>"' in prefilled
    assert not any(m.startswith("node") for m in prefilled)  # differs between signals / has a newline
    assert "&lt;b&gt;ops&lt;/b&gt;" in page and "<b>ops</b>" not in page  # escaped in the form
    parsed = [parse_matcher(m) for m in prefilled]  # what the form posts parses back to the labels
    assert matches_all(parsed, {"service": "svc", "alertname": 'Svc"Broken\\', "team": "<b>ops</b>"})
    token = csrf_of(page)
    r = operator.post("/silences", data={**FORM, "matchers": "\n".join(prefilled), "csrf": token})
    assert r.status_code == 303
    assert operator.get("/silences?incident=999").status_code == 404
    assert operator.get("/silences?incident=0").status_code == 422
    assert 'service=&#34;a\\&#34;b&#34;' in operator.get('/silences?service=a"b').text  # quoted, then escaped


def test_quote_matcher_round_trips() -> None:
    for value in ('plain', 'with "quotes"', "back\\slash", '\\"', "=~!"):
        m = parse_matcher(quote_matcher("x", value))
        assert (m.name, m.op, m.value) == ("x", "=", value)


def test_breaker_reset_form_roles_csrf_and_audit(dashboard: Dashboard) -> None:
    store = dashboard.rt.store
    budgets.record_verification(store, "service:svc", False, 0, threshold=1, reason="still failing")
    budgets.record_verification(store, "repo:acme/app", False, 0, threshold=1, reason="CI still red")
    budgets.record_verification(store, "config:svc", False, 0, threshold=1, reason="bad config")
    viewer, operator = browser(dashboard, "viewer"), browser(dashboard, "operator")
    as_viewer = viewer.get("/services").text
    assert 'action="/breakers/reset"' not in as_viewer
    denied = viewer.post("/breakers/reset", data={"target": "service:svc", "csrf": csrf_of(as_viewer)})
    assert denied.status_code == 403 and "needs role operator" in denied.text
    page = operator.get("/services").text
    # the service's row (one of its two breakers) and "other open breakers" (the second one, the repo)
    assert page.count('action="/breakers/reset"') == 3
    assert "repo:acme/app" in page and 'value="config:svc"' in page and 'value="service:svc"' in page
    token = csrf_of(page)
    assert operator.post("/breakers/reset", data={"target": "service:svc"}).status_code == 403
    assert operator.post("/breakers/reset", data={"target": "service:svc", "csrf": token},
                         headers={"Origin": "http://evil.example"}).status_code == 403
    assert operator.post("/breakers/reset", data={"target": "", "csrf": token}).status_code == 422
    missing = operator.post("/breakers/reset", data={"target": "service:nope", "csrf": token})
    assert missing.status_code == 404 and "no circuit breaker" in missing.text
    assert {b["target"]: b["state"] for b in budgets.breakers(store)}["service:svc"] == "open"
    ok = operator.post("/breakers/reset", data={"target": "service:svc", "comment": "fixed the disk", "csrf": token})
    assert ok.status_code == 303 and ok.headers["location"] == "/services?notice=breaker-reset"
    assert {b["target"]: b["state"] for b in budgets.breakers(store)}["service:svc"] == "closed"
    [entry] = [e for e in store.audit_entries() if e.event == "breaker.reset"]
    assert entry.actor == "user:operator-user" and "fixed the disk" in entry.reason
    assert "The circuit breaker is closed" in operator.get("/services?notice=breaker-reset").text


def test_with_auth_off_the_forms_ask_for_a_name(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from heald.api.server import ServerThread
    from heald.engine import Runtime
    from tests.ui.conftest import ui_config

    cfg = ui_config(tmp_path)
    cfg.api.auth = False
    rt = Runtime(cfg, run_probes=False)
    rt.start()
    server = ServerThread(rt)
    try:
        url = server.start()
        with httpx.Client(base_url=url, timeout=10) as c:
            page = c.get("/silences").text
            assert 'id="by"' in page
            token = csrf_of(page)
            nameless = c.post("/silences", data={**FORM, "csrf": token})
            assert nameless.status_code == 422 and "by: your name is required" in nameless.text
            assert c.post("/silences", data={**FORM, "csrf": token, "by": "dana"}).status_code == 303
            assert [x["created_by"] for x in list_silences(rt.store)] == ["user:dana"]
            s = create_silence(rt.store, ['service="x"'], utcnow() + timedelta(hours=1), created_by="t", comment="c")
            assert c.post(f"/silences/{s['id']}/expire", data={"csrf": token}).status_code == 422
    finally:
        server.stop()
        rt.stop(stop_services=True)
