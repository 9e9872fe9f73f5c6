"""A running heald writes signed audit checkpoints periodically and at shutdown, and sends
each to the webhook channels ``audit.notify_channels`` names (issue 11 item 7)."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from heald.config import ConfigError, load_config
from heald.store.checkpoints import check_signature, load_verify_key, parse_line, verify_configured
from tests.conftest import make_config, wait_for
from tests.notify.conftest import Receiver

SECRET = "0123456789abcdef-secret"


def checkpoints(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_runtime_writes_checkpoints_periodically_and_at_shutdown(tmp_path: Path, start_runtime) -> None:  # type: ignore[no-untyped-def]
    receiver = Receiver()
    try:
        cfg = make_config(tmp_path, audit={"checkpoint_interval_seconds": 0.2, "notify_channels": ["anchor"]},
                          notifications={"channels": [{"type": "webhook", "name": "anchor", "url": receiver.url,
                                                       "secret": SECRET, "events": ["escalated"]}]})
        rt = start_runtime(cfg, manage_services=False, run_probes=False, tail_logs=False)
        cp_file = cfg.audit_checkpoint_file
        assert cp_file == cfg.state_dir / "audit-checkpoints.jsonl"
        first = wait_for(lambda: checkpoints(cp_file), what="the first periodic checkpoint")[0]
        assert first["n"] == 1 and first["seq"] == rt.store.last_audit_seq()  # heald.started is covered
        rt.store.record(actor="test", event="test.event", reason="after the first checkpoint")
        wait_for(lambda: len(checkpoints(cp_file)) == 2, what="a checkpoint of the new entry")
        assert checkpoints(cp_file)[1]["seq"] == first["seq"] + 1

        rt.stop()

        public = load_verify_key(cfg.audit_key_file)
        for i, line in enumerate(cp_file.read_text().splitlines(), 1):
            assert check_signature(parse_line(line, f"line {i}"), public)
        assert verify_configured(rt.store, cp_file, cfg.audit_key_file).intact

        sent = wait_for(lambda: len(receiver.requests) >= len(checkpoints(cp_file)) and receiver.requests,
                        what="each checkpoint at the webhook")
        assert [r.json()["checkpoint"] for r in sent] == checkpoints(cp_file)
        for r in sent:
            assert r.headers["x-heald-event"] == "audit.checkpoint"
            assert r.headers["x-heald-signature-256"] == "sha256=" + hmac.new(SECRET.encode(), r.body, hashlib.sha256).hexdigest()
    finally:
        receiver.close()


def test_shutdown_writes_a_last_checkpoint(tmp_path: Path, start_runtime) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config(tmp_path, audit={"checkpoint_interval_seconds": 3600})
    rt = start_runtime(cfg, manage_services=False, run_probes=False, tail_logs=False)
    rt.store.record(actor="test", event="test.event", reason="just before shutdown")
    last_seq = rt.store.last_audit_seq()
    assert checkpoints(cfg.audit_checkpoint_file) == []  # the first period is an hour away
    rt.stop()
    [cp] = checkpoints(cfg.audit_checkpoint_file)
    assert cp["n"] == 1 and cp["seq"] == last_seq


def test_checkpoints_can_be_turned_off(tmp_path: Path, start_runtime) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config(tmp_path, audit={"checkpoints": False})
    rt = start_runtime(cfg, manage_services=False, run_probes=False, tail_logs=False)
    rt.stop()
    assert not cfg.audit_checkpoint_file.exists() and not cfg.audit_key_file.exists()


def test_audit_configuration_errors_name_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "heald.yaml"
    cfg.write_text("audit:\n  notify_channels: [nowhere]\n")
    with pytest.raises(ConfigError, match="audit.notify_channels: 'nowhere' is not a channel"):
        load_config(cfg)
    cfg.write_text("notifications:\n  channels:\n    - {type: slack, name: chat, url: 'http://127.0.0.1:9/x'}\n"
                   "audit:\n  notify_channels: [chat]\n")
    with pytest.raises(ConfigError, match="'chat' is a slack channel; expected a webhook channel"):
        load_config(cfg)
    cfg.write_text("audit:\n  checkpoint_interval_seconds: 0\n")
    with pytest.raises(ConfigError, match="checkpoint_interval_seconds"):
        load_config(cfg)


def test_a_readable_key_file_stops_heald_at_start(tmp_path: Path, start_runtime) -> None:  # type: ignore[no-untyped-def]
    from heald.store.checkpoints import CheckpointError

    key = tmp_path / "audit.key"
    cfg = make_config(tmp_path, audit={"key_file": str(key)})
    rt = start_runtime(cfg, manage_services=False, run_probes=False, tail_logs=False)
    rt.stop()
    key.chmod(0o644)
    with pytest.raises(CheckpointError, match="mode 0644"):
        start_runtime(cfg, manage_services=False, run_probes=False, tail_logs=False)


def test_api_audit_verify_compares_the_chain_with_the_checkpoints(tmp_path: Path, start_runtime) -> None:  # type: ignore[no-untyped-def]
    """GET /v1/audit/verify over real HTTP: intact with the checkpoints; after the attacker with
    the whole database rewrites entry 1 and recomputes every hash, the checkpoints catch it."""
    import sqlalchemy as sa

    from heald.store.audit import GENESIS, entry_hash
    from heald.store.tables import AuditRow
    from tests.conftest import serving

    cfg = make_config(tmp_path, audit={"checkpoint_interval_seconds": 3600})
    rt = start_runtime(cfg, manage_services=False, run_probes=False, tail_logs=False)
    with serving(rt, role="viewer") as client:
        rt.checkpointer.checkpoint()
        ok = client.get("/v1/audit/verify")
        assert ok.status_code == 200 and ok.json()["intact"] is True and ok.json()["checkpoints"] == 1

        table = AuditRow.__table__
        with rt.store.engine.begin() as conn:
            for name in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'").scalars().all():
                conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
            prev = GENESIS
            for r in conn.execute(sa.select(table).order_by(table.c.seq)).mappings().all():
                reason = "heald never started" if r["seq"] == 1 else r["reason"]
                prev_row, prev = prev, entry_hash(r["seq"], r["ts"].isoformat(), r["actor"], r["event"],
                                                  r["incident_id"], reason, r["details"], prev)
                conn.execute(sa.update(table).where(table.c.seq == r["seq"]).values(reason=reason, prev_hash=prev_row,
                                                                                    hash=prev))
            conn.execute(sa.text("UPDATE audit_head SET hash = :h"), {"h": prev})
        assert rt.store.verify_audit().intact  # the chain alone is fooled
        bad = client.get("/v1/audit/verify")
        assert bad.status_code == 200
        assert bad.json()["intact"] is False and bad.json()["first_bad_seq"] == 1 and "rewritten" in bad.json()["problem"]
