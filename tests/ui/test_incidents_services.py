"""The incidents page (filters, paging, bad filters → 422) and the services page (every target's
health, the down ones first): the store's query on SQLite and PostgreSQL, the pages over HTTP
against a real served heald."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from heald import budgets, correlate
from heald.api.server import ServerThread
from heald.correlate.silences import create_silence
from heald.engine import Runtime
from heald.models import IncidentState, Signal, utcnow
from heald.store import Store
from heald.store.probe_state import ProbeState, read_probe_states, save_probe_state
from tests.conftest import make_config, make_token, wait_for
from tests.ui.conftest import Dashboard, sign_in, ui_config
from tests.ui.test_http import browser


def ingest(store: Store, tmp_path: Path, environment: str = "development", **kw: object) -> int:
    base = {"source": "test", "service": "shop", "labels": {"alertname": "Down", "service": "shop"}, "summary": "down"}
    with store.tx() as s:
        r = correlate.ingest(s, Signal.model_validate({**base, **kw}), make_config(tmp_path, environment=environment))
    assert r.incident_id is not None
    return r.incident_id


def test_search_incidents_filters_pages_and_counts(store: Store, tmp_path: Path) -> None:
    a = ingest(store, tmp_path, labels={"alertname": "Down", "service": "shop", "zone": "Zone-B"})
    b = ingest(store, tmp_path, service="pay", labels={"alertname": "Down", "service": "pay"}, summary="pay down",
               environment="production")
    ingest(store, tmp_path, labels={"alertname": "Down", "service": "shop", "zone": "Zone-B"},
           summary="Disk 100% full_x")  # joins a: its summary is searchable on a
    c = ingest(store, tmp_path, service="queue", labels={"alertname": "Slow", "service": "queue"},
               summary="queue slow")
    store.transition(b, IncidentState.diagnosing, reason="r")
    store.transition(b, IncidentState.escalated, reason="gave up")

    everything, total = store.search_incidents()
    assert [i.id for i in everything] == [c, b, a] and total == 3  # newest first
    assert store.search_incidents(states=[IncidentState.escalated])[0][0].id == b
    assert [i.id for i in store.search_incidents(service="pay")[0]] == [b]
    assert [i.id for i in store.search_incidents(environment="production")[0]] == [b]
    assert [i.id for i in store.search_incidents(text="zone-b")[0]] == [a]  # labels, any case
    assert [i.id for i in store.search_incidents(text="100% FULL_X")[0]] == [a]  # a signal's summary, % and _ literal
    assert store.search_incidents(text="100%_full")[0] == []
    assert [i.id for i in store.search_incidents(text="slow")[0]] == [c]  # the title
    now = utcnow()
    assert store.search_incidents(since=now + timedelta(seconds=5)) == ([], 0)
    assert store.search_incidents(until=now - timedelta(hours=1)) == ([], 0)
    assert store.search_incidents(since=now - timedelta(hours=1), until=now + timedelta(seconds=5))[1] == 3
    page2, total = store.search_incidents(limit=2, offset=2)
    assert [i.id for i in page2] == [a] and total == 3
    assert store.environments() == ["development", "production"]
    last = store.last_signal_by_service()
    assert last["shop"].summary == "Disk 100% full_x" and last["queue"].summary == "queue slow"
    save_probe_state(store, "shop", "http x", ProbeState(failures=2, firing=True, first_failure=now))
    (state, changed), = read_probe_states(store).values()
    assert state.firing and state.failures == 2 and changed >= now - timedelta(seconds=5)


def seed(d: Dashboard, tmp_path: Path) -> list[int]:
    """12 incidents straight into the store (no healing runs on them): 11 on ``api0``…``api10``
    in development, the newest on ``svc`` in production with a distinctive label."""
    ids = [ingest(d.rt.store, tmp_path, service=f"api{n}", labels={"alertname": "A", "service": f"api{n}"},
                  summary=f"api alert {n}") for n in range(11)]
    ids.append(ingest(d.rt.store, tmp_path, service="svc", labels={"alertname": "Odd", "service": "svc",
                                                                   "rack": "r42"},
                      summary="svc odd", environment="production"))
    return ids


def test_incidents_page_filters_and_pages(dashboard: Dashboard, tmp_path: Path) -> None:
    ids = seed(dashboard, tmp_path)
    c = browser(dashboard, "viewer")  # role viewer is enough to look
    first = c.get("/incidents?size=10")
    assert first.status_code == 200
    assert "Incidents 1–10 of 12" in first.text and "page 1 of 2" in first.text
    order = [int(x) for x in __import__("re").findall(r'<tr id="incident-(\d+)"', first.text)]
    assert order == sorted(ids, reverse=True)[:10]  # newest first
    assert 'href="/incidents?size=10&amp;page=2" rel="next"' in first.text and 'rel="prev"' not in first.text
    second = c.get("/incidents?size=10&page=2")
    assert [f'id="incident-{i}"' in second.text for i in ids[:2]] == [True, True]
    assert 'rel="prev"' in second.text and 'rel="next"' not in second.text
    assert "UTC" in second.text  # times with their zone
    past = c.get("/incidents?size=10&page=3").text
    assert "Page 3 is past the last page (2) of the 12" in past and 'href="/incidents?size=10&amp;page=1"' in past

    only = c.get("/incidents", params={"environment": "production"}).text
    assert f'id="incident-{ids[-1]}"' in only and "Incidents 1–1 of 1" in only
    assert f'id="incident-{ids[-1]}"' in c.get("/incidents", params={"q": "R42"}).text
    svc = c.get("/incidents", params={"service": "api3", "state": "open"}).text
    assert "Incidents 1–1 of 1" in svc and f'id="incident-{ids[3]}"' in svc
    assert "of 12" in c.get("/incidents", params={"state": "open"}).text
    assert "No incident matches" in c.get("/incidents", params={"state": "needs_attention"}).text
    assert "No incident matches" in c.get("/incidents", params={"state": "closed"}).text
    future = (utcnow() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    assert "No incident matches" in c.get("/incidents", params={"since": future}).text
    assert "of 12" in c.get("/incidents", params={"until": future}).text


@pytest.mark.parametrize(("query", "field"), [
    ({"state": "sleeping"}, "state:"), ({"since": "yesterday"}, "since:"), ({"until": "2025-13-01"}, "until:"),
    ({"since": "2025-02-01", "until": "2025-01-01"}, "until: must be after since"), ({"page": "0"}, "page:"),
    ({"page": "-1"}, "page:"), ({"page": "99999999999999999999"}, "page:"), ({"page": "²"}, "page:"),
    ({"size": "7"}, "size:"), ({"q": "x" * 201}, "q: at most 200"), ({"environment": "e" * 101}, "environment:"),
])
def test_bad_incident_filters_answer_422_naming_the_field(dashboard: Dashboard, query: dict[str, str],
                                                          field: str) -> None:
    r = browser(dashboard, "viewer").get("/incidents", params=query)
    assert r.status_code == 422 and field in r.text and 'id="filter-error"' in r.text, (query, r.status_code)


def test_incidents_and_services_pages_need_a_session(dashboard: Dashboard) -> None:
    with browser(dashboard) as c:
        for path in ("/incidents?state=open", "/services"):
            r = c.get(path)
            assert r.status_code == 303 and r.headers["location"].startswith("/login"), path
        bearer = c.get("/services", headers={"Authorization": f"Bearer {dashboard.tokens['admin']}"})
        assert bearer.status_code == 303  # a bearer token is not a session


def test_overview_links_into_the_pages(dashboard: Dashboard) -> None:
    html = browser(dashboard, "viewer").get("/").text
    for href in ('href="/incidents?state=open"', 'href="/incidents?state=needs_attention"', 'href="/incidents"',
                 'href="/services"'):
        assert href in html, href


@pytest.fixture
def targets(tmp_path: Path) -> Iterator[Dashboard]:
    """:func:`tests.ui.conftest.ui_config` plus a service ``api`` (a sleeper with a probe that
    does not run), an adopted container ``cache`` and a systemd unit ``cron`` (never touched:
    the page only reads the config and the store)."""
    base = ui_config(tmp_path)
    cfg = make_config(tmp_path, services={
        **{k: v.model_dump(exclude_unset=True) for k, v in base.services.items()},
        "api": {"command": [sys.executable, "-c", "import time; time.sleep(600)"],
                "probes": [{"name": "api-health", "url": "http://127.0.0.1:9/healthz"}]}},
        containers={"cache": {"name": "cache-1"}}, systemd_units={"cron": {"unit": "cron.service"}},
        runbooks=[str(p) for p in base.runbooks])
    rt = Runtime(cfg, run_probes=False)
    rt.start()
    wait_for(lambda: (tmp_path / "starts").exists(), what="the svc process to start")
    server = ServerThread(rt)
    try:
        url = server.start()
        yield Dashboard(url, rt, {role: make_token(rt.store, role) for role in ("viewer", "operator", "admin")})
    finally:
        server.stop()
        rt.stop(stop_services=True)


def make_svc_down(d: Dashboard) -> int:
    """What the probe runner stores when svc's probe fires, and the incident its signal opens."""
    label = d.rt.config.services["svc"].probes[0].label
    save_probe_state(d.rt.store, "svc", label, ProbeState(failures=3, firing=True, first_failure=utcnow()))
    save_probe_state(d.rt.store, "api", "api-health", ProbeState(successes=5))
    return d.send_signal()


