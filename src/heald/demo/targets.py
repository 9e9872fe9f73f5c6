"""The demo's targets heald does not launch: a web container on this machine's podman (heald
reaches it through podman's Docker Engine API) and a worker systemd unit inside a podman
container that boots a real systemd (heald reaches it with ``podman exec``).

:func:`missing` says why they cannot run here (podman, runc or busybox not installed);
:class:`DemoTargets` builds and starts them in the demo's work directory and removes them again.
podman runs with the runc runtime and small ulimits (see docs/targets.md).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
WORKER_UNIT = "heald-demo-worker.service"


def missing() -> str | None:
    """Why the demo's targets cannot run on this machine, or None when they can."""
    for tool in ("podman", "runc", "busybox"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed (apt-get install podman runc busybox-static uidmap)"
    return None


def _podman(*args: str, timeout: float = 120) -> str:
    r = subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} failed: {r.stderr.strip()[-500:]}")
    return r.stdout


class DemoTargets:
    """The web container and the worker unit of the demo (see the module docstring), serving
    HTTP on ``ports['web']`` and ``ports['worker']`` of the loopback."""

    def __init__(self, workdir: Path, ports: dict[str, int]):
        self.dir = workdir / "targets"
        self.ports = ports
        tag = uuid.uuid4().hex[:8]
        self.web = f"heald-demo-web-{tag}"
        self.host = f"heald-demo-host-{tag}"
        self.image = f"localhost/heald-demo-web-{tag}:1"
        self.merged = f"localhost/heald-demo-merged-{tag}:1"
        self.socket = Path(tempfile.mkdtemp(prefix="heald-demo-podman-")) / "podman.sock"
        self.service: subprocess.Popen[bytes] | None = None

    def config(self) -> dict[str, Any]:
        """heald's configuration of the targets: ``containers``, ``systemd_units`` and the two
        services that watch them (a state probe that fires first, an HTTP probe)."""
        def probes(kind: dict[str, Any], port: int) -> list[dict[str, Any]]:
            return [{**kind, "interval_seconds": 0.25, "failure_threshold": 2},
                    {"type": "http", "url": f"http://127.0.0.1:{port}/", "interval_seconds": 0.25,
                     "timeout_seconds": 0.5, "failure_threshold": 8}]
        return {
            "containers": {"web": {"name": self.web, "docker_host": f"unix://{self.socket}",
                                   "start_period_seconds": 1.0, "stop_timeout_seconds": 2}},
            "systemd_units": {"worker": {"unit": WORKER_UNIT, "command_prefix": ["podman", "exec", self.host],
                                         "start_period_seconds": 1.0}},
            "services": {"web": {"probes": probes({"type": "container", "container": "web"}, self.ports["web"])},
                         "worker": {"probes": probes({"type": "systemd", "unit": "worker"}, self.ports["worker"])}},
        }

    def start(self) -> None:
        """Build the images, start podman's API, the web container and the systemd host with
        the worker unit. Raises RuntimeError when one does not come up (and removes what did)."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        root = self.dir / "web-rootfs"
        (root / "bin").mkdir(parents=True)
        (root / "www").mkdir()
        shutil.copy(shutil.which("busybox") or "/bin/busybox", root / "bin" / "busybox")
        for c in ("sh", "httpd"):
            (root / "bin" / c).symlink_to("busybox")
        (root / "www" / "index.html").write_text("web\n")
        subprocess.run(["tar", "-C", str(root), "-cf", str(self.dir / "web.tar"), "."], check=True)
        _podman("import", str(self.dir / "web.tar"), self.image)
        merged = self.dir / "merged-rootfs"
        for sub in ("usr", "etc", "proc", "sys", "dev", "run", "tmp", "var", "root"):
            (merged / sub).mkdir(parents=True)
        for link in ("bin", "lib", "lib64", "sbin"):
            (merged / link).symlink_to(f"usr/{link}")
        subprocess.run(["tar", "-C", str(merged), "-cf", str(self.dir / "merged.tar"), "."], check=True)
        _podman("import", str(self.dir / "merged.tar"), self.merged)

        self.service = subprocess.Popen(["podman", "--runtime", "runc", "system", "service", "--time=0",
                                         f"unix://{self.socket}"], stdout=subprocess.DEVNULL,
                                        stderr=open(self.dir / "podman-service.log", "wb"))  # noqa: SIM115
        port = self.ports["web"]
        _podman("run", "-d", "--name", self.web, "--network", "host", *ULIMITS, self.image, "/bin/sh", "-c",
                f"echo web listening on {port}; exec /bin/httpd -f -v -p 127.0.0.1:{port} -h /www")

        units = self.dir / "units"
        units.mkdir()
        # boot only what the journal needs: /etc is this machine's, its own services must not start
        (units / "heald-demo.target").write_text("[Unit]\nRequires=sysinit.target\nAfter=sysinit.target\n")
        (units / WORKER_UNIT).write_text(
            "[Unit]\nDescription=heald demo worker\n[Service]\n"
            f"ExecStart=/usr/bin/python3 -u -m http.server {self.ports['worker']} --bind 127.0.0.1\n")
        _podman("run", "-d", "--name", self.host, "--network", "host", "--systemd=always", *ULIMITS,
                "-v", "/usr:/usr:ro", "-v", "/etc:/etc:ro", "-v", f"{units}:/etc/systemd/system:ro",
                self.merged, "/usr/lib/systemd/systemd", "--unit=heald-demo.target")
        deadline = time.monotonic() + 60
        while True:
            r = subprocess.run(["podman", "exec", self.host, "systemctl", "is-system-running"], capture_output=True,
                               text=True, timeout=30)
            if r.stdout.strip() in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"systemd in {self.host} did not boot: {r.stdout.strip()} {r.stderr.strip()}")
            time.sleep(0.2)
        _podman("exec", self.host, "systemctl", "start", WORKER_UNIT)
        while not self.socket.exists():
            if self.service.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"podman system service did not start: "
                                   f"{(self.dir / 'podman-service.log').read_text()[-500:]}")
            time.sleep(0.05)

    def kill_web(self) -> str:
        """SIGKILL the web container's main process (``podman kill``)."""
        _podman("kill", self.web)
        return f"podman kill {self.web} (SIGKILL)"

    def kill_worker(self) -> str:
        """SIGKILL the worker unit's main process (``systemctl kill -s KILL``): the unit fails."""
        _podman("exec", self.host, "systemctl", "kill", "-s", "KILL", WORKER_UNIT)
        return f"systemctl kill -s KILL {WORKER_UNIT} in {self.host}"

    def stop(self) -> None:
        """Remove the containers and images, stop podman's API."""
        for name in (self.web, self.host):
            subprocess.run(["podman", "--runtime", "runc", "rm", "-f", "-t", "0", name], capture_output=True,
                           timeout=60)
        subprocess.run(["podman", "rmi", "-f", self.image, self.merged], capture_output=True, timeout=60)
        if self.service is not None and self.service.poll() is None:
            self.service.terminate()
            try:
                self.service.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait()
        shutil.rmtree(self.socket.parent, ignore_errors=True)
