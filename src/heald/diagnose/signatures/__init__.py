"""The failure-signature knowledge base: classifiers that recognise failures in text.

A classifier reads a log, a traceback or a CI job's output and returns zero or more
:class:`Classification` (a category from a closed vocabulary, the evidence lines and a
confidence in [0, 1]). Classifiers register with :func:`register`; :func:`classify` runs them
all and returns their findings best first. Modules of classifiers are imported at the end of
this file.
"""

from __future__ import annotations

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
