"""The generic webhook: heald POSTs the notice as JSON (:meth:`heald.notify.Notice.as_json`:
``event``, ``delivery_id``, ``state``, ``reason``, ``link``, ``incident``) with the headers
``X-Heald-Event``, ``X-Heald-Delivery`` (the same on a resend: drop duplicates by it) and, when
the channel has a secret, ``X-Heald-Signature-256: sha256=<hex HMAC-SHA256 of the body>`` (the
scheme of GitHub's ``X-Hub-Signature-256``; verify with :func:`signature` and a constant-time
comparison)."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from heald.config import WebhookChannelConfig
from heald.notify._http import post
from heald.notify.base import Notice
from heald.store import Store

SIGNATURE_HEADER = "X-Heald-Signature-256"


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``body`` keyed with ``secret``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send(channel: WebhookChannelConfig, notice: Notice, store: Store) -> str:
    """POST the notice's JSON, signed when the channel has a secret."""
    return send_json(channel, notice.event, notice.delivery_id, notice.as_json())


def send_json(channel: WebhookChannelConfig, event: str, delivery_id: str, payload: dict[str, Any]) -> str:
    """POST ``payload`` as JSON with the headers ``X-Heald-Event: <event>`` and
    ``X-Heald-Delivery: <delivery_id>``, signed when the channel has a secret. Returns the
    answer; raises NotifyError or TransientNotifyError (see :func:`heald.notify._http.post`)."""
    body = json.dumps(payload, sort_keys=True).encode()
    headers = {**channel.headers, "X-Heald-Event": event, "X-Heald-Delivery": delivery_id}
    if (secret := channel.resolved_secret) is not None:
        headers[SIGNATURE_HEADER] = signature(secret, body)
    return post(channel.url, body, headers, channel.retry.timeout_seconds, f"webhook {channel.name}")
