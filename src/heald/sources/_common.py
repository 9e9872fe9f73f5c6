"""Small helpers the webhook sources share: a case-insensitive header read, HMAC-SHA256
signatures, and reading typed fields out of a decoded JSON payload with errors that name the
field."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from heald.sources.base import SourceError


def header(headers: Mapping[str, str], name: str) -> str:
    """The value of header ``name`` (any case; Starlette's headers and plain dicts alike), ``""``
    when absent."""
    value = headers.get(name)
    if value is None:
        lower = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lower), None)
    return value or ""


def hmac_sha256_hex(secret: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``body`` keyed with the UTF-8 bytes of ``secret``."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def any_matches(expected: str, presented: Iterable[str]) -> bool:
    """Does any of ``presented`` equal ``expected``? Each compared in constant time (and all of
    them compared, so the time does not tell which one matched)."""
    ok = False
    for value in presented:
        ok |= hmac.compare_digest(expected.encode(), value.strip().encode())
    return ok


def obj(value: Any, path: str) -> dict[str, Any]:
    """``value`` when it is a JSON object, ``{}`` when absent or null; SourceError otherwise."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SourceError(path, "an object (or null)", type(value).__name__)
    return value


def text(value: Any, path: str, limit: int = 200, required: bool = False) -> str:
    """``value`` as text: a string or number of at most ``limit`` characters, ``""`` when absent
    or null (SourceError when ``required``); SourceError for any other type or a longer one."""
    if value is None or value == "":
        if required:
            raise SourceError(path, "a non-empty string (the field is required)")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SourceError(path, "a string", type(value).__name__)
    out = str(value)
    if len(out) > limit:
        raise SourceError(path, f"at most {limit} characters", out)
    return out


def timestamp(value: Any, path: str) -> datetime | None:
    """An RFC 3339 / ISO 8601 time (``Z`` accepted), None when absent or null; SourceError for
    anything else. A time without a zone is UTC (made so by the Signal model)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise SourceError(path, "an RFC 3339 timestamp", value if isinstance(value, str) else type(value).__name__)
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise SourceError(path, "an RFC 3339 timestamp", value) from exc


def fingerprint(*parts: str) -> str:
    """16 hex digits of SHA-256 over ``parts`` joined by NUL: a source's fingerprint from its
    identifying fields."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]
