"""heald's package-index proxy: how a sandbox with no network still installs packages.

Every sandboxed run of a repository's code — its install phase included — has a fresh network
namespace (only its own ``lo``): it cannot reach the host's loopback, its abstract unix sockets
or any other interface. The install phase gets packages through this proxy instead:

- on the host, :class:`IndexProxy` serves the PEP 503 simple API over a **unix socket** in a
  directory of its own; that directory is bound read-only into the install sandbox;
- inside the sandbox, :data:`FORWARDER` (started by the install script, see :meth:`IndexProxy.wrap`)
  listens on the sandbox's own ``127.0.0.1:3141`` and relays each connection to the socket; pip
  is pointed at ``http://127.0.0.1:3141/simple/`` with no other index, find-links or
  configuration file (``PIP_CONFIG_FILE=/dev/null``);
- the proxy answers only ``GET``/``HEAD`` of ``/simple/<project>/`` and of the files those pages
  list (``/files/<sha256>/<filename>`` and their PEP 658 ``.metadata``). It fetches only from the
  configured sources (:class:`IndexSources`: the package indexes and find-links directories pip
  is configured with on the host, or ``ci.index_urls``/``ci.find_links``), only the URLs those
  sources' own pages published, and serves a file only when its SHA-256 equals the hash the
  index published (an index entry without a SHA-256 is left out). It is not a general proxy: an
  absolute-form request target, another method or any other path gets 4xx.
- its cache (``ci.pip_cache_dir``, default ``<ci.work_dir>/index-cache``) lives on the host side,
  is never bound into a sandbox, holds only files whose hash was verified, named by that hash,
  verified again each time they are served, and is bounded (``ci.index_cache_mb``, least
  recently used files evicted).

pip's own cache inside a run is ``.heald/pip-cache`` of that run's work tree, so no run trusts
what another repository's run wrote.

Formats: PEP 503 (HTML simple API) and PEP 691 (JSON simple API, ``application/vnd.pypi.simple.v1+json``),
PEP 592 (yanked), PEP 658/714 (``core-metadata``), pip's ``config list`` output.
"""

from __future__ import annotations

import atexit
import hashlib
import html
import json
import os
import re
import shutil
import socketserver
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import structlog

log = structlog.get_logger("heald.ci.index")

#: The port the forwarder listens on inside the sandbox's own network namespace.
SANDBOX_PORT = 3141
DEFAULT_INDEX = "https://pypi.org/simple/"
PAGE_TTL_SECONDS = 300.0
MAX_PAGES = 5000
MAX_PAGE_BYTES = 128 * 1024**2
MAX_FILE_BYTES = 4 * 1024**3
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,198}[a-z0-9])?$")
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+!-]{0,250}$")
_JSON = "application/vnd.pypi.simple.v1+json"

#: Runs inside the sandbox (``python3 -c FORWARDER SOCKET PORT``): listens on 127.0.0.1:PORT of
#: the sandbox's own network namespace, then forks into the background (the install script
#: goes on once the port listens) and relays every connection to the proxy's unix socket. It
#: dies with the run's PID namespace.
FORWARDER = r"""
import os, socket, sys, threading
path, port = sys.argv[1], int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(64)
if os.fork():
    os._exit(0)
fd = os.open(os.devnull, os.O_RDWR)
for i in (0, 1, 2):
    os.dup2(fd, i)
def pump(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    try:
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass
def serve(c):
    u = socket.socket(socket.AF_UNIX)
    try:
        u.connect(path)
    except OSError:
        c.close()
        return
    t = threading.Thread(target=pump, args=(u, c), daemon=True)
    t.start()
    pump(c, u)
    t.join()
    c.close()
    u.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def canonical_name(name: str) -> str:
    """PEP 503 normalisation: lower case, runs of ``-_.`` become one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


class IndexUnavailable(RuntimeError):
    """A source could not be read (the message names the URL and why)."""


