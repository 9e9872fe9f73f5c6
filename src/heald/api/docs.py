"""The API's browsable documentation at ``/docs`` (Swagger UI), served offline, and the
OpenAPI document's bearer security scheme.

Swagger UI is vendored in ``static/`` (see ``static/VENDORED.md``; nothing is loaded from a
CDN) and served at ``/docs/static/``. The page carries no inline script, so it works under a
Content-Security-Policy that allows only heald's own scripts. FastAPI's ``/redoc`` (which
loads ReDoc from a CDN) is not served.

The OpenAPI document (``/openapi.json``) declares the scheme ``HTTPBearer`` (``Authorization:
Bearer <API token>``, see :mod:`heald.auth`): every operation behind
``Depends(require(role))`` lists it as required and says the role in its description, a
webhook lists it as optional (a source may sign or send its secret instead), and an open
operation (``/healthz``, ``/metrics``) lists none — so "Authorize" in ``/docs`` sends the
token where it is needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
SCHEME = "HTTPBearer"
#: The page's Content-Security-Policy: scripts, styles and connections from heald only.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>heald API</title>
<link rel="icon" href="/static/favicon.svg">
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
<link rel="stylesheet" href="/docs/static/heald-docs.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/static/swagger-init.js"></script>
</body>
</html>
"""


def _requirements(dependant: Dependant) -> Iterator[str]:
    """Roles required by ``dependant`` and its sub-dependencies (``heald.auth.require``
    names its dependency ``require_<role>``)."""
    for dep in dependant.dependencies:
        name = getattr(dep.call, "__name__", "")
        if name.startswith("require_"):
            yield name.removeprefix("require_")
        yield from _requirements(dep)


def _openapi(app: FastAPI, routers: list[APIRouter]) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schema.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME] = {
        "type": "http", "scheme": "bearer",
        "description": "An API token (heald tokens create --role ROLE); roles: viewer < operator < approver < admin."}
    for route in (r for router in routers for r in router.routes):
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        roles = list(dict.fromkeys(_requirements(route.dependant)))
        for method in route.methods or ():
            op = schema.get("paths", {}).get(route.path_format, {}).get(method.lower())
            if op is None:
                continue
            if roles:
                op["security"] = [{SCHEME: []}]
                note = f"Needs an API token of role **{roles[-1]}** or above."
                op["description"] = f"{op['description']}\n\n{note}" if op.get("description") else note
            elif route.path_format.startswith("/v1/webhooks/"):
                op["security"] = [{SCHEME: []}, {}]
            else:
                op["security"] = []
    app.openapi_schema = schema
    return schema


def install(app: FastAPI, routers: list[APIRouter]) -> None:
    """Serve ``/docs`` from the vendored Swagger UI and declare the bearer scheme in the
    OpenAPI document of ``app`` (created with ``docs_url=None, redoc_url=None``) for the
    operations of ``routers`` (the API's routers, included in ``app`` without a prefix)."""

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                                           "Referrer-Policy": "same-origin"})

    app.mount("/docs/static", StaticFiles(directory=STATIC), name="docs-static")
    app.openapi = lambda: _openapi(app, routers)  # type: ignore[method-assign]
