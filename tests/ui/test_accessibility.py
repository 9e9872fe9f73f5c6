"""Every dashboard page in Chromium: axe-core (vendored, tests/ui/vendor/VENDORED.md) finds no
serious or critical accessibility violation, and at a 390 px wide viewport (a phone) no page
scrolls sideways. Pages are filled with what makes them long: an incident waiting for an
approval, a silence, an open circuit breaker, audit entries."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from heald import budgets
from heald.correlate.silences import create_silence, parse_recurrence
from heald.models import utcnow
from tests.ui.conftest import Dashboard, sign_in

AXE = (Path(__file__).parent / "vendor" / "axe.min.js").read_text(encoding="utf-8")
#: Impacts that fail the test (axe's scale: minor, moderate, serious, critical).
FAILING = {"serious", "critical"}


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's violations on ``page`` (WCAG 2.x A and AA rules and best practices). The
    script is evaluated through the DevTools protocol, which the pages' Content-Security-Policy
    (scripts from heald only) does not apply to: the page runs under its real policy."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE)
    result = page.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ['violations']});
        return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                       nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}));
    }""")
    return list(result)


def scroll_width(page: Any) -> int:
    return int(page.evaluate("document.documentElement.scrollWidth"))


def too_wide(page: Any, width: int) -> str:
    """The innermost elements that reach past ``width`` px (what to fix), for the message."""
    found = page.evaluate("""(w) => [...document.querySelectorAll('body *')]
        .filter(e => e.getBoundingClientRect().right > w + 1
                     && ![...e.children].some(c => c.getBoundingClientRect().right > w + 1))
        .slice(0, 5).map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
                         (e.className && typeof e.className === 'string' ? '.' + e.className.split(' ').join('.') : '') +
                         ' ' + Math.round(e.getBoundingClientRect().right) + 'px')""", width)
    return ", ".join(found)


def fill(d: Dashboard) -> int:
    """An incident waiting for an approval, a recurring and a one-off silence, an open breaker."""
    inc = d.send_signal()
    d.wait_state(inc, "awaiting_approval")
    store = d.rt.store
    create_silence(store, ['service="svc"', 'alertname=~"Disk.*"'], utcnow() + timedelta(hours=2),
                   created_by="user:ops", comment="a long comment " * 10)
    create_silence(store, ['service="billing-service-with-a-long-name"'], utcnow() + timedelta(days=30),
                   created_by="user:ops", comment="weekly maintenance",
                   recurrence=parse_recurrence("0 2 * * 0", 7200, "Europe/Paris"))
    budgets.record_verification(store, "service:svc", False, 0, threshold=1, reason="still failing after restart")
    budgets.record_verification(store, "repo:acme/a-repository-with-a-long-name", False, 0, threshold=1,
                                reason="CI still red")
    return inc


@pytest.mark.slow
def test_every_page_passes_axe_and_fits_a_phone(dashboard: Dashboard, chromium: Any, screenshots: Path) -> None:
    inc = fill(dashboard)
    pages = ["/", "/incidents", f"/incidents/{inc}", "/services", "/silences", f"/silences?incident={inc}",
             "/runbooks", "/audit", "/sources", "/incidents/999", "/incidents?since=yesterday"]
    problems: list[str] = []
    for width in (390, 1280):
        context = chromium.new_context(viewport={"width": width, "height": 844})
        context.set_default_timeout(20_000)
        try:
            page = context.new_page()
            page.goto(f"{dashboard.url}/login")
            for v in axe_violations(page):
                if v["impact"] in FAILING:
                    problems.append(f"/login at {width} px: {v}")
            if width == 390 and scroll_width(page) > width:
                problems.append(f"/login is {scroll_width(page)} px wide at {width} px: {too_wide(page, width)}")
            sign_in(page, dashboard.url, dashboard.tokens["admin"])
            for path in pages:
                page.goto(f"{dashboard.url}{path}")
                page.wait_for_load_state("load")
                for v in axe_violations(page):
                    if v["impact"] in FAILING:
                        problems.append(f"{path} at {width} px: {v}")
                if width == 390 and scroll_width(page) > width:
                    problems.append(f"{path} is {scroll_width(page)} px wide at {width} px: {too_wide(page, width)}")
                if width == 390 and path in ("/", "/silences", f"/incidents/{inc}", "/services", "/audit"):
                    name = path.strip("/").replace("/", "-").replace("?", "-") or "overview"
                    page.screenshot(path=str(screenshots / f"ui-a11y-{name}-390.png"), full_page=True)
        finally:
            context.close()
    assert problems == [], "\n".join(problems)


@pytest.mark.slow
def test_axe_catches_a_violation(dashboard: Dashboard, chromium: Any) -> None:
    """The check itself works: an image without alternative text and a field without a label,
    added to a real page, are reported as critical/serious."""
    context = chromium.new_context(viewport={"width": 390, "height": 844})
    try:
        page = context.new_page()
        sign_in(page, dashboard.url, dashboard.tokens["viewer"])
        page.evaluate("""() => {
            const main = document.querySelector('main');
            main.insertAdjacentHTML('beforeend', '<img src="/static/favicon.svg"><input type="text">');
        }""")
        found = {v["id"]: v["impact"] for v in axe_violations(page)}
        assert found.get("image-alt") == "critical" and found.get("label") == "critical", found
    finally:
        context.close()
