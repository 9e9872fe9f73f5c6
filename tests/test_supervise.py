"""What the supervisor does to managed services at heald's start (issue 12 item 4): it adopts the
running ones and starts only those heald never started; a service with an open incident, and one
that died while heald was away and has probes, are left as they are (real processes)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from heald.supervise import Supervisor
from tests.conftest import make_config, wait_for

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
PROBE = [{"type": "process", "interval_seconds": 1}]


def test_start_all_starts_only_what_heald_never_started(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, services={name: {"command": SLEEPER, "probes": PROBE if name != "bare" else []}
                                          for name in ("running", "open", "probed", "bare")})
    first = Supervisor(cfg)
    try:
        assert first.start_all() == dict.fromkeys(first.processes, "started")  # the initial start
        dead = {}
        for name in ("open", "probed", "bare"):  # they die while heald is away
            ident = first.processes[name].identity()
            assert ident is not None
            os.killpg(ident.pid, signal.SIGKILL)
            dead[name] = ident
            wait_for(lambda p=first.processes[name]: not p.is_running(), what=f"{name} to die")

        second = Supervisor(cfg)  # the next heald
        assert second.start_all(leave={"open"}) == {"running": "adopted", "open": "left", "probed": "down",
                                                    "bare": "started_unprobed"}
        assert not second.processes["open"].is_running() and not second.processes["probed"].is_running()
        assert second.processes["bare"].is_running() and second.processes["bare"].identity() != dead["bare"]

        second.stop_all()  # stopped on purpose: the next start is an initial start again
        assert not any(p.state_file.exists() for p in second.processes.values())
        third = Supervisor(cfg)
        assert third.start_all(leave={"open"}) == {"running": "started", "open": "left", "probed": "started",
                                                   "bare": "started"}
        third.stop_all()
    finally:
        first.stop_all()
