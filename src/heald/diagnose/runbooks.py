"""Runbooks: declarative YAML rules that diagnose an incident and propose remedies.

A runbook file holds ``runbooks:``, a list of runbooks (see ``docs/runbooks.md``)::

    runbooks:
      - name: process-down
        match:
          labels: ['source="probe"', 'process_state="exited"']   # Alertmanager matchers
        diagnosis: {category: process_down, confidence: 0.95, explanation: "…${service}…"}
        remedies:
          - {remedy: restart_process, risk: low, params: {service: "${service}"}}
        verify: {stabilization_seconds: 2}

Matchers see a signal's labels plus the pseudo-labels ``source``, ``kind``, ``service``,
``severity`` and ``status``. ``${name}`` in explanations and parameters is replaced by that
label's (or annotation's) value. A runbook may use only variables it can count on: the
pseudo-labels, ``summary`` and ``detail`` (always filled, see :data:`ALWAYS_VARIABLES`), the
labels its matchers require (a matcher that the empty value fails), and the names it declares in
``variables:`` (each with the text an explanation shows when a signal lacks it; parameters are
never filled from those: a remedy whose parameter is missing is dropped). Any other variable is
a load error naming the runbook, the field and the variable. Loading validates everything it can and raises YamlFileError naming file,
line and key.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from heald.matchers import Matcher, check_regexes, matches_all, parse_matcher
from heald.models import Risk, Signal
from heald.yamlfile import YamlFileError, YamlProblem, describe_validation_error, key_line, read_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


def _as_list(v: str | list[str] | None) -> list[str]:
    if v is None:
        return []
    return [v] if isinstance(v, str) else list(v)


class RunbookMatch(_Strict):
    """What a runbook matches. Every condition given must hold (for one signal of the
    incident); a list inside one condition means any of its values. ``category`` holds when a
    reasoner (the signature knowledge base, the LLM) diagnosed one of those categories."""

    labels: list[str] = Field(default_factory=list, description="Alertmanager-style matchers, all must match")
    source: str | list[str] | None = Field(default=None, description="the signal's source, e.g. probe, alertmanager, logs")
    fingerprint: str | list[str] | None = Field(default=None, description="the signal's fingerprint (exact)")
    log: str | list[str] | None = Field(default=None, description="regexes; every one must be found in the signal's text")
    category: str | list[str] | None = Field(default=None, description="a category some reasoner diagnosed")

    @field_validator("labels")
    @classmethod
    def _parse(cls, v: list[str]) -> list[str]:
        for text in v:
            parse_matcher(text)
        return v

    @field_validator("log")
    @classmethod
    def _regex(cls, v: str | list[str] | None) -> str | list[str] | None:
        return check_regexes(v)

    @field_validator("category")
    @classmethod
    def _category(cls, v: str | list[str] | None) -> str | list[str] | None:
        for text in _as_list(v):
            if not _CATEGORY.fullmatch(text):
                raise ValueError(f"invalid category {text!r}: expected lowercase letters, digits, '_', '.', '-'")
        return v

    @property
    def matchers(self) -> list[Matcher]:
        return [parse_matcher(t) for t in self.labels]

    @property
    def categories(self) -> list[str]:
        return _as_list(self.category)

    @property
    def conditions(self) -> int:
        """How many conditions this match states (its specificity)."""
        return (len(self.labels) + len(_as_list(self.log)) + (self.source is not None)
                + (self.fingerprint is not None) + (self.category is not None))


_CATEGORY = re.compile(r"^[a-z0-9_.-]{1,100}$")


class RunbookDiagnosis(_Strict):
    category: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9_.-]+$")
    confidence: float = Field(ge=0, le=1)
    explanation: str = ""
    explains: list[str] = Field(default_factory=list,
                                description="categories this one explains (so a reasoner naming them agrees)")


class RunbookRemedy(_Strict):
    remedy: str
    risk: Risk = Risk.low
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_remedy(self) -> RunbookRemedy:
        from heald.remedies import CATALOG

        remedy = CATALOG.get(self.remedy)
        if remedy is None:
            raise ValueError(f"unknown remedy {self.remedy!r}; the catalog has: {', '.join(sorted(CATALOG))}")
        unknown = set(self.params) - set(remedy.Params.model_fields)
        if unknown:
            raise ValueError(f"remedy {self.remedy!r} has no parameter(s) {sorted(unknown)}; "
                             f"expected some of {sorted(remedy.Params.model_fields)}")
        return self


class RunbookVerify(_Strict):
    stabilization_seconds: float | None = Field(default=None, ge=0)
    timeout_seconds: float | None = Field(default=None, gt=0)


class RunbookExample(_Strict):
    """A signal the runbook must match (for a category runbook, with the diagnosed
    ``category``); loading fails when it does not, so examples stay true."""

    signal: Signal
    category: str | None = None


#: Variables every signal context fills (see ``heald.diagnose.signal_context``).
ALWAYS_VARIABLES = frozenset({"source", "kind", "service", "severity", "status", "summary", "detail"})


class Runbook(_Strict):
    name: str = Field(min_length=1, max_length=200)
    variables: dict[str, str] = Field(
        default_factory=dict,
        description="labels or annotations the runbook's text may use beyond those its matchers require, each with "
                    "the text an explanation shows when a signal lacks it")
    description: str = ""
    match: RunbookMatch
    diagnosis: RunbookDiagnosis | None = None
    remedies: list[RunbookRemedy] = Field(default_factory=list)
    verify: RunbookVerify = Field(default_factory=RunbookVerify)
    examples: list[RunbookExample] = Field(default_factory=list,
                                           description="signals this runbook must match (checked when loading)")
    source_file: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _diagnosis_or_category(self) -> Runbook:
        if self.diagnosis is None and self.match.category is None:
            raise ValueError("a runbook needs 'diagnosis' (what it concludes) unless it matches on 'match.category'")
        if self.diagnosis is not None and self.match.category is not None:
            raise ValueError("a runbook that matches on 'match.category' takes its diagnosis from the reasoner "
                             "that named the category; remove 'diagnosis' (or the category condition)")
        return self

    def known_variables(self) -> set[str]:
        """The ``${name}`` variables this runbook may use (see the module docstring)."""
        required = {m.name for m in self.match.matchers if not m.matches({})}
        return set(ALWAYS_VARIABLES) | required | set(self.variables)

    def template_problems(self) -> list[tuple[list[str | int], str]]:
        """Unknown or malformed ``${...}`` in the explanation and the remedy parameters, as
        (location under the runbook, message) pairs; empty when all are known."""
        known = self.known_variables()
        fields: list[tuple[list[str | int], Any]] = []
        if self.diagnosis is not None:
            fields.append((["diagnosis", "explanation"], self.diagnosis.explanation))
        fields.extend((["remedies", j, "params"], rr.params) for j, rr in enumerate(self.remedies))
        problems: list[tuple[list[str | int], str]] = []
        for loc, value in fields:
            for text in _strings(value):
                tmpl = string.Template(text)
                if not tmpl.is_valid():
                    why = f"runbook {self.name!r}: invalid placeholder in {text!r} (write $$ for a literal $, ${{name}} for a variable)"
                    problems.append((loc, why))
                    continue
                for var in tmpl.get_identifiers():
                    if var not in known:
                        why = (f"runbook {self.name!r}: unknown variable ${{{var}}}; known: {', '.join(sorted(known))} "
                               "(declare it under 'variables:' with the text shown when a signal lacks it, "
                               "or require it in 'match')")
                        problems.append((loc, why))
        return problems

    def applies_to(self, signal: Signal, category: str | None = None) -> bool:
        """Do this runbook's signal conditions hold for ``signal`` (and, when the runbook
        matches on categories, is ``category`` one of them)?"""
        m = self.match
        if m.category is not None and category not in m.categories:
            return False
        if m.source is not None and signal.source not in _as_list(m.source):
            return False
        if m.fingerprint is not None and signal.fingerprint not in _as_list(m.fingerprint):
            return False
        if m.log is not None:
            text = signal_text(signal)
            if not all(re.search(p, text, re.MULTILINE) for p in _as_list(m.log)):
                return False
        return matches_all(m.matchers, match_labels(signal))

    @property
    def specificity(self) -> int:
        return self.match.conditions

    @property
    def category(self) -> str:
        """The category this runbook concludes (its diagnosis, else its first match.category)."""
        return self.diagnosis.category if self.diagnosis else self.match.categories[0]


class RunbookFile(_Strict):
    runbooks: list[Runbook]


def match_labels(signal: Signal) -> dict[str, str]:
    """A signal's labels plus the pseudo-labels runbooks can match on."""
    return {**signal.labels, "source": signal.source, "kind": signal.kind,
            "service": signal.service or signal.labels.get("service", ""),
            "severity": signal.severity.value, "status": signal.status.value}


