"""The shape and size of requests: what every route gets before it runs, and how errors look.

* :class:`BodyLimitMiddleware` (pure ASGI, outermost): a URL with a NUL (``%00``) is answered
  400; a request body larger than
  ``api.max_body_bytes`` is answered 413 before any route, authentication or parser sees it:
  at once when ``Content-Length`` says so, and as soon as the count of streamed bytes passes
  the limit for a body without one (``Transfer-Encoding: chunked``). At most the limit is ever
  held in memory.
* :class:`HealdRoute`: the route class of every router; it parses JSON bodies with
  :func:`heald.jsontext.loads` (bounded nesting and integer size, no lone surrogates), so a
  bad body is a 422 naming what is wrong instead of a 400 or a 500.
* Error answers never echo more than a short excerpt of the input (FastAPI's default 422
  answer carries the whole ``input``), list at most :data:`MAX_ERRORS` problems, and an
  unexpected exception is answered 500 with an error id and no traceback (the traceback goes
  to the log, so the bug stays visible); a transient database error (contention, a dropped
  connection) that outlived its retries is answered 503 with ``Retry-After``.
* :data:`DbId`, :data:`MAX_ID` and :data:`MAX_DB_INT`: integer path and query parameters
  bounded to what the databases store (ids: PostgreSQL ``integer``; offsets and audit
  sequence numbers: 64-bit), so a huge number is a 422, not an OverflowError or a
  PostgreSQL "integer out of range".
* :class:`SafeJSONResponse`: the default response class; text stored before these checks with
  a lone surrogate is shown with U+FFFD instead of failing the whole answer.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from heald.jsontext import JSONInputError, clean, clean_value, excerpt, loads

log = logging.getLogger("heald.api")

#: The largest integer SQLite and PostgreSQL ``bigint`` store (2**63 - 1): offsets, audit
#: sequence numbers.
MAX_DB_INT = 2**63 - 1
#: The largest record id: ids are ``integer`` columns, 32-bit on PostgreSQL (2**31 - 1).
MAX_ID = 2**31 - 1
#: At most this many problems are listed in one 422 answer.
MAX_ERRORS = 20
#: Characters of input quoted in an error answer.
EXCERPT_CHARS = 100

DbId = Annotated[int, Path(ge=1, le=MAX_ID, description="a record id: 1 to 2^31-1")]


def too_large_detail(limit: int, length: int | None = None) -> str:
    """The 413 answer's reason."""
    said = f" (Content-Length: {length})" if length is not None else ""
    return (f"request body too large{said}: at most {limit} bytes are accepted (api.max_body_bytes); "
            f"send smaller messages or raise the limit")


class BodyTooLarge(StarletteHTTPException):
    """Raised into the application when a streamed body passes the limit (an HTTPException so
    that FastAPI's body reader passes it on instead of answering 400)."""

    def __init__(self, limit: int, length: int | None = None):
        super().__init__(413, detail=too_large_detail(limit, length))


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_body_bytes`` with 413 (see the module docstring).

    A ``Content-Length`` that is not a non-negative integer is answered 400; a declared length
    over the limit 413 without reading a byte; a streamed body is counted as it arrives and
    the application's next read raises :class:`BodyTooLarge` once the count passes the limit.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if b"%00" in scope.get("query_string", b"") or "\x00" in scope.get("path", ""):
            # no heald URL holds a NUL, and PostgreSQL cannot compare text with one
            await _answer(send, 400, "URL: NUL characters (%00) are not accepted in the path or query")
            return
        limit = self.max_body_bytes
        lengths = [v for k, v in scope.get("headers", []) if k.lower() == b"content-length"]
        if lengths:
            raw = lengths[0].strip()
            if len(lengths) > 1 or not raw.isdigit() or not raw.isascii() or len(raw) > 19:
                await _answer(send, 400, "Content-Length: expected one non-negative integer of bytes")
                return
            if int(raw) > limit:
                await _answer(send, 413, too_large_detail(limit, int(raw)))
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await _answer(send, 413, str(exc.detail))


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class SafeJSONResponse(JSONResponse):
    """A JSON response that survives text with lone surrogates (stored before heald refused
    them): such strings are sent with U+FFFD in their place."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return super().render(clean_value(content))


class HealdRequest(Request):
    """A request whose JSON body is parsed by :func:`heald.jsontext.loads`."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = loads(body)
            except JSONInputError as exc:
                # an HTTPException: FastAPI's body reader turns any other exception into a bare 400
                raise HTTPException(422, detail=[{"type": "json_invalid", "loc": ["body", *_loc(exc.field)],
                                                  "msg": str(exc)}]) from exc
        return self._json


