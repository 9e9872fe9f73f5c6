"""Logs as a source: tail files (or stdin), mine templates with drain3, and turn a new error
template, or one whose rate jumps, into a signal whose evidence is the matching lines.

:class:`LogMiner` is the pure part: :meth:`LogMiner.feed` takes lines (with the time they were
read) and returns signals. It groups a multi-line record (a Python traceback, indented
continuation lines) into one, mines the record's key line with drain3's ``TemplateMiner``
(the exception line of a traceback, else the first line), and for records that look like errors
(``error_pattern``):

- a template drain3 has never seen (``change_type == "cluster_created"``) fires a signal with
  ``trigger: new_template``;
- a template whose count over the last ``rate_window_seconds`` reaches ``rate_min_count`` and
  ``rate_factor`` times what its earlier rate predicts fires ``trigger: rate_jump`` (at most
  once per window per template);
- a template that fired and then stays quiet for ``resolve_after_seconds`` gets a resolved
  signal, so verification by "alerts resolved" works for log-only services.

Signals: source ``logs``, kind ``error_log``, labels ``alertname=ErrorLogs``, ``service``,
``log`` (the source's name) and ``template_id``; annotations ``template``, ``trigger``,
``count`` and ``log`` (the last ``max_evidence_lines`` lines of matching records, verbatim:
the evidence the knowledge base reads). The fingerprint is per (service, log, template).

:class:`LogTailer` follows a file like ``tail -F`` (from its end unless ``from_start``;
reopened after rotation or truncation) or reads stdin, and feeds the miner from a thread.
drain3's state persists under the state directory, so templates seen before a restart are not
new after it. drain3: https://github.com/logpai/Drain3 (``TemplateMiner.add_log_message``).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO

import structlog
from drain3 import TemplateMiner
from drain3.file_persistence import FilePersistence
from drain3.masking import MaskingInstruction
from drain3.template_miner_config import TemplateMinerConfig

from heald.config import LogSourceConfig
from heald.correlate.fingerprint import fingerprint
from heald.models import Severity, Signal, SignalStatus, utcnow

log = structlog.get_logger("heald.logs")

#: Variable parts masked before mining, so that one message with different values is one template.
MASKS = [
    (r"\[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\]", "TS"),
    (r"\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d \d{2}:\d{2}:\d{2}\b", "TS"),
    (r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?", "TS"),
    (r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", "UUID"),
    (r"(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?", "IP"),
    (r"0x[0-9a-fA-F]+", "HEX"),
    (r"\b[0-9a-fA-F]{12,}\b", "ID"),
    (r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:ms|s|kB|MB|GB|%)?(?![\w.])", "NUM"),
]
_TB_HEADER = "Traceback (most recent call last)"
_EXC_LINE = re.compile(r"^\s*(?:[\w.]+(?:Error|Exception|Exit|Interrupt|Timeout|gaierror|error))(?::|$)")
_LEVEL_CRITICAL = re.compile(r"\b(?:CRITICAL|FATAL|PANIC|EMERG|ALERT)\b|\"level\"\s*:\s*\"(?:critical|fatal)\"", re.I)


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
    critical: bool = False


class LogMiner:
    """Turns log lines into signals (see the module docstring). Not thread-safe: one feeder."""

    def __init__(self, cfg: LogSourceConfig, state_dir: Path | None = None):
        self.cfg = cfg
        self.name = cfg.label
        self.error = re.compile(cfg.error_pattern)
        tm_config = TemplateMinerConfig()
        tm_config.drain_sim_th = cfg.similarity_threshold
        tm_config.drain_depth = 4
        tm_config.drain_max_clusters = cfg.max_templates
        tm_config.masking_instructions = [MaskingInstruction(p, m) for p, m in MASKS]
        tm_config.snapshot_interval_minutes = 1
        tm_config.profiling_enabled = False
        persistence = None
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            persistence = FilePersistence(str(state_dir / f"drain3-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.name)}.json"))
        self.miner = TemplateMiner(persistence, tm_config)
        self.templates: dict[int, _Template] = {}
        self._record: list[str] = []
        self._in_traceback = False
        self.records = 0
        self.errors = 0

    # -- records -------------------------------------------------------------------------
    def feed(self, lines: Iterable[str], now: float | None = None) -> list[Signal]:
        """Feed lines read at ``now`` (epoch seconds); returns the signals they trigger. A
        record is complete when the next one starts; call :meth:`flush` when input pauses."""
        now = time.time() if now is None else now
        out: list[Signal] = []
        for raw in lines:
            line = raw.rstrip("\r\n")[: self.cfg.max_line_bytes]
            if self._continues(line):
                self._record.append(line)
                if self._in_traceback and _EXC_LINE.match(line) and not line.startswith((" ", "\t")):
                    self._in_traceback = False
                continue
            out.extend(self.flush(now))
            self._record = [line]
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

    def _mine(self, record: list[str], now: float) -> Signal | None:
        self.records += 1
        text = "\n".join(record)
        if not self.error.search(text):
            return None
        self.errors += 1
        result = self.miner.add_log_message(self._key_line(record))
        cid = int(result["cluster_id"])
        t = self.templates.get(cid)
        created = result["change_type"] == "cluster_created"
        if t is None:
            t = self.templates[cid] = _Template(first_seen=now)
        t.last_seen = now
        t.critical = t.critical or bool(_LEVEL_CRITICAL.search(text))
        t.times.append(now)
        for line in record:
            t.lines.append(line)
        while len(t.lines) > self.cfg.max_evidence_lines:
            t.lines.popleft()
        window = self.cfg.rate_window_seconds
        while t.times and t.times[0] < now - window:
            t.times.popleft()
            t.earlier += 1
        template = str(result["template_mined"])
        if created and self.cfg.new_template_signals:
            return self._fire(cid, t, template, now, "new_template",
                              f"new error template in {self.name}: {template}")
        count = len(t.times)
        observed_before = max(0.0, (now - window) - t.first_seen)
        expected = t.earlier / observed_before * window if observed_before >= window else 0.0
        if (count >= self.cfg.rate_min_count and count >= self.cfg.rate_factor * max(expected, 1.0)
                and (t.fired_at is None or now - t.fired_at >= window)):
            return self._fire(cid, t, template, now, "rate_jump",
                              f"error rate jump in {self.name}: {count} in {window:g} s "
                              f"(expected {expected:.1f}): {template}")
        return None

    def _labels(self, cid: int) -> dict[str, str]:
        labels = {**self.cfg.labels, "alertname": "ErrorLogs", "log": self.name, "template_id": str(cid)}
        if self.cfg.service:
            labels["service"] = self.cfg.service
        return labels

    def _fire(self, cid: int, t: _Template, template: str, now: float, trigger: str, summary: str) -> Signal:
        t.fired_at = now
        t.firing = True
        sig = Signal(source="logs", kind="error_log", service=self.cfg.service, status=SignalStatus.firing,
                     severity=Severity.critical if t.critical else Severity.error, summary=summary[:1000],
                     labels=self._labels(cid),
                     annotations={"template": template, "trigger": trigger, "count": str(len(t.times)),
                                  "log": "\n".join(t.lines)},
                     starts_at=_dt(t.times[0] if trigger == "rate_jump" else now))
        sig.fingerprint = fingerprint(sig, fields=("alertname", "service", "log", "template_id"))
        return sig

    def _resolve_quiet(self, now: float) -> list[Signal]:
        out = []
        for cid, t in self.templates.items():
            if t.firing and now - t.last_seen >= self.cfg.resolve_after_seconds:
                t.firing = False
                sig = Signal(source="logs", kind="error_log", service=self.cfg.service, status=SignalStatus.resolved,
                             severity=Severity.error,
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
        for line in stream:
            if self._stop.is_set():
                break
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

    def _drain(self, fh: IO[bytes], partial: bytes) -> bytes:
        """Read up to ``max_lines_per_poll`` complete lines; return the incomplete tail."""
        lines = []
        for _ in range(self.cfg.max_lines_per_poll):
            chunk = fh.readline()
            if not chunk:
                break
            partial += chunk
            if not partial.endswith(b"\n"):
                break  # a partial line: keep it until the writer finishes it
            lines.append(partial.decode("utf-8", errors="replace"))
            partial = b""
        self.lines_read += len(lines)
        if lines:
            self._deliver(self.miner.feed(lines))
        return partial
