"""Python tracebacks: exception type, message, module and frames.

Parses CPython's traceback format (``Lib/traceback.py``): a ``Traceback (most recent call
last):`` header, frames ``  File "path", line N, in func`` each followed by an optional source
line, and the exception line ``pkg.mod.ExceptionType: message``; chained exceptions are joined
by "During handling of the above exception, another exception occurred:" or "The above
exception was the direct cause of the following exception:". Lines may carry a log prefix
(a timestamp, ``container | ``); the prefix in front of ``Traceback`` is stripped from the
lines that follow it.

The category comes from the most specific exception of the chain (the root cause of a
``requests.exceptions.ConnectionError`` is often the ``ConnectionRefusedError`` chained before
it); an exception no rule knows is ``unhandled_exception``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from heald.diagnose.signatures.base import Classification, register

_HEADER = re.compile(r"^(?P<prefix>.*?)Traceback \(most recent call last\):\s*$")
_FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+)(?:, in (?P<func>.+))?')
_EXC = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Timeout|Refused|Failure|Full|"
                  r"Invalid|NotFound|Denied|gaierror|timeout|herror|error))(?::\s?(?P<msg>.*))?$")
_CHAIN = ("During handling of the above exception", "The above exception was the direct cause")


@dataclass
class PyException:
    """One exception of a traceback: dotted ``type``, ``message``, ``frames`` as
    (file, line, function), and the verbatim ``lines``."""

    type: str
    message: str
    frames: list[tuple[str, int, str]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    @property
    def short_type(self) -> str:
        return self.type.rsplit(".", 1)[-1]

    @property
    def module(self) -> str:
        """The module the exception type lives in ('' for builtins)."""
        return self.type.rsplit(".", 1)[0] if "." in self.type else ""


def parse_tracebacks(text: str, limit: int = 50) -> list[list[PyException]]:
    """Every traceback in ``text`` as its chain of exceptions (oldest first), at most
    ``limit`` chains."""
    chains: list[list[PyException]] = []
    lines = text.splitlines()
    i = 0
    chain: list[PyException] = []
    while i < len(lines) and len(chains) < limit:
        m = _HEADER.match(lines[i])
        if not m:
            i += 1
            continue
        prefix = m.group("prefix")
        exc, i = _read_one(lines, i, prefix)
        if exc is None:
            continue
        chain.append(exc)
        # a chained exception follows: a separator line, a blank line, then a new Traceback header
        j = i
        while j < len(lines) and j < i + 3 and not _HEADER.match(lines[j]):
            if any(c in lines[j] for c in _CHAIN):
                j += 1
                continue
            if _strip(lines[j], prefix).strip() == "":
                j += 1
                continue
            break
        if j < len(lines) and _HEADER.match(lines[j]) and any(any(c in lines[k] for c in _CHAIN) for k in range(i, j)):
            i = j
            continue
        chains.append(chain)
        chain = []
    if chain:
        chains.append(chain)
    return chains


def _strip(line: str, prefix: str) -> str:
    if prefix and line.startswith(prefix):
        return line[len(prefix):]
    if prefix and prefix.strip() and line.startswith(prefix.rstrip()):
        return line[len(prefix.rstrip()):]
    return line


def _read_one(lines: list[str], start: int, prefix: str) -> tuple[PyException | None, int]:
    frames: list[tuple[str, int, str]] = []
    verbatim = [lines[start].strip()]
    i = start + 1
    while i < len(lines):
        raw = lines[i]
        line = _strip(raw, prefix)
        fm = _FRAME.match(line)
        if fm:
            frames.append((fm.group("file"), int(fm.group("line")), (fm.group("func") or "").strip()))
            verbatim.append(line.strip())
            i += 1
            continue
        if line.startswith((" ", "\t")) or line.strip() in ("", "^", "~") or set(line.strip()) <= set("^~ "):
            i += 1  # a source line under a frame, or a caret marker
            continue
        em = _EXC.match(line.strip())
        if em:
            msg = (em.group("msg") or "").strip()
            verbatim.append(line.strip())
            i += 1
            return PyException(em.group("type"), msg, frames, verbatim), i
        return None, i  # not a traceback after all (a log line interrupted it)
    return None, i


# (category, confidence, exception short-type regex, message regex or None)
_RULES: list[tuple[str, float, str, str | None]] = [
    ("missing_module", 0.92, r"ModuleNotFoundError", None),
    ("missing_module", 0.9, r"ImportError", r"No module named"),
    ("disk_full", 0.93, r".*", r"\[Errno 28\]|No space left on device|\[Errno 122\]|Disk quota exceeded"),
    ("out_of_memory", 0.9, r"MemoryError|OutOfMemoryError", None),
    ("out_of_memory", 0.88, r".*", r"\[Errno 12\]|Cannot allocate memory"),
    ("database_unavailable", 0.9, r"OperationalError|InterfaceError|ConnectionFailure|ServerSelectionTimeoutError|"
     r"CannotConnectNowError|ConnectionDoesNotExistError|TooManyConnectionsError",
     r"connect|connection|server closed|starting up|shutting down|too many|timeout|refused|Lost connection|"
     r"gone away|could not translate host"),
    ("database_unavailable", 0.88, r"ConnectionError|TimeoutError|BusyLoadingError", r"redis|Error \d+ connecting to"),
    ("dns_failure", 0.9, r"gaierror|NameResolutionError|herror",
     None),
    ("dns_failure", 0.88, r".*", r"Name or service not known|Temporary failure in name resolution|"
     r"nodename nor servname|No address associated with hostname|\[Errno -[235]\]|Failed to resolve|getaddrinfo failed"),
    ("tls_error", 0.9, r"SSLError|SSLCertVerificationError|CertificateError|SSLZeroReturnError", None),
    ("tls_error", 0.85, r".*", r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|certificate has expired"),
    ("connection_refused", 0.88, r"ConnectionRefusedError", None),
    ("connection_refused", 0.86, r".*", r"\[Errno 111\]|Connection refused|ECONNREFUSED|actively refused"),
    ("network_timeout", 0.86, r"TimeoutError|timeout|ReadTimeout|ConnectTimeout|ReadTimeoutError|ConnectTimeoutError|"
     r"PoolTimeout|WriteTimeout|TimeoutException|CancelledError", None),
    ("network_timeout", 0.84, r".*", r"timed out|\[Errno 110\]|ETIMEDOUT"),
    ("connection_refused", 0.7, r"ConnectionError|ConnectError|NewConnectionError|MaxRetryError|ConnectionResetError|"
     r"RemoteDisconnected|BrokenPipeError", None),
    ("permission_denied", 0.88, r"PermissionError", None),
    ("permission_denied", 0.85, r".*", r"\[Errno 13\]|\[Errno 1\] Operation not permitted|Permission denied"),
    ("bad_config", 0.85, r"ScannerError|ParserError|ConstructorError|ComposerError|YAMLError|TOMLDecodeError|"
     r"MissingSectionHeaderError|DuplicateSectionError|InterpolationError|NoSectionError|NoOptionError|ConfigError|"
     r"ConfigurationError|ImproperlyConfigured|SettingsError", None),
]
_CONFIG_HINT = re.compile(r"config|settings|\.ya?ml|\.toml|\.ini|\.conf|\.env", re.IGNORECASE)


def categorize(exc: PyException) -> tuple[str, float] | None:
    """The category one exception shows by itself, or None when no rule knows it."""
    for category, conf, type_rx, msg_rx in _RULES:
        if re.fullmatch(type_rx, exc.short_type) and (msg_rx is None or re.search(msg_rx, exc.message, re.IGNORECASE)):
            return category, conf
    # Bad configuration: a decode or validation error raised while reading a config file.
    if exc.short_type in ("JSONDecodeError", "ValidationError", "KeyError", "ValueError", "TypeError") and (
            _CONFIG_HINT.search(exc.message) or any(_CONFIG_HINT.search(f"{f} {fn}") for f, _, fn in exc.frames[-3:])):
        return "bad_config", 0.78
    return None


@register("python_traceback")
def python_traceback(text: str) -> list[Classification]:
    """One Classification per distinct final exception type: the category of the most
    specific exception of its chain (confidence of that rule), else ``unhandled_exception``
    (0.75). Evidence: the header, the last two frames and the exception lines; details:
    exception, message, module, file, line, function."""
    if "Traceback (most recent call last)" not in text:
        return []
    found: dict[tuple[str, str], Classification] = {}
    for chain in parse_tracebacks(text):
        final = chain[-1]
        best: tuple[str, float] | None = None
        for exc in reversed(chain):
            cat = categorize(exc)
            if cat is not None and (best is None or cat[1] > best[1]):
                best = cat
        category, conf = best or ("unhandled_exception", 0.75)
        key = (category, final.type)
        if key in found:
            continue
        evidence = [final.lines[0], *final.lines[1:-1][-2:], *[e.lines[-1] for e in chain]]
        top = final.frames[-1] if final.frames else ("", 0, "")
        details = {"exception": final.type, "message": final.message[:500], "module": final.module,
                   "file": top[0], "line": top[1], "function": top[2],
                   "chain": [e.type for e in chain]}
        if category == "missing_module":
            m = re.search(r"No module named '?([\w.]+)'?", " ".join(e.message for e in chain))
            if m:
                details["missing"] = m.group(1)
        found[key] = Classification(category, conf, list(dict.fromkeys(evidence)), details)
    return list(found.values())
