"""heald's own telemetry on a real scrape of /metrics: time to detect, per-probe up,
escalations, approvals waiting, breaker state, build info and the process collector, named by
Prometheus' conventions (checked by promtool when it is installed)."""

from __future__ import annotations

import platform
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from heald import __version__, budgets, correlate
from heald.engine import Runtime
from heald.models import IncidentState, Signal, utcnow
from tests.conftest import Switchable, free_port, make_config, serving, wait_for


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


@pytest.fixture
def scrape(tmp_path: Path, http_target: Switchable):  # type: ignore[no-untyped-def]
    """A running heald (probes on) with one healthy HTTP probe and one failing TCP probe, an
    escalated incident, one awaiting approval and an open breaker; yields a function that
    scrapes /metrics over HTTP."""
    closed_port = free_port()
    cfg = make_config(tmp_path, services={"shop": {"probes": [
        {"type": "http", "name": "health", "url": http_target.url, "interval_seconds": 0.05},
        {"type": "tcp", "name": "db port", "port": closed_port, "interval_seconds": 0.05, "failure_threshold": 100},
    ]}})
    rt = Runtime(cfg, manage_services=False, run_probes=True)
    rt.start()
    try:
        now = utcnow()
        with rt.store.tx() as s:
            escalated = correlate.ingest(s, Signal(source="t", service="a", summary="a down",
                                                   starts_at=now - timedelta(seconds=3)), cfg).incident_id
            waiting = correlate.ingest(s, Signal(source="t", service="b", summary="b down",
                                                 starts_at=now - timedelta(seconds=0.3)), cfg).incident_id
        rt.store.transition(escalated, IncidentState.escalated, reason="test: no runbook")
        for state in (IncidentState.diagnosing, IncidentState.deciding, IncidentState.awaiting_approval):
            rt.store.transition(waiting, state, reason="test")
        budgets.record_verification(rt.store, "service:shop", False, escalated, threshold=1, reason="still down")
        budgets.record_verification(rt.store, "service:cart", False, escalated, threshold=3, reason="once")
        with serving(rt, role=None) as client:
            def get() -> str:
                r = client.get("/metrics")
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
                return r.text
            yield get
    finally:
        rt.stop()


def test_metrics_report_heald_own_telemetry(scrape) -> None:  # type: ignore[no-untyped-def]
    def probes_seen() -> dict[str, list[tuple[dict[str, str], float]]] | None:
        samples = _samples(scrape())
        return samples if len(samples.get("heald_probe_up", [])) == 2 else None

    samples = wait_for(probes_seen, timeout=15, what="both probes in heald_probe_up")
    up = {(labels["service"], labels["probe"], labels["type"]): v for labels, v in samples["heald_probe_up"]}
    assert up == {("shop", "health", "http"): 1.0, ("shop", "db port", "tcp"): 0.0}

    ttd = {labels.get("le"): v for labels, v in samples["heald_time_to_detect_seconds_bucket"]}
    assert ttd["0.1"] == 0 and ttd["0.5"] == 1 and ttd["5.0"] == 2 and ttd["+Inf"] == 2  # 0.3 s and 3 s
    assert samples["heald_time_to_detect_seconds_count"] == [({}, 2.0)]
    assert 3.3 <= samples["heald_time_to_detect_seconds_sum"][0][1] < 4.0

    assert samples["heald_escalations_total"] == [({}, 1.0)]
    assert samples["heald_approvals_waiting"] == [({}, 1.0)]
    assert {labels["target"]: v for labels, v in samples["heald_breaker_open"]} == {"service:cart": 0.0,
                                                                                    "service:shop": 1.0}
    assert {labels["target"]: v for labels, v in samples["heald_breaker_failures"]} == {"service:cart": 1.0,
                                                                                        "service:shop": 1.0}
    assert samples["heald_build_info"] == [({"version": __version__, "python_version": platform.python_version()}, 1.0)]
    assert samples["process_resident_memory_bytes"][0][1] > 0 and "process_cpu_seconds_total" in samples
    assert samples["python_info"][0][0]["version"] == platform.python_version()


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool is not installed (Debian package prometheus, see scripts/apt-packages.txt)")
def test_promtool_check_metrics_is_clean(scrape) -> None:  # type: ignore[no-untyped-def]
    wait_for(lambda: "heald_probe_up{" in scrape(), timeout=15, what="a probe result")
    text = scrape()
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr
