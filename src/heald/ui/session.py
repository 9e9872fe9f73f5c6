"""The dashboard's sign-in: an API token in a session cookie, and CSRF protection.

A browser signs in once with an API token (the login form); heald checks it and sets it in
the ``heald_token`` cookie (:data:`heald.auth.COOKIE`): ``HttpOnly`` (scripts cannot read
it), ``SameSite=Strict`` (a request started by another site does not carry it), ``Secure``
when the request came over HTTPS. Each request looks the token up by its hash, so revoking
the token (``heald tokens revoke``) signs the browser out at once.

Every form that changes something carries a CSRF token, an HMAC of the session's API token
(:func:`csrf_token`), checked with :func:`check_csrf`; a POST whose ``Origin`` header names
another origin is refused as well. With ``api.auth: false`` everyone is the anonymous admin
and the CSRF token is an HMAC under a secret made when the app starts.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import quote, urlsplit

from fastapi import HTTPException, Request

from heald.auth import COOKIE, Principal, lookup_token
from heald.engine import Runtime
from heald.models import Role

#: How long the session cookie lives in the browser (seconds); the token's own expiry and
#: revocation apply on every request regardless.
SESSION_MAX_AGE = 12 * 3600
_PROCESS_SECRET = secrets.token_bytes(32)


class LoginRequired(Exception):
    """The request has no valid session: the browser goes to the login form (``next`` is
    where it returns to)."""

    def __init__(self, next_path: str, reason: str = ""):
        self.next_path = next_path
        self.reason = reason
        super().__init__(reason or "sign in required")


def safe_next(value: str | None) -> str:
    """A local path to return to after signing in: ``value`` when it is a path on this site
    (starts with one ``/``), else ``/`` (no open redirect to another site)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def login_url(next_path: str) -> str:
    return f"/login?next={quote(safe_next(next_path), safe='/')}"


def principal_from_token(rt: Runtime, token: str | None) -> Principal | None:
    """The principal of an API token (None: no token, or unknown, revoked or expired)."""
    if not token:
        return None
    record = lookup_token(rt.store, token)
    return Principal(record.name, record.role, "token", record.id) if record is not None else None


def current(request: Request, rt: Runtime) -> Principal:
    """The signed-in principal of a dashboard request. Raises :class:`LoginRequired` without a
    valid session (with ``api.auth: false``: the anonymous admin)."""
    if not rt.config.api.auth:
        return Principal("anonymous", Role.admin, "auth-disabled")
    principal = principal_from_token(rt, request.cookies.get(COOKIE))
    if principal is None:
        next_path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        had_cookie = COOKIE in request.cookies
        raise LoginRequired(next_path, "your session ended (the token was revoked or expired); sign in again"
                            if had_cookie else "")
    return principal


def csrf_token(request: Request, rt: Runtime) -> str:
    """The CSRF token for forms of this session (hex): HMAC-SHA256 of a fixed label under the
    session's API token, so it needs no storage and changes with the token."""
    key = request.cookies.get(COOKIE, "").encode() if rt.config.api.auth else _PROCESS_SECRET
    return hmac.new(key or _PROCESS_SECRET, b"heald-dashboard-csrf", hashlib.sha256).hexdigest()


def check_origin(request: Request) -> None:
    """Refuse (403) a request whose ``Origin`` header names another site than this one."""
    origin = request.headers.get("origin")
    if origin is None:  # not every browser sends it on a same-origin form post
        return
    host = request.headers.get("host", "")
    if urlsplit(origin).netloc != host:
        raise HTTPException(403, detail=f"Origin: {origin} is not this site ({host}); cross-site form posts are refused")


def check_csrf(request: Request, rt: Runtime, submitted: str | None) -> None:
    """Refuse (403) a form post without the session's CSRF token or from another origin."""
    check_origin(request)
    if not submitted or not hmac.compare_digest(submitted, csrf_token(request, rt)):
        raise HTTPException(403, detail="csrf: the form's CSRF token is missing or does not match your session; "
                                        "reload the page and try again")


def set_session(response: object, request: Request, token: str) -> None:
    """Set the session cookie holding ``token`` on ``response`` (a Starlette Response)."""
    response.set_cookie(COOKIE, token, max_age=SESSION_MAX_AGE, path="/", httponly=True,  # type: ignore[attr-defined]
                        samesite="strict", secure=request.url.scheme == "https")


def clear_session(response: object) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")  # type: ignore[attr-defined]