@dataclass(frozen=True)
class IndexSources:
    """Where packages come from: ``index_urls`` (PEP 503/691 simple API roots: ``https://…``,
    ``http://…`` or ``file://…``, the first being pip's index-url, the others its
    extra-index-urls) and ``find_links`` (local directories of distribution files)."""

    index_urls: tuple[str, ...] = (DEFAULT_INDEX,)
    find_links: tuple[str, ...] = ()

    @classmethod
    def from_pip(cls, python: str = "python3", timeout: float = 30.0) -> IndexSources:
        """What pip on the host is configured with (``python -m pip config list``: the
        ``:env:``, ``install.`` and ``global.`` keys, in that precedence), PyPI when pip
        names no index or cannot be asked."""
        exe = shutil.which(python) or python
        try:
            out = subprocess.run([exe, "-m", "pip", "config", "list"], capture_output=True, text=True,
                                 timeout=timeout, env={**os.environ, "PIP_NO_INPUT": "1"}).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        return cls.parse_pip_config(out, os.environ)

    @classmethod
    def parse_pip_config(cls, text: str, env: Mapping[str, str]) -> IndexSources:
        """Parse ``pip config list`` output (lines ``scope.key='value'``) plus ``PIP_INDEX_URL``,
        ``PIP_EXTRA_INDEX_URL`` and ``PIP_FIND_LINKS`` from ``env`` (which pip itself lets
        override the files)."""
        found: dict[str, dict[str, str]] = {}
        for line in text.splitlines():
            m = re.match(r"^(:env:|global|install)\.([a-z-]+)='(.*)'$", line.strip())
            if m:
                found.setdefault(m.group(2), {})[m.group(1)] = m.group(3)
        for key, var in (("index-url", "PIP_INDEX_URL"), ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
                         ("find-links", "PIP_FIND_LINKS")):
            if env.get(var):
                found.setdefault(key, {})[":env:"] = env[var]

        def pick(key: str) -> str:
            scopes = found.get(key, {})
            return next((scopes[s] for s in (":env:", "install", "global") if s in scopes), "")

        index = pick("index-url").split() or [DEFAULT_INDEX]
        extra = pick("extra-index-url").split()
        links = pick("find-links").split()
        return cls(tuple(dict.fromkeys([index[0], *extra])), tuple(dict.fromkeys(links)))


@dataclass
class Entry:
    """One distribution file an index published: where it is, its verified-by hash, and the
    PEP 503 attributes pip uses."""

    filename: str
    url: str
    sha256: str
    requires_python: str | None = None
    yanked: str | None = None
    metadata_sha256: str | None = None


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[dict[str, str | None]] = []
        self._current: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._current = dict(attrs)
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._current is not None:
            self._current["#text"] = "".join(self._text).strip()
            self.anchors.append(self._current)
            self._current = None


def _hash_of(fragment_or_value: str | None) -> str | None:
    if not fragment_or_value:
        return None
    for part in fragment_or_value.split("&"):
        algo, _, value = part.partition("=")
        if algo == "sha256" and _SHA256.match(value.lower()):
            return value.lower()
    return None


def parse_html_page(text: str, base_url: str) -> list[Entry]:
    """The files of a PEP 503 project page (``<a href="URL#sha256=…" data-requires-python
    data-yanked data-core-metadata>``); links without a SHA-256 are left out."""
    p = _Anchors()
    p.feed(text)
    out = []
    for a in p.anchors:
        href = a.get("href")
        if not href:
            continue
        url, _, frag = urllib.parse.urljoin(base_url, href).partition("#")
        sha = _hash_of(frag)
        filename = urllib.parse.unquote(url.rsplit("/", 1)[-1])
        if sha is None or not _FILENAME.match(filename):
            continue
        meta = a.get("data-core-metadata") or a.get("data-dist-info-metadata")
        out.append(Entry(filename, url, sha, a.get("data-requires-python") or None,
                         a.get("data-yanked") if "data-yanked" in a else None, _hash_of(meta)))
    return out


