"""/docs works offline (vendored Swagger UI, no CDN, no inline script) and the OpenAPI document
declares its bearer scheme on exactly the operations that need a token."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from heald.api.docs import CSP, SCHEME
from tests.conftest import bearer, make_token
from tests.ui.conftest import launch_chromium


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's Chromium for this module only: Playwright's sync API keeps an event loop running
    on the main thread until it stops, which DBOS's synchronous calls in later tests would trip
    over (the dashboard's session-wide browser runs last, in tests/ui)."""
    with launch_chromium() as browser:
        yield browser


PATH_VALUES = {"incident_id": "1", "token_id": "1", "silence_id": "1", "source": "alertmanager"}


def test_docs_page_loads_nothing_from_elsewhere(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    r = client.get("/docs", headers={"Authorization": ""})
    assert r.status_code == 200 and r.headers["content-security-policy"] == CSP
    assert "<script>" not in r.text and "<style" not in r.text  # no inline code: the CSP allows none
    refs = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert refs and all(ref.startswith("/") and not ref.startswith("//") for ref in refs), refs
    for ref in refs:
        asset = client.get(ref)
        assert asset.status_code == 200, ref
    assert "SwaggerUIBundle" in client.get("/docs/static/swagger-ui-bundle.js").text
    assert client.get("/redoc").status_code == 404  # FastAPI's ReDoc page would load from a CDN


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in spec["paths"].items() for method, op in item.items()]


def test_openapi_declares_bearer_where_a_token_is_needed(api) -> None:  # type: ignore[no-untyped-def]
    client, rt = api
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"][SCHEME] == {
        "type": "http", "scheme": "bearer", "description": spec["components"]["securitySchemes"][SCHEME]["description"]}
    ops = _operations(spec)
    assert len(ops) >= 15
    with httpx.Client(base_url=str(client.base_url), timeout=10) as anonymous:
        for method, path, op in ops:
            url = re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], path)
            r = anonymous.request(method, url, json={} if method == "POST" else None)
            if op["security"] == [{SCHEME: []}]:
                assert r.status_code == 401, (method, path, r.status_code)
                assert re.search(r"Needs an API token of role \*\*(viewer|operator|approver|admin)\*\*", op["description"])
            elif op["security"] == []:
                assert r.status_code != 401, (method, path)
            else:
                assert path.startswith("/v1/webhooks/") and op["security"] == [{SCHEME: []}, {}]
    assert {f"{m} {p}": o["security"] for m, p, o in ops}["GET /v1/incidents"] == [{SCHEME: []}]
    assert {f"{m} {p}": o["security"] for m, p, o in ops}["GET /healthz"] == []
    roles = {f"{m} {p}": re.search(r"\*\*(\w+)\*\*", o.get("description", "")) for m, p, o in ops}
    assert roles["POST /v1/incidents/{incident_id}/approve"].group(1) == "approver"  # type: ignore[union-attr]
    assert roles["POST /v1/tokens"].group(1) == "admin"  # type: ignore[union-attr]
    viewer = make_token(rt.store, "viewer", "docs-viewer")
    assert client.get("/v1/incidents", headers=bearer(viewer)).status_code == 200


@pytest.mark.slow
def test_docs_in_chromium_offline_authorize_and_try(api, chromium: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client, rt = api
    base = str(client.base_url).rstrip("/")
    viewer = make_token(rt.store, "viewer", "docs-viewer")
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    elsewhere: list[str] = []

    def only_heald(route: Any) -> None:
        if route.request.url.startswith(base + "/"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", only_heald)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"{base}/docs")
        page.get_by_role("button", name=re.compile("Authorize")).first.click()
        dialog = page.locator(".dialog-ux")
        dialog.locator("input").first.fill(viewer)
        dialog.get_by_role("button", name="Apply credentials").click()
        dialog.get_by_role("button", name="Close").first.click()
        op = page.locator("#operations-incidents-list_incidents_v1_incidents_get")
        if op.count() == 0:
            op = page.locator(".opblock").filter(has_text=re.compile(r"^GET\s*/v1/incidents\b")).first
        op.locator(".opblock-summary").first.click()
        op.get_by_role("button", name="Try it out").click()
        op.get_by_role("button", name="Execute").click()
        status = op.locator(".live-responses-table tbody .response-col_status").first
        status.wait_for()
        assert status.inner_text().strip().startswith("200"), status.inner_text()
        page.screenshot(path=str(Path(os.environ.get("HEALD_SCREENSHOTS") or tmp_path) / "docs.png"), full_page=False)
    finally:
        context.close()
    assert elsewhere == [] and errors == [], (elsewhere, errors)


@pytest.mark.slow
def test_docs_fits_a_phone_and_its_colours_pass_axe(api, chromium: Any) -> None:  # type: ignore[no-untyped-def]
    """At 390 px /docs does not scroll sideways, and heald-docs.css lifts Swagger UI's colours to
    AA contrast. The one serious violation left is Swagger UI's own structure (an operation's
    summary is a button holding buttons: nested-interactive), which CSS cannot change."""
    from tests.ui.test_accessibility import axe_violations

    client, _ = api
    context = chromium.new_context(viewport={"width": 390, "height": 844})
    context.set_default_timeout(20_000)
    try:
        page = context.new_page()
        page.goto(f"{str(client.base_url).rstrip('/')}/docs")
        page.locator(".swagger-ui .info").wait_for()
        page.locator(".opblock").first.wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        serious = {v["id"] for v in axe_violations(page) if v["impact"] in ("serious", "critical")}
        assert serious <= {"nested-interactive"}, serious
    finally:
        context.close()
