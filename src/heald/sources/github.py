"""GitHub webhooks: failed CI runs become signals (``POST /v1/webhooks/github``).

Formats (docs.github.com, "Webhook events and payloads"; fixtures from octokit/webhooks in
``shared/corpus/github``): the ``X-GitHub-Event`` header names the event, ``X-GitHub-Delivery``
is the delivery's unique id (a redelivery repeats it), ``X-Hub-Signature-256`` is
``sha256=<hex HMAC-SHA256 of the raw body with the webhook secret>``. A webhook whose content
type is ``application/x-www-form-urlencoded`` delivers the JSON in the form field ``payload``
(the signature covers the raw form body). The events heald heals:

- ``workflow_run`` with ``action: completed`` and ``workflow_run.conclusion`` ``failure``,
  ``timed_out`` or ``startup_failure`` (the workflow file could not even start);
- ``workflow_job`` (``workflow_job.conclusion``) and ``check_run`` (``check_run.conclusion``),
  ``failure`` or ``timed_out``;
- ``check_suite`` with ``action: completed`` and ``check_suite.conclusion`` ``failure`` or
  ``timed_out`` (its commit is ``check_suite.head_sha``, its name the app's);
- ``status`` (a commit status; no action) with ``state`` ``failure`` or ``error`` (commit
  ``sha``, name ``context``, link ``target_url``);
- ``deployment_status`` with ``deployment_status.state`` ``failure`` or ``error`` (commit
  ``deployment.sha``, branch ``deployment.ref``, name ``deploy <environment>``).

Every other event, action or conclusion is ignored with the reason (:class:`SourceIgnored`,
answered 202). The events of one commit (a run, its jobs, their check runs and suites, its statuses and
deployments) share one
fingerprint — the repository and the head commit — so they become one incident.

A signal's labels are ``repo`` (``owner/name``), ``head_sha``, ``head_branch``, ``event``,
``workflow`` (run or check name), ``job`` (for jobs), ``conclusion``; its annotations hold the
``clone_url``, the run's ``html_url``, ``default_branch``, the failed steps of a job, a check
run's output text and the delivery id.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

from heald.jsontext import excerpt, quote
from heald.models import Severity, Signal
from heald.sources._common import any_matches, header, hmac_sha256_hex
from heald.sources._common import fingerprint as _fingerprint
from heald.sources.base import (
    SourceError,
    SourceIgnored,
    WebhookSource,
    load_json,
    make_signal,
    register_source,
)

EVENTS = ("workflow_run", "workflow_job", "check_run", "check_suite", "status", "deployment_status")
FAILED = ("failure", "timed_out")
STATUS_FAILED = ("failure", "error")
FORM = "application/x-www-form-urlencoded"


def signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body`` signed with ``secret``."""
    return "sha256=" + hmac_sha256_hex(secret, body)


def verify_signature(headers: Mapping[str, str], body: bytes, secret: str) -> bool:
    """Does ``X-Hub-Signature-256`` match ``body`` under ``secret``? False when it is missing
    or malformed. Compared in constant time."""
    sent = header(headers, "X-Hub-Signature-256")
    return sent.startswith("sha256=") and any_matches(signature(secret, body), [sent])


def fingerprint(repo: str, sha: str) -> str:
    """One fingerprint per (repository, commit): all CI events of a commit join one incident."""
    return _fingerprint("github", repo, sha)


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


def _repo(data: dict[str, Any]) -> str:
    repo = _str(data, "repository.full_name")
    if len(repo) > 200:
        raise SourceError("repository.full_name", "at most 200 characters (owner/name)", repo)
    return repo


