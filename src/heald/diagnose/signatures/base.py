"""The classifier contract and registry of :mod:`heald.diagnose.signatures` (:class:`Classification`,
:func:`register`, :func:`classify`, the rule helpers); the classifier modules import it."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog


@dataclass(frozen=True)
class Classification:
    """One recognised failure: ``category`` (e.g. ``missing_module``), ``confidence`` in
    [0, 1], ``evidence`` (the lines that show it, verbatim), ``details`` (parsed facts, e.g.
    ``{"module": "yaml"}``) and the ``classifier`` that found it."""

    category: str
    confidence: float
    evidence: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    classifier: str = ""


Classifier = Callable[[str], list[Classification]]
CLASSIFIERS: dict[str, Classifier] = {}


def register(name: str) -> Callable[[Classifier], Classifier]:
    """Decorator: add a classifier ``fn(text) -> list[Classification]`` under ``name``."""
    def deco(fn: Classifier) -> Classifier:
        CLASSIFIERS[name] = fn
        return fn
    return deco


def classify(text: str, limit_bytes: int = 2_000_000) -> list[Classification]:
    """Run every classifier over ``text`` (its last ``limit_bytes`` characters, where failures
    are reported); findings sorted by confidence, highest first. A classifier that raises is
    skipped and logged."""
    tail = text[-limit_bytes:]
    found: list[Classification] = []
    for name, fn in CLASSIFIERS.items():
        try:
            for c in fn(tail):
                found.append(c if c.classifier else Classification(c.category, c.confidence, c.evidence, c.details, name))
        except Exception:  # one broken rule must not hide the others' findings; it is logged
            structlog.get_logger("heald.signatures").exception("classifier.failed", classifier=name)
    return sorted(found, key=lambda c: -c.confidence)


@dataclass(frozen=True)
class Rule:
    """A line-level rule for :func:`rule_classifier`: lines matching ``pattern`` (a compiled
    regex, searched) show ``category`` with ``confidence``; ``details`` names regex groups to
    keep as parsed facts."""

    category: str
    pattern: re.Pattern[str]
    confidence: float
    details: tuple[str, ...] = ()


def rule_classifier(rules: list[Rule], max_evidence: int = 5) -> Classifier:
    """A classifier from line rules: one Classification per category that any rule matched,
    with the best rule's confidence, the first ``max_evidence`` matching lines as evidence and
    the named groups of the first match of each rule as details. A second, different rule for
    the same category (independent corroboration) adds a little confidence, up to 0.97."""
    def classify_lines(text: str) -> list[Classification]:
        hits: dict[str, tuple[float, list[str], dict[str, Any], set[int]]] = {}
        # each distinct line once, in the order first seen: a repeated line (an alert's duplicates,
        # a crash loop's same error) adds no hit, evidence or detail the first did not
        for line in dict.fromkeys(text.splitlines()):
            if len(line) > 4000:
                line = line[:4000]
            for i, rule in enumerate(rules):
                m = rule.pattern.search(line)
                if m is None:
                    continue
                conf, ev, det, which = hits.setdefault(rule.category, (0.0, [], {}, set()))
                if len(ev) < max_evidence and line.strip() not in ev:
                    ev.append(line.strip())
                for g in rule.details:
                    if m.groupdict().get(g) and g not in det:
                        det[g] = m.group(g)
                which.add(i)
                hits[rule.category] = (max(conf, rule.confidence), ev, det, which)
        out = []
        for cat, (conf, ev, det, which) in hits.items():
            if len(which) > 1:
                conf = min(0.97, conf + 0.03 * (len(which) - 1))
            out.append(Classification(cat, round(conf, 3), ev, det))
        return out
    return classify_lines


def rx(pattern: str) -> re.Pattern[str]:
    """Compile a case-insensitive rule pattern."""
    return re.compile(pattern, re.IGNORECASE)


# Register the classifiers of the knowledge base.
