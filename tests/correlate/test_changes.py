"""Change correlation on real git repositories and a real release directory with a
``current`` symlink."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

from heald.config import HealdConfig
from heald.correlate.changes import HEALD_GIT_EMAIL, HEALD_GIT_NAME, ChangeTracker, natural_key
from heald.models import Signal, SignalStatus, utcnow
from tests.conftest import make_config


def git(repo: Path, *args: str, author: tuple[str, str] = ("Dana Dev", "dana@example.com"),
        at: float | None = None) -> str:
    """Run git in ``repo`` as ``author``; ``at`` (Unix seconds) dates a commit, else now."""
    env = {**os.environ, "GIT_AUTHOR_NAME": author[0], "GIT_AUTHOR_EMAIL": author[1],
           "GIT_COMMITTER_NAME": author[0], "GIT_COMMITTER_EMAIL": author[1]}
    if at is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"@{int(at)} +0000"
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout.strip()


def commit(repo: Path, text: str, message: str, at: float | None = None, **kw: tuple[str, str]) -> str:
    (repo / "shop.json").write_text(text)
    git(repo, "add", "-A", **kw)
    git(repo, "commit", "-qm", message, at=at, **kw)
    return git(repo, "rev-parse", "HEAD")


def watching_since() -> datetime:
    """A tracker's baseline 2 s ago: a commit made now, its time in whole seconds, is after it
    (the initial commit, a minute old, is not)."""
    return utcnow() - timedelta(seconds=2)


def setup(tmp_path: Path) -> tuple[HealdConfig, Path, Path]:
    repo = tmp_path / "config"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    before = time.time() - 60  # the state heald finds: older than any tracker's baseline
    commit(repo, '{"pool": 5}', "initial config", at=before)
    releases = tmp_path / "releases"
    for name in ("v9", "v10", "v2"):
        (releases / name).mkdir(parents=True)
    os.symlink(releases / "v9", tmp_path / "current")
    os.utime(tmp_path / "current", (before, before), follow_symlinks=False)
    c = make_config(tmp_path, services={"shop": {"config_repo": {"path": str(repo)},
                                                 "releases": {"dir": str(releases), "current": "current"}}})
    return c, repo, releases


def firing(**kw: object) -> Signal:
    return Signal.model_validate({"source": "probe", "service": "shop", "summary": "shop 5xx",
                                  "labels": {"alertname": "HighErrorRate"}, "starts_at": utcnow(), **kw})


def test_changes_before_heald_watched_are_not_suspects(tmp_path: Path) -> None:
    c, _, _ = setup(tmp_path)
    tracker = ChangeTracker(c)
    assert tracker.annotate(firing()).annotations == {}


def test_a_config_commit_just_before_the_failure_is_the_suspect(tmp_path: Path) -> None:
    c, repo, _ = setup(tmp_path)
    tracker = ChangeTracker(c, watching_since())
    parent = git(repo, "rev-parse", "HEAD")
    bad = commit(repo, '{"pool": 0}', "Reduce the DB pool")
    notes = tracker.annotate(firing()).annotations
    assert notes["change_kind"] == "config" and notes["change_id"] == bad and notes["change_previous"] == parent
    assert notes["change_summary"] == "Reduce the DB pool" and notes["change_author"] == "Dana Dev <dana@example.com>"
    assert 0 <= float(notes["change_age_seconds"]) < 5
    # outside the window, or after the failure began: not a suspect
    old = firing(starts_at=utcnow() - timedelta(seconds=30))
    assert "change_id" not in tracker.annotate(old).annotations
    narrow = ChangeTracker(make_config(tmp_path, services=c.model_dump(mode="json")["services"],
                                       correlation={"change_window_seconds": 0.001}), tracker.baseline)
    assert "change_id" not in narrow.annotate(firing(starts_at=utcnow() + timedelta(seconds=5))).annotations
    # a resolved signal is not annotated
    assert tracker.annotate(firing(status=SignalStatus.resolved)).annotations == {}


def test_reverted_commits_and_healds_own_are_not_suspects(tmp_path: Path) -> None:
    c, repo, _ = setup(tmp_path)
    tracker = ChangeTracker(c, watching_since())
    bad = commit(repo, '{"pool": 0}', "Reduce the DB pool")
    git(repo, "revert", "--no-edit", bad, author=(HEALD_GIT_NAME, HEALD_GIT_EMAIL))
    assert "change_id" not in tracker.annotate(firing()).annotations


def test_a_release_switch_is_a_suspect_unless_heald_rolled_back(tmp_path: Path) -> None:
    c, _, releases = setup(tmp_path)
    tracker = ChangeTracker(c)
    time.sleep(0.05)
    tmp = tmp_path / "current.tmp"
    os.symlink(releases / "v10", tmp)
    os.replace(tmp, tmp_path / "current")
    (tmp_path / "revisions.log").write_text("Branch main (at 1a2b3c4) deployed as release v10 by deployer\n")
    notes = tracker.annotate(firing()).annotations
    assert notes["change_kind"] == "release" and notes["change_id"] == "v10"
    assert notes["change_previous"] == "v9" and notes["change_author"] == "deployer"  # natural order: v2 < v9 < v10
    with open(tmp_path / "revisions.log", "a") as log:
        log.write("heald rolled back to release v10\n")
    assert "change_id" not in tracker.annotate(firing()).annotations


def test_the_previous_release_is_the_one_live_before_it(tmp_path: Path) -> None:
    """v10 was bad and rolled back; v11 is deployed on top of v9: v11's previous is v9, not v10."""
    c, _, releases = setup(tmp_path)
    (releases / "v11").mkdir()
    tracker = ChangeTracker(c)
    time.sleep(0.05)
    tmp = tmp_path / "current.tmp"
    os.symlink(releases / "v11", tmp)
    os.replace(tmp, tmp_path / "current")
    (tmp_path / "revisions.log").write_text(
        "Branch main (at 1a2b3c4) deployed as release v9 by dana\n"
        "Branch main (at 2b3c4d5) deployed as release v10 by dana\n"
        "heald rolled back to release v9 (2025-01-01T00:00:00+00:00)\n"
        "Branch main (at 3c4d5e6) deployed as release v11 by dana\n")
    notes = tracker.annotate(firing()).annotations
    assert notes["change_id"] == "v11" and notes["change_previous"] == "v9" and notes["change_author"] == "dana"


def test_natural_order() -> None:
    assert sorted(["v10", "v9", "v2", "20240101120000", "20231231000000"], key=natural_key) == \
        ["20231231000000", "20240101120000", "v2", "v9", "v10"]
