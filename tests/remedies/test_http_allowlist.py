"""``http_request``'s allowlist (issue 11, item 4): a URL is compared with the allowlist as
httpx will send it — scheme, host, port and whole path segments — and refused when it holds
anything a server could read as another path (dot segments, encoded dots or slashes, double
encodings, backslashes), userinfo or control characters. Property tests over URL forms, and the
attack of the issue on a real loopback server."""

from __future__ import annotations

import posixpath
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from heald import remedies
from heald.remedies import RemedyContext, RemedyError, RemedyParamsError
from heald.remedies.http import allowed
from heald.supervise import Supervisor
from tests.conftest import make_config

PORT = 8181
ALLOW = [f"http://127.0.0.1:{PORT}/admin/", "https://api.example.com/v1/flags"]


class Recorder:
    """A real HTTP server on loopback that answers 200 to everything and records each request
    line's raw path, and redirects ``/admin/go`` to ``/secret/drop-all``."""

    def __init__(self) -> None:
        self.paths: list[tuple[str, str]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def _any(self) -> None:
                outer.paths.append((self.command, self.path))
                n = int(self.headers.get("content-length", 0) or 0)
                self.rfile.read(n)
                if self.path == "/admin/go":
                    self.send_response(307)
                    self.send_header("location", "/secret/drop-all")
                else:
                    self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_GET = do_PUT = do_POST = do_DELETE = _any  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.close()


def ctx(tmp_path: Path, allow: list[str]) -> RemedyContext:
    cfg = make_config(tmp_path, remedies={"http_allowed_urls": allow})
    return RemedyContext(config=cfg, supervisor=Supervisor(cfg), extra={"idempotency_key": "k"})


class _Cfg:
    """The one setting :func:`allowed` reads, for the property tests (no files per example)."""

    class remedies:  # noqa: N801
        http_allowed_urls = ALLOW


PCTX = RemedyContext(config=_Cfg(), supervisor=None)  # type: ignore[arg-type]


def check(url: str) -> httpx.URL | None:
    """The URL httpx would send when ``allowed`` accepts ``url`` (it returns it; an allowlist
    that only raises or not, as before issue 11, sends ``url`` itself), None when refused."""
    try:
        sent = allowed(url, PCTX)
    except RemedyError:
        return None
    try:
        return sent if isinstance(sent, httpx.URL) else httpx.URL(url)
    except httpx.InvalidURL:
        return None


def normalised_path(raw: str) -> str:
    """What a lenient server may make of a raw path: percent-decoded (twice, for double
    encodings), backslashes as slashes, ``;parameters`` dropped, dot segments removed."""
    decoded = unquote(unquote(raw)).replace("\\", "/")
    decoded = "/".join(seg.split(";", 1)[0] for seg in decoded.split("/"))  # path parameters, as Tomcat drops them
    return posixpath.normpath(decoded) if decoded else "/"


# -- the attack of the issue and its variants ----------------------------------------------------

ATTACKS = [
    "http://127.0.0.1:8181/admin/flags/../../secret/drop-all",
    "http://127.0.0.1:8181/admin/flags/./../../secret",
    "http://127.0.0.1:8181/admin/..",
    "http://127.0.0.1:8181/admin/%2e%2e/secret",
    "http://127.0.0.1:8181/admin/%2E%2E/secret",
    "http://127.0.0.1:8181/admin/.%2e/secret",
    "http://127.0.0.1:8181/admin/%252e%252e/secret",
    "http://127.0.0.1:8181/admin/flags%2f..%2f..%2fsecret",
    "http://127.0.0.1:8181/admin/flags%2F..%2F..%2Fsecret",
    "http://127.0.0.1:8181/admin/flags%5c..%5csecret",
    "http://127.0.0.1:8181/admin/flags\\..\\..\\secret",
    "http://127.0.0.1:8181/admin//secret",
    "http://127.0.0.1:8181/admin/..;/secret",
    "http://127.0.0.1:8181/admin/%u002e%u002e/secret",
    "http://127.0.0.1:8181/admin/%c0%ae%c0%ae/secret",
    "http://127.0.0.1:8181/admin/%2",
    "http://evil@127.0.0.1:8181/admin/flags",
    "http://127.0.0.1:8181@evil.example/admin/flags",
    "http://127.0.0.1:8181/admin/flags\r\nX-Injected: 1",
    "http://127.0.0.1:8181/admin/flags\t",
    "http://127.0.0.1:8181/admin/fl ags",
    "http://127.0.0.1:8181/admin/\u2025/secret",
    "http://127.0.0.1:8181/admin/flags#frag",
    "http://127.0.0.1:8181/administrator",
    "http://127.0.0.1:8182/admin/flags",
    "https://127.0.0.1:8181/admin/flags",
    "http://127.1:8181/admin/flags",
    "http://127.0.0.1.:8181/admin/flags",
    "http://localhost:8181/admin/flags",
    "http://api.example.com/v1/flags",
    "https://api.example.com/v1/flagsx",
    "https://api.example.com:8443/v1/flags",
]


@pytest.mark.parametrize("url", ATTACKS)
def test_escapes_from_the_allowlist_are_refused(url: str) -> None:
    with pytest.raises(RemedyError):
        allowed(url, PCTX)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8181/admin/flags/checkout",
    "http://127.0.0.1:8181/admin",
    "http://127.0.0.1:8181/admin/",
    "HTTP://127.0.0.1:8181/admin/flags?x=1&next=%2F..%2F",
    "https://api.example.com/v1/flags/a%20b",
    "https://API.example.com:443/v1/flags",
])
def test_urls_under_the_allowlist_pass(url: str) -> None:
    sent = allowed(url, PCTX)
    assert httpx.Request("PUT", sent).url == sent


