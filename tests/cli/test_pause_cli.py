"""``heald pause`` / ``heald resume`` and the pause in ``heald status``, as a real subprocess on
a real SQLite database."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_cli import env_for
from tests.conftest import run_heald


def test_pause_resume_and_status(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    missing = run_heald("pause", env=env, cwd=tmp_path)
    assert missing.returncode == 2 and "--reason" in missing.stderr
    blank = run_heald("pause", "--reason", "  ", env=env, cwd=tmp_path)
    assert blank.returncode == 2 and "--reason: required" in blank.stderr
    assert run_heald("resume", env=env, cwd=tmp_path).returncode == 1  # nothing to resume
    paused = run_heald("pause", "--reason", "deploy freeze", "--json", env=env, cwd=tmp_path)
    assert paused.returncode == 0, paused.stderr
    assert json.loads(paused.stdout)["paused"] is True and json.loads(paused.stdout)["actor"].startswith("cli:")
    status = run_heald("status", env=env, cwd=tmp_path)
    assert "PAUSED" in status.stdout and "deploy freeze" in status.stdout
    assert json.loads(run_heald("status", "--json", env=env, cwd=tmp_path).stdout)["pause"]["paused"] is True
    resumed = run_heald("resume", "--reason", "freeze over", env=env, cwd=tmp_path)
    assert resumed.returncode == 0 and "resumed" in resumed.stdout
    assert "PAUSED" not in run_heald("status", env=env, cwd=tmp_path).stdout
    audit = run_heald("audit", "list", "--json", env=env, cwd=tmp_path)
    assert audit.returncode == 0, audit.stderr
    assert {"heald.paused", "heald.resumed"} <= {e["event"] for e in json.loads(audit.stdout)}
