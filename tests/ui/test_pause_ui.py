"""The kill switch on the dashboard: the overview's banner and pause/resume form (role
operator, CSRF, audited with the signed-in identity), and the incident page's "would have"
line while heald is paused; one test drives it in Chromium."""

from __future__ import annotations

from typing import Any

from heald import pause
from tests.conftest import wait_for
from tests.ui.conftest import Dashboard, sign_in
from tests.ui.test_http import browser, csrf_of


def test_pause_form_needs_an_operator_a_csrf_token_and_a_reason(dashboard: Dashboard) -> None:
    viewer, operator = browser(dashboard, "viewer"), browser(dashboard, "operator")
    as_viewer = viewer.get("/").text
    assert 'action="/pause"' not in as_viewer and "needs role operator" in as_viewer
    denied = viewer.post("/pause", data={"action": "pause", "reason": "x", "csrf": csrf_of(as_viewer)})
    assert denied.status_code == 403 and "needs role operator" in denied.text
    token = csrf_of(operator.get("/").text)
    assert operator.post("/pause", data={"action": "pause", "reason": "x"}).status_code == 403  # no CSRF token
    cross = operator.post("/pause", data={"action": "pause", "reason": "x", "csrf": token},
                          headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403
    bad = operator.post("/pause", data={"action": "stop", "reason": "x", "csrf": token})
    assert bad.status_code == 422 and "action: expected" in bad.text and "stop" in bad.text
    blank = operator.post("/pause", data={"action": "pause", "reason": " ", "csrf": token})
    assert blank.status_code == 422 and "reason: required" in blank.text
    resume = operator.post("/pause", data={"action": "resume", "csrf": token})
    assert resume.status_code == 409 and "not paused" in resume.text
    assert not pause.state(dashboard.rt.store).paused


def test_pause_and_resume_from_the_overview_in_chromium(dashboard: Dashboard, browser_page: Any,
                                                        screenshots: Any) -> None:
    rt = dashboard.rt
    page, console = browser_page()
    sign_in(page, dashboard.url, dashboard.tokens["operator"])
    assert page.locator("#pause .paused-banner").count() == 0
    page.get_by_label("Reason").fill("deploy freeze")
    page.get_by_role("button", name="Pause heald").click()
    page.wait_for_url(f"{dashboard.url}/?notice=paused")
    banner = page.locator("#pause")
    assert "heald is paused" in banner.inner_text() and "deploy freeze" in banner.inner_text()
    assert "operator-user" in banner.inner_text()
    page.screenshot(path=str(screenshots / "overview-paused.png"), full_page=True)
    assert [e.actor for e in rt.store.search_audit(event="heald.paused", limit=5)] == ["user:operator-user"]

    inc = dashboard.send_signal()  # diagnosed while paused: the gate's decision becomes a wait
    wait_for(lambda: rt.store.search_audit(incident_id=inc, event="gate.paused", limit=1), what="the paused gate")
    page.goto(f"{dashboard.url}/incidents/{inc}")
    line = page.locator(".would-have").first
    assert "restart_process {service: svc} (approval)" in line.inner_text() and "paused" in line.inner_text()
    assert rt.store.actions_for(inc) == []

    page.goto(f"{dashboard.url}/")
    page.get_by_role("button", name="Resume heald").click()
    page.wait_for_url(f"{dashboard.url}/?notice=resumed")
    assert "heald is paused" not in page.locator("#pause").inner_text()
    assert [e.actor for e in rt.store.search_audit(event="heald.resumed", limit=5)] == ["user:operator-user"]
    assert console.errors == []
