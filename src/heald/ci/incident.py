"""CI failures as incidents: the reproduce stage of the healing workflow and the signal it adds.

The engine calls :func:`reproduce_incident` once, before the first diagnosis. For an incident
with a ``ci_failed`` signal it runs :func:`heald.ci.investigate.investigate` and stores what it
found as a ``ci_reproduced`` signal of the incident (source ``sandbox``): labels ``repo``,
``head_sha``, ``head_branch``, ``verdict``; annotations the facts (``culprit_sha``,
``module``, ``lint_tools``, …), ``repo_url``, ``test_command``, ``log`` (the failure excerpt)
and ``investigation`` (the whole finding as JSON, without command output). Runbooks match the
verdict; the signature knowledge base reads the log.
"""

from __future__ import annotations

import json
from typing import Any

import structlog

from heald import correlate
from heald.ci import CiJob, InvalidJob
from heald.ci.investigate import Investigation, investigate
from heald.ci.pull_request import token
from heald.config import HealdConfig
from heald.models import Severity, Signal, SignalStatus
from heald.sandbox import SandboxUnavailable
from heald.store import Store

log = structlog.get_logger("heald.ci")

FAILED = "ci_failed"
REPRODUCED = "ci_reproduced"


#: What only heald itself produces: its sandbox's findings. A signal from outside claiming them
#: (a client sets ``source`` and ``kind`` freely) would pick the commit to revert, the URL to push
#: to and the "before" results the fix is judged on.
SANDBOX_SOURCE = "sandbox"


def from_outside(signal: Signal) -> Signal:
    """``signal`` as received from a sender, made inert where it claims to be heald's own
    sandbox finding (source ``sandbox`` or kind ``ci_reproduced``): its source and kind get the
    prefix ``claimed-`` (kept as sent, for the record) and a ``heald_note`` annotation says why,
    so no CI runbook matches it and the reproduce step does not take it for its own."""
    if signal.kind != REPRODUCED and signal.source != SANDBOX_SOURCE:
        return signal
    note = (f"the sender claimed source {signal.source!r} and kind {signal.kind!r}, which only heald's own "
            f"sandbox reproduction produces; stored as claimed-*, inert")
    return signal.model_copy(update={"source": f"claimed-{signal.source}"[:100], "kind": f"claimed-{signal.kind}"[:100],
                                     "annotations": {**signal.annotations, "heald_note": note}})


def is_ci(signals: list[Signal]) -> bool:
    return any(s.kind == FAILED for s in signals)


def reproduction(signals: list[Signal]) -> Signal | None:
    """The incident's ``ci_reproduced`` signal, if it has one."""
    return next((s for s in reversed(signals) if s.kind == REPRODUCED and s.source == SANDBOX_SOURCE), None)


def investigation_data(signal: Signal | None) -> dict[str, Any]:
    """The investigation stored on a ``ci_reproduced`` signal ({} when there is none)."""
    if signal is None:
        return {}
    try:
        return json.loads(signal.annotations.get("investigation", "{}"))
    except json.JSONDecodeError:
        return {}


def job_from_signal(config: HealdConfig, sig: Signal) -> CiJob:
    """The CI job a ``ci_failed`` signal describes (``ci.repos`` settings applied)."""
    repo = sig.labels.get("repo") or sig.service or "repo"
    url = sig.annotations.get("clone_url") or repo
    return CiJob.for_repo(config, repo, url, sig.labels.get("head_sha", ""), good=sig.annotations.get("good_sha") or None,
                          branch=sig.labels.get("head_branch", ""),
                          test_command=sig.annotations.get("test_command") or None,
                          install_command=sig.annotations.get("install_command") or None,
                          quarantine=tuple(q for q in sig.annotations.get("quarantine", "").splitlines() if q.strip()))


def reproduction_signal(inv: Investigation, fingerprint: str) -> Signal:
    """The ``ci_reproduced`` signal for an investigation (see the module docstring)."""
    job = inv.job
    data = inv.as_dict()
    # every step's log stays with the incident (command, exit, duration, the end of its output)
    notes = {k: str(v) for k, v in inv.facts.items() if v not in (None, "")}
    notes.update({"repo_url": job.url, "test_command": inv.facts.get("test_command", job.test_command or ""),
                  "category_hint": inv.category, "test_runs": str(inv.test_runs), "bisect_runs": str(inv.bisect_runs),
                  "investigation": json.dumps(data)})
    if inv.excerpt:
        notes["log"] = inv.excerpt
    return Signal(source=SANDBOX_SOURCE, kind=REPRODUCED, service=job.repo, status=SignalStatus.firing,
                  severity=Severity.error, summary=inv.summary[:10_000] or f"reproduced: {inv.verdict}",
                  labels={"repo": job.repo, "head_sha": inv.bad or job.bad, "head_branch": job.branch,
                          "verdict": inv.verdict,
                          # a label, not log text a repository could print: see runbooks/ci_forward_fix.yaml
                          **({"forward_fix": "ready"} if inv.facts.get("forward_fix") == "ready" else {})},
                  annotations=notes, fingerprint=fingerprint)