#: Annotations that hold raw text (log lines, program output): always on lines of their own.
LOG_ANNOTATIONS = frozenset({"log", "logs", "output", "stdout", "stderr", "traceback", "evidence", "excerpt"})


def signal_text(signal: Signal) -> str:
    """The text of a signal that log signatures and classifiers read: its labels as one
    ``name=value`` line, its summary, then each annotation (``name: value``; a multi-line value,
    such as log lines or a traceback, follows on lines of its own, verbatim)."""
    lines = [" ".join(f"{k}={v}" for k, v in sorted(match_labels(signal).items()) if v)]
    if signal.summary:
        lines.append(signal.summary)
    for k, v in signal.annotations.items():
        if "\n" in v or k in LOG_ANNOTATIONS:
            lines.append(f"{k}:")
            lines.extend(v.splitlines())
        else:
            lines.append(f"{k}: {v}")
    return "\n".join(lines)


def render(value: Any, context: Mapping[str, str]) -> Any:
    """Replace ``${name}`` in strings (recursively in lists and dicts). Raises KeyError naming a
    missing label."""
    if isinstance(value, str):
        return string.Template(value).substitute(context)
    if isinstance(value, list):
        return [render(v, context) for v in value]
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def load_file(path: Path) -> list[Runbook]:
    """Load and validate one runbook file. Raises YamlFileError naming file, line and key."""
    text, data = read_yaml(path)
    if not isinstance(data, dict):
        raise YamlFileError([YamlProblem(str(path), 1, "", "expected a mapping with key 'runbooks'")])
    try:
        parsed = RunbookFile.model_validate(data)
    except ValidationError as err:
        raise YamlFileError(describe_validation_error(str(path), text, err)) from err
    seen: dict[str, int] = {}
    problems = []
    for i, rb in enumerate(parsed.runbooks):
        if rb.name in seen:
            problems.append(YamlProblem(str(path), key_line(text, ["runbooks", i, "name"]), f"runbooks.{i}.name",
                                        f"duplicate runbook name {rb.name!r} (also runbooks.{seen[rb.name]})"))
        seen[rb.name] = i
        rb.source_file = str(path)
        for sub, message in rb.template_problems():
            loc: list[str | int] = ["runbooks", i, *sub]
            problems.append(YamlProblem(str(path), key_line(text, loc), ".".join(map(str, loc)), message))
        for j, ex in enumerate(rb.examples):
            if not rb.applies_to(ex.signal, ex.category):
                loc = ["runbooks", i, "examples", j]
                problems.append(YamlProblem(str(path), key_line(text, loc), ".".join(map(str, loc)),
                                            f"this example does not match runbook {rb.name!r}"))
    if problems:
        raise YamlFileError(problems)
    return parsed.runbooks