class HealdRoute(APIRoute):
    """The route class of heald's routers: JSON bodies through :class:`HealdRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(HealdRequest(request.scope, request.receive))

        return route_handler


def _loc(field: str) -> list[str]:
    return [] if field == "(body)" else field.split(".")


def _short_error(err: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": err.get("type", "value_error"),
                           "loc": [excerpt(p, 60) if isinstance(p, str) else p for p in err.get("loc", ())],
                           "msg": excerpt(str(err.get("msg", "")), 300)}
    if err.get("input") is not None and err.get("type") != "missing":
        value = err["input"]
        if isinstance(value, (bool, int, float)) and not (isinstance(value, int) and abs(value) > 10**30):
            out["input"] = value
        else:
            out["input"] = excerpt(value, EXCERPT_CHARS)
    ctx = err.get("ctx")
    if ctx:
        out["ctx"] = {str(k): (v if isinstance(v, (bool, int, float)) and abs(v) < 10**30 else excerpt(str(v), 120))
                      for k, v in ctx.items()}
    return out


async def validation_error(request: Request, exc: RequestValidationError) -> Response:
    """422 with each problem's location, message and at most an excerpt of the input."""
    errors = list(exc.errors())
    detail = [_short_error(e) for e in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        detail.append({"type": "too_many_errors", "loc": ["body"],
                       "msg": f"and {len(errors) - MAX_ERRORS} more problems (only the first {MAX_ERRORS} are listed)"})
    return SafeJSONResponse({"detail": detail}, status_code=422)


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """The HTTPException answer (as Starlette's), safe for any text in ``detail``."""
    headers = getattr(exc, "headers", None)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=headers)
    detail = exc.detail if not isinstance(exc.detail, str) else clean(exc.detail)
    return SafeJSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)


#: Seconds a client is asked to wait after a 503 for a busy or unreachable database.
RETRY_AFTER_SECONDS = 5


async def database_error(request: Request, exc: Exception) -> Response:
    """A transient database error that outlived its retries (contention, a dropped connection:
    :func:`heald.store.retry.is_transient`) is no bug: 503 with ``Retry-After`` (Alertmanager
    and other senders retry; a signal ingestion is one transaction, so none of it was stored).
    Any other database error is :func:`unexpected_error`'s. Registered for the database's
    exception classes, not as the catch-all: Starlette's catch-all answers and then re-raises,
    which can reset the client's connection."""
    from heald.store.retry import is_transient

    if not is_transient(exc):
        return await unexpected_error(request, exc)
    log.warning("database busy or unreachable in %s %s: %s", request.method, request.url.path,
                str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
    return JSONResponse({"detail": "the database is busy or unreachable for now; the request did not "
                                   f"complete; retry in {RETRY_AFTER_SECONDS} s"},
                        status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """500 for a bug: an error id to find the traceback in heald's log, never the traceback."""
    error_id = secrets.token_hex(6)
    log.error("unexpected error %s in %s %s", error_id, request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": f"internal error {error_id} ({type(exc).__name__}); the details are in heald's log"},
                        status_code=500)


def install(app: FastAPI, max_body_bytes: int) -> None:
    """Add the body limit and the error handlers to ``app`` (see the module docstring)."""
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    from sqlalchemy.exc import DBAPIError

    from heald.store.retry import TransientDatabaseError

    app.add_exception_handler(TransientDatabaseError, database_error)
    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(Exception, unexpected_error)
