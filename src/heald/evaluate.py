"""``heald eval diagnosis``: run a labelled case set through the reasoners and measure them.

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
"""

from __future__ import annotations

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

            miner = LogMiner(LogSourceConfig(path="-", name=f"{self.service or 'app'}.log", service=self.service))
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

