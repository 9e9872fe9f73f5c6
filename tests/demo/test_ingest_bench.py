"""bench/ingest.py runs tiny (``--quick``: heald on SQLite, and Alertmanager when Debian's
package is installed) and reports every alert it accepted stored once, with exact dedup."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_the_ingest_bench_stores_every_accepted_alert_once() -> None:
    servers = ["--server", "sqlite"]
    if shutil.which("prometheus-alertmanager"):
        servers += ["--server", "alertmanager"]
    r = subprocess.run([sys.executable, str(REPO / "bench" / "ingest.py"), "--quick", "--batch", "5",
                        "--concurrency", "2", *servers, "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    heald = [c for c in report["cells"] if c["server"] == "sqlite"]
    assert [c["phase"] for c in heald] == ["opening", "duplicates"]
    opening, duplicates = heald
    assert opening["alerts"] == 20 and duplicates["alerts"] == 40
    assert duplicates["accepted"] == duplicates["stored"] == 60 and duplicates["lost"] == 0
    assert all(c["exact"] and c["errors"] == 0 and c["alerts_per_s"] > 0 and c["p99_ms"] >= c["p50_ms"] > 0
               for c in report["cells"])
    if len(servers) > 2:
        assert all(c["ratio_to_alertmanager"] is not None for c in heald)
    assert len(report["load_avg"]) == 3
