"""``heald audit checkpoint|verify|public-key|list|export`` as real processes (issue 11 item 7)."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from heald.store import Store
from heald.store.audit import GENESIS, entry_hash
from heald.store.db import normalize_url
from heald.store.tables import AuditRow
from tests.conftest import run_heald


def env_for(tmp_path: Path, url: str) -> dict[str, str]:
    return {"HEALD_DATABASE_URL": url, "HEALD_STATE_DIR": str(tmp_path / "state")}


def rewrite_everything(url: str) -> None:
    """The attacker with the whole database: drop every trigger on the audit tables, rewrite
    entry 2 and recompute every hash and the head."""
    engine = sa.create_engine(normalize_url(url))
    table = AuditRow.__table__
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            for name in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'").scalars().all():
                conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
        else:
            for name, rel in conn.exec_driver_sql(
                    "SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                    "WHERE NOT t.tgisinternal AND c.relname IN ('audit_log', 'audit_head')").all():
                conn.exec_driver_sql(f'DROP TRIGGER "{name}" ON {rel}')
        prev = GENESIS
        for r in conn.execute(sa.select(table).order_by(table.c.seq)).mappings().all():
            reason = "nothing happened" if r["seq"] == 2 else r["reason"]
            digest = entry_hash(r["seq"], r["ts"].isoformat(), r["actor"], r["event"], r["incident_id"], reason,
                                r["details"], prev)
            conn.execute(sa.update(table).where(table.c.seq == r["seq"]).values(reason=reason, prev_hash=prev, hash=digest))
            prev, last = digest, r["seq"]
        conn.exec_driver_sql(f"UPDATE audit_head SET seq = {last}, hash = '{prev}'")
    engine.dispose()


def test_cli_checkpoint_then_verify_catches_a_full_rewrite(tmp_path: Path, db_url: str) -> None:
    env = env_for(tmp_path, db_url)
    store = Store(db_url)
    store.migrate()
    for i in range(4):
        store.record(actor="test", event="test.event", reason=f"entry {i + 1}")
    store.close()

    made = run_heald("audit", "checkpoint", "--json", env=env)
    assert made.returncode == 0, made.stderr
    cp = json.loads(made.stdout)["checkpoint"]
    assert cp["n"] == 1 and cp["seq"] == 4
    again = run_heald("audit", "checkpoint", env=env)
    assert again.returncode == 0 and "nothing new to sign" in again.stdout

    key = run_heald("audit", "public-key", env=env)
    assert key.returncode == 0 and key.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    (tmp_path / "public.pem").write_text(key.stdout)

    ok = run_heald("audit", "verify", env=env)
    assert ok.returncode == 0 and "4 entries, 1 signed checkpoints match" in ok.stdout

    rewrite_everything(db_url)
    alone = run_heald("audit", "verify", "--no-checkpoints", "--json", env=env)
    assert alone.returncode == 0 and json.loads(alone.stdout)["intact"] is True  # the chain alone is fooled
    caught = run_heald("audit", "verify", "--json", env=env)
    assert caught.returncode == 1
    report = json.loads(caught.stdout)
    assert report["intact"] is False and report["first_bad_seq"] == 1 and "rewritten" in report["problem"]
    apart = run_heald("audit", "verify", "--checkpoints", str(tmp_path / "state" / "audit-checkpoints.jsonl"),
                      "--key", str(tmp_path / "public.pem"), env=env)
    assert apart.returncode == 1 and "audit chain broken at entry 1" in apart.stdout and "checkpoint 1" in apart.stdout

    refused = run_heald("audit", "checkpoint", env=env)
    assert refused.returncode == 1 and "not signed" in refused.stderr


def test_cli_verify_names_a_bad_checkpoint_option(tmp_path: Path) -> None:
    env = env_for(tmp_path, f"sqlite:///{tmp_path / 'heald.db'}")
    missing = run_heald("audit", "verify", "--checkpoints", str(tmp_path / "nope.jsonl"), env=env)
    assert missing.returncode == 2 and "--checkpoints" in missing.stderr and "does not exist" in missing.stderr
    (tmp_path / "cp.jsonl").write_text("")
    (tmp_path / "bad.pem").write_text("not a key")
    bad_key = run_heald("audit", "verify", "--checkpoints", str(tmp_path / "cp.jsonl"), "--key", str(tmp_path / "bad.pem"),
                        env=env)
    assert bad_key.returncode == 2 and "--key" in bad_key.stderr and "not a PEM" in bad_key.stderr
    no_key = run_heald("audit", "public-key", env=env)
    assert no_key.returncode == 2 and "key_file" in no_key.stderr and "does not exist" in no_key.stderr


def test_cli_audit_list_filters_and_export_verifies_elsewhere(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'heald.db'}"
    env = env_for(tmp_path, url)
    store = Store(url)
    store.migrate()
    store.record(actor="user:alice", event="approval.approve", incident_id=7, reason="looks right")
    store.record(actor="user:bob", event="approval.reject", incident_id=8, reason="no")
    store.record(actor="heald", event="approvals.summary", incident_id=7, reason="not an approval event")
    for i in range(5):
        store.record(actor="heald", event="test.event", reason=f"filler {i}")
    store.close()

    by_event = run_heald("audit", "list", "--event", "approval", "--json", env=env)
    assert by_event.returncode == 0, by_event.stderr
    assert [(e["seq"], e["actor"]) for e in json.loads(by_event.stdout)] == [(2, "user:bob"), (1, "user:alice")]
    by_incident = run_heald("audit", "list", "--incident", "7", "--json", env=env)
    assert [e["seq"] for e in json.loads(by_incident.stdout)] == [3, 1]
    by_actor = run_heald("audit", "list", "--actor", "heald", "--limit", "2", "--before", "8", "--json", env=env)
    assert [e["seq"] for e in json.loads(by_actor.stdout)] == [7, 6]
    table = run_heald("audit", "list", "--actor", "user:alice", env={**env, "COLUMNS": "200"})
    assert table.returncode == 0 and "approval.approve" in table.stdout and "looks right" in table.stdout
    assert "approval.reject" not in table.stdout
    bad = run_heald("audit", "list", "--limit", "0", env=env)
    assert bad.returncode == 2 and "--limit" in bad.stderr
    huge = run_heald("audit", "list", "--incident", str(2**64), env=env)
    assert huge.returncode == 2 and "--incident" in huge.stderr

    exported = run_heald("audit", "export", "--json", "--batch", "3", env=env)
    assert exported.returncode == 0, exported.stderr
    entries = json.loads(exported.stdout)
    assert [e["seq"] for e in entries] == list(range(1, 9))
    prev = GENESIS  # the export carries all a verifier needs: recompute the chain from it
    for e in entries:
        from datetime import datetime

        ts = datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).isoformat()
        assert e["prev_hash"] == prev
        assert entry_hash(e["seq"], ts, e["actor"], e["event"], e["incident_id"], e["reason"], e["details"], prev) == e["hash"]
        prev = e["hash"]


def test_cli_export_of_an_empty_log_is_an_empty_array(tmp_path: Path) -> None:
    env = env_for(tmp_path, f"sqlite:///{tmp_path / 'heald.db'}")
    done = run_heald("audit", "export", env=env)
    assert done.returncode == 0 and json.loads(done.stdout) == []
