"""What :mod:`heald.notify` and its channel modules share: :class:`Notice`, the events, the
errors and :func:`http_failure`. The channel modules import this, not the package."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from heald.models import Incident

EVENTS = ("escalated", "awaiting_approval", "resolved", "failed", "reminder")


class NotifyError(Exception):
    """A send failed for good (a 4xx answer, a refused address): it is not retried."""


class TransientNotifyError(NotifyError):
    """A send failed in a way that may pass (connection, timeout, 429, 5xx, SMTP 4xx): retried."""


@dataclass(frozen=True)
class Notice:
    """What a channel is told: ``event`` (one of :data:`EVENTS`) on ``incident``, why, and a link."""

    event: str
    incident: Incident
    reason: str
    link: str
    number: int = 0  #: a reminder's number (1, 2, …) since the incident was handed over; 0 otherwise

    @property
    def delivery_id(self) -> str:
        """Stable for the same event of the same incident (and attempt, and reminder number): a
        resend repeats it."""
        base = f"heald-incident-{self.incident.id}-{self.event}-{self.incident.attempts}"
        return f"{base}-{self.number}" if self.number else base

    @property
    def headline(self) -> str:
        """One line: ``Incident #12 escalated: shop is down``."""
        what = {"awaiting_approval": "awaits approval",
                "reminder": f"still needs attention (reminder {self.number})"}.get(self.event, self.event)
        return f"Incident #{self.incident.id} {what}: {self.incident.title}"

    def as_json(self) -> dict[str, Any]:
        """The notice as the generic webhook's JSON body."""
        inc = self.incident
        return {"event": self.event, "delivery_id": self.delivery_id, "reason": self.reason, "link": self.link,
                "state": inc.state.value,
                "incident": {**inc.model_dump(mode="json"), "time_to_detect_s": inc.time_to_detect_s,
                             "time_to_recover_s": inc.time_to_recover_s}}


def http_failure(status: int, body: str, what: str) -> NotifyError:
    """The error for an HTTP answer that is not 2xx: 408, 429 and 5xx are transient."""
    msg = f"{what} answered HTTP {status}: {body[:300]}"
    return TransientNotifyError(msg) if status in (408, 429) or status >= 500 else NotifyError(msg)
