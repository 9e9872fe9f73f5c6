"""Simultaneous incidents on distinct managed services all end, healed, through the merged
steps (issue 19). The load is :func:`bench.concurrency.run_one` (one driver for this test and
the benchmark), here at a small size on SQLite and PostgreSQL."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def _bench() -> object:
    spec = importlib.util.spec_from_file_location("heald_bench_concurrency", REPO / "bench" / "concurrency.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_simultaneous_incidents_all_end_healed_in_seven_steps_each(db_url: str, tmp_path: Path) -> None:
    """8 services' processes killed at once and 8 signals sent together: every incident ends
    resolved, no request fails, and each healing took 7 DBOS steps (group wait, reproduce,
    diagnose, plan+decide+lease, act, verify, learn+breaker+close) instead of the 12 before."""
    result = _bench().run_one("postgresql" if db_url.startswith("postgresql") else "sqlite", 8,  # type: ignore[attr-defined]
                              None if db_url.startswith("sqlite") else db_url, tmp_path, 120.0)
    print(result)
    assert result["ended"] == result["incidents"] == 8, result
    assert result["by_state"] == {"resolved": 8}, result["not_resolved"]
    assert result["server_errors"] == 0 and result["http"] == {"202": 8}, result
    assert result["workflows"] == {"SUCCESS": 8}, result
    assert result["dbos_steps_per_healing"] == 7, result
    assert set(result["stages_ms"]) >= {"diagnose", "plan+decide", "act", "verify", "finish"}, result
