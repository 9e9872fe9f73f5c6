"""The dashboard over plain HTTP (httpx): sign-in, cookies, CSRF, roles, the event stream,
filters, bad input, assets. Same real server as the browser tests."""

from __future__ import annotations

import re
import time

import httpx

from heald.auth import COOKIE
from tests.ui.conftest import Dashboard


def browser(d: Dashboard, role: str | None = None) -> httpx.Client:
    """A client that behaves as a signed-in browser (the session cookie of ``role``)."""
    client = httpx.Client(base_url=d.url, timeout=10)
    if role is not None:
        r = client.post("/login", data={"token": d.tokens[role], "next": "/"})
        assert r.status_code == 303, r.text
    return client


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def test_pages_need_a_session_and_login_sets_a_strict_httponly_cookie(dashboard: Dashboard) -> None:
    with httpx.Client(base_url=dashboard.url, timeout=10) as c:
        r = c.get("/audit?actor=heald")
        assert r.status_code == 303 and r.headers["location"] == "/login?next=/audit%3Factor%3Dheald"
        assert c.get("/events").status_code == 401
        assert c.get("/incidents/1?partial=1", headers={"HX-Request": "true"}).headers["HX-Redirect"].startswith("/login")
        empty = c.post("/login", data={"token": ""})
        assert empty.status_code == 422 and "API token: required" in empty.text
        bad = c.post("/login", data={"token": "heald_nope"})
        assert bad.status_code == 401 and "API token: unknown, revoked or expired" in bad.text
        assert COOKIE not in c.cookies
        ok = c.post("/login", data={"token": dashboard.tokens["viewer"], "next": "//evil.example/x"})
        assert ok.status_code == 303 and ok.headers["location"] == "/"  # no open redirect
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        page = c.get("/")
        assert page.status_code == 200 and "viewer-user" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
    signed_in = [e for e in dashboard.rt.store.audit_entries() if e.event == "dashboard.signed_in"]
    assert [e.actor for e in signed_in] == ["user:viewer-user"]


def test_every_dashboard_form_needs_a_session(dashboard: Dashboard) -> None:
    from tests.api.test_auth import all_routes

    forms = sorted({(m, p) for m, p in all_routes(dashboard_app_routes(dashboard))
                    if m == "POST" and not p.startswith("/v1/") and p != "/login"})
    assert ("POST", "/incidents/{incident_id}/verdict") in forms and ("POST", "/logout") in forms
    with httpx.Client(base_url=dashboard.url, timeout=10) as c:
        for _, path in forms:
            r = c.post(re.sub(r"\{[a-z_]+\}", "1", path), data={"verdict": "approve"},
                       headers={"Authorization": f"Bearer {dashboard.tokens['admin']}"})  # a bearer is not a session
            assert r.status_code == 303 and r.headers["location"].startswith("/login"), (path, r.status_code)
    assert dashboard.rt.store.approvals_for(1) == []


def dashboard_app_routes(d: Dashboard):  # type: ignore[no-untyped-def]
    from heald.api.app import create_app

    return create_app(d.rt).routes


