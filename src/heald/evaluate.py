"""``heald eval diagnosis`` and ``heald eval logs``.

``heald eval diagnosis`` runs a labelled case set through the reasoners and measures them.

A case file (YAML; the shipped set is ``heald/diagnose/eval_cases/*.yaml``, format in
``docs/diagnosis.md``) holds ``cases:``, each with an ``id``, an ``area`` (``service`` or
``ci``), the input and what is expected::

    - id: svc-disk-enospc-traceback
      area: service
      log: |                       # raw log text: goes through the log source (drain3) first
        2024-05-02 10:00:06 ERROR … [Errno 28] No space left on device
      signals: []                  # heald signals (the generic JSON schema), e.g. an alert
      ci_log: null                 # the output of a failed CI job (becomes a ci_failed signal)
      service: shop
      expect: {category: disk_full, remedy: cleanup_path}   # remedy: null = no remedy expected

Each case is diagnosed exactly as the healing workflow does (:func:`heald.diagnose.diagnose`
with the default runbook library, then :func:`heald.plan.make_plan`). Reported: accuracy of
the category (overall and per expected category), the Brier score of the confidence (the mean
of (confidence − correct)², correct ∈ {0, 1}; lower is better, 0.25 is a coin flip), the
expected calibration error over 10 bins, the accuracy of the first remedy of the plan, and for
an LLM the latency and cost per case.

``heald eval logs``: precision and recall of the log source's signals on logs labelled per
line, beside a level filter run on the same lines.

A labelled log is a text file whose every line is ``LABEL LINE``: ``-`` for a normal line,
any other word (an alert category such as ``KERNDTLB``) for an anomalous one: the format of
loghub's BGL and Thunderbird logs (https://github.com/logpai/loghub). heald ships small sets of
its own (``heald/sources/eval_logs/*.log``, written for heald); loghub's sets are for research
use only, so heald never ships them: ``--loghub`` reads them from a checkout or a URL at
evaluation time.

Each log is fed to :class:`heald.sources.logs.LogMiner` line by line at the time the line
carries (:func:`line_time`), as a live tail would have read it. A line is *raised* by heald when
its record is part of a firing signal (the record that fired, or a later one of that template
while its signal fires). The level filter raises a line whose own level
(:func:`heald.sources.logs.parse_level`) is error or higher: the issue's baseline (on BGL:
ERROR, SEVERE and FATAL lines). Reported per set: lines, anomalous lines, for each method the
raised lines, precision, recall and F1, the anomaly categories caught (a category is caught when
one of its lines is raised), and for heald the signals fired and how many of them fired on an
anomalous record.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from heald.config import HealdConfig, LogSourceConfig
from heald.correlate.fingerprint import fingerprint
from heald.diagnose import Reasoner, RunbookReasoner, diagnose
from heald.diagnose.kb import KnowledgeBaseReasoner
from heald.diagnose.runbooks import Runbook
from heald.models import Incident, IncidentState, Severity, Signal, utcnow
from heald.plan import make_plan
from heald.yamlfile import YamlFileError, YamlProblem, describe_validation_error, read_yaml


class Expect(BaseModel):
    model_config = ConfigDict(extra="forbid")
    category: str
    remedy: str | None = Field(default="__unset__", description="the plan's first remedy; null: none expected")


class Case(BaseModel):
    """One labelled case (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    area: Literal["service", "ci"]
    description: str = ""
    service: str | None = None
    log: str | None = None
    ci_log: str | None = None
    signals: list[Signal] = Field(default_factory=list)
    expect: Expect
    source_file: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _has_input(self) -> Case:
        if not (self.log or self.ci_log or self.signals):
            raise ValueError("a case needs 'log', 'ci_log' or 'signals'")
        return self

    def to_signals(self) -> list[Signal]:
        """The signals heald would have: the listed ones, the log source's signals for
        ``log`` (mined with drain3, as :mod:`heald.sources.logs` does), and a failed-CI-run
        signal carrying ``ci_log``."""
        out = [s.model_copy(deep=True) for s in self.signals]
        if self.log:
            from heald.sources.logs import LogMiner

            # a case is a log's incident, not its first minutes: no warm-up
            miner = LogMiner(LogSourceConfig(path="-", name=f"{self.service or 'app'}.log", service=self.service,
                                             warmup_seconds=0))
            mined = miner.feed(self.log.splitlines(keepends=True), now=0.0) + miner.flush(now=0.0)
            for s in mined:  # as the incident holds them after its group wait: each template's lines so far
                t = miner.templates.get(int(s.labels["template_id"]))
                if t is not None:
                    s.annotations["log"] = "\n".join(t.lines)
            out.extend(mined)
        if self.ci_log:
            out.append(Signal(source="github", kind="ci_failed", service=self.service or "repo", severity=Severity.error,
                              summary="CI run failed", annotations={"log": self.ci_log},
                              labels={"alertname": "CIFailed", "repository": self.service or "repo",
                                      "conclusion": "failure"}))
        for s in out:
            if s.fingerprint is None:
                s.fingerprint = fingerprint(s)
        return out


class CaseFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cases: list[Case]


def default_case_files() -> list[Path]:
    """The case set shipped with heald."""
    root = resources.files("heald") / "diagnose" / "eval_cases"
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith((".yaml", ".yml")))


