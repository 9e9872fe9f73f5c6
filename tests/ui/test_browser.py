"""The dashboard in Debian's Chromium (headless, Playwright) against a real heald serve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.ui.conftest import Dashboard, sign_in

pytestmark = pytest.mark.slow


def test_incident_appears_on_the_overview_without_a_reload(dashboard: Dashboard, browser_page: Any,
                                                           screenshots: Path) -> None:
    page, console = browser_page()
    sign_in(page, dashboard.url, dashboard.tokens["viewer"])
    assert page.locator("#no-incidents").is_visible()
    page.screenshot(path=str(screenshots / "overview-empty.png"), full_page=True)
    page.evaluate("window.__sameDocument = true")  # gone if the page were reloaded
    incident_id = dashboard.send_signal()
    row = page.locator(f"#incident-{incident_id}")
    row.wait_for(state="visible")
    assert "svc" in row.inner_text()
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    # the row follows the incident through its states, still without a reload
    page.locator(f"#pending-{incident_id}").wait_for(state="visible")
    assert page.locator(f"#incident-{incident_id}").get_attribute("data-state") == "awaiting_approval"
    assert page.locator("#open-total").inner_text() == "1"
    page.screenshot(path=str(screenshots / "overview-live.png"), full_page=True)
    assert page.evaluate("window.__sameDocument === true")
    assert console.errors == []


def test_approve_in_the_browser_resumes_the_healing(dashboard: Dashboard, browser_page: Any,
                                                     screenshots: Path) -> None:
    incident_id = dashboard.send_signal()
    page, console = browser_page()
    sign_in(page, dashboard.url, dashboard.tokens["approver"], f"/incidents/{incident_id}")
    approve = page.get_by_role("button", name="Approve")
    approve.wait_for(state="visible")  # arrives live once the gate asks
    assert dashboard.state(incident_id) == "awaiting_approval"
    assert page.get_by_role("button", name="Reject").is_visible()
    assert page.get_by_label("Comment").is_visible()
    assert "medium risk" in page.locator("#approval").inner_text()
    page.screenshot(path=str(screenshots / "incident-awaiting-approval.png"), full_page=True)
    pid_before = dashboard.rt.supervisor.get("svc").identity().pid
    page.evaluate("window.__sameDocument = true")
    page.get_by_label("Comment").fill("restart is fine")
    approve.click()
    page.locator("#notice").wait_for(state="visible")
    page.locator('#incident-state[data-state="resolved"]').wait_for(timeout=30_000)
    assert page.evaluate("window.__sameDocument === true"), "htmx should have swapped in place"
    assert dashboard.state(incident_id) == "resolved"
    votes = dashboard.rt.store.approvals_for(incident_id)
    assert [(v["approver"], v["verdict"], v["comment"]) for v in votes] == [("approver-user", "approve", "restart is fine")]
    assert dashboard.rt.supervisor.get("svc").identity().pid != pid_before  # the remedy really restarted it
    text = page.locator("#live").inner_text()
    for expected in ("restart_process", "passed", "approver-user: approve", "healed"):
        assert expected in text, expected
    assert page.get_by_role("button", name="Approve").count() == 0
    page.screenshot(path=str(screenshots / "incident-resolved.png"), full_page=True)

    # every page renders, and is saved
    shots = {"overview": ("/", "Recent incidents"), "runbooks": ("/runbooks", "svc-broken"),
             "audit": ("/audit", "The audit chain is intact"), "sources": ("/sources", "my-monitor"),
             "audit-filtered": (f"/audit?incident={incident_id}&event=approval", "approval.approve")}
    for name, (path, expected) in shots.items():
        page.goto(f"{dashboard.url}{path}")
        assert expected in page.locator("main").inner_text(), (name, expected)
        page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)
        if name == "runbooks":  # one healed attempt: Beta(2, 1), mean 2/3
            assert "svc_broken restart_process 67 % 1 0" in " ".join(page.locator("#learned-h + table").inner_text().split())
        if name == "overview":
            assert page.locator("svg.chart circle").count() == 2  # the incident's TTD and TTR points
            assert page.locator("#healed-24h").inner_text().startswith("1")
    # keyboard: the skip link is the first stop and moves to the content
    page.goto(f"{dashboard.url}/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    assert console.errors == []


def test_viewer_sees_no_buttons(dashboard: Dashboard, browser_page: Any) -> None:
    incident_id = dashboard.send_signal()
    dashboard.wait_state(incident_id, "awaiting_approval")
    page, console = browser_page()
    sign_in(page, dashboard.url, dashboard.tokens["viewer"], f"/incidents/{incident_id}")
    assert "Approving needs role approver" in page.locator("#approval").inner_text()
    assert page.get_by_role("button", name="Approve").count() == 0
    assert console.errors == []


def test_without_javascript_pages_render_and_the_approve_form_posts(dashboard: Dashboard, browser_page: Any,
                                                                     screenshots: Path) -> None:
    incident_id = dashboard.send_signal()
    dashboard.wait_state(incident_id, "awaiting_approval")
    page, console = browser_page(javascript=False)
    sign_in(page, dashboard.url, dashboard.tokens["approver"])
    assert page.locator(f"#incident-{incident_id}").is_visible()
    assert page.locator("noscript").count() == 1
    for path, expected in (("/runbooks", "restart_process"), ("/audit", "incident.opened"), ("/sources", "my-monitor")):
        page.goto(f"{dashboard.url}{path}")
        assert expected in page.locator("main").inner_text()
    page.goto(f"{dashboard.url}/incidents/{incident_id}")
    page.screenshot(path=str(screenshots / "nojs-incident.png"), full_page=True)
    page.get_by_role("button", name="Approve").click()  # a plain form POST, then a redirect
    page.wait_for_url(f"{dashboard.url}/incidents/{incident_id}?notice=approve")
    assert "Your approval is recorded" in page.locator("#notice").inner_text()
    dashboard.wait_state(incident_id, "resolved")
    page.reload()
    assert page.locator("#incident-state").get_attribute("data-state") == "resolved"
    assert [v["approver"] for v in dashboard.rt.store.approvals_for(incident_id)] == ["approver-user"]
    assert console.errors == []


def test_reject_without_javascript_escalates(dashboard: Dashboard, browser_page: Any) -> None:
    incident_id = dashboard.send_signal()
    dashboard.wait_state(incident_id, "awaiting_approval")
    page, console = browser_page(javascript=False)
    sign_in(page, dashboard.url, dashboard.tokens["approver"], f"/incidents/{incident_id}")
    page.get_by_label("Comment").fill("not during the sale")
    page.get_by_role("button", name="Reject").click()
    page.wait_for_url(f"{dashboard.url}/incidents/{incident_id}?notice=reject")
    dashboard.wait_state(incident_id, "needs_attention")  # the signal still fires: a human's now
    wait_for(lambda: "not during the sale" in (dashboard.rt.store.get_incident(incident_id).closed_reason or ""),
             what="the rejection's reason on the incident")
    assert console.errors == []


def test_needs_attention_acknowledge_and_resolve_in_the_browser(dashboard: Dashboard, browser_page: Any,
                                                                screenshots: Path) -> None:
    """An incident handed over to a human: the overview counts it open and lists it; the
    incident's form acknowledges it (htmx, in place) and resolves it with a note."""
    incident_id = dashboard.send_signal()
    dashboard.wait_state(incident_id, "awaiting_approval")
    page, console = browser_page()
    sign_in(page, dashboard.url, dashboard.tokens["approver"], f"/incidents/{incident_id}")
    page.get_by_role("button", name="Reject").click()
    dashboard.wait_state(incident_id, "needs_attention")
    page.goto(f"{dashboard.url}/")
    assert page.locator("#open-total").inner_text() == "1"
    page.locator(f"#attention-{incident_id}").wait_for(state="visible")
    page.goto(f"{dashboard.url}/incidents/{incident_id}")
    page.get_by_label("Note").fill("paged the owner")
    page.get_by_role("button", name="Acknowledge").click()
    page.locator("#acked").wait_for(state="visible")
    assert "approver-user" in page.locator("#acked").inner_text()
    page.screenshot(path=str(screenshots / "needs-attention.png"), full_page=True)
    page.get_by_label("Note").fill("restarted it by hand")
    page.get_by_role("button", name="Resolve").click()
    page.locator("#notice", has_text="Resolved").wait_for(state="visible")  # not the acknowledgement's notice
    assert "Resolved by you" in page.locator("#notice").inner_text()
    dashboard.wait_state(incident_id, "resolved")
    assert dashboard.rt.store.get_incident(incident_id).closed_reason == "resolved by user:approver-user: restarted it by hand"
    assert console.errors == []
