"""Verification over a stabilization window."""

from __future__ import annotations

import itertools

from heald.models import CheckResult, utcnow
from heald.verify import verify


def scripted(outcomes):  # type: ignore[no-untyped-def]
    it = iter(outcomes)

    def check() -> CheckResult:
        ok = next(it, True)
        return CheckResult(name="c", ok=ok, detail="ok" if ok else "down", at=utcnow())
    return check


def test_passes_after_stable_window_and_recovered_at_is_streak_start() -> None:
    v = verify(1, [scripted([False, False, True, True, True, True])], stabilization=0.1, interval=0.03, timeout=5)
    assert v.passed and v.recovered_at is not None
    first_ok = next(c for c in v.checks if c.ok)
    assert v.recovered_at == first_ok.at


def test_flap_restarts_the_window() -> None:
    flapping = itertools.cycle([True, True, False])
    v = verify(1, [lambda: CheckResult(name="c", ok=next(flapping), at=utcnow())], stabilization=0.2, interval=0.03, timeout=1)
    assert not v.passed and "not stable" in v.reason and "c: " in v.reason


def test_a_raising_check_fails_with_its_reason() -> None:
    def boom() -> CheckResult:
        raise RuntimeError("no route")
    v = verify(1, [boom], stabilization=0.0, interval=0.01, timeout=0.05)
    assert not v.passed and "no route" in v.reason


def _ingest(store, config, status):  # type: ignore[no-untyped-def]
    from heald import correlate
    from heald.models import Signal

    with store.tx() as s:
        return correlate.ingest(s, Signal(source="alertmanager", service="api", status=status, summary="api down",
                                          labels={"alertname": "ApiDown", "service": "api"}), config)


def test_the_alerts_resolved_check_reads_only_signals_it_has_not_read(tmp_path, monkeypatch) -> None:
    """Issue 19: verification polled every signal of the incident at every poll (100k signals:
    seconds per poll); now each poll reads only the signals after those it had read 5 s
    before (the overlap catches a PostgreSQL commit out of id order)."""
    from heald.models import SignalStatus
    from heald.store import Store
    from heald.verify import SIGNAL_OVERLAP_SECONDS, alert_resolved_check
    from tests.conftest import make_config

    config = make_config(tmp_path)
    store = Store(f"sqlite:///{tmp_path / 'heald.db'}")
    store.migrate()
    fired = _ingest(store, config, SignalStatus.firing)
    reads: list[int] = []
    real = store.signal_statuses
    monkeypatch.setattr(store, "signal_statuses",
                        lambda incident_id, after_id=0: reads.append(after_id) or real(incident_id, after_id=after_id))
    now = [0.0]
    check = alert_resolved_check(store, fired.incident_id, clock=lambda: now[0])
    first = check()
    assert not first.ok and first.detail == "1 still firing"
    resolved = _ingest(store, config, SignalStatus.resolved)
    assert resolved.incident_id == fired.incident_id
    now[0] = 1.0
    assert check().ok  # within the overlap it reads from the start again: still exact
    now[0] = SIGNAL_OVERLAP_SECONDS + 2
    assert check().ok
    second_id = max(s.id for s in store.signals_for(fired.incident_id))
    now[0] = 2 * SIGNAL_OVERLAP_SECONDS + 3
    assert check().ok
    # from the start while within the overlap, then after what the poll at 1 s had read
    assert reads == [0, 0, second_id, second_id]
    store.close()


def test_verification_probes_share_one_client(tmp_path, http_target, monkeypatch) -> None:
    """Every HTTP check of every verification goes through the process's one client (a new
    httpx client per probe cost 18.5 ms of CPU); closing it makes the next one anew."""
    import heald.verify as verification
    from heald.sources import probes
    from tests.conftest import make_config

    made = []
    real = probes.probe_client
    monkeypatch.setattr(verification, "probe_client", lambda: made.append(real()) or made[-1])
    verification.close_http_client()
    cfg = make_config(tmp_path, services={"api": {"probes": [{"url": http_target.url}, {"url": http_target.url + "?b"}]},
                                          "web": {"probes": [{"url": http_target.url + "?c"}]}})
    checks = [*verification.probe_checks(cfg, "api", None), *verification.probe_checks(cfg, "web", None)]
    for _ in range(3):
        assert all(c().ok for c in checks)
    assert len(made) == 1 and http_target.hits == 9
    verification.close_http_client()
    assert made[0].is_closed
    again = verification.probe_checks(cfg, "web", None)  # a new client, made on demand
    assert len(made) == 2 and all(c().ok for c in again)
    verification.close_http_client()