def parse_json_page(data: dict[str, Any], base_url: str) -> list[Entry]:
    """The files of a PEP 691 project page; files without a SHA-256 are left out."""
    out = []
    for f in data.get("files") or []:
        if not isinstance(f, dict):
            continue
        filename, url = str(f.get("filename") or ""), f.get("url")
        sha = str((f.get("hashes") or {}).get("sha256") or "").lower()
        if not isinstance(url, str) or not _SHA256.match(sha) or not _FILENAME.match(filename):
            continue
        yanked = f.get("yanked")
        meta = f.get("core-metadata", f.get("dist-info-metadata"))
        meta_sha = str(meta.get("sha256") or "").lower() if isinstance(meta, dict) else ""
        out.append(Entry(filename, urllib.parse.urljoin(base_url, url).partition("#")[0], sha,
                         f.get("requires-python") or None,
                         (yanked if isinstance(yanked, str) else "") if yanked else None,
                         meta_sha if _SHA256.match(meta_sha) else None))
    return out


def _project_of(filename: str) -> str | None:
    """The canonical project name of a distribution file name (wheel or sdist)."""
    from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename, parse_wheel_filename

    try:
        if filename.endswith(".whl"):
            return str(parse_wheel_filename(filename)[0])
        return str(parse_sdist_filename(filename)[0])
    except (InvalidWheelFilename, InvalidSdistFilename, ValueError):
        return None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class _Page:
    expires: float
    entries: list[Entry] | None  # None: no such project


