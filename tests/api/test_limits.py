"""Issue 11 item 8: the size of requests. Attacks over real HTTP on loopback against uvicorn:
unauthenticated 100 MB bodies streamed without Content-Length, a huge declared Content-Length,
a 10 MB invalid signal, a webhook message with too many alerts."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MB = 1024 * 1024
CHUNK = b"x" * (64 * 1024)


def _port(client: Any) -> int:
    return int(client.base_url.port)


def _read_response(sock: socket.socket, deadline: float) -> tuple[int, bytes]:
    """Read one HTTP/1.1 response (status, body) until it is complete or the peer closes."""
    data = b""
    sock.setblocking(True)
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            part = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not part:
            break
        data += part
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            lengths = [line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
            if lengths and len(body) >= int(lengths[0]):
                break
    if not data.startswith(b"HTTP/1.1 "):
        return 0, data
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def send_streamed(port: int, path: str, total: int, headers: dict[str, str] | None = None,
                  content_length: int | None = None, timeout: float = 60.0) -> tuple[int, bytes, int]:
    """POST ``total`` bytes to ``path`` as a client would stream them: chunked transfer
    encoding (no Content-Length) unless ``content_length`` is given, then raw. Stops sending
    as soon as the server answers or closes. Returns (status, response body, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    head.append(f"Content-Length: {content_length}" if content_length is not None else "Transfer-Encoding: chunked")
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    deadline = time.monotonic() + timeout
    sent = 0
    pending = b""
    sock.setblocking(False)
    try:
        while time.monotonic() < deadline:
            if not pending:
                if sent >= total:
                    if content_length is None:
                        pending = b"0\r\n\r\n"
                        total = -1  # the final chunk is queued once
                    else:
                        break
                elif total > 0:
                    frame = CHUNK[: min(len(CHUNK), total - sent)]
                    sent += len(frame)
                    pending = frame if content_length is not None else b"%x\r\n%s\r\n" % (len(frame), frame)
            readable, writable, _ = select.select([sock], [sock] if pending else [], [], 1.0)
            if readable:
                break  # the server answered (or closed) before taking everything
            if writable:
                try:
                    pending = pending[sock.send(pending):]
                except BlockingIOError:
                    pass
                if not pending and total == -1:
                    break
    except (BrokenPipeError, ConnectionResetError):
        pass
    status, body = _read_response(sock, time.monotonic() + 20)
    sock.close()
    return status, body, sent


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def peak_rss_growth(attack: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``attack`` and return (its result, how far this process's peak resident set grew,
    in bytes). The server runs in this process (uvicorn in a thread), so this is the server's
    memory: the kernel's peak counter (VmHWM) is reset first through /proc/self/clear_refs."""
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kb("VmRSS")
    result = attack()
    return result, (_status_kb("VmHWM") - base) * 1024


def test_three_unauthenticated_100mb_streamed_posts_are_refused_early_and_memory_stays_bounded(api_server) -> None:
    """The attack of the issue, and one more: 100 MB streamed without Content-Length by a
    client with no credentials. A signed source (GitHub, whose signature covers the body) and
    ``/v1/signals`` read the body before authentication, so the limit stops them (413); the
    other sources refuse the stranger before reading the body (401)."""
    client, rt = api_server(token_role=None, webhooks={"github": {"secret": "a-github-webhook-secret"}})
    port = _port(client)
    limit = rt.config.api.max_body_bytes
    expected = {"/v1/webhooks/github": 413, "/v1/signals": 413, "/v1/webhooks/generic": 401,
                "/v1/webhooks/alertmanager": 401}
    results: dict[str, tuple[int, bytes, int]] = {}

    def attack() -> None:
        threads = [threading.Thread(target=lambda p=p: results.update({p: send_streamed(port, p, 100 * MB)}))
                   for p in expected]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)

    _, growth = peak_rss_growth(attack)
    print(f"peak RSS growth during the attack: {growth / MB:.1f} MB; bytes sent before the answer: "
          f"{ {p: r[2] for p, r in results.items()} }")
    assert set(results) == set(expected)
    for path, (status, body, sent) in results.items():
        assert status == expected[path], (path, status, body[:300])
        detail = json.loads(body)["detail"]
        if status == 413:
            assert f"at most {limit} bytes" in detail and "api.max_body_bytes" in detail
        # refused while streaming: the client could not push much past the limit (socket buffers)
        assert sent < limit + 16 * MB, (path, sent)
    assert growth < 60 * MB, f"the server's memory grew by {growth / MB:.0f} MB"
    assert rt.store.count_signals_by_source() == {}
    # the server still answers normally afterwards
    assert client.get("/healthz").status_code == 200


def test_a_huge_content_length_is_refused_before_the_body_is_read(api_server) -> None:
    client, rt = api_server(token_role=None)
    started = time.monotonic()
    # announce 10 GB and send nothing: only an answer made from the header can arrive
    status, body, sent = send_streamed(_port(client), "/v1/webhooks/generic", 0, content_length=10 * 1024**3,
                                       timeout=10)
    assert status == 413, (status, body[:300])
    assert "Content-Length: 10737418240" in json.loads(body)["detail"]
    assert time.monotonic() - started < 5
    for bad in ("12abc", "-1", "1" * 40):
        status, body, _ = send_streamed(_port(client), "/v1/signals", 0, content_length=bad, timeout=10)  # type: ignore[arg-type]
        assert 400 <= status < 500, (bad, status, body[:200])


def test_an_unauthenticated_webhook_is_refused_before_its_body_is_read(api_server) -> None:
    client, rt = api_server(token_role=None)
    for source in ("alertmanager", "cloudevents", "generic"):
        # a body within the limit is announced but never sent: only an answer that did not wait
        # for the body can arrive
        status, body, _ = send_streamed(_port(client), f"/v1/webhooks/{source}", 0, content_length=MB, timeout=5)
        assert status == 401, (source, status, body[:200])


def test_an_authenticated_streamed_body_over_the_limit_is_refused_too(api_server) -> None:
    client, rt = api_server(api={"max_body_bytes": 64 * 1024})
    status, body, sent = send_streamed(_port(client), "/v1/signals", 5 * MB,
                                       headers={"Authorization": client.headers["authorization"]})
    assert status == 413 and "at most 65536 bytes" in json.loads(body)["detail"]
    assert sent < 5 * MB
    # a body within the limit still works
    r = client.post("/v1/signals", json={"source": "mon", "labels": {"alertname": "Small"}})
    assert r.status_code == 202, r.text


def test_a_10mb_invalid_signal_gets_a_short_answer(api_server) -> None:
    from heald.http_limits import MAX_ERRORS

    client, rt = api_server(api={"max_body_bytes": 32 * MB})
    status, body, _ = send_streamed(_port(client), "/v1/signals", 0, content_length=40 * MB,
                                    headers={"Authorization": client.headers["authorization"]}, timeout=10)
    assert status == 413 and len(body) < 1000
    huge = {"source": "mon", "summary": "A" * (10 * MB)}
    r = client.post("/v1/signals", json=huge)
    assert r.status_code == 422
    assert len(r.content) < 2000, f"the 422 answer is {len(r.content)} bytes"
    err = r.json()["detail"][0]
    assert err["loc"] == ["body", "summary"] and "10000" in err["msg"]
    assert err["input"].startswith("AAAA") and f"({10 * MB} characters)" in err["input"]
    # many bad fields: the answer lists a bounded number of them
    r = client.post("/v1/signals", json={"source": "mon", "labels": {f"k{i}": i for i in range(50_000)}})
    assert r.status_code == 422 and len(r.content) < 10_000
    assert len(r.json()["detail"]) == MAX_ERRORS + 1 and "more problems" in r.json()["detail"][-1]["msg"]
    # the generic webhook's 422 quotes no more than an excerpt either
    r = client.post("/v1/webhooks/generic", json={"source": "mon", "labels": {"x" * MB: "v"}, "kind": ["y" * MB]})
    assert r.status_code == 422 and len(r.content) < 2000, len(r.content)
    assert rt.store.count_signals_by_source() == {}


def test_a_webhook_message_with_too_many_alerts_is_refused_naming_the_limit(api_server) -> None:
    client, rt = api_server(api={"max_signals_per_message": 5})
    alert = {"status": "firing", "labels": {"alertname": "A", "instance": "i"}, "startsAt": "2025-01-01T00:00:00Z"}
    message = {"version": "4", "status": "firing", "alerts": [{**alert, "labels": {**alert["labels"], "n": str(i)}}
                                                              for i in range(6)]}
    r = client.post("/v1/webhooks/alertmanager", json=message)
    assert r.status_code == 413
    assert "6" in r.json()["detail"] and "at most 5" in r.json()["detail"]
    assert "api.max_signals_per_message" in r.json()["detail"]
    assert rt.store.count_signals_by_source() == {}
    message["alerts"] = message["alerts"][:5]
    r = client.post("/v1/webhooks/alertmanager", json=message)
    assert r.status_code == 202 and len(r.json()["accepted"]) == 5