def test_services_page_lists_every_target_down_first(targets: Dashboard) -> None:
    inc = make_svc_down(targets)
    html = browser(targets, "viewer").get("/services").text
    rows = __import__("re").findall(r'<tr id="target-([^"]+)" data-health="([a-z]+)"', html)
    assert rows[0] == ("svc", "down"), rows  # before "api", though it sorts later by name
    assert dict(rows) == {"svc": "down", "api": "up", "cache": "unknown", "cron": "unknown"}
    assert f'href="/incidents/{inc}"' in html and "firing" in html and "UTC" in html
    assert "container" in html and "systemd unit" in html
    # a silence on the service and an open circuit breaker show on its row, and only there
    silence = create_silence(targets.rt.store, ['service="svc"'], utcnow() + timedelta(hours=1),
                             created_by="user:admin-user", comment="maintenance")
    budgets.record_verification(targets.rt.store, "service:svc", False, inc, threshold=1,
                                reason="restart did not help")
    budgets.record_verification(targets.rt.store, "container:api", False, inc, threshold=1,
                                reason="not the service api")
    html = browser(targets, "viewer").get("/services").text
    svc_row = html.split('<tr id="target-svc"')[1].split("</tr>")[0]
    assert f'id="silence-{silence["id"]}"' in svc_row and "<strong>open</strong> since" in svc_row
    api_row = html.split('<tr id="target-api"')[1].split("</tr>")[0]
    assert "silence-" not in api_row and "<strong>open</strong>" not in api_row


