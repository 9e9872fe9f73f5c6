"""Limits on the whole sandbox run, proved with real hostile programs under real bubblewrap:
several processes that each stay under the memory limit but together exceed it, a spawn beyond
the process limit spread over many processes, a /dev/shm filler, and many files that together
exceed the disk bound; and nothing left behind (cgroups, processes, mounts) afterwards.

These need heald to run as root (a cgroup and a loop mount per run), as heald usually does and
as this suite runs on CI; as another user the runs get rlimits only, which
``test_without_root_the_run_says_it_has_rlimits_only`` checks."""

from __future__ import annotations

import os
import subprocess
import sysconfig
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from heald.config import SandboxConfig
from heald.sandbox import Limits, RunResult, Sandbox, _cgroup, disk, open_sandbox
from heald.sandbox.bwrap import Bubblewrap
from tests.conftest import wait_for

PY = "/usr/bin/python3"
MiB = 1024**2

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups and loop mounts need heald to run as root")


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
    # every run removed its cgroup, whatever it did
    assert set(_cgroup.leftovers()) - before == set(), "a run's cgroup was left behind"


def py(sb: Sandbox, work: Path, code: str, limits: Limits) -> RunResult:
    script = work / f"prog_{uuid.uuid4().hex[:8]}.py"
    script.write_text(textwrap.dedent(code))
    return sb.run([PY, str(script)], workdir=work, limits=limits)


def host_pids_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


# Three processes, each holding 120 MiB of touched memory (well under the 256 MiB limit, per
# process address space included), wait until all three hold it at once: 360 MiB together.
HOLDERS = """
import subprocess, sys, time
HOLD = '''
import os, sys, time
chunk = b"x" * (120 * 1024 * 1024)  # resident: every page is written
open(f"held-{sys.argv[1]}", "w").close()
deadline = time.monotonic() + 30
while sum(os.path.exists(f"held-{i}") for i in range(3)) < 3 and time.monotonic() < deadline:
    time.sleep(0.05)
print("ALL HOLDING", sys.argv[1], flush=True)
'''
import glob, os
for old in glob.glob("held-*"):
    os.unlink(old)
procs = [subprocess.Popen([sys.executable, "-c", HOLD, str(i), "MARKER"]) for i in range(3)]
while any(p.poll() is None for p in procs):
    if any(p.poll() not in (None, 0) for p in procs):  # one died: the others would wait for it in vain
        for p in procs:
            if p.poll() is None:
                p.terminate()
    time.sleep(0.05)
codes = [p.wait() for p in procs]
print("EXIT CODES", codes, flush=True)
sys.exit(0 if codes == [0, 0, 0] else 1)
"""


@root_only
def test_processes_together_over_the_runs_memory_are_oom_killed(sandbox: Sandbox, work: Path) -> None:
    marker = f"holder-{uuid.uuid4().hex}"
    limits = Limits(memory_bytes=256 * MiB, timeout_seconds=60)
    r = py(sandbox, work, HOLDERS.replace("MARKER", marker), limits)
    assert not r.ok and not r.timed_out, (r.describe(), r.output)
    assert r.oom_kills >= 1, (r.describe(), r.output)
    assert "ALL HOLDING" not in r.output or "-9" in r.output, r.output  # never all three at once, undisturbed
    assert "EXIT CODES" in r.output and "-9" in r.output.split("EXIT CODES")[1], r.output  # SIGKILL by the OOM killer
    assert "memory limit of 256 MiB was reached" in r.describe()
    assert r.enforcement.startswith("cgroup v"), r.enforcement
    wait_for(lambda: not host_pids_with(marker), timeout=10, what="every holder to be gone")
    # the same three under a run limit that fits them all: they hold together and finish
    fits = py(sandbox, work, HOLDERS.replace("MARKER", marker), Limits(memory_bytes=1024 * MiB, timeout_seconds=60))
    assert fits.ok and fits.oom_kills == 0 and "EXIT CODES [0, 0, 0]" in fits.output, fits.output


