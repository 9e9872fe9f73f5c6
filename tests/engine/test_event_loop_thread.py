"""heald started on a thread whose asyncio event loop is running (an application embedding it
in async code; Playwright's sync API in the same process): DBOS's synchronous calls refuse to run
there, so the runtime makes them off that thread, and an incident still heals end to end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from heald.engine.runtime import Runtime
from heald.models import IncidentState, Signal
from tests.conftest import make_config, wait_for


def test_the_runtime_starts_and_queues_a_healing_from_inside_a_running_event_loop(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, healing={"group_wait_seconds": 0})

    async def main() -> tuple[int, str]:
        rt = Runtime(cfg, manage_services=False, run_probes=False, tail_logs=False)
        rt.start()  # DBOS.register_queue / retrieve_queue / list_workflows raise on this thread
        try:
            opened = rt.ingest(Signal(source="test", service="shop", summary="something odd",
                                      labels={"alertname": "Odd"}))
            assert opened.incident_id is not None
            inc = opened.incident_id
            await asyncio.to_thread(wait_for, lambda: rt.store.get_incident(inc).state.terminal
                                    or rt.store.get_incident(inc).state == IncidentState.needs_attention,
                                    timeout=60, what="the healing to run")
            return inc, rt.store.get_incident(inc).state.value
        finally:
            rt.stop()

    incident_id, state = asyncio.run(main())
    assert incident_id > 0 and state in ("escalated", "needs_attention", "resolved", "failed")


def test_a_start_that_fails_after_dbos_launched_leaves_nothing_launched_or_locked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure between DBOS's launch and the end of the start (here: the healing queue cannot
    be registered) ends DBOS and releases the state directory: the next heald on it starts."""
    import importlib

    runtime_module = importlib.import_module("heald.engine.runtime")  # the module, not heald.engine.runtime()

    cfg = make_config(tmp_path)

    def broken(_: object) -> None:
        raise RuntimeError("the queue could not be registered")

    monkeypatch.setattr(runtime_module, "register_healing_queue", broken)
    first = Runtime(cfg, manage_services=False, run_probes=False, tail_logs=False)
    with pytest.raises(RuntimeError, match="could not be registered"):
        first.start()
    assert not first.started and first.instance_lock is None
    monkeypatch.undo()
    second = Runtime(cfg, manage_services=False, run_probes=False, tail_logs=False)
    second.start()
    try:
        assert second.started
    finally:
        second.stop()
