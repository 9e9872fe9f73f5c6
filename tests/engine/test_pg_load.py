"""heald on PostgreSQL under load: concurrent Alertmanager senders while heald's database
connections are killed (issue 12, item 1). The load is :func:`bench.pg_load.run_load` (one
driver for this test and the benchmark), here at a bounded size."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.postgres


def _bench() -> object:
    spec = importlib.util.spec_from_file_location("heald_bench_pg_load", REPO / "bench" / "pg_load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_concurrent_alertmanager_senders_and_killed_connections_leave_no_5xx_no_loss_no_frozen_incident(
        pg_url: str, tmp_path: Path) -> None:
    """4 senders × 500 alerts in messages of 5, every connection heald has to PostgreSQL
    terminated every 2 s: no HTTP 5xx (contention and lost connections are retried inside),
    every alert stored exactly once, no deadlock, an intact audit chain, and afterwards every
    incident ended or has a live workflow (none frozen)."""
    result = _bench().run_load(pg_url, tmp_path / "state", senders=4, alerts=500, batch=5,  # type: ignore[attr-defined]
                               kill_every=2.0, settle=60.0)
    print(result)
    assert result.kills >= 1 and result.connections_killed >= 1, result
    assert result.server_errors == 0, result.statuses
    assert result.statuses.get("202") == result.requests, result.statuses
    assert result.deadlocks == 0, result
    assert (result.signals_stored, result.alerts_stored_twice, result.alerts_missing) == (2000, 0, 0), result
    assert result.frozen == [], f"incidents open without a live workflow: {result.frozen}"
    assert result.audit_intact, result


def test_a_database_that_stays_unreachable_gets_503_with_retry_after_and_the_resent_message_is_stored_once(
        pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL refuses heald's connections for longer than ingestion retries: the webhook
    is answered 503 with ``Retry-After`` (Alertmanager sends it again), never 500, and nothing
    of it is stored; sent again once the database is back, it is stored once."""
    import sqlalchemy as sa

    from heald.engine import Runtime
    from heald.store import retry
    from heald.store.db import normalize_url
    from tests.conftest import POSTGRES_URL, make_config, serving

    monkeypatch.setattr(retry, "MAX_SECONDS", 2.0)  # a short outage is retried inside; this one outlasts it
    rt = Runtime(make_config(tmp_path, database_url=pg_url), manage_services=False, run_probes=False, tail_logs=False)
    rt.start()
    db = sa.make_url(normalize_url(pg_url)).database
    admin = sa.create_engine(normalize_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    body = _bench().alert_message(0, 0, 5, 2, 2)  # type: ignore[attr-defined]
    try:
        with serving(rt, role="operator") as client:
            with admin.connect() as c:
                c.execute(sa.text(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false'))
                c.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"), {"d": db})
            try:
                refused = client.post("/v1/webhooks/alertmanager", json=body)
            finally:
                with admin.connect() as c:
                    c.execute(sa.text(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true'))
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["retry-after"]) > 0
            again = client.post("/v1/webhooks/alertmanager", json=body)
            assert again.status_code == 202, again.text
        assert rt.store.count_signals_by_source() == {"alertmanager": 5}
    finally:
        rt.stop()
        admin.dispose()
