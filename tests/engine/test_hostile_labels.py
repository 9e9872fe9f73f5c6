"""A label value filled into a remedy's parameters cannot take the remedy outside what the
configuration allows (issue 11, item 4), through a whole healing: a real loopback admin API, a
runbook whose ``http_request`` URL ends in ``${flag}``, an alert whose ``flag`` label is
``../../secret/drop-all``. Before the fix heald sent ``PUT /secret/drop-all`` automatically."""

from __future__ import annotations

import os
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from heald.models import IncidentState, Signal
from tests.conftest import make_config, wait_for
from tests.engine.test_workflow import terminal


class AdminApi:
    """Records every request line (method, raw path) and answers 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:  # noqa: N802
                outer.requests.append((self.command, self.path))
                self.rfile.read(int(self.headers.get("content-length", 0) or 0))
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def admin() -> Iterator[AdminApi]:
    a = AdminApi()
    yield a
    a.server.shutdown()
    a.server.server_close()


@pytest.mark.parametrize("flag", ["../../secret/drop-all", "%2e%2e/%2e%2e/secret/drop-all",
                                  "..%2f..%2fsecret%2fdrop-all", "%252e%252e/%252e%252e/secret/drop-all"])
def test_a_label_with_dot_segments_does_not_reach_outside_the_allowlist(tmp_path: Path, start_runtime,
                                                                        admin: AdminApi, flag: str) -> None:
    rb = tmp_path / "runbooks.yaml"
    rb.write_text(textwrap.dedent(f"""
        runbooks:
          - name: flag-broken
            match: {{labels: ['alertname="FeatureFlagBroken"', 'flag!=""']}}
            diagnosis: {{category: feature_flag_broken, confidence: 0.95}}
            remedies:
              - remedy: http_request
                risk: low
                params: {{method: PUT, url: "{admin.base}/admin/flags/${{flag}}", body: {{enabled: false}}}}
    """))
    cfg = make_config(tmp_path, runbooks=[str(rb)], remedies={"http_allowed_urls": [f"{admin.base}/admin/"]},
                      healing={"verify_timeout_seconds": 1.0})
    rt = start_runtime(cfg, run_probes=False, manage_services=False)
    inc = rt.ingest(Signal(source="alertmanager", service="shop", summary="a feature flag misbehaves",
                           labels={"alertname": "FeatureFlagBroken", "service": "shop", "flag": flag})).incident_id
    done = wait_for(lambda: terminal(rt, inc), timeout=60, what="the end")
    assert not [r for r in admin.requests if "secret" in r[1]], admin.requests
    assert admin.requests == []  # nothing at all was sent
    assert done.state == IncidentState.needs_attention  # nothing acted, the alert still fires: a human's
    assert rt.store.actions_for(done.id) == []
    dropped = [e.reason for e in rt.store.audit_entries(incident_id=done.id) if e.event == "plan.candidate_dropped"]
    assert any("http_request" in d and ("dot segment" in d or "percent-encoded" in d) for d in dropped), dropped


def test_a_plain_label_still_heals(tmp_path: Path, start_runtime, admin: AdminApi) -> None:
    """The same runbook with an ordinary flag name: the request goes where the URL says."""
    rb = tmp_path / "runbooks.yaml"
    rb.write_text(textwrap.dedent(f"""
        runbooks:
          - name: flag-broken
            match: {{labels: ['alertname="FeatureFlagBroken"', 'flag!=""']}}
            diagnosis: {{category: feature_flag_broken, confidence: 0.95}}
            remedies:
              - remedy: http_request
                risk: low
                params: {{method: PUT, url: "{admin.base}/admin/flags/${{flag}}", body: {{enabled: false}}}}
    """))
    cfg = make_config(tmp_path, runbooks=[str(rb)], remedies={"http_allowed_urls": [f"{admin.base}/admin/"]},
                      healing={"verify_timeout_seconds": 1.0})
    rt = start_runtime(cfg, run_probes=False, manage_services=False)
    inc = rt.ingest(Signal(source="alertmanager", service="shop", summary="a feature flag misbehaves",
                           labels={"alertname": "FeatureFlagBroken", "service": "shop",
                                   "flag": "checkout-v2"})).incident_id
    wait_for(lambda: admin.requests, timeout=60, what="the PUT")
    assert admin.requests == [("PUT", "/admin/flags/checkout-v2")]
    wait_for(lambda: terminal(rt, inc), timeout=60, what="the end")


# -- change correlation is heald's, not the sender's ---------------------------------------------

def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Dana", "GIT_AUTHOR_EMAIL": "dana@example.com",
           "GIT_COMMITTER_NAME": "Dana", "GIT_COMMITTER_EMAIL": "dana@example.com",
           "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                           env=env).stdout.strip()


@pytest.mark.parametrize("where", ["annotations", "labels"])
def test_a_sender_cannot_name_the_commit_heald_reverts(tmp_path: Path, start_runtime, where: str) -> None:
    """An alert that carries ``change_kind: config`` and ``change_id: <an old commit>`` itself
    (the generic source and Alertmanager pass annotations through): before the fix the shipped
    ``bad-config-change`` runbook matched it and ``git_revert`` reverted that commit
    automatically (low risk, confidence 0.95), though heald's change correlation blamed nothing."""
    repo = tmp_path / "config"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "shop.json").write_text('{"tls": true}\n')
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "Turn TLS on")
    victim = _git(repo, "rev-parse", "HEAD")
    (repo / "other.json").write_text("{}\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "Another file")
    head = _git(repo, "rev-parse", "HEAD")
    cfg = make_config(tmp_path, services={"shop": {"config_repo": {"path": str(repo)}}},
                      healing={"verify_timeout_seconds": 1.0})
    rt = start_runtime(cfg, run_probes=False, manage_services=False)
    fake = {"change_kind": "config", "change_id": victim}
    sig = Signal(source="generic", service="shop", summary="shop answers 500",
                 labels={"alertname": "HighErrorRate", "service": "shop", **(fake if where == "labels" else {})},
                 annotations=fake if where == "annotations" else {})
    inc = rt.ingest(sig).incident_id
    done = wait_for(lambda: terminal(rt, inc), timeout=60, what="the end")
    assert _git(repo, "rev-parse", "HEAD") == head, "heald reverted a commit the sender named"
    assert not [a for a in rt.store.actions_for(done.id) if a.remedy == "git_revert"]
    [stored] = rt.store.signals_for(done.id)
    assert stored.annotations["sender.change_id"] == victim and "change_id" not in stored.annotations
    assert "change_id" not in stored.labels
