"""``correlation.routes``: an incident waits its route's ``group_wait_seconds`` before diagnosis
(as Alertmanager's routing tree sets ``group_wait`` per route), in a real Runtime on SQLite."""

from __future__ import annotations

from pathlib import Path

from heald.models import IncidentState, Signal
from tests.conftest import make_config, wait_for


def test_an_incident_waits_its_routes_group_wait(tmp_path: Path, start_runtime) -> None:
    cfg = make_config(tmp_path, services={"fast": {}, "slow": {}},
                      # the default: nothing is diagnosed for 20 s (a longer DBOS.sleep holds the process at exit)
                      healing={"group_wait_seconds": 20},
                      correlation={"routes": [{"matchers": ['service="fast"'], "group_wait_seconds": 0}]})
    rt = start_runtime(cfg, run_probes=False)
    slow = rt.ingest(Signal(source="test", service="slow", labels={"alertname": "Mystery"})).incident_id
    fast = rt.ingest(Signal(source="test", service="fast", labels={"alertname": "Mystery"})).incident_id
    assert slow is not None and fast is not None and slow != fast
    # the route's incident is diagnosed at once (nothing recognises "Mystery": it is handed to a human) …
    done = wait_for(lambda: (i := rt.store.get_incident(fast)).state == IncidentState.needs_attention and i,
                    what="the routed incident to be handed over")
    assert "unknown" in (done.closed_reason or "")
    # … while the other, opened first, still waits out the default group_wait
    assert rt.store.get_incident(slow).state == IncidentState.observing
