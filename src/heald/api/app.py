"""The HTTP API application, served by ``heald serve``.

Each area's routes live in a module of their own (``signals``, ``incidents``, ``ops``) that
exposes ``routes(rt) -> APIRouter``; :func:`create_app` includes them. The OpenAPI document is
at ``/openapi.json`` (browsable at ``/docs``).
"""

from __future__ import annotations

from fastapi import FastAPI

from heald import __version__
from heald.api import incidents, ops, signals
from heald.engine import Runtime


def create_app(rt: Runtime) -> FastAPI:
    """The FastAPI application over a started (or about to be started) Runtime."""
    app = FastAPI(title="heald", version=__version__,
                  description="Self-healing control plane: signals → incidents → diagnosis → gated remedies → verification.")
    for module in (signals, incidents, ops):
        app.include_router(module.routes(rt))
    return app
