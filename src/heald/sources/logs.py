"""Logs as a source: tail files (or stdin), mine templates with drain3, and turn a new error
template, or one whose rate jumps, into a signal whose evidence is the matching lines.

:class:`LogMiner` is the pure part: :meth:`LogMiner.feed` takes lines (with the time they were
read) and returns signals. It groups a multi-line record (a Python traceback, indented
continuation lines) into one and decides whether the record is signal-worthy:

- its own level, where the format has one (:func:`parse_level`: an RFC 5424/3164 syslog
  ``<PRI>``, a JSON ``level``/``severity``/``PRIORITY`` field, logfmt ``level=``, a klog
  ``E0102`` prefix, or a level token among the first words such as ``ERROR``, ``[WARN]``,
  ``FATAL:``), compared with ``min_level``; a record without a level is judged by
  ``error_pattern`` as before;
- ``never_signal`` regexes on the key line make it never worthy, ``always_signal`` always.

A worthy record's message (the text after its level token, or the JSON ``msg``) is mined with
drain3's ``TemplateMiner`` after masking timestamps, dates, UUIDs, IPs, node ids, URLs, paths,
hex and numbers (:func:`mask`). Then, per template:

- during the warm-up of a fresh miner templates are learned as normal and nothing fires: a
  tailed file's last ``warmup_records`` lines written before heald watched it (none: no
  warm-up), or, for a log read from its start (stdin, ``from_start``, :meth:`LogMiner.feed`),
  its first ``warmup_seconds`` of log time or ``warmup_records`` records, whichever ends first;
- a template drain3 has never seen fires ``trigger: new_template``, at most
  ``max_new_template_signals`` per ``rate_window_seconds``: beyond that one signal
  (``trigger: template_flood``, ``template_id=flood``) stands for the rest, so a log of garbage
  cannot raise thousands of incidents;
- a template whose count over the last ``rate_window_seconds`` reaches ``rate_min_count`` and
  ``rate_factor`` times what its earlier rate predicts fires ``trigger: rate_jump`` (at most
  once per window per template);
- an ``always_signal`` record whose template is not firing fires ``trigger: always``;
- a template that fired and then stays quiet for ``resolve_after_seconds`` gets a resolved
  signal, so verification by "alerts resolved" works for log-only services.

Signals: source ``logs``, kind ``error_log``, severity from the record's level (warning, error,
critical), labels ``alertname=ErrorLogs``, ``service``, ``log`` (the source's name) and
``template_id``; annotations ``template``, ``trigger``, ``count``, ``level`` and ``log`` (the
last ``max_evidence_lines`` lines of matching records, verbatim but for control characters:
the evidence the knowledge base reads). The fingerprint is per (service, log, template).

Hostile input: a line is cut to ``max_line_bytes`` (UTF-8) before anything else, ANSI escape
sequences are removed and other control characters replaced by U+FFFD; the tailer reads bytes,
never holds more than ``max_line_bytes`` of one line and decodes invalid UTF-8 with U+FFFD.

:class:`LogTailer` follows a file like ``tail -F`` (from its end unless ``from_start``;
reopened after rotation or truncation) or reads stdin, and feeds the miner from a thread.
drain3's state persists under the state directory, so templates seen before a restart are not
new after it (and a miner restored from that state has no warm-up). drain3:
https://github.com/logpai/Drain3 (``TemplateMiner.add_log_message``).
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import structlog
from drain3 import TemplateMiner
from drain3.file_persistence import FilePersistence
from drain3.template_miner_config import TemplateMinerConfig

from heald.config import LogSourceConfig
from heald.correlate.fingerprint import fingerprint
from heald.models import Severity, Signal, SignalStatus, utcnow

log = structlog.get_logger("heald.logs")

_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
#: Variable parts masked before mining (in this order), so that one message with different
#: values is one template: drain3 replaces each match by ``<NAME>``.
MASKS = [
    (r"\[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\]", "TS"),
    (r"\b\d{4}-\d{2}-\d{2}-\d{2}\.\d{2}\.\d{2}(?:\.\d+)?", "TS"),
    (r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?", "TS"),
    (rf"\b{_MONTH} +\d{{1,2}}(?: \d{{4}})? \d{{2}}:\d{{2}}:\d{{2}}\b", "TS"),
    (r"\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b", "TS"),
    (r"\b\d{4}[./-]\d{1,2}[./-]\d{1,2}\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b", "DATE"),
    (r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b", "UUID"),
    (r"\b(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}\b", "IP"),
    (r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?(?![\w.])", "IP"),
    (r"\b[a-zA-Z][a-zA-Z+.-]*://[^\s\"'<>]+", "URL"),
    (r"\b(?=[\w:-]*\d)[A-Za-z][A-Za-z0-9]*(?:[-:][A-Za-z0-9]+){2,}\b", "NODE"),
    (r"(?<![\w.~/-])(?:~|\.{1,2})?(?:/[\w.@%+~:-]+){2,}/?", "PATH"),
    (r"\b[a-zA-Z]{1,10}\d+(?![\w.])", "ID"),
    (r"\b0x[0-9a-fA-F]+\b", "HEX"),
    (r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b", "HEX"),
    (r"(?<!\w)[-+]?\d+(?:\.\d+)*(?:ms|us|ns|s|[kKMGT]i?B|B|%)?(?!\w)", "NUM"),
]
_MASKS = [(re.compile(p), f"<{name}>") for p, name in MASKS]
_MASK_RUN = re.compile(r"<([A-Z]+)>(?:[\s,;]+<\1>)+")
_HISTORY_BYTES = 16 * 1024 * 1024
_FLOOD = -1  # the template id of the one signal that stands for new templates beyond the budget
_TB_HEADER = "Traceback (most recent call last)"
_EXC_LINE = re.compile(r"^\s*(?:[\w.]+(?:Error|Exception|Exit|Interrupt|Timeout|gaierror|error))(?::|$)")
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

#: The levels heald knows, lowest first (syslog's emerg/alert/crit are all ``critical``).
LEVELS = ("debug", "info", "notice", "warning", "error", "critical")
_RANK = {name: i for i, name in enumerate(LEVELS)}
_WORDS = {
    "debug": ("TRACE", "DEBUG", "DBG", "FINE", "FINER", "FINEST", "VERBOSE"),
    "info": ("INFO", "INF", "INFORMATION", "INFORMATIONAL"),
    "notice": ("NOTICE",),
    "warning": ("WARN", "WARNING", "WRN"),
    "error": ("ERROR", "ERR", "EROR", "SEVERE"),
    "critical": ("CRIT", "CRITICAL", "FATAL", "FTL", "PANIC", "DPANIC", "EMERG", "EMERGENCY", "ALERT"),
}
_UPPER = {w: lvl for lvl, words in _WORDS.items() for w in words}
_TOKEN = {**_UPPER, **{w.capitalize(): lvl for w, lvl in _UPPER.items()}}  # ERROR, Error; not "error" in prose
_LOWER = {w.lower(): lvl for w, lvl in _UPPER.items()}  # for fields and brackets: level=error, [error]
_SYSLOG = ("critical", "critical", "critical", "error", "warning", "notice", "info", "debug")
_PRI = re.compile(r"^<(\d{1,3})>(?:1 )?")
_KLOG = re.compile(r"^([IWEF])\d{4} ")
_KLOG_LEVEL = {"I": "info", "W": "warning", "E": "error", "F": "critical"}
_LOGFMT = re.compile(r"(?:^|\s)(?:level|lvl|severity|loglevel)=\"?([A-Za-z]+)\"?(?=\s|$)")
_LOGFMT_MSG = re.compile(r"(?:^|\s)msg=(?:\"((?:[^\"\\]|\\.)*)\"|(\S+))")
_JSON_LEVEL_KEYS = ("level", "lvl", "severity", "levelname", "loglevel", "log.level", "@l", "priority",
                    "syslog.severity", "severity_text")
_JSON_MSG_KEYS = ("msg", "message", "@m", "@mt", "log")
_HEADER_TOKENS = 10
_STRIP = "[]<>():,|"


def parse_level(line: str) -> tuple[str | None, str]:
    """The level a log line gives itself, and its message (the text after the level).

    Returns ``(level, message)`` with ``level`` one of :data:`LEVELS` or None when the line
    has none. Formats, first match wins: syslog ``<PRI>`` (RFC 5424 §6.2.1, RFC 3164 §4.1.1:
    severity = PRI mod 8); a JSON object with a level field (``level``, ``severity``,
    ``levelname``, journald's ``PRIORITY``, ECS ``log.level``, pino's numbers 10-60) and its
    ``msg``/``message``; logfmt ``level=error msg="…"``; klog's ``E0102 15:04:05`` prefix; a
    level word among the first ten words (``ERROR``, ``Error``, ``[error]``, ``<WARN>``,
    ``FATAL:``, ``ERROR:root:…``), lower-case words only in brackets so that prose ("an error
    occurred") is not a level. The message is the whole line when no level is found."""
    m = _PRI.match(line)
    if m and int(m.group(1)) <= 191:
        return _SYSLOG[int(m.group(1)) % 8], line[m.end():]
    stripped = line.strip()
    if stripped.startswith("{") and stripped.endswith("}"):
        got = _json_level(stripped)
        if got is not None:
            return got
    m = _LOGFMT.search(line)
    if m and m.group(1).lower() in _LOWER:
        msg = _LOGFMT_MSG.search(line)
        return _LOWER[m.group(1).lower()], (msg.group(1) or msg.group(2)) if msg else line
    m = _KLOG.match(line)
    if m:
        return _KLOG_LEVEL[m.group(1)], line[m.end():]
    pos = 0
    for n, word in enumerate(line[:400].split()):
        if n >= _HEADER_TOKENS:
            break
        pos = line.index(word, pos)
        end = pos + len(word)
        token = word.strip(_STRIP).split(":", 1)[0]
        level = _TOKEN.get(token)
        if level is None and word[:1] in "[<(" and word.rstrip(":,|")[-1:] in "]>)":
            level = _LOWER.get(token)
        if level is not None:
            return level, line[pos + word.find(token) + len(token):].lstrip(" \t:-|])>")
        pos = end
    return None, line


def _json_level(text: str) -> tuple[str | None, str] | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    flat: dict[str, Any] = {k.lower(): v for k, v in obj.items() if isinstance(k, str)}
    for k, v in list(flat.items()):
        if isinstance(v, dict):  # ECS: {"log": {"level": "error"}}
            flat.update({f"{k}.{kk.lower()}": vv for kk, vv in v.items() if isinstance(kk, str)})
    msg = next((v for k in _JSON_MSG_KEYS if isinstance(v := flat.get(k), str)), text)
    for key in _JSON_LEVEL_KEYS:
        v = flat.get(key)
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v.strip())
        if isinstance(v, int):
            if key in ("priority", "syslog.severity") or 0 <= v <= 7:
                return (_SYSLOG[v] if 0 <= v <= 7 else None), msg
            return ("critical" if v >= 60 else "error" if v >= 50 else "warning" if v >= 40
                    else "info" if v >= 30 else "debug"), msg  # pino / bunyan
        if isinstance(v, str) and v.strip().lower() in _LOWER:
            return _LOWER[v.strip().lower()], msg
    return None


