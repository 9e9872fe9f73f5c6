"""heald's package-index proxy (:mod:`heald.ci.index`), spoken to over its real unix socket
with a real package index on loopback behind it: it serves only the configured index's pages
and the files they list, verifies every file's SHA-256 against the index's hash, keeps a cache
that is re-verified before each use, and is no general proxy for repository code."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from heald.ci.index import IndexProxy, IndexSources, parse_html_page

WHEEL = b"PK\x03\x04 a wheel's bytes" * 50
SDIST = b"an sdist whose bytes the index does not vouch for"
WRONG = "0" * 64
METADATA = b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n"


class FakeIndex:
    """A PEP 503/691 index on 127.0.0.1 with one project, ``demo``: a wheel listed with its true
    SHA-256, an sdist listed with a wrong one, and a host file of heald's machine listed by a
    ``file:`` URL with its true SHA-256. Records every path it was asked for."""

    def __init__(self, as_json: bool, host_file: Path) -> None:
        self.paths: list[str] = []
        wheel_sha = hashlib.sha256(WHEEL).hexdigest()
        host_sha = hashlib.sha256(host_file.read_bytes()).hexdigest()
        meta_sha = hashlib.sha256(METADATA).hexdigest()
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                index.paths.append(self.path)
                if self.path == "/simple/demo/":
                    if as_json:
                        body = json.dumps({"meta": {"api-version": "1.0"}, "name": "demo", "files": [
                            {"filename": "demo-1.0-py3-none-any.whl", "url": "../../files/demo-1.0-py3-none-any.whl",
                             "hashes": {"sha256": wheel_sha}, "requires-python": ">=3.8",
                             "core-metadata": {"sha256": meta_sha}},
                            {"filename": "demo-0.9.tar.gz", "url": "/files/demo-0.9.tar.gz", "hashes": {"sha256": WRONG}},
                            {"filename": "demo-0.8.tar.gz", "url": "/files/demo-0.8.tar.gz", "hashes": {}},
                            {"filename": "demo-0.7.tar.gz", "url": host_file.as_uri(), "hashes": {"sha256": host_sha}}],
                        }).encode()
                        ctype = "application/vnd.pypi.simple.v1+json"
                    else:
                        body = (f'<a href="../../files/demo-1.0-py3-none-any.whl#sha256={wheel_sha}" '
                                f'data-requires-python="&gt;=3.8" data-core-metadata="sha256={meta_sha}">'
                                f'demo-1.0-py3-none-any.whl</a>'
                                f'<a href="/files/demo-0.9.tar.gz#sha256={WRONG}">demo-0.9.tar.gz</a>'
                                f'<a href="/files/demo-0.8.tar.gz">demo-0.8.tar.gz</a>'
                                f'<a href="{host_file.as_uri()}#sha256={host_sha}">demo-0.7.tar.gz</a>').encode()
                        ctype = "text/html"
                elif self.path == "/files/demo-1.0-py3-none-any.whl":
                    body, ctype = WHEEL, "application/octet-stream"
                elif self.path == "/files/demo-1.0-py3-none-any.whl.metadata":
                    body, ctype = METADATA, "application/octet-stream"
                elif self.path == "/files/demo-0.9.tar.gz":
                    body, ctype = SDIST, "application/octet-stream"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(params=["json", "html"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[FakeIndex, IndexProxy, httpx.Client]]:
    host_file = tmp_path / "host-secret.txt"
    host_file.write_text("a file on heald's host\n")
    index = FakeIndex(as_json=request.param == "json", host_file=host_file)
    proxy = IndexProxy(IndexSources((index.url,)), tmp_path / "cache").start()
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(proxy.socket_path)), base_url="http://sandbox")
    yield index, proxy, client
    client.close()
    proxy.close()
    index.close()


def links(page: str) -> dict[str, str]:
    return {e.filename: e.url for e in parse_html_page(page, "http://sandbox/simple/demo/")}


def test_the_proxy_lists_only_files_with_a_hash_and_serves_them_verified(served) -> None:
    index, proxy, client = served
    r = client.get("/simple/DEMO")  # PEP 503 names: any spelling of the project
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    found = links(r.text)
    wheel_sha = hashlib.sha256(WHEEL).hexdigest()
    assert found == {"demo-1.0-py3-none-any.whl": f"http://sandbox/files/{wheel_sha}/demo-1.0-py3-none-any.whl",
                     "demo-0.9.tar.gz": f"http://sandbox/files/{WRONG}/demo-0.9.tar.gz"}
    # 0.8 has no hash, 0.7 is a file: URL (a path on heald's host) from a remote index: left out
    assert 'data-requires-python="&gt;=3.8"' in r.text
    assert client.get(f"/files/{wheel_sha}/demo-1.0-py3-none-any.whl").content == WHEEL
    meta_sha = hashlib.sha256(METADATA).hexdigest()
    assert f'data-core-metadata="sha256={meta_sha}"' in r.text  # PEP 658: pip reads metadata without the wheel
    assert client.get(f"/files/{wheel_sha}/demo-1.0-py3-none-any.whl.metadata").content == METADATA
    assert client.get(f"/files/{WRONG}/demo-0.9.tar.gz.metadata").status_code == 404  # it has none
    # the index's bytes do not match its own hash: refused, and nothing is kept
    bad = client.get(f"/files/{WRONG}/demo-0.9.tar.gz")
    assert bad.status_code == 502 and "does not match" in bad.text
    assert not list(proxy.cache_dir.rglob(WRONG)) and not list(proxy.cache_dir.glob(".part-*"))
    # the cache serves the verified file when the index is gone
    index.close()
    assert client.get(f"/files/{wheel_sha}/demo-1.0-py3-none-any.whl").content == WHEEL
    assert index.paths.count("/files/demo-1.0-py3-none-any.whl") == 1


def test_a_file_altered_in_the_cache_is_never_served(served) -> None:
    index, proxy, client = served
    wheel_sha = hashlib.sha256(WHEEL).hexdigest()
    client.get("/simple/demo/")
    assert client.get(f"/files/{wheel_sha}/x.whl").content == WHEEL
    [cached] = proxy.cache_dir.rglob(wheel_sha)
    cached.write_bytes(b"poisoned by an earlier run")
    r = client.get(f"/files/{wheel_sha}/x.whl")
    assert r.content == WHEEL  # fetched and verified again
    assert index.paths.count("/files/demo-1.0-py3-none-any.whl") == 2
    cached.write_bytes(b"poisoned again")
    index.close()
    r = client.get(f"/files/{wheel_sha}/x.whl")
    assert r.status_code == 502 and b"poisoned" not in r.content


@pytest.mark.parametrize("request_line", [
    "GET http://127.0.0.1:5432/ HTTP/1.1",              # absolute form: a proxy request to the host
    "CONNECT 127.0.0.1:5432 HTTP/1.1",                   # a tunnel
    "GET /simple/../../etc/passwd HTTP/1.1",             # dot segments
    "GET /simple/%2e%2e/%2e%2e/etc/passwd HTTP/1.1",     # percent-encoded dot segments
    "GET /files/" + "a" * 64 + "/x.whl HTTP/1.1",        # a file no page listed
    "GET /etc/passwd HTTP/1.1",
    "GET /simple/%3Cscript%3E/ HTTP/1.1",                # not a project name
    "POST /simple/demo/ HTTP/1.1",
])
def test_the_proxy_is_no_general_proxy(served, request_line: str) -> None:
    import socket

    index, proxy, _ = served
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(proxy.socket_path))
    s.sendall(f"{request_line}\r\nHost: sandbox\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
    answer = b""
    while chunk := s.recv(65536):
        answer += chunk
    s.close()
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 600 and status != 200, answer[:200]
    assert b"root:" not in answer
    assert index.paths == []  # the index was asked for nothing


def test_pip_config_list_is_read_as_pip_reads_it() -> None:
    text = ("global.index-url='https://mirror.example/simple'\n"
            "global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'\n"
            "global.find-links='/opt/wheels'\n:env:.find-links='/srv/wheels'\n")
    s = IndexSources.parse_pip_config(text, {})
    assert s.index_urls == ("https://mirror.example/simple", "file:///opt/pypi/simple", "file:///opt/pypi-more/simple")
    assert s.find_links == ("/srv/wheels",)
    assert IndexSources.parse_pip_config("", {}).index_urls == ("https://pypi.org/simple/",)
    assert IndexSources.parse_pip_config("", {"PIP_INDEX_URL": "https://x.example/simple"}).index_urls == (
        "https://x.example/simple",)
