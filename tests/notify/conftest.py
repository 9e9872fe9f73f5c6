"""Real receivers on loopback: an HTTP server (Slack's and a generic webhook's side) and an
SMTP server (aiosmtpd), each able to fail a given number of times first."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.conftest import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """An HTTP server that answers POSTs with ``statuses`` in turn (then 200 ``ok``), as Slack's
    incoming webhook does, and keeps every request."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.requests: list[Received] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                outer.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status = outer.statuses.pop(0) if outer.statuses else 200
                answer = b"ok" if status == 200 else b"invalid_payload" if status == 400 else b"try later"
                self.send_response(status)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@dataclass
class Mailbox:
    """What the SMTP server received; ``fail_with`` replies are given to DATA first, in turn."""

    messages: list[Any] = field(default_factory=list)
    fail_with: list[str] = field(default_factory=list)
    attempts: int = 0
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.attempts += 1
        if self.fail_with:
            return self.fail_with.pop(0)
        self.messages.append(envelope)
        return "250 Message accepted for delivery"


def smtp_server(mailbox: Mailbox, **kw: Any) -> Controller:
    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"heald" and auth_data.password == b"s3cret-pass"
        if ok:
            mailbox.logins.append(auth_data.login.decode())
        return AuthResult(success=ok)

    c = Controller(mailbox, hostname="127.0.0.1", port=free_port(), authenticator=authenticator, **kw)
    c.start()
    return c


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    """(mailbox, port) of a plain SMTP server on loopback (AUTH allowed without TLS)."""
    box = Mailbox()
    c = smtp_server(box, auth_require_tls=False)
    yield box, c.port
    c.stop()


@pytest.fixture
def tls_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl), as (cert, key)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key
