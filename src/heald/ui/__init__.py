"""The dashboard: heald's web UI, served by ``heald serve`` at ``/``.

Server-rendered HTML (Jinja2 templates in ``templates/``) that reads and works without
JavaScript; htmx (vendored in ``static/``, see ``static/VENDORED.md``; no CDN) refreshes the
live parts of a page when the server-sent-events stream (:mod:`heald.ui.live`) says the audit
log moved, and submits the approval form in place. Pages:

* ``/`` overview: open incidents by state, healed in the last 24 h, heal rate, the time to
  detect / time to recover trend (inline SVG, :mod:`heald.ui.charts`), pending approvals,
  recent incidents;
* ``/incidents``: every incident newest first, with filters (state, service, environment,
  detection time, text) and pages;
* ``/services``: every configured target's health now (probes, last signal, open incident,
  circuit breaker, silences, lease), the down ones first; Reset on an open breaker (operator);
* ``/silences``: silences and recurring maintenance windows; Expire, and the form for a new
  one, prefilled from an incident's labels or a service (operator);
* ``/incidents/{id}``: the stages with timestamps, signals, evidence, diagnosis, plan with
  learned success rates, the gate's decision, approvals (Approve / Reject for role approver),
  actions with output, verification, outcomes, audit entries; what heald would have done in
  shadow mode or while paused, beside what humans then did;
* ``/runbooks``: runbooks, the remedy catalog and learned success rates;
* ``/audit``: the audit log with filters and the chain's verification status;
* ``/sources``: probes, webhook sources, logs, and the last signal of every source.

Every form that changes something needs the role the API asks for, the session's CSRF token,
and writes the API's audit entries with the signed-in identity. Times carry their zone; every
page fits a 390 px screen (tables become labelled cards) and passes axe-core in the tests.

Sign-in and CSRF protection: :mod:`heald.ui.session`. :func:`install` adds it all to the API
application.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from heald.engine import Runtime

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI, rt: Runtime) -> None:
    """Add the dashboard's pages, its event stream and its static files (``/static``) to
    ``app``."""
    from heald.ui import pages

    app.include_router(pages.routes(rt))
    app.add_exception_handler(pages.LoginRequired, pages.login_redirect)  # type: ignore[arg-type]
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
