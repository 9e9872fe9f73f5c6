"""One POST for the HTTP channels, with heald's error classes."""

from __future__ import annotations

import httpx

from heald import __version__
from heald.notify.base import TransientNotifyError, http_failure


def post(url: str, content: bytes, headers: dict[str, str], timeout: float, what: str) -> str:
    """POST ``content`` to ``url``; returns the answer's body (first 500 characters). Raises
    TransientNotifyError (connection, timeout, 408/429/5xx) or NotifyError (other non-2xx)."""
    try:
        r = httpx.post(url, content=content, timeout=timeout, follow_redirects=False,
                       headers={"Content-Type": "application/json", "User-Agent": f"heald/{__version__}", **headers})
    except httpx.TimeoutException as exc:
        raise TransientNotifyError(f"{what} did not answer within {timeout:g} s") from exc
    except httpx.TransportError as exc:
        raise TransientNotifyError(f"{what} unreachable: {exc.__class__.__name__}: {exc}") from exc
    if not 200 <= r.status_code < 300:
        raise http_failure(r.status_code, r.text, what)
    return f"HTTP {r.status_code} {r.text[:500]}".strip()