def load_cases(paths: list[Path]) -> list[Case]:
    """Load case files and directories. Raises YamlFileError naming file, line and key (also
    for a duplicate case id)."""
    files: list[Path] = []
    for p in paths:
        files.extend(sorted([*p.glob("*.yaml"), *p.glob("*.yml")]) if p.is_dir() else [p])
    problems: list[YamlProblem] = []
    cases: list[Case] = []
    seen: dict[str, str] = {}
    for f in files:
        try:
            text, data = read_yaml(f)
        except YamlFileError as exc:
            problems.extend(exc.problems)
            continue
        try:
            parsed = CaseFile.model_validate(data if data is not None else {})
        except ValidationError as err:
            problems.extend(describe_validation_error(str(f), text, err))
            continue
        for i, c in enumerate(parsed.cases):
            if c.id in seen:
                problems.append(YamlProblem(str(f), 0, f"cases.{i}.id", f"duplicate case id {c.id!r} (also in {seen[c.id]})"))
            seen[c.id] = str(f)
            c.source_file = str(f)
            cases.append(c)
    if problems:
        raise YamlFileError(problems)
    return cases


@dataclass
class CaseResult:
    """The outcome of one case."""

    id: str
    area: str
    expected: str
    predicted: str
    confidence: float
    correct: bool
    reasoner: str
    expected_remedy: str | None
    remedy: str | None
    remedy_checked: bool
    latency_s: float
    cost_usd: float
    tokens: int
    notes: list[str] = field(default_factory=list)


def reasoners_for(name: str, runbooks: list[Runbook], config: HealdConfig | None) -> list[Reasoner]:
    """The reasoners of ``name``: ``deterministic`` (runbook + kb, the default), ``runbook``,
    ``kb``, ``llm`` (the LLM alone, falling back to nothing) or ``all`` (runbook + kb + llm).
    Raises ValueError for another name or an LLM without configuration."""
    det: list[Reasoner] = [RunbookReasoner(runbooks), KnowledgeBaseReasoner()]
    if name in ("deterministic", "default"):
        return det
    if name == "runbook":
        return [det[0]]
    if name == "kb":
        return [det[1]]
    if name in ("llm", "all"):
        from heald.diagnose.llm import LLMReasoner

        if config is None or not config.llm.resolved()[1]:
            raise ValueError("the llm reasoner needs llm.model (and base_url) in heald.yaml or $HEALD_LLM_MODEL")
        llm = LLMReasoner(config.llm, runbooks)
        return [llm] if name == "llm" else [*det, llm]
    raise ValueError(f"unknown reasoner {name!r}: expected deterministic, runbook, kb, llm or all")