@dataclass
class IndexProxy:
    """The host side of the proxy (see the module docstring). :meth:`start` binds the socket
    and serves in daemon threads; :meth:`close` stops it and removes the socket directory."""

    sources: IndexSources
    cache_dir: Path
    cache_bytes: int = 4 * 1024**3
    sandbox_owner: tuple[int, int] | None = None
    socket_dir: Path = field(init=False)
    socket_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self._pages: dict[str, _Page] = {}
        self._files: dict[str, Entry] = {}
        self._metadata: dict[str, Entry] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._local_hashes: dict[tuple[str, int, int], str] = {}
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(60.0, connect=20.0), follow_redirects=True,
                                    headers={"User-Agent": "heald-index-proxy"})

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> IndexProxy:
        """Bind the socket (in a fresh 0755 directory under the system temp dir: unix socket
        paths are short) and serve. The socket is 0600 and owned by the sandbox's user."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.cache_dir.chmod(0o700)
        self.socket_dir = Path(tempfile.mkdtemp(prefix="heald-index-"))
        self.socket_dir.chmod(0o755)
        self.socket_path = self.socket_dir / "index.sock"
        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = socketserver.ThreadingUnixStreamServer(str(self.socket_path), Handler, bind_and_activate=False)
        server.daemon_threads = True
        old = os.umask(0o177)
        try:
            server.server_bind()
        finally:
            os.umask(old)
        if self.sandbox_owner is not None:
            os.chown(self.socket_path, *self.sandbox_owner)
        server.server_activate()
        self._server = server
        threading.Thread(target=server.serve_forever, name="heald-index-proxy", daemon=True).start()
        log.info("ci.index.started", socket=str(self.socket_path), sources=list(self.sources.index_urls),
                 find_links=list(self.sources.find_links))
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        self._client.close()

    # -- what the sandbox needs ----------------------------------------------------------------
    def env(self, pip_cache: Path) -> dict[str, str]:
        """The environment of an install run: pip (and uv) pointed at the forwarder only, no
        configuration file (so no host index, find-links or cache setting applies), pip's cache
        at ``pip_cache`` (inside the run's own work tree)."""
        url = f"http://127.0.0.1:{SANDBOX_PORT}/simple/"
        return {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": url, "PIP_CACHE_DIR": str(pip_cache),
                "PIP_DEFAULT_TIMEOUT": "120", "UV_INDEX_URL": url, "UV_DEFAULT_INDEX": url, "UV_NO_CONFIG": "1",
                "UV_CACHE_DIR": str(pip_cache / "uv")}

    def wrap(self, script: str, python: str) -> str:
        """``script`` preceded by starting the forwarder with ``python`` (in the sandbox)."""
        quoted = "'" + FORWARDER.replace("'", "'\"'\"'") + "'"
        return (f"{python} -c {quoted} {self.socket_path} {SANDBOX_PORT} || "
                f"{{ echo 'heald: the package-index forwarder did not start' >&2; exit 97; }}\n{script}")

    # -- serving -------------------------------------------------------------------------------
    def page(self, name: str) -> list[Entry] | None:
        """The merged files of project ``name`` (canonical) from every source, None when no
        source has it. Cached for PAGE_TTL_SECONDS. Raises IndexUnavailable when a source fails and
        none has the project."""
        now = time.monotonic()
        with self._lock:
            cached = self._pages.get(name)
            if cached and cached.expires > now:
                return cached.entries
        merged: dict[str, Entry] = {}
        found, errors = False, []
        for url in self.sources.index_urls:
            try:
                entries = self._index_page(url, name)
            except IndexUnavailable as exc:
                errors.append(str(exc))
                continue
            if entries is not None:
                found = True
                for e in entries:
                    merged.setdefault(e.filename, e)
        for d in self.sources.find_links:
            entries = self._find_links(d, name)
            if entries:
                found = True
                for e in entries:
                    merged.setdefault(e.filename, e)
        if not found and errors:
            raise IndexUnavailable("; ".join(errors))
        result = list(merged.values()) if found else None
        with self._lock:
            if len(self._pages) >= MAX_PAGES:  # bounded memory, whatever names a run asks for
                self._pages.clear()
                self._files.clear()
                self._metadata.clear()
            self._pages[name] = _Page(now + PAGE_TTL_SECONDS, result)
            for e in result or []:
                self._files[e.sha256] = e
                if e.metadata_sha256:
                    self._metadata[e.sha256] = e
        return result

    def _index_page(self, root: str, name: str) -> list[Entry] | None:
        base = root.rstrip("/") + f"/{name}/"
        if base.startswith("file:"):
            path = Path(urllib.parse.unquote(urllib.parse.urlsplit(base).path))
            page = path / "index.html" if (path / "index.html").is_file() else None
            if page is None:
                return None
            try:
                return parse_html_page(page.read_text(errors="replace")[:MAX_PAGE_BYTES], page.as_uri())
            except OSError as exc:
                raise IndexUnavailable(f"{page}: {exc}") from exc
        try:
            with self._client.stream("GET", base, headers={"Accept": f"{_JSON}, text/html;q=0.1"}) as r:
                if r.status_code == 404:
                    return None
                if r.status_code != 200:
                    raise IndexUnavailable(f"{base}: HTTP {r.status_code}")
                body = bytearray()
                for chunk in r.iter_bytes():
                    body += chunk
                    if len(body) > MAX_PAGE_BYTES:
                        raise IndexUnavailable(f"{base}: page larger than {MAX_PAGE_BYTES} bytes")
                final = str(r.url)
                ctype = r.headers.get("content-type", "")
        except httpx.HTTPError as exc:
            raise IndexUnavailable(f"{base}: {exc}") from exc
        if _JSON in ctype or ctype.startswith("application/json"):
            try:
                entries = parse_json_page(json.loads(bytes(body)), final)
            except (ValueError, AttributeError) as exc:
                raise IndexUnavailable(f"{base}: not a PEP 691 page ({exc})") from exc
        else:
            entries = parse_html_page(bytes(body).decode("utf-8", errors="replace"), final)
        # a remote index names remote files only: never a path on heald's host (file:)
        return [e for e in entries if e.url.startswith(("https://", "http://"))]

    def _find_links(self, directory: str, name: str) -> list[Entry]:
        d = Path(urllib.parse.unquote(urllib.parse.urlsplit(directory).path) if directory.startswith("file:") else directory)
        if not d.is_dir():
            return []
        out = []
        for p in sorted(d.iterdir()):
            if not p.is_file() or _project_of(p.name) != name or not _FILENAME.match(p.name):
                continue
            st = p.stat()
            key = (str(p), st.st_size, st.st_mtime_ns)
            sha = self._local_hashes.get(key)
            if sha is None:
                sha = self._local_hashes[key] = _sha256_file(p)
            out.append(Entry(p.name, p.as_uri(), sha))
        return out

    def cached_file(self, sha256: str, metadata: bool = False) -> Path | None:
        """The verified local copy of the file with ``sha256`` (of its PEP 658 metadata when
        ``metadata``), fetching it from the index when needed; None when no page the proxy
        served listed it. Raises IndexUnavailable when fetching fails or the hash does not match."""
        with self._lock:
            entry = (self._metadata if metadata else self._files).get(sha256)
            lock = self._locks.setdefault(sha256 + (".m" if metadata else ""), threading.Lock())
        if metadata and entry is None:
            return None
        want = entry.metadata_sha256 if (metadata and entry) else sha256
        if want is None:
            return None
        path = self.cache_dir / want[:2] / want
        with lock:
            if path.is_file():
                if _sha256_file(path) == want:
                    os.utime(path)
                    return path
                path.unlink(missing_ok=True)  # altered on disk: never served
            if entry is None:
                return None
            self._fetch(entry.url + (".metadata" if metadata else ""), want, path)
        self._evict()
        return path

    def _fetch(self, url: str, sha256: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".part-")
        h, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in self._read_source(url):
                    size += len(chunk)
                    if size > MAX_FILE_BYTES:
                        raise IndexUnavailable(f"{url}: larger than {MAX_FILE_BYTES} bytes")
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != sha256:
                raise IndexUnavailable(f"{url}: sha256 {h.hexdigest()} does not match the index's {sha256}; not served")
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _read_source(self, url: str) -> Iterator[bytes]:
        if url.startswith("file:"):
            try:
                with open(urllib.parse.unquote(urllib.parse.urlsplit(url).path), "rb") as f:
                    yield from iter(lambda: f.read(1024 * 1024), b"")
            except OSError as exc:
                raise IndexUnavailable(f"{url}: {exc}") from exc
            return
        try:
            with self._client.stream("GET", url) as r:
                if r.status_code != 200:
                    raise IndexUnavailable(f"{url}: HTTP {r.status_code}")
                yield from r.iter_bytes(1024 * 1024)
        except httpx.HTTPError as exc:
            raise IndexUnavailable(f"{url}: {exc}") from exc

    def _evict(self) -> None:
        files = [(p.stat().st_mtime, p.stat().st_size, p) for p in self.cache_dir.glob("??/*") if p.is_file()]
        total = sum(s for _, s, _ in files)
        for _, size, p in sorted(files):
            if total <= self.cache_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size

    def render(self, name: str, entries: list[Entry]) -> bytes:
        """A PEP 503 page of ``entries`` whose links point back at this proxy."""
        rows = [f"<!DOCTYPE html><html><head><meta name=\"pypi:repository-version\" content=\"1.0\">"
                f"<title>Links for {html.escape(name)}</title></head><body><h1>Links for {html.escape(name)}</h1>"]
        for e in entries:
            attrs = ""
            if e.requires_python:
                attrs += f' data-requires-python="{html.escape(e.requires_python)}"'
            if e.yanked is not None:
                attrs += f' data-yanked="{html.escape(e.yanked)}"'
            if e.metadata_sha256:
                attrs += f' data-core-metadata="sha256={e.metadata_sha256}" data-dist-info-metadata="sha256={e.metadata_sha256}"'
            href = f"/files/{e.sha256}/{urllib.parse.quote(e.filename)}#sha256={e.sha256}"
            rows.append(f'<a href="{html.escape(href)}"{attrs}>{html.escape(e.filename)}</a><br>')
        rows.append("</body></html>")
        return "\n".join(rows).encode()


class _Handler(BaseHTTPRequestHandler):
    """Answers the sandbox's requests (see the module docstring); HTTP/1.1 keep-alive."""

    owner: IndexProxy
    protocol_version = "HTTP/1.1"
    server_version = "heald-index"
    sys_version = ""
    timeout = 120

    def address_string(self) -> str:  # a unix socket has no peer address
        return "sandbox"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        self._serve(head)

    def _serve(self, head: bool) -> int:
        target = self.path
        if not target.startswith("/") or len(target) > 1024 or any(c in target for c in "\\\x00"):
            return self._error(400, "only origin-form paths of the simple API are served")
        path = urllib.parse.urlsplit(target).path
        parts = path.split("/")
        if ".." in parts or "." in parts or "%2e" in path.lower() or "%2f" in path.lower():
            return self._error(400, "dot segments are refused")
        if path in ("/simple", "/simple/"):
            return self._send(200, b"<!DOCTYPE html><html><body></body></html>", "text/html", head)
        m = re.fullmatch(r"/simple/([^/]+)/?", path)
        if m:
            name = canonical_name(urllib.parse.unquote(m.group(1)))
            if not _NAME.match(name):
                return self._error(404, "not a project name")
            try:
                entries = self.owner.page(name)
            except IndexUnavailable as exc:
                return self._error(502, f"the package index could not be read: {exc}")
            if entries is None:
                return self._error(404, f"no project {name}")
            return self._send(200, self.owner.render(name, entries), "text/html; charset=utf-8", head,
                              cache="no-store")
        m = re.fullmatch(r"/files/([0-9a-f]{64})/([^/]+)", path)
        if m:
            sha, filename = m.group(1), urllib.parse.unquote(m.group(2))
            metadata = filename.endswith(".metadata")
            try:
                local = self.owner.cached_file(sha, metadata=metadata)
            except IndexUnavailable as exc:
                return self._error(502, str(exc))
            if local is None:
                return self._error(404, "no page this proxy served lists that file")
            return self._send_file(local, head)
        return self._error(404, "only /simple/<project>/ and the files it lists are served")

    def _error(self, status: int, why: str) -> int:
        return self._send(status, (why[:500] + "\n").encode(), "text/plain; charset=utf-8", False)

    def _send(self, status: int, body: bytes, ctype: str, head: bool, cache: str = "") -> int:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if cache:
            self.send_header("Cache-Control", cache)
        self.end_headers()
        if not head:
            self.wfile.write(body)
        return status

    def _send_file(self, path: Path, head: bool) -> int:
        size = path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if not head:
            with open(path, "rb") as f:
                shutil.copyfileobj(f, self.wfile, 1024 * 1024)
        return 200


_proxies: dict[tuple[IndexSources, Path, int, tuple[int, int] | None], IndexProxy] = {}
_proxies_lock = threading.Lock()


def shared_proxy(sources: IndexSources, cache_dir: Path, cache_bytes: int,
                 sandbox_owner: tuple[int, int] | None) -> IndexProxy:
    """The process's running proxy for these sources and cache (started on first use, closed
    at exit)."""
    key = (sources, cache_dir, cache_bytes, sandbox_owner)
    with _proxies_lock:
        proxy = _proxies.get(key)
        if proxy is None:
            proxy = _proxies[key] = IndexProxy(sources, cache_dir, cache_bytes, sandbox_owner).start()
            atexit.register(proxy.close)
        return proxy


_pip_sources: dict[str, IndexSources] = {}


def configured_sources(index_urls: list[str] | None, find_links: list[str] | None, python: str) -> IndexSources:
    """The sources of ``ci.index_urls``/``ci.find_links``, or, for what they leave unset, of
    pip's configuration on the host (asked once per process)."""
    if index_urls is not None and find_links is not None:
        return IndexSources(tuple(index_urls) or (DEFAULT_INDEX,), tuple(find_links))
    if python not in _pip_sources:
        _pip_sources[python] = IndexSources.from_pip(python)
    pip = _pip_sources[python]
    return IndexSources(tuple(index_urls) if index_urls else pip.index_urls,
                        tuple(find_links) if find_links is not None else pip.find_links)
