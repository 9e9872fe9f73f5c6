"""bench/mttr.py runs and prints its figures (one fault, one run, to keep it short)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_mttr_bench_reports_times_and_the_kubernetes_column() -> None:
    r = subprocess.run([sys.executable, str(REPO / "bench" / "mttr.py"), "--runs", "1", "--fault", "process-crash",
                        "--fault", "checkout-failures", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    crash, checkout = report["faults"]
    assert crash["fault"] == "process-crash" and crash["as_expected"] == 1
    assert crash["ttd_after_first_failure_s"]["median"] <= crash["ttr_after_first_failure_s"]["median"]
    k8s = crash["k8s_liveness"]
    # a liveness probe needs three failures 10 s apart: at least 20 s, whatever heald measured
    assert k8s["detected"] == 1 and k8s["healed"] == 1 and 20 <= k8s["ttd_median_s"] <= k8s["ttr_median_s"]
    assert checkout["k8s_liveness"]["detected"] == 0 and checkout["k8s_liveness"]["why_not"] == ["/healthz never failed"]
    assert report["targets"]["median_ttd_after_first_failure_s"] is not None
