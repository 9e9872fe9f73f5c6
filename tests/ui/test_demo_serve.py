"""``heald demo --serve``: the dashboard is up while the demo heals, and after, until Ctrl-C."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time

import httpx
import pytest

from tests.conftest import heald_cmd

pytestmark = pytest.mark.slow


def test_demo_serve_keeps_the_dashboard_up_until_ctrl_c(tmp_path) -> None:
    proc = subprocess.Popen([*heald_cmd("demo", "--serve", "--fault", "process-crash", "--workdir", str(tmp_path / "demo"))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True).start()  # type: ignore[union-attr]

    def wait_line(pattern: str, timeout: float = 120.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                assert proc.poll() is None, f"heald demo exited {proc.returncode}: {''.join(seen)}"
                continue
            seen.append(line)
            if m := re.search(pattern, line):
                return m
        pytest.fail(f"no line matching {pattern!r} within {timeout:g} s: {''.join(seen)}")

    try:
        m = wait_line(r"dashboard:\s+(http://127\.0\.0\.1:\d+)/\s+\(sign in with this one-time admin token: (heald_\S+)\)")
        url, token = m.group(1), m.group(2)
        wait_line(r"keeps serving the dashboard .* press Ctrl-C")
        with httpx.Client(base_url=url, timeout=10) as c:
            assert c.post("/login", data={"token": token}).status_code == 303
            overview = c.get("/")
            assert overview.status_code == 200
            assert re.search(r'<tr id="incident-\d+" data-state="resolved">', overview.text), overview.text[-3000:]
            time.sleep(1.0)
            assert c.get("/healthz").status_code == 200  # still serving after the faults
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=180)  # the demo removes its podman containers and images first
        assert proc.returncode == 0, "".join(seen)
        assert "process-crash" in out  # the results table
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