def test_a_revoked_token_ends_the_session(dashboard: Dashboard) -> None:
    c = browser(dashboard, "viewer")
    assert c.get("/").status_code == 200
    token_id = next(t.id for t in dashboard.rt.store.list_tokens() if t.name == "viewer-user")
    dashboard.rt.store.revoke_token(token_id, by="test")
    r = c.get("/")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_verdict_form_needs_csrf_same_origin_and_the_approver_role(dashboard: Dashboard) -> None:
    inc = dashboard.send_signal()
    dashboard.wait_state(inc, "awaiting_approval")
    viewer, approver = browser(dashboard, "viewer"), browser(dashboard, "approver")
    page = approver.get(f"/incidents/{inc}").text
    assert 'name="verdict" value="approve"' in page
    token = csrf_of(page)
    assert 'value="approve"' not in viewer.get(f"/incidents/{inc}").text

    no_csrf = approver.post(f"/incidents/{inc}/verdict", data={"verdict": "approve"})
    assert no_csrf.status_code == 403 and "CSRF token is missing" in no_csrf.text
    wrong = approver.post(f"/incidents/{inc}/verdict", data={"verdict": "approve", "csrf": csrf_of(viewer.get("/").text)})
    assert wrong.status_code == 403  # another session's token
    report = viewer.get(f"/v1/incidents/{inc}/report")  # linked from the page; the session cookie reads it
    assert f'href="/v1/incidents/{inc}/report"' in page
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/markdown")
    cross = approver.post(f"/incidents/{inc}/verdict", data={"verdict": "approve", "csrf": token},
                          headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403 and "cross-site" in cross.text
    as_viewer = viewer.post(f"/incidents/{inc}/verdict", data={"verdict": "approve", "csrf": csrf_of(viewer.get("/").text)})
    assert as_viewer.status_code == 403 and "needs role approver" in as_viewer.text
    bad = approver.post(f"/incidents/{inc}/verdict", data={"verdict": "maybe", "csrf": token})
    assert bad.status_code == 422 and "verdict: expected" in bad.text
    assert dashboard.rt.store.approvals_for(inc) == []  # nothing was counted by the refused posts
    assert dashboard.state(inc) == "awaiting_approval"

    ok = approver.post(f"/incidents/{inc}/verdict", data={"verdict": "approve", "csrf": token},
                       headers={"Origin": dashboard.url})
    assert ok.status_code == 303 and ok.headers["location"] == f"/incidents/{inc}?notice=approve"
    dashboard.wait_state(inc, "resolved")
    late = approver.post(f"/incidents/{inc}/verdict", data={"verdict": "approve", "csrf": token})
    assert late.status_code == 409 and "not awaiting_approval" in late.text
    # htmx posts get the incident's live part back (2xx, so htmx swaps it) with the refusal in it
    hx = approver.post(f"/incidents/{inc}/verdict", data={"verdict": "approve", "csrf": token},
                       headers={"HX-Request": "true"})
    assert hx.status_code == 200 and 'id="verdict-error"' in hx.text and "<html" not in hx.text
    assert [v["approver"] for v in dashboard.rt.store.approvals_for(inc)] == ["approver-user"]


def test_logout_needs_csrf_and_clears_the_cookie(dashboard: Dashboard) -> None:
    c = browser(dashboard, "viewer")
    assert c.post("/logout", data={}).status_code == 403
    r = c.post("/logout", data={"csrf": csrf_of(c.get("/").text)})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert COOKIE not in c.cookies
    assert c.get("/").status_code == 303


def test_event_stream_reports_a_new_signal(dashboard: Dashboard) -> None:
    c = browser(dashboard, "viewer")
    since = dashboard.rt.store.last_audit_seq()
    with c.stream("GET", f"/events?since={since}") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        assert next(lines).startswith("retry:")
        inc = dashboard.send_signal()
        deadline = time.monotonic() + 15
        seen: list[str] = []
        while time.monotonic() < deadline:
            line = next(lines)
            seen.append(line)
            if line == "event: change":
                break
        assert "event: change" in seen, seen
        assert any(line.startswith("id: ") and int(line[4:]) > since for line in seen)
    opened = [e for e in dashboard.rt.store.audit_entries(after_seq=since) if e.event == "incident.opened"]
    assert [e.incident_id for e in opened] == [inc]


def test_audit_filters_and_bad_input(dashboard: Dashboard) -> None:
    inc = dashboard.send_signal()
    dashboard.wait_state(inc, "awaiting_approval")
    c = browser(dashboard, "viewer")
    page = c.get("/audit", params={"incident": str(inc), "event": "incident"})
    assert page.status_code == 200 and "The audit chain is intact" in page.text
    events = re.findall(r"<td[^>]*>(incident\.[a-z_]+|gate\.decided|plan\.made)</td>", page.text)
    assert events and set(events) <= {"incident.opened", "incident.transition"}
    actor = c.get("/audit", params={"actor": "policy"}).text
    assert set(re.findall(r"<td[^>]*>([a-z_]+\.[a-z_.]+)</td>", actor)) == {"gate.decided"}
    bad = c.get("/audit", params={"incident": "twelve"})
    assert bad.status_code == 422 and "incident: expected an incident number" in bad.text
    assert c.get("/audit", params={"limit": "0"}).status_code == 422
    assert c.get("/incidents/999").status_code == 404


def test_assets_are_served_by_heald_and_no_page_loads_another_site(dashboard: Dashboard) -> None:
    c = browser(dashboard, "viewer")
    dashboard.send_signal()
    for path in ("/static/htmx.min.js", "/static/htmx-ext-sse.min.js"):
        r = c.get(path)
        assert r.status_code == 200 and "javascript" in r.headers["content-type"] and len(r.content) > 1000
    assert c.get("/static/heald.css").headers["content-type"].startswith("text/css")
    for path in ("/", "/incidents/1", "/runbooks", "/audit", "/sources", "/login"):
        html = c.get(path).text
        refs = re.findall(r'(?:src|href|sse-connect|hx-get|hx-post|action)="([^"]+)"', html)
        assert refs and all(ref.startswith(("/", "#")) for ref in refs), (path, [x for x in refs if not x.startswith("/")])


def test_overview_shows_silences_and_open_breakers(dashboard: Dashboard) -> None:
    from datetime import timedelta

    from heald import budgets
    from heald.correlate.silences import create_silence
    from heald.models import utcnow

    c = browser(dashboard, "viewer")
    assert "No silence is active, no circuit breaker is open" in c.get("/").text
    silence = create_silence(dashboard.rt.store, ['service="shop"'], utcnow() + timedelta(hours=2),
                             created_by="user:ops", comment="deploy window")
    budgets.record_verification(dashboard.rt.store, "service:svc", False, 0, threshold=1, reason="still failing")
    page = c.get("/").text
    assert f'id="silence-{silence["id"]}"' in page and "deploy window" in page and "service=&#34;shop&#34;" in page
    assert 'id="breaker-service:svc"' in page and "heald breakers reset service:svc" in page


def test_with_auth_off_the_form_asks_for_the_approvers_name(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from heald.api.server import ServerThread
    from heald.engine import Runtime
    from tests.conftest import wait_for
    from tests.ui.conftest import SIGNAL, ui_config

    cfg = ui_config(tmp_path)
    cfg.api.auth = False
    rt = Runtime(cfg, run_probes=False)
    rt.start()
    server = ServerThread(rt)
    try:
        url = server.start()
        with httpx.Client(base_url=url, timeout=10) as c:
            assert c.get("/login").status_code == 303  # nothing to sign in to
            inc = c.post("/v1/signals", json=SIGNAL).json()["incident_id"]
            wait_for(lambda: rt.store.get_incident(inc).state.value == "awaiting_approval", what="awaiting approval")
            page = c.get(f"/incidents/{inc}").text
            assert 'id="approver"' in page and "anonymous" in page
            token = csrf_of(page)
            nameless = c.post(f"/incidents/{inc}/verdict", data={"verdict": "approve", "csrf": token})
            assert nameless.status_code == 422 and "approver: your name is required" in nameless.text
            assert c.post(f"/incidents/{inc}/verdict", data={"verdict": "approve", "csrf": "0" * 64}).status_code == 403
            ok = c.post(f"/incidents/{inc}/verdict", data={"verdict": "approve", "csrf": token, "approver": "dana"})
            assert ok.status_code == 303
            assert [v["approver"] for v in rt.store.approvals_for(inc)] == ["dana"]
    finally:
        server.stop()
        rt.stop(stop_services=True)