# -- in Chromium -------------------------------------------------------------------------------

def phone_page(chromium, url: str, token: str):  # type: ignore[no-untyped-def]
    """A signed-in page in a 390 px wide context (a phone), on the overview."""
    context = chromium.new_context(viewport={"width": 390, "height": 844})
    context.set_default_timeout(20_000)
    page = context.new_page()
    sign_in(page, url, token)
    return context, page


def no_sideways_scroll(page) -> None:  # type: ignore[no-untyped-def]
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"{page.url} is {width} px wide at a 390 px viewport"


@pytest.mark.slow
def test_incidents_page_in_chromium_from_the_overview(dashboard: Dashboard, chromium, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                      screenshots: Path) -> None:
    ids = seed(dashboard, tmp_path)
    context, page = phone_page(chromium, dashboard.url, dashboard.tokens["viewer"])
    try:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.locator("#count-observing").click()  # the overview's count of one state → the filtered list
        page.wait_for_url("**/incidents?state=observing")
        assert page.locator("#incident-list tbody tr").count() == 12
        no_sideways_scroll(page)
        page.get_by_label("Text (title, labels, signal summaries)").fill("r42")
        page.get_by_label("Environment").select_option("production")
        page.get_by_role("button", name="Filter").click()
        page.wait_for_url("**q=r42**")
        rows = page.locator("#incident-list tbody tr")
        assert rows.count() == 1 and rows.first.get_attribute("id") == f"incident-{ids[-1]}"
        assert "UTC" in rows.first.inner_text()
        no_sideways_scroll(page)
        page.screenshot(path=str(screenshots / "incidents-filtered-390.png"), full_page=True)
        page.goto(f"{dashboard.url}/incidents?size=10")
        page.get_by_role("link", name="Older →").click()
        page.wait_for_url("**page=2")
        assert page.locator("#incident-list tbody tr").count() == 2
        page.get_by_label("Per page").select_option("10")
        page.get_by_label("State").select_option("needs_attention")
        page.get_by_role("button", name="Filter").click()
        page.wait_for_url("**state=needs_attention**")
        assert "No incident matches" in page.locator("#result-count").inner_text()
        page.goto(f"{dashboard.url}/incidents?since=yesterday")
        assert "since:" in page.locator("#filter-error").inner_text()
        no_sideways_scroll(page)
        assert errors == []
    finally:
        context.close()


@pytest.mark.slow
def test_services_page_in_chromium_shows_the_down_one_first(targets: Dashboard, chromium,  # type: ignore[no-untyped-def]
                                                             screenshots: Path) -> None:
    inc = make_svc_down(targets)
    context, page = phone_page(chromium, targets.url, targets.tokens["viewer"])
    try:
        page.locator("#all-services").click()
        page.wait_for_url("**/services")
        first = page.locator("#targets tbody tr").first
        assert first.get_attribute("id") == "target-svc" and first.get_attribute("data-health") == "down"
        assert "firing" in first.inner_text() and "UTC" in first.inner_text()
        assert page.locator("#targets tbody tr").count() == 4
        no_sideways_scroll(page)
        page.screenshot(path=str(screenshots / "services-390.png"), full_page=True)
        first.get_by_role("link", name=f"#{inc}").click()
        page.wait_for_url(f"**/incidents/{inc}")
    finally:
        context.close()
