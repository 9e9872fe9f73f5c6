"""heald mcp, driven by the MCP Python SDK's own client over stdio and streamable HTTP: every
call authenticated with an API token and audited; roles as in the API; an approval given
over MCP resumes a real healing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from heald import correlate
from heald.models import Signal
from heald.store import Store
from tests.api.conftest import api_config, serve
from tests.conftest import free_port, heald_cmd, make_config, make_token, wait_for

TOOLS = {"list_incidents", "get_incident", "incident_report", "list_silences", "create_silence", "approve", "reject"}


def data(result: Any) -> Any:
    """A tool result's structured content (a list or text comes wrapped in ``result``)."""
    assert not result.isError, result.content
    sc = result.structuredContent
    return sc["result"] if isinstance(sc, dict) and set(sc) == {"result"} else sc


def error_text(result: Any) -> str:
    assert result.isError, result
    return " ".join(getattr(c, "text", "") for c in result.content)


def env_for(state: Path, token: str | None = None) -> dict[str, str]:
    env = {**os.environ, "HEALD_STATE_DIR": str(state), "HEALD_CONFIG": "", "HEALD_LOG_LEVEL": "warning"}
    env.pop("HEALD_TOKEN", None)
    if token:
        env["HEALD_TOKEN"] = token
    return env


def stdio_params(state: Path, token: str | None) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "heald.cli", "mcp"], env=env_for(state, token))


