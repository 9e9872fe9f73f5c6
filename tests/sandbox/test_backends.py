"""Choosing a backend, and refusing when none works.

No Docker engine runs on this machine, so the Docker backend is tested honestly as far as it can
be here: its detection against the real ``docker`` CLI (when installed) and against CLIs that
answer or fail the way Docker's does, its refusal message, and the ``docker run`` command line
it builds. Its runs themselves are not exercised here.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from heald.config import SandboxConfig
from heald.sandbox import Limits, SandboxUnavailable, backend_status, open_sandbox
from heald.sandbox import docker as docker_backend
from heald.sandbox.bwrap import Bubblewrap


def fake_command(bin_dir: Path, name: str, script: str) -> Path:
    bin_dir.mkdir(exist_ok=True)
    p = bin_dir / name
    p.write_text("#!/bin/sh\n" + script + "\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return p


def test_auto_picks_bubblewrap_here() -> None:
    statuses = {s.name: s for s in backend_status(SandboxConfig())}
    assert statuses["bubblewrap"].ok, statuses["bubblewrap"].detail
    assert "bubblewrap" in statuses["bubblewrap"].detail
    assert isinstance(open_sandbox(SandboxConfig()), Bubblewrap)


def test_docker_detection_with_the_real_cli() -> None:
    status = docker_backend.probe(SandboxConfig())
    if shutil.which("docker") is None:
        assert not status.ok and status.detail == "the docker command is not installed"
    elif not status.ok:  # this machine: a docker CLI and no engine
        assert status.detail.startswith("the docker CLI is installed but no engine")
    else:
        assert status.detail.startswith("Docker engine ")


def test_docker_detection_when_the_engine_does_not_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_command(tmp_path / "bin", "docker",
                 'echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. '
                 'Is the docker daemon running?" >&2; exit 1')
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    status = docker_backend.probe(SandboxConfig())
    assert not status.ok and "no engine answers: Cannot connect to the Docker daemon" in status.detail
    with pytest.raises(SandboxUnavailable) as err:
        open_sandbox(SandboxConfig(backend="docker"))
    msg = str(err.value)
    assert "never runs it unsandboxed" in msg and "docker: the docker CLI is installed but no engine answers" in msg
    assert "apt-get install bubblewrap" in msg and "start a Docker engine" in msg


def test_docker_is_chosen_when_an_engine_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a CLI answering `docker version --format {{.Server.Version}}` as Docker's does when its engine is up
    fake_command(tmp_path / "bin", "docker", 'if [ "$1" = version ]; then echo 27.3.1; exit 0; fi; exit 1')
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # and no bwrap on PATH
    status = docker_backend.probe(SandboxConfig())
    assert status.ok and status.detail.startswith("Docker engine 27.3.1")
    assert isinstance(open_sandbox(SandboxConfig()), docker_backend.Docker)


def test_no_backend_refuses_and_names_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # neither bwrap nor docker
    with pytest.raises(SandboxUnavailable) as err:
        open_sandbox(SandboxConfig())
    msg = str(err.value)
    assert "bubblewrap: the bwrap command is not installed" in msg
    assert "docker: the docker command is not installed" in msg
    assert "apt-get install bubblewrap" in msg


def test_a_bwrap_that_cannot_create_namespaces_is_reported(open_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # as bubblewrap answers on a kernel without unprivileged user namespaces
    fake_command(open_tmp / "bin", "bwrap", 'echo "bwrap: No permissions to creating new namespace, likely because '
                                            'the kernel does not allow non-privileged user namespaces" >&2; exit 1')
    monkeypatch.setenv("PATH", f"{open_tmp / 'bin'}")
    with pytest.raises(SandboxUnavailable) as err:
        open_sandbox(SandboxConfig(backend="bubblewrap"))
    msg = str(err.value)
    assert "bwrap is installed but cannot create a sandbox here" in msg and "user namespaces" in msg


def test_docker_run_command_line_isolates(tmp_path: Path) -> None:
    sb = docker_backend.Docker(SandboxConfig(docker_image="python:3.12-slim"))
    limits = Limits(memory_bytes=512 * 1024**2, max_processes=64, cpu_seconds=30, file_size_bytes=2**20, tmp_bytes=2**24,
                    shm_bytes=2**23)
    argv = sb.argv(["pytest", "-q"], container="heald-sbx-x", workdir=tmp_path, cwd=tmp_path,
                   env={"PIP_NO_INPUT": "1"}, limits=limits)
    joined = " ".join(argv)
    for flag in ("--network none", f"--memory {512 * 1024**2}", f"--memory-swap {512 * 1024**2}",
                 "--pids-limit 64", "--read-only", "--cap-drop ALL", "--security-opt no-new-privileges",
                 "--ulimit cpu=30:30", f"--ulimit fsize={2**20}:{2**20}", f"--shm-size {2**23}", "--rm"):
        assert flag in joined, flag
    assert f"{tmp_path}:{tmp_path}:rw" in argv and argv[-3:] == ["python:3.12-slim", "pytest", "-q"]
    envs = [argv[i + 1] for i, a in enumerate(argv) if a == "--env"]
    assert {e.split("=", 1)[0] for e in envs} == {"HOME", "TMPDIR", "LANG", "LC_ALL", "PATH", "PIP_NO_INPUT"}
    assert "bridge" not in joined and "host" not in argv  # no run ever gets a network


def test_cli_sandbox_check(tmp_path: Path, open_tmp: Path) -> None:
    from tests.conftest import run_heald

    env = {"HEALD_STATE_DIR": str(tmp_path / "state"), "HEALD_CONFIG": ""}
    ok = run_heald("sandbox", "check", "--json", env=env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["chosen"] == "bubblewrap" and report["problem"] is None
    limits = {s["name"]: s for s in report["run_limits"]}
    assert report["aggregate_limits"] == "auto" and set(limits) == {"cgroup", "disk"}
    if os.geteuid() == 0:  # this machine: cgroups v1 (hybrid), loop devices
        assert limits["cgroup"]["ok"] and limits["cgroup"]["detail"].startswith("cgroup v"), limits
        assert limits["disk"]["ok"] and "own ext4 filesystem of 4096 MiB" in limits["disk"]["detail"], limits
    else:
        assert not limits["cgroup"]["ok"] and "rlimits" in limits["cgroup"]["detail"], limits
    (open_tmp / "empty").mkdir()
    none = run_heald("sandbox", "check", env={**env, "PATH": str(open_tmp / "empty")}, cwd=tmp_path)
    assert none.returncode == 1 and "apt-get" in none.stdout and "install bubblewrap" in none.stdout
