"""The operator's dashboard actions driven in Chromium on a phone-sized screen (390 px): a
silence prefilled from an incident, a recurring maintenance window, expiring a silence,
resetting a circuit breaker, and shadow mode's "would have" beside what a human then did."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from heald import budgets
from heald.api.server import ServerThread
from heald.correlate.silences import list_silences
from heald.engine import Runtime
from tests.conftest import make_token, wait_for
from tests.ui.conftest import Dashboard, sign_in, ui_config
from tests.ui.test_accessibility import axe_violations


def phone(chromium: Any, d: Dashboard, role: str) -> tuple[Any, Any]:
    context = chromium.new_context(viewport={"width": 390, "height": 844})
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    sign_in(page, d.url, d.tokens[role])
    return context, page


def fits(page: Any) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"{page.url} is {width} px wide at 390 px"
    serious = [v for v in axe_violations(page) if v["impact"] in ("serious", "critical")]
    assert serious == [], serious


@pytest.mark.slow
def test_silence_from_an_incident_then_expire_it_in_chromium(dashboard: Dashboard, chromium: Any,
                                                             screenshots: Path) -> None:
    inc = dashboard.send_signal()
    dashboard.wait_state(inc, "awaiting_approval")
    context, page = phone(chromium, dashboard, "operator")
    try:
        page.goto(f"{dashboard.url}/incidents/{inc}")
        page.get_by_role("link", name="Silence signals like these…").click()
        page.wait_for_url(f"**/silences?incident={inc}#new-silence")
        matchers = page.get_by_label("Matchers").input_value().splitlines()
        assert matchers == ['service="svc"', 'alertname="SvcBroken"']
        assert page.get_by_label("Why").input_value() == f"incident #{inc}: "
        page.get_by_label("Why").fill(f"incident #{inc}: svc is being migrated")
        page.get_by_label("Duration").fill("3h")
        page.screenshot(path=str(screenshots / "ui-silence-form-390.png"), full_page=True)
        page.get_by_role("button", name="Save silence").click()
        page.wait_for_url("**/silences?notice=silenced")
        [silence] = list_silences(dashboard.rt.store)
        assert silence["matchers"] == matchers and silence["created_by"] == "user:operator-user"
        row = page.locator(f"#silence-{silence['id']}")
        assert "active" in row.inner_text() and "UTC" in row.inner_text()
        fits(page)

        # A recurring maintenance window from the same form.
        page.get_by_label("Matchers").fill('service="billing"')
        page.get_by_label("Duration").fill("90d")
        page.get_by_label("Schedule").fill("0 2 * * 0")
        page.get_by_label("Each window lasts").fill("2h")
        page.get_by_label("Time zone").fill("Europe/Paris")
        page.get_by_label("Why").fill("weekly database maintenance")
        page.get_by_role("button", name="Save silence").click()
        page.wait_for_url("**/silences?notice=silenced")
        weekly = next(x for x in list_silences(dashboard.rt.store) if x["matchers"] == ['service="billing"'])
        text = page.locator(f"#silence-{weekly['id']}").inner_text()
        # the window it shows: the next one, or this one on a Sunday 02:00-04:00 in Paris
        assert "0 2 * * 0" in text and "Europe/Paris" in text and ("next" in text or "this window:" in text)
        page.screenshot(path=str(screenshots / "ui-silences-390.png"), full_page=True)

        # A bad field comes back named, with what was typed kept.
        page.get_by_label("Matchers").fill('service="x"')
        page.get_by_label("Schedule").fill("every sunday")
        page.get_by_label("Why").fill("typo")
        page.get_by_role("button", name="Save silence").click()
        assert "schedule: expected a cron schedule" in page.locator("#silence-error").inner_text()
        assert page.get_by_label("Schedule").get_attribute("aria-invalid") == "true"
        assert page.get_by_label("Schedule").input_value() == "every sunday"
        fits(page)

        page.goto(f"{dashboard.url}/silences")
        page.get_by_role("button", name=f"Expire silence {silence['id']}").click()
        page.wait_for_url("**/silences?notice=expired")
        assert page.locator(f"#silence-{silence['id']}").count() == 0
        assert {x["id"]: x["state"] for x in list_silences(dashboard.rt.store)}[silence["id"]] == "expired"
        page.get_by_role("link", name="Show the 1 expired silence too").click()
        assert "expired by user:operator-user" in page.locator(f"#silence-{silence['id']}").inner_text()
        actors = {(e.actor, e.event) for e in dashboard.rt.store.audit_entries() if e.event.startswith("silence.")}
        assert actors == {("user:operator-user", "silence.created"), ("user:operator-user", "silence.expired")}
        assert page.errors == []
    finally:
        context.close()


@pytest.mark.slow
def test_breaker_reset_on_the_services_page_in_chromium(dashboard: Dashboard, chromium: Any,
                                                        screenshots: Path) -> None:
    store = dashboard.rt.store
    budgets.record_verification(store, "service:svc", False, 0, threshold=1, reason="still failing after restart")
    context, page = phone(chromium, dashboard, "operator")
    try:
        page.goto(f"{dashboard.url}/services")
        row = page.locator("#target-svc")
        assert "open" in row.locator("td[data-label='Circuit breaker']").inner_text()
        row.get_by_label("Why it is safe again").fill("disk replaced")
        fits(page)
        page.screenshot(path=str(screenshots / "ui-services-breaker-390.png"), full_page=True)
        row.get_by_role("button", name="Reset breaker").click()
        page.wait_for_url("**/services?notice=breaker-reset")
        assert "The circuit breaker is closed" in page.locator("#notice").inner_text()
        assert "closed" in page.locator("#target-svc td[data-label='Circuit breaker']").inner_text()
        [entry] = [e for e in store.audit_entries() if e.event == "breaker.reset"]
        assert entry.actor == "user:operator-user" and "disk replaced" in entry.reason
        assert page.errors == []
    finally:
        context.close()


@pytest.fixture
def shadow_dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    """:func:`tests.ui.conftest.ui_config` with its environment in shadow mode."""
    cfg = ui_config(tmp_path)
    cfg.policy.shadow.environments = [cfg.environment]
    rt = Runtime(cfg, run_probes=False)
    rt.start()
    wait_for(lambda: (tmp_path / "starts").exists(), what="the svc process to start")
    server = ServerThread(rt)
    try:
        url = server.start()
        yield Dashboard(url, rt, {role: make_token(rt.store, role) for role in ("viewer", "operator", "approver")})
    finally:
        server.stop()
        rt.stop(stop_services=True)


@pytest.mark.slow
def test_shadow_mode_would_have_beside_what_a_human_did_in_chromium(shadow_dashboard: Dashboard, chromium: Any,
                                                                    screenshots: Path) -> None:
    d = shadow_dashboard
    inc = d.send_signal()
    wait_for(lambda: d.rt.store.search_audit(incident_id=inc, event="action.shadowed", limit=1),
             what="the shadowed action")
    d.wait_state(inc, "needs_attention")
    context, page = phone(chromium, d, "approver")
    try:
        page.goto(f"{d.url}/incidents/{inc}")
        line = page.locator(".would-have").first
        assert "restart_process" in line.inner_text() and "shadow mode" in line.inner_text()
        assert "nothing recorded yet" in page.locator("#humans-then").inner_text()
        page.get_by_label("Note").fill("restarted it by hand after checking the logs")
        page.get_by_role("button", name="Resolve").click()
        page.locator("#notice").wait_for()
        page.goto(f"{d.url}/incidents/{inc}")
        humans = page.locator("#humans-then").inner_text()
        assert "user:approver-user" in humans and "restarted it by hand" in humans
        fits(page)
        page.screenshot(path=str(screenshots / "ui-shadow-incident-390.png"), full_page=True)
        assert d.rt.store.actions_for(inc) == []  # heald applied nothing
        report = page.request.get(f"{d.url}/v1/incidents/{inc}/report",
                                  headers={"Authorization": f"Bearer {d.tokens['viewer']}"}).text()
        assert "**would have**" in report and "What humans then did:" in report
        assert "user:approver-user" in report.split("What humans then did:")[1]
        assert page.errors == []
    finally:
        context.close()


@pytest.mark.slow
def test_retry_a_handed_over_incident_in_chromium(dashboard: Dashboard, chromium: Any) -> None:
    """Rejected, the incident is handed over (needs_attention); Retry healing from its page
    starts a new attempt, which the gate again sends for approval."""
    inc = dashboard.send_signal()
    dashboard.wait_state(inc, "awaiting_approval")
    context, page = phone(chromium, dashboard, "approver")
    try:
        page.goto(f"{dashboard.url}/incidents/{inc}")
        page.get_by_role("button", name="Reject").click()
        dashboard.wait_state(inc, "needs_attention")
        page.goto(f"{dashboard.url}/incidents/{inc}")
        page.get_by_label("Note").fill("the disk is free now")
        fits(page)
        page.get_by_role("button", name="Retry healing").click()
        page.locator("#notice", has_text="heals it again").wait_for(state="visible")
        dashboard.wait_state(inc, "awaiting_approval")
        retried = [e for e in dashboard.rt.store.search_audit(incident_id=inc, event="incident.transition", limit=50)
                   if e.details.get("human_action") == "retry"]
        assert [e.actor for e in retried] == ["user:approver-user"] and "the disk is free now" in retried[0].reason
        assert page.errors == []
    finally:
        context.close()