@root_only
def test_processes_beyond_the_runs_limit_are_refused_across_the_run(sandbox: Sandbox, work: Path) -> None:
    marker = f"spawn-{uuid.uuid4().hex}"
    r = py(sandbox, work, f"""
        import os, threading, time
        # 8 workers, each spawning children and threads: only the run's total can stop them
        def spawn(k):
            n = 0
            while True:
                try:
                    if os.fork() == 0:
                        time.sleep(60)  # {marker}
                        os._exit(0)
                    n += 1
                except OSError as exc:
                    print("REFUSED worker", k, "after", n, exc.strerror, flush=True)
                    return
        workers = 0
        for k in range(8):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                spawn(k)
                time.sleep(60)
                os._exit(0)
            workers += 1
        time.sleep(3)
        print("WORKERS", workers, flush=True)
        os._exit(0)
    """, Limits(max_processes=40, timeout_seconds=30))
    refusals = [line for line in r.output.splitlines() if line.startswith("REFUSED")]
    assert refusals and "WORKERS" in r.output, r.output
    workers = int(r.output.split("WORKERS")[1].split()[0])
    spawned = sum(int(line.split("after")[1].split()[0]) for line in refusals)
    assert len(refusals) == workers and spawned > 0, r.output  # every worker hit the run's limit
    assert spawned + workers + 1 <= 40, (spawned, r.output)  # workers and the first process count too
    wait_for(lambda: not host_pids_with(marker), timeout=10, what="every spawned process to be gone")


@root_only
def test_the_runs_cgroup_alone_refuses_forks_beyond_its_limit(open_tmp: Path) -> None:
    """The cgroup's pids.max without any rlimit (in the sandbox, RLIMIT_NPROC in the run's user
    namespace usually refuses first; the cgroup holds where that does not)."""
    from heald.sandbox._process import run_launcher

    marker = f"cgspawn-{uuid.uuid4().hex}"
    code = f"""
import os, time
n = 0
while n < 200:
    try:
        if os.fork() == 0:
            os.closerange(0, 3)  # the launcher's output pipe is the parent's
            time.sleep(60)  # {marker}
            os._exit(0)
        n += 1
    except OSError as exc:
        print("REFUSED after", n, exc.strerror, flush=True)
        break
os._exit(0)
"""
    cg = _cgroup.create(512 * MiB, 10)
    try:
        done = run_launcher([PY, "-c", code], timeout=30, output_limit=65536, env={"PATH": "/usr/bin:/bin"},
                            attach=cg.attach)
        assert "REFUSED after" in done.output, done.output
        assert int(done.output.split("REFUSED after")[1].split()[0]) == 10 + _cgroup.SCAFFOLD_PROCESSES - 1
        assert cg.events()[1] >= 1  # pids.events: the refusal is counted
        assert host_pids_with(marker)  # the children still live in the cgroup…
    finally:
        assert cg.destroy() is None  # …until destroy kills them and removes it
    assert not host_pids_with(marker) and not any(d.exists() for d in cg.dirs)


def test_dev_shm_is_sized_and_dev_is_read_only(sandbox: Sandbox, work: Path) -> None:
    r = py(sandbox, work, """
        import errno
        try:
            with open("/dev/shm/fill", "wb") as f:
                for _ in range(32):
                    f.write(b"x" * 1024 * 1024)
                    f.flush()
            print("SHM FILLED")
        except OSError as exc:
            print("SHM STOPPED", errno.errorcode[exc.errno])
        try:
            with open("/dev/fill", "wb") as f:
                f.write(b"x" * 1024 * 1024)
            print("DEV WRITTEN")
        except OSError as exc:
            print("DEV STOPPED", errno.errorcode[exc.errno])
    """, Limits(shm_bytes=8 * MiB, timeout_seconds=60))
    assert "SHM STOPPED ENOSPC" in r.output and "SHM FILLED" not in r.output, r.output
    assert "DEV STOPPED EROFS" in r.output, r.output


