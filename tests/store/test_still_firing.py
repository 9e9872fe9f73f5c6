"""Whether an incident still fires is counted in the database (issue 19: a wait for a human
re-checks it for every incident waiting), with the same answer as the healing's own rule
(:func:`heald.engine.steps.still_firing`) over all its signals. Real SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from heald import correlate
from heald.engine.steps import still_firing
from heald.models import Signal, SignalStatus
from heald.store import Store
from tests.conftest import make_config


def _sig(alertname: str, status: SignalStatus) -> Signal:
    return Signal.model_validate({"source": "alertmanager", "service": "shop", "status": status,
                                  "labels": {"alertname": alertname, "service": "shop"}})


def test_an_incident_fires_while_one_of_its_fingerprints_last_arrived_firing(tmp_path: Path, store: Store) -> None:
    cfg = make_config(tmp_path)
    steps = [("Down", SignalStatus.firing), ("Slow", SignalStatus.firing), ("Down", SignalStatus.resolved),
             ("Down", SignalStatus.firing), ("Down", SignalStatus.resolved), ("Slow", SignalStatus.resolved)]
    incident_id = None
    for i, (name, status) in enumerate(steps):
        result = store.transact(lambda s, n=name, st=status: correlate.ingest(s, _sig(n, st), cfg))
        incident_id = incident_id or result.incident_id
        assert result.incident_id == incident_id
        expected = bool(still_firing(store.signals_for(incident_id)))
        assert store.still_firing(incident_id) is expected, f"after step {i}: {name} {status.value}"
    assert store.still_firing(incident_id) is False  # every fingerprint's last signal resolved
