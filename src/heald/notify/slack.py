"""Slack incoming webhooks: a JSON message with ``text`` (the notification's fallback) and
Block Kit ``blocks`` (header, fields, reason, link). Format: https://api.slack.com/messaging/webhooks
and https://api.slack.com/reference/block-kit/blocks. Slack answers ``200 ok``; errors are
4xx with a reason (``invalid_payload``, ``no_service``), rate limits 429."""

from __future__ import annotations

import json
from typing import Any

from heald.config import SlackChannelConfig
from heald.notify._http import post
from heald.notify.base import Notice
from heald.store import Store

_EMOJI = {"escalated": ":rotating_light:", "awaiting_approval": ":raised_hand:", "resolved": ":white_check_mark:",
          "failed": ":x:", "reminder": ":rotating_light:"}


def escape(text: str) -> str:
    """Slack mrkdwn escaping of the three control characters (&, <, >)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def message(notice: Notice) -> dict[str, Any]:
    """The Slack message for ``notice``: {"text": ..., "blocks": [...]}."""
    inc = notice.incident
    fields = [("State", inc.state.value), ("Service", inc.service or "—"), ("Category", inc.category or "not diagnosed"),
              ("Severity", inc.severity.value), ("Environment", inc.environment), ("Attempts", str(inc.attempts))]
    return {
        "text": f"{_EMOJI.get(notice.event, '')} [heald] {escape(notice.headline)}: {escape(notice.reason)}"[:3000],
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": f"[heald] {notice.headline}"[:150], "emoji": True}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}:*\n{escape(v)}"} for k, v in fields]},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Why:* {escape(notice.reason)}"[:3000]}},
            {"type": "context", "elements": [{"type": "mrkdwn",
                                              "text": f"<{notice.link}|Incident #{inc.id} report> · {notice.delivery_id}"}]},
        ],
    }


def send(channel: SlackChannelConfig, notice: Notice, store: Store) -> str:
    """POST the message to the channel's incoming-webhook URL."""
    body = json.dumps(message(notice)).encode()
    return post(channel.resolved_url, body, {}, channel.retry.timeout_seconds, f"Slack ({channel.name})")