def mask(message: str) -> str:
    """``message`` with the variable parts of :data:`MASKS` replaced by ``<NAME>``, and a run of
    the same mask (a list of hosts, of numbers) made one: drain3 groups messages by their
    number of words first, so a list of varying length would otherwise be a new template."""
    for pattern, repl in _MASKS:
        message = pattern.sub(repl, message)
    return _MASK_RUN.sub(lambda m: f"<{m.group(1)}>", message)


def clean_line(raw: str, max_bytes: int) -> str:
    """One line as the miner keeps it: the line ending removed, cut to ``max_bytes`` of UTF-8
    (never inside a character), ANSI escape sequences removed, other control characters
    (but tab) replaced by U+FFFD."""
    line = raw.rstrip("\r\n")
    if len(line) * 4 > max_bytes:
        line = line.encode("utf-8", "replace")[:max_bytes].decode("utf-8", "ignore")
    if "\x1b" in line:
        line = _ANSI.sub("", line)
    return _CONTROL.sub("\ufffd", line)


@dataclass(frozen=True)
class RecordVerdict:
    """What the miner made of one record: where its lines are among all lines fed (0-based),
    its level, whether it is signal-worthy (``candidate``), its template, whether it is part of
    a firing signal (``raised``: the record that fired, or a later one while its template's
    signal is firing) and the signal it fired, if any."""

    first_line: int
    line_count: int
    level: str | None
    candidate: bool
    template_id: int | None
    raised: bool
    signal: Signal | None


