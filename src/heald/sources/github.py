"""GitHub webhooks: failed CI runs become signals (``POST /v1/webhooks/github``).

Formats (docs.github.com, "Webhook events and payloads"; fixtures from octokit/webhooks in
``shared/corpus/github``): the ``X-GitHub-Event`` header names the event, ``X-GitHub-Delivery``
is the delivery's unique id (a redelivery repeats it), ``X-Hub-Signature-256`` is
``sha256=<hex HMAC-SHA256 of the raw body with the webhook secret>``. The events heald heals:

- ``workflow_run`` with ``action: completed`` and ``workflow_run.conclusion`` ``failure`` or
  ``timed_out``;
- ``workflow_job`` (``workflow_job.conclusion``), the same;
- ``check_run`` (``check_run.conclusion``), the same.

Every other event, action or conclusion is ignored with the reason (:class:`SourceIgnored`,
answered 202). The events of one commit (a run, its jobs, their check runs) share one
fingerprint — the repository and the head commit — so they become one incident.

A signal's labels are ``repo`` (``owner/name``), ``head_sha``, ``head_branch``, ``event``,
``workflow`` (run or check name), ``job`` (for jobs), ``conclusion``; its annotations hold the
``clone_url``, the run's ``html_url``, ``default_branch``, the failed steps of a job, a check
run's output text and the delivery id.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from heald.jsontext import excerpt, quote
from heald.models import Severity, Signal
from heald.sources.base import (
    SourceError,
    SourceIgnored,
    WebhookSource,
    load_json,
    make_signal,
    register_source,
)

EVENTS = ("workflow_run", "workflow_job", "check_run")
FAILED = ("failure", "timed_out")


def signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body`` signed with ``secret``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(headers: Mapping[str, str], body: bytes, secret: str) -> bool:
    """Does ``X-Hub-Signature-256`` match ``body`` under ``secret``? False when it is missing
    or malformed. Compared in constant time."""
    sent = headers.get("x-hub-signature-256") or headers.get("X-Hub-Signature-256") or ""
    if not sent.startswith("sha256="):
        return False
    return hmac.compare_digest(signature(secret, body).encode(), sent.strip().encode())


def fingerprint(repo: str, sha: str) -> str:
    """One fingerprint per (repository, commit): all CI events of a commit join one incident."""
    return hashlib.sha256(f"github\x00{repo}\x00{sha}".encode()).hexdigest()[:16]


def _get(obj: Any, path: str, expected: str) -> Any:
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise SourceError(path, expected)
        cur = cur[part]
    return cur


def _str(obj: Any, path: str) -> str:
    value = _get(obj, path, "a string")
    if not isinstance(value, str) or not value:
        raise SourceError(path, "a non-empty string", value)
    return value


def _obj(value: Any, path: str) -> dict[str, Any]:
    """``value`` when it is an object, ``{}`` when it is absent or null; SourceError otherwise."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SourceError(path, "an object (or null)", type(value).__name__)
    return value


