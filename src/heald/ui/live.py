"""Live updates for the dashboard: a server-sent-events stream of audit-log progress.

``GET /events`` (``?incident=N`` for one incident's entries only) sends an ``event: change``
whose data is the newest audit sequence number each time new audit entries appear (checked
every :data:`POLL_SECONDS`), and a comment line every :data:`KEEPALIVE_SECONDS` so that a
closed browser is noticed. Every step heald takes is in the audit log (DESIGN.md invariant
5), so one stream covers new signals, incidents, state changes, actions and verdicts. The
pages listen with htmx's SSE extension (``hx-trigger="sse:change"``) and fetch their live
part again. Format: the WHATWG HTML standard, "Server-sent events".

The stream ends when the server shuts down (``app.state.should_exit``, set by
:func:`heald.api.server.make_server`), when the browser goes away, when the session's token
is revoked, or after :data:`MAX_STREAM_SECONDS` (the browser then reconnects by itself).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from heald.auth import COOKIE
from heald.engine import Runtime
from heald.ui.session import principal_from_token

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
RECHECK_SESSION_SECONDS = 30.0
MAX_STREAM_SECONDS = 1800.0
RETRY_MS = 2000


def sse_message(event: str, data: str, event_id: str | None = None) -> str:
    """One server-sent event: ``id:`` (what a reconnecting browser sends back as
    ``Last-Event-ID``), ``event:`` and one ``data:`` line per line of ``data``."""
    lines = "".join(f"data: {line}\n" for line in (data.splitlines() or [""]))
    return (f"id: {event_id}\n" if event_id else "") + f"event: {event}\n{lines}\n"


def event_stream(request: Request, rt: Runtime, incident_id: int | None, since: int | None = None) -> StreamingResponse:
    """The SSE response for ``GET /events`` (the caller has checked the session): changes
    after audit entry ``since`` (None: from now on)."""
    should_exit: Callable[[], bool] = getattr(request.app.state, "should_exit", lambda: False)
    token = request.cookies.get(COOKIE)

    async def stream() -> AsyncIterator[str]:
        last = since if since is not None else await run_in_threadpool(rt.store.last_audit_seq)
        yield f"retry: {RETRY_MS}\n: heald live updates from audit entry {last}\n\n"
        started = sent = checked = time.monotonic()
        while not should_exit() and time.monotonic() - started < MAX_STREAM_SECONDS:
            if await request.is_disconnected():
                return
            now = time.monotonic()
            if rt.config.api.auth and now - checked >= RECHECK_SESSION_SECONDS:
                checked = now
                if await run_in_threadpool(principal_from_token, rt, token) is None:
                    yield sse_message("signed-out", "your session ended")
                    return
            entries = await run_in_threadpool(rt.store.audit_entries, incident_id, last, 500)
            if entries:
                last = entries[-1].seq
                sent = now
                yield sse_message("change", str(last), event_id=str(last))
            elif now - sent >= KEEPALIVE_SECONDS:
                sent = now
                yield ": keepalive\n\n"
            await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