@dataclass
class _Template:
    """What the miner remembers about one template: recent occurrence times (seconds), the
    count before them, when it was first seen, the last lines, whether it fired."""

    first_seen: float
    times: deque[float] = field(default_factory=deque)
    earlier: int = 0
    lines: deque[str] = field(default_factory=deque)
    fired_at: float | None = None
    firing: bool = False
    last_seen: float = 0.0
    level: str = "error"


class LogMiner:
    """Turns log lines into signals (see the module docstring). Not thread-safe: one feeder.
    ``on_record`` is called with each record's :class:`RecordVerdict` (the evaluation uses it)."""

    def __init__(self, cfg: LogSourceConfig, state_dir: Path | None = None,
                 on_record: Callable[[RecordVerdict], None] | None = None):
        self.cfg = cfg
        self.name = cfg.label
        self.error = re.compile(cfg.error_pattern)
        self.always = [re.compile(p) for p in cfg.always_signal]
        self.never = [re.compile(p) for p in cfg.never_signal]
        self.min_rank = _RANK[cfg.min_level]
        self.on_record = on_record
        tm_config = TemplateMinerConfig()
        tm_config.drain_sim_th = cfg.similarity_threshold
        tm_config.drain_depth = 4
        tm_config.drain_max_clusters = cfg.max_templates
        tm_config.masking_instructions = []  # mask() runs first: drain3's masking cannot merge runs
        tm_config.snapshot_interval_minutes = 1
        tm_config.profiling_enabled = False
        persistence = None
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            persistence = FilePersistence(str(state_dir / f"drain3-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.name)}.json"))
        self.miner = TemplateMiner(persistence, tm_config)
        self.templates: OrderedDict[int, _Template] = OrderedDict()  # least recently seen first
        self._new_fired: deque[float] = deque()
        self._record: list[str] = []
        self._record_start = 0
        self._lines_fed = 0
        self._in_traceback = False
        self.records = 0
        self.errors = 0
        # a miner restored from saved templates has learned already
        self.warm = cfg.warmup_seconds == 0 or cfg.warmup_records == 0 or bool(self.miner.drain.clusters)
        self._started: float | None = None
        self._learning = False

    # -- records -------------------------------------------------------------------------
    def feed(self, lines: Iterable[str], now: float | None = None) -> list[Signal]:
        """Feed lines read at ``now`` (epoch seconds); returns the signals they trigger. A
        record is complete when the next one starts; call :meth:`flush` when input pauses."""
        now = time.time() if now is None else now
        out: list[Signal] = []
        for raw in lines:
            line = clean_line(raw, self.cfg.max_line_bytes)
            self._lines_fed += 1
            if self._continues(line):
                self._record.append(line)
                if self._in_traceback and _EXC_LINE.match(line) and not line.startswith((" ", "\t")):
                    self._in_traceback = False
                continue
            out.extend(self.flush(now))
            self._record = [line]
            self._record_start = self._lines_fed - 1
            self._in_traceback = _TB_HEADER in line
        return out

    def _continues(self, line: str) -> bool:
        if not self._record or len(self._record) >= 200:
            return False
        if self._in_traceback:
            return True
        if line.startswith((" ", "\t")) and line.strip():
            return True
        if _TB_HEADER in line and self._record and self.error.search(self._record[0]):
            self._in_traceback = True  # a logger's "ERROR … exception" line followed by its traceback
            return True
        return False

    def flush(self, now: float | None = None) -> list[Signal]:
        """Finish the pending record (when input pauses) and check rates; returns signals."""
        now = time.time() if now is None else now
        out: list[Signal] = []
        if self._record:
            record, self._record, self._in_traceback = self._record, [], False
            sig = self._mine(record, now)
            if sig is not None:
                out.append(sig)
        out.extend(self._resolve_quiet(now))
        return out

    def _key_line(self, record: list[str]) -> str:
        if any(_TB_HEADER in line for line in record):
            for line in reversed(record):
                if _EXC_LINE.match(line) and not line.startswith((" ", "\t")):
                    return line.strip()
        return record[0].strip()

    def learn(self, lines: Iterable[str], now: float | None = None) -> None:
        """Mine ``lines`` as normal (the log's past, before heald watched it): no signals; the
        miner is warmed up afterwards."""
        now = time.time() if now is None else now
        self._learning = True
        try:
            self.feed(lines, now)
            self.flush(now)
        finally:
            self._learning = False
        self.warm = True
        for t in self.templates.values():  # the past had its own times: its lines are no burst now
            t.times.clear()
            t.earlier = 0
            t.first_seen = now

    def _warming(self, now: float) -> bool:
        if self._learning:
            return True
        if self.warm:
            return False
        if self._started is None:
            self._started = now
        if now - self._started >= self.cfg.warmup_seconds or self.records > self.cfg.warmup_records:
            self.warm = True
        return not self.warm

    def _verdict(self, record: list[str], level: str | None, candidate: bool, cid: int | None,
                 sig: Signal | None) -> None:
        if self.on_record is not None:
            t = self.templates.get(cid) if cid is not None else None
            self.on_record(RecordVerdict(first_line=self._record_start, line_count=len(record), level=level,
                                         candidate=candidate, template_id=cid,
                                         raised=bool(t is not None and t.firing), signal=sig))

    def _mine(self, record: list[str], now: float) -> Signal | None:
        self.records += 1
        warming = self._warming(now)
        key = self._key_line(record)
        level, message = parse_level(record[0])
        if key != record[0].strip():  # a traceback: its exception line is the message
            message = key
        always = any(p.search(key) for p in self.always)
        if always:
            candidate = True
        elif any(p.search(key) for p in self.never):
            candidate = False
        elif level is not None:
            candidate = _RANK[level] >= self.min_rank
        else:
            candidate = bool(self.error.search("\n".join(record)))
        if not candidate:
            self._verdict(record, level, False, None, None)
            return None
        self.errors += 1
        result = self.miner.add_log_message(mask(message.strip() or key))
        cid = int(result["cluster_id"])
        created = result["change_type"] == "cluster_created"
        # a worthy record below warning (always_signal, a low min_level) or without a level is an error
        rec_level = level if level is not None and _RANK[level] >= _RANK["warning"] else "error"
        t = self._touch(cid, record, now, rec_level)
        window = self.cfg.rate_window_seconds
        template = str(result["template_mined"])
        sig: Signal | None = None
        if always and not t.firing:
            sig = self._fire(cid, t, template, now, "always", f"log message that always matters in {self.name}: "
                                                              f"{template}")
        elif warming:
            pass  # learning what is normal
        elif created and self.cfg.new_template_signals:
            while self._new_fired and self._new_fired[0] <= now - window:
                self._new_fired.popleft()
            if len(self._new_fired) < self.cfg.max_new_template_signals:
                self._new_fired.append(now)
                sig = self._fire(cid, t, template, now, "new_template",
                                 f"new error template in {self.name}: {template}")
            else:  # the budget is spent: one flood signal holds the rest
                flood = self._touch(_FLOOD, record, now, rec_level)
                if not flood.firing:
                    sig = self._fire(_FLOOD, flood, "many new templates", now, "template_flood",
                                     f"more than {self.cfg.max_new_template_signals} new error templates in "
                                     f"{window:g} s in {self.name}: garbage, or a flood of unrelated errors")
        else:
            count = len(t.times)
            observed_before = max(0.0, (now - window) - t.first_seen)
            expected = t.earlier / observed_before * window if observed_before >= window else 0.0
            if (count >= self.cfg.rate_min_count and count >= self.cfg.rate_factor * max(expected, 1.0)
                    and (t.fired_at is None or now - t.fired_at >= window)):
                sig = self._fire(cid, t, template, now, "rate_jump",
                                 f"error rate jump in {self.name}: {count} in {window:g} s "
                                 f"(expected {expected:.1f}): {template}")
        self._verdict(record, level, True, cid, sig)
        return sig

    def _touch(self, cid: int, record: list[str], now: float, level: str) -> _Template:
        """The template's state after one more record: times, evidence lines, level; the least
        recently seen quiet template is forgotten beyond ``max_templates`` (as drain3 does)."""
        t = self.templates.get(cid)
        if t is None:
            t = self.templates[cid] = _Template(first_seen=now, level=level)
            if len(self.templates) > self.cfg.max_templates:
                old = next((k for k, v in self.templates.items() if not v.firing and k != cid), None)
                if old is not None:
                    del self.templates[old]
        self.templates.move_to_end(cid)
        t.last_seen = now
        t.level = max(t.level, level, key=_RANK.__getitem__)
        t.times.append(now)
        t.lines.extend(record)
        while len(t.lines) > self.cfg.max_evidence_lines:
            t.lines.popleft()
        window = self.cfg.rate_window_seconds
        while t.times and t.times[0] < now - window:
            t.times.popleft()
            t.earlier += 1
        return t

    def _labels(self, cid: int) -> dict[str, str]:
        labels = {**self.cfg.labels, "alertname": "ErrorLogs", "log": self.name,
                  "template_id": "flood" if cid == _FLOOD else str(cid)}
        if self.cfg.service:
            labels["service"] = self.cfg.service
        return labels

    def _fire(self, cid: int, t: _Template, template: str, now: float, trigger: str, summary: str) -> Signal:
        t.fired_at = now
        t.firing = True
        sig = Signal(source="logs", kind="error_log", service=self.cfg.service, status=SignalStatus.firing,
                     severity=Severity(t.level), summary=summary[:1000],
                     labels=self._labels(cid),
                     annotations={"template": template, "trigger": trigger, "count": str(len(t.times)),
                                  "level": t.level, "log": "\n".join(t.lines)},
                     starts_at=_dt(t.times[0] if trigger == "rate_jump" else now))
        sig.fingerprint = fingerprint(sig, fields=("alertname", "service", "log", "template_id"))
        return sig

    def _resolve_quiet(self, now: float) -> list[Signal]:
        out = []
        for cid, t in self.templates.items():
            if t.firing and now - t.last_seen >= self.cfg.resolve_after_seconds:
                t.firing = False
                sig = Signal(source="logs", kind="error_log", service=self.cfg.service, status=SignalStatus.resolved,
                             severity=Severity(t.level),
                             summary=f"no new lines of this error in {self.name} for {self.cfg.resolve_after_seconds:g} s",
                             labels=self._labels(cid), annotations={"trigger": "quiet"},
                             starts_at=_dt(t.fired_at or now), ends_at=_dt(now))
                sig.fingerprint = fingerprint(sig, fields=("alertname", "service", "log", "template_id"))
                out.append(sig)
        return out

    def save(self) -> None:
        """Persist drain3's templates now (they are also saved every minute while mining)."""
        if self.miner.persistence_handler is not None:
            self.miner.save_state("heald shutdown")


