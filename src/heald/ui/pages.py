"""The dashboard's routes: pages, the approval form, sign-in, the event stream.

Each page handler gathers its data from the store (:class:`heald.store.Store`) and renders a
template; ``?partial=1`` renders only the page's live part (what htmx fetches again when the
event stream says something changed). See :mod:`heald.ui` for the list of pages.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from heald import __version__, budgets, pause, remedies
from heald.auth import Principal
from heald.correlate.silences import (
    SilenceError,
    create_silence,
    expire_silence,
    list_silences,
    parse_matchers,
    parse_recurrence,
)
from heald.durations import format_duration, parse_duration
from heald.engine import Runtime, approval_tally, attention
from heald.explain import is_human
from heald.http_limits import MAX_DB_INT, MAX_ID, DbId, HealdRoute
from heald.jsontext import clean
from heald.learn import learned_rows
from heald.matchers import matches_all
from heald.models import IncidentState, Role, utcnow
from heald.policy import count_approvers
from heald.sources import WEBHOOK_SOURCES
from heald.store import InvalidTransition, NotFound
from heald.store.audit import ChainStatus, ChainWatch
from heald.store.probe_state import read_probe_states
from heald.store.retry import retry_transient
from heald.ui import live, session
from heald.ui.charts import Point, trend_svg
from heald.ui.session import LoginRequired

__all__ = ["LoginRequired", "login_redirect", "routes"]

OPEN_STATES = [s for s in IncidentState if not s.terminal]
CLOSED_STATES = [s for s in IncidentState if s.terminal]
NOTICES = {"approve": "Your approval is recorded.", "reject": "Your rejection is recorded; the healing ends, escalated.",
           "repeat": "You had already given a verdict on this decision; an identity counts once.",
           "retry": "heald heals it again, with a new attempt budget.",
           "ack": "Acknowledged: heald stops reminding the channels about it.",
           "resolve": "Resolved by you; it does not count as a heal by heald.",
           "paused": "heald is paused: no remedy is applied anywhere until someone resumes it.",
           "resumed": "heald is resumed: it acts by its policy again.",
           "silenced": "The silence is stored: matching firing signals are recorded but start nothing.",
           "expired": "The silence is expired: matching signals start healings again.",
           "breaker-reset": "The circuit breaker is closed: heald heals this target automatically again."}
#: A human's actions on an open incident (:mod:`heald.engine.attention`), as the form names them.
HUMAN_ACTIONS = ("retry", "ack", "resolve")
#: Security headers of every dashboard page: scripts, styles and connections only from heald.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
                               "object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

TEMPLATES = Path(__file__).parent / "templates"
templates = Jinja2Templates(directory=str(TEMPLATES))


def _when(value: Any) -> str:
    """A timestamp for people with its time zone: ``2025-01-31 12:00:05.123 UTC``, from a
    datetime or ISO text (naive values are UTC, as heald stores them)."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d} UTC"


def _when_tz(value: Any) -> str:
    """A timestamp with its time zone, to the second: ``2025-01-31 12:00:05 UTC`` (from a
    datetime or ISO text; naive values are UTC, as heald stores them)."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S") + " UTC"


def _secs(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.2f} s"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f} %"


def _finalize(value: Any) -> Any:
    """Every ``{{ value }}`` of a template: text stored before heald refused lone surrogates
    is shown with U+FFFD, so one bad record cannot make a page fail."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else str(value)
    cleaned = clean(text)
    if cleaned is text:
        return value
    return type(value)(cleaned) if isinstance(value, str) else cleaned


templates.env.filters.update(when=_when, whenz=_when_tz, secs=_secs, pct=_pct, duration=format_duration)
templates.env.finalize = _finalize
#: A ``Last-Event-ID`` the stream resumes from: ASCII digits only (``str.isdigit`` also takes ``²``).
_EVENT_ID = re.compile(r"[0-9]{1,18}")


#: Page sizes the incidents page offers (and accepts).
PAGE_SIZES = (10, 25, 50, 100)
#: How the services page orders targets: what is down first.
HEALTH_ORDER = {"down": 0, "degraded": 1, "unknown": 2, "up": 3}
#: The kinds of remedy targets (``Target.kind``) a configured target's breakers and leases are
#: kept under, by the services page's kind of target.
TARGET_KEY_KINDS = {"service": ("service", "config", "release"), "container": ("container",),
                    "systemd unit": ("unit",)}
#: The signals and audit entries an incident's page lists (the first ones; it says how many there are).
PAGE_SIGNALS = 100
PAGE_TIMELINE = 200
#: The audit events an incident's page reads whatever their number: its stages, hypotheses,
#: acknowledgement and what a pause or shadow mode held back.
STAGE_EVENTS = ("incident.opened", "incident.transition", "diagnosis.hypotheses", "incident.acknowledged",
                "action.shadowed", "gate.paused")
MAX_STAGE_ENTRIES = 2000
#: The largest page number the incidents page accepts.
MAX_PAGE = 1_000_000
#: A label name a prefilled silence matcher may use (the matcher syntax's, :mod:`heald.matchers`).
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.]{0,99}")
#: At most this many matchers are prefilled from an incident's labels.
MAX_PREFILL = 12


