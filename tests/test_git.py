"""heald's one git runner (heald._git) against a hostile environment: a user configuration that
rewrites URLs, a repository whose hooks would run a program, an ``ext::`` remote that would run
a command, a server that never answers. Real git, real repositories, a real TCP listener."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from heald import _git
from heald._git import GitError


def make_repo(path: Path, content: str) -> str:
    """A repository at ``path`` with one commit of ``file.txt``; returns the commit's sha."""
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True, env=env)
    (path / "file.txt").write_text(content)
    subprocess.run(["git", "-C", str(path), "add", "file.txt"], check=True, env=env)
    subprocess.run(["git", "-C", str(path), "commit", "-qm", content], check=True, env=env)
    return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True, env=env, capture_output=True,
                          text=True).stdout.strip()


def test_user_configuration_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ~/.gitconfig (and ~/.config/git) that redirects a clone URL to another repository is
    ignored: heald fetches what it was told to."""
    legit_sha = make_repo(tmp_path / "legit", "legit")
    make_repo(tmp_path / "evil", "evil")
    home = tmp_path / "home"
    (home / ".config" / "git").mkdir(parents=True)
    redirect = f'[url "{tmp_path / "evil"}"]\n\tinsteadOf = {tmp_path / "legit"}\n'
    (home / ".gitconfig").write_text(redirect)
    (home / ".config" / "git" / "config").write_text(redirect)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    # the redirect is live for a plain git in this environment …
    plain = subprocess.run(["git", "ls-remote", str(tmp_path / "legit"), "HEAD"], capture_output=True, text=True,
                           check=False)
    assert plain.returncode == 0 and legit_sha not in plain.stdout
    # … and has no effect on heald's runner
    assert _git.run("ls-remote", "--", str(tmp_path / "legit"), "HEAD").split()[0] == legit_sha
    _git.run("clone", "--bare", "--quiet", "--", str(tmp_path / "legit"), str(tmp_path / "clone.git"))
    assert _git.run("rev-parse", "HEAD", git_dir=tmp_path / "clone.git").strip() == legit_sha


def test_repository_hooks_and_inherited_git_dir_are_not_used(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A repository whose config names a hooks directory with a post-commit hook, and a
    GIT_DIR in heald's environment pointing elsewhere: the commit happens in the repository
    asked for and no hook runs."""
    make_repo(tmp_path / "repo", "one")
    repo = tmp_path / "repo"
    marker = tmp_path / "hook-ran"
    hooks = repo / "evil-hooks"
    hooks.mkdir()
    for name in ("post-commit", "pre-commit"):
        (hooks / name).write_text(f"#!/bin/sh\ntouch {marker}\n")
        (hooks / name).chmod(0o755)
    (repo / ".git" / "hooks" / "post-commit").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (repo / ".git" / "hooks" / "post-commit").chmod(0o755)
    subprocess.run(["git", "-C", str(repo), "config", "core.hooksPath", str(hooks)], check=True)
    make_repo(tmp_path / "other", "other")
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "other" / ".git"))
    (repo / "file.txt").write_text("two")
    ident = {"GIT_AUTHOR_NAME": "h", "GIT_AUTHOR_EMAIL": "h@x", "GIT_COMMITTER_NAME": "h", "GIT_COMMITTER_EMAIL": "h@x"}
    _git.run("commit", "-qam", "two", cwd=repo, env=ident)
    assert _git.run("log", "-1", "--format=%s", cwd=repo).strip() == "two"
    assert not marker.exists()


def test_ext_transport_is_refused(tmp_path: Path) -> None:
    """An ``ext::`` URL would make git run a command; the runner allows only file, https,
    http, ssh and git, even when the caller's environment allows ext."""
    marker = tmp_path / "ext-ran"
    url = f"ext::sh -c touch% {marker}"
    with pytest.raises(GitError, match="not allowed|unsupported|protocol"):
        _git.run("ls-remote", "--", url, timeout=30)
    with pytest.raises(GitError):
        _git.run("ls-remote", "--", url, timeout=30,
                 env={"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "protocol.ext.allow",
                      "GIT_CONFIG_VALUE_0": "always"})
    assert not marker.exists()


def test_a_server_that_never_answers_is_cut_off(tmp_path: Path) -> None:
    """A git:// server that accepts the connection and then says nothing: the command ends
    with a GitError at its timeout instead of hanging heald."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        with pytest.raises(GitError, match=r"timed out after 2 s"):
            _git.run("ls-remote", "--", f"git://127.0.0.1:{server.getsockname()[1]}/repo", timeout=2)
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


def test_failures_are_one_error_type_naming_the_command(tmp_path: Path) -> None:
    make_repo(tmp_path / "repo", "one")
    with pytest.raises(GitError, match=r"git rev-parse --verify --end-of-options nope\^\{commit\} failed"):
        _git.run("rev-parse", "--verify", "--end-of-options", "nope^{commit}", cwd=tmp_path / "repo")
    assert not _git.succeeds("cat-file", "-e", "--end-of-options", "nope", cwd=tmp_path / "repo")
    assert _git.succeeds("cat-file", "-e", "--end-of-options", "HEAD", cwd=tmp_path / "repo")
    # an option-looking revision after --end-of-options is a revision, not an option
    out = tmp_path / "written"
    with pytest.raises(GitError):
        _git.run("log", "--end-of-options", f"--output={out}", cwd=tmp_path / "repo")
    assert not out.exists()
