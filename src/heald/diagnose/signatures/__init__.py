"""The failure-signature knowledge base: classifiers that recognise failures in text.

A classifier reads a log, a traceback or a CI job's output and returns zero or more
:class:`Classification` (a category from a closed vocabulary, the evidence lines and a
confidence in [0, 1]). Classifiers register with :func:`register`; :func:`classify` runs them
all and returns their findings best first. Modules of classifiers are imported at the end of
this file.
"""

from __future__ import annotations

from heald.diagnose.signatures.base import (
    CLASSIFIERS,
    Classification,
    Classifier,
    Rule,
    classify,
    register,
    rule_classifier,
    rx,
)

# The classifier modules register themselves when imported (in this order).
# isort: off
from heald.diagnose.signatures import python as _python  # noqa: F401
from heald.diagnose.signatures import network as _network  # noqa: F401
from heald.diagnose.signatures import resources as _resources  # noqa: F401
from heald.diagnose.signatures import http as _http  # noqa: F401
from heald.diagnose.signatures import alerts as _alerts  # noqa: F401
from heald.diagnose.signatures import changes as _changes  # noqa: F401
from heald.diagnose.signatures import ci as _ci  # noqa: F401
# isort: on

__all__ = ["CLASSIFIERS", "Classification", "Classifier", "Rule", "classify", "register", "rule_classifier", "rx"]