async def call_over_stdio(state: Path, token: str, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    async with stdio_client(stdio_params(state, token)) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = await session.list_tools()
        assert {t.name for t in tools.tools} == TOOLS
        return [await session.call_tool(name, args) for name, args in calls]


@pytest.fixture
def seeded(tmp_path: Path) -> tuple[Path, Store, int]:
    """A store under ``tmp_path/state`` with one incident; (state dir, store, incident id)."""
    state = tmp_path / "state"
    store = Store(f"sqlite:///{state / 'heald.db'}")
    store.migrate()
    with store.tx() as s:
        inc = correlate.ingest(s, Signal(source="t", service="shop", summary="shop checkout down"),
                               make_config(tmp_path)).incident_id
    return state, store, inc


def test_stdio_viewer_reads_and_every_call_is_audited(seeded: tuple[Path, Store, int]) -> None:
    state, store, inc = seeded
    viewer = make_token(store, "viewer", "vera")
    listed, one, report, silences, refused, missing = anyio.run(call_over_stdio, state, viewer, [
        ("list_incidents", {}), ("get_incident", {"incident_id": inc}), ("incident_report", {"incident_id": inc}),
        ("list_silences", {}),
        ("create_silence", {"matchers": ['service="shop"'], "duration": "1h", "comment": "maintenance"}),
        ("get_incident", {"incident_id": 999})])
    assert [i["title"] for i in data(listed)] == ["shop checkout down"]
    assert data(one)["incident"]["id"] == inc and data(one)["timeline"][0]["event"] == "incident.opened"
    assert "shop checkout down" in data(report)
    assert data(silences) == []
    assert "vera has role viewer; create_silence needs role operator or above" in error_text(refused)
    assert "no incident 999" in error_text(missing)
    entries = [e for e in store.audit_entries() if e.event.startswith("mcp.")]
    assert [(e.event, e.actor, e.details["tool"]) for e in entries] == [
        ("mcp.call", "user:vera", "list_incidents"), ("mcp.call", "user:vera", "get_incident"),
        ("mcp.call", "user:vera", "incident_report"), ("mcp.call", "user:vera", "list_silences"),
        ("mcp.denied", "user:vera", "create_silence"), ("mcp.call", "user:vera", "get_incident")]
    assert all(e.details["via"] == "mcp-stdio" for e in entries)
    assert store.verify_audit().intact


def test_stdio_refuses_to_start_without_a_valid_token(seeded: tuple[Path, Store, int]) -> None:
    state, _, _ = seeded
    for token in (None, "heald_not-a-token"):
        r = subprocess.run(heald_cmd("mcp"), env=env_for(state, token), capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 3 and "--token / $HEALD_TOKEN" in r.stderr and r.stdout == ""


def test_stdio_token_revoked_mid_session_stops_working(seeded: tuple[Path, Store, int]) -> None:
    state, store, _ = seeded
    viewer = make_token(store, "viewer", "vera")

    async def run() -> tuple[Any, Any]:
        async with stdio_client(stdio_params(state, viewer)) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            before = await session.call_tool("list_silences", {})
            [token] = [t for t in store.list_tokens() if t.name == "vera"]
            store.revoke_token(token.id, by="user:admin")
            return before, await session.call_tool("list_silences", {})

    before, after = anyio.run(run)
    assert data(before) == [] and "unknown, revoked or expired" in error_text(after)


@pytest.fixture
def mcp_http(seeded: tuple[Path, Store, int]) -> Iterator[str]:
    """``heald mcp --transport http`` on a free loopback port; yields the /mcp URL."""
    state, _, _ = seeded
    port = free_port()
    proc = subprocess.Popen(heald_cmd("mcp", "--transport", "http", "--port", str(port)), env=env_for(state),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"

    def up() -> bool:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            return httpx.get(url, timeout=1).status_code == 401
        except httpx.TransportError:
            return False

    try:
        wait_for(up, timeout=30, what="heald mcp over HTTP")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_http_needs_a_bearer_token_on_every_request(mcp_http: str, seeded: tuple[Path, Store, int]) -> None:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    headers = {"accept": "application/json, text/event-stream"}
    for auth in ({}, {"authorization": "Bearer heald_forged"}, {"authorization": "Basic dTpw"}):
        r = httpx.post(mcp_http, json=init, headers={**headers, **auth}, timeout=10)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), (auth, r.text)
    _, store, _ = seeded
    good = make_token(store, "viewer", "vera")
    ok = httpx.post(mcp_http, json=init, headers={**headers, "authorization": f"Bearer {good}"}, timeout=10)
    assert ok.status_code == 200


def test_http_operator_creates_a_silence_audited_as_them(mcp_http: str, seeded: tuple[Path, Store, int]) -> None:
    _, store, inc = seeded
    operator = make_token(store, "operator", "otto")

    async def run() -> tuple[Any, Any, Any, Any]:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {operator}"}, timeout=30) as http, \
                streamable_http_client(mcp_http, http_client=http) as (read, write, _), \
                ClientSession(read, write) as session:
            await session.initialize()
            created = await session.call_tool("create_silence", {"matchers": ['service="shop"'], "duration": "2h",
                                                                 "comment": "planned maintenance"})
            bad = await session.call_tool("create_silence", {"matchers": ["service=shop shop"], "duration": "2h",
                                                             "comment": "x"})
            listed = await session.call_tool("list_silences", {"state": "active"})
            approve = await session.call_tool("approve", {"incident_id": inc})
            return created, bad, listed, approve

    created, bad, listed, approve = anyio.run(run)
    silence = data(created)
    assert silence["created_by"] == "user:otto" and silence["matchers"] == ['service="shop"']
    assert "matcher" in error_text(bad).lower()
    assert [s["id"] for s in data(listed)] == [silence["id"]]
    assert "otto has role operator; approve needs role approver or above" in error_text(approve)
    events = [(e.event, e.actor) for e in store.audit_entries()]
    assert ("mcp.call", "user:otto") in events and ("mcp.denied", "user:otto") in events
    assert any(e.event.startswith("silence.") and e.actor == "user:otto" for e in store.audit_entries())
    assert all(e.details.get("via") == "mcp-http" for e in store.audit_entries() if e.event.startswith("mcp."))


def test_http_operator_creates_a_recurring_silence_validated_as_in_the_api(
        mcp_http: str, seeded: tuple[Path, Store, int]) -> None:
    _, store, _ = seeded
    operator = make_token(store, "operator", "otto")
    weekly = {"schedule": "0 2 * * 0", "window": "2h", "timezone": "Europe/Paris"}
    bad = [("schedule", "every sunday", "recurrence.schedule"), ("window", "forever", "recurrence.window"),
           ("timezone", "Nowhere/Land", "recurrence.timezone"), ("window", "30s", "recurrence.window"),
           ("extra", 1, "extra")]

    async def run() -> tuple[Any, list[Any], Any]:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {operator}"}, timeout=30) as http, \
                streamable_http_client(mcp_http, http_client=http) as (read, write, _), \
                ClientSession(read, write) as session:
            await session.initialize()
            tools = {t.name: t for t in (await session.list_tools()).tools}
            assert "recurrence" in tools["create_silence"].inputSchema["properties"]
            created = await session.call_tool("create_silence", {"matchers": ['service="shop"'], "duration": "90d",
                                                                 "comment": "weekly maintenance", "recurrence": weekly})
            refused = [await session.call_tool("create_silence", {
                "matchers": ['service="shop"'], "duration": "90d", "comment": "x",
                "recurrence": {**weekly, key: value}}) for key, value, _ in bad]
            listed = await session.call_tool("list_silences", {})
            return created, refused, listed

    created, refused, listed = anyio.run(run)
    silence = data(created)
    assert silence["recurrence"] == {"schedule": "0 2 * * 0", "window_seconds": 7200, "timezone": "Europe/Paris"}
    assert silence["state"] in ("pending", "active") and silence["next_window"] is not None
    for (_, _, field), result in zip(bad, refused, strict=True):
        assert field in error_text(result), (field, error_text(result))
    assert [s["id"] for s in data(listed)] == [silence["id"]]  # nothing made by the refused calls
    call = next(e for e in store.audit_entries() if e.event == "mcp.call" and e.reason == "create_silence")
    assert '"recurrence": {"schedule": "0 2 * * 0", "window": "2h"' in call.details["arguments"]


@pytest.mark.slow
def test_approval_over_mcp_resumes_the_healing(tmp_path: Path) -> None:
    signal = {"source": "my-monitor", "service": "svc", "summary": "svc broken",
              "labels": {"alertname": "SvcBroken", "service": "svc"}}
    cfg = api_config(tmp_path)
    with serve(cfg) as (client, rt):
        assert client.post("/v1/signals", json=signal).status_code == 202
        [inc] = wait_for(lambda: client.get("/v1/incidents", params={"state": "awaiting_approval"}).json(),
                         timeout=30, what="awaiting approval")
        alice = make_token(rt.store, "approver", "alice")
        [result] = anyio.run(call_over_stdio, cfg.state_dir, alice,
                             [("approve", {"incident_id": inc["id"], "comment": "restart is fine"})])
        verdict = data(result)
        assert verdict["counted"] and verdict["approvals"] == 1 and verdict["counts_as"] == "alice"
        wait_for(lambda: rt.store.get_incident(inc["id"]).state.value not in ("awaiting_approval",), timeout=30,
                 what="the healing to resume after the approval")
        assert [a["approver"] for a in rt.store.approvals_for(inc["id"])] == ["alice"]
        assert any(e.event == "mcp.call" and e.actor == "user:alice" and e.incident_id == inc["id"]
                   for e in rt.store.audit_entries())
