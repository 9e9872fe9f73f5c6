"""Notifications against real receivers on loopback: Slack's incoming webhook (an HTTP server
answering as Slack does), a generic signed webhook, and SMTP (aiosmtpd), with retries and every
attempt in the audit log."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import ssl
from pathlib import Path
from typing import Any

import pytest

from heald import correlate
from heald.config import ConfigError, NotificationsConfig, load_config
from heald.models import IncidentState, Signal
from heald.notify import Notifier
from heald.store import Store
from tests.conftest import free_port, make_config, wait_for
from tests.engine.test_workflow import alert, sleeper_config, terminal

FAST = {"attempts": 3, "backoff_initial_seconds": 0.01, "backoff_max_seconds": 0.05, "timeout_seconds": 2}
SECRET = "0123456789abcdef-secret"


@pytest.fixture
def incident(tmp_path: Path) -> tuple[Store, int]:
    """A real store (SQLite file) with one escalated incident."""
    store = Store(f"sqlite:///{tmp_path / 'heald.db'}")
    store.migrate()
    with store.tx() as s:
        r = correlate.ingest(s, Signal(source="test", service="shop", summary="shop is down <b>&</b>",
                                       labels={"alertname": "ShopDown", "service": "shop"}), make_config(tmp_path))
    store.transition(r.incident_id, IncidentState.escalated, reason="confidence 0.50 is below 0.70")
    yield store, r.incident_id
    store.close()


def notifier(store: Store, *channels: dict[str, Any]) -> Notifier:
    cfg = NotificationsConfig.model_validate({"channels": [{"retry": FAST, **c} for c in channels],
                                              "link": "https://heald.example/incidents/{incident_id}"})
    return Notifier(cfg, store)


def audit(store: Store, inc: int, *events: str) -> list[Any]:
    return [e for e in store.audit_entries(incident_id=inc) if e.event in events]


def test_slack_message_has_text_blocks_and_link(incident, receiver) -> None:  # type: ignore[no-untyped-def]
    store, inc = incident
    [result] = notifier(store, {"type": "slack", "name": "ops", "url": receiver.url}).notify(
        inc, "escalated", "confidence 0.50 is below 0.70")
    assert result["sent"] and result["attempts"] == 1
    [req] = receiver.requests
    assert req.headers["content-type"] == "application/json"
    body = req.json()
    assert set(body) == {"text", "blocks"}
    assert f"Incident #{inc} escalated: shop is down" in body["text"] and "confidence 0.50" in body["text"]
    header, fields, why, context = body["blocks"]
    assert header["type"] == "header" and header["text"]["type"] == "plain_text"
    assert {"type": "mrkdwn", "text": "*State:*\nescalated"} in fields["fields"]
    assert {"type": "mrkdwn", "text": "*Service:*\nshop"} in fields["fields"]
    assert why["text"]["text"] == "*Why:* confidence 0.50 is below 0.70"
    assert f"<https://heald.example/incidents/{inc}|Incident #{inc} report>" in context["elements"][0]["text"]
    assert "shop is down &lt;b&gt;&amp;&lt;/b&gt;" in body["text"]  # mrkdwn: escaped
    assert header["text"]["text"].endswith("shop is down <b>&</b>")  # plain_text: as is
    [sent] = audit(store, inc, "notify.sent")
    assert sent.details["channel"] == "ops" and sent.details["type"] == "slack" and sent.details["attempt"] == 1
    assert receiver.url not in str(sent.details) and receiver.url not in sent.reason  # the URL is a secret
    assert store.verify_audit().intact


def test_webhook_that_fails_twice_is_retried_and_every_attempt_audited(incident, receiver) -> None:  # type: ignore[no-untyped-def]
    store, inc = incident
    receiver.statuses = [503, 502]
    [result] = notifier(store, {"type": "webhook", "name": "pager", "url": receiver.url, "secret": SECRET,
                                "headers": {"X-Team": "sre"}}).notify(inc, "escalated", "attempt budget spent")
    assert result["sent"] and result["attempts"] == 3
    assert len(receiver.requests) == 3
    assert len({r.headers["x-heald-delivery"] for r in receiver.requests}) == 1  # one delivery id: dedupable
    last = receiver.requests[-1]
    expected = "sha256=" + hmac.new(SECRET.encode(), last.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(last.headers["x-heald-signature-256"], expected)
    assert last.headers["x-heald-event"] == "escalated" and last.headers["x-team"] == "sre"
    body = last.json()
    assert body["event"] == "escalated" and body["state"] == "escalated" and body["reason"] == "attempt budget spent"
    assert body["link"] == f"https://heald.example/incidents/{inc}"
    assert body["incident"]["id"] == inc and body["incident"]["service"] == "shop"
    failed = audit(store, inc, "notify.failed")
    assert [(e.details["attempt"], e.details["final"], e.details["transient"]) for e in failed] == [
        (1, False, True), (2, False, True)]
    assert "HTTP 503" in failed[0].reason and "will retry" in failed[0].reason
    [sent] = audit(store, inc, "notify.sent")
    assert sent.details["attempt"] == 3 and "on attempt 3" in sent.reason
    assert SECRET not in str([e.details for e in failed + [sent]])


def test_a_permanent_refusal_is_not_retried(incident, receiver) -> None:  # type: ignore[no-untyped-def]
    store, inc = incident
    receiver.statuses = [400]
    [result] = notifier(store, {"type": "slack", "name": "ops", "url": receiver.url}).notify(inc, "escalated", "why")
    assert not result["sent"] and result["attempts"] == 1 and len(receiver.requests) == 1
    [failed] = audit(store, inc, "notify.failed")
    assert failed.details["final"] and not failed.details["transient"] and "invalid_payload" in failed.reason


def test_an_unreachable_channel_gives_up_after_its_bound_and_never_raises(incident) -> None:  # type: ignore[no-untyped-def]
    store, inc = incident
    dead = f"http://127.0.0.1:{free_port()}/hook"
    [result] = notifier(store, {"type": "webhook", "name": "gone", "url": dead}).notify(inc, "escalated", "why")
    assert not result["sent"] and result["attempts"] == 3 and "gave up after 3 attempts" in result["detail"]
    failed = audit(store, inc, "notify.failed")
    assert [e.details["final"] for e in failed] == [False, False, True] and "unreachable" in failed[0].reason
    assert audit(store, inc, "notify.sent") == []


def test_channels_are_told_only_the_events_they_want_and_escalation_always(incident, receiver) -> None:  # type: ignore[no-untyped-def]
    store, inc = incident
    n = notifier(store, {"type": "webhook", "name": "resolved-only", "url": receiver.url, "events": ["resolved"]})
    assert n.notify(inc, "awaiting_approval", "x") == []
    assert n.notify(inc, "failed", "x") == []
    assert [r["sent"] for r in n.notify(inc, "resolved", "healed")] == [True]
    assert [r["sent"] for r in n.notify(inc, "escalated", "x")] == [True]
    assert [r.headers["x-heald-event"] for r in receiver.requests] == ["resolved", "escalated"]
    with pytest.raises(ValueError, match="event: expected one of"):
        n.notify(inc, "exploded", "x")


def test_email_over_smtp_with_login_and_the_report_attached(incident, smtp, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store, inc = incident
    box, port = smtp
    monkeypatch.setenv("HEALD_TEST_SMTP_PASSWORD", "s3cret-pass")
    [result] = notifier(store, {"type": "email", "name": "mail", "host": "127.0.0.1", "port": port,
                                "username": "heald", "password_env": "HEALD_TEST_SMTP_PASSWORD",
                                "from_addr": "heald@example.com", "to": ["ops@example.com", "sre@example.com"]}
                        ).notify(inc, "escalated", "confidence 0.50 is below 0.70")
    assert result["sent"], result
    assert box.logins == ["heald"]
    [env] = box.messages
    assert env.mail_from == "heald@example.com" and env.rcpt_tos == ["ops@example.com", "sre@example.com"]
    msg = email.message_from_bytes(env.content, policy=email.policy.default)
    assert msg["Subject"] == f"[heald] Incident #{inc} escalated: shop is down <b>&</b>"
    assert msg["Message-ID"] == f"<heald-incident-{inc}-escalated-0@example.com>"
    body = msg.get_body(preferencelist=("plain",)).get_content()
    assert "Why: confidence 0.50 is below 0.70" in body and f"https://heald.example/incidents/{inc}" in body
    [report] = [p for p in msg.iter_attachments() if p.get_filename() == f"incident-{inc}.md"]
    assert report.get_content().startswith(f"# Incident #{inc}: shop is down")
    assert "s3cret-pass" not in str([e.details for e in store.audit_entries(incident_id=inc)])


def test_email_retries_a_4xx_reply_and_not_a_5xx(incident, smtp) -> None:  # type: ignore[no-untyped-def]
    store, inc = incident
    box, port = smtp
    channel = {"type": "email", "name": "mail", "host": "127.0.0.1", "port": port, "from_addr": "heald@example.com",
               "to": ["ops@example.com"]}
    box.fail_with = ["451 4.3.0 Try again later", "421 4.7.0 Busy"]
    [ok] = notifier(store, channel).notify(inc, "escalated", "why")
    assert ok["sent"] and ok["attempts"] == 3 and box.attempts == 3 and len(box.messages) == 1
    assert [e.details["attempt"] for e in audit(store, inc, "notify.failed")] == [1, 2]
    box.fail_with = ["554 5.7.1 Rejected"]
    [bad] = notifier(store, channel).notify(inc, "escalated", "why")
    assert not bad["sent"] and bad["attempts"] == 1 and "554" in bad["detail"]


def test_email_with_starttls_verifies_the_server(incident, tls_cert) -> None:  # type: ignore[no-untyped-def]
    from tests.notify.conftest import Mailbox, smtp_server

    store, inc = incident
    cert, key = tls_cert
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    box = Mailbox()
    c = smtp_server(box, tls_context=ctx, require_starttls=True)
    try:
        channel = {"type": "email", "name": "mail", "host": "127.0.0.1", "port": c.port, "from_addr": "h@example.com",
                   "to": ["ops@example.com"]}
        [plain] = notifier(store, channel).notify(inc, "escalated", "why")  # the server demands STARTTLS
        assert not plain["sent"] and len(box.messages) == 0
        [untrusted] = notifier(store, {**channel, "starttls": True}).notify(inc, "escalated", "why")
        assert not untrusted["sent"] and untrusted["attempts"] == 1 and "not trusted" in untrusted["detail"]
        [ok] = notifier(store, {**channel, "starttls": True, "ca_file": str(cert)}).notify(inc, "escalated", "why")
        assert ok["sent"], ok
        assert len(box.messages) == 1
    finally:
        c.stop()


def test_bad_channel_configuration_names_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "heald.yaml"
    cfg.write_text("notifications:\n  channels:\n    - {type: email, name: mail, host: smtp, from_addr: heald@x.org,"
                   " to: [not-an-address]}\n")
    with pytest.raises(ConfigError, match=r"notifications\.channels\.0\.email\.to.*email address"):
        load_config(cfg)
    cfg.write_text("notifications:\n  channels:\n    - {type: slack, name: ops}\n")
    with pytest.raises(ConfigError, match="exactly one of 'url' or 'url_env'"):
        load_config(cfg)
    cfg.write_text("notifications:\n  channels:\n    - {type: pager, name: x}\n")
    with pytest.raises(ConfigError, match="notifications.channels.0"):
        load_config(cfg)
    cfg.write_text("notifications:\n  link: 'http://x/{id}'\n")
    with pytest.raises(ConfigError, match=r"only placeholder is \{incident_id\}"):
        load_config(cfg)


def test_the_engine_notifies_approval_and_escalation(tmp_path: Path, start_runtime, receiver) -> None:  # type: ignore[no-untyped-def]
    cfg = sleeper_config(tmp_path, risk="medium")
    cfg.notifications = NotificationsConfig.model_validate({"channels": [
        {"type": "webhook", "name": "hook", "url": receiver.url, "events": ["awaiting_approval", "resolved"], "retry": FAST},
        {"type": "webhook", "name": "down", "url": f"http://127.0.0.1:{free_port()}/x", "retry": FAST}]})
    rt = start_runtime(cfg, run_probes=False)
    inc_id = rt.ingest(alert()).incident_id
    wait_for(lambda: receiver.requests, what="the approval notice")
    [req] = receiver.requests
    assert req.json()["event"] == "awaiting_approval" and "restart_process waits for 1 approval" in req.json()["reason"]
    rt.approve(inc_id, "carol", "reject", "not now")
    done = wait_for(lambda: terminal(rt, inc_id), what="escalation")
    assert done.state == IncidentState.needs_attention  # a channel that is down did not stop the healing
    wait_for(lambda: len(receiver.requests) == 2, what="the escalation notice")
    assert receiver.requests[1].json()["reason"].startswith("rejected by carol: not now. The target still fails")
    failed = [e for e in rt.store.audit_entries(incident_id=inc_id) if e.event == "notify.failed"]
    assert {e.details["channel"] for e in failed} == {"down"} and any(e.details["final"] for e in failed)
    sent = [e for e in rt.store.audit_entries(incident_id=inc_id) if e.event == "notify.sent"]
    assert [(e.details["channel"], e.details["event"]) for e in sent] == [("hook", "awaiting_approval"), ("hook", "escalated")]
