"""``heald serve`` (a real process) writes signed audit checkpoints periodically and a last one
when it is stopped with SIGTERM (issue 11 item 7)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from heald.store import Store
from heald.store.checkpoints import load_verify_key, verify_with_checkpoints
from tests.conftest import free_port, heald_cmd, wait_for


def lines(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_heald_serve_checkpoints_periodically_and_at_sigterm(tmp_path: Path) -> None:
    cfg = tmp_path / "heald.yaml"
    cfg.write_text("state_dir: state\naudit:\n  checkpoint_interval_seconds: 0.5\n  checkpoint_file: anchor/cp.jsonl\n"
                   "  key_file: anchor/signing.key\n")
    cp_file, key_file = tmp_path / "anchor" / "cp.jsonl", tmp_path / "anchor" / "signing.key"
    proc = subprocess.Popen(heald_cmd("--config", str(cfg), "serve", "--port", str(free_port())),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, umask=0o022,
                            env={k: v for k, v in os.environ.items() if not k.startswith("HEALD_")})
    store = None
    try:
        wait_for(lambda: lines(cp_file) or proc.poll() is not None, timeout=60, what="the first periodic checkpoint")
        assert proc.poll() is None, proc.communicate()[1]
        store = Store(f"sqlite:///{tmp_path / 'state' / 'heald.db'}")
        entry = store.record(actor="test", event="test.event", reason="written while heald serves")
        wait_for(lambda: any(c["seq"] >= entry.seq for c in lines(cp_file)), timeout=30, what="a periodic checkpoint of it")
        later = store.record(actor="test", event="test.event", reason="just before SIGTERM")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        assert lines(cp_file)[-1]["seq"] >= later.seq and lines(cp_file)[-1]["seq"] == store.last_audit_seq()
        assert [c["n"] for c in lines(cp_file)] == list(range(1, len(lines(cp_file)) + 1))
        assert verify_with_checkpoints(store, cp_file, load_verify_key(key_file)).intact
        assert (cp_file.stat().st_mode & 0o777, key_file.stat().st_mode & 0o777) == (0o600, 0o600)
        assert (cp_file.parent.stat().st_mode & 0o777) == 0o700
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if store is not None:
            store.close()
