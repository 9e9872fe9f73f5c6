"""Property-based tests of every webhook source's parser (issue 11 item 9): fed arbitrary JSON
shapes — random documents, and each source's real payload with any field replaced by any JSON
value — a parser returns signals or raises its documented errors (SourceError,
SourceIgnored), never another exception. Strings include lone surrogates, numbers include
integers far beyond 64 bits."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from heald.models import Signal
from heald.sources import SourceError, SourceIgnored
from heald.sources.alertmanager import AlertmanagerSource
from heald.sources.cloudevents import CloudEventsSource
from heald.sources.datadog import DatadogSource
from heald.sources.generic import GenericSource
from heald.sources.github import GitHubSource
from heald.sources.grafana import GrafanaSource
from heald.sources.kubernetes import KubernetesEventsSource
from heald.sources.pagerduty import PagerDutySource
from heald.sources.sentry import SentrySource
from tests.conftest import CORPUS

VENDOR = Path(__file__).parent / "vendor"

SETTINGS = settings(max_examples=int(os.environ.get("HEALD_HYPOTHESIS_EXAMPLES", "150")), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# any code point, lone surrogates (category Cs) included
TEXT = st.text(st.characters(codec=None, categories=None), max_size=30)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63, max_value=10**300),
                    st.floats(allow_nan=False), TEXT, st.sampled_from(["\ud83d", "a\udc00b", "\udfff\ud800"]),
                    st.sampled_from(["", "firing", "resolved", "failure", "completed", "1.0", "alertname",
                                     "2025-01-01T00:00:00Z", "9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00"]))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)

ALERTMANAGER = (CORPUS / "alertmanager" / "received.json").read_bytes()
GITHUB = {
    "workflow_run": (CORPUS / "github" / "workflow_run" / "completed.payload.json").read_bytes(),
    "workflow_job": (CORPUS / "github" / "workflow_job" / "completed.failure.with-organization.payload.json").read_bytes(),
    "check_run": (CORPUS / "github" / "check_run" / "completed.payload.json").read_bytes(),
}
CLOUDEVENT = json.dumps({"specversion": "1.0", "id": "e1", "source": "/mon", "type": "com.example.alert",
                         "subject": "db", "time": "2025-01-01T00:00:00Z",
                         "data": {"service": "db", "severity": "critical", "summary": "down", "labels": {"a": "b"}}})
GENERIC = json.dumps({"source": "mon", "service": "db", "summary": "down", "labels": {"alertname": "Down"},
                      "starts_at": "2025-01-01T00:00:00Z"})


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON document (the root excluded)."""
    out: list[tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out.extend(_paths(v, (*prefix, k)))
    return out


def _replace(doc: Any, path: tuple[Any, ...], new: Any) -> Any:
    doc = copy.deepcopy(doc)
    cur = doc
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = new
    return doc


@st.composite
def mutated(draw: st.DrawFn, payload: bytes | str, times: int = 2) -> bytes:
    """``payload`` with up to ``times`` of its fields replaced by arbitrary JSON values."""
    doc = json.loads(payload)
    for _ in range(draw(st.integers(1, times))):
        paths = _paths(doc)
        if not paths:
            break
        # half the time a string: the payload keeps its shape and reaches the signal-building code
        doc = _replace(doc, draw(st.sampled_from(paths)), draw(st.one_of(TEXT, JSON_VALUES)))
    return json.dumps(doc).encode()  # ensure_ascii: lone surrogates travel as \\udXXX escapes


def _accepts_or_refuses(parse: Any, headers: dict[str, str], body: bytes) -> None:
    try:
        signals = parse(headers, body)
    except (SourceError, SourceIgnored) as exc:
        assert str(exc) and len(str(exc)) < 2000  # a reason, and a short one
        return
    assert isinstance(signals, list) and all(isinstance(s, Signal) for s in signals)
    for s in signals:  # what is accepted can be stored and served as UTF-8
        s.model_dump_json()


ANY_BODY = st.one_of(JSON_VALUES.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200))
DEEP = ("[" * 10_000 + "]" * 10_000).encode()
BIG_INT = b'{"a": ' + b"9" * 5000 + b"}"
SURROGATE = b'{"source": "x", "labels": {"alertname": "\\ud83d"}}'


@SETTINGS
@given(body=st.one_of(ANY_BODY, mutated(GENERIC)))
@example(body=DEEP)
@example(body=BIG_INT)
@example(body=SURROGATE)
def test_generic_parser_raises_only_source_errors(body: bytes) -> None:
    _accepts_or_refuses(GenericSource().parse, {}, body)


