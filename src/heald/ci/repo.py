"""Repositories on heald's side: a bare clone cache per repository, a work tree per attempt,
commit facts, and pushing a fix branch.

Every git command here runs on the host, so it must never read anything a sandbox could have
written: commands that touch a work tree name its administrative directory explicitly
(``--git-dir <cache>/worktrees/<name> --work-tree <path>``), never the ``.git`` file inside
the tree, and run through :func:`heald._git.run` (no user configuration, no hooks, no fsmonitor). Git work *inside* the
sandbox (bisection) uses a
git directory of its own inside the work tree (see :mod:`heald.ci.runner`).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from heald._git import GitError, run, succeeds
from heald.sandbox.disk import release_under


@dataclass(frozen=True)
class Commit:
    """Facts about one commit: ``sha``, ``author`` (name <email>), ``authored_at`` (UTC),
    ``subject``."""

    sha: str
    author: str
    authored_at: datetime
    subject: str

    def age(self, now: datetime | None = None) -> str:
        """How old the commit is, for humans: ``3 h``, ``2 d``."""
        secs = max(0.0, ((now or datetime.now(UTC)) - self.authored_at).total_seconds())
        for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
            if secs >= size:
                return f"{secs / size:.0f} {unit}"
        return f"{secs:.0f} s"


def auth_env(url: str, token: str | None, host: str) -> dict[str, str]:
    """Environment that gives git the token for ``https://<host>/`` URLs only (as
    actions/checkout does, an ``http.extraheader``), through ``GIT_CONFIG_*`` so it never shows
    on a command line."""
    if not token or not url.startswith(f"https://{host}/"):
        return {}
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    return {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"http.https://{host}/.extraheader",
            "GIT_CONFIG_VALUE_0": f"AUTHORIZATION: basic {basic}"}


def slug(repo: str, url: str) -> str:
    """A directory name for a repository: its readable name plus a hash of its URL."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", repo).strip("-.")[:60] or "repo"
    return f"{name}-{hashlib.sha256(url.encode()).hexdigest()[:10]}"


