"""The kill switch over HTTP: ``GET/POST /v1/pause``, ``POST /v1/resume`` — roles, bad input,
the audit with the caller's identity."""

from __future__ import annotations

from tests.conftest import bearer, make_token


def test_pause_and_resume_need_an_operator_and_are_audited(api) -> None:
    client, rt = api
    viewer = bearer(make_token(rt.store, "viewer", "vera"))
    operator = bearer(make_token(rt.store, "operator", "otto"))
    assert client.get("/v1/pause", headers=viewer).json()["paused"] is False
    assert client.post("/v1/pause", json={"reason": "freeze"}, headers=viewer).status_code == 403
    assert client.post("/v1/pause", json={"reason": "freeze"}, headers={"Authorization": ""}).status_code == 401
    r = client.post("/v1/pause", json={"reason": "deploy freeze"}, headers=operator)
    assert r.status_code == 200, r.text
    assert r.json()["paused"] and r.json()["actor"] == "user:otto" and r.json()["reason"] == "deploy freeze"
    now = client.get("/v1/pause", headers=viewer).json()
    assert now["paused"] and now["reason"] == "deploy freeze" and now["since"]
    assert client.post("/v1/resume", json={}, headers=viewer).status_code == 403
    assert client.post("/v1/resume", json={"reason": "over"}, headers=operator).json()["paused"] is False
    assert client.post("/v1/resume", headers=operator).status_code == 409  # not paused any more
    for event in ("heald.paused", "heald.resumed"):
        assert [e.actor for e in rt.store.search_audit(event=event, limit=10)] == ["user:otto"]


def test_pause_refuses_bad_input_naming_the_field(api) -> None:
    client, rt = api
    for body in ({}, {"reason": ""}, {"reason": "   "}, {"reason": "x" * 2001}, {"reason": "ok", "extra": 1},
                 {"reason": 5}):
        r = client.post("/v1/pause", json=body)
        assert r.status_code == 422, (body, r.text)
        assert "reason" in r.text or "extra" in r.text, r.text
    r = client.post("/v1/pause", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert client.get("/v1/pause").json()["paused"] is False