def test_dot_segments_are_refused_when_the_plan_is_made() -> None:
    """A label that fills ``${flag}`` with dot segments makes the parameters invalid: the plan
    drops the candidate with the reason, nothing is attempted."""
    with pytest.raises(RemedyParamsError, match="url: .*dot segment"):
        remedies.validate_params("http_request", {"method": "PUT", "url": ATTACKS[0]})


def test_the_attack_sends_nothing_outside_the_allowlist(tmp_path: Path, recorder: Recorder) -> None:
    """The remedy itself, given the parameters an earlier validation would have let through: it
    refuses at the allowlist, and the server sees no request at all."""
    c = ctx(tmp_path, [f"{recorder.base}/admin/"])
    remedy = remedies.get("http_request")
    for url in (f"{recorder.base}/admin/flags/../../secret/drop-all", f"{recorder.base}/admin/%2e%2e/secret/drop-all"):
        params = remedies.CATALOG["http_request"].Params.model_construct(
            method="PUT", url=url, body=None, headers={}, expect_status=[200], timeout_seconds=2.0, undo=None)
        with pytest.raises(RemedyError, match="dot segment|percent-encoded"):
            remedy.apply(params, c)
    assert recorder.paths == []


def test_redirects_out_of_the_allowlist_are_not_followed(tmp_path: Path, recorder: Recorder) -> None:
    c = ctx(tmp_path, [f"{recorder.base}/admin/"])
    params = remedies.validate_params("http_request", {"method": "GET", "url": f"{recorder.base}/admin/go",
                                                       "expect_status": [200, 307]})
    out = remedies.get("http_request").apply(params, c)
    assert "307" in out.output
    assert recorder.paths == [("GET", "/admin/go")]


# -- properties over URL forms ---------------------------------------------------------------------

SAFE = st.sampled_from(["admin", "flags", "v1", "checkout", "a-b_c.d", "~x", "%41dmin", "x%20y", "..x", "x.."])
SEGMENTS = st.one_of(
    SAFE, SAFE, SAFE,
    st.sampled_from(["admin", "flags", "v1", "secret", "..", ".", "", "%2e", "%2E%2e", ".%2e", "%252e%252e", "%2f",
                     "%2F", "%5c", "%255c", "a\\b", "x y", "\u00e9", "\t", "%00", "admin;x", "..;", "%", "%zz",
                     "~user", "a@b", "drop-all", "%41dmin"]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=0, max_size=6),
)
AUTHORITIES = st.one_of(st.sampled_from(["127.0.0.1:8181", "api.example.com"]), st.sampled_from([
    "127.0.0.1:8181", "127.0.0.1:8182", "127.0.0.1", "127.1:8181", "127.0.0.1.:8181", "localhost:8181",
    "u:p@127.0.0.1:8181", "127.0.0.1:8181@evil", "api.example.com", "API.EXAMPLE.COM", "api.example.com:443",
    "api.example.com:80", "evil.example", "[::1]:8181", "127.0.0.1:08181",
]))