def reproduce_incident(config: HealdConfig, store: Store, incident_id: int) -> str | None:
    """Reproduce the CI failure of an incident once (see the module docstring); returns the
    verdict, or None when the incident is not a CI failure. A heald without a working sandbox
    records the refusal as the verdict ``sandbox_unavailable`` and runs nothing."""
    signals = store.signals_for(incident_id)
    if not is_ci(signals):
        return None
    done = reproduction(signals)
    if done is not None:
        return done.labels.get("verdict")
    failed = [s for s in signals if s.kind == FAILED and s.status == SignalStatus.firing] or \
        [s for s in signals if s.kind == FAILED]
    sig = failed[-1]
    try:
        job = job_from_signal(config, sig)
    except InvalidJob as exc:  # a signal naming an option or a command where git expects a revision or URL
        store.record(actor="heald", event="ci.refused", incident_id=incident_id,
                     reason=f"heald does not reproduce this CI failure: {exc}", details={"error": str(exc)})
        job = CiJob(repo=str(sig.labels.get("repo") or sig.service or "repo")[:200], url="", bad="")
        inv = Investigation(job=job, verdict="unresolved", category="unknown",
                            summary=f"heald does not reproduce this CI failure: {exc}")
        incident = store.get_incident(incident_id)
        with store.tx() as session:
            correlate.ingest(session, reproduction_signal(inv, incident.fingerprint), config, actor="heald:sandbox")
        return inv.verdict
    store.record(actor="heald", event="ci.reproducing", incident_id=incident_id,
                 reason=f"reproducing {job.repo}@{job.bad[:12]} in the sandbox",
                 details={"repo": job.repo, "commit": job.bad, "good": job.good})
    try:
        inv = investigate(config, job, token=token(config))
    except SandboxUnavailable as exc:
        inv = Investigation(job=job, bad=job.bad, verdict="sandbox_unavailable", category="sandbox_unavailable",
                            summary=str(exc))
    _point_to_existing_fix(store, inv)
    incident = store.get_incident(incident_id)
    with store.tx() as session:
        correlate.ingest(session, reproduction_signal(inv, incident.fingerprint), config, actor="heald:sandbox")
    return inv.verdict


#: verdict → (the remedy's kind, the fact its failure signature is keyed by); see heald.ci.remedies
_PROPOSED_BY = {"regression": ("revert", "culprit_sha"), "missing_dependency": ("add_dependency", "module"),
                "lint": ("lint", "lint_tools")}


def _point_to_existing_fix(store: Store, inv: Investigation) -> None:
    """When the fix for this very failure (same failure signature) is already proposed and its
    pull request or branch is still open, the verdict becomes ``already_proposed`` pointing to
    it: a second run on the same failure (within the remedy's cooldown or not) names the branch
    and pull request instead of escalating as "in cooldown" or proposing it twice."""
    from heald.ci.pull_request import failure_signature, find

    kind_fact = _PROPOSED_BY.get(inv.verdict)
    if kind_fact is None or not inv.facts.get(kind_fact[1]):
        return
    kind, fact = kind_fact
    key = inv.facts[fact].lower() if kind == "revert" else inv.facts[fact]
    if kind == "lint":
        key = f"{inv.bad.lower()}:{inv.facts[fact]}"
    found = find(store, inv.job.repo, failure_signature(inv.job.repo, kind, key))
    if found is None or found.state != "open":
        return
    where = f"pull request #{found.number} {found.url}" if found.number else f"branch {found.branch}"
    inv.facts.update({"existing_branch": found.branch, "existing_fix_sha": found.sha, "existing_fix": where,
                      "found_verdict": inv.verdict})
    if found.number:
        inv.facts["existing_pull_request"] = str(found.number)
    inv.summary = f"{inv.summary}. The fix is already proposed: {where} (branch {found.branch}, {found.sha[:12]})"
    inv.verdict = "already_proposed"
