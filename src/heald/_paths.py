"""Paths named by untrusted input, confined to a root directory.

A repository under healing (its ``pyproject.toml``, its committed symlinks) and a signal's
labels can name paths; heald runs as root, so every file it reads, writes or deletes on their
behalf goes through this module. A path is accepted only as a *relative* POSIX path of plain
names (no absolute path, no ``..``, no empty or ``.`` component, no NUL or control
character); it is then opened component by component from a descriptor of the root with
``O_NOFOLLOW`` (``openat`` through ``os.open(dir_fd=…)``), so a symbolic link at *any* level —
committed in a repository or swapped in while heald works — makes the operation fail instead of
leaving the root. Nothing here resolves a path by name and then opens it again (no
check-then-use race).

Every refusal raises :class:`UnsafePath`, whose message names the path and the reason.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(ValueError):
    """A path would leave its root, passes through a symbolic link, or is not a plain relative
    path; the message names the path and why."""


def parts_of(path: str) -> list[str]:
    """The components of ``path``, a relative POSIX path of plain names (``a/b/c.txt``).

    Raises UnsafePath for a path that is not a string, is empty, absolute, contains a ``..``,
    ``.`` or empty component, a backslash, a NUL or another control character."""
    if not isinstance(path, str):
        raise UnsafePath(f"path {path!r}: expected a relative path (a string), got {type(path).__name__}")
    if not path:
        raise UnsafePath("path '': expected a relative path inside the tree, got an empty one")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise UnsafePath(f"path {path!r}: contains a control character")
    if "\\" in path:
        raise UnsafePath(f"path {path!r}: contains a backslash")
    if path.startswith("/"):
        raise UnsafePath(f"path {path!r} is absolute; only paths inside the tree are allowed")
    parts = path.split("/")
    for p in parts:
        if p in ("", ".", ".."):
            what = "'..' (a parent directory)" if p == ".." else "an empty or '.' component"
            raise UnsafePath(f"path {path!r} contains {what}; only plain names inside the tree are allowed")
    return parts


def _walk_error(path: str, exc: OSError) -> UnsafePath:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return UnsafePath(f"path {path!r} passes through a symbolic link or a non-directory; heald does not follow it")
    return UnsafePath(f"path {path!r}: {exc.strerror or exc}")


@contextmanager
def _parent_fd(root: Path, parts: list[str], path: str, *, create: bool = False) -> Iterator[int]:
    """A descriptor of the directory holding ``parts[-1]``, opened from ``root`` one component
    at a time with O_NOFOLLOW (``create``: make missing directories, mode 0755)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in parts[:-1]:
            try:
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(name, 0o755, dir_fd=fd)
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _walk_error(path, exc) from exc
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def is_dir(root: Path, path: str) -> bool:
    """Is ``root / path`` a directory reached without following any symbolic link? False for
    a missing path and for one through a link; raises UnsafePath for a malformed ``path``."""
    parts = parts_of(path)
    try:
        with _parent_fd(root, [*parts, ""], path) as fd:
            os.fstat(fd)
        return True
    except (UnsafePath, OSError):
        return False


def read_text(root: Path, path: str, *, limit: int = 16 * 1024 * 1024) -> str | None:
    """The text (UTF-8, undecodable bytes replaced) of the regular file ``root / path``, or
    None when it does not exist. At most ``limit`` bytes (default 16 MiB; more raises).
    Raises UnsafePath for a malformed path, a symbolic link at any level, or a non-regular
    file."""
    parts = parts_of(path)
    try:
        with _parent_fd(root, parts, path) as dfd:
            try:
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return None
                raise _walk_error(path, exc) from exc
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise UnsafePath(f"path {path!r} is not a regular file")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise UnsafePath(f"path {path!r} is larger than {limit} bytes")
    return data.decode("utf-8", errors="replace")


def write_text(root: Path, path: str, text: str, *, create: bool = True) -> None:
    """Replace the content of the regular file ``root / path`` with ``text`` (UTF-8), creating
    it (mode 0644; and missing parent directories) when ``create``. Never through a symbolic
    link at any level, never into a file with other hard links (it may be a host file's other
    name), never a device or FIFO. Raises UnsafePath (or FileNotFoundError when not ``create``
    and the file is missing)."""
    parts = parts_of(path)
    with _parent_fd(root, parts, path, create=create) as dfd:
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | (os.O_CREAT if create else 0)
        try:
            fd = os.open(parts[-1], flags, 0o644, dir_fd=dfd)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise _walk_error(path, exc) from exc
    with os.fdopen(fd, "wb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"path {path!r} is not a regular file; heald does not write it")
        if st.st_nlink != 1:
            raise UnsafePath(f"path {path!r} has {st.st_nlink} hard links; heald does not write through them")
        fh.truncate(0)
        fh.write(text.encode("utf-8"))


def unlink(root: Path, path: str) -> int | None:
    """Delete the regular file ``root / path`` (never through a symbolic link at any level:
    the directory holding it is reached by descriptors, so a directory swapped for a link
    after it was listed is refused). Returns the bytes freed (None when it was already gone).
    Raises UnsafePath."""
    parts = parts_of(path)
    try:
        with _parent_fd(root, parts, path) as dfd:
            try:
                st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                return None
            if stat.S_ISLNK(st.st_mode):
                raise UnsafePath(f"path {path!r} is a symbolic link; heald does not delete it")
            if not stat.S_ISREG(st.st_mode):
                raise UnsafePath(f"path {path!r} is not a regular file; heald does not delete it")
            try:
                os.unlink(parts[-1], dir_fd=dfd)
            except FileNotFoundError:
                return None
            return st.st_size
    except FileNotFoundError:
        return None
