"""``http_request``: call a service's admin API (turn a feature flag off, recycle a connection
pool, drain a queue) — only URLs under ``remedies.http_allowed_urls``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from heald.remedies.base import (
    HealdSelf,
    Remedy,
    RemedyContext,
    RemedyError,
    RemedyParams,
    RemedyResult,
    register,
)
from heald.remedies.base import Target as RemedyTarget

#: Methods RFC 9110 §9.2.2 defines as idempotent: repeating the request has the effect of one.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class HttpCall(BaseModel):
    """One HTTP request: method, URL and an optional JSON body."""

    model_config = ConfigDict(extra="forbid")
    method: Method = "POST"
    url: str = Field(min_length=8, max_length=2000)
    body: Any = Field(default=None, description="a JSON body")

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {v!r}")
        try:
            parse_target(v)  # dot segments, encodings, userinfo…: refused before any plan holds it
        except RemedyError as exc:
            raise ValueError(str(exc)) from None
        return v


class HttpRequestParams(HttpCall, RemedyParams):
    """``url`` must lie under an entry of ``remedies.http_allowed_urls`` (see :func:`allowed`);
    ``undo`` is the request that reverses this one, when there is one."""

    headers: dict[str, str] = Field(default_factory=dict)
    expect_status: list[int] = Field(default_factory=lambda: list(range(200, 300)), min_length=1)
    timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    undo: HttpCall | None = None

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"header name {name[:100]!r}: expected an RFC 9110 token "
                                 f"(letters, digits, !#$%&'*+-.^_`|~)")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by heald's HTTP client from the checked URL and body; "
                                 f"a remedy may not override it")
            if any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F for c in value):
                raise ValueError(f"header {name!r}: its value contains a control character")
        return v


_DEFAULT_PORTS = {"http": 80, "https": 443}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")
#: Headers that decide where a request goes or how its body is framed: never from a remedy's
#: parameters (``Host`` would reach another virtual host behind the allowlisted address).
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade", "te",
                               "proxy-authorization", "x-forwarded-host", "forwarded"})
#: Percent-encodings a server may decode into a path separator or a dot segment — ``.``, ``/``,
#: ``\`` — and ``%`` itself (a double encoding, ``%252e``, decodes to one of those in two steps).
_ENCODED = frozenset({0x2E, 0x2F, 0x5C, 0x25})
_ESCAPE = re.compile(r"%(?P<hex>[0-9A-Fa-f]{2})?")


@dataclass(frozen=True)
class Target:
    """Where a request goes, as httpx will send it: ``scheme`` and ``host`` lowercase, the
    ``port`` (the scheme's default when the URL gives none), the path's ``segments`` (raw, as
    sent: still percent-encoded) and the ``url`` httpx parsed."""

    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]
    url: httpx.URL

    def under(self, prefix: Target) -> bool:
        """Same scheme, host and port, and ``prefix``'s path segments begin this path."""
        n = len(prefix.segments)
        return ((self.scheme, self.host, self.port) == (prefix.scheme, prefix.host, prefix.port)
                and self.segments[:n] == prefix.segments)


def parse_target(url: str, what: str = "url") -> Target:
    """Parse ``url`` strictly, as httpx does (RFC 3986), for :func:`allowed`.

    Refused (RemedyError naming ``what`` and the reason): anything but printable ASCII (control
    characters, spaces, non-ASCII), a backslash, a scheme other than http/https, userinfo
    (``user@``), a fragment, a dot segment (``.``/``..``, also with ``;parameters``) or an empty
    segment in the path, and a path holding ``%2e``, ``%2f``, ``%5c`` or ``%25`` in any case (an
    encoded dot or slash, or a double encoding, that a server could decode into one), a
    malformed escape (``%u002e``) or an encoded control or non-ASCII byte (``%c0%ae``)."""
    bad = next((c for c in url if not 0x21 <= ord(c) <= 0x7E), None)
    if bad is not None:
        raise RemedyError(f"{what} {url[:300]!r}: contains {bad!r}; heald calls only URLs of printable ASCII "
                          f"without spaces")
    if "\\" in url:
        raise RemedyError(f"{what} {url[:300]!r}: contains a backslash")
    if "#" in url:
        raise RemedyError(f"{what} {url[:300]!r}: contains a fragment ('#')")
    scheme, sep, rest = url.partition("://")
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    if not sep or scheme.lower() not in _DEFAULT_PORTS:
        raise RemedyError(f"{what} {url[:300]!r}: expected an http:// or https:// URL")
    if "@" in authority:
        raise RemedyError(f"{what} {url[:300]!r}: contains userinfo ('user@'); heald does not send credentials in URLs")
    raw_path = rest[len(authority):].split("?", 1)[0]
    for m in _ESCAPE.finditer(raw_path):
        byte = int(m.group("hex"), 16) if m.group("hex") else None
        if byte is None or byte in _ENCODED or not 0x20 <= byte < 0x7F:
            raise RemedyError(f"{what} {url[:300]!r}: its path holds {m.group(0)!r}, a malformed or refused "
                              f"percent-encoded byte (refused: '.', '/', '\\', '%' — %2e, %2f, %5c, %25 — and control "
                              f"or non-ASCII bytes); heald does not send what a server could decode into another path")
    segments = raw_path.split("/")[1:] if raw_path else []
    if segments and segments[-1] == "":
        segments = segments[:-1]  # a trailing slash
    for seg in segments:
        name = seg.split(";", 1)[0]  # '..;x' is '..' to servers that strip path parameters (Tomcat)
        if name in ("", ".", ".."):
            raise RemedyError(f"{what} {url[:300]!r}: its path has {'a dot' if name else 'an empty'} segment "
                              f"({seg or '//'!r}); heald does not send a path a server would normalise elsewhere")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise RemedyError(f"{what} {url[:300]!r}: not a valid URL ({exc})") from exc
    if not parsed.host:
        raise RemedyError(f"{what} {url[:300]!r}: has no host")
    sent = parsed.raw_path.decode("ascii").split("?", 1)[0]
    if sent != (raw_path or "/"):  # httpx would send another path than the one checked
        raise RemedyError(f"{what} {url[:300]!r}: httpx would send the path {sent!r}, not {raw_path!r}")
    return Target(parsed.scheme, parsed.host, parsed.port or _DEFAULT_PORTS[parsed.scheme], tuple(segments), parsed)


def allowed(url: str, ctx: RemedyContext) -> httpx.URL:
    """The URL to send, when ``url`` (parsed strictly by :func:`parse_target`) lies under an entry of
    ``remedies.http_allowed_urls``: the same scheme, host and port, and the entry's path
    segments begin the URL's path (``/admin/`` allows ``/admin`` and ``/admin/flags/x``, never
    ``/administrator`` nor ``/admin/../secret``). Send exactly the returned URL. Raises
    RemedyError with the reason."""
    prefixes = ctx.config.remedies.http_allowed_urls
    t = parse_target(url)
    for p in prefixes:
        if t.under(parse_target(p, "remedies.http_allowed_urls entry")):
            return t.url
    raise RemedyError(f"url {url[:300]!r} is not under any of remedies.http_allowed_urls "
                      f"({', '.join(prefixes) or 'none configured'}); heald calls only URLs the configuration allows")


def send(method: str, url: httpx.URL, body: Any, headers: dict[str, str], timeout: float) -> httpx.Response:
    """Send one request to ``url`` (as :func:`allowed` returned it; redirects are never
    followed, so a 3xx answer is a status like any other); raises RemedyError when it cannot
    be sent or gets no answer."""
    try:
        return httpx.request(method, url, json=body, headers={"user-agent": "heald-remedy", **headers},
                             timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise RemedyError(f"{method} {url} failed: {exc.__class__.__name__}: {exc}") from exc


@register
class HttpRequest(Remedy[HttpRequestParams]):
    """Send one HTTP request to an allowed URL and check its status.

    Guard: idempotent methods (GET, PUT, DELETE, …) are safe to repeat; a POST or PATCH carries
    an ``Idempotency-Key`` header (the action's idempotency key, IETF
    draft-ietf-httpapi-idempotency-key-header) so a server that honours it applies a replay
    once. Undo: the ``undo`` request, when the runbook gives one.
    """

    name = "http_request"
    description = "Call an allowed HTTP endpoint (an admin API) and check the answer"
    Params = HttpRequestParams
    has_undo = True

    def target(self, params: HttpRequestParams) -> RemedyTarget:
        return RemedyTarget("url", params.url.split("?")[0])

    def touches_heald(self, params: HttpRequestParams, heald: HealdSelf) -> str | None:
        """A request (or its undo request) to heald's own API address."""
        for url in [params.url, *([params.undo.url] if params.undo is not None else [])]:
            parts = urlsplit(url)
            if heald.is_own_address(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)):
                return f"refused: {url.split('?')[0]} is heald's own API"
        return None

    def apply(self, params: HttpRequestParams, ctx: RemedyContext) -> RemedyResult:
        url = allowed(params.url, ctx)
        if params.undo is not None:
            allowed(params.undo.url, ctx)
        headers = dict(params.headers)
        key = ctx.extra.get("idempotency_key")
        if params.method not in IDEMPOTENT_METHODS and key:
            headers.setdefault("Idempotency-Key", str(key))
        resp = send(params.method, url, params.body, headers, params.timeout_seconds)
        text = resp.text[:500]
        if resp.status_code not in params.expect_status:
            raise RemedyError(f"{params.method} {params.url} answered {resp.status_code}, expected "
                              f"{_statuses(params.expect_status)}: {text}")
        undo = params.undo.model_dump(mode="json") if params.undo is not None else None
        return RemedyResult(f"{params.method} {params.url} → {resp.status_code}: {text}", undo)

    def undo(self, params: HttpRequestParams, ctx: RemedyContext, undo: dict[str, Any]) -> RemedyResult:
        if not undo:
            raise RemedyError("this http_request was given no undo request")
        call = HttpCall.model_validate(undo)
        resp = send(call.method, allowed(call.url, ctx), call.body, {}, params.timeout_seconds)
        if resp.status_code >= 300:
            raise RemedyError(f"undo {call.method} {call.url} answered {resp.status_code}: {resp.text[:300]}")
        return RemedyResult(f"undone: {call.method} {call.url} → {resp.status_code}: {resp.text[:300]}")


def _statuses(codes: list[int]) -> str:
    if codes == list(range(codes[0], codes[-1] + 1)) and len(codes) > 2:
        return f"{codes[0]}–{codes[-1]}"
    return ", ".join(map(str, codes))
