"""Authentication and authorization over real HTTP: tokens with roles stored hashed, 401/403 on
every mutating endpoint, per-source webhook secrets and signatures, auth off for development."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Iterator, Mapping
from datetime import timedelta

import pytest
import sqlalchemy as sa
from fastapi.routing import APIRoute
from starlette.routing import Route

from heald.api.app import create_app
from heald.models import Signal, utcnow
from heald.sources import WEBHOOK_SOURCES, WebhookSource, register_source
from heald.store.tables import ApiTokenRow
from tests.api.test_api import SIGNAL
from tests.conftest import bearer, make_token, wait_for

SECRET = "s3cret-s3cret-s3cret"


def all_routes(routes, prefix: str = ""):  # type: ignore[no-untyped-def]
    """(method, path) of every HTTP route, also inside included routers (FastAPI ≥ 0.13x keeps
    those as ``_IncludedRouter`` entries that point at the original router)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from all_routes(inner.routes, prefix + getattr(route.include_context, "prefix", ""))
        elif isinstance(route, (APIRoute, Route)):
            for method in route.methods or ():
                yield method, prefix + route.path


def mutating_routes(rt) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(method, path) of every API route that is not a read, with ids filled in. The
    dashboard's forms (outside ``/v1``) sign in by cookie and CSRF token instead; see
    tests/ui/test_http.py."""
    found = set()
    for method, path in all_routes(create_app(rt).routes):
        if method in ("GET", "HEAD", "OPTIONS") or not path.startswith("/v1/"):
            continue
        path = path.replace("{source}", "generic").replace("{target}", "service:svc")
        path = re.sub(r"\{[a-z_]*id\}", "1", path)
        found.add((method, path))
    return sorted(found)


def test_every_mutating_endpoint_refuses_anonymous_and_underprivileged(api) -> None:
    client, rt = api
    routes = mutating_routes(rt)
    assert ("POST", "/v1/signals") in routes and ("POST", "/v1/incidents/1/approve") in routes
    viewer = bearer(make_token(rt.store, "viewer", "vera"))
    for method, path in routes:
        anonymous = client.request(method, path, json={}, headers={"Authorization": ""})
        assert anonymous.status_code == 401, (method, path, anonymous.text)
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        under = client.request(method, path, json={}, headers=viewer)
        assert under.status_code == 403, (method, path, under.text)
        assert "vera has role viewer" in under.json()["detail"]
    assert rt.store.count_signals_by_source() == {}


def test_no_endpoint_deletes_history(api) -> None:
    client, rt = api
    methods = {m for m, _ in all_routes(create_app(rt).routes)}
    assert "POST" in methods
    assert "DELETE" not in methods and "PUT" not in methods


def test_roles_nest_and_reads_need_a_viewer(api) -> None:
    client, rt = api
    operator = bearer(make_token(rt.store, "operator", "otto"))
    viewer = bearer(make_token(rt.store, "viewer", "vera"))
    assert client.post("/v1/signals", json=SIGNAL, headers=operator).status_code == 202
    inc = wait_for(lambda: rt.store.list_incidents(), what="incident")[0]
    assert client.get("/v1/incidents", headers=viewer).status_code == 200
    assert client.get(f"/v1/incidents/{inc.id}", headers=operator).status_code == 200
    assert client.get("/v1/incidents", headers={"Authorization": ""}).status_code == 401
    assert client.get("/v1/audit/verify", headers={"Authorization": ""}).status_code == 401
    # health and metrics stay open for load balancers and Prometheus
    assert client.get("/healthz", headers={"Authorization": ""}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": ""}).status_code == 200
    # an operator may not approve, an approver may also send signals, only an admin manages tokens
    wait_for(lambda: rt.store.get_incident(inc.id).state.value == "awaiting_approval", what="approval wait")
    assert client.post(f"/v1/incidents/{inc.id}/approve", json={}, headers=operator).status_code == 403
    approver = bearer(make_token(rt.store, "approver", "alice"))
    assert client.post("/v1/signals", json={**SIGNAL, "summary": "again"}, headers=approver).status_code == 202
    assert client.get("/v1/tokens", headers=approver).status_code == 403
    assert client.get("/v1/tokens").status_code == 200


def test_tokens_are_stored_hashed_revocable_and_expire(api) -> None:
    client, rt = api
    created = client.post("/v1/tokens", json={"name": "ci-bot", "role": "operator"})
    assert created.status_code == 201
    token = created.json()["token"]
    assert token.startswith("heald_") and len(token) > 40
    with rt.store.tx() as s:
        rows = s.scalars(sa.select(ApiTokenRow)).all()
    stored = json.dumps([{c.name: str(getattr(r, c.name)) for c in ApiTokenRow.__table__.columns} for r in rows])
    assert token not in stored and hashlib.sha256(token.encode()).hexdigest() in stored
    assert "token" not in client.get("/v1/tokens").json()[-1]
    assert client.post("/v1/signals", json=SIGNAL, headers=bearer(token)).status_code == 202
    revoked = client.post(f"/v1/tokens/{created.json()['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    again = client.post("/v1/signals", json=SIGNAL, headers=bearer(token))
    assert again.status_code == 401 and "revoked" in again.json()["detail"]
    assert client.post("/v1/signals", json=SIGNAL, headers=bearer("heald_made-up")).status_code == 401
    from heald.auth import hash_token

    expired = "heald_expired-token-for-the-test"
    rt.store.add_token(name="old", role=__import__("heald.models").models.Role.admin, token_hash=hash_token(expired),
                       prefix=expired[:12], created_by="test", sponsor=None, expires_at=utcnow() - timedelta(seconds=1))
    assert client.get("/v1/incidents", headers=bearer(expired)).status_code == 401
    bad = client.post("/v1/tokens", json={"name": "bad name!", "role": "viewer"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "name"]
    assert client.post("/v1/tokens", json={"name": "x", "role": "superuser"}).status_code == 422
    events = [e.event for e in rt.store.audit_entries()]
    assert "token.created" in events and "token.revoked" in events


def test_two_tokens_of_one_identity_count_once(api_server) -> None:
    client, rt = api_server(policy={"approvals_by_risk": {"medium": 2}})
    first, second = bearer(make_token(rt.store, "approver", "alice")), bearer(make_token(rt.store, "approver", "alice"))
    inc = client.post("/v1/signals", json=SIGNAL).json()["incident_id"]
    wait_for(lambda: rt.store.get_incident(inc).state.value == "awaiting_approval", what="approval wait")
    one = client.post(f"/v1/incidents/{inc}/approve", json={}, headers=first).json()
    two = client.post(f"/v1/incidents/{inc}/approve", json={}, headers=second).json()
    three = client.post(f"/v1/incidents/{inc}/approve", json={}, headers=first).json()
    assert one["counted"] and not two["counted"] and not three["counted"]
    assert three["approvals"] == 1 and three["required"] == 2
    assert rt.store.get_incident(inc).state.value == "awaiting_approval"
    assert rt.store.actions_for(inc) == []


def test_an_admin_cannot_mint_a_second_approver(api_server) -> None:
    """Issue 11 item 6, the attack as performed: an admin creates a second token with another
    name over the API and approves as both; a two-approval rule must stay unsatisfied."""
    client, rt = api_server(policy={"approvals_by_risk": {"medium": 2}})
    alice = bearer(make_token(rt.store, "admin", "alice"))  # a root identity (made on the database host)
    minted = client.post("/v1/tokens", json={"name": "bob2", "role": "approver"}, headers=alice)
    assert minted.status_code == 201
    bob2 = bearer(minted.json()["token"])
    # a chain does not launder it: alice mints an admin, who mints an approver
    mallory2 = bearer(client.post("/v1/tokens", json={"name": "mallory2", "role": "admin"}, headers=alice).json()["token"])
    dan2 = bearer(client.post("/v1/tokens", json={"name": "dan2", "role": "approver"}, headers=mallory2).json()["token"])
    inc = client.post("/v1/signals", json=SIGNAL).json()["incident_id"]
    wait_for(lambda: rt.store.get_incident(inc).state.value == "awaiting_approval", what="approval wait")
    votes = [client.post(f"/v1/incidents/{inc}/approve", json={}, headers=h).json() for h in (alice, bob2, dan2)]
    assert [v["counted"] for v in votes] == [True, True, True]  # each identity's verdict is recorded …
    assert [v["approvals"] for v in votes] == [1, 1, 1] and votes[-1]["required"] == 2  # … as one human
    assert [v["counts_as"] for v in votes] == ["alice", "alice", "alice"]
    assert rt.store.get_incident(inc).state.value == "awaiting_approval" and rt.store.actions_for(inc) == []
    listed = {t["name"]: t["root_identity"] for t in client.get("/v1/tokens").json()}
    assert listed["bob2"] == listed["mallory2"] == listed["dan2"] == "alice" and listed["alice"] == "alice"
    audit = {e.actor: e.details for e in rt.store.audit_entries(incident_id=inc) if e.event == "approval.approve"}
    assert audit["user:bob2"]["counts_as"] == "alice" and "counts_as" not in audit["user:alice"]
    # nor can an admin take over someone else's identity by minting a token with its name
    dave = bearer(make_token(rt.store, "approver", "dave"))  # another root: a distinct human
    for name in ("dave", "root"):
        taken = client.post("/v1/tokens", json={"name": name, "role": "approver"}, headers=alice)
        assert taken.status_code == 409, taken.text
        assert taken.json()["detail"][0]["loc"] == ["body", "name"] and f"counts as '{name}'" in taken.text
    # alice may make herself another token: it is still alice
    assert client.post("/v1/tokens", json={"name": "alice", "role": "approver"}, headers=alice).status_code == 201
    last = client.post(f"/v1/incidents/{inc}/approve", json={}, headers=dave).json()
    assert last["approvals"] == 2 and last["counts_as"] == "dave"  # a genuinely distinct human
    wait_for(lambda: rt.store.actions_for(inc), what="the action after two humans approved")


class SignedSource:
    """A source that signs its body like GitHub: ``X-Hub-Signature-256: sha256=<hmac hex>``."""

    name = "signed-test"

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[Signal]:
        return [Signal.model_validate(json.loads(body))]

    def verify(self, headers: Mapping[str, str], body: bytes, secret: str) -> bool:
        want = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(headers.get("x-hub-signature-256", ""), want)


class SignedSubclass(WebhookSource):
    """The same source on the declared contract: ``verify`` overrides WebhookSource's default."""

    name = "signed-test"
    parse = SignedSource.parse
    verify = SignedSource.verify


