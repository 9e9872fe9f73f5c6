"""Issue 11, item 1: repository code never runs with a network that reaches the host.

The attack, as it was performed: a repository under healing ships an in-tree PEP 517 build
backend (``build-backend = "backend"``, ``backend-path = ["."]``) and a ``setup.py``; both run
during the install phase's ``pip install -e .``. The setup code also plants a ``.pth`` file in
the work tree's virtual environment, so the same probe runs in every later Python of that
environment — ``add_dependency``'s ``pip install`` included. Each probe tries to connect to a TCP
listener the test opens on 127.0.0.1, to heald's PostgreSQL port, to an abstract unix socket the
test opens, to read a file the test made in a host temp directory and to list ``/root``, and
records what it could do in the work tree. heald must still heal the project (the missing
dependency is declared), while every attempt fails.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ci.repos import CALC, TESTS, bare_remote, commit, culprit_case, sh
from tests.ci.test_heal_ci import heal

pytestmark = pytest.mark.slow

PROBE = r'''"""Tries to reach the host from wherever it runs; writes what it could do."""
import json, os, socket

HERE = os.path.dirname(os.path.abspath(__file__))


def run(who):
    with open(os.path.join(HERE, "probe-targets.json")) as f:
        targets = json.load(f)
    found = {"who": who, "pid": os.getpid()}
    for key, port in (("tcp", targets["tcp_port"]), ("postgres", 5432)):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=3)
            s.sendall(("hello from " + who).encode())
            s.close()
            found[key] = "connected"
        except OSError as exc:
            found[key] = "failed: %s" % exc
    try:
        u = socket.socket(socket.AF_UNIX)
        u.settimeout(3)
        u.connect("\0" + targets["abstract"])
        u.sendall(("hello from " + who).encode())
        u.close()
        found["abstract"] = "connected"
    except OSError as exc:
        found["abstract"] = "failed: %s" % exc
    try:
        with open(targets["host_file"]) as f:
            found["host_file"] = "read: " + f.read(100)
    except OSError as exc:
        found["host_file"] = "failed: %s" % exc
    try:
        found["root"] = "listed: %s" % sorted(os.listdir("/root"))[:5]
    except OSError as exc:
        found["root"] = "failed: %s" % exc
    found["interfaces"] = [name for _, name in socket.if_nameindex()]
    with open(os.path.join(HERE, "probe-%s-%d.json" % (who, os.getpid())), "w") as f:
        json.dump(found, f)
'''

BACKEND = '''"""An in-tree build backend: setuptools' own, after a probe."""
import probe

probe.run("backend")

from setuptools.build_meta import *  # noqa: E402,F401,F403
'''

SETUP = '''import os, site, sysconfig

import probe

probe.run("setup")
# persist: every Python of the work tree's environment runs the probe from now on
venv = os.environ.get("VIRTUAL_ENV") or os.path.join(probe.HERE, ".heald", "venv")  # beside the tree
for purelib in __import__("glob").glob(os.path.join(venv, "lib", "python*", "site-packages")):
    with open(os.path.join(purelib, "zz_probe.pth"), "w") as f:
        f.write("import sys; sys.path.insert(0, %r); import probe; probe.run('venv')\\n" % probe.HERE)

from setuptools import setup  # noqa: E402