def quote_matcher(name: str, value: str) -> str:
    """``name="value"`` with ``\\`` and ``"`` escaped, as :func:`heald.matchers.parse_matcher` reads it."""
    return f'{name}="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def prefill_matchers(service: str | None, signals: list[dict[str, Any]]) -> list[str]:
    """Matchers that silence signals like an incident's: ``service`` and every label all of its
    ``signals`` (``heald.models.Signal`` as JSON) share with the same value. Labels with a
    name the matcher syntax refuses, control characters or a value over 200 characters are
    left out (labels come from senders: the form must stay one matcher per line)."""
    shared: dict[str, str] | None = None
    for sig in signals:
        labels = {str(k): str(v) for k, v in (sig.get("labels") or {}).items()}
        shared = labels if shared is None else {k: v for k, v in shared.items() if labels.get(k) == v}
    out = [quote_matcher("service", service)] if service and len(service) <= 200 else []
    for name, value in sorted((shared or {}).items()):
        if name == "service" or not _LABEL_NAME.fullmatch(name) or len(value) > 200 or not value:
            continue
        if any(ord(c) < 32 or ord(c) == 127 for c in value) or clean(value) != value:
            continue
        out.append(quote_matcher(name, value))
    return out[:MAX_PREFILL]


class FilterError(ValueError):
    """A filter of the incidents page that cannot be used; the message names the field."""


