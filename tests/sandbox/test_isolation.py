"""The bubblewrap sandbox's isolation, proved by running real hostile programs in it: no
network, nothing outside the work tree writable, no secrets in the environment, a memory hog, a
fork bomb, a CPU spinner and a file-size hog contained, and a timeout that kills every process of
the run however it daemonized."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from heald.config import SandboxConfig
from heald.sandbox import Limits, RunResult, Sandbox, _cgroup, open_sandbox
from heald.sandbox.bwrap import Bubblewrap
from heald.sandbox.disk import release_under
from tests.conftest import wait_for

PY = "/usr/bin/python3"


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    sb = open_sandbox(SandboxConfig(backend="bubblewrap"))
    assert isinstance(sb, Bubblewrap)
    return sb


@pytest.fixture
def work(open_tmp: Path) -> Iterator[Path]:
    w = open_tmp / "worktree"
    w.mkdir()
    before = set(_cgroup.leftovers())  # a run SIGKILLed elsewhere on this machine may have left one
    yield w
    assert set(_cgroup.leftovers()) - before == set(), "a run's cgroup was left behind"  # after timeouts and bombs too


def py(sb: Sandbox, work: Path, code: str, **kw: object) -> RunResult:
    script = work / f"prog_{uuid.uuid4().hex[:8]}.py"
    script.write_text(textwrap.dedent(code))
    return sb.run([PY, str(script)], workdir=work, **kw)  # type: ignore[arg-type]


def marker_processes(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture
def listener() -> Iterator[int]:
    """A real TCP server on the host's loopback that accepts connections."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                conn.close()
            except OSError:
                continue

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    srv.close()


CONNECT = """
import socket, sys
for host, port in [(sys.argv[1], int(sys.argv[2]))]:
    try:
        socket.create_connection((host, port), timeout=3).close()
        print("CONNECTED", host, port)
    except OSError as exc:
        print("FAILED", host, port, type(exc).__name__, exc)
"""


def test_no_network_to_the_hosts_loopback(sandbox: Sandbox, work: Path, listener: int) -> None:
    socket.create_connection(("127.0.0.1", listener), timeout=3).close()  # control: the server answers on the host
    (work / "c.py").write_text(CONNECT)
    r = sandbox.run([PY, "c.py", "127.0.0.1", str(listener)], workdir=work)
    assert "FAILED 127.0.0.1" in r.output and "CONNECTED" not in r.output, r.output
    # there is no way to ask for the host's network (DESIGN.md invariant 2)
    with pytest.raises(TypeError):
        sandbox.run([PY, "c.py", "127.0.0.1", str(listener)], workdir=work, network=True)  # type: ignore[call-arg]
    assert "--share-net" not in " ".join(sandbox.argv([PY], workdir=work, cwd=work, env={}, limits=Limits()))