@SETTINGS
@given(body=st.one_of(ANY_BODY, mutated(ALERTMANAGER)))
@example(body=DEEP)
@example(body=BIG_INT)
@example(body=ALERTMANAGER.replace(b'"Test"', b'"T\\ud83d"'))
def test_alertmanager_parser_raises_only_source_errors(body: bytes) -> None:
    _accepts_or_refuses(AlertmanagerSource().parse, {}, body)


@SETTINGS
@given(body=st.one_of(ANY_BODY, mutated(CLOUDEVENT)),
       content_type=st.sampled_from(["application/json", "application/cloudevents+json",
                                     "application/cloudevents-batch+json"]))
@example(body=DEEP, content_type="application/json")
@example(body=CLOUDEVENT.replace('"db"', '"\\ud83d"', 1).encode(), content_type="application/json")
def test_cloudevents_parser_raises_only_source_errors(body: bytes, content_type: str) -> None:
    _accepts_or_refuses(CloudEventsSource().parse, {"content-type": content_type}, body)


@SETTINGS
@given(body=ANY_BODY, attrs=st.dictionaries(st.sampled_from(["ce-specversion", "ce-id", "ce-source", "ce-type",
                                                              "ce-subject", "ce-time", "ce-severity", "ce-x"]),
                                             st.text(st.characters(codec="latin-1"), max_size=20), max_size=8),
       content_type=st.sampled_from(["application/json", "text/plain", "application/octet-stream", ""]))
@example(body=DEEP, attrs={"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s", "ce-type": "t"},
         content_type="application/json")
def test_cloudevents_binary_mode_raises_only_source_errors(body: bytes, attrs: dict[str, str], content_type: str) -> None:
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t", **attrs,
               **({"content-type": content_type} if content_type else {})}
    _accepts_or_refuses(CloudEventsSource().parse, headers, body)


#: The fields of a GitHub payload the parser reads (the rest it passes over).
GITHUB_FIELDS = ("head_commit", "check_suite", "steps", "output", "name", "display_title", "head_branch",
                 "workflow_name", "html_url", "path", "run_attempt", "head_sha", "completed_at", "updated_at")


@st.composite
def github_payload(draw: st.DrawFn, event: str) -> bytes:
    """A failed run's real payload with some of the fields the parser reads (or items of its
    ``steps``, or the repository's) replaced by arbitrary JSON values."""
    doc = json.loads(GITHUB[event])
    doc[event]["conclusion"] = "failure"
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["event", "step", "repository", "workflow"]))
        value = draw(st.one_of(JSON_VALUES, TEXT))
        if where == "event":
            doc[event][draw(st.sampled_from(GITHUB_FIELDS))] = value
        elif where == "step" and isinstance(doc[event].get("steps"), list) and doc[event]["steps"]:
            steps = doc[event]["steps"]
            i = draw(st.integers(0, len(steps) - 1))
            if isinstance(steps[i], dict) and draw(st.booleans()):
                steps[i][draw(st.sampled_from(["name", "conclusion"]))] = value
            else:
                steps[i] = value
        elif where == "repository":
            doc["repository"][draw(st.sampled_from(["full_name", "clone_url", "default_branch"]))] = value
        else:
            doc["workflow"] = value
    return json.dumps(doc).encode()


@SETTINGS
@given(event=st.sampled_from(sorted(GITHUB)), data=st.data())
@example(event="check_run", data=None)
def test_github_parser_on_failed_runs_with_fields_of_any_shape(event: str, data: Any) -> None:
    body = GITHUB[event] if data is None else data.draw(github_payload(event))
    _accepts_or_refuses(GitHubSource().parse, {"X-GitHub-Event": event, "X-GitHub-Delivery": "d-1"}, body)


@SETTINGS
@given(event=st.sampled_from(sorted(GITHUB)), data=st.data())
@example(event="workflow_run", data=None)
def test_github_parser_raises_only_source_errors(event: str, data: Any) -> None:
    body = GITHUB[event] if data is None else data.draw(st.one_of(mutated(GITHUB[event]), ANY_BODY))
    doc = None
    try:
        doc = json.loads(body)
    except ValueError:
        pass
    if isinstance(doc, dict) and isinstance(doc.get(event), dict) and data is not None and data.draw(st.booleans()):
        doc[event]["conclusion"] = "failure"  # most payloads should reach the part that builds a signal
        doc["action"] = "completed"
        body = json.dumps(doc).encode()
    _accepts_or_refuses(GitHubSource().parse, {"X-GitHub-Event": event, "X-GitHub-Delivery": "d-1"}, body)


