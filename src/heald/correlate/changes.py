"""Change correlation: "what changed just before it broke?"

A service may declare where its changes happen: ``config_repo`` (its configuration in a git
repository) and ``releases`` (versioned release directories with a ``current`` symlink, the
layout Capistrano uses, with its ``revisions.log``). When a signal about the service arrives,
:meth:`ChangeTracker.annotate` adds the newest suspect change as annotations, which runbooks
match on and render into remedy parameters:

``change_kind`` (``config`` or ``release``), ``change_id`` (the commit, or the release name),
``change_previous`` (the parent commit, or the previous release), ``change_author``,
``change_summary``, ``change_at`` (RFC 3339) and ``change_age_seconds`` (how long before the
failure began).

A change is suspect when it was made after heald started watching (changes heald never saw
happen are not blamed), at most ``correlation.change_window_seconds`` before the failure began,
and it is neither heald's own (a revert or a rollback heald made) nor already reverted.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from heald._git import GitError, run
from heald.config import HealdConfig, ReleasesConfig
from heald.models import Signal, SignalStatus, utcnow

#: The author heald commits as (``git_revert``); commits by it are never suspects.
HEALD_GIT_NAME = "heald"
HEALD_GIT_EMAIL = "heald@localhost"
#: The user name heald writes into a revisions log when it rolls a release back.
HEALD_USER = "heald"

_REVERTS = re.compile(r"This reverts commit ([0-9a-f]{7,40})")
_DEPLOYED = re.compile(r"deployed as release (?P<release>\S+) by (?P<user>\S+)")
_ROLLED_BACK = re.compile(r"^(?P<user>\S+) rolled back to release (?P<release>\S+)")
#: Seconds a change may seem to follow the failure's start (clocks, whole-second commit times).
SLACK_SECONDS = 1.0


@dataclass(frozen=True)
class Change:
    """One change to a service: ``kind`` config or release, ``id`` the commit or release name,
    ``previous`` its parent commit or the previous release, when (UTC), by whom, what."""

    service: str
    kind: str
    id: str
    at: datetime
    author: str
    summary: str
    previous: str | None = None


def natural_key(name: str) -> list[object]:
    """Sort key that orders ``v2`` before ``v10`` and timestamps as numbers."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def release_names(releases: ReleasesConfig) -> list[str]:
    """The release directories under ``releases.dir``, oldest first (natural name order)."""
    try:
        names = [e.name for e in os.scandir(releases.dir) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    return sorted(names, key=natural_key)


def current_release(releases: ReleasesConfig) -> str | None:
    """The name of the release ``current`` points at, or None when it is not a symlink."""
    try:
        return Path(os.readlink(releases.current)).name
    except OSError:
        return None


#: The annotations change correlation writes; heald's alone (see :meth:`ChangeTracker.annotate`).
CHANGE_KEYS = frozenset({"change_kind", "change_id", "change_previous", "change_author", "change_summary",
                         "change_at", "change_age_seconds"})


def without_sender_changes(signal: Signal) -> Signal:
    """``signal`` with any ``change_*`` label or annotation its sender set moved to a
    ``sender.change_*`` annotation (a name runbooks cannot render: ``${…}`` takes no dot)."""
    sent = {**{k: v for k, v in signal.annotations.items() if k in CHANGE_KEYS},
            **{k: v for k, v in signal.labels.items() if k in CHANGE_KEYS}}
    if not sent:
        return signal
    annotations = {k: v for k, v in signal.annotations.items() if k not in CHANGE_KEYS}
    annotations.update({f"sender.{k}": v for k, v in sent.items()})
    return signal.model_copy(update={"labels": {k: v for k, v in signal.labels.items() if k not in CHANGE_KEYS},
                                     "annotations": annotations})


def config_changes(service: str, repo: Path, since: datetime, limit: int = 100) -> list[Change]:
    """Commits to ``repo`` since ``since``, newest first, without heald's own commits and
    without commits a later commit reverts. Source: ``git log`` (committer time)."""
    try:
        out = run("log", f"-n{limit}", f"--since=@{int(since.timestamp())}",
                  "--format=%H%x1f%P%x1f%an%x1f%ae%x1f%ct%x1f%s%x1f%b%x1e", "--end-of-options", "HEAD", "--",
                  cwd=repo, timeout=10.0)
    except GitError:
        return []
    commits = [rec.strip("\n").split("\x1f") for rec in out.split("\x1e") if rec.strip()]
    reverted = {m for c in commits for m in _REVERTS.findall(c[6] if len(c) > 6 else "")}
    changes = []
    for sha, parents, name, email, ct, subject, *_ in commits:
        if email == HEALD_GIT_EMAIL or any(sha.startswith(r) for r in reverted):
            continue
        changes.append(Change(service, "config", sha, datetime.fromtimestamp(int(ct), UTC), f"{name} <{email}>",
                              subject, parents.split()[0] if parents else None))
    return changes


def release_change(service: str, releases: ReleasesConfig) -> Change | None:
    """The switch of ``current`` to the live release, unless heald made it (a rollback in the
    revisions log). Its time is the symlink's own modification time; ``previous`` is the
    release that was live before it according to the revisions log (Capistrano's lines
    ``… deployed as release R by U`` and ``U rolled back to release R``), else the release
    before it in name order."""
    name = current_release(releases)
    if name is None:
        return None
    try:
        at = datetime.fromtimestamp(os.lstat(releases.current).st_mtime, UTC)
    except OSError:
        return None
    author, summary = "unknown", f"release {name} became current"
    try:
        lines = releases.revisions_log.read_text().splitlines()
    except OSError:
        lines = []
    history: list[tuple[str, str, str]] = []  # (release, user, line) of every switch, in order
    for line in lines:
        if m := (_ROLLED_BACK.search(line) or _DEPLOYED.search(line)):
            history.append((m["release"], m["user"], line.strip()))
    previous = None
    last = max((i for i, h in enumerate(history) if h[0] == name), default=None)
    if last is not None:
        if history[last][1] == HEALD_USER and _ROLLED_BACK.search(history[last][2]):
            return None
        _, author, summary = history[last]
        previous = next((h[0] for h in reversed(history[:last]) if h[0] != name), None)
    if previous is None:  # no log: the release before it in name order
        names = release_names(releases)
        previous = names[names.index(name) - 1] if name in names and names.index(name) > 0 else None
    return Change(service, "release", name, at, author, summary[:500], previous)


class ChangeTracker:
    """Finds the suspect changes of services (see the module docstring). ``baseline`` is when
    heald began watching (default: now)."""

    def __init__(self, config: HealdConfig, baseline: datetime | None = None):
        self.config = config
        self.baseline = baseline or utcnow()

    def suspects(self, service: str, failure_began: datetime) -> list[Change]:
        """Suspect changes of ``service`` for a failure that began at ``failure_began``, newest
        first."""
        svc = self.config.services.get(service)
        if svc is None:
            return []
        since = max(self.baseline, failure_began - timedelta(seconds=self.config.correlation.change_window_seconds))
        until = failure_began + timedelta(seconds=SLACK_SECONDS)
        found: list[Change] = []
        if svc.config_repo is not None:
            found.extend(config_changes(service, svc.config_repo.path, since - timedelta(seconds=1)))
        if svc.releases is not None and (rc := release_change(service, svc.releases)) is not None:
            found.append(rc)
        return sorted((c for c in found if since <= c.at <= until), key=lambda c: c.at, reverse=True)

    def annotate(self, signal: Signal) -> Signal:
        """``signal`` with its newest suspect change as ``change_*`` annotations (none when
        there is none, when it is resolved, or when its service declares no change sources).

        Only heald writes ``change_*``: the same names sent by the signal's sender (as labels
        or annotations) are moved to ``sender.change_*`` annotations first — kept as evidence,
        but no runbook matches ``^change_kind:`` on them nor renders ``${change_id}`` from them
        (a sender could otherwise name any commit for ``git_revert`` or any release for
        ``rollback_release``)."""
        signal = without_sender_changes(signal)
        svc = self.config.services.get(signal.service or "")
        if signal.status != SignalStatus.firing or svc is None or (svc.config_repo is None and svc.releases is None):
            return signal
        began = signal.starts_at or utcnow()
        suspects = self.suspects(signal.service or "", began)
        if not suspects:
            return signal
        c = suspects[0]
        notes = {"change_kind": c.kind, "change_id": c.id, "change_previous": c.previous or "",
                 "change_author": c.author, "change_summary": c.summary, "change_at": c.at.isoformat(),
                 "change_age_seconds": f"{max(0.0, (began - c.at).total_seconds()):.1f}"}
        return signal.model_copy(update={"annotations": {**signal.annotations, **notes}})
