"""Running a repository's work in the sandbox: the dependency-install phase, the checks, re-runs
at other commits, and ``git bisect run``.

No run has a network that reaches the host: every run gets a fresh network namespace (only its
own ``lo``). The install phase reaches the package index only through heald's package-index
proxy (:mod:`heald.ci.index`), whose unix socket is bound into that run; pip's cache is
``.heald/pip-cache`` of the run's own work tree.

Git work inside the sandbox uses a git directory of its own, ``.heald/git`` in the work tree (a
``--shared`` clone of heald's cache, which is bound read-only): the sandbox never writes the
cache, and heald never runs git on anything the sandbox wrote. Everything heald learns from a
sandbox run it reads from the run's output, never from files the run left behind.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from heald.ci.index import IndexProxy, configured_sources, shared_proxy
from heald.ci.project import Check
from heald.ci.repo import RepoCache, Worktree
from heald.config import CiConfig
from heald.sandbox import Limits, RunResult, Sandbox

SANDBOX_GIT = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"}
_FIRST_BAD = re.compile(r"^([0-9a-f]{40}) is the first bad commit", re.MULTILINE)
_RUN_LINE = re.compile(r"^HEALD-RUN ([0-9a-f]{40}) (-?\d+)$", re.MULTILINE)


@dataclass
class Step:
    """One command heald ran in the sandbox, as evidence: ``phase`` (install, reproduce, rerun,
    search, bisect, culprit, parent, fix, validate, verify), the ``command``, the ``commit`` it
    ran at, its ``exit`` status (None: killed by the timeout), wall seconds, whether it had
    network (never, since the package-index proxy: kept for older records), whether it could
    reach the package index through heald's proxy, and the last part of its ``output``."""

    phase: str
    command: str
    commit: str
    exit: int | None
    duration_s: float
    timed_out: bool = False
    network: bool = False
    output: str = field(default="", repr=False)
    package_index: bool = False

    @property
    def ok(self) -> bool:
        return self.exit == 0 and not self.timed_out

    def describe(self) -> str:
        if self.timed_out:
            return f"killed by the timeout after {self.duration_s:.1f} s"
        return f"exit {self.exit} in {self.duration_s:.1f} s"

    def as_dict(self, output_chars: int = 4000) -> dict[str, Any]:
        d = asdict(self)
        d["output"] = self.output[-output_chars:]
        return d


@dataclass
class BisectOutcome:
    """What ``git bisect run`` found: the first bad commit (None when bisection could not say)
    and the commits it tested with their exit statuses."""

    culprit: str | None
    runs: list[tuple[str, int]]
    step: Step


