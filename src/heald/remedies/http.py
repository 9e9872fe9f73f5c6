"""``http_request``: call a service's admin API (turn a feature flag off, recycle a connection
pool, drain a queue) — only URLs under ``remedies.http_allowed_urls``."""

from __future__ import annotations

from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from heald.remedies import Remedy, RemedyContext, RemedyError, RemedyParams, RemedyResult, register

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
        return v


class HttpRequestParams(HttpCall, RemedyParams):
    """``url`` must start with a prefix in ``remedies.http_allowed_urls``; ``undo`` is the
    request that reverses this one, when there is one."""

    headers: dict[str, str] = Field(default_factory=dict)
    expect_status: list[int] = Field(default_factory=lambda: list(range(200, 300)), min_length=1)
    timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    undo: HttpCall | None = None


def allowed(url: str, ctx: RemedyContext) -> None:
    """Raises RemedyError unless ``url`` starts with a prefix in ``remedies.http_allowed_urls``."""
    prefixes = ctx.config.remedies.http_allowed_urls
    if not any(url.startswith(p) for p in prefixes):
        raise RemedyError(f"url {url!r} is not under any of remedies.http_allowed_urls "
                          f"({', '.join(prefixes) or 'none configured'}); heald calls only URLs the configuration allows")


def send(method: str, url: str, body: Any, headers: dict[str, str], timeout: float) -> httpx.Response:
    """Send one request; raises RemedyError when it cannot be sent or gets no answer."""
    try:
        return httpx.request(method, url, json=body, headers={"user-agent": "heald-remedy", **headers},
                             timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise RemedyError(f"{method} {url} failed: {exc.__class__.__name__}: {exc}") from exc


@register
class HttpRequest(Remedy):
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

    def target(self, params: HttpRequestParams) -> str:  # type: ignore[override]
        return f"url:{params.url.split('?')[0]}"

    def apply(self, params: HttpRequestParams, ctx: RemedyContext) -> RemedyResult:  # type: ignore[override]
        allowed(params.url, ctx)
        if params.undo is not None:
            allowed(params.undo.url, ctx)
        headers = dict(params.headers)
        key = ctx.extra.get("idempotency_key")
        if params.method not in IDEMPOTENT_METHODS and key:
            headers.setdefault("Idempotency-Key", str(key))
        resp = send(params.method, params.url, params.body, headers, params.timeout_seconds)
        text = resp.text[:500]
        if resp.status_code not in params.expect_status:
            raise RemedyError(f"{params.method} {params.url} answered {resp.status_code}, expected "
                              f"{_statuses(params.expect_status)}: {text}")
        undo = params.undo.model_dump(mode="json") if params.undo is not None else None
        return RemedyResult(f"{params.method} {params.url} → {resp.status_code}: {text}", undo)

    def undo(self, params: HttpRequestParams, ctx: RemedyContext, undo: dict[str, Any]) -> RemedyResult:  # type: ignore[override]
        if not undo:
            raise RemedyError("this http_request was given no undo request")
        call = HttpCall.model_validate(undo)
        allowed(call.url, ctx)
        resp = send(call.method, call.url, call.body, {}, params.timeout_seconds)
        if resp.status_code >= 300:
            raise RemedyError(f"undo {call.method} {call.url} answered {resp.status_code}: {resp.text[:300]}")
        return RemedyResult(f"undone: {call.method} {call.url} → {resp.status_code}: {resp.text[:300]}")


def _statuses(codes: list[int]) -> str:
    if codes == list(range(codes[0], codes[-1] + 1)) and len(codes) > 2:
        return f"{codes[0]}–{codes[-1]}"
    return ", ".join(map(str, codes))
