"""CI healing: a failed CI run becomes an incident; heald reproduces it in the sandbox, finds a
fix the tests confirm, and proposes it as a pull request with the evidence.

The path through heald's one engine (:mod:`heald.engine`):

1. **signal** — a failed ``workflow_run``/``workflow_job``/``check_run`` webhook
   (:mod:`heald.sources.github`) or ``heald heal-ci`` gives a ``ci_failed`` signal.
2. **reproduce** (:mod:`heald.ci.investigate`, the engine's reproduce step) — clone or fetch
   into the cache, a work tree at the failing commit, install dependencies in the sandbox (no
   network: packages come through heald's package-index proxy), run the project's checks, classify the log, re-run failing tests
   (flaky?), look for a passing commit and bisect (``git bisect run`` in the sandbox), check the
   culprit and its parent again. Its findings join the incident as a ``ci_reproduced`` signal
   with a ``verdict`` label and the facts as annotations.
3. **diagnose / plan** — the CI runbooks (``runbooks/ci.yaml``) match the verdict and propose
   catalog remedies (``revert_commit``, ``add_dependency``, ``lint_autofix``); the signature
   knowledge base classifies the same log and agrees or lowers the confidence. Verdicts where
   heald must do no harm (red on every commit, a test that never passed, flaky) have no remedy:
   the gate escalates with the diagnosis.
4. **gate** — the same policy as any remedy (a draft pull request is low risk).
5. **act** (:mod:`heald.remedies.ci`) — make the fix in a fresh work tree, validate it by
   running every check in the sandbox (the failing ones must pass, none that passed may
   break), push the branch and open a draft pull request with the evidence
   (:mod:`heald.ci.pull_request`): one per failure signature, rate-limited per repository.
6. **verify** (:mod:`heald.ci.verify`) — the remote branch holds the validated commit and the
   previously failing checks pass on it in the sandbox.
7. **learn** — the outcome counts for (category, remedy) like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from heald.config import HealdConfig


@dataclass(frozen=True)
class CiJob:
    """A CI failure to heal: the repository (``owner/name`` or a name for a local path), its
    clone URL (or path), the failing commit, an optional known-good commit, the branch the
    failure happened on, and optional commands (default: detected from the repository)."""

    repo: str
    url: str
    bad: str
    good: str | None = None
    branch: str = ""
    test_command: str | None = None
    install_command: str | None = None

    @classmethod
    def for_repo(cls, config: HealdConfig, repo: str, url: str, bad: str, **kw: str | None) -> CiJob:
        """A job with the ``ci.repos.<repo>`` settings applied (they override the signal's)."""
        rc = config.ci.repos.get(repo)
        if rc is not None:
            url = rc.url or url
            if rc.test_command and not kw.get("test_command"):
                kw["test_command"] = rc.test_command
            if rc.install_command:
                kw["install_command"] = rc.install_command
        return cls(repo=repo, url=url, bad=bad, **kw)  # type: ignore[arg-type]


def work_dir(config: HealdConfig) -> Path:
    """The CI cache and work trees (``ci.work_dir``, else ``<state_dir>/ci``)."""
    return config.ci_work_dir