def _text(value: Any, path: str, limit: int = 200) -> str:
    """``value`` as a label: a string (or number) of at most ``limit`` characters, ``""`` when
    absent; SourceError otherwise."""
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SourceError(path, "a string", type(value).__name__)
    text = str(value)
    if len(text) > limit:
        raise SourceError(path, f"at most {limit} characters", text)
    return text


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class GitHubSource(WebhookSource):
    """The ``github`` webhook source (see the module docstring)."""

    name = "github"

    def verify(self, headers: Mapping[str, str], body: bytes, secret: str) -> bool:
        """See :func:`verify_signature`."""
        return verify_signature(headers, body, secret)

    def delivery_id(self, headers: Mapping[str, str]) -> str | None:
        """``X-GitHub-Delivery``: the same for a redelivery of the same event."""
        value = headers.get("x-github-delivery") or headers.get("X-GitHub-Delivery")
        return value.strip()[:200] if value and value.strip() else None

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[Signal]:
        """One ``ci_failed`` signal for a failed run, job or check run. Raises SourceIgnored for
        any other event, action or conclusion, SourceError naming the field for a payload that
        is not GitHub's."""
        event = (headers.get("x-github-event") or headers.get("X-GitHub-Event") or "").strip()
        if not event:
            raise SourceError("headers.X-GitHub-Event", "the GitHub event name (e.g. workflow_run)")
        data = load_json(body, "a JSON object (a GitHub webhook payload)")
        if not isinstance(data, dict):
            raise SourceError("(body)", "a JSON object", type(data).__name__)
        if event == "ping":
            raise SourceIgnored(f"ping: the webhook reaches heald (hook {excerpt(data.get('hook_id', '?'), 40)})")
        if event not in EVENTS:
            raise SourceIgnored(f"event {quote(event)} is not a CI result; heald heals failed "
                                f"{', '.join(EVENTS)} events")
        action = data.get("action")
        if action != "completed":
            raise SourceIgnored(f"{event} action {quote(action)}: only completed runs are healed")
        obj = _get(data, event, f"the {event} object")
        if not isinstance(obj, dict):
            raise SourceError(event, "an object", type(obj).__name__)
        conclusion = obj.get("conclusion")
        if conclusion not in FAILED:
            raise SourceIgnored(f"{event} conclusion {quote(conclusion)}: only {' and '.join(FAILED)} are healed")
        repo = _str(data, "repository.full_name")
        if len(repo) > 200:
            raise SourceError("repository.full_name", "at most 200 characters (owner/name)", repo)
        sha = _str(data, f"{event}.head_sha")
        if len(sha) > 200:
            raise SourceError(f"{event}.head_sha", "a commit id (at most 200 characters)", sha)
        suite = _obj(obj.get("check_suite"), f"{event}.check_suite")
        branch = (_text(obj.get("head_branch"), f"{event}.head_branch")
                  or _text(suite.get("head_branch"), f"{event}.check_suite.head_branch"))
        labels = {"repo": repo, "head_sha": sha, "head_branch": branch, "event": event, "conclusion": conclusion}
        notes: dict[str, str] = {
            "clone_url": _text(_get(data, "repository.clone_url", "the repository's clone URL"),
                               "repository.clone_url", 2000),
            "default_branch": _text(data["repository"].get("default_branch"), "repository.default_branch"),
            "html_url": _text(obj.get("html_url"), f"{event}.html_url", 2000),
        }
        delivery = self.delivery_id(headers)
        if delivery:
            notes["delivery"] = delivery
        if event == "workflow_run":
            name = (_text(obj.get("name"), f"{event}.name")
                    or _text(obj.get("display_title"), f"{event}.display_title", 2000)[:200]
                    or _text(_obj(data.get("workflow"), "workflow").get("name"), "workflow.name") or "workflow")
            labels["workflow"] = name
            notes["workflow_path"] = _text(obj.get("path"), f"{event}.path", 2000)
            notes["run_attempt"] = _text(obj.get("run_attempt"), f"{event}.run_attempt")
            head = _obj(obj.get("head_commit"), f"{event}.head_commit")
            if head.get("message"):
                notes["head_commit_message"] = str(head["message"])[:500]
            what = f"workflow {name!r}"
        elif event == "workflow_job":
            labels["workflow"] = _text(obj.get("workflow_name"), f"{event}.workflow_name")
            labels["job"] = _text(obj.get("name"), f"{event}.name") or "job"
            steps = obj.get("steps") or []
            if not isinstance(steps, list):
                raise SourceError(f"{event}.steps", "a list of step objects", type(steps).__name__)
            failed = [excerpt(_obj(s, f"{event}.steps[{i}]").get("name", "?"), 200) for i, s in enumerate(steps)
                      if _obj(s, f"{event}.steps[{i}]").get("conclusion") in FAILED]
            if failed:
                notes["failed_steps"] = "; ".join(failed)[:1000]
            what = f"job {labels['job']!r}" + (f" (step {failed[0]!r})" if failed else "")
        else:
            labels["workflow"] = _text(obj.get("name"), f"{event}.name") or "check"
            out = _obj(obj.get("output"), f"{event}.output")
            text = "\n".join(excerpt(out[k], 8000) for k in ("title", "summary", "text") if out.get(k))
            if text:
                notes["check_output"] = text[:8000]
            if isinstance(suite.get("before"), str) and set(suite["before"]) != {"0"}:
                notes["before_sha"] = suite["before"]
            what = f"check {labels['workflow']!r}"
        started = _time(obj.get("completed_at") or obj.get("updated_at") or obj.get("run_started_at"))
        summary = f"CI failed: {what} {conclusion} on {repo}@{branch or '?'} {sha[:10]}"
        return [make_signal("", source=self.name, kind="ci_failed", service=repo, severity=Severity.error, summary=summary,
                       labels=labels, annotations=notes, fingerprint=fingerprint(repo, sha), starts_at=started)]


register_source(GitHubSource())
