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
label's value. Loading validates everything it can and raises YamlFileError naming file,
line and key.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from heald.matchers import Matcher, matches_all, parse_matcher
from heald.models import Risk, Signal
from heald.yamlfile import YamlFileError, YamlProblem, describe_validation_error, read_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class RunbookMatch(_Strict):
    labels: list[str] = Field(default_factory=list, description="Alertmanager-style matchers, all must match")

    @field_validator("labels")
    @classmethod
    def _parse(cls, v: list[str]) -> list[str]:
        for text in v:
            parse_matcher(text)
        return v

    @property
    def matchers(self) -> list[Matcher]:
        return [parse_matcher(t) for t in self.labels]


class RunbookDiagnosis(_Strict):
    category: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9_.-]+$")
    confidence: float = Field(ge=0, le=1)
    explanation: str = ""


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


class Runbook(_Strict):
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    match: RunbookMatch
    diagnosis: RunbookDiagnosis
    remedies: list[RunbookRemedy] = Field(default_factory=list)
    verify: RunbookVerify = Field(default_factory=RunbookVerify)
    source_file: str | None = Field(default=None, exclude=True)

    def applies_to(self, signal: Signal) -> bool:
        return matches_all(self.match.matchers, match_labels(signal))

    @property
    def specificity(self) -> int:
        return len(self.match.labels)


class RunbookFile(_Strict):
    runbooks: list[Runbook]


def match_labels(signal: Signal) -> dict[str, str]:
    """A signal's labels plus the pseudo-labels runbooks can match on."""
    return {**signal.labels, "source": signal.source, "kind": signal.kind, "service": signal.service or "",
            "severity": signal.severity.value, "status": signal.status.value}


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
            problems.append(YamlProblem(str(path), 0, f"runbooks.{i}.name", f"duplicate runbook name {rb.name!r} (also runbooks.{seen[rb.name]})"))
        seen[rb.name] = i
        rb.source_file = str(path)
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
