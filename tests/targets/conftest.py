"""Real containers and a real systemd for the target tests: podman with the runc runtime
(crun fails on these machines), its Docker Engine API on a unix socket, images built from local
files with ``podman import`` (no registry is reachable). See ../shared/recipes/containers-and-systemd.md.

Everything started here is removed afterwards (``podman rm -f``, ``podman rmi``)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PODMAN = shutil.which("podman")
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def need_podman() -> str:
    if PODMAN is None or shutil.which("runc") is None:
        pytest.skip("podman and runc are not installed (apt-get install podman runc busybox-static uidmap; "
                    "scripts/apt-packages.txt lists them)")
    return PODMAN


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``podman --runtime runc ARGS``; raises on failure when ``check``."""
    r = subprocess.run([need_podman(), "--runtime", "runc", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


@dataclass
class Images:
    """Tiny busybox images built for one test module: ``good`` and ``good2`` (two releases of a
    web server that both work) and ``bad`` (its release is missing its ``/www/ok`` file, so the
    start command exits 1), all in the repository ``repo``; ``command`` starts the server on
    ``port`` only when ``/www/ok`` exists."""

    repo: str
    good: str
    good2: str
    bad: str

    @staticmethod
    def command(port: int) -> list[str]:
        return ["/bin/sh", "-c", f"echo web starting on {port}; test -f /www/ok || {{ echo 'FATAL: /www/ok missing'; "
                                 f"exit 1; }}; exec /bin/httpd -f -p 127.0.0.1:{port} -h /www"]


def _import(root: Path, tag: str, release: str, ok: bool) -> None:
    www = root / "www"
    for f in www.iterdir():
        f.unlink()
    (www / "index.html").write_text(f"release {release}\n")
    if ok:
        (www / "ok").write_text("ok\n")
    tar = root.parent / f"{release}.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
    podman("import", str(tar), tag)
    time.sleep(1.1)  # image creation times are in seconds: releases must be ordered by them


@pytest.fixture(scope="module")
def images() -> Iterator[Images]:
    need_podman()
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed (apt-get install busybox-static)")
    repo = f"localhost/heald-test-web-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="heald-images-") as d:
        root = Path(d) / "rootfs"
        (root / "bin").mkdir(parents=True)
        (root / "www").mkdir()
        shutil.copy(busybox, root / "bin" / "busybox")
        for c in ("sh", "httpd", "sleep", "test", "echo", "cat"):
            (root / "bin" / c).symlink_to("busybox")
        imgs = Images(repo=repo, good=f"{repo}:1", good2=f"{repo}:2", bad=f"{repo}:3")
        _import(root, imgs.good, "1", ok=True)
        _import(root, imgs.good2, "2", ok=True)
        _import(root, imgs.bad, "3", ok=False)
    yield imgs
    podman("rmi", "-f", imgs.good, imgs.good2, imgs.bad, check=False)


@pytest.fixture(scope="module")
def docker_api() -> Iterator[str]:
    """podman's Docker Engine API on a unix socket of its own: ``unix:///…/podman.sock``."""
    need_podman()
    d = Path(tempfile.mkdtemp(prefix="heald-podman-"))
    sock = d / "podman.sock"
    proc = subprocess.Popen([need_podman(), "--runtime", "runc", "system", "service", "--time=0", f"unix://{sock}"],
                            stdout=subprocess.DEVNULL, stderr=open(d / "service.log", "wb"))  # noqa: SIM115
    deadline = time.monotonic() + 30
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"podman system service did not start: {(d / 'service.log').read_text()[-2000:]}")
        time.sleep(0.05)
    yield f"unix://{sock}"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def container_name() -> Iterator[str]:
    """A unique container name, the container removed after the test (and any that heald set
    aside while recreating it)."""
    name = f"heald-test-{uuid.uuid4().hex[:10]}"
    yield name
    r = podman("ps", "-a", "--format", "{{.Names}}", check=False)
    leftovers = [n for n in r.stdout.split() if n == name or n.startswith(f"{name}-")]
    if leftovers:
        podman("rm", "-f", "-t", "0", *leftovers, check=False)


def run_web(name: str, image: str, port: int, *extra: str) -> None:
    """Start the web container ``name`` on ``image`` serving ``port`` on the host's loopback."""
    podman("run", "-d", "--name", name, "--network", "host", *ULIMITS, *extra, image, *Images.command(port))


def container_inspect(name: str) -> dict[str, object]:
    import json

    r = podman("inspect", name)
    return json.loads(r.stdout)[0]  # type: ignore[no-any-return]

