"""heald's own log: one structured line per healing stage, and uvicorn's lines in the same
format (issue 12, item 9)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import structlog

from heald.api.server import bound_port, make_server
from heald.log import configure
from heald.models import IncidentState, Signal, SignalStatus
from tests.conftest import wait_for
from tests.engine.test_workflow import alert, sleeper_config, terminal


@pytest.fixture
def restore_logging():  # type: ignore[no-untyped-def]
    yield
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` parsed as JSON (fails the test on the first line that is not)."""
    out = []
    for line in text.splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                pytest.fail(f"not a JSON line in heald's log: {line!r}")
    return out


def test_every_stage_logs_one_json_line_and_uvicorn_too(tmp_path: Path, start_runtime, restore_logging) -> None:
    # a file, not capsys: DBOS's own handler binds the sys.stderr of its first start
    log_file = (tmp_path / "heald.log").open("w")
    configure("info", json_logs=True, stream=log_file)
    rt = start_runtime(sleeper_config(tmp_path, risk="medium"), run_probes=False)
    _, server = make_server(rt, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, what="uvicorn started")
        assert bound_port(server) > 0
        inc_id = rt.ingest(alert()).incident_id
        wait_for(lambda: rt.store.get_incident(inc_id).state == IncidentState.awaiting_approval, what="approval wait")
        rt.approve(inc_id, "alice", "approve", "go ahead")
        wait_for(lambda: rt.store.get_incident(inc_id).state == IncidentState.verifying, what="verifying")
        rt.ingest(alert(SignalStatus.resolved))
        assert wait_for(lambda: terminal(rt, inc_id), what="resolution").state == IncidentState.resolved
        other = rt.ingest(Signal(source="test", service="svc", labels={"alertname": "Mystery"})).incident_id
        assert wait_for(lambda: terminal(rt, other), what="hand-over").state == IncidentState.needs_attention
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    log_file.flush()
    lines = json_lines((tmp_path / "heald.log").read_text())
    mine = [x["event"] for x in lines if x.get("incident_id") == inc_id and x["event"].startswith("incident.")]
    for stage in ("diagnosed", "planned", "decided", "awaiting_approval", "acted", "verified", "resolved"):
        assert mine.count(f"incident.{stage}") == 1, (stage, mine)
    acted = next(x for x in lines if x["event"] == "incident.acted" and x["incident_id"] == inc_id)
    assert acted["remedy"] == "restart_process" and acted["status"] == "succeeded"
    assert [x["event"] for x in lines if x.get("incident_id") == other and x["event"] == "incident.needs_attention"] \
        == ["incident.needs_attention"]
    uvicorn = [x for x in lines if str(x.get("logger", "")).startswith("uvicorn")]
    assert any("Uvicorn running on" in x["event"] for x in uvicorn), lines
    assert all(x["level"] and x["timestamp"] for x in uvicorn)


def test_console_format_applies_to_uvicorn_lines(tmp_path: Path, restore_logging) -> None:
    with (tmp_path / "heald.log").open("w") as f:
        configure("info", json_logs=False, stream=f)
        logging.getLogger("uvicorn.error").info("Uvicorn running on %s", "http://127.0.0.1:1")
        structlog.get_logger("heald.engine").info("incident.decided", incident_id=7)
    err = (tmp_path / "heald.log").read_text().splitlines()
    assert any("Uvicorn running on http://127.0.0.1:1" in x and "[uvicorn.error]" in x and "[info" in x for x in err)
    assert any("incident.decided" in x and "incident_id=7" in x for x in err)
    assert not any(x.lstrip().startswith("{") for x in err)
