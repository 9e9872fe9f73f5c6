"""``heald tokens`` and CLI approvals by an authenticated identity, as a user runs them."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
from pathlib import Path

from heald import correlate
from heald.auth import lookup_token
from heald.models import Role, Signal
from heald.store import Store
from tests.cli.test_cli import env_for
from tests.conftest import make_config, make_token, run_heald


def test_tokens_create_prints_the_token_once(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    r = run_heald("tokens", "create", "--role", "approver", "--name", "alice", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("heald_") and "\n" not in token
    assert "shown only this once" in r.stderr and "alice" in r.stderr
    store = Store(f"sqlite:///{tmp_path / 'state' / 'heald.db'}")
    record = lookup_token(store, token)
    assert record is not None and record.name == "alice" and record.role == Role.approver
    listing = run_heald("tokens", "list", "--json", env=env, cwd=tmp_path)
    [row] = json.loads(listing.stdout)
    assert row["name"] == "alice" and row["prefix"] == token[:12] and token not in listing.stdout
    js = run_heald("tokens", "create", "--role", "viewer", "--expires-in", "1h", "--json", env=env, cwd=tmp_path)
    created = json.loads(js.stdout)
    assert created["role"] == "viewer" and created["name"] == getpass.getuser() and created["expires_at"]
    revoke = run_heald("tokens", "revoke", str(row["id"]), env=env, cwd=tmp_path)
    assert revoke.returncode == 0 and lookup_token(store, token) is None
    human = run_heald("tokens", "list", env=env, cwd=tmp_path)
    assert "revoked" in human.stdout and "alice" in human.stdout
    store.close()


def test_tokens_create_refuses_bad_input(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    r = run_heald("tokens", "create", "--role", "root", env=env, cwd=tmp_path)
    assert r.returncode == 2 and "viewer" in r.stderr and "admin" in r.stderr
    r = run_heald("tokens", "create", "--role", "admin", "--expires-in", "soon", env=env, cwd=tmp_path)
    assert r.returncode == 2 and "--expires-in" in r.stderr and "1h30m" in r.stderr
    r = run_heald("tokens", "create", "--role", "admin", "--name", "has space", env=env, cwd=tmp_path)
    assert r.returncode == 2 and "--name" in r.stderr
    assert run_heald("tokens", "revoke", "99", env=env, cwd=tmp_path).returncode == 1


def test_cli_verdict_identity(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    store = Store(f"sqlite:///{tmp_path / 'state' / 'heald.db'}")
    store.migrate()
    with store.tx() as s:
        inc = correlate.ingest(s, Signal(source="t", service="a"), make_config(tmp_path)).incident_id
    viewer = make_token(store, "viewer", "vera")
    alice = make_token(store, "approver", "alice")
    r = run_heald("approve", str(inc), "--token", viewer, env=env, cwd=tmp_path)
    assert r.returncode == 3 and "vera has role viewer" in r.stderr
    r = run_heald("approve", str(inc), "--token", "heald_nope", env=env, cwd=tmp_path)
    assert r.returncode == 3 and "unknown, revoked or expired" in r.stderr
    r = run_heald("approve", str(inc), "--as", "somebody-else", env=env, cwd=tmp_path)
    assert r.returncode == 3 and "--as" in r.stderr
    # a good token gets as far as the incident's state (it is not awaiting approval)
    r = run_heald("approve", str(inc), env={**env, "HEALD_TOKEN": alice}, cwd=tmp_path)
    assert r.returncode == 1 and "not awaiting_approval" in r.stderr
    assert store.approvals_for(inc) == []
    store.close()


def test_cli_approval_by_token_counts_once_and_heals(tmp_path: Path) -> None:
    from heald.engine import Runtime
    from tests.conftest import wait_for
    from tests.engine.test_workflow import alert, sleeper_config

    rt = Runtime(sleeper_config(tmp_path, risk="high"), run_probes=False)
    rt.start()
    try:
        env = env_for(tmp_path)
        alice, bob = make_token(rt.store, "approver", "alice"), make_token(rt.store, "approver", "bob")
        inc = rt.ingest(alert()).incident_id
        wait_for(lambda: rt.store.get_incident(inc).state.value == "awaiting_approval", what="approval wait")
        first = run_heald("approve", str(inc), "--token", alice, "--json", env=env, cwd=tmp_path)
        again = run_heald("approve", str(inc), "--token", alice, "--json", env=env, cwd=tmp_path)
        assert json.loads(first.stdout)["counted"] and not json.loads(again.stdout)["counted"]
        assert json.loads(again.stdout)["approvals"] == 1 and json.loads(again.stdout)["required"] == 2
        assert rt.store.get_incident(inc).state.value == "awaiting_approval"
        human = run_heald("approve", str(inc), "--token", bob, env=env, cwd=tmp_path)
        assert "approved incident" in human.stdout and "as bob (2/2 approvals)" in human.stdout
        wait_for(lambda: rt.store.actions_for(inc), what="the action after two approvals")
        assert {e.actor for e in rt.store.audit_entries(incident_id=inc) if e.event == "approval.approve"} == \
            {"user:alice", "user:bob"}
    finally:
        rt.stop(stop_services=True)


def test_an_admin_cannot_mint_a_second_approver_from_the_cli(tmp_path: Path) -> None:
    """Issue 11 item 6 from the CLI on the database host: a second identity made with
    ``heald tokens create`` counts as the login that made it (``$USER``/``$LOGNAME`` do not
    change who that is); only ``--root`` vouches for a distinct human."""
    import pwd

    from heald.engine import Runtime
    from tests.conftest import wait_for
    from tests.engine.test_workflow import alert, sleeper_config

    login = pwd.getpwuid(os.getuid()).pw_name
    rt = Runtime(sleeper_config(tmp_path, risk="high"), run_probes=False)  # high risk: two approvals
    rt.start()
    try:
        env = {**env_for(tmp_path), "USER": "bob2", "LOGNAME": "bob2"}  # a claimed login is not a login

        def create(*args: str) -> dict:
            r = run_heald("tokens", "create", *args, "--json", env=env, cwd=tmp_path)
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)

        admin = create("--role", "admin")
        assert admin["name"] == login and admin["root_identity"] == login  # the bootstrap token: its own root
        bob2 = create("--role", "approver", "--name", "bob2")
        assert bob2["root_identity"] == login
        again = run_heald("tokens", "create", "--role", "approver", "--name", "bob2", "--root", env=env, cwd=tmp_path)
        assert again.returncode == 2 and f"--name: identity 'bob2' counts as '{login}'" in again.stderr
        inc = rt.ingest(alert()).incident_id
        wait_for(lambda: rt.store.get_incident(inc).state.value == "awaiting_approval", what="approval wait")

        def approve(*args: str) -> subprocess.CompletedProcess[str]:
            return run_heald("approve", str(inc), *args, env=env, cwd=tmp_path)

        first = approve("--token", admin["token"])
        assert f"as {login} (1/2 approvals)" in first.stdout, first.stderr
        second = approve("--token", bob2["token"])
        assert f"as bob2, counting as {login} (1/2 approvals)" in second.stdout, second.stderr
        third = approve()  # the login itself, no token: the same human again
        assert "it counts once" in third.stdout, third.stderr
        assert rt.store.get_incident(inc).state.value == "awaiting_approval" and rt.store.actions_for(inc) == []
        listing = run_heald("tokens", "list", env={**env, "COLUMNS": "200"}, cwd=tmp_path)
        assert f"bob2 ({login})" in listing.stdout
        dave = create("--role", "approver", "--name", "dave", "--root")  # vouched for: a distinct human
        assert dave["root_identity"] == "dave"
        fourth = approve("--token", dave["token"])
        assert "as dave (2/2 approvals)" in fourth.stdout, fourth.stderr
        wait_for(lambda: rt.store.actions_for(inc), what="the action after two humans approved")
    finally:
        rt.stop(stop_services=True)