def run_case(case: Case, reasoners: list[Reasoner], runbooks: list[Runbook]) -> CaseResult:
    """Diagnose and plan one case as the workflow would."""
    signals = case.to_signals()
    now = utcnow()
    first = signals[0] if signals else None
    inc = Incident(id=1, title=(first.summary if first else case.id)[:200] or case.id, service=case.service,
                   state=IncidentState.diagnosing, severity=first.severity if first else Severity.error,
                   fingerprint=first.fingerprint or "" if first else "", group_key=case.id,
                   labels=first.labels if first else {}, started_at=now, detected_at=now, updated_at=now)
    t0 = time.monotonic()
    finding = diagnose(inc, signals, reasoners, runbooks)
    latency = time.monotonic() - t0
    plan = make_plan(1, finding, signals or [Signal(source="eval")], set(), {}).plan
    remedy = plan.candidates[0].remedy if plan.candidates else None
    d = finding.diagnosis
    from heald.remedies import CATALOG

    # a remedy is checked when the case names one the catalog has (or none at all)
    checked = case.expect.remedy != "__unset__" and (case.expect.remedy is None or case.expect.remedy in CATALOG)
    return CaseResult(
        id=case.id, area=case.area, expected=case.expect.category, predicted=d.category, confidence=d.confidence,
        correct=d.category == case.expect.category, reasoner=d.reasoner,
        expected_remedy=None if not checked else case.expect.remedy, remedy=remedy, remedy_checked=checked,
        latency_s=latency, cost_usd=sum(u.get("cost_usd", 0.0) for u in finding.usage),
        tokens=sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0) for u in finding.usage),
        notes=list(finding.notes))


def summarize(results: list[CaseResult]) -> dict[str, Any]:
    """Accuracy per expected category and overall, Brier score, expected calibration error
    (10 bins), remedy accuracy, latency (seconds) and cost (USD) per case."""
    n = len(results)
    per: dict[str, dict[str, Any]] = {}
    for r in results:
        p = per.setdefault(r.expected, {"cases": 0, "correct": 0, "confidence": []})
        p["cases"] += 1
        p["correct"] += r.correct
        p["confidence"].append(r.confidence)
    categories = {k: {"cases": v["cases"], "correct": v["correct"], "accuracy": round(v["correct"] / v["cases"], 4),
                      "mean_confidence": round(statistics.fmean(v["confidence"]), 4)}
                  for k, v in sorted(per.items())}
    brier = statistics.fmean((r.confidence - r.correct) ** 2 for r in results) if n else 0.0
    ece = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        inside = [r for r in results if lo <= r.confidence < hi or (b == 9 and r.confidence == 1.0)]
        if inside:
            ece += len(inside) / n * abs(statistics.fmean(r.correct for r in inside)
                                         - statistics.fmean(r.confidence for r in inside))
    checked = [r for r in results if r.remedy_checked]
    unchecked = sum(1 for r in results if not r.remedy_checked)
    lat = sorted(r.latency_s for r in results)
    by_area = {}
    for area in sorted({r.area for r in results}):
        rs = [r for r in results if r.area == area]
        by_area[area] = {"cases": len(rs), "accuracy": round(sum(r.correct for r in rs) / len(rs), 4)}
    return {
        "cases": n,
        "accuracy": round(sum(r.correct for r in results) / n, 4) if n else 0.0,
        "brier": round(brier, 4),
        "ece": round(ece, 4),
        "areas": by_area,
        "categories": categories,
        "remedy": {"cases": len(checked), "not_in_catalog": unchecked, "correct": sum(r.remedy == r.expected_remedy for r in checked),
                   "accuracy": round(sum(r.remedy == r.expected_remedy for r in checked) / len(checked), 4)
                   if checked else None},
        "latency_s": {"mean": round(statistics.fmean(lat), 4) if lat else 0.0,
                      "p50": round(lat[len(lat) // 2], 4) if lat else 0.0,
                      "p95": round(lat[min(len(lat) - 1, int(len(lat) * 0.95))], 4) if lat else 0.0},
        "cost_usd": {"total": round(sum(r.cost_usd for r in results), 6),
                     "per_case": round(sum(r.cost_usd for r in results) / n, 8) if n else 0.0},
        "tokens_per_case": round(sum(r.tokens for r in results) / n, 1) if n else 0.0,
    }


def evaluate(cases: list[Case], reasoners: list[Reasoner], runbooks: list[Runbook],
             progress: Callable[[CaseResult], None] | None = None) -> tuple[list[CaseResult], dict[str, Any]]:
    """Run every case; return the per-case results and :func:`summarize`'s summary."""
    results = []
    for c in cases:
        r = run_case(c, reasoners, runbooks)
        results.append(r)
        if progress:
            progress(r)
    return results, summarize(results)



# -- heald eval logs (see the module docstring) -----------------------------------------------
LOGHUB_SETS = ("BGL/BGL_2k.log", "Thunderbird/Thunderbird_2k.log")
LOGHUB_URL = "https://raw.githubusercontent.com/logpai/loghub/master/"
_MAX_LOG_BYTES = 64 * 1024 * 1024


@dataclass
class LabelledLog:
    """One labelled log: its lines (without the label) and their labels (``-`` = normal)."""

    name: str
    source: str
    lines: list[str]
    labels: list[str]


def parse_labelled_log(name: str, source: str, text: str) -> LabelledLog:
    """Split ``LABEL LINE`` lines (see above). Raises ValueError naming the line number of a
    line without a label; empty lines are skipped."""
    lines: list[str] = []
    labels: list[str] = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        label, sep, line = raw.partition(" ")
        if not sep or not label:
            raise ValueError(f"{source}:{n}: expected 'LABEL LINE' ('-' for a normal line), got {raw[:80]!r}")
        lines.append(line)
        labels.append(label)
    return LabelledLog(name=name, source=source, lines=lines, labels=labels)


def default_log_sets() -> list[Path]:
    """The labelled logs shipped with heald (written for it)."""
    root = resources.files("heald") / "sources" / "eval_logs"
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".log"))


