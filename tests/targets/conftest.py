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
    def command(port: int, address: str = "127.0.0.1") -> list[str]:
        return ["/bin/sh", "-c", f"echo web starting on {port}; test -f /www/ok || {{ echo 'FATAL: /www/ok missing'; "
                                 f"exit 1; }}; exec /bin/httpd -f -p {address}:{port} -h /www"]


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



@dataclass
class SystemdHost:
    """A real systemd as PID 1 in a podman container (the host's /usr and /etc read-only,
    host networking): ``name`` is the container, ``shared`` a host directory mounted at
    ``/heald-test`` inside it."""

    name: str
    shared: Path

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with sh inside the container."""
        return podman("exec", self.name, "sh", "-c", script, check=check)

    def add_unit(self, unit: str, body: str) -> None:
        """Write ``unit`` (a [Service] section etc.) under /run/systemd/system and start it."""
        self.sh(f"cat > /run/systemd/system/{unit} <<'UNIT'\n{body}\nUNIT\nsystemctl daemon-reload && "
                f"systemctl reset-failed {unit} 2>/dev/null; systemctl restart {unit}")

    def show(self, unit: str) -> dict[str, str]:
        out = self.sh(f"systemctl show --property=ActiveState,SubState,Result,InvocationID,MainPID,NRestarts -- {unit}")
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


MERGED = "localhost/heald-test-merged:1"


def merged_image() -> str:
    """An empty merged-/usr image (run it with the host's /usr mounted read-only): built once
    per machine, kept (it holds nothing but empty directories and four symlinks)."""
    if podman("image", "exists", MERGED, check=False).returncode == 0:
        return MERGED
    with tempfile.TemporaryDirectory(prefix="heald-merged-") as d:
        root = Path(d) / "r"
        for sub in ("usr", "etc", "proc", "sys", "dev", "run", "tmp", "var", "root", "heald-test"):
            (root / sub).mkdir(parents=True)
        for link in ("bin", "lib", "lib64", "sbin"):
            (root / link).symlink_to(f"usr/{link}")
        subprocess.run(["tar", "-C", str(root), "-cf", f"{d}/merged.tar", "."], check=True)
        podman("import", f"{d}/merged.tar", MERGED)
    return MERGED


@pytest.fixture(scope="module")
def systemd_host() -> Iterator[SystemdHost]:
    need_podman()
    tag = merged_image()
    name = f"heald-test-host-{uuid.uuid4().hex[:8]}"
    shared = Path(tempfile.mkdtemp(prefix="heald-host-"))
    shared.chmod(0o755)
    try:
        # boot to a target of our own that needs only sysinit (the journal): the machine's own
        # services (/etc is the host's) must not start in there
        units = shared / "units"
        units.mkdir()
        (units / "heald-test.target").write_text("[Unit]\nDescription=heald test host\nRequires=sysinit.target\n"
                                                 "After=sysinit.target\n")
        podman("run", "-d", "--name", name, "--network", "host", "--systemd=always", *ULIMITS,
               "-v", "/usr:/usr:ro", "-v", "/etc:/etc:ro", "-v", f"{units}:/etc/systemd/system:ro",
               "-v", f"{shared}:/heald-test", tag, "/usr/lib/systemd/systemd", "--unit=heald-test.target")
        host = SystemdHost(name, shared)
        deadline = time.monotonic() + 60
        while host.sh("systemctl is-system-running", check=False).stdout.strip() not in ("running", "degraded"):
            if time.monotonic() > deadline:
                pytest.fail(f"systemd in {name} did not come up: {host.sh('systemctl --failed', check=False).stdout}")
            time.sleep(0.2)
        yield host
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
        shutil.rmtree(shared, ignore_errors=True)


@dataclass
class SSHServer:
    """A real OpenSSH server on a loopback ``port`` (inside ``systemd_host``, so commands over
    SSH reach that systemd), accepting ``client_key`` for root; ``known_hosts`` holds its real
    host key, ``wrong_known_hosts`` another key under the same name."""

    port: int
    client_key: Path
    known_hosts: Path
    wrong_known_hosts: Path


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "heald-test", "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


@pytest.fixture(scope="module")
def ssh_server(systemd_host: SystemdHost) -> Iterator[SSHServer]:
    if shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists():
        pytest.skip("OpenSSH's server is not installed (apt-get install openssh-server)")
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed (apt-get install openssh-client)")
    import socket

    from tests.conftest import free_port

    d = systemd_host.shared
    host_pub = _keygen(d / "ssh_host_ed25519_key")
    other_pub = _keygen(d / "other_host_key")
    client_pub = _keygen(d / "client_key")
    (d / "authorized_keys").write_text(client_pub + "\n")
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey /heald-test/ssh_host_ed25519_key\n"
        "AuthorizedKeysFile /heald-test/authorized_keys\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\n"
        "PidFile /run/heald-test-sshd.pid\n")
    systemd_host.sh("mkdir -p /run/sshd && chmod 0755 /run/sshd")
    podman("exec", "-d", systemd_host.name, "/usr/sbin/sshd", "-D", "-e", "-f", "/heald-test/sshd_config")
    known = d / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {' '.join(host_pub.split()[:2])}\n")
    wrong = d / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{port} {' '.join(other_pub.split()[:2])}\n")
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail("sshd did not start")
        time.sleep(0.1)
    yield SSHServer(port, d / "client_key", known, wrong)
    systemd_host.sh("kill $(cat /run/heald-test-sshd.pid) 2>/dev/null", check=False)
