"""Circuit breakers over the API (roles enforced) and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from heald.budgets import record_verification
from heald.store import Store
from tests.api.conftest import api_config, serve
from tests.cli.test_cli import env_for
from tests.conftest import bearer, make_token, run_heald
from tests.policy.test_budgets import incident


def test_breakers_api_roles_and_reset(tmp_path: Path) -> None:
    with serve(api_config(tmp_path), token_role="operator") as (client, rt):
        inc = incident(rt.store)
        for _ in range(3):
            record_verification(rt.store, "service:svc", False, inc, 3, "still down")
        base = str(client.base_url)
        body = {"target": "service:svc", "comment": "disk replaced"}
        anonymous = httpx.post(f"{base}/v1/breakers/reset", json=body)
        assert anonymous.status_code == 401 and "authentication required" in anonymous.json()["detail"]
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        viewer = bearer(make_token(rt.store, "viewer", "vic"))
        forbidden = httpx.post(f"{base}/v1/breakers/reset", json=body, headers=viewer)
        assert forbidden.status_code == 403 and "needs role operator" in forbidden.json()["detail"]
        listed = httpx.get(f"{base}/v1/breakers", headers=viewer).json()
        assert listed[0]["state"] == "open" and listed[0]["failures"] == 3  # viewers may read
        assert httpx.get(f"{base}/v1/breakers").status_code == 401
        bad = client.post("/v1/breakers/reset", json={"comment": "no target"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "target"]
        unknown = client.post("/v1/breakers/reset", json={"target": "service:nope"})
        assert unknown.status_code == 404 and "service:nope" in unknown.json()["detail"]
        done = client.post("/v1/breakers/reset", json=body)
        assert done.status_code == 200 and done.json()["state"] == "closed" and done.json()["reset_by"] == "user:root"
        [entry] = [e for e in rt.store.audit_entries() if e.event == "breaker.reset"]
        assert entry.actor == "user:root" and "disk replaced" in entry.reason
        assert client.get("/v1/leases").status_code == 200


def test_breakers_cli(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    store = Store(f"sqlite:///{tmp_path / 'state' / 'heald.db'}")
    store.migrate()
    inc = incident(store)
    for _ in range(2):
        record_verification(store, "service:shop", False, inc, 2, "still failing")
    store.close()
    listing = run_heald("breakers", "list", env=env, cwd=tmp_path)
    assert listing.returncode == 0 and "service:shop" in listing.stdout and "open" in listing.stdout
    missing = run_heald("breakers", "reset", "service:nope", env=env, cwd=tmp_path)
    assert missing.returncode == 1 and "no circuit breaker for 'service:nope'" in missing.stderr
    reset = run_heald("breakers", "reset", "service:shop", "--comment", "fixed", env=env, cwd=tmp_path)
    assert reset.returncode == 0, reset.stderr
    [row] = json.loads(run_heald("breakers", "list", "--json", env=env, cwd=tmp_path).stdout)
    assert row["state"] == "closed" and row["reset_by"].startswith("cli:")
