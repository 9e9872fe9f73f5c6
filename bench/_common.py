"""What the bench scripts share: a heald server waited for and stopped, a PyPI sdist unpacked,
a work directory for CI runs in the sandbox.

A script run as ``.venv/bin/python bench/X.py`` has bench/ first on its path, so it imports
this module as ``from _common import ...``."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0,
                 interval: float = 0.1) -> None:
    """Poll ``url`` (a heald ``/healthz``) every ``interval`` seconds until it answers 200.
    Raises RuntimeError naming ``log`` (the server's output) if ``proc`` exits first or
    ``timeout`` seconds pass; the process is killed then."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"heald did not start; see {log}")
        time.sleep(interval)


def stop(proc: subprocess.Popen[bytes], grace: float = 60.0) -> None:
    """SIGTERM ``proc`` and wait for it; killed after ``grace`` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def sdist(project: str, version: str, cache: Path) -> Path:
    """The unpacked sdist of ``project`` ``version``: ``cache/<project>-<version>``, downloaded
    by pip (``pip download --no-binary :all:``) once. Raises CalledProcessError if pip fails."""
    root = cache / f"{project}-{version}"
    if not root.is_dir():
        dl = cache / "dl" / f"{project}-{version}"
        dl.mkdir(parents=True, exist_ok=True)
        if not any(dl.iterdir()):
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                            f"{project}=={version}", "-d", str(dl)], check=True, capture_output=True)
        archive = next(dl.iterdir())
        tmp = cache / f".{project}-{version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        [top] = list(tmp.iterdir())
        top.rename(root)
        shutil.rmtree(tmp, ignore_errors=True)
    return root


@contextmanager
def ci_work_dir(prefix: str, keep: bool = False) -> Iterator[tuple[Path, Path]]:
    """A fresh directory (0755, so the sandbox's user reaches the work trees in it) and a pip
    cache inside it: yields (base, pip_cache). Removed on exit unless ``keep``, with every
    filesystem the sandbox gave a work tree in it."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    pip_cache = base / "pip-cache"
    pip_cache.mkdir()
    try:
        yield base, pip_cache
    finally:
        if not keep:
            from heald.sandbox.disk import release_under

            release_under(base)
            shutil.rmtree(base, ignore_errors=True)