def _dt(epoch: float) -> datetime:
    return utcnow() + timedelta(seconds=epoch - time.time())


class LogTailer:
    """Follows one log (a file like ``tail -F``, or stdin for path ``-``) in a thread of its
    own and passes the miner's signals to ``emit``. Reads at most ``max_lines_per_poll`` lines
    per poll, so one burst cannot starve the rest."""

    def __init__(self, cfg: LogSourceConfig, emit: Callable[[Signal], object], state_dir: Path | None = None,
                 stdin: IO[str] | None = None):
        self.cfg = cfg
        self.emit = emit
        self.miner = LogMiner(cfg, state_dir)
        self.stdin = stdin
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._skipping = False
        self.lines_read = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"logs-{self.miner.name}")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.miner.save()

    def _deliver(self, signals: list[Signal]) -> None:
        for sig in signals:
            try:
                self.emit(sig)
            except Exception:  # a failed delivery is logged; tailing goes on
                log.exception("logs.emit_failed", log=self.miner.name)

    def _run(self) -> None:
        if self.cfg.path == "-":
            self._run_stream(self.stdin or sys.stdin)
        else:
            self._run_file(Path(self.cfg.path))

    def _run_stream(self, stream: IO[str]) -> None:
        limit = self.cfg.max_line_bytes  # characters here: at least as many bytes, and clean_line cuts to bytes
        skipping = False
        while not self._stop.is_set():
            line = stream.readline(limit + 1)
            if not line:
                break
            if skipping:  # the tail of a line already cut
                skipping = not line.endswith("\n")
                continue
            skipping = len(line) > limit and not line.endswith("\n")
            self.lines_read += 1
            self._deliver(self.miner.feed([line]))
        self._deliver(self.miner.flush())

    def _run_file(self, path: Path) -> None:
        fh: IO[bytes] | None = None
        inode = None
        first = True
        partial = b""
        while not self._stop.is_set():
            try:
                st = path.stat()
            except FileNotFoundError:
                st = None
            if st is not None and (fh is None or st.st_ino != inode or st.st_size < fh.tell()):
                if fh is not None:  # rotated or truncated: finish the old file, then read the new one
                    partial = self._drain(fh, partial)
                    fh.close()
                fh = path.open("rb")
                inode = st.st_ino
                if first and not self.cfg.from_start:
                    self._learn_history(fh)
                    fh.seek(0, os.SEEK_END)
                first = False
            if fh is not None:
                before = self.lines_read
                partial = self._drain(fh, partial)
                if self.lines_read > before:
                    continue
            self._deliver(self.miner.flush())
            self._stop.wait(self.cfg.poll_interval_seconds)
        if fh is not None:
            fh.close()

    def _learn_history(self, fh: IO[bytes]) -> None:
        """Warm a fresh miner up on the file's last ``warmup_records`` lines (at most
        :data:`_HISTORY_BYTES`), the past heald did not watch: what it already holds is normal.
        A file without history leaves nothing to compare with, so the miner is live at once."""
        if self.miner.warm:
            return
        end = fh.seek(0, os.SEEK_END)
        start = max(0, end - min(_HISTORY_BYTES, self.cfg.warmup_records * 1024))
        fh.seek(start)
        data = fh.read(end - start)
        lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
        if start > 0 and lines:
            lines = lines[1:]  # the first line read is a tail of a line
        self.miner.learn(lines[-self.cfg.warmup_records:])

    def _drain(self, fh: IO[bytes], partial: bytes) -> bytes:
        """Read up to ``max_lines_per_poll`` complete lines; return the incomplete tail. Never
        holds more than ``max_line_bytes`` of one line: the rest of a longer line is skipped."""
        lines = []
        limit = self.cfg.max_line_bytes
        for _ in range(self.cfg.max_lines_per_poll):
            chunk = fh.readline(limit + 1)
            if not chunk:
                break
            if self._skipping:  # the tail of a line already cut to max_line_bytes
                self._skipping = not chunk.endswith(b"\n")
                continue
            partial += chunk
            if len(partial) > limit and not partial.endswith(b"\n"):
                partial = partial[:limit] + b"\n"
                self._skipping = True
            if not partial.endswith(b"\n"):
                break  # a partial line: keep it until the writer finishes it
            lines.append(partial[:limit].decode("utf-8", errors="replace"))
            partial = b""
        self.lines_read += len(lines)
        if lines:
            self._deliver(self.miner.feed(lines))
        return partial
