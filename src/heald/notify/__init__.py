"""Escalation and notifications: tell humans what heald could not (or did) settle.

:class:`Notifier` sends a :class:`Notice` (an incident, the event, the reason, a link) to each
configured channel (``notifications.channels`` in heald.yaml, :mod:`heald.config`) that wants
the event: ``escalated`` and its ``reminder`` notices (an incident that still needs attention,
every ``notifications.reminder_interval_seconds``) always, ``awaiting_approval``, ``resolved``
and ``failed`` as each channel's ``events`` say. Channels: a Slack incoming webhook (:mod:`heald.notify.slack`), a
generic JSON webhook with an optional HMAC signature (:mod:`heald.notify.webhook`) and email
over SMTP (:mod:`heald.notify.email`).

Each send is retried with tenacity (bounded attempts, exponential backoff) when the failure is
transient (a connection error, a timeout, HTTP 429 or 5xx, an SMTP 4xx reply); every attempt is
recorded in the audit log as ``notify.sent`` or ``notify.failed``. Nothing here raises into the
healing: a channel that cannot be reached is an audit entry, never a broken workflow. Secrets
(a Slack URL, an HMAC key, an SMTP password) never reach the audit log.

Every notice carries a delivery id that is the same for a resend of the same event (e.g. after
heald restarted mid-send), so a receiver can drop duplicates.
"""

from __future__ import annotations

from typing import Any

import structlog
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from heald.config import ChannelConfig, NotificationsConfig, WebhookChannelConfig
from heald.notify.base import EVENTS, Notice, NotifyError, TransientNotifyError, http_failure
from heald.store import Store

__all__ = ["EVENTS", "Notice", "Notifier", "NotifyError", "TransientNotifyError", "http_failure", "send_once"]

log = structlog.get_logger("heald.notify")

def send_once(channel: ChannelConfig, notice: Notice, store: Store) -> str:
    """One attempt on one channel; returns what the receiver answered. Raises NotifyError or
    TransientNotifyError."""
    if channel.type == "slack":
        from heald.notify import slack
        return slack.send(channel, notice, store)
    if channel.type == "webhook":
        from heald.notify import webhook
        return webhook.send(channel, notice, store)
    from heald.notify import email
    return email.send(channel, notice, store)