@st.composite
def urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "Https"]))
    segs = draw(st.lists(SEGMENTS, max_size=6))
    prefix = draw(st.sampled_from(["", "/admin", "/v1/flags", "/admin/flags"]))
    path = prefix + ("/" + "/".join(segs) if segs else "") + draw(st.sampled_from(["", "/"]))
    query = draw(st.sampled_from(["", "?a=1", "?next=/../x", "?q=%2e%2e"]))
    return f"{scheme}://{draw(AUTHORITIES)}{path}{query}"


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(urls())
def test_an_accepted_url_lies_under_an_allowlisted_prefix_as_sent(url: str) -> None:
    sent = check(url)
    event("accepted" if sent is not None else "refused")
    if sent is None:
        return  # refusing is always safe; the property is about what gets through
    request = httpx.Request("PUT", sent)
    assert request.url == sent  # what httpx sends is what was checked
    raw_path = urlsplit(url).path
    assert request.url.raw_path.decode().split("?", 1)[0] == (raw_path or "/")
    port = request.url.port or {"http": 80, "https": 443}[request.url.scheme]
    ok = False
    for entry in ALLOW:
        e = httpx.URL(entry)
        prefix = e.path.rstrip("/")
        if (request.url.scheme, request.url.host, port) == (e.scheme, e.host, e.port or 443 if e.scheme == "https"
                                                           else e.port or 80):
            norm = normalised_path(request.url.raw_path.decode().split("?", 1)[0])
            ok = ok or norm == prefix or norm.startswith(prefix + "/")
    assert ok, f"{url} was accepted but a server could read it outside {ALLOW}"


LABEL_VALUES = st.lists(st.one_of(st.sampled_from(["..", ".", "/", "%2e", "%2E", "%2f", "%25", "%5c", "\\", "secret", "?",
                                                   "#", "%", "@", ";"]), st.text(max_size=3)),
                        max_size=10).map("".join)


@settings(max_examples=800, deadline=None)
@given(LABEL_VALUES)
def test_any_label_value_in_a_runbook_url_stays_under_its_prefix(flag: str) -> None:
    """The runbook form of the attack: ``…/admin/flags/${flag}`` with any label value."""
    url = f"http://127.0.0.1:8181/admin/flags/{flag}"
    sent = check(url)
    if sent is not None:
        norm = normalised_path(sent.raw_path.decode().split("?", 1)[0])
        assert norm == "/admin/flags" or norm.startswith("/admin/flags/"), url


def test_parse_target_names_the_field() -> None:
    from heald.remedies.http import parse_target

    with pytest.raises(RemedyError, match="remedies.http_allowed_urls entry"):
        parse_target("http://x/a/../b", "remedies.http_allowed_urls entry")


@pytest.mark.parametrize("headers,why", [({"Host": "internal-admin.local"}, "may not override"),
                                         ({"X-Forwarded-Host": "evil"}, "may not override"),
                                         ({"Transfer-Encoding": "chunked"}, "may not override"),
                                         ({"X-Flag": "a\r\nHost: evil"}, "control character"),
                                         ({"Bad Name": "x"}, "token")])
def test_headers_cannot_redirect_or_reframe_the_request(headers: dict[str, str], why: str) -> None:
    """A runbook renders label values into header values; the allowlist checks the URL, so a
    ``Host`` header (another virtual host behind the allowed address) or a framing header
    must not come from parameters."""
    with pytest.raises(RemedyParamsError, match=why):
        remedies.validate_params("http_request", {"url": "http://127.0.0.1:8181/admin/x", "headers": headers})


def test_a_host_header_from_parameters_never_reaches_the_server(tmp_path: Path, recorder: Recorder) -> None:
    c = ctx(tmp_path, [f"{recorder.base}/admin/"])
    with pytest.raises(RemedyParamsError, match="'Host'"):
        params = remedies.validate_params("http_request", {"method": "PUT", "url": f"{recorder.base}/admin/x",
                                                           "headers": {"Host": "internal-admin.local"}})
        remedies.get("http_request").apply(params, c)
    assert recorder.paths == []
