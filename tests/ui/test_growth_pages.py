"""Issue 19, growth: the audit page verifies only the entries new since its last view (the
whole chain per view took 3.6 s at 129k entries) and still sees a forged new entry; an
incident's page lists a bounded part of a long history and says how much there is."""

from __future__ import annotations

import re

from tests.store.test_growth import tamper
from tests.ui.conftest import Dashboard
from tests.ui.test_http import browser


def chain_line(html: str) -> str:
    match = re.search(r'<p id="chain"[^>]*>(.*?)</p>', html, re.S)
    assert match, "no chain status on the page"
    return " ".join(match.group(1).split())


def test_the_audit_page_verifies_new_entries_only_and_sees_a_forged_new_one(dashboard: Dashboard) -> None:
    store = dashboard.rt.store
    c = browser(dashboard, "viewer")
    first = chain_line(c.get("/audit").text)
    assert first.startswith("✓ The audit chain is intact") and "all of them at this view" in first
    for i in range(3):
        store.record(actor="test", event="test.entry", reason=f"new {i}")
    second = chain_line(c.get("/audit").text)
    since = int(re.search(r"newer than entry (\d+)", second).group(1))  # type: ignore[union-attr]
    assert second.startswith("✓") and since >= 3 and "heald audit verify" in second
    tamper(store, 2)  # an entry the page verified before: a view between whole walks does not re-read it
    third = chain_line(c.get("/audit").text)
    assert third.startswith("✓") and "newer than entry" in third  # what the page claims, and no more
    assert not store.verify_audit().intact  # `heald audit verify` walks everything
    head = store.record(actor="test", event="test.entry", reason="the newest")
    tamper(store, head.seq)  # forged before any view saw it
    fourth = chain_line(c.get("/audit").text)
    assert fourth.startswith(f"✗ The audit chain is broken at entry {head.seq}"), fourth


def test_an_incident_page_lists_the_first_signals_and_says_how_many(dashboard: Dashboard, monkeypatch) -> None:
    from heald.ui import pages

    monkeypatch.setattr(pages, "PAGE_SIGNALS", 2)
    inc = dashboard.send_signal()
    for i in range(3):
        assert dashboard.send_signal(summary=f"again {i}") == inc
    html = browser(dashboard, "viewer").get(f"/incidents/{inc}").text
    assert "Signals <small>(the first 2 of 4)</small>" in html
    signals = html.split('id="signals-h"', 1)[1].split("</section>", 1)[0]
    assert "again 0" in signals and "again 1" not in signals and "again 2" not in signals
    assert "Stages" in html and "observing" in html  # read by event, whatever the history's length
