"""``cleanup_path``: delete old files from a directory the configuration allows cleaning."""

from __future__ import annotations

import fnmatch
import os
import time
from pathlib import Path

from pydantic import Field

from heald import _paths
from heald.config import CleanupConfig
from heald.remedies.base import (
    HealdSelf,
    Remedy,
    RemedyContext,
    RemedyError,
    RemedyParams,
    RemedyResult,
    Target,
    register,
)


class CleanupParams(RemedyParams):
    service: str = Field(min_length=1, description="a service with cleanup entries")
    path: str = Field(min_length=1, description="one of the service's cleanup paths, exactly")


def _entry(params: CleanupParams, ctx: RemedyContext) -> CleanupConfig:
    svc = ctx.config.services.get(params.service)
    if svc is None:
        raise RemedyError(f"service {params.service!r} is not configured")
    wanted = Path(params.path)
    for entry in svc.cleanup:
        if entry.path == wanted or (wanted.is_absolute() and entry.path.resolve() == wanted.resolve()):
            return entry
    allowed = ", ".join(str(c.path) for c in svc.cleanup) or "none configured"
    raise RemedyError(f"path {params.path!r} is not a cleanup path of {params.service} (allowed: {allowed})")


def old_files(entry: CleanupConfig, now: float) -> tuple[list[Path], int]:
    """Regular files under ``entry.path`` (recursively, symlinks neither followed nor deleted)
    whose name matches ``entry.pattern`` and that were last modified more than
    ``entry.older_than_seconds`` before ``now``; at most ``entry.max_files``. Also returns how
    many matching files were kept because they are newer."""
    root = entry.path.resolve()
    found: list[Path] = []
    newer = 0
    todo = [root]
    while todo and len(found) < entry.max_files:
        try:
            entries = list(os.scandir(todo.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                todo.append(Path(e.path))
            elif e.is_file(follow_symlinks=False) and fnmatch.fnmatch(e.name, entry.pattern):
                try:
                    age = now - e.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue
                if age > entry.older_than_seconds:
                    found.append(Path(e.path))
                    if len(found) >= entry.max_files:
                        break
                else:
                    newer += 1
    return found, newer


def delete(entry: CleanupConfig, files: list[Path]) -> tuple[int, int, list[str]]:
    """Delete ``files`` (found by :func:`old_files` under ``entry.path``) through descriptors
    opened from the entry's directory without following any symbolic link
    (:func:`heald._paths.unlink`): a directory the service swapped for a link after it was
    listed leads nowhere. Returns (files deleted, bytes freed, paths refused with the reason)."""
    root = entry.path.resolve()
    deleted = freed = 0
    refused: list[str] = []
    for f in files:
        try:
            size = _paths.unlink(root, f.relative_to(root).as_posix())
        except (_paths.UnsafePath, ValueError) as exc:
            refused.append(str(exc))
            continue
        if size is not None:
            deleted += 1
            freed += size
    return deleted, freed, refused


@register
class CleanupPath(Remedy[CleanupParams]):
    """Delete the files under one of the service's configured ``cleanup`` paths that match its
    pattern and are older than its age, and nothing else: not newer files, not other paths,
    not through symlinks. At most ``max_files`` per run.

    Safe to repeat: a second run finds only files that have aged since. No undo (the files
    are gone; the age limit is what makes that acceptable).
    """

    name = "cleanup_path"
    description = "Delete old files (by pattern and age) from a configured directory"
    Params = CleanupParams

    def target(self, params: CleanupParams) -> Target:
        return Target("path", params.path)

    def touches_heald(self, params: CleanupParams, heald: HealdSelf) -> str | None:
        """A path overlapping heald's state directory, database or config file."""
        if heald.owns_path(Path(params.path)):
            return f"refused: {params.path} overlaps heald's own state ({heald.describe_paths()})"
        return None

    def apply(self, params: CleanupParams, ctx: RemedyContext) -> RemedyResult:
        entry = _entry(params, ctx)
        files, newer = old_files(entry, time.time())
        deleted, freed, refused = delete(entry, files)
        skipped = f"; refused {len(refused)} that a symbolic link now leads to ({refused[0]})" if refused else ""
        bound = f" (stopped at the bound of {entry.max_files} files)" if len(files) >= entry.max_files else ""
        return RemedyResult(f"deleted {deleted} files matching {entry.pattern!r} older than "
                            f"{entry.older_than_seconds:g} s under {entry.path}, freeing {freed / 1e6:.1f} MB; "
                            f"kept {newer} newer ones{bound}{skipped}")
