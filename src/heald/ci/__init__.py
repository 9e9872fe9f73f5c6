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
5. **act** (:mod:`heald.ci.remedies`) — make the fix in a fresh work tree, validate it by
   running every check in the sandbox (the failing ones must pass, none that passed may
   break), push the branch and open a draft pull request with the evidence
   (:mod:`heald.ci.pull_request`): one per failure signature, rate-limited per repository.
6. **verify** (:mod:`heald.ci.verify`) — the remote branch holds the validated commit and the
   previously failing checks pass on it in the sandbox.
7. **learn** — the outcome counts for (category, remedy) like any other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from heald.config import HealdConfig

#: A revision a signal or a remedy may name: a sha, a branch or tag name, ``HEAD~2``. Never an
#: option (git reads an argument starting with ``-`` as one, wherever it stands: ``git fetch
#: origin --upload-pack=<command>`` runs the command), never whitespace or control characters.
_REV = re.compile(r"[0-9A-Za-z_][0-9A-Za-z._/@{}^~+-]{0,254}")
#: Clone URLs: an absolute local path or a URL git reaches by one of these transports. Not
#: git's ``<transport>::<address>`` remote helpers (``ext::sh -c …`` runs a command).
_URL = re.compile(r"(?:/|(?:https?|ssh|git|file)://|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:)[^\s]*")


class InvalidJob(ValueError):
    """A CI job names a revision or clone URL heald refuses; the message names the field."""


def check_rev(value: str, field: str) -> str:
    """``value`` when it is a revision name git cannot mistake for an option (see ``_REV``);
    raises InvalidJob naming ``field``."""
    if not _REV.fullmatch(value):
        raise InvalidJob(f"{field}: expected a commit sha or a branch/tag name (letters, digits, '._/@{{}}^~+-', "
                         f"not starting with '-'), got {value[:100]!r}")
    return value


def check_url(value: str, field: str) -> str:
    """``value`` when it is a clone URL heald may hand to git (an absolute path, or an https,
    http, ssh, git or file URL, or ``user@host:path``; never an option or a ``transport::``
    remote helper); raises InvalidJob naming ``field``."""
    if not _URL.fullmatch(value) or "::" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidJob(f"{field}: expected an absolute path or an https://, http://, ssh://, git://, file:// or "
                         f"user@host: clone URL, got {value[:200]!r}")
    return value


@dataclass(frozen=True)
class CiJob:
    """A CI failure to heal: the repository (``owner/name`` or a name for a local path), its
    clone URL (or path), the failing commit, an optional known-good commit, the branch the
    failure happened on, optional commands (default: detected from the repository) and the
    tests known to fail (``quarantine``: node ids or prefixes; never counted as the failure)."""

    repo: str
    url: str
    bad: str
    good: str | None = None
    branch: str = ""
    test_command: str | None = None
    install_command: str | None = None
    quarantine: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Raises InvalidJob for a revision or URL git could read as an option or a command."""
        if self.bad:
            check_rev(self.bad, "head_sha")
        if self.good:
            check_rev(self.good, "good_sha")
        if self.url:
            check_url(self.url, "clone_url")

    @classmethod
    def for_repo(cls, config: HealdConfig, repo: str, url: str, bad: str, *, quarantine: tuple[str, ...] = (),
                 **kw: str | None) -> CiJob:
        """A job with the ``ci.repos.<repo>`` settings applied (they override the signal's; a
        command given with the job wins over the configured one) and the quarantine of
        ``ci.quarantine``, ``ci.repos.<repo>.quarantine`` and ``quarantine`` together."""
        rc = config.ci.repos.get(repo)
        quarantine = (*config.ci.quarantine, *(rc.quarantine if rc is not None else ()), *quarantine)
        if rc is not None:
            url = rc.url or url
            if rc.test_command and not kw.get("test_command"):
                kw["test_command"] = rc.test_command
            if rc.install_command and not kw.get("install_command"):
                kw["install_command"] = rc.install_command
        return cls(repo=repo, url=url, bad=bad, quarantine=tuple(dict.fromkeys(q for q in quarantine if q)),
                   **kw)  # type: ignore[arg-type]


def work_dir(config: HealdConfig) -> Path:
    """The CI cache and work trees (``ci.work_dir``, else ``<state_dir>/ci``)."""
    return config.ci_work_dir
