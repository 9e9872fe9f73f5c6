"""Explain: a human-readable Markdown report of one incident.

:func:`incident_report` reads everything the store holds about an incident and writes it as
Markdown (CommonMark with GitHub-style tables), in the order of the pipeline: what was seen
(the signals), the hypothesis (diagnosis, confidence, reasoner, evidence), the decision and
why (plan, gate, approvals), what was done (actions and their output), the verification, the
outcome with its timings (time to detect, time to recover) and a summary of the audit entries.
``heald incident ID --report`` prints it and ``GET /v1/incidents/{id}/report`` serves it
(``text/markdown``). The report is derived from the store on demand, so it is the same for the
CLI, the API and the dashboard, and an open incident gets a report of how far it got.

Signal text is data from outside heald: it is written into table cells with ``|`` and line
breaks escaped, and into fenced blocks whose fence is longer than any backtick run inside, so
it cannot change the report's structure.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from heald.models import AuditEntry, Incident, IncidentState
from heald.store import Store

#: Bounds on what one report shows (a long-lived incident can have thousands of signals).
MAX_SIGNALS = 50
MAX_OUTPUT_CHARS = 2000
MAX_TIMELINE = 200
#: The audit events the report's sections read (whatever the number of the incident's entries).
INTERPRETED_EVENTS = ("diagnosis.hypotheses", "action.undone", "action.undo_failed", "action.shadowed",
                      "gate.paused", "action.held")


#: Audit events that mean heald did not act where it would have (shadow mode, the pause switch).
UNAPPLIED_EVENTS = ("action.shadowed", "gate.paused", "action.held")
#: Events of humans that are not something done about an incident.
_NOT_HUMAN_ACTIONS = ("dashboard.signed_in",)


def is_human(actor: str) -> bool:
    """Whether an audit ``actor`` is a person: ``user:<identity>`` (API token or dashboard) or
    ``cli:<login>`` (heald's own CLI entry points, ``cli:heal-ci``, are heald)."""
    return actor.startswith("user:") or (actor.startswith("cli:") and not actor.startswith("cli:heal"))


def human_followups(entries: list[AuditEntry]) -> list[AuditEntry]:
    """What humans did about an incident after heald first held back (``entries``: its audit
    entries, oldest first): their entries from the first of :data:`UNAPPLIED_EVENTS` on, in
    order. Empty when heald never held back or nobody acted yet."""
    first = next((i for i, e in enumerate(entries) if e.event in UNAPPLIED_EVENTS), None)
    if first is None:
        return []
    return [e for e in entries[first + 1:] if is_human(e.actor) and e.event not in _NOT_HUMAN_ACTIONS]


def incident_report(store: Store, incident_id: int) -> str:
    """The Markdown report of incident ``incident_id``. Raises :class:`heald.store.NotFound`."""
    inc = store.get_incident(incident_id)
    # bounded however long the history: the entries the sections interpret, read by event
    entries = store.audit_entries(incident_id=incident_id, events=INTERPRETED_EVENTS, limit=10_000)
    parts = [
        _header(inc),
        _seen(store, inc),
        _hypothesis(store, inc, entries),
        _decision(store, inc, entries),
        _done(store, inc, entries),
        _verification(store, inc),
        _outcome(store, inc),
        _audit(store, inc),
    ]
    return "\n\n".join(p.rstrip() for p in parts if p) + "\n"


# -- sections ---------------------------------------------------------------------------------

def _header(inc: Incident) -> str:
    lines = [f"# Incident #{inc.id}: {_inline(inc.title)}",
             f"**State:** {inc.state.value}" + (" (still open: this report shows how far the healing got)"
                                                 if not inc.state.terminal else ""),
             f"**Service:** {_inline(inc.service or '—')} · **Environment:** {_inline(inc.environment)} · "
             f"**Severity:** {inc.severity.value} · **Category:** {_inline(inc.category or 'not diagnosed')} · "
             f"**Attempts:** {inc.attempts}"]
    if inc.closed_reason and inc.state == IncidentState.needs_attention:
        lines.append(f"**Needs a human because:** {_inline(inc.closed_reason)} (the target still fails)")
    elif inc.closed_reason:
        lines.append(f"**Closed because:** {_inline(inc.closed_reason)}")
    return "\n\n".join(lines)


def _seen(store: Store, inc: Incident) -> str:
    counts = store.count_signals_by_status(inc.id)
    total = sum(counts.values())
    signals = store.signals_for(inc.id, limit=MAX_SIGNALS)
    out = ["## What was seen", "",
           f"{total} signal{'s' if total != 1 else ''} "
           f"({counts.get('firing', 0)} firing, "
           f"{counts.get('resolved', 0)} resolved), grouped by `{_code(inc.group_key)}`.",
           ""]
    if not signals:
        return "\n".join(out[:2] + ["No signals are stored for this incident."])
    shown = signals[:MAX_SIGNALS]
    out += ["| received | source | kind | status | severity | summary |", "|---|---|---|---|---|---|"]
    for s in shown:
        summary = s.summary or ", ".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        if s.suppressed_by:
            summary += f" (suppressed: {s.suppressed_by})"
        out.append(f"| {_ts(s.received_at)} | {_cell(s.source)} | {_cell(s.kind)} | {s.status.value} | "
                   f"{s.severity.value} | {_cell(summary, 300)} |")
    if total > len(shown):
        out.append(f"\n… and {total - len(shown)} more signals (`GET /v1/incidents/{inc.id}/signals` lists all).")
    first = signals[0]
    if first.labels:
        out += ["", "Labels of the first signal: " + ", ".join(f"`{_code(k)}={_code(v)}`" for k, v in sorted(first.labels.items()))]
    return "\n".join(out)


def _hypothesis(store: Store, inc: Incident, entries: list[AuditEntry]) -> str:
    diagnoses = store.diagnoses_for(inc.id)
    out = ["## Hypothesis", ""]
    if not diagnoses:
        return "\n".join(out + ["No diagnosis was made."])
    d = diagnoses[-1]
    out += [f"**{_inline(d.category)}** with confidence **{d.confidence:.2f}**, by the `{_code(d.reasoner)}` reasoner"
            + (f" (runbook `{_code(d.runbook)}`)" if d.runbook else "") + ".", ""]
    if d.explanation:
        out += [_quote(d.explanation), ""]
    if d.evidence:
        out += ["Evidence:", ""] + [f"- {_inline(e, 500)}" for e in d.evidence[:20]] + [""]
    others = [e for e in entries if e.event == "diagnosis.hypotheses"]
    if others:
        hyps = others[-1].details.get("hypotheses", [])
        if hyps:
            out += ["Every reasoner's hypothesis:", ""]
            out += [f"- `{_code(str(h.get('reasoner')))}`: {_inline(str(h.get('category')))} "
                    f"({float(h.get('confidence', 0)):.2f})" for h in hyps]
            out.append("")
        for note in others[-1].details.get("notes", []):
            out.append(f"- note: {_inline(str(note), 300)}")
    if len(diagnoses) > 1:
        out += ["", f"Diagnosed {len(diagnoses)} times (once per attempt): "
                + ", ".join(f"{_inline(x.category)} ({x.confidence:.2f})" for x in diagnoses) + "."]
    return "\n".join(out)


def _decision(store: Store, inc: Incident, entries: list[AuditEntry]) -> str:
    plans = store.plans_for(inc.id)
    decisions = store.decisions_for(inc.id)
    approvals = store.approvals_for(inc.id)
    out = ["## Decision", ""]
    if plans:
        plan = plans[-1]
        out += [f"The last plan ranked {len(plan.candidates)} candidate remed{'ies' if len(plan.candidates) != 1 else 'y'}"
                + (" (Thompson draws from the learned success rates):" if any(c.score is not None for c in plan.candidates)
                   else " (no history for these remedies: the runbook's order):"), "",
                "| # | remedy | risk | runbook | learned success rate | samples | score |",
                "|---|---|---|---|---|---|---|"]
        for i, c in enumerate(plan.candidates, 1):
            out.append(f"| {i} | {_cell(c.remedy)} | {c.risk.value} | {_cell(c.runbook or '—')} | "
                       f"{'—' if c.success_rate is None else f'{c.success_rate:.0%}'} | {c.samples} | "
                       f"{'—' if c.score is None else f'{c.score:.3f}'} |")
        out.append("")
    if not decisions:
        return "\n".join(out + ["The gate made no decision."])
    for n, d in enumerate(decisions, 1):
        cand = d.get("candidate") or {}
        what = f"`{_code(cand['remedy'])}` {_params(cand.get('params', {}))}" if cand else "no remedy"
        need = f", {d['required_approvals']} approval{'s' if d['required_approvals'] != 1 else ''} required" \
            if d["kind"] == "approval" else ""
        out.append(f"{n}. **{d['kind']}** for {what}{need}: {_inline(d['reason'])}")
        for a in (a for a in approvals if a["decision_id"] == d["id"]):
            out.append(f"   - {a['verdict']} by **{_inline(a['approver'])}** at {_ts(a['created_at'])}"
                       + (f": {_inline(a['comment'])}" if a["comment"] else ""))
    entries = list(reversed(store.search_audit(incident_id=inc.id, limit=1000)))
    unapplied = [e for e in entries if e.event in UNAPPLIED_EVENTS]
    if unapplied:
        out.append("")
    for e in unapplied:  # shadow mode or the kill switch (heald.pause): what heald would have done
        why = {"action.shadowed": "shadow mode", "gate.paused": "heald was paused",
               "action.held": "heald was paused before it acted"}[e.event]
        what = e.details.get("would_have") or f"{e.details.get('remedy')} {e.details.get('params', {})}"
        out.append(f"- **would have**: `{_code(str(what))}` ({why}, {_ts(e.ts)}); nothing was applied")
    if unapplied:
        humans = human_followups(entries)
        out += ["", "What humans then did:" if humans else "What humans then did: nothing recorded yet."]
        out += [f"- {_ts(e.ts)} **{_inline(e.actor)}** `{_code(e.event)}`: {_inline(e.reason, 500)}" for e in humans]
    return "\n".join(out)


def _done(store: Store, inc: Incident, entries: list[AuditEntry]) -> str:
    actions = store.actions_for(inc.id)
    out = ["## What was done", ""]
    if not actions:
        return "\n".join(out + ["No remedy was applied."])
    undone = {e.details.get("action_id"): e for e in entries if e.event in ("action.undone", "action.undo_failed")}
    for a in actions:
        took = f" in {(a.finished_at - a.started_at).total_seconds():.2f} s" if a.started_at and a.finished_at else ""
        out.append(f"### Attempt {a.attempt}: `{_code(a.remedy)}` {_params(a.params)} — {a.status.value}{took}")
        out.append("")
        if a.output:
            out += [_fence(a.output[-MAX_OUTPUT_CHARS:]), ""]
        if (u := undone.get(a.id)) is not None:
            out += [("Undone: " if u.event == "action.undone" else "Undo failed: ") + _inline(u.reason, 500), ""]
    return "\n".join(out)


def _verification(store: Store, inc: Incident) -> str:
    vs = store.verifications_for(inc.id)
    out = ["## Verification", ""]
    if not vs:
        return "\n".join(out + ["Nothing was verified."])
    for v in vs:
        ok = sum(1 for c in v.checks if c.ok)
        span = ""
        if v.started_at and v.finished_at:
            span = f" over {(v.finished_at - v.started_at).total_seconds():.2f} s"
        out.append(f"- **{'passed' if v.passed else 'failed'}**{span} (action {v.action_id}): {_inline(v.reason, 500)} "
                   f"— {ok} of {len(v.checks)} check results ok" + (f"; recovered at {_ts(v.recovered_at)}" if v.recovered_at else ""))
        for c in [c for c in v.checks if not c.ok][-3:]:
            out.append(f"  - failing check `{_code(c.name)}`: {_inline(c.detail, 200)}")
    return "\n".join(out)


def _outcome(store: Store, inc: Incident) -> str:
    out = ["## Outcome and timings", "",
           "| | |", "|---|---|",
           f"| failure began | {_ts(inc.started_at)} |",
           f"| detected | {_ts(inc.detected_at)} |",
           f"| recovered | {_ts(inc.recovered_at)} |",
           f"| closed | {_ts(inc.closed_at)} |",
           f"| time to detect | {_secs(inc.time_to_detect_s)} |",
           f"| time to recover | {_secs(inc.time_to_recover_s)} |"]
    if inc.closed_at is not None:
        out.append(f"| open for | {_secs((inc.closed_at - inc.detected_at).total_seconds())} |")
    outcomes = store.outcomes(incident_id=inc.id)
    if outcomes:
        out += ["", "Outcomes recorded for learning:", ""]
        for o in outcomes:
            what = "the incident" if o.attempt == 0 else f"attempt {o.attempt}"
            out.append(f"- {what}: {_inline(o.remedy or 'no remedy')} → **{_inline(o.result.value)}**")
    return "\n".join(out)


def _audit(store: Store, inc: Incident) -> str:
    out = ["## Audit", ""]
    summary = store.audit_summary(inc.id)
    if not summary["count"]:
        return "\n".join(out + ["No audit entries."])
    out += [f"{summary['count']} entries (seq {summary['first_seq']}–{summary['last_seq']}) by "
            f"{', '.join(_inline(a) for a in summary['actors'])}; "
            f"the chain's integrity is checked by `heald audit verify`.", "",
            "| event | count |", "|---|---|"]
    out += [f"| {_cell(ev)} | {n} |" for ev, n in summary["events"].items()]
    out += ["", "### Timeline", "", "| time | actor | event | reason |", "|---|---|---|---|"]
    for e in store.audit_entries(incident_id=inc.id, limit=MAX_TIMELINE):
        out.append(f"| {_ts(e.ts)} | {_cell(e.actor)} | {_cell(e.event)} | {_cell(e.reason, 200)} |")
    if summary["count"] > MAX_TIMELINE:
        out.append(f"\n… and {summary['count'] - MAX_TIMELINE} more entries.")
    return "\n".join(out)


# -- Markdown helpers -------------------------------------------------------------------------

def _ts(t: datetime | None) -> str:
    return "—" if t is None else t.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _secs(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f} s"


def _inline(text: str, limit: int = 1000) -> str:
    """One line of untrusted text: whitespace collapsed, Markdown's active characters escaped."""
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return re.sub(r"([\\`*_\[\]<>|#])", r"\\\1", text)


def _cell(text: str, limit: int = 1000) -> str:
    return _inline(text, limit) or " "


def _code(text: str) -> str:
    """Text for inside a one-backtick code span (backticks and line breaks removed)."""
    return " ".join(str(text).replace("`", "'").split())


def _quote(text: str) -> str:
    return "\n".join("> " + _inline(line) for line in str(text).splitlines() if line.strip())


def _params(params: dict[str, Any]) -> str:
    if not params:
        return ""
    return "(" + ", ".join(f"`{_code(k)}={_code(str(v))}`" for k, v in sorted(params.items())) + ")"


def _fence(text: str) -> str:
    """A fenced code block whose fence no backtick run in ``text`` can close."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text.rstrip()}\n{fence}"
