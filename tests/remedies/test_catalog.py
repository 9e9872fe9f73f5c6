"""The service remedies on real parts: an HTTP admin API on loopback, a git repository, a
release directory with a ``current`` symlink, a log directory, allowlisted commands. Each:
parameters validated, effect checked, guard (a repeat is safe), undo where there is one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from heald import remedies
from heald.correlate.changes import HEALD_GIT_EMAIL, current_release
from heald.remedies import RemedyContext, RemedyError, RemedyParamsError
from heald.supervise import Supervisor
from tests.conftest import make_config


def ctx_for(tmp_path: Path, **config: object) -> RemedyContext:
    cfg = make_config(tmp_path, **config)
    return RemedyContext(config=cfg, supervisor=Supervisor(cfg), extra={"idempotency_key": "incident-1:attempt-1:x"})


def apply(name: str, params: dict[str, object], ctx: RemedyContext) -> remedies.RemedyResult:
    return remedies.get(name).apply(remedies.validate_params(name, params), ctx)


# -- http_request ----------------------------------------------------------------------------

class AdminApi:
    """A real admin API: PUT /admin/flags sets flags, POST /admin/reconnect counts calls (and
    remembers Idempotency-Key headers)."""

    def __init__(self) -> None:
        self.flags = {"checkout_failures": True}
        self.keys: list[str | None] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:  # noqa: N802
                n = int(self.headers.get("content-length", 0))
                outer.flags.update(json.loads(self.rfile.read(n) or b"{}"))
                self._reply(200, outer.flags)

            def do_POST(self) -> None:  # noqa: N802
                outer.keys.append(self.headers.get("idempotency-key"))
                self._reply(503 if self.path == "/admin/broken" else 200, {"reconnected": True})

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def admin() -> Iterator[AdminApi]:
    a = AdminApi()
    yield a
    a.server.shutdown()
    a.server.server_close()


def test_http_request_only_to_allowed_urls_and_with_undo(tmp_path: Path, admin: AdminApi) -> None:
    ctx = ctx_for(tmp_path, remedies={"http_allowed_urls": [f"{admin.base}/admin/"]})
    params = {"method": "PUT", "url": f"{admin.base}/admin/flags", "body": {"checkout_failures": False},
              "undo": {"method": "PUT", "url": f"{admin.base}/admin/flags", "body": {"checkout_failures": True}}}
    r = apply("http_request", params, ctx)
    assert admin.flags["checkout_failures"] is False and "→ 200" in r.output
    assert r.undo == {"method": "PUT", "url": f"{admin.base}/admin/flags", "body": {"checkout_failures": True}}
    apply("http_request", params, ctx)  # PUT is idempotent: a repeat changes nothing more
    assert admin.flags == {"checkout_failures": False}
    p = remedies.validate_params("http_request", params)
    remedies.get("http_request").undo(p, ctx, r.undo)
    assert admin.flags["checkout_failures"] is True
    with pytest.raises(RemedyError, match="not under any of remedies.http_allowed_urls"):
        apply("http_request", {"url": f"{admin.base}/other"}, ctx)
    with pytest.raises(RemedyError, match="answered 503, expected 200–299"):
        apply("http_request", {"url": f"{admin.base}/admin/broken"}, ctx)


def test_http_post_carries_the_idempotency_key(tmp_path: Path, admin: AdminApi) -> None:
    ctx = ctx_for(tmp_path, remedies={"http_allowed_urls": [f"{admin.base}/admin/"]})
    apply("http_request", {"url": f"{admin.base}/admin/reconnect"}, ctx)
    assert admin.keys == ["incident-1:attempt-1:x"]


def test_http_request_params_are_validated(tmp_path: Path) -> None:
    with pytest.raises(RemedyParamsError, match="url: Value error, expected an http:// or https:// URL"):
        remedies.validate_params("http_request", {"url": "file:///etc/passwd"})
    with pytest.raises(RemedyParamsError, match="method: Input should be"):
        remedies.validate_params("http_request", {"url": "http://x/admin", "method": "BREW"})
    with pytest.raises(ValueError, match="expected an http"):
        make_config(tmp_path, remedies={"http_allowed_urls": ["ftp://x/"]})


# -- git_revert ------------------------------------------------------------------------------

def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Dana", "GIT_AUTHOR_EMAIL": "dana@example.com",
           "GIT_COMMITTER_NAME": "Dana", "GIT_COMMITTER_EMAIL": "dana@example.com"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "config"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    (r / "shop.json").write_text('{"db_pool_size": 5}\n')
    git(r, "add", "-A")
    git(r, "commit", "-qm", "initial")
    (r / "shop.json").write_text('{"db_pool_size": 0}\n')
    git(r, "commit", "-qam", "Reduce the DB pool")
    return r


def test_git_revert_reverts_reloads_guards_and_undoes(tmp_path: Path, repo: Path, admin: AdminApi) -> None:
    bad = git(repo, "rev-parse", "HEAD")
    ctx = ctx_for(tmp_path, services={"shop": {"config_repo": {"path": str(repo),
                                                               "reload_url": f"{admin.base}/admin/reload"}}})
    remedy = remedies.get("git_revert")
    params = remedies.validate_params("git_revert", {"service": "shop", "commit": bad[:10]})
    snap = remedy.snapshot(params, ctx)
    assert not remedy.already_applied(params, ctx, snap)
    r = remedy.apply(params, ctx)
    assert json.loads((repo / "shop.json").read_text()) == {"db_pool_size": 5}
    assert "Reduce the DB pool" in r.output and "reloaded (200)" in r.output and len(admin.keys) == 1
    assert git(repo, "log", "-1", "--format=%ae") == HEALD_GIT_EMAIL
    # the guard sees the revert (after a crash mid-apply) and a second apply does not revert twice
    assert remedy.already_applied(params, ctx, snap)
    again = remedy.apply(params, ctx)
    assert "already reverted" in again.output and git(repo, "rev-list", "--count", "HEAD") == "3"
    remedy.undo(params, ctx, r.undo or {})
    assert json.loads((repo / "shop.json").read_text()) == {"db_pool_size": 0}


def test_git_revert_runs_no_hook_of_the_repository(tmp_path: Path, repo: Path) -> None:
    """heald runs as root; a configuration repository is written by others. Hooks in it (its
    own hooks directory, or one its config names) must not run when heald reverts a commit."""
    marker = tmp_path / "hook-ran"
    hooks = repo / "their-hooks"
    hooks.mkdir()
    for d in (hooks, repo / ".git" / "hooks"):
        for name in ("pre-commit", "commit-msg", "post-commit", "prepare-commit-msg"):
            (d / name).write_text(f"#!/bin/sh\necho {name} >> {marker}\n")
            (d / name).chmod(0o755)
    git(repo, "add", "their-hooks")
    git(repo, "commit", "-qm", "hooks", "--no-verify")
    marker.unlink(missing_ok=True)
    bad = git(repo, "rev-parse", "HEAD~1")
    ctx = ctx_for(tmp_path, services={"shop": {"config_repo": {"path": str(repo)}}})
    for hooks_path in (None, str(hooks)):
        if hooks_path:
            git(repo, "config", "core.hooksPath", hooks_path)
        r = apply("git_revert", {"service": "shop", "commit": bad[:10]}, ctx)
        assert "reverted" in r.output, r.output
        remedies.get("git_revert").undo(remedies.validate_params("git_revert", {"service": "shop", "commit": bad}),
                                        ctx, r.undo or {})
    assert not marker.exists(), marker.read_text()


def test_git_revert_refuses_a_dirty_tree_and_unknown_commits(tmp_path: Path, repo: Path) -> None:
    ctx = ctx_for(tmp_path, services={"shop": {"config_repo": {"path": str(repo)}}, "other": {}})
    with pytest.raises(RemedyError, match="failed"):
        apply("git_revert", {"service": "shop", "commit": "deadbeef"}, ctx)
    with pytest.raises(RemedyError, match="has no config_repo"):
        apply("git_revert", {"service": "other", "commit": "deadbeef"}, ctx)
    (repo / "shop.json").write_text("{}\n")
    with pytest.raises(RemedyError, match="uncommitted changes"):
        apply("git_revert", {"service": "shop", "commit": git(repo, "rev-parse", "HEAD")}, ctx)
    with pytest.raises(RemedyParamsError, match="commit: String should match pattern"):
        remedies.validate_params("git_revert", {"service": "shop", "commit": "HEAD~1; rm -rf /"})


# -- rollback_release ------------------------------------------------------------------------

def test_rollback_release_switches_the_symlink_restarts_and_undoes(tmp_path: Path) -> None:
    releases = tmp_path / "releases"
    for name in ("v9", "v10", "v11"):
        (releases / name).mkdir(parents=True)
    os.symlink(releases / "v11", tmp_path / "current")
    ctx = ctx_for(tmp_path, services={"shop": {
        "command": [sys.executable, "-c", "import time; time.sleep(600)"],
        "releases": {"dir": str(releases), "current": "current"}}})
    ctx.supervisor.start_all()
    first = ctx.supervisor.get("shop").identity()
    try:
        remedy = remedies.get("rollback_release")
        rel = ctx.config.services["shop"].releases
        params = remedies.validate_params("rollback_release", {"service": "shop"})
        snap = remedy.snapshot(params, ctx)
        assert snap == {"current": "v11", "target": "v10"}
        assert not remedy.already_applied(params, ctx, snap)
        r = remedy.apply(params, ctx)
        assert current_release(rel) == "v10" and os.path.islink(tmp_path / "current")
        assert "from release v11 to v10" in r.output and "restarted shop" in r.output
        assert "heald rolled back to release v10" in (tmp_path / "revisions.log").read_text()
        second = ctx.supervisor.get("shop").identity()
        assert second is not None and second != first
        assert remedy.already_applied(params, ctx, snap)  # the guard sees the switch
        remedy.undo(params, ctx, r.undo or {})
        assert current_release(rel) == "v11"
        assert ctx.supervisor.get("shop").identity() not in (None, first, second)  # restarted again
        with pytest.raises(RemedyError, match="'v1' is not a directory"):
            apply("rollback_release", {"service": "shop", "to": "v1"}, ctx)
        with pytest.raises(RemedyParamsError, match="to: String should match pattern"):
            remedies.validate_params("rollback_release", {"service": "shop", "to": "../../etc"})
    finally:
        ctx.supervisor.stop_all()


def test_rollback_with_no_earlier_release(tmp_path: Path) -> None:
    (tmp_path / "releases" / "v1").mkdir(parents=True)
    os.symlink(tmp_path / "releases" / "v1", tmp_path / "current")
    ctx = ctx_for(tmp_path, services={"shop": {"releases": {"dir": "releases", "current": "current"}}})
    with pytest.raises(RemedyError, match="no release before 'v1'"):
        apply("rollback_release", {"service": "shop"}, ctx)


# -- cleanup_path ----------------------------------------------------------------------------

def test_cleanup_deletes_only_old_matching_files_in_the_configured_path(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    (logs / "archive").mkdir(parents=True)
    old = time.time() - 3 * 86400

    def make(path: Path, size: int, mtime: float | None = None) -> Path:
        path.write_bytes(b"x" * size)
        if mtime:
            os.utime(path, (mtime, mtime))
        return path

    rotated = [make(logs / f"shop.log.{i}", 1000, old) for i in range(3)]
    nested = make(logs / "archive" / "shop.log.9", 500, old)
    fresh = make(logs / "shop.log.today", 100)  # matches the pattern, but too new
    live = make(logs / "shop.log", 100, old)  # old, but does not match the pattern
    outside = make(tmp_path / "shop.log.5", 100, old)  # matches, but outside the path
    secret = make(tmp_path / "keep.log.1", 10, old)
    os.symlink(secret, logs / "link.log.1")  # a symlink is not followed nor deleted
    ctx = ctx_for(tmp_path, services={"shop": {"cleanup": [
        {"path": "logs", "pattern": "*.log.*", "older_than_seconds": 86400}]}})
    r = apply("cleanup_path", {"service": "shop", "path": str(logs)}, ctx)
    assert not any(p.exists() for p in [*rotated, nested])
    assert fresh.exists() and live.exists() and outside.exists() and secret.exists() and (logs / "link.log.1").is_symlink()
    assert "deleted 4 files" in r.output and "kept 1 newer" in r.output
    again = apply("cleanup_path", {"service": "shop", "path": f"{tmp_path}/./logs/"}, ctx)  # the same path
    assert "deleted 0 files" in again.output
    with pytest.raises(RemedyError, match="not a cleanup path of shop"):
        apply("cleanup_path", {"service": "shop", "path": str(tmp_path)}, ctx)


# -- run_command -----------------------------------------------------------------------------

def test_run_command_only_from_the_allowlist(tmp_path: Path) -> None:
    marker = tmp_path / "flushed"
    ctx = ctx_for(tmp_path, remedies={"commands": {
        "flush-cache": {"argv": ["touch", str(marker)], "idempotent": True},
        "failing": {"argv": [sys.executable, "-c", "import sys; print('disk busy'); sys.exit(3)"]},
        "slow": {"argv": [sys.executable, "-c", "import time; time.sleep(30)"], "timeout_seconds": 0.5},
        "env": {"argv": [sys.executable, "-c", "import os; print(sorted(os.environ))"], "env": {"MODE": "x"}}}})
    os.environ["HEALD_TEST_SECRET"] = "s3cret"
    try:
        assert "succeeded" in apply("run_command", {"name": "flush-cache"}, ctx).output and marker.exists()
        env_out = apply("run_command", {"name": "env"}, ctx).output
        assert "MODE" in env_out and "HEALD_TEST_SECRET" not in env_out
    finally:
        del os.environ["HEALD_TEST_SECRET"]
    with pytest.raises(RemedyError, match="exited with code 3: disk busy"):
        apply("run_command", {"name": "failing"}, ctx)
    t0 = time.monotonic()
    with pytest.raises(RemedyError, match="killed after 0.5 s"):
        apply("run_command", {"name": "slow"}, ctx)
    assert time.monotonic() - t0 < 10
    with pytest.raises(RemedyError, match="not on the allowlist remedies.commands"):
        apply("run_command", {"name": "rm -rf /"}, ctx)
    remedy = remedies.get("run_command")
    assert remedy.already_applied(remedies.validate_params("run_command", {"name": "failing"}), ctx, None)
    assert not remedy.already_applied(remedies.validate_params("run_command", {"name": "flush-cache"}), ctx, None)


def test_every_remedy_declares_its_target_and_whether_it_touches_heald() -> None:
    """The CI remedies register from heald.ci (an entry-point plugin); every catalog entry
    answers ``touches_heald`` itself, and a remedy that does not cannot be registered."""
    from heald.remedies import CATALOG, Remedy, RemedyParams, RemedyResult, Target, register

    assert {"revert_commit", "add_dependency", "lint_autofix"} <= set(CATALOG)
    assert type(CATALOG["revert_commit"]).__module__ == "heald.ci.remedies"
    for name, remedy in CATALOG.items():
        assert type(remedy).touches_heald is not Remedy.touches_heald, name
    restart = CATALOG["restart_process"]
    assert restart.target(restart.Params(service="shop")) == Target("service", "shop")
    assert str(restart.target(restart.Params(service="shop"))) == "service:shop"

    class Silent(Remedy[RemedyParams]):  # says nothing about heald itself
        name = "silent"
        description = "test"
        Params = RemedyParams

        def apply(self, params: RemedyParams, ctx: RemedyContext) -> RemedyResult:
            return RemedyResult("done")

    with pytest.raises(TypeError, match="touches_heald"):
        register(Silent)
    assert "silent" not in CATALOG