@root_only
def test_many_files_over_the_disk_bound_are_refused(sandbox: Sandbox, work: Path) -> None:
    (work / "kept.txt").write_text("written by heald before the first run\n")
    r = py(sandbox, work, """
        import errno
        print("KEPT", open("kept.txt").read().strip())
        written = 0
        try:
            for i in range(40):  # 40 files of 4 MiB: each far under file_size_bytes, 160 MiB together
                with open(f"fill-{i}.bin", "wb") as f:
                    for _ in range(4):
                        f.write(b"x" * 1024 * 1024)
                        f.flush()
                written += 1
            print("ALL WRITTEN", written)
        except OSError as exc:
            print("STOPPED after", written, "files:", errno.errorcode[exc.errno])
    """, Limits(disk_bytes=64 * MiB, file_size_bytes=16 * MiB, timeout_seconds=60))
    assert "KEPT written by heald before the first run" in r.output, r.output
    assert "STOPPED after" in r.output and "ENOSPC" in r.output and "ALL WRITTEN" not in r.output, r.output
    assert int(r.output.split("STOPPED after")[1].split()[0]) < 16
    assert "own filesystem of 64 MiB" in r.enforcement, r.enforcement
    assert disk.is_bounded(work)
    used = sum(p.stat().st_size for p in work.iterdir() if p.is_file())
    assert used <= 64 * MiB
    # a later run in the same tree shares the same budget: it cannot write more
    again = py(sandbox, work, """
        try:
            open("more.bin", "wb").write(b"x" * 8 * 1024 * 1024)
            print("MORE WRITTEN")
        except OSError as exc:
            print("MORE STOPPED", exc.strerror)
    """, Limits(disk_bytes=64 * MiB, timeout_seconds=60))
    assert "MORE STOPPED" in again.output, again.output
    # after a reboot (no mounts), the tree's next run mounts its image again: nothing is lost
    subprocess.run(["umount", str(work)], check=True)
    assert not disk.is_bounded(work) and not any(work.iterdir())
    back = sandbox.run(["/bin/cat", "kept.txt"], workdir=work, limits=Limits(disk_bytes=64 * MiB))
    assert back.ok and "written by heald" in back.output and disk.is_bounded(work), back.output
    # heald reads and writes the tree at its usual path; releasing it unmounts and deletes the image
    (work / "fill-0.bin").unlink()
    assert (work / "kept.txt").read_text().startswith("written by heald")
    disk.release(work)
    assert not disk.is_bounded(work) and not disk.image_of(work).exists()
    assert str(work) not in Path("/proc/self/mountinfo").read_text()


@root_only
def test_a_removed_ci_work_tree_releases_its_filesystem(sandbox: Sandbox, open_tmp: Path) -> None:
    from heald.ci.repo import RepoCache

    before = set(_cgroup.leftovers())
    src = open_tmp / "src"
    src.mkdir()
    for args in (["init", "-q", "-b", "main"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                                                   "--allow-empty", "-m", "first"]):
        subprocess.run(["git", *args], cwd=src, check=True, capture_output=True)
    cache = RepoCache(open_tmp / "ci", "o/r", str(src), max_worktrees=2)
    cache.update()
    trees = [cache.add_worktree(cache.resolve("main"), "t") for _ in range(2)]
    for wt in trees:
        assert sandbox.run(["/bin/true"], workdir=wt.path, limits=Limits(disk_bytes=32 * MiB)).ok
        assert disk.is_bounded(wt.path)
    newest = cache.add_worktree(cache.resolve("main"), "t")  # prunes the oldest beyond max_worktrees
    assert not trees[0].path.exists() and not disk.image_of(trees[0].path).exists()
    assert str(trees[0].path) not in Path("/proc/self/mountinfo").read_text()
    trees[1].remove()
    assert not disk.is_bounded(trees[1].path) and not disk.image_of(trees[1].path).exists()
    assert not trees[1].path.exists()
    newest.remove()
    assert set(_cgroup.leftovers()) <= before


@root_only
def test_without_root_the_run_says_it_has_rlimits_only(open_tmp: Path) -> None:
    """heald as an unprivileged user: no cgroup, no loop mount; the result says so, and
    ``aggregate_limits: required`` refuses the run."""
    work = open_tmp / "w"
    work.mkdir()
    os.chown(work, 65534, 65534)
    code = textwrap.dedent(f"""
        from pathlib import Path
        from heald.config import SandboxConfig
        from heald.sandbox import SandboxError
        from heald.sandbox.bwrap import Bubblewrap
        r = Bubblewrap(SandboxConfig()).run(["/bin/true"], workdir=Path({str(work)!r}))
        print("OK", r.ok)
        print("ENFORCEMENT", r.enforcement)
        try:
            Bubblewrap(SandboxConfig(aggregate_limits="required")).run(["/bin/true"], workdir=Path({str(work)!r}))
            print("REQUIRED RAN")
        except SandboxError as exc:
            print("REQUIRED REFUSED", exc)
    """)
    # heald's interpreter may live under /root; the system's runs heald's code and dependencies
    src = str(Path(__file__).resolve().parents[2] / "src")
    site = sysconfig.get_path("purelib")
    done = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60, user=65534,
                          group=65534, extra_groups=[], cwd="/",
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{src}:{site}"})
    assert done.returncode == 0, done.stderr
    assert "OK True" in done.stdout, done.stdout
    assert "ENFORCEMENT rlimits only, no limit on the whole run (cannot create a cgroup" in done.stdout, done.stdout
    assert "heald is not root" in done.stdout and "disk: not bounded" in done.stdout, done.stdout
    assert "REQUIRED REFUSED sandbox.aggregate_limits is required" in done.stdout, done.stdout