# -- the sources of issue 13: each fed arbitrary JSON and its vendor's payload with any field
# -- replaced by any JSON value

GRAFANA = (VENDOR / "grafana.webhook.json").read_bytes()
PAGERDUTY = json.loads((VENDOR / "pagerduty.signature-vector.json").read_text())["body"].replace(
    "incident.priority_updated", "incident.triggered")
SENTRY = {"event_alert": (CORPUS / "sentry" / "mocks.MOCK_EVENT_ALERT_TRIGGERED_WEBHOOK.json").read_bytes(),
          "metric_alert": (VENDOR / "sentry.metric_alert.resolved.json").read_bytes()}
DATADOG = json.dumps({**json.loads((CORPUS / "datadog" / "README.example.json").read_text()),
                      "alert_id": "1", "alert_transition": "Triggered", "alert_scope": "host:a",
                      "tags": "service:web,env:prod", "alert_type": "error", "hostname": "a"})
KUBERNETES = {"core": json.dumps({**json.loads((CORPUS / "kubernetes" / "getting-started.event.json").read_text()),
                                  "type": "Warning", "reason": "BackOff"}),
              "events.k8s.io": (VENDOR / "kubernetes.events-v1.warning.json").read_bytes()}
GITHUB_MORE = {"check_suite": (VENDOR / "github" / "check_suite" / "completed.payload.json").read_bytes(),
               "status": (VENDOR / "github" / "status" / "payload.json").read_bytes(),
               "deployment_status": (VENDOR / "github" / "deployment_status" / "payload.json").read_bytes()}


@SETTINGS
@given(body=st.one_of(ANY_BODY, mutated(GRAFANA, 3)))
@example(body=DEEP)
@example(body=BIG_INT)
def test_grafana_parser_raises_only_source_errors(body: bytes) -> None:
    _accepts_or_refuses(GrafanaSource().parse, {}, body)


@SETTINGS
@given(body=st.one_of(ANY_BODY, mutated(PAGERDUTY, 3)))
@example(body=DEEP)
@example(body=PAGERDUTY.encode())
def test_pagerduty_parser_raises_only_source_errors(body: bytes) -> None:
    _accepts_or_refuses(PagerDutySource().parse, {}, body)


@SETTINGS
@given(resource=st.sampled_from(["event_alert", "metric_alert", "issue", "installation", ""]), data=st.data())
@example(resource="metric_alert", data=None)
def test_sentry_parser_raises_only_source_errors(resource: str, data: Any) -> None:
    base = SENTRY.get(resource, SENTRY["event_alert"])
    body = base if data is None else data.draw(st.one_of(ANY_BODY, mutated(base, 3)))
    _accepts_or_refuses(SentrySource().parse, {"Sentry-Hook-Resource": resource}, body)


@SETTINGS
@given(body=st.one_of(ANY_BODY, mutated(DATADOG, 3)))
@example(body=DEEP)
@example(body=DATADOG.replace("Triggered", "T\\ud83d").encode())
def test_datadog_parser_raises_only_source_errors(body: bytes) -> None:
    _accepts_or_refuses(DatadogSource().parse, {}, body)


@SETTINGS
@given(body=st.one_of(ANY_BODY, mutated(KUBERNETES["core"], 3), mutated(KUBERNETES["events.k8s.io"], 3),
                      st.lists(st.sampled_from(list(KUBERNETES.values())), max_size=3).map(
                          lambda items: json.dumps([json.loads(i) for i in items]).encode())))
@example(body=DEEP)
def test_kubernetes_parser_raises_only_source_errors(body: bytes) -> None:
    _accepts_or_refuses(KubernetesEventsSource().parse, {}, body)


@SETTINGS
@given(event=st.sampled_from(sorted(GITHUB_MORE)), data=st.data())
def test_github_new_events_raise_only_source_errors(event: str, data: Any) -> None:
    doc = json.loads(GITHUB_MORE[event])
    if event == "status":
        doc["state"] = "failure"
    elif event == "deployment_status":
        doc["deployment_status"]["state"] = "error"
    else:
        doc["check_suite"]["conclusion"] = "failure"
    body = data.draw(st.one_of(mutated(json.dumps(doc), 3), ANY_BODY))
    form = data.draw(st.booleans())
    headers = {"X-GitHub-Event": event}
    if form:  # the same payload as a form delivery
        body = b"payload=" + quote_from_bytes(body).encode()
        headers["content-type"] = "application/x-www-form-urlencoded"
    _accepts_or_refuses(GitHubSource().parse, headers, body)
