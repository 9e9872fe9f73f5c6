"""deploy/heald.service under a real systemd (PID 1 in a podman container, see
../shared/recipes/containers-and-systemd.md): heald starts as a dynamic user with its state in
/var/lib/heald and answers /healthz; SIGKILLed, systemd starts it again; ``systemctl stop``
ends it cleanly (SIGTERM, inactive, not failed); a refusal (status 1) is not restarted."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port, wait_for
from tests.targets.conftest import ULIMITS, SystemdHost, merged_image, need_podman, podman

pytestmark = pytest.mark.slow


@pytest.fixture
def host() -> Iterator[SystemdHost]:
    """A systemd as PID 1 with the host's /usr and /etc, this repository (its .venv) and the
    Python installation it uses read-only; privileged, so that systemd can set up the unit's
    mount namespace (ProtectSystem=, PrivateTmp=, DynamicUser=) inside the container."""
    need_podman()
    tag = merged_image()
    name = f"heald-test-unit-{uuid.uuid4().hex[:8]}"
    shared = Path(tempfile.mkdtemp(prefix="heald-unit-"))
    shared.chmod(0o755)
    units = shared / "units"
    units.mkdir()
    (units / "heald-test.target").write_text("[Unit]\nDescription=heald test host\nRequires=sysinit.target\n"
                                             "After=sysinit.target\n")
    try:
        python = Path(os.path.realpath(sys.executable)).parents[1]  # the venv's interpreter's prefix
        mounts = [] if python.is_relative_to("/usr") else ["-v", f"{python}:{python}:ro"]
        podman("run", "-d", "--privileged", "--name", name, "--network", "host", "--systemd=always", *ULIMITS,
               "-v", "/usr:/usr:ro", "-v", "/etc:/etc:ro", "-v", f"{units}:/etc/systemd/system:ro",
               "-v", f"{REPO}:{REPO}:ro", *mounts, "-v", f"{shared}:/heald-test", tag, "/usr/lib/systemd/systemd",
               "--unit=heald-test.target")
        h = SystemdHost(name, shared)
        wait_for(lambda: h.sh("systemctl is-system-running", check=False).stdout.strip() in ("running", "degraded"),
                 timeout=60, what="systemd in the container")
        yield h
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
        shutil.rmtree(shared, ignore_errors=True)


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_unit_starts_heald_restarts_it_after_a_kill_and_stops_it_cleanly(host: SystemdHost) -> None:
    port = free_port()
    (host.shared / "heald.yaml").write_text(json.dumps({"api": {"port": port, "auth": False}, "log_level": "warning"}))
    unit = (REPO / "deploy" / "heald.service").read_text()
    assert "ExecStart=/opt/heald/bin/heald --config /etc/heald/heald.yaml serve" in unit
    unit = unit.replace("/opt/heald/bin/heald --config /etc/heald/heald.yaml serve",
                        f"{REPO}/.venv/bin/heald --config /heald-test/heald.yaml serve\n"
                        # a checkout under /tmp (a CI clone in mktemp -d) is hidden by the unit's
                        # PrivateTmp=; the installed heald of a real host lives in /opt
                        f"BindReadOnlyPaths={REPO}")
    host.add_unit("heald.service", unit)
    wait_for(lambda: healthy(port), timeout=90, what="heald under systemd to answer /healthz")
    first = host.show("heald.service")
    assert first["ActiveState"] == "active", first
    user = host.sh(f"ps -o user= -p {first['MainPID']}").stdout.strip()
    assert user not in ("root", "0"), f"heald runs as {user}"
    assert host.sh("test -f /var/lib/private/heald/heald.db && echo yes").stdout.strip() == "yes"

    host.sh("systemctl kill --signal=SIGKILL heald.service")
    wait_for(lambda: (s := host.show("heald.service"))["MainPID"] not in ("0", first["MainPID"])
             and s["ActiveState"] == "active" and healthy(port), timeout=90, what="systemd to restart heald")
    assert int(host.show("heald.service")["NRestarts"]) >= 1

    t0 = time.monotonic()
    host.sh("systemctl stop heald.service")
    stopped = host.show("heald.service")
    assert stopped["ActiveState"] == "inactive" and stopped["Result"] == "success", stopped
    assert time.monotonic() - t0 < 60
    assert not healthy(port)
    journal = host.sh("journalctl -u heald.service --no-pager -o cat", check=False).stdout
    assert "heald serves its API" in journal

    # a refusal is not restarted: a configuration heald rejects exits 2, and stays down
    (host.shared / "heald.yaml").write_text(json.dumps({"api": {"port": port}, "no_such_key": 1}))
    host.sh("systemctl reset-failed heald.service; systemctl start heald.service", check=False)
    wait_for(lambda: host.show("heald.service")["ActiveState"] == "failed", timeout=60, what="the refusal")
    time.sleep(3)  # RestartSec=2: a restart would have happened by now
    assert host.show("heald.service")["NRestarts"] == "0"