def _json_body(headers: Mapping[str, str], body: bytes) -> bytes | str:
    """The JSON document of a delivery: the body, or for a webhook whose content type is
    ``application/x-www-form-urlencoded`` the value of its one ``payload`` field (GitHub's form
    deliveries; the signature covers the raw form body). Raises SourceError."""
    ctype = (headers.get("content-type") or headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if ctype != FORM:
        return body
    try:
        form = parse_qs(body.decode("utf-8", errors="strict"), keep_blank_values=True, strict_parsing=True,
                        max_num_fields=20, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise SourceError("(body)", "a form-encoded body with a 'payload' field (GitHub's form delivery)") from exc
    values = form.get("payload")
    if not values or len(values) != 1:
        raise SourceError("payload", "one 'payload' form field holding the JSON payload (GitHub's form delivery)")
    return values[0]


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
        data = load_json(_json_body(headers, body), "a JSON object (a GitHub webhook payload)")
        if not isinstance(data, dict):
            raise SourceError("(body)", "a JSON object", type(data).__name__)
        if event == "ping":
            raise SourceIgnored(f"ping: the webhook reaches heald (hook {excerpt(data.get('hook_id', '?'), 40)})")
        if event not in EVENTS:
            raise SourceIgnored(f"event {quote(event)} is not a CI result; heald heals failed "
                                f"{', '.join(EVENTS)} events")
        if event == "status":
            return [self._status(data, headers)]
        if event == "deployment_status":
            return [self._deployment_status(data, headers)]
        action = data.get("action")
        if action != "completed":
            raise SourceIgnored(f"{event} action {quote(action)}: only completed runs are healed")
        obj = _get(data, event, f"the {event} object")
        if not isinstance(obj, dict):
            raise SourceError(event, "an object", type(obj).__name__)
        conclusion = obj.get("conclusion")
        failing = FAILED + (("startup_failure",) if event == "workflow_run" else ())
        if conclusion not in failing:
            raise SourceIgnored(f"{event} conclusion {quote(conclusion)}: only {', '.join(failing)} are healed")
        repo = _repo(data)
        sha = _str(data, f"{event}.head_sha")
        if len(sha) > 200:
            raise SourceError(f"{event}.head_sha", "a commit id (at most 200 characters)", sha)
        suite = _obj(obj.get("check_suite"), f"{event}.check_suite") if event != "check_suite" else {}
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
        elif event == "check_suite":
            app = _obj(obj.get("app"), f"{event}.app")
            labels["workflow"] = _text(app.get("name"), f"{event}.app.name") or "check suite"
            if isinstance(obj.get("before"), str) and set(obj["before"]) != {"0"}:
                notes["before_sha"] = obj["before"][:200]
            notes["html_url"] = notes["html_url"] or _text(obj.get("url"), f"{event}.url", 2000)
            what = f"check suite of {labels['workflow']!r}"
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
        return [self._signal(labels, notes, what, started)]

    def _signal(self, labels: dict[str, str], notes: dict[str, str], what: str, started: datetime | None) -> Signal:
        repo, sha, branch = labels["repo"], labels["head_sha"], labels["head_branch"]
        summary = f"CI failed: {what} {labels['conclusion']} on {repo}@{branch or '?'} {sha[:10]}"
        return make_signal("", source=self.name, kind="ci_failed", service=repo, severity=Severity.error,
                           summary=summary, labels=labels, annotations=notes,
                           fingerprint=fingerprint(repo, sha), starts_at=started)

    def _common(self, data: dict[str, Any], headers: Mapping[str, str], event: str, sha_path: str,
                branch: str, conclusion: str) -> tuple[dict[str, str], dict[str, str]]:
        """Labels and annotations every CI signal carries (``sha_path`` names the commit id)."""
        repo = _repo(data)
        sha = _str(data, sha_path)
        if len(sha) > 200:
            raise SourceError(sha_path, "a commit id (at most 200 characters)", sha)
        labels = {"repo": repo, "head_sha": sha, "head_branch": branch, "event": event, "conclusion": conclusion}
        notes = {"clone_url": _text(_get(data, "repository.clone_url", "the repository's clone URL"),
                                    "repository.clone_url", 2000),
                 "default_branch": _text(data["repository"].get("default_branch"), "repository.default_branch")}
        delivery = self.delivery_id(headers)
        if delivery:
            notes["delivery"] = delivery
        return labels, notes

    def _status(self, data: dict[str, Any], headers: Mapping[str, str]) -> Signal:
        """A commit status (``status`` event) in state ``failure`` or ``error``."""
        state = data.get("state")
        if state not in STATUS_FAILED:
            raise SourceIgnored(f"status state {quote(state)}: only {' and '.join(STATUS_FAILED)} are healed")
        branches = data.get("branches") or []
        if not isinstance(branches, list):
            raise SourceError("branches", "a list of branch objects", type(branches).__name__)
        branch = _text(_obj(branches[0], "branches[0]").get("name"), "branches[0].name") if branches else ""
        labels, notes = self._common(data, headers, "status", "sha", branch, state)
        labels["workflow"] = _text(data.get("context"), "context") or "status"
        notes["html_url"] = _text(data.get("target_url"), "target_url", 2000)
        description = _text(data.get("description"), "description", 2000)
        if description:
            notes["check_output"] = description
        return self._signal(labels, notes, f"status {labels['workflow']!r}", _time(data.get("updated_at")))

    def _deployment_status(self, data: dict[str, Any], headers: Mapping[str, str]) -> Signal:
        """A deployment (``deployment_status`` event) whose status is ``failure`` or ``error``."""
        status = _obj(data.get("deployment_status"), "deployment_status")
        state = status.get("state")
        if state not in STATUS_FAILED:
            raise SourceIgnored(f"deployment_status state {quote(state)}: only {' and '.join(STATUS_FAILED)} "
                                f"are healed")
        deployment = _obj(data.get("deployment"), "deployment")
        if not deployment:
            raise SourceError("deployment", "the deployment object")
        labels, notes = self._common(data, headers, "deployment_status", "deployment.sha",
                                     _text(deployment.get("ref"), "deployment.ref"), state)
        environment = (_text(status.get("environment"), "deployment_status.environment")
                       or _text(deployment.get("environment"), "deployment.environment"))
        labels["workflow"] = f"deploy {environment}" if environment else "deploy"
        notes["html_url"] = (_text(status.get("log_url"), "deployment_status.log_url", 2000)
                             or _text(status.get("target_url"), "deployment_status.target_url", 2000))
        description = _text(status.get("description"), "deployment_status.description", 2000)
        if description:
            notes["check_output"] = description
        return self._signal(labels, notes, f"deployment to {environment or '?'}",
                            _time(status.get("updated_at") or status.get("created_at")))


register_source(GitHubSource())