def default_runbook_files() -> list[Path]:
    """The runbook library shipped with heald (``heald/runbooks/*.yaml``)."""
    root = resources.files("heald") / "runbooks"
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith((".yaml", ".yml")))


def load_runbooks(paths: list[Path], include_defaults: bool = True) -> list[Runbook]:
    """Load runbooks from files and directories (``*.yaml``/``*.yml`` inside), defaults first.

    Every file is checked; all problems are raised together as one YamlFileError. A later
    runbook with the name of an earlier one replaces it (so a user can override a default).
    """
    files = default_runbook_files() if include_defaults else []
    for p in paths:
        if p.is_dir():
            files.extend(sorted([*p.glob("*.yaml"), *p.glob("*.yml")]))
        else:
            files.append(p)
    problems: list[YamlProblem] = []
    by_name: dict[str, Runbook] = {}
    for f in files:
        try:
            for rb in load_file(f):
                by_name[rb.name] = rb
        except YamlFileError as exc:
            problems.extend(exc.problems)
    if problems:
        raise YamlFileError(problems)
    return list(by_name.values())


def runbook_log_patterns(runbooks: list[Runbook]) -> list[str]:
    """The log records runbooks name as mattering: for each runbook that matches log signals
    (``match.source`` names ``logs``) and has ``match.log`` regexes, one regex that finds a key
    line where all of them are found. The log tailers add them to ``always_signal``, so a record
    a runbook is written for is not held back by its level, the warm-up or the rate test.
    (Records that never matter are named by the log source's ``never_signal``.)"""
    out: list[str] = []
    for rb in runbooks:
        found = _as_list(rb.match.log)
        if "logs" not in _as_list(rb.match.source) or not found:
            continue
        out.append(found[0] if len(found) == 1 else "".join(f"(?=.*?(?:{p}))" for p in found))
    return out
