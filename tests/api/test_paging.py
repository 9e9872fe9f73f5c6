"""Issue 19, growth: an incident's signals and timeline come in pages, lists name their next
page, and a bad paging parameter is a 422 naming it."""

from __future__ import annotations

from typing import Any

SIGNAL = {"source": "my-monitor", "service": "svc", "summary": "svc broken",
          "labels": {"alertname": "SvcBroken", "service": "svc"}}


def walk(client: Any, path: str, limit: int) -> tuple[list[Any], int, int]:
    """Every item of a paged endpoint, the pages read and the total it reported."""
    items: list[Any] = []
    after: int | None = 0
    pages = total = 0
    while after is not None:
        r = client.get(path, params={"after": after, "limit": limit})
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        after, total = body["next_after"], body["total"]
        pages += 1
    return items, pages, total


def test_an_incidents_signals_and_timeline_come_in_pages(api) -> None:
    client, rt = api
    for i in range(5):
        assert client.post("/v1/signals", json={**SIGNAL, "summary": f"svc broken {i}"}).status_code == 202
    inc = rt.store.list_incidents()[0].id
    detail = client.get(f"/v1/incidents/{inc}", params={"signals_limit": 2, "timeline_limit": 1}).json()
    assert [s["summary"] for s in detail["signals"]] == ["svc broken 0", "svc broken 1"]
    assert detail["signals_page"]["total"] == 5 and detail["signals_page"]["next_after"] == detail["signals"][1]["id"]
    assert [e["event"] for e in detail["timeline"]] == ["incident.opened"]
    signals, pages, total = walk(client, f"/v1/incidents/{inc}/signals", 2)
    assert [s["summary"] for s in signals] == [f"svc broken {i}" for i in range(5)] and pages == 3 and total == 5
    timeline, _, total = walk(client, f"/v1/incidents/{inc}/timeline", 3)
    assert [e["seq"] for e in timeline] == sorted({e["seq"] for e in timeline}) and len(timeline) <= total
    assert timeline[0]["event"] == "incident.opened"
    assert client.get("/v1/incidents/999/signals").status_code == 404
    assert client.get("/v1/incidents/999/timeline").status_code == 404


def test_bad_paging_parameters_are_422_naming_them(api) -> None:
    client, _ = api
    assert client.post("/v1/signals", json=SIGNAL).status_code == 202
    for path, params, field in [("/v1/incidents/1/signals", {"limit": 0}, "limit"),
                                ("/v1/incidents/1/signals", {"limit": 1001}, "limit"),
                                ("/v1/incidents/1/signals", {"after": -1}, "after"),
                                ("/v1/incidents/1/timeline", {"after": "1e3"}, "after"),
                                ("/v1/incidents/1", {"signals_limit": 5000}, "signals_limit"),
                                ("/v1/incidents/1", {"timeline_limit": "x"}, "timeline_limit"),
                                ("/v1/incidents", {"offset": -5}, "offset"),
                                ("/v1/silences", {"limit": 0}, "limit"),
                                ("/v1/silences", {"before": "0"}, "before")]:
        r = client.get(path, params=params)
        assert r.status_code == 422, (path, params, r.text)
        assert [d["loc"] for d in r.json()["detail"]] == [["query", field]], r.text


def test_full_pages_name_the_next_in_a_link_header(api) -> None:
    client, rt = api
    for svc in ("a", "b", "c"):
        client.post("/v1/signals", json={**SIGNAL, "service": svc, "labels": {"alertname": "Down", "service": svc}})
    first = client.get("/v1/incidents", params={"limit": 2})
    assert len(first.json()) == 2 and first.headers["link"] == '</v1/incidents?limit=2&offset=2>; rel="next"'
    rest = client.get("/v1/incidents", params={"limit": 2, "offset": 2})
    assert len(rest.json()) == 1 and "link" not in rest.headers
    for svc in ("a", "b", "c"):
        r = client.post("/v1/silences", json={"matchers": [f'service="{svc}"'], "duration": "1h", "comment": "w"})
        assert r.status_code == 201, r.text
    page = client.get("/v1/silences", params={"limit": 2})
    ids = [s["id"] for s in page.json()]
    assert page.headers["link"] == f'</v1/silences?limit=2&before={ids[-1]}>; rel="next"'
    assert [s["id"] for s in client.get("/v1/silences", params={"limit": 2, "before": ids[-1]}).json()] == [ids[-1] - 1]
