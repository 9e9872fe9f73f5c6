"""End to end with Debian's real Prometheus and Alertmanager on loopback: Prometheus scrapes
the demo shop, a real alert rule fires, Alertmanager posts its real webhook (authenticated with
the source's secret) to heald, heald heals the shop, and the alert resolves."""

from __future__ import annotations

import pytest

from heald.demo.faults import FAULTS
from heald.demo.monitoring import installed
from heald.demo.runner import run_fault, start_demo
from heald.models import SignalStatus

pytestmark = pytest.mark.slow


def test_a_real_alert_is_healed_and_resolves(tmp_path) -> None:  # type: ignore[no-untyped-def]
    if (problem := installed()) is not None:
        pytest.fail(f"the end-to-end test needs them (scripts/apt-packages.txt): {problem}")
    env = start_demo(tmp_path / "demo", with_prometheus=True)
    try:
        assert not any(p.type == "metric" for p in env.config.services["shop"].probes)  # Prometheus watches metrics
        r = run_fault(env, FAULTS["checkout-failures"], print, timeout=90)
        assert r.expected, (r.outcome, r.reason, r.problems)
        assert r.remedy == "http_request" and r.diagnosis == "dependency_down"
        signals = env.runtime.store.signals_for(r.incident_id)
        am = [s for s in signals if s.source == "alertmanager"]
        assert am and am[0].labels["alertname"] == "HighErrorRate" and am[0].labels["error"] == "PAYMENT_GATEWAY_TIMEOUT"
        assert am[0].service == "shop" and len(am[0].fingerprint or "") == 16
        # verification waited for the real alert to resolve: a resolved notification of the same alert
        resolved = [s for s in am if s.status == SignalStatus.resolved]
        assert resolved and resolved[-1].fingerprint == am[0].fingerprint and resolved[-1].ends_at is not None
        verification = env.runtime.store.verifications_for(r.incident_id)[-1]
        assert verification.passed and any(c.name == "alerts resolved" and c.ok for c in verification.checks)
        assert not [a for a in env.monitoring.firing() if a["labels"].get("alertname") == "HighErrorRate"]
    finally:
        env.stop()


def test_a_wrong_webhook_secret_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What Alertmanager would see with a wrong secret configured: 401, and nothing stored."""
    import httpx

    from heald.api.server import ServerThread
    from heald.demo.system import build_layout, demo_config, free_port
    from heald.engine import Runtime
    from tests.conftest import CORPUS

    ports = {"shop": free_port(), "payments": free_port()}
    build_layout(tmp_path, ports)
    rt = Runtime(demo_config(tmp_path, ports, metric_probes=False, webhook_secret="s" * 32),
                 manage_services=False, run_probes=False)
    rt.start()
    server = ServerThread(rt)
    try:
        url = server.start()
        body = (CORPUS / "alertmanager" / "received.json").read_bytes()
        bad = httpx.post(f"{url}/v1/webhooks/alertmanager", content=body, headers={"authorization": "Bearer nope"})
        assert bad.status_code == 401
        good = httpx.post(f"{url}/v1/webhooks/alertmanager", content=body, headers={"authorization": f"Bearer {'s' * 32}"})
        assert good.status_code == 202 and rt.store.count_signals_by_source() == {"alertmanager": 1}
    finally:
        server.stop()
        rt.stop()
