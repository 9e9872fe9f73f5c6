"""Private files and directories: what heald keeps for itself is readable by its owner only.

heald usually runs as root, and its state holds secrets (the database with token hashes and
the audit chain, the audit checkpoint key, tokens written for an operator). Directories heald
creates for them are 0700 and files 0600, whatever the process umask is (issue 11 item 10).
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path, mode: int = PRIVATE_DIR) -> Path:
    """Create directory ``path`` (and missing parents, each with ``mode``) and set ``path``'s own
    mode to ``mode`` when this process owns it. Parents that already exist are left alone.
    Returns ``path``. Raises OSError when it cannot be created."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=mode)
        except FileExistsError:
            pass
        _chmod_if_owned(d, mode)
    _chmod_if_owned(path, mode)
    return path


def private_file(path: Path) -> Path:
    """Make sure file ``path`` exists with mode 0600: create it empty or tighten the mode of
    the one there when this process owns it (a symlink the operator configured is followed;
    nothing is written). Parent directories are not created. Returns ``path``. Raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        if os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)
    return path


def write_private(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new file ``path`` with mode 0600. Refuses to overwrite or to follow
    a symlink: raises FileExistsError when ``path`` exists, OSError otherwise."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def _chmod_if_owned(path: Path, mode: int) -> None:
    try:
        if path.stat().st_uid == os.geteuid():
            path.chmod(mode)
    except FileNotFoundError:
        pass
