"""Authentication and authorization of the HTTP API.

Two ways in:

* **API tokens** with a role (:class:`heald.models.Role`: viewer < operator < approver <
  admin, each including the ones before it), sent as ``Authorization: Bearer <token>``. Only a
  token's sha256 is stored; ``heald tokens create --role R`` prints the token once. A token
  authenticates an identity (its ``name``). The dashboard may carry the token in the ``heald_token`` cookie instead; for
  a request that changes something the cookie only counts with an ``HX-Request`` header, which
  a cross-site form cannot send (so a cookie alone cannot be used for cross-site request
  forgery).
* **Webhook secrets** per source (``webhooks.<source>.secret`` in ``heald.yaml``): a source
  that signs its requests is checked by its plugin's ``verify(headers, body, secret)``
  (GitHub's ``X-Hub-Signature-256``); any other source sends the secret as a bearer token, as
  the HTTP basic-auth password (Alertmanager's ``http_config``) or in
  ``X-Heald-Webhook-Secret``.

**Approvals count humans, not identities.** Whoever makes a token sees it, so an identity is
no proof of a second person: every identity counts as a *root identity* (the human), fixed
when its first token is made. A token made over the API (``POST /v1/tokens``) counts as the
root of the identity that made it; one made with ``heald tokens create`` on the database host
counts as the root of the login that ran it, unless ``--root`` makes the new identity a root of
its own (the person at the database host vouches for a new human; they hold the database
anyway). The first token, made with the default name (your login), is its own root. An
identity never changes root: a token for it that would count as another human is refused.
:func:`heald.policy.count_approvers` counts approvals once per root identity.

Routes declare what they need with ``Depends(require(Role.operator))``; webhook routes call
:func:`webhook_principal`. With ``api.auth: false`` (local development) every request is let
in as the identity ``anonymous`` with the admin role; a configured webhook secret is still
checked. Unauthenticated requests get 401 (with ``WWW-Authenticate: Bearer``), authenticated
ones without the role 403; both say why.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request

from heald.models import ApiToken, Role
from heald.store import Store

if TYPE_CHECKING:
    from heald.engine import Runtime
    from heald.sources import WebhookSource

TOKEN_PREFIX = "heald_"
COOKIE = "heald_token"
SECRET_HEADER = "x-heald-webhook-secret"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,199}$")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Principal:
    """Who made a request: ``identity`` (a token's name, ``source:<name>`` for a webhook, or
    ``anonymous`` with auth off), its ``role``, and ``via`` (``token``, ``webhook-secret``,
    ``signature``, ``auth-disabled``)."""

    identity: str
    role: Role
    via: str
    token_id: int | None = None

    @property
    def actor(self) -> str:
        """The actor name for the audit log."""
        if self.identity.startswith("source:"):
            return self.identity
        return f"user:{self.identity}"

    @property
    def authenticated(self) -> bool:
        """True unless auth is off (then the identity is not proven)."""
        return self.via != "auth-disabled"


def hash_token(token: str) -> str:
    """The sha256 (hex) under which a token is stored. Tokens carry 256 random bits, so a
    plain hash is enough (no password-hashing work factor needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(store: Store, *, name: str, role: Role, created_by: str, sponsor: str | None,
                expires_at: datetime | None = None) -> tuple[ApiToken, str]:
    """Create a token for identity ``name`` with ``role``; returns (the stored record, the
    token). The token is returned only here: heald keeps its hash. ``created_by`` is the actor
    for the audit log; ``sponsor`` the identity (or login) making it, whose root identity
    ``name`` will count as for approvals — None only for a root made on the database host (see
    the module docstring). Raises ValueError for a name that is not 1–200 characters of
    letters, digits and ``_.@+-``, and :class:`heald.store.IdentityConflict` (a ValueError)
    when ``name`` already counts as another root."""
    if not NAME_RE.match(name):
        raise ValueError(f"name: expected 1-200 characters of letters, digits and _.@+- (starting with a letter "
                         f"or digit), got {name!r}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = store.add_token(name=name, role=role, token_hash=hash_token(token), prefix=token[:12],
                             created_by=created_by, sponsor=sponsor, expires_at=expires_at)
    return record, token


def lookup_token(store: Store, token: str) -> ApiToken | None:
    """The active token record for ``token``, or None (unknown, revoked or expired)."""
    record = store.token_by_hash(hash_token(token))
    return record if record is not None and record.active() else None


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail=detail, headers={"WWW-Authenticate": 'Bearer realm="heald"'})


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value (RFC 6750 §2.1), None when
    the value is missing, empty or of another scheme."""
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


def _bearer(headers: Mapping[str, str]) -> str | None:
    return bearer_token(headers.get("authorization"))


def _basic_password(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2] or None


def _runtime(request: Request) -> Runtime:
    rt = getattr(request.app.state, "runtime", None)
    if rt is None:
        raise RuntimeError("the app has no heald runtime (create it with heald.api.app.create_app)")
    return rt


def authenticate(request: Request) -> Principal | None:
    """The principal of a request's API token, or None when it carries none (or, with auth
    off, the anonymous admin). Raises HTTPException 401 for a token that is unknown, revoked
    or expired."""
    rt = _runtime(request)
    if not rt.config.api.auth:
        return Principal("anonymous", Role.admin, "auth-disabled")
    token = _bearer(request.headers)
    if token is None:
        cookie = request.cookies.get(COOKIE)
        if cookie and (request.method in _SAFE_METHODS or request.headers.get("hx-request") == "true"):
            token = cookie
    if token is None:
        return None
    record = lookup_token(rt.store, token)
    if record is None:
        raise _unauthorized("the API token is unknown, revoked or expired")
    return Principal(record.name, record.role, "token", record.id)


def _authorize(principal: Principal | None, role: Role) -> Principal:
    if principal is None:
        raise _unauthorized(f"authentication required: send 'Authorization: Bearer <token>' with a token of role "
                            f"{role.value} or above (heald tokens create --role {role.value})")
    if not principal.role.allows(role):
        raise HTTPException(403, detail=f"{principal.identity} has role {principal.role.value}; "
                                        f"this needs role {role.value} or above")
    return principal


def require(role: Role | str) -> Callable[[Request], Principal]:
    """A FastAPI dependency that lets in only principals with ``role`` (or above) and returns
    the :class:`Principal`: ``who: Principal = Depends(require(Role.operator))``."""
    needed = Role(role)

    def dependency(request: Request) -> Principal:
        return _authorize(authenticate(request), needed)

    dependency.__name__ = f"require_{needed.value}"
    return dependency


def webhook_principal(request: Request, source: str, plugin: WebhookSource, body: bytes) -> Principal:
    """Authenticate a request to ``POST /v1/webhooks/<source>`` (see the module docstring).

    With a secret configured for ``source``: a signing plugin (:attr:`WebhookSource.signed`) must
    verify the signature, any other source must present the secret; a request that does not
    may still come in with an API token of role operator. Without a secret: an operator token
    (or auth off). Raises HTTPException 401/403.
    """
    rt = _runtime(request)
    cfg = rt.config.webhooks.get(source)
    secret = cfg.resolved_secret if cfg is not None else None
    if secret:
        if plugin.signed:
            if plugin.verify(request.headers, body, secret):
                return Principal(f"source:{source}", Role.operator, "signature")
            problem = f"webhook source {source}: the request's signature is missing or does not match its secret"
        else:
            presented = (_bearer(request.headers) or _basic_password(request.headers)
                         or request.headers.get(SECRET_HEADER))
            if presented is not None and hmac.compare_digest(presented.encode(), secret.encode()):
                return Principal(f"source:{source}", Role.operator, "webhook-secret")
            problem = (f"webhook source {source}: send its secret as a bearer token, as the basic-auth password "
                       f"or in X-Heald-Webhook-Secret")
        if not rt.config.api.auth:
            raise _unauthorized(problem)
        try:
            principal = authenticate(request)
        except HTTPException:
            principal = None
        if principal is None:
            raise _unauthorized(problem)
        return _authorize(principal, Role.operator)
    return _authorize(authenticate(request), Role.operator)