class Notifier:
    """Sends notices to the configured channels and records every attempt in the audit log."""

    def __init__(self, config: NotificationsConfig, store: Store):
        self.config = config
        self.store = store

    def notify(self, incident_id: int, event: str, reason: str, number: int = 0) -> list[dict[str, Any]]:
        """Tell every channel that wants ``event`` about incident ``incident_id`` (``number``: a
        reminder's number, part of its delivery id). Returns one result per channel told:
        {"channel", "type", "sent" (bool), "attempts", "detail"}. Never raises (a failure is a
        result and an audit entry)."""
        if event not in EVENTS:
            raise ValueError(f"event: expected one of {', '.join(EVENTS)}, got {event!r}")
        channels = [c for c in self.config.channels if c.wants(event)]
        if not channels:
            return []
        try:
            inc = self.store.get_incident(incident_id)
        except Exception as exc:  # the healing goes on; the failure is logged
            log.exception("notify.incident_unreadable", incident_id=incident_id)
            return [{"channel": c.name, "type": c.type, "sent": False, "attempts": 0, "detail": str(exc)} for c in channels]
        notice = Notice(event=event, incident=inc, reason=reason,
                        link=self.config.link.format(incident_id=incident_id), number=number)
        return [self._send(c, notice) for c in channels]

    def send_audit_checkpoint(self, channel_names: list[str], checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
        """Send a signed audit checkpoint (:mod:`heald.store.checkpoints`) to the named webhook
        channels as ``{"event": "audit.checkpoint", "delivery_id", "checkpoint"}``, retried like
        a notice. Nothing is written to the audit log (an entry would move the head the
        checkpoint names); failures are logged. Returns one {"channel", "sent", "attempts",
        "detail"} per channel. Never raises."""
        from heald.notify.webhook import send_json

        delivery_id = f"heald-audit-checkpoint-{checkpoint.get('key_id')}-{checkpoint.get('n')}"
        body = {"event": "audit.checkpoint", "delivery_id": delivery_id, "checkpoint": checkpoint}
        results = []
        for channel in self.config.channels:
            if channel.name not in channel_names or not isinstance(channel, WebhookChannelConfig):
                continue
            r = channel.retry
            retrying = Retrying(stop=stop_after_attempt(r.attempts),
                                wait=wait_exponential(multiplier=r.backoff_initial_seconds, min=r.backoff_initial_seconds,
                                                      max=r.backoff_max_seconds),
                                retry=retry_if_exception_type(TransientNotifyError), reraise=True)
            attempts = 0
            try:
                for attempt in retrying:
                    with attempt:
                        attempts = attempt.retry_state.attempt_number
                        detail = send_json(channel, "audit.checkpoint", delivery_id, body)
                results.append({"channel": channel.name, "sent": True, "attempts": attempts, "detail": detail})
            except Exception as exc:  # recorded in heald's log, never raised into the checkpointer
                log.warning("audit.checkpoint_not_sent", channel=channel.name, attempts=attempts, error=str(exc))
                results.append({"channel": channel.name, "sent": False, "attempts": attempts, "detail": str(exc)})
        return results

    def _send(self, channel: ChannelConfig, notice: Notice) -> dict[str, Any]:
        r = channel.retry
        attempts = 0
        base = {"channel": channel.name, "type": channel.type, "event": notice.event, "incident_id": notice.incident.id,
                "delivery_id": notice.delivery_id}
        retrying = Retrying(stop=stop_after_attempt(r.attempts),
                            wait=wait_exponential(multiplier=r.backoff_initial_seconds, min=r.backoff_initial_seconds,
                                                  max=r.backoff_max_seconds),
                            retry=retry_if_exception_type(TransientNotifyError), reraise=False)
        try:
            for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    try:
                        detail = send_once(channel, notice, self.store)
                    except TransientNotifyError as exc:
                        self._record_failure(base, attempts, str(exc), final=attempts >= r.attempts, transient=True)
                        raise
                    except NotifyError as exc:
                        self._record_failure(base, attempts, str(exc), final=True, transient=False)
                        return {**base, "sent": False, "attempts": attempts, "detail": str(exc)}
                    except Exception as exc:  # a bug or an unexpected library error: recorded, not raised
                        msg = f"{exc.__class__.__name__}: {exc}"
                        self._record_failure(base, attempts, msg, final=True, transient=False)
                        return {**base, "sent": False, "attempts": attempts, "detail": msg}
            self.store.record(actor="heald", event="notify.sent", incident_id=notice.incident.id,
                              reason=f"{channel.name} ({channel.type}): {notice.event} sent"
                                     + (f" on attempt {attempts}" if attempts > 1 else ""),
                              details={**base, "attempt": attempts, "answer": detail[:500]})
            return {**base, "sent": True, "attempts": attempts, "detail": detail}
        except RetryError as exc:
            last = exc.last_attempt.exception()
            return {**base, "sent": False, "attempts": attempts, "detail": f"gave up after {attempts} attempts: {last}"}

    def _record_failure(self, base: dict[str, Any], attempt: int, error: str, *, final: bool, transient: bool) -> None:
        what = "giving up" if final else "will retry"
        try:
            self.store.record(actor="heald", event="notify.failed", incident_id=base["incident_id"],
                              reason=f"{base['channel']} ({base['type']}): {base['event']} attempt {attempt} failed, "
                                     f"{what}: {error[:300]}",
                              details={**base, "attempt": attempt, "error": error[:2000], "final": final,
                                       "transient": transient})
        except Exception:  # the audit log is down too; the log line is what is left
            log.exception("notify.audit_failed", channel=base["channel"])