def _instant(field: str, text: str) -> datetime:
    """``text`` (ISO 8601 date or date and time; without a zone: UTC) as an aware datetime.
    Raises FilterError naming ``field``."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise FilterError(f"{field}: expected a date or time such as 2025-01-31 or 2025-01-31T12:00 (UTC), "
                          f"got {text[:50]!r}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_incident_filters(filters: dict[str, str], page: str) -> dict[str, Any]:
    """The incidents page's query (``state``, ``service``, ``environment``, ``since``,
    ``until``, ``q``, ``size`` and ``page``, as text) as arguments of
    :meth:`heald.store.Store.search_incidents` plus ``page`` and ``size`` (ints).
    ``state``: an incident state, ``open`` or ``closed``. Raises FilterError naming the field."""
    out: dict[str, Any] = {}
    state = filters["state"].strip()
    if state == "open":
        out["states"] = OPEN_STATES
    elif state == "closed":
        out["states"] = CLOSED_STATES
    elif state:
        try:
            out["states"] = [IncidentState(state)]
        except ValueError:
            raise FilterError(f"state: expected open, closed or one of {', '.join(s.value for s in IncidentState)}, "
                              f"got {state[:50]!r}") from None
    for field, limit in (("service", 200), ("environment", 100), ("q", 200)):
        value = filters[field].strip()
        if len(value) > limit:
            raise FilterError(f"{field}: at most {limit} characters, got {len(value)}")
        if clean(value) != value or "\x00" in value:
            raise FilterError(f"{field}: text without NUL characters or lone surrogates")
        out["text" if field == "q" else field] = value or None
    out["since"] = _instant("since", filters["since"]) if filters["since"].strip() else None
    out["until"] = _instant("until", filters["until"]) if filters["until"].strip() else None
    if out["since"] and out["until"] and out["until"] <= out["since"]:
        raise FilterError("until: must be after since")
    size = filters["size"].strip() or "25"
    if size not in {str(n) for n in PAGE_SIZES}:
        raise FilterError(f"size: expected one of {', '.join(map(str, PAGE_SIZES))}, got {size[:50]!r}")
    out["size"] = int(size)
    number = page.strip() or "1"
    if not re.fullmatch(r"[0-9]{1,7}", number) or not 1 <= int(number) <= MAX_PAGE:
        raise FilterError(f"page: expected a page number from 1 to {MAX_PAGE}, got {page[:50]!r}")
    out["page"] = int(number)
    return out


def login_redirect(request: Request, exc: LoginRequired) -> Response:
    """Send a browser without a session to the login form (htmx: a full-page redirect)."""
    target = session.login_url(exc.next_path)
    if request.headers.get("hx-request") == "true":
        return Response(status_code=200, headers={"HX-Redirect": target})
    if request.url.path == "/events":
        return Response("sign in first", status_code=401)
    return RedirectResponse(target, status_code=303)


def _decision_summary(decision: dict[str, Any] | None) -> str:
    if not decision:
        return ""
    cand = decision.get("candidate") or {}
    return f"{cand.get('remedy', '?')} ({cand.get('risk', '?')} risk)"


def routes(rt: Runtime) -> APIRouter:
    """The dashboard's routes over the runtime ``rt``."""
    router = APIRouter(include_in_schema=False, route_class=HealdRoute)
    chain_watch = ChainWatch()  # the audit page verifies only what is new since its last view

    def render(request: Request, name: str, context: dict[str, Any], status: int = 200,
               who: Principal | None = None) -> HTMLResponse:
        ctx = {"request": request, "version": __version__, "who": who, "auth": rt.config.api.auth,
               "csrf": session.csrf_token(request, rt) if who is not None else "",
               "can_approve": who is not None and who.role.allows(Role.approver),
               "can_operate": who is not None and who.role.allows(Role.operator),
               "path": request.url.path, **context}
        response = templates.TemplateResponse(request, name, ctx, status_code=status)
        response.headers.update(SECURITY_HEADERS)
        return response

    def error_page(request: Request, who: Principal | None, status: int, message: str) -> HTMLResponse:
        return render(request, "error.html", {"title": f"Error {status}", "status": status, "message": message},
                      status=status, who=who)

    # -- sign-in ---------------------------------------------------------------------------
    @router.get("/login")
    def login_form(request: Request, next: str = "/") -> Response:  # noqa: A002
        if not rt.config.api.auth:
            return RedirectResponse(session.safe_next(next), status_code=303)
        return render(request, "login.html", {"title": "Sign in", "next": session.safe_next(next), "error": ""})

    @router.post("/login")
    def login(request: Request, token: str = Form(""), next: str = Form("/")) -> Response:  # noqa: A002
        session.check_origin(request)
        target = session.safe_next(next)
        if not rt.config.api.auth:
            return RedirectResponse(target, status_code=303)
        token = token.strip()
        if not token:
            return render(request, "login.html", {"title": "Sign in", "next": target,
                                                  "error": "API token: required (create one with "
                                                           "heald tokens create --role viewer)"}, status=422)
        who = session.principal_from_token(rt, token)
        if who is None:
            return render(request, "login.html", {"title": "Sign in", "next": target,
                                                  "error": "API token: unknown, revoked or expired"}, status=401)
        rt.store.record(actor=who.actor, event="dashboard.signed_in", reason=f"{who.identity} signed in to the "
                        f"dashboard with role {who.role.value}", details={"token_id": who.token_id})
        response = RedirectResponse(target, status_code=303)
        session.set_session(response, request, token)
        return response

    @router.post("/logout")
    def logout(request: Request, csrf: str = Form("")) -> Response:
        who = session.current(request, rt)
        try:
            session.check_csrf(request, rt, csrf)
        except HTTPException as exc:
            return error_page(request, who, exc.status_code, str(exc.detail))
        response = RedirectResponse("/login" if rt.config.api.auth else "/", status_code=303)
        session.clear_session(response)
        return response

    # -- overview --------------------------------------------------------------------------
    def overview_data() -> dict[str, Any]:
        store = rt.store
        by_state = store.count_incidents_by_state()
        day = store.closed_since(utcnow() - timedelta(hours=24))
        closed_day = sum(day.values())
        closed_all = sum(by_state.get(s.value, 0) for s in CLOSED_STATES)
        outcomes = store.incident_outcomes(limit=50)
        waiting = store.pending_approvals(limit=50)  # one set of queries, not a few per incident
        roots = store.identity_roots(v["approver"] for p in waiting for v in p["votes"])
        pending = [{"incident": p["incident"], "decision": p["decision"], "summary": _decision_summary(p["decision"]),
                    "approvals": len(count_approvers(p["votes"], roots)) if p["decision"] else 0} for p in waiting]
        return {
            "attention": store.list_incidents(state=IncidentState.needs_attention, limit=50),
            "open_by_state": [(s.value, by_state.get(s.value, 0)) for s in OPEN_STATES],
            "open_total": sum(by_state.get(s.value, 0) for s in OPEN_STATES),
            "healed_24h": day.get(IncidentState.resolved.value, 0),
            "closed_24h": closed_day,
            "heal_rate_24h": day.get(IncidentState.resolved.value, 0) / closed_day if closed_day else None,
            "heal_rate_all": by_state.get(IncidentState.resolved.value, 0) / closed_all if closed_all else None,
            "closed_all": closed_all,
            "mttr": store.recovery_summary()["median"],
            "chart": trend_svg([Point(o.incident_id, o.time_to_detect_s, o.time_to_recover_s) for o in outcomes]),
            "trend": outcomes,
            "pending": pending,
            "recent": store.list_incidents(limit=25),
            "silences": list_silences(store, unexpired=True, limit=50),
            "breakers": [b for b in budgets.breakers(store) if b["state"] == "open"],
            "leases": [x for x in budgets.leases(store) if not x["expired"]],
        }

    @router.get("/", response_class=HTMLResponse)
    def overview(request: Request, partial: bool = False) -> Response:
        who = session.current(request, rt)
        since = rt.store.last_audit_seq()
        data = {"since": since, **overview_data()}
        if partial:
            return render(request, "_overview_live.html", data, who=who)
        return render(request, "overview.html", {"title": "Overview", "pause": pause.state(rt.store),
                                                 "can_pause": who is not None and who.role.allows(Role.operator),
                                                 "notice": NOTICES.get(request.query_params.get("notice") or ""),
                                                 **data}, who=who)

    @router.post("/pause")
    def pause_form(request: Request, action: str = Form(""), reason: str = Form(""), csrf: str = Form(""),
                   by: str = Form("")) -> Response:
        """The kill switch from the overview: pause (with a reason) or resume every automatic
        action (role operator, CSRF; :mod:`heald.pause`, audited with the human's identity)."""
        who = session.current(request, rt)
        try:
            session.check_csrf(request, rt, csrf)
            if not who.role.allows(Role.operator):
                raise HTTPException(403, detail=f"{who.identity} has role {who.role.value}; pausing or resuming heald "
                                                f"needs role operator or above")
            if action not in ("pause", "resume"):
                raise HTTPException(422, detail=f"action: expected 'pause' or 'resume', got {action[:50]!r}")
            if clean(reason) != reason or clean(by) != by:
                raise HTTPException(422, detail="reason, by: text without NUL characters")
            actor = who.actor
            if not who.authenticated:  # api.auth is off: nothing names the human but the form
                if not by.strip():
                    raise HTTPException(422, detail="by: your name is required when api.auth is false")
                actor = f"user:{by.strip()[:200]}"
            if action == "pause":
                pause.pause(rt.store, actor, reason)
            else:
                pause.resume(rt.store, actor, reason)
                attention.wake_after_resume(rt.store, rt.send)
        except HTTPException as exc:
            return error_page(request, who, exc.status_code, str(exc.detail))
        except ValueError as exc:
            return error_page(request, who, 409 if "not paused" in str(exc) else 422, str(exc))
        return RedirectResponse(f"/?notice={'paused' if action == 'pause' else 'resumed'}", status_code=303)

    # -- incident --------------------------------------------------------------------------
    def incident_data(request: Request, incident_id: int, who: Principal) -> dict[str, Any]:
        # bounded: an incident can hold 100k signals and as many audit entries; the page shows the
        # first ones (saying how many there are) and reads the entries it interprets by event
        d = rt.store.incident_detail(incident_id, signals_limit=PAGE_SIGNALS, timeline_limit=PAGE_TIMELINE)
        inc = d["incident"]
        marked = [e.model_dump(mode="json") for e in rt.store.audit_entries(
            incident_id=incident_id, events=STAGE_EVENTS, limit=MAX_STAGE_ENTRIES)]
        stages = []
        for e in marked:
            if e["event"] == "incident.opened":
                stages.append({"ts": e["ts"], "state": "observing", "reason": e["reason"], "actor": e["actor"]})
            elif e["event"] == "incident.transition":
                stages.append({"ts": e["ts"], "state": e["details"].get("to"), "reason": e["reason"], "actor": e["actor"]})
        for prev, nxt in zip(stages, stages[1:], strict=False):
            prev["duration"] = (datetime.fromisoformat(nxt["ts"]) - datetime.fromisoformat(prev["ts"])).total_seconds()
        hypotheses = [h for e in marked if e["event"] == "diagnosis.hypotheses"
                      for h in e["details"].get("hypotheses", [])]
        evidence = [(dg["reasoner"], line) for dg in d["diagnoses"] for line in dg.get("evidence") or []]
        pending = None
        if inc["state"] == IncidentState.awaiting_approval.value and d["decisions"]:
            last = d["decisions"][-1]
            votes = [a for a in d["approvals"] if a["decision_id"] == last["id"]]
            pending = {"decision": last, "votes": votes, "summary": _decision_summary(last),
                       "approvals": approval_tally(rt.store, incident_id, last["id"]),
                       "mine": next((v for v in votes if v["approver"] == who.identity), None)}
        state = IncidentState(inc["state"])
        actions = [] if state.terminal else [a for a in HUMAN_ACTIONS if (
            a == "ack" or (a == "retry" and state == IncidentState.needs_attention)
            or (a == "resolve" and state in attention.RESOLVABLE))]
        acked = next((e for e in reversed(marked) if e["event"] == "incident.acknowledged"), None)
        would_have = [{"what": e["details"].get("would_have", ""), "why": e["reason"], "ts": e["ts"],
                       "shadow": e["event"] == "action.shadowed"}
                      for e in marked if e["event"] in ("action.shadowed", "gate.paused")]
        humans_then = [e for e in d["timeline"] if e["event"] not in ("dashboard.signed_in",) and is_human(e["actor"])
                       and would_have and e["ts"] > would_have[0]["ts"]]
        return {"d": d, "inc": inc, "stages": stages, "hypotheses": hypotheses, "evidence": evidence,
                "pending": pending, "plan": d["plans"][-1] if d["plans"] else None, "human_actions": actions,
                "acked": acked, "would_have": would_have, "humans_then": humans_then}

    @router.get("/incidents/{incident_id}", response_class=HTMLResponse)
    def incident_page(request: Request, incident_id: DbId, partial: bool = False, notice: str | None = None) -> Response:
        who = session.current(request, rt)
        since = rt.store.last_audit_seq()
        try:
            data = {"since": since, **incident_data(request, incident_id, who)}
        except NotFound:
            return error_page(request, who, 404, f"There is no incident {incident_id}.")
        ctx = {"title": f"Incident #{incident_id}", "notice": NOTICES.get(notice or ""), **data}
        return render(request, "_incident_live.html" if partial else "incident.html", ctx, who=who)

    def refuser(request: Request, incident_id: int, who: Any, htmx: bool) -> Callable[[int, str], Response]:
        """How a refused form on an incident's page answers: (status, message) → the incident's
        live part with the message for htmx (which swaps only 2xx answers), else an error page."""
        def refused(status: int, message: str) -> Response:
            if htmx:
                try:
                    return render(request, "_incident_live.html",
                                  {"error": message, **incident_data(request, incident_id, who)}, who=who)
                except NotFound:
                    pass
            return error_page(request, who, status, message)
        return refused

    @router.post("/incidents/{incident_id}/verdict")
    def verdict(request: Request, incident_id: DbId, verdict: str = Form(""), csrf: str = Form(""),
                comment: str = Form(""), approver: str = Form("")) -> Response:
        who = session.current(request, rt)
        htmx = request.headers.get("hx-request") == "true"

        refused = refuser(request, incident_id, who, htmx)
        try:
            session.check_csrf(request, rt, csrf)
            if not who.role.allows(Role.approver):
                raise HTTPException(403, detail=f"{who.identity} has role {who.role.value}; a verdict needs role "
                                                f"approver or above")
            if verdict not in ("approve", "reject"):
                raise HTTPException(422, detail=f"verdict: expected 'approve' or 'reject', got {verdict[:50]!r}")
            if len(comment) > 5000:
                raise HTTPException(422, detail=f"comment: at most 5000 characters, got {len(comment)}")
            if clean(comment) != comment or clean(approver) != approver:
                raise HTTPException(422, detail="comment, approver: text without NUL characters")
            name = who.identity
            if not who.authenticated:  # api.auth is off: nothing names the approver but the form
                name = approver.strip()
                if not name:
                    raise HTTPException(422, detail="approver: your name is required when api.auth is false")
            result = rt.approve(incident_id, name, verdict, comment.strip())
        except HTTPException as exc:
            return refused(exc.status_code, str(exc.detail))
        except NotFound:
            return error_page(request, who, 404, f"There is no incident {incident_id}.")
        except InvalidTransition as exc:
            return refused(409, f"{exc}. The decision may have been taken already or the approval expired.")
        notice = verdict if result["counted"] else "repeat"
        if htmx:
            data = incident_data(request, incident_id, who)
            return render(request, "_incident_live.html", {"notice": NOTICES[notice], **data}, who=who)
        return RedirectResponse(f"/incidents/{incident_id}?notice={notice}", status_code=303)

    @router.post("/incidents/{incident_id}/act")
    def act(request: Request, incident_id: DbId, action: str = Form(""), csrf: str = Form(""),
            comment: str = Form(""), by: str = Form("")) -> Response:
        """A human's action on an open incident: retry, ack or resolve (role approver, CSRF)."""
        who = session.current(request, rt)
        htmx = request.headers.get("hx-request") == "true"

        refused = refuser(request, incident_id, who, htmx)
        try:
            session.check_csrf(request, rt, csrf)
            if not who.role.allows(Role.approver):
                raise HTTPException(403, detail=f"{who.identity} has role {who.role.value}; acting on an incident "
                                                f"needs role approver or above")
            if action not in HUMAN_ACTIONS:
                raise HTTPException(422, detail=f"action: expected one of {', '.join(HUMAN_ACTIONS)}, got {action[:50]!r}")
            if len(comment) > attention.MAX_COMMENT:
                raise HTTPException(422, detail=f"comment: at most {attention.MAX_COMMENT} characters, got {len(comment)}")
            if clean(comment) != comment or clean(by) != by:
                raise HTTPException(422, detail="comment, by: text without NUL characters")
            actor = who.actor
            if not who.authenticated:  # api.auth is off: nothing names the human but the form
                if not by.strip():
                    raise HTTPException(422, detail="by: your name is required when api.auth is false")
                actor = f"user:{by.strip()[:200]}"
            if action == "retry":
                attention.retry(rt.store, incident_id, actor, comment, rt.send)
            elif action == "ack":
                attention.acknowledge(rt.store, incident_id, actor, comment)
            else:
                attention.resolve(rt.store, incident_id, actor, comment, rt.send)
        except HTTPException as exc:
            return refused(exc.status_code, str(exc.detail))
        except NotFound:
            return error_page(request, who, 404, f"There is no incident {incident_id}.")
        except InvalidTransition as exc:
            return refused(409, f"{exc}.")
        except ValueError as exc:
            return refused(422, str(exc))
        if htmx:
            return render(request, "_incident_live.html",
                          {"notice": NOTICES[action], **incident_data(request, incident_id, who)}, who=who)
        return RedirectResponse(f"/incidents/{incident_id}?notice={action}", status_code=303)

    # -- incidents ---------------------------------------------------------------------------
    @router.get("/incidents", response_class=HTMLResponse)
    def incidents_page(request: Request, state: str = "", service: str = "", environment: str = "", since: str = "",
                       until: str = "", q: str = "", page: str = "1", size: str = "25") -> Response:
        """Every incident, newest first, filtered and paged; a bad filter → 422 naming it."""
        who = session.current(request, rt)
        filters = {"state": state, "service": service, "environment": environment, "since": since,
                   "until": until, "q": q, "size": size}
        try:
            parsed = parse_incident_filters(filters, page)
        except FilterError as exc:
            ctx = {"title": "Incidents", "filters": filters, "error": str(exc), "items": [], "total": 0,
                   **incident_choices()}
            return render(request, "incidents.html", ctx, status=422, who=who)
        number, per_page = parsed.pop("page"), parsed.pop("size")
        items, total = rt.store.search_incidents(**parsed, limit=per_page, offset=(number - 1) * per_page)
        keep = {k: v for k, v in filters.items() if v and not (k == "size" and v == "25")}

        def link(n: int) -> str:
            return "/incidents?" + urlencode({**keep, "page": n})

        pages = max(1, -(-total // per_page))
        ctx = {"title": "Incidents", "filters": filters, "error": "", "items": items, "total": total,
               "page": number, "pages": pages, "first": (number - 1) * per_page + 1, "total_all": total,
               "first_page": link(1),
               "prev": link(number - 1) if number > 1 else None, "next": link(number + 1) if number < pages else None,
               **incident_choices()}
        return render(request, "incidents.html", ctx, who=who)

    def incident_choices() -> dict[str, Any]:
        services = sorted({*rt.config.services, *rt.config.containers, *rt.config.systemd_units})
        return {"state_choices": [("", "any"), ("open", "open (any)"), ("closed", "closed (any)"),
                                  *((s.value, s.value.replace("_", " ")) for s in IncidentState)],
                "service_choices": services, "environment_choices": rt.store.environments() or [rt.config.environment],
                "size_choices": PAGE_SIZES}

    # -- services and targets ------------------------------------------------------------------
    @router.get("/services", response_class=HTMLResponse)
    def services_page(request: Request) -> Response:
        """Every configured target with its current health, the down ones first."""
        who = session.current(request, rt)
        targets = target_health()
        shown = {t["breaker"]["target"] for t in targets if t["breaker"]}
        others = [b for b in budgets.breakers(rt.store) if b["state"] == "open" and b["target"] not in shown]
        return render(request, "services.html", {"title": "Services and targets", "targets": targets,
                                                 "other_breakers": others, "now": utcnow(), "notice": NOTICES.get(
                                                     request.query_params.get("notice") or "")}, who=who)

    def target_health() -> list[dict[str, Any]]:
        cfg = rt.config
        probes_of: dict[tuple[str, str], list[tuple[str, Any]]] = {}
        for svc, scfg in cfg.services.items():
            for p in scfg.probes:
                probes_of.setdefault(("service", svc), []).append((svc, p))
                if p.type == "container" and p.container:
                    probes_of.setdefault(("container", p.container), []).append((svc, p))
                if p.type == "systemd" and p.unit:
                    probes_of.setdefault(("systemd unit", p.unit), []).append((svc, p))
        kinds = [*(("service", n) for n in cfg.services), *(("container", n) for n in cfg.containers),
                 *(("systemd unit", n) for n in cfg.systemd_units)]
        states = read_probe_states(rt.store)
        last = rt.store.last_signal_by_service()
        open_incidents = rt.store.list_incidents(states=OPEN_STATES, limit=1000)
        all_breakers = budgets.breakers(rt.store)
        all_leases = [x for x in budgets.leases(rt.store) if not x["expired"]]
        active = list_silences(rt.store, "active")

        def keys_of(kind: str, name: str) -> set[str]:
            """The remedy target keys (``kind:name``, :class:`heald.remedies.base.Target`) that
            breakers and leases of this target are kept under."""
            return {f"{k}:{name}" for k in TARGET_KEY_KINDS[kind]}

        out = []
        for kind, name in kinds:
            probes = []
            for svc, p in probes_of.get((kind, name), []):
                st = states.get((svc, p.label))
                probes.append({"service": svc, "label": p.label, "type": p.type,
                               "state": st[0] if st else None, "changed": st[1] if st else None})
            owners = {name} | {svc for svc, _ in probes_of.get((kind, name), [])}
            incidents = [i for i in open_incidents if i.service in owners]
            signals = [last[o] for o in owners if o in last]
            silences = []
            for x in active:
                try:
                    if any(matches_all(parse_matchers(x["matchers"]), {"service": o}) for o in sorted(owners)):
                        silences.append(x)
                except ValueError:
                    continue
            keys = keys_of(kind, name)
            mine = sorted((b for b in all_breakers if b["target"] in keys), key=lambda b: b["state"] != "open")
            breaker = mine[0] if mine else None
            lease = next((x for x in all_leases if x["target"] in keys), None)
            firing = any(p["state"] is not None and p["state"].firing for p in probes)
            failing = any(p["state"] is not None and p["state"].failures > 0 for p in probes)
            if firing or (breaker and breaker["state"] == "open") or any(
                    i.state == IncidentState.needs_attention for i in incidents):
                health = "down"
            elif failing or incidents:
                health = "degraded"
            elif not probes or all(p["state"] is None for p in probes):
                health = "unknown"
            else:
                health = "up"
            out.append({"kind": kind, "name": name, "health": health, "probes": probes,
                        "incident": incidents[0] if incidents else None, "open_incidents": len(incidents),
                        "last_signal": max(signals, key=lambda x: x.received_at) if signals else None,
                        "breaker": breaker, "lease": lease, "silences": silences})
        out.sort(key=lambda t: (HEALTH_ORDER[str(t["health"])], str(t["name"])))
        return out

    # -- silences and circuit breakers -----------------------------------------------------------
    def operator_actor(who: Principal, by: str, what: str) -> str:
        """The audit actor of an operator's form (raises HTTPException 403 below operator, 422
        for an unnamed human when ``api.auth`` is off or text with NUL characters)."""
        if not who.role.allows(Role.operator):
            raise HTTPException(403, detail=f"{who.identity} has role {who.role.value}; {what} needs role operator "
                                            f"or above")
        if clean(by) != by or "\x00" in by:
            raise HTTPException(422, detail="by: text without NUL characters")
        if who.authenticated:
            return who.actor
        if not by.strip():  # api.auth is off: nothing names the human but the form
            raise HTTPException(422, detail="by: your name is required when api.auth is false")
        return f"user:{by.strip()[:200]}"

    def silences_page_data(show_all: bool) -> dict[str, Any]:
        rows = list_silences(rt.store)
        return {"silences": [x for x in rows if show_all or x["state"] != "expired"],
                "expired_count": sum(1 for x in rows if x["state"] == "expired"), "show_all": show_all,
                "now": utcnow()}

    @router.get("/silences", response_class=HTMLResponse)
    def silences_page(request: Request, incident: int | None = Query(None, ge=1, le=MAX_ID),
                      service: str = Query("", max_length=200), all: bool = False,  # noqa: A002
                      notice: str | None = None) -> Response:
        """Silences (pending and active; ``all=1``: expired too) and the form to add one,
        prefilled from ``incident``'s labels or a ``service``'s name."""
        who = session.current(request, rt)
        form = {"matchers": "", "duration": "2h", "starts_at": "", "comment": "", "schedule": "", "window": "1h",
                "timezone": "UTC", "by": ""}
        source = ""
        if incident is not None:
            try:
                d = rt.store.incident_detail(incident)
            except NotFound:
                return error_page(request, who, 404, f"There is no incident {incident}.")
            form["matchers"] = "\n".join(prefill_matchers(d["incident"]["service"], d["signals"]))
            form["comment"] = f"incident #{incident}: "
            source = f"incident #{incident}"
        elif service.strip() and clean(service) == service:
            form["matchers"] = quote_matcher("service", service.strip())
            source = f"service {service.strip()}"
        ctx = {"title": "Silences", "form": form, "prefilled_from": source, "incident_id": incident,
               "notice": NOTICES.get(notice or ""), "error": "", "error_field": "", **silences_page_data(all)}
        return render(request, "silences.html", ctx, who=who)

    @router.post("/silences")
    def silence_create(request: Request, matchers: str = Form(""), duration: str = Form(""),
                       starts_at: str = Form(""), comment: str = Form(""), schedule: str = Form(""),
                       window: str = Form(""), timezone: str = Form("UTC"), by: str = Form(""),
                       csrf: str = Form("")) -> Response:
        """Create a silence from the form (role operator, CSRF; audited with the human's
        identity, as ``POST /v1/silences``). A bad field → the form again, 422, naming it."""
        who = session.current(request, rt)
        form = {"matchers": matchers, "duration": duration, "starts_at": starts_at, "comment": comment,
                "schedule": schedule, "window": window, "timezone": timezone, "by": by}
        try:
            session.check_csrf(request, rt, csrf)
            actor = operator_actor(who, by, "silencing signals")
        except HTTPException as exc:
            return error_page(request, who, exc.status_code, str(exc.detail))
        try:
            fields = {"matchers": matchers, "duration": duration, "starts_at": starts_at, "comment": comment,
                      "schedule": schedule, "window": window, "timezone": timezone}
            for name, value in fields.items():
                if len(value) > 5000 or clean(value) != value or "\x00" in value:
                    raise SilenceError(name, "at most 5000 characters of text without NUL characters")
            lines = [line.strip() for line in matchers.splitlines() if line.strip()]
            if len(lines) > 50:
                raise SilenceError("matchers", f"at most 50 matchers, got {len(lines)}")
            start = None
            if starts_at.strip():
                try:
                    start = _instant("starts_at", starts_at)
                except FilterError as exc:
                    raise SilenceError("starts_at", str(exc).split(": ", 1)[1]) from None
            try:
                seconds = parse_duration(duration or "")
            except ValueError as exc:
                raise SilenceError("duration", str(exc)) from None
            recurrence = None
            if schedule.strip():
                try:
                    window_s = parse_duration(window or "")
                except ValueError as exc:
                    raise SilenceError("recurrence.window", str(exc)) from None
                recurrence = parse_recurrence(schedule, window_s, timezone or "UTC")
            create_silence(rt.store, lines, (start or utcnow()) + timedelta(seconds=seconds), starts_at=start,
                           created_by=actor, comment=comment.strip(), recurrence=recurrence)
        except SilenceError as exc:
            ctx = {"title": "Silences", "form": form, "prefilled_from": "", "incident_id": None, "notice": "",
                   "error": f"{exc.field.replace('recurrence.', '')}: {exc.message}", "error_field": exc.field,
                   **silences_page_data(False)}
            return render(request, "silences.html", ctx, status=422, who=who)
        return RedirectResponse("/silences?notice=silenced", status_code=303)

    @router.post("/silences/{silence_id}/expire")
    def silence_expire(request: Request, silence_id: DbId, csrf: str = Form(""), by: str = Form("")) -> Response:
        """Expire a silence now (role operator, CSRF; audited as ``POST /v1/silences/{id}/expire``)."""
        who = session.current(request, rt)
        try:
            session.check_csrf(request, rt, csrf)
            expire_silence(rt.store, silence_id, operator_actor(who, by, "expiring a silence"))
        except HTTPException as exc:
            return error_page(request, who, exc.status_code, str(exc.detail))
        except NotFound:
            return error_page(request, who, 404, f"There is no silence {silence_id}.")
        return RedirectResponse("/silences?notice=expired", status_code=303)

    @router.post("/breakers/reset")
    def breaker_reset(request: Request, target: str = Form(""), comment: str = Form(""), csrf: str = Form(""),
                      by: str = Form("")) -> Response:
        """Close a target's circuit breaker (role operator, CSRF; audited as ``POST
        /v1/breakers/reset``), then back to the services page."""
        who = session.current(request, rt)
        try:
            session.check_csrf(request, rt, csrf)
            actor = operator_actor(who, by, "resetting a circuit breaker")
            if not target.strip() or len(target) > 500 or clean(target) != target or "\x00" in target:
                raise HTTPException(422, detail="target: a breaker's target such as service:shop (at most 500 "
                                                "characters)")
            if len(comment) > 5000 or clean(comment) != comment or "\x00" in comment:
                raise HTTPException(422, detail="comment: at most 5000 characters of text without NUL characters")
            budgets.reset_breaker(rt.store, target, actor, comment.strip())
        except HTTPException as exc:
            return error_page(request, who, exc.status_code, str(exc.detail))
        except NotFound as exc:
            return error_page(request, who, 404, str(exc))
        return RedirectResponse("/services?notice=breaker-reset", status_code=303)

    # -- runbooks and remedies ---------------------------------------------------------------
    @router.get("/runbooks", response_class=HTMLResponse)
    def runbooks(request: Request) -> Response:
        who = session.current(request, rt)
        catalog = []
        for name, remedy in sorted(remedies.CATALOG.items()):
            params = [{"name": f, "type": getattr(info.annotation, "__name__", str(info.annotation)).replace("typing.", ""),
                       "required": info.is_required(), "description": info.description or ""}
                      for f, info in remedy.Params.model_fields.items()]
            catalog.append({"name": name, "description": remedy.description, "risk": remedy.default_risk.value,
                            "undo": remedy.has_undo, "params": params})
        learned = learned_rows(rt.store)
        return render(request, "runbooks.html", {"title": "Runbooks and remedies", "runbooks": rt.runbooks,
                                                 "catalog": catalog, "learned": learned}, who=who)

    # -- audit log -------------------------------------------------------------------------
    @router.get("/audit", response_class=HTMLResponse)
    def audit_log(request: Request, incident: str = "", actor: str = "", event: str = "",
                  before: int | None = Query(None, ge=1, le=MAX_DB_INT), limit: int = Query(100, ge=1, le=1000),
                  partial: bool = False) -> Response:
        who = session.current(request, rt)
        since = rt.store.last_audit_seq()
        error = ""
        incident_id: int | None = None
        if incident.strip():
            number = incident.strip().lstrip("#")
            if re.fullmatch(r"[0-9]{1,10}", number) and int(number) <= MAX_ID:
                incident_id = int(number)
            else:
                error = f"incident: expected an incident number such as 12, got {incident[:50]!r}"
        entries = [] if error else rt.store.search_audit(incident_id=incident_id, actor=actor.strip() or None,
                                                          event=event.strip() or None, before_seq=before, limit=limit)
        filters = {"incident": incident, "actor": actor, "event": event}
        ctx = {"title": "Audit log", "since": since, "entries": entries, "filters": filters, "error": error, "limit": limit,
               "before": before, "chain": chain_status(), "facets": rt.store.audit_facets(),
               "older": entries[-1].seq if len(entries) == limit else None}
        return render(request, "_audit_live.html" if partial else "audit.html", ctx,
                      status=422 if error else 200, who=who)

    @retry_transient
    def chain_status() -> ChainStatus:
        with rt.store.read() as s:
            return chain_watch.check(s)

    # -- sources ---------------------------------------------------------------------------
    @router.get("/sources", response_class=HTMLResponse)
    def sources(request: Request, partial: bool = False) -> Response:
        who = session.current(request, rt)
        since = rt.store.last_audit_seq()
        last = rt.store.last_signal_by_source()
        probes = [{"service": svc, "probe": p} for svc, cfg in rt.config.services.items() for p in cfg.probes]
        hooks = [{"name": name, "signed": hasattr(plugin, "verify"),
                  "secret": bool((c := rt.config.webhooks.get(name)) and c.resolved_secret)}
                 for name, plugin in sorted(WEBHOOK_SOURCES.items())]
        ctx = {"title": "Sources", "since": since, "last": last, "probes": probes, "hooks": hooks, "logs": rt.config.logs,
               "probes_running": rt.probes is not None}
        return render(request, "_sources_live.html" if partial else "sources.html", ctx, who=who)

    # -- live updates ------------------------------------------------------------------------
    @router.get("/events")
    def events(request: Request, incident: int | None = Query(None, ge=1, le=MAX_ID),
               since: int | None = Query(None, ge=0, le=MAX_DB_INT)) -> Response:
        """The live stream; ``since``: the audit sequence number the page was rendered from
        (a reconnecting browser's ``Last-Event-ID`` takes precedence)."""
        session.current(request, rt)
        last_id = request.headers.get("last-event-id", "")
        if _EVENT_ID.fullmatch(last_id):
            since = int(last_id)
        return live.event_stream(request, rt, incident, since)

    return router
