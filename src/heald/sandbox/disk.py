"""A bound on the disk a sandbox run can fill: the work tree lives on a filesystem of its own.

When heald runs as root, the first run in a work tree ``W`` gives it a sparse ext4 image of
``disk_bytes`` (the file ``.W.heald-disk`` next to ``W``, mode 0600), copies ``W``'s contents
into it and loop-mounts it at ``W`` (``nosuid,nodev``). Every later run in ``W`` writes into that
filesystem, so all the runs in one work tree together can fill at most ``disk_bytes``
(``ENOSPC`` beyond), whatever the number and size of the files. The image is sparse: the host's
disk pays only for the blocks really written. heald's own code reads and writes the tree at the
same path as before.

:func:`release` unmounts it and deletes the image; whoever removes a work tree calls it first
(``release_under`` for a directory holding several). Needs ``mkfs.ext4`` (e2fsprogs), ``mount``
and loop devices; :func:`bound` raises :class:`DiskBoundUnavailable` saying why otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

SUFFIX = ".heald-disk"
_lock = threading.Lock()
_TOOLS_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class DiskBoundUnavailable(RuntimeError):
    """The work tree cannot be given a bounded filesystem here; the message says why."""


def image_of(tree: Path) -> Path:
    """Where the image of work tree ``tree`` lives: ``<parent>/.<name>.heald-disk``."""
    return tree.parent / f".{tree.name}{SUFFIX}"


def _mount_sources() -> dict[Path, str]:
    """Mount point → source device, from ``/proc/self/mountinfo`` (proc(5))."""
    found: dict[Path, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            mount_point = left.split(" ")[4].replace("\\040", " ")
            found[Path(mount_point)] = (right.split(" ") + [""])[1]
    return found


def _backing_file(device: str) -> str | None:
    """The file behind loop device ``/dev/loopN`` (sysfs ``loop/backing_file``)."""
    if not device.startswith("/dev/loop"):
        return None
    try:
        return (Path("/sys/block") / Path(device).name / "loop" / "backing_file").read_text().strip()
    except OSError:
        return None


def is_bounded(tree: Path) -> bool:
    """Is ``tree`` the mount point of its own heald disk image?"""
    tree = Path(tree).resolve()
    device = _mount_sources().get(tree)
    return device is not None and _backing_file(device) == str(image_of(tree))


def _run(*argv: str) -> None:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=120,
                       env={"PATH": _TOOLS_PATH, "LC_ALL": "C"}, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise DiskBoundUnavailable(f"{' '.join(argv[:2])} failed: {(r.stderr or r.stdout).strip()[-300:]}")


def bound(tree: Path, disk_bytes: int, owner: tuple[int, int] | None) -> None:
    """Give work tree ``tree`` a filesystem of its own of ``disk_bytes`` bytes (no-op when it
    has one; an empty tree whose image exists, as after a reboot, gets that image mounted
    again). Its contents move onto it; its root belongs to ``owner`` (uid, gid) when given.
    Raises DiskBoundUnavailable (not root, no mkfs.ext4 or loop device, contents larger than
    ``disk_bytes``…); ``tree`` is then left as it was."""
    tree = Path(tree).resolve()
    with _lock:
        if is_bounded(tree):
            return
        if os.geteuid() != 0:
            raise DiskBoundUnavailable("heald is not root (loop-mounting a filesystem needs root)")
        mkfs = shutil.which("mkfs.ext4", path=_TOOLS_PATH)
        if mkfs is None:
            raise DiskBoundUnavailable("mkfs.ext4 (e2fsprogs) is not installed")
        image = image_of(tree)
        if image.is_file() and not image.is_symlink() and not any(tree.iterdir()):
            # the tree's filesystem from before a reboot (mounts do not survive one): mount it again
            try:
                _run("mount", "-o", "loop,nosuid,nodev", str(image), str(tree))
                return
            except DiskBoundUnavailable:
                pass  # not a usable image: make a new one
        staging = tree.parent / f".{tree.name}{SUFFIX}.mnt"
        mounted = False
        try:
            fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.ftruncate(fd, disk_bytes)
            finally:
                os.close(fd)
            # no journal (a work tree is thrown away after a crash) and no reserved blocks: all
            # of disk_bytes is the run's; root_owner so the sandbox's user owns the tree's root
            uid, gid = owner or (os.getuid(), os.getgid())
            _run(mkfs, "-q", "-F", "-O", "^has_journal", "-m", "0", "-E",
                 f"nodiscard,lazy_itable_init=1,root_owner={uid}:{gid}", str(image))
            staging.mkdir(mode=0o700)
            _run("mount", "-o", "loop,nosuid,nodev", str(image), str(staging))
            mounted = True
            shutil.rmtree(staging / "lost+found", ignore_errors=True)
            if any(tree.iterdir()):
                # cp -a copies symlinks as symlinks (never follows them) and keeps owners and modes
                _run("cp", "-a", "--", f"{tree}/.", f"{staging}/")
                for child in list(tree.iterdir()):
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            _run("umount", str(staging))
            mounted = False
            staging.rmdir()
            _run("mount", "-o", "loop,nosuid,nodev", str(image), str(tree))
        except (OSError, DiskBoundUnavailable) as exc:
            if mounted:
                subprocess.run(["umount", "-l", str(staging)], capture_output=True, env={"PATH": _TOOLS_PATH},
                               check=False)
            with contextlib.suppress(OSError):
                staging.rmdir()
            with contextlib.suppress(OSError):
                image.unlink()
            if isinstance(exc, DiskBoundUnavailable):
                raise
            raise DiskBoundUnavailable(f"cannot give {tree} a filesystem of its own: {exc}") from exc


def release(tree: Path) -> None:
    """Unmount work tree ``tree``'s own filesystem and delete its image (its contents go with
    it); no-op when it has none."""
    tree = Path(tree).resolve()
    with _lock:
        if is_bounded(tree):
            r = subprocess.run(["umount", str(tree)], capture_output=True, env={"PATH": _TOOLS_PATH}, check=False)
            if r.returncode != 0:  # still busy (a process of heald's inside it): detach it now, freed when idle
                subprocess.run(["umount", "-l", str(tree)], capture_output=True, env={"PATH": _TOOLS_PATH},
                               check=False)
        image = image_of(tree)
        if image.is_file() and not image.is_symlink():
            image.unlink()


def release_under(directory: Path) -> list[Path]:
    """:func:`release` every bounded work tree at or below ``directory``; returns them."""
    directory = Path(directory).resolve()
    trees = [m for m in _mount_sources() if (m == directory or directory in m.parents) and is_bounded(m)]
    for tree in sorted(trees, key=lambda p: len(p.parts), reverse=True):
        release(tree)
    return trees
