"""Running a repository's work in the sandbox: the dependency-install phase, the checks, re-runs
at other commits, and ``git bisect run``.

No run has a network that reaches the host: every run gets a fresh network namespace (only its
own ``lo``). The install phase reaches the package index only through heald's package-index
proxy (:mod:`heald.ci.index`), whose unix socket is bound into that run; pip's cache is
``pip-cache`` of the tree's own heald directory (:attr:`heald.ci.repo.Worktree.own`, beside the
tree, never inside it).

Git work inside the sandbox uses a git directory of its own, ``git`` in the tree's heald directory (a
``--shared`` clone of heald's cache, which is bound read-only): the sandbox never writes the
cache, and heald never runs git on anything the sandbox wrote. Everything heald learns from a
sandbox run it reads from the run's output, never from files the run left behind.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Sequence
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
# not anchored at the line's start: ``git bisect run``'s last line has no newline of its own
_RUN_LINE = re.compile(r"HEALD-RUN ([0-9a-f]{40}) (-?\d+) (good|bad)$", re.MULTILINE)


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
    and the commits it tested with their exit statuses (every one, the first included)."""

    culprit: str | None
    runs: list[tuple[str, int]]
    step: Step
    #: each tested commit, its exit status and whether the step counted it good
    judged: list[tuple[str, int, bool]] = field(default_factory=list)


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
        """The environment of a run in ``wt``: heald's virtual environment first on PATH (it
        lives outside the project's tree, :attr:`Worktree.own`), a writable HOME of its own,
        pytest-timeout's per-test limit (``ci.test_timeout_seconds``)."""
        venv = wt.own / "venv"
        return {"PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin", "VIRTUAL_ENV": str(venv), "CI": "true",
                "HOME": str(wt.own / "home"), "XDG_CACHE_HOME": str(wt.own / "home" / ".cache"),
                "PYTEST_TIMEOUT": str(max(1, int(self.cfg.test_timeout_seconds))),
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
        own = wt.own
        if own.is_symlink() or (own.exists() and not own.is_dir()):
            own.unlink()  # a repository's own .heald link or file: never followed on the host
        own.mkdir(exist_ok=True)
        home = own / "home"
        if home.is_symlink() or (home.exists() and not home.is_dir()):
            home.unlink()
        home.mkdir(exist_ok=True)
        env, read_only = self.env(wt), [self.cache.git_dir]
        if index is not None:
            env.update(index.env(own / "pip-cache"))
            read_only.append(index.socket_dir)
            script = index.wrap(script, self.cfg.python)
        r = self.sandbox.run(["/bin/sh", "-c", script], workdir=wt.top, cwd=wt.path, env=env,
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
        py = shlex.quote(str(wt.own / "venv" / "bin" / "python"))
        script = (f"{py} -m pip install --quiet {shlex.quote(requirement)} && "
                  f"{py} -c {shlex.quote(f'import {probe_module}')} && "
                  f"{py} -c {shlex.quote(show_version)}")
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
        gd = shlex.quote(str(wt.own / "git"))
        return (f'if [ ! -f {gd}/HEAD ]; then\n'
                f'  git clone --quiet --bare --shared {shlex.quote(str(self.cache.git_dir))} {gd}\n'
                f'  GIT_DIR={gd} GIT_WORK_TREE="$PWD" git read-tree {wt.base}\nfi\n'
                f'export GIT_DIR={gd} GIT_WORK_TREE="$PWD"\n')

    def at(self, wt: Worktree, sha: str, command: str, *, phase: str, tests: bool = True) -> Step:
        """Check out ``sha`` inside the sandbox (its own git directory) and run ``command``."""
        if tests:
            self.test_runs += 1
        script = (f"set -e\n{self._git_setup(wt)}git checkout --quiet --force --detach {sha}\nset +e\n"
                  f"unset GIT_DIR GIT_WORK_TREE\n{command}")
        return self._run(wt, script, phase=phase, shown=command, commit=sha, timeout=self.cfg.check_timeout_seconds)

    def bisect(self, wt: Worktree, good: str, bad: str, command: str, *, missing_ok: bool = False,
               tests: Sequence[str] = ()) -> BisectOutcome:
        """``git bisect run`` over good..bad inside the sandbox. A step is good when ``command``
        exits 0, or, with ``tests`` (pytest node ids or unittest ids: the regression, when the
        command cannot be narrowed to them), when it exits 1 and its output names none of them as
        failing. Anything else is bad: pytest's 4 (usage error, e.g. a test file that does not
        exist there yet), 5 (no tests collected), a per-step timeout (``ci.check_timeout_seconds``).
        ``missing_ok`` is kept for callers of the older signature and changes nothing: a test that
        does not exist at a commit did not pass there (the culprit is then the commit that added
        it, which the caller recognizes as "never passed")."""
        del missing_ok
        n = self.cache.count(good, bad)
        steps = max(1, math.ceil(math.log2(max(n, 2)))) + 2
        own = shlex.quote(str(wt.own))
        markers = "\n".join(m for t in tests for m in _failure_markers(t))
        judge = ('[ "$rc" -eq 0 ] && ok=good\n' if not markers else
                 '[ "$rc" -eq 0 ] && ok=good\n'
                 f'if [ "$rc" -eq 1 ] && ! grep -qF -f {own}/bisect-markers {own}/bisect-step.log && '
                 f'grep -qE "^(FAILED|ERROR|FAIL:|ERROR:) " {own}/bisect-step.log; then ok=good; fi\n')
        step_script = (
            "sha=$(git rev-parse HEAD)\n"
            f"( unset GIT_DIR GIT_WORK_TREE; timeout -k 5 {int(self.cfg.check_timeout_seconds)} /bin/sh -c "
            f"{shlex.quote(command)} ) > {own}/bisect-step.log 2>&1\n"
            "rc=$?\nok=bad\n" + judge +
            f'echo "HEALD-RUN $sha $rc $ok" >> {own}/bisect-runs.log\n'
            '[ "$ok" = good ] && exit 0\n'
            "exit 1\n")
        script = (f"set -e\n{self._git_setup(wt)}rm -f {own}/bisect-runs.log\n"
                  f"cat > {own}/bisect-markers <<'HEALD_EOF'\n{markers}\nHEALD_EOF\n"
                  f"cat > {own}/bisect-step.sh <<'HEALD_EOF'\n{step_script}HEALD_EOF\n"
                  f"git bisect reset >/dev/null 2>&1 || true\n"
                  f"git checkout --quiet --force --detach {bad}\n"
                  f"git bisect start {bad} {good}\nset +e\ngit bisect run /bin/sh {own}/bisect-step.sh\nrc=$?\n"
                  f"echo\ncat {own}/bisect-runs.log\ngit bisect reset >/dev/null 2>&1\nexit $rc\n")
        shown = f"git bisect start {bad[:12]} {good[:12]} && git bisect run sh -c {shlex.quote(command)}"
        step = self._run(wt, script, phase="bisect", shown=shown, commit=bad,
                         timeout=self.cfg.check_timeout_seconds * steps + 120)
        judged = [(m.group(1), int(m.group(2)), m.group(3) == "good") for m in _RUN_LINE.finditer(step.output)]
        self.test_runs += len(judged)
        m = _FIRST_BAD.search(step.output)
        return BisectOutcome(m.group(1) if m else None, [(s, rc) for s, rc, _ in judged], step, judged)


def _failure_markers(test_id: str) -> list[str]:
    """The lines a run prints when ``test_id`` fails: pytest's ``FAILED <id>``/``ERROR <id>``
    (``-rfE``), unittest's ``FAIL: <name> (<module.Class>)``."""
    if "::" in test_id or test_id.endswith(".py"):
        return [f"FAILED {test_id}", f"ERROR {test_id}"]
    where, _, name = test_id.rpartition(".")
    return [f"FAIL: {name} ({where})", f"ERROR: {name} ({where})"] if where else [test_id]
