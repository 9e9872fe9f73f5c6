"""heald's one way to run git on the host: :func:`run` (and :func:`succeeds`), raising
:class:`GitError`.

heald runs as root, and the repositories it reads (a service's configuration repository, a
clone of a CI repository and its work trees) are written by others, so git here never reads
configuration or runs programs it did not choose:

- no system or user configuration: ``GIT_CONFIG_NOSYSTEM=1``, ``GIT_CONFIG_GLOBAL=/dev/null`` and
  ``XDG_CONFIG_HOME`` pointed at a directory that does not exist (a ``~/.gitconfig`` could
  rewrite URLs with ``insteadOf``, set a pager, an ``sshCommand``…; ``~/.config/git/attributes``
  and ``ignore`` are read without any configuration). ``HOME`` is kept: ssh reads its keys and
  known hosts from the account's home, and git reads nothing more from it;
- the operator's transport settings in heald's environment (``GIT_SSH_COMMAND``, proxies) are
  kept; the variables that point git at another repository or configuration are dropped;
- no hooks (``core.hooksPath=/dev/null``), no fsmonitor command, ``safe.directory=*`` (the
  repository's owner does not matter: nothing in it is executed);
- transports limited to file, https, http, ssh and git (``GIT_ALLOW_PROTOCOL``, which no
  configuration overrides: no ``ext::`` remote helper that runs a command);
- no prompt for credentials, the C locale, no ``GIT_DIR``-style variables inherited from
  heald's environment, stdin closed, and a wall-clock limit on every command.

Callers end options before revisions and paths (``--end-of-options`` or ``--``) and validate
revisions and URLs that come from outside (:func:`heald.ci.check_rev`, :func:`heald.ci.check_url`).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

#: ``-c`` options given to every git command (see the module docstring).
HARDENING = [
    "-c", "safe.directory=*", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false",
    "-c", "advice.detachedHead=false",
]
#: The transports git may use (``GIT_ALLOW_PROTOCOL``, which overrides every ``protocol.*``
#: setting, even one a caller's ``env`` adds): never ``ext::`` or another remote helper.
ALLOWED_PROTOCOLS = "file:https:http:ssh:git"

#: Environment variables that would point git at another repository, index or configuration.
_DROPPED = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR",
            "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CONFIG", "GIT_CONFIG_SYSTEM", "GIT_CONFIG_COUNT",
            "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_GLOBAL", "GIT_EXEC_PATH", "GIT_EXTERNAL_DIFF", "GIT_ALLOW_PROTOCOL", "GIT_PAGER",
            "PAGER", "GIT_EDITOR", "EDITOR", "VISUAL", "XDG_CONFIG_HOME")
#: Where git looks for the user's attributes and ignore files (``$XDG_CONFIG_HOME/git/…``): nowhere.
NO_USER_DIR = "/nonexistent/heald-git"


class GitError(RuntimeError):
    """A git command failed, timed out or could not start; the message has the command and
    git's own words."""


def environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a hardened git command: heald's own without the variables that
    redirect git (:data:`_DROPPED`), without system and user configuration, with ``env``
    (e.g. author identity, ``GIT_CONFIG_COUNT`` credentials) added, and the transport allowlist
    (:data:`ALLOWED_PROTOCOLS`) forced last."""
    full = {k: v for k, v in os.environ.items() if k not in _DROPPED}
    full.update({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "XDG_CONFIG_HOME": NO_USER_DIR,
                 "GIT_TERMINAL_PROMPT": "0",
                 "GIT_ASKPASS": "/bin/false", "SSH_ASKPASS": "/bin/false", "LC_ALL": "C"})
    full.update(env or {})
    full["GIT_ALLOW_PROTOCOL"] = ALLOWED_PROTOCOLS
    return full


def _argv(args: tuple[str, ...], git_dir: Path | None, work_tree: Path | None) -> list[str]:
    argv = ["git", *HARDENING]
    if git_dir is not None:
        argv.append(f"--git-dir={git_dir}")
    if work_tree is not None:
        argv.append(f"--work-tree={work_tree}")
    return [*argv, *args]


def run(*args: str, cwd: Path | None = None, git_dir: Path | None = None, work_tree: Path | None = None,
        timeout: float = 300.0, env: Mapping[str, str] | None = None, check: bool = True) -> str:
    """Run ``git args…`` hardened (see the module docstring) in ``cwd``, on ``git_dir`` and
    ``work_tree`` when given; returns its stdout (text; undecodable bytes replaced).
    ``timeout`` is in seconds. Raises GitError with git's stderr when it exits non-zero (only
    when ``check``), when it runs longer than ``timeout`` or when git cannot be started."""
    try:
        r = subprocess.run(_argv(args, git_dir, work_tree), cwd=cwd, capture_output=True, timeout=timeout,
                           env=environment(env), stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        raise GitError(f"git {' '.join(args[:3])} timed out after {timeout:g} s") from exc
    except OSError as exc:
        raise GitError(f"git {' '.join(args[:3])} could not run: {exc}") from exc
    out = r.stdout.decode(errors="replace")
    if check and r.returncode != 0:
        words = (r.stderr.decode(errors="replace") or out).strip()[-800:]
        raise GitError(f"git {' '.join(args)} failed (exit {r.returncode}): {words}")
    return out


def succeeds(*args: str, cwd: Path | None = None, git_dir: Path | None = None, work_tree: Path | None = None,
             timeout: float = 60.0, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``git args…`` (hardened, as :func:`run`) exits 0 within ``timeout`` seconds."""
    try:
        run(*args, cwd=cwd, git_dir=git_dir, work_tree=work_tree, timeout=timeout, env=env)
    except GitError:
        return False
    return True