setup()
'''

PYPROJECT = """[build-system]
requires = ["setuptools>=61"]
build-backend = "backend"
backend-path = ["."]

[project]
name = "calc"
version = "0.1.0"
requires-python = ">=3.9"
dependencies = [{deps}]

[tool.setuptools]
py-modules = ["calc"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""


class Listeners:
    """A TCP listener on 127.0.0.1 and an abstract unix socket, recording every connection."""

    def __init__(self) -> None:
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.abstract_name = f"heald-test-{uuid.uuid4().hex}"
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind("\0" + self.abstract_name)
        self.unix.listen(16)
        self.connections: list[tuple[str, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.tcp.getsockname()[1])

    def _accept(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.tcp, self.unix], [], [], 0.2)
            for s in ready:
                conn, _ = s.accept()
                conn.settimeout(2)
                try:
                    data = conn.recv(200)
                except OSError:
                    data = b""
                self.connections.append(("tcp" if s is self.tcp else "abstract", data))
                conn.close()

    def close(self) -> list[tuple[str, bytes]]:
        """Stop, after taking any connection still waiting in a backlog (bounded wait)."""
        if self._stop.is_set():
            return self.connections
        ready, _, _ = select.select([self.tcp, self.unix], [], [], 0.5)
        for s in ready:
            conn, _ = s.accept()
            self.connections.append(("tcp" if s is self.tcp else "abstract", b"(backlog)"))
            conn.close()
        self._stop.set()
        self._thread.join(timeout=5)
        self.tcp.close()
        self.unix.close()
        return self.connections


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    ls = Listeners()
    yield ls
    ls.close()


def hostile_repo(path: Path, targets: dict[str, object]) -> Path:
    """A calculator project with the probing backend and setup.py; its code imports six, which a
    later commit drops from the dependencies (so heald's add_dependency runs pip too)."""
    path.mkdir(parents=True)
    sh("git", "init", "-q", "-b", "main", cwd=path)
    calc = CALC.replace('"""A tiny calculator."""\n', '"""A tiny calculator."""\nimport six\n')
    common = {"probe.py": PROBE, "backend.py": BACKEND, "setup.py": SETUP, "calc.py": calc,
              "tests/test_calc.py": TESTS, "probe-targets.json": json.dumps(targets)}
    commit(path, "Start the calculator", {**common, "pyproject.toml": PYPROJECT.format(deps='"six>=1.10"')})
    commit(path, "Trim dependencies", {"pyproject.toml": PYPROJECT.format(deps="")})
    return path


def test_repository_code_in_the_install_phase_reaches_nothing_on_the_host(open_tmp: Path, heald_yaml,
                                                                          listeners: Listeners) -> None:
    secret = open_tmp / "host-secret.txt"
    secret.write_text("the host's secret\n")
    secret.chmod(0o644)  # only the sandbox's walls may keep it out
    targets = {"tcp_port": listeners.port, "abstract": listeners.abstract_name, "host_file": str(secret)}
    repo = hostile_repo(open_tmp / "calc", targets)
    remote = bare_remote(repo, open_tmp / "calc.git")

    code, d, err = heal(heald_yaml(), remote, "--bad", "main", token=False)

    connections = listeners.close()
    assert connections == [], f"repository code reached the host: {connections}"
    # the project still heals: installed (its backend ran), reproduced, the dependency declared
    # again, the fix installed and validated in the sandbox
    assert code == 0, (d.get("reason"), d.get("summary"), err[-3000:])
    assert d["verdict"] == "missing_dependency" and d["remedy"] == "add_dependency", d
    assert 'dependencies = ["six>=1.' in sh("git", f"--git-dir={remote}", "show", f"{d['fix_sha']}:pyproject.toml",
                                            cwd=open_tmp)
    reports = [json.loads(p.read_text()) for p in (open_tmp / "ci").rglob("probe-*-*.json")]
    by_who = {r["who"] for r in reports}
    assert {"backend", "setup", "venv"} <= by_who, f"the probes did not all run: {sorted(by_who)}"
    for r in reports:
        for key in ("tcp", "postgres", "abstract", "host_file", "root"):
            assert r[key].startswith("failed: "), f"{r['who']} could {key}: {r[key]}"
        assert r["interfaces"] == ["lo"], r


def test_a_configured_install_command_still_gets_its_packages(open_tmp: Path, heald_yaml, fake_github) -> None:
    """``ci.repos.<repo>.install_command`` runs in the same no-network sandbox and still installs
    from the package index (through heald's proxy); the regression is then found as before."""
    repo, culprit = culprit_case(open_tmp / "calc")
    remote = bare_remote(repo, open_tmp / "calc.git")
    gh = fake_github({"octo/calc": remote})
    install = "python -m pip install --quiet -e . pytest six && python -c 'import six, pytest'"
    config = heald_yaml(ci={"github": {"api_url": gh.url}, "repos": {"octo/calc": {"install_command": install}}})
    code, d, err = heal(config, remote, "--bad", "main", "--github-repo", "octo/calc")
    assert code == 0, (d.get("reason"), d.get("summary"), err[-3000:])
    assert d["verdict"] == "regression" and d["culprit"]["sha"] == culprit
    [create] = [r for r in gh.requests if r["method"] == "POST"]
    body = json.loads(create["body"])["body"]
    assert "(package index only)" in body  # the install steps, custom command included
    assert "(network)" not in body