def load_log_sets(paths: list[Path]) -> list[LabelledLog]:
    """Read labelled log files (a directory: its ``*.log``). Raises ValueError naming the file
    and line of a malformed line, or a file that cannot be read."""
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(p.glob("*.log")) if p.is_dir() else [p])
    out = []
    for f in files:
        try:
            data = f.read_bytes()[:_MAX_LOG_BYTES]
        except OSError as exc:
            raise ValueError(f"{f}: cannot read: {exc.strerror or exc}") from exc
        out.append(parse_labelled_log(f.stem, str(f), data.decode("utf-8", errors="replace")))
    return out


def load_loghub(where: str, timeout_s: float = 60.0) -> list[LabelledLog]:
    """loghub's line-labelled 2k samples (BGL, Thunderbird) from a checkout of
    https://github.com/logpai/loghub (a directory) or a URL of its raw files (e.g.
    :data:`LOGHUB_URL`). loghub's licence allows research and academic use only, which is why
    heald reads them here instead of shipping them. Raises ValueError naming the file that is
    missing, unreadable or malformed."""
    out = []
    for rel in LOGHUB_SETS:
        name = rel.rsplit("/", 1)[-1].removesuffix(".log")
        if where.startswith(("http://", "https://")):
            import httpx

            url = where.rstrip("/") + "/" + rel
            try:
                r = httpx.get(url, timeout=timeout_s, follow_redirects=True)
            except httpx.HTTPError as exc:
                raise ValueError(f"{url}: {exc}") from exc
            if r.status_code != 200:
                raise ValueError(f"{url}: HTTP {r.status_code}")
            text, source = r.content[:_MAX_LOG_BYTES].decode("utf-8", errors="replace"), url
        else:
            path = Path(where) / rel
            if not path.is_file():
                raise ValueError(f"{path}: not found (expected a checkout of https://github.com/logpai/loghub)")
            text, source = path.read_bytes()[:_MAX_LOG_BYTES].decode("utf-8", errors="replace"), str(path)
        out.append(parse_labelled_log(f"loghub {name}", source, text))
    return out


_EPOCH = re.compile(r"^\s*(\d{10})(?:\.\d+)?\b")
_ISO = re.compile(r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,6}))?")
_BSD = re.compile(r"\b(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +(\d{1,2}) (\d{2}):(\d{2}):(\d{2})\b")
_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                                       "Dec"), 1)}


