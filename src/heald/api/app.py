"""The HTTP API application, served by ``heald serve``.

Each area's routes live in a module of their own (``signals``, ``incidents``, ``ops``,
``tokens``) that exposes ``routes(rt) -> APIRouter``; :func:`create_app` includes them. Every
route that changes something declares the role it needs with
``Depends(heald.auth.require(Role.X))`` (see :mod:`heald.auth`); the runtime is on
``app.state.runtime``. Request size and shape, and the form of error answers, are
:mod:`heald.http_limits`'s. The dashboard (:mod:`heald.ui`) is served at ``/``. The OpenAPI document is at
``/openapi.json``, browsable at ``/docs``
(:mod:`heald.api.docs`: Swagger UI served offline, with the bearer security scheme).
"""

from __future__ import annotations

from fastapi import FastAPI

from heald import __version__
from heald import http_limits as limits
from heald.api import breakers, docs, incidents, learning, ops, pause, reports, signals, silences, tokens, workers
from heald.engine import Runtime


def create_app(rt: Runtime) -> FastAPI:
    """The FastAPI application over a started (or about to be started) Runtime."""
    app = FastAPI(title="heald", version=__version__, default_response_class=limits.SafeJSONResponse,
                  docs_url=None, redoc_url=None, swagger_ui_oauth2_redirect_url=None,
                  description="Self-healing control plane: signals → incidents → diagnosis → gated remedies → verification.")
    app.state.runtime = rt
    limits.install(app, rt.config.api.max_body_bytes)
    routers = [module.routes(rt) for module in (signals, incidents, ops, tokens, learning, reports, breakers, silences, pause,
                                                    workers)]
    for router in routers:
        app.include_router(router)
    from heald import ui

    ui.install(app, rt)
    docs.install(app, routers)
    return app