class RepoCache:
    """A bare clone of one repository under ``<work_dir>/repos`` and its work trees under
    ``<work_dir>/trees``. Safe across threads and processes (a file lock per repository)."""

    def __init__(self, work_dir: Path, repo: str, url: str, *, timeout: float = 300.0,
                 env: Mapping[str, str] | None = None, max_worktrees: int = 8):
        self.repo = repo
        self.url = url
        self.name = slug(repo, url)
        self.git_dir = work_dir / "repos" / f"{self.name}.git"
        self.trees = work_dir / "trees"
        self.timeout = timeout
        self.env = dict(env or {})
        self.max_worktrees = max_worktrees
        for d in (work_dir, work_dir / "repos", self.trees):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)  # the sandbox's unprivileged user must be able to reach work trees

    @contextmanager
    def locked(self) -> Iterator[None]:
        lock_path = self.git_dir.with_suffix(".lock")
        with open(lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def git(self, *args: str, timeout: float | None = None, check: bool = True) -> str:
        return run(*args, git_dir=self.git_dir, timeout=timeout or self.timeout, env=self.env, check=check)

    def update(self, want: Sequence[str] = ()) -> None:
        """Clone (first time) or fetch every branch and tag; then make sure the commits in
        ``want`` are present, fetching them by id if no branch holds them. Raises GitError."""
        with self.locked():
            if not (self.git_dir / "HEAD").exists():
                tmp = self.git_dir.with_name(self.git_dir.name + f".tmp{os.getpid()}")
                shutil.rmtree(tmp, ignore_errors=True)
                run("clone", "--bare", "--quiet", "--", self.url, str(tmp), timeout=self.timeout, env=self.env)
                run("config", "remote.origin.fetch", "+refs/heads/*:refs/heads/*", git_dir=tmp)
                (tmp / "info").mkdir(exist_ok=True)
                (tmp / "info" / "exclude").write_text(".heald/\n")
                tmp.rename(self.git_dir)
            else:
                self.git("fetch", "--quiet", "--prune", "--tags", "origin", "+refs/heads/*:refs/heads/*")
            for rev in want:
                if rev and not self.has(rev):
                    self.git("fetch", "--quiet", "--end-of-options", "origin", rev, check=False)
            self.git_dir.chmod(0o755)

    def succeeds(self, *args: str) -> bool:
        """Does this git command (on the cache) exit 0?"""
        return succeeds(*args, git_dir=self.git_dir, timeout=60)

    def has(self, rev: str) -> bool:
        return self.succeeds("cat-file", "-e", "--end-of-options", f"{rev}^{{commit}}")

    def resolve(self, rev: str) -> str:
        """The full sha of ``rev`` (a sha, branch or tag). Raises GitError naming it."""
        try:
            return self.git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}", timeout=30).strip()
        except GitError:
            raise GitError(f"{rev!r} is not a commit of {self.repo}") from None

    def commit(self, sha: str) -> Commit:
        out = self.git("show", "-s", "--format=%H%x00%an <%ae>%x00%at%x00%s", sha, timeout=30).strip()
        full, author, at, subject = out.split("\x00", 3)
        return Commit(full, author, datetime.fromtimestamp(int(at), UTC), subject)

    def first_parent_chain(self, sha: str, limit: int) -> list[str]:
        """``sha`` and up to ``limit`` first-parent ancestors, newest first."""
        return self.git("rev-list", "--first-parent", f"--max-count={limit + 1}", sha, timeout=60).split()

    def count(self, good: str, bad: str) -> int:
        """Commits in ``good..bad``."""
        return int(self.git("rev-list", "--count", f"{good}..{bad}", timeout=60).strip())

    def is_ancestor(self, a: str, b: str) -> bool:
        return self.succeeds("merge-base", "--is-ancestor", a, b)

    def changed_files(self, sha: str) -> list[str]:
        """Paths a commit changed (against its first parent)."""
        return [p for p in self.git("diff-tree", "--no-commit-id", "--name-only", "-r", "--root", sha,
                                    timeout=60).splitlines() if p]

    def show(self, rev: str, path: str) -> str | None:
        """A file's content at ``rev``, or None when it does not exist there."""
        try:
            return run("show", "--end-of-options", f"{rev}:{path}", git_dir=self.git_dir, timeout=60)
        except GitError:
            return None

    # -- work trees ----------------------------------------------------------------------------
    def add_worktree(self, sha: str, purpose: str) -> Worktree:
        """A new work tree checked out (detached) at ``sha``; older ones beyond
        ``max_worktrees`` are removed. The tree is ``<trees>/<name>/<name>``: its parent
        ``<trees>/<name>`` (the tree's ``root``) also holds heald's own files for it (``heald/``:
        the virtual environment, pip's cache, the sandbox's git directory, the sandbox user's
        home), outside the project's tree, where no test or linter of the project sees them."""
        with self.locked():
            self._prune_old()
            name = f"{self.name}-{purpose}-{time.time_ns()}"
            root = self.trees / name
            root.mkdir()
            root.chmod(0o755)
            path = root / name
            self.git("worktree", "add", "--detach", "--force", "--quiet", str(path), sha, timeout=self.timeout)
        admin = self.git_dir / "worktrees" / name
        if not admin.is_dir():  # git names the admin dir after the path's last component
            raise GitError(f"git did not create {admin}")
        return Worktree(self, path, admin, sha, root)

    def _prune_old(self) -> None:
        mine = sorted((p for p in self.trees.glob(f"{self.name}-*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
        for old in mine[:max(0, len(mine) - self.max_worktrees + 1)]:
            release_under(old)  # the sandbox may have given the tree (or its root) its own filesystem
            shutil.rmtree(old, ignore_errors=True)
        self.git("worktree", "prune", check=False)

    def push(self, sha: str, branch: str, url: str | None = None) -> None:
        """Push commit ``sha`` to ``refs/heads/<branch>`` at the remote (forced: the branch is
        heald's own). Raises GitError."""
        self.git("push", "--quiet", "--force", url or self.url, f"{sha}:refs/heads/{branch}")

    def remote_branch(self, branch: str, url: str | None = None) -> str | None:
        """The sha the remote's ``branch`` points at, or None when it has no such branch."""
        out = self.git("ls-remote", "--heads", url or self.url, f"refs/heads/{branch}", timeout=60).strip()
        return out.split()[0] if out else None

    def delete_remote_branch(self, branch: str, url: str | None = None) -> None:
        self.git("push", "--quiet", url or self.url, f":refs/heads/{branch}", check=False)


@dataclass
class Worktree:
    """One attempt's work tree: ``path`` (the files; a sandbox may write here) and ``admin``
    (git's administrative directory for it, inside the cache: only heald writes there)."""

    cache: RepoCache
    path: Path
    admin: Path
    base: str
    #: the directory the sandbox binds writable: the tree's parent made for it by
    #: :meth:`RepoCache.add_worktree` (holding ``heald/`` beside the tree); None: the tree
    #: itself (heald's files then live in ``<tree>/.heald``)
    root: Path | None = None

    @property
    def top(self) -> Path:
        """The directory bound writable into the sandbox (``root``, else the tree)."""
        return self.root if self.root is not None else self.path

    @property
    def own(self) -> Path:
        """heald's own files for this tree (venv, pip cache, git directory, HOME): outside the
        tree when it has a ``root``."""
        return self.root / "heald" if self.root is not None else self.path / ".heald"

    def git(self, *args: str, timeout: float | None = None, check: bool = True,
            env: Mapping[str, str] | None = None) -> str:
        """git on this tree, through its administrative directory (never its ``.git`` file)."""
        return run(*args, git_dir=self.admin, work_tree=self.path, cwd=self.path,
                   timeout=timeout or self.cache.timeout, env={**self.cache.env, **(env or {})}, check=check)

    def head(self) -> str:
        return self.git("rev-parse", "HEAD", timeout=30).strip()

    def commit_tracked(self, message: str, author_name: str, author_email: str) -> str:
        """Commit the changes to tracked files (never new, untracked ones); returns the sha.
        Raises GitError when there is nothing to commit."""
        self.git("add", "-u")
        if not self.git("diff", "--cached", "--name-only").strip():
            raise GitError("nothing changed: there is no fix to commit")
        ident = {"GIT_AUTHOR_NAME": author_name, "GIT_AUTHOR_EMAIL": author_email,
                 "GIT_COMMITTER_NAME": author_name, "GIT_COMMITTER_EMAIL": author_email}
        self.git("commit", "--quiet", "--no-verify", "-m", message, env=ident)
        return self.head()

    def changed_paths(self, base: str) -> list[str]:
        """Paths that differ between ``base`` and HEAD."""
        return [p for p in self.git("diff", "--name-only", base, "HEAD").splitlines() if p]

    def remove(self) -> None:
        release_under(self.top)  # the sandbox may have given the tree (or its root) its own filesystem
        shutil.rmtree(self.top, ignore_errors=True)
        self.cache.git("worktree", "prune", check=False)