def line_time(line: str) -> float | None:
    """The time a log line carries, in epoch seconds (UTC assumed), or None: a leading 10-digit
    epoch (BGL), an ISO 8601 date and time anywhere in its first 120 characters, or a BSD
    syslog ``Mar  2 09:00:05`` (RFC 3164 has no year: 2000 is used, only differences matter)."""
    from datetime import UTC, datetime

    if m := _EPOCH.match(line):
        return float(m.group(1))
    head = line[:120]
    try:
        iso, bsd = _ISO.search(head), _BSD.search(head)
        if iso and (bsd is None or iso.start() < bsd.start()):  # the first time in the line is the line's
            y, mo, d, h, mi, s = (int(g) for g in iso.groups()[:6])
            frac = float("0." + iso.group(7)) if iso.group(7) else 0.0
            return datetime(y, mo, d, h, mi, s, tzinfo=UTC).timestamp() + frac
        if bsd:
            return datetime(2000, _MONTHS[bsd.group(1)], int(bsd.group(2)), int(bsd.group(3)), int(bsd.group(4)),
                            int(bsd.group(5)), tzinfo=UTC).timestamp()
    except ValueError:  # 2024-13-45: not a time
        return None
    return None


def _scores(raised: set[int], anomalous: set[int], labels: list[str]) -> dict[str, Any]:
    tp = len(raised & anomalous)
    precision = tp / len(raised) if raised else None
    recall = tp / len(anomalous) if anomalous else None
    f1 = (2 * precision * recall / (precision + recall)
          if precision is not None and recall is not None and precision + recall > 0 else None)
    caught = sorted({labels[i] for i in raised & anomalous})
    return {"raised": len(raised), "true_positives": tp,
            "precision": None if precision is None else round(precision, 4),
            "recall": None if recall is None else round(recall, 4),
            "f1": None if f1 is None else round(f1, 4), "categories_caught": caught}


def evaluate_log(labelled: LabelledLog, cfg: LogSourceConfig | None = None) -> dict[str, Any]:
    """Run one labelled log through the log source and the level filter; see above for what
    is reported. ``cfg`` is the log source's configuration (default: the defaults)."""
    from heald.sources.logs import LEVELS, LogMiner, RecordVerdict, parse_level

    cfg = cfg or LogSourceConfig(path="-")
    cfg = cfg.model_copy(update={"name": labelled.name})
    verdicts: list[RecordVerdict] = []
    miner = LogMiner(cfg, on_record=verdicts.append)
    now = 0.0
    signals = []
    for line in labelled.lines:
        t = line_time(line)
        now = max(now, t) if t is not None else now  # a line without a time, or out of order: the last time
        signals.extend(miner.feed([line + "\n"], now=now))
    signals.extend(miner.flush(now=now))
    anomalous = {i for i, lab in enumerate(labelled.labels) if lab != "-"}
    raised: set[int] = set()
    fired = fired_anomalous = 0
    for v in verdicts:
        span = set(range(v.first_line, v.first_line + v.line_count))
        if v.raised:
            raised |= span
        if v.signal is not None:
            fired += 1
            fired_anomalous += bool(span & anomalous)
    error_rank = LEVELS.index("error")
    baseline = set()
    for i, line in enumerate(labelled.lines):
        level = parse_level(line)[0]
        if level is not None and LEVELS.index(level) >= error_rank:
            baseline.add(i)
    return {"name": labelled.name, "source": labelled.source, "lines": len(labelled.lines),
            "anomalous": len(anomalous),
            "categories": sorted({labelled.labels[i] for i in anomalous}),
            "heald": {**_scores(raised, anomalous, labelled.labels), "signals": fired,
                      "signals_on_anomalies": fired_anomalous},
            "level_filter": _scores(baseline, anomalous, labelled.labels)}


def evaluate_logs(sets: list[LabelledLog], cfg: LogSourceConfig | None = None) -> list[dict[str, Any]]:
    """:func:`evaluate_log` for every set."""
    return [evaluate_log(s, cfg) for s in sets]