class Runner:
    """Sandboxed runs for one repository. ``steps`` collects every run as evidence and
    ``test_runs`` counts runs of a tests check (bisection steps included)."""

    def __init__(self, sandbox: Sandbox, cfg: CiConfig, cache: RepoCache, index_cache: Path, limits: Limits):
        self.sandbox = sandbox
        self.cfg = cfg
        self.cache = cache
        self.index_cache = index_cache
        self.limits = limits
        self.steps: list[Step] = []
        self.test_runs = 0

    def index(self) -> IndexProxy:
        """The package-index proxy install runs reach (started on first use, shared by the
        process)."""
        sources = configured_sources(self.cfg.index_urls, self.cfg.find_links, self.cfg.python)
        # the socket belongs to the user the sandbox runs as (bubblewrap: as_user, Docker: user)
        owner = getattr(self.sandbox, "as_user", None) or getattr(self.sandbox, "user", None)
        return shared_proxy(sources, self.index_cache, self.cfg.index_cache_mb * 1024**2, owner)

    def env(self, wt: Worktree) -> dict[str, str]:
        venv = wt.path / ".heald" / "venv"
        return {"PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin", "VIRTUAL_ENV": str(venv), "CI": "true",
                "PYTHONDONTWRITEBYTECODE": "1", "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", **SANDBOX_GIT}

    def _limits(self, timeout: float) -> Limits:
        return Limits(**{**asdict(self.limits), "timeout_seconds": timeout})

    def _record(self, phase: str, command: str, commit: str, r: RunResult, package_index: bool = False) -> Step:
        step = Step(phase, command, commit, r.returncode, round(r.duration_s, 3), r.timed_out, False, r.output,
                    package_index)
        self.steps.append(step)
        return step

    def _run(self, wt: Worktree, script: str, *, phase: str, shown: str, commit: str, timeout: float,
             index: IndexProxy | None = None) -> Step:
        """One sandboxed run, never with network; with ``index``, the package-index proxy's
        socket directory is bound read-only, the forwarder starts first, and pip points at it."""
        own = wt.path / ".heald"
        if own.is_symlink() or (own.exists() and not own.is_dir()):
            own.unlink()  # a repository's own .heald link or file: never followed on the host
        own.mkdir(exist_ok=True)
        env, read_only = self.env(wt), [self.cache.git_dir]
        if index is not None:
            env.update(index.env(wt.path / ".heald" / "pip-cache"))
            read_only.append(index.socket_dir)
            script = index.wrap(script, self.cfg.python)
        r = self.sandbox.run(["/bin/sh", "-c", script], workdir=wt.path, env=env,
                             limits=self._limits(timeout), read_only=read_only)
        return self._record(phase, shown, commit, r, package_index=index is not None)

    # -- phases --------------------------------------------------------------------------------
    def install(self, wt: Worktree, script: str, commit: str, phase: str = "install") -> Step:
        """The dependency-install phase: no network; packages come from the configured index
        through heald's package-index proxy, pip's cache is the tree's own."""
        return self._run(wt, script, phase=phase, shown=script, commit=commit,
                         timeout=self.cfg.install_timeout_seconds, index=self.index())

    def pip_install(self, wt: Worktree, requirement: str, probe_module: str, commit: str) -> tuple[Step, str | None]:
        """Install ``requirement`` into the work tree's environment (through the package-index
        proxy, like :meth:`install`) and import ``probe_module``; returns the step and the
        installed version (None on failure)."""
        dist = re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0]
        show_version = f"import importlib.metadata as m; print(); print('HEALD-VERSION', m.version({dist!r}))"
        script = (f".heald/venv/bin/python -m pip install --quiet {shlex.quote(requirement)} && "
                  f".heald/venv/bin/python -c {shlex.quote(f'import {probe_module}')} && "
                  f".heald/venv/bin/python -c {shlex.quote(show_version)}")
        step = self.install(wt, script, commit, phase="find-distribution")
        m = re.search(r"^HEALD-VERSION (\S+)$", step.output, re.MULTILINE)
        return step, (m.group(1) if step.ok and m else None)

    def check(self, wt: Worktree, check: Check, *, phase: str, commit: str, command: str | None = None) -> Step:
        """Run one check (or ``command`` instead of its own) at the tree's current commit."""
        cmd = command or check.command
        if check.kind == "tests":
            self.test_runs += 1
        return self._run(wt, cmd, phase=phase, shown=cmd, commit=commit, timeout=self.cfg.check_timeout_seconds)

    def fix(self, wt: Worktree, command: str, commit: str) -> Step:
        """Run a fixer (``ruff check --fix .``) on the tree."""
        return self._run(wt, command, phase="fix", shown=command, commit=commit, timeout=self.cfg.check_timeout_seconds)

    def _git_setup(self, wt: Worktree) -> str:
        """Shell lines that give the sandbox its own git directory for the tree (created once,
        its index set to the tree's base commit, which the tree holds when it is made)."""
        return (f'if [ ! -f .heald/git/HEAD ]; then\n'
                f'  git clone --quiet --bare --shared {shlex.quote(str(self.cache.git_dir))} .heald/git\n'
                f'  GIT_DIR="$PWD/.heald/git" GIT_WORK_TREE="$PWD" git read-tree {wt.base}\nfi\n'
                f'export GIT_DIR="$PWD/.heald/git" GIT_WORK_TREE="$PWD"\n')

    def at(self, wt: Worktree, sha: str, command: str, *, phase: str, tests: bool = True) -> Step:
        """Check out ``sha`` inside the sandbox (its own git directory) and run ``command``."""
        if tests:
            self.test_runs += 1
        script = (f"set -e\n{self._git_setup(wt)}git checkout --quiet --force --detach {sha}\nset +e\n"
                  f"unset GIT_DIR GIT_WORK_TREE\n{command}")
        return self._run(wt, script, phase=phase, shown=command, commit=sha, timeout=self.cfg.check_timeout_seconds)

    def bisect(self, wt: Worktree, good: str, bad: str, command: str, *, missing_ok: bool) -> BisectOutcome:
        """``git bisect run`` over good..bad inside the sandbox. A step is good when ``command``
        exits 0 (and, when ``missing_ok``, pytest's 4 or 5: the tests do not exist yet there);
        anything else, a per-step timeout included, is bad."""
        n = self.cache.count(good, bad)
        steps = max(1, math.ceil(math.log2(max(n, 2)))) + 2
        ok_codes = "0 4 5" if missing_ok else "0"
        step_script = (
            "sha=$(git rev-parse HEAD)\n"
            f"( unset GIT_DIR GIT_WORK_TREE; timeout -k 5 {int(self.cfg.check_timeout_seconds)} /bin/sh -c "
            f"{shlex.quote(command)} ) > .heald/bisect-step.log 2>&1\n"
            "rc=$?\n"
            'echo "HEALD-RUN $sha $rc" >> .heald/bisect-runs.log\n'
            f'for ok in {ok_codes}; do [ "$rc" -eq "$ok" ] && exit 0; done\n'
            "exit 1\n")
        script = (f"set -e\n{self._git_setup(wt)}rm -f .heald/bisect-runs.log\n"
                  f"cat > .heald/bisect-step.sh <<'HEALD_EOF'\n{step_script}HEALD_EOF\n"
                  f"git bisect reset >/dev/null 2>&1 || true\n"
                  f"git checkout --quiet --force --detach {bad}\n"
                  f"git bisect start {bad} {good}\nset +e\ngit bisect run /bin/sh .heald/bisect-step.sh\nrc=$?\n"
                  f"cat .heald/bisect-runs.log\ngit bisect reset >/dev/null 2>&1\nexit $rc\n")
        shown = f"git bisect start {bad[:12]} {good[:12]} && git bisect run sh -c {shlex.quote(command)}"
        step = self._run(wt, script, phase="bisect", shown=shown, commit=bad,
                         timeout=self.cfg.check_timeout_seconds * steps + 120)
        runs = [(m.group(1), int(m.group(2))) for m in _RUN_LINE.finditer(step.output)]
        self.test_runs += len(runs)
        m = _FIRST_BAD.search(step.output)
        return BisectOutcome(m.group(1) if m else None, runs, step)