def test_no_network_to_a_public_address(sandbox: Sandbox, work: Path) -> None:
    try:
        public = socket.getaddrinfo("pypi.org", 443, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except OSError:
        public = "151.101.0.223"  # one of pypi.org's addresses, for a host without DNS
    (work / "c.py").write_text(CONNECT)
    r = sandbox.run([PY, "c.py", public, "443"], workdir=work)
    assert f"FAILED {public} 443" in r.output and "CONNECTED" not in r.output, r.output
    dns = sandbox.run([PY, "-c", "import socket; socket.getaddrinfo('pypi.org', 443)"], workdir=work)
    assert dns.returncode != 0 and "gaierror" in dns.output


def test_nothing_outside_the_work_tree_is_writable(sandbox: Sandbox) -> None:
    base = Path(tempfile.mkdtemp(prefix="heald-test-", dir="/var/tmp"))  # outside /tmp, which is private anyway
    try:
        base.chmod(0o755)
        work = base / "worktree"
        work.mkdir()
        outside = base / "outside.txt"
        outside.write_text("host data\n")
        sibling = base / "sibling"
        sibling.mkdir()
        targets = ["/etc/heald-sandbox-test", "/usr/heald-sandbox-test", "/usr/bin/heald-sandbox-test",
                   str(outside), str(sibling / "x"), str(base / "new-file"), "/root/x", "/home/x",
                   "/var/tmp/heald-sandbox-test", "/proc/sys/kernel/hostname", "/heald-sandbox-test"]
        r = py(sandbox, work, f"""
            import os
            for path in {targets!r}:
                try:
                    with open(path, "a") as f:
                        f.write("sandbox was here\\n")
                    print("WROTE", path)
                except OSError as exc:
                    print("DENIED", path, exc.strerror)
            open("inside.txt", "w").write("ok\\n")
            open("/tmp/heald-private.txt", "w").write("ok\\n")
            print("INSIDE-OK")
        """)
        assert "INSIDE-OK" in r.output, r.output
        assert "WROTE" not in r.output, r.output
        assert r.output.count("DENIED") == len(targets), r.output
        assert outside.read_text() == "host data\n" and list(sibling.iterdir()) == []
        assert not (base / "new-file").exists() and not Path("/etc/heald-sandbox-test").exists()
        assert (work / "inside.txt").read_text() == "ok\n"  # the work tree is writable, and it is the real one
        assert not Path("/tmp/heald-private.txt").exists()  # the sandbox's /tmp is its own
    finally:
        release_under(base)
        shutil.rmtree(base, ignore_errors=True)


def test_the_environment_is_cleared(sandbox: Sandbox, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"ghp_{uuid.uuid4().hex}"
    monkeypatch.setenv("GITHUB_TOKEN", secret)
    monkeypatch.setenv("HEALD_GITHUB_WEBHOOK_SECRET", secret)
    r = sandbox.run(["/usr/bin/env"], workdir=work, env={"EXTRA": "given"})
    assert r.ok, r.output
    names = {line.split("=", 1)[0] for line in r.output.splitlines() if "=" in line}
    assert secret not in r.output and "GITHUB_TOKEN" not in names
    assert names <= {"HOME", "TMPDIR", "LANG", "LC_ALL", "PATH", "PWD", "EXTRA"}, names
    assert "EXTRA=given" in r.output and "HOME=/tmp" in r.output


def test_a_memory_hog_is_contained(sandbox: Sandbox, work: Path) -> None:
    limits = Limits(memory_bytes=256 * 1024**2, timeout_seconds=60)
    r = py(sandbox, work, """
        chunks = []
        while True:
            chunks.append(bytearray(16 * 1024 * 1024))  # grows until the limit stops it
    """, limits=limits)
    assert not r.ok and not r.timed_out and "MemoryError" in r.output, r.output
    one_big = py(sandbox, work, "x = bytearray(4 * 1024**3)", limits=limits)
    assert not one_big.ok and "MemoryError" in one_big.output


def test_the_private_tmp_is_size_limited(sandbox: Sandbox, work: Path) -> None:
    r = py(sandbox, work, """
        import errno
        try:
            with open("/tmp/fill", "wb") as f:
                for _ in range(64):
                    f.write(b"x" * 1024 * 1024)
                    f.flush()
            print("FILLED")
        except OSError as exc:
            print("STOPPED", errno.errorcode[exc.errno])
    """, limits=Limits(tmp_bytes=8 * 1024**2, timeout_seconds=60))
    assert "STOPPED ENOSPC" in r.output, r.output


def test_a_fork_bomb_is_contained(sandbox: Sandbox, work: Path) -> None:
    marker = f"forkbomb-{uuid.uuid4().hex}"
    limits = Limits(max_processes=32, timeout_seconds=4)
    r = py(sandbox, work, f"""
        import os, time
        n = 0
        while True:
            try:
                pid = os.fork()
            except OSError as exc:
                print("FORK REFUSED after", n, "children:", exc.strerror, flush=True)
                break
            if pid == 0:
                while True:
                    time.sleep(1)  # {marker}
            n += 1
        # the classic bomb, ignoring every refusal: everything left forks as fast as it can
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """, limits=limits)
    assert "FORK REFUSED after" in r.output, r.output
    refused_after = int(r.output.split("FORK REFUSED after")[1].split()[0])
    assert refused_after < 32
    assert r.timed_out  # the bomb spins until the wall clock ends the run
    wait_for(lambda: not marker_processes(marker), timeout=10, what="every forked process to be gone")


def test_a_cpu_spinner_is_stopped_by_its_cpu_limit(sandbox: Sandbox, work: Path) -> None:
    r = py(sandbox, work, "while True: pass", limits=Limits(cpu_seconds=1, timeout_seconds=60))
    assert not r.timed_out and r.returncode is not None and r.returncode != 0, r.describe()
    assert r.duration_s < 60


def test_a_file_size_hog_is_stopped(sandbox: Sandbox, work: Path) -> None:
    r = py(sandbox, work, """
        with open("big.bin", "wb") as f:
            for _ in range(64):
                f.write(b"x" * 1024 * 1024)
                f.flush()
    """, limits=Limits(file_size_bytes=4 * 1024**2, timeout_seconds=60))
    assert not r.ok
    assert (work / "big.bin").stat().st_size <= 4 * 1024**2


def test_the_timeout_kills_every_process(sandbox: Sandbox, work: Path) -> None:
    marker = f"survivor-{uuid.uuid4().hex}"
    beat = work / "heartbeat"
    t0 = time.monotonic()
    r = py(sandbox, work, f"""
        import os, subprocess, time
        subprocess.Popen(["/bin/sleep", "1000"])  # a plain child
        if os.fork() == 0:  # a daemon: double fork, its own session, stdio closed
            os.setsid()
            if os.fork() == 0:
                os.closerange(0, 3)
                while True:  # {marker}
                    with open({str(beat)!r}, "a") as f:
                        f.write("beat\\n")
                    time.sleep(0.05)
            os._exit(0)
        time.sleep(1000)
    """, limits=Limits(timeout_seconds=1.5))
    assert r.timed_out and r.returncode is None
    assert "timeout" in r.describe()
    assert time.monotonic() - t0 < 30
    assert beat.exists() and beat.stat().st_size > 0  # the daemon did run
    wait_for(lambda: not marker_processes(marker), timeout=10, what="the daemon to be killed")
    size = beat.stat().st_size
    time.sleep(0.5)
    assert beat.stat().st_size == size  # nothing writes any more


def test_output_is_kept_first_and_last(sandbox: Sandbox, work: Path) -> None:
    sb = Bubblewrap(SandboxConfig(output_limit_kb=64))
    r = py(sb, work, """
        print("FIRST LINE")
        for i in range(200000):
            print("line", i)
        print("LAST LINE")
    """)
    assert r.ok and r.truncated
    assert r.output.startswith("FIRST LINE") and r.output.rstrip().endswith("LAST LINE")
    assert "bytes of output cut" in r.output and len(r.output) < 70 * 1024


def test_the_system_is_read_only_but_usable(sandbox: Sandbox, work: Path) -> None:
    r = sandbox.run(["/bin/sh", "-c", "touch /usr/bin/x; echo rc=$?; git --version; python3 -c 'print(6*7)'"],
                    workdir=work)
    assert "rc=1" in r.output and "git version" in r.output and "42" in r.output, r.output


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands work trees to the sandbox user")
def test_root_runs_the_sandbox_as_an_unprivileged_user(sandbox: Sandbox, work: Path) -> None:
    r = sandbox.run(["/usr/bin/id", "-u"], workdir=work)
    assert r.output.strip() == str(SandboxConfig().uid)
    assert work.stat().st_uid == SandboxConfig().uid


def test_an_unreachable_work_tree_is_refused_with_the_reason(sandbox: Sandbox, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("as a normal user every path heald can use, the sandbox can use")
    private = tmp_path / "private"
    private.mkdir()
    os.chmod(tmp_path, 0o700)
    from heald.sandbox import SandboxError

    with pytest.raises(SandboxError, match="cannot reach .*not traversable"):
        sandbox.run(["/bin/true"], workdir=private)