@pytest.fixture(params=["plain class", "WebhookSource subclass"])
def signed_source(request: pytest.FixtureRequest) -> Iterator[object]:
    """A signing source written as a plain class (the shape before the base class, still
    accepted) or as a subclass of WebhookSource: both are verified alike."""
    src = SignedSource() if request.param == "plain class" else SignedSubclass()
    register_source(src)
    assert WEBHOOK_SOURCES[src.name].signed
    yield src
    WEBHOOK_SOURCES.pop(src.name, None)


def test_webhook_secrets_and_signatures(api_server, signed_source, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGNED_TEST_SECRET", SECRET + "-env")
    client, rt = api_server(webhooks={"generic": {"secret": SECRET}, "signed-test": {"secret_env": "SIGNED_TEST_SECRET"}})
    anon = {"Authorization": ""}
    url = "/v1/webhooks/generic"
    assert client.post(url, json=SIGNAL, headers=anon).status_code == 401
    wrong = client.post(url, json=SIGNAL, headers={"Authorization": "Bearer not-the-secret"})
    assert wrong.status_code == 401 and "X-Heald-Webhook-Secret" in wrong.json()["detail"]
    assert client.post(url, json=SIGNAL, headers={"Authorization": f"Bearer {SECRET}"}).status_code == 202
    basic = base64.b64encode(f"alertmanager:{SECRET}".encode()).decode()
    assert client.post(url, json=SIGNAL, headers={"Authorization": f"Basic {basic}"}).status_code == 202
    assert client.post(url, json=SIGNAL, headers={**anon, "X-Heald-Webhook-Secret": SECRET}).status_code == 202
    # an operator token also works; a viewer token does not
    assert client.post(url, json=SIGNAL, headers=bearer(make_token(rt.store, "operator", "otto"))).status_code == 202
    assert client.post(url, json=SIGNAL, headers=bearer(make_token(rt.store, "viewer", "vera"))).status_code == 403
    actors = {e.actor for e in rt.store.audit_entries() if e.event in ("incident.opened", "signal.firing")}
    assert "source:generic" in actors

    body = json.dumps({**SIGNAL, "summary": "signed"}).encode()
    sig = "sha256=" + hmac.new((SECRET + "-env").encode(), body, hashlib.sha256).hexdigest()
    surl = "/v1/webhooks/signed-test"
    headers = {**anon, "content-type": "application/json"}
    assert client.post(surl, content=body, headers={**headers, "X-Hub-Signature-256": sig}).status_code == 202
    tampered = client.post(surl, content=body + b" ", headers={**headers, "X-Hub-Signature-256": sig})
    assert tampered.status_code == 401 and "signature" in tampered.json()["detail"]
    assert client.post(surl, content=body, headers=headers).status_code == 401
    # the secret itself is no substitute for a signature
    assert client.post(surl, content=body, headers={**headers, "X-Heald-Webhook-Secret": SECRET + "-env"}).status_code == 401


def test_webhook_secret_config_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from heald.config import ConfigError, load_config

    p = tmp_path / "heald.yaml"
    p.write_text("webhooks:\n  alertmanager:\n    secret: short\n")
    with pytest.raises(ConfigError, match=r"heald.yaml:3: webhooks.alertmanager.secret: .*16 characters"):
        load_config(p)
    p.write_text("webhooks:\n  github:\n    secret_env: HEALD_TEST_NO_SUCH_VARIABLE\n")
    with pytest.raises(ConfigError, match="HEALD_TEST_NO_SUCH_VARIABLE is not set"):
        load_config(p)


def test_auth_off_for_local_development(api_server) -> None:
    client, rt = api_server(token_role=None, api={"auth": False})
    inc = client.post("/v1/signals", json=SIGNAL).json()["incident_id"]
    assert client.get("/v1/incidents").status_code == 200
    wait_for(lambda: rt.store.get_incident(inc).state.value == "awaiting_approval", what="approval wait")
    nameless = client.post(f"/v1/incidents/{inc}/approve", json={})
    assert nameless.status_code == 422 and nameless.json()["detail"][0]["loc"] == ["body", "approver"]
    ok = client.post(f"/v1/incidents/{inc}/approve", json={"approver": "dev"})
    assert ok.status_code == 200 and ok.json()["counted"]


def test_cookie_needs_htmx_header_to_change_anything(api) -> None:
    client, rt = api
    token = make_token(rt.store, "operator", "otto")
    anon = {"Authorization": ""}
    client.cookies.set("heald_token", token)
    try:
        assert client.get("/v1/incidents", headers=anon).status_code == 200
        assert client.post("/v1/signals", json=SIGNAL, headers=anon).status_code == 401
        assert client.post("/v1/signals", json=SIGNAL, headers={**anon, "HX-Request": "true"}).status_code == 202
    finally:
        client.cookies.clear()


def test_signalin_is_a_signal_without_server_fields(api) -> None:  # type: ignore[no-untyped-def]
    """POST /v1/signals takes heald's Signal model (SignalIn derives from it): a field only the
    server assigns is a 422 naming it, and those fields are not in the OpenAPI schema."""
    from heald.api.signals import SignalIn
    from heald.models import Signal as SignalModel

    client, _ = api
    assert issubclass(SignalIn, SignalModel)
    for field in ("id", "incident_id", "received_at", "suppressed_by", "raw_ref"):
        r = client.post("/v1/signals", json={**SIGNAL, field: "x" if field != "id" else 1})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", field] and "server assigns" in r.text, r.text
    schema = client.get("/openapi.json").json()["components"]["schemas"]["SignalIn"]["properties"]
    assert "incident_id" not in schema and "source" in schema and "suppressed_by" not in schema
    assert client.post("/v1/signals", json=SIGNAL).status_code == 202
