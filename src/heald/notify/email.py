"""Email over SMTP (:mod:`smtplib`): a plain-text message (headline, state, reason, link) with
the incident's Markdown report attached (:mod:`heald.explain`). Plain SMTP, STARTTLS
(RFC 3207) or implicit TLS, optional AUTH. SMTP replies 4xx are transient (retried), 5xx
permanent (RFC 5321 §4.2.1)."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate

from heald.config import EmailChannelConfig
from heald.notify.base import Notice, NotifyError, TransientNotifyError
from heald.store import Store


def build(channel: EmailChannelConfig, notice: Notice, store: Store) -> EmailMessage:
    """The message: subject ``[heald] <headline>``, a text body, the report as ``incident-N.md``."""
    inc = notice.incident
    msg = EmailMessage()
    msg["Subject"] = f"[heald] {notice.headline}"[:250]
    msg["From"] = channel.from_addr
    msg["To"] = ", ".join(channel.to)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = f"<{notice.delivery_id}@{channel.from_addr.rsplit('@', 1)[1]}>"
    msg["X-Heald-Event"] = notice.event
    msg.set_content("\n".join([
        notice.headline, "",
        f"State:       {inc.state.value}", f"Service:     {inc.service or '-'}",
        f"Category:    {inc.category or 'not diagnosed'}", f"Severity:    {inc.severity.value}",
        f"Environment: {inc.environment}", f"Attempts:    {inc.attempts}", "",
        f"Why: {notice.reason}", "", f"Report: {notice.link}", ""]))
    try:
        from heald.explain import incident_report

        msg.add_attachment(incident_report(store, inc.id), subtype="markdown", filename=f"incident-{inc.id}.md")
    except Exception as exc:  # the message goes out without its attachment; say so in it
        msg.add_attachment(f"the report could not be built: {exc}", filename=f"incident-{inc.id}-report-error.txt")
    return msg


def send(channel: EmailChannelConfig, notice: Notice, store: Store) -> str:
    """Deliver the message to the channel's SMTP server."""
    import os

    msg = build(channel, notice, store)
    timeout = channel.retry.timeout_seconds
    where = f"SMTP server {channel.host}:{channel.port}"
    context = ssl.create_default_context(cafile=str(channel.ca_file) if channel.ca_file else None)
    try:
        smtp: smtplib.SMTP = (smtplib.SMTP_SSL(channel.host, channel.port, timeout=timeout, context=context)
                              if channel.tls else smtplib.SMTP(channel.host, channel.port, timeout=timeout))
        with smtp:
            if channel.starttls:
                smtp.starttls(context=context)
            if channel.username is not None:
                smtp.login(channel.username, os.environ.get(channel.password_env or "", ""))
            refused = smtp.send_message(msg)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        err = f"{where} refused every recipient: " + ", ".join(f"{a} ({c})" for a, (c, _) in exc.recipients.items())
        raise (TransientNotifyError(err) if all(400 <= c < 500 for c in codes) else NotifyError(err)) from exc
    except smtplib.SMTPResponseException as exc:
        reply = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        err = f"{where} answered {exc.smtp_code} {reply}"
        raise (TransientNotifyError(err) if 400 <= exc.smtp_code < 500 else NotifyError(err)) from exc
    except ssl.SSLCertVerificationError as exc:  # a wrong certificate does not fix itself
        raise NotifyError(f"{where}: TLS certificate not trusted: {exc.verify_message}") from exc
    except (smtplib.SMTPException, OSError) as exc:  # connection refused, reset, timeout, TLS failure
        raise TransientNotifyError(f"{where}: {exc.__class__.__name__}: {exc}") from exc
    if refused:
        return f"accepted for {len(channel.to) - len(refused)} of {len(channel.to)} recipients; refused: {', '.join(refused)}"
    return f"accepted for {len(channel.to)} recipient{'s' if len(channel.to) != 1 else ''}"
