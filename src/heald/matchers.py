"""Label matchers in Alertmanager's syntax: ``name="value"``, ``name!="value"``,
``name=~"regex"``, ``name!~"regex"`` (regexes are anchored, as in Alertmanager).

Used by runbooks to match signals, and by silences and inhibition rules. Source of the syntax:
prometheus/alertmanager ``pkg/labels/parse.go``. Also holds the one check of a user's regex
(:func:`compile_regex`, :func:`check_regexes`) that configuration and runbooks validate with.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

_Regexes = TypeVar("_Regexes", bound="str | list[str] | None")

_MATCHER = re.compile(r'^\s*([a-zA-Z_][a-zA-Z0-9_.]*)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|(\S*))\s*$')


@dataclass(frozen=True)
class Matcher:
    """One label matcher. A label that is absent matches as the empty string."""

    name: str
    op: str
    value: str

    def __post_init__(self) -> None:
        if self.op in ("=~", "!~"):
            compile_regex(self.value, f"matcher {self.name}{self.op}")

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        hit = re.fullmatch(self.value, actual) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f'{self.name}{self.op}"{self.value}"'


def parse_matcher(text: str) -> Matcher:
    """Parse one matcher. Raises ValueError naming the text and the expected form."""
    m = _MATCHER.match(text)
    if not m:
        raise ValueError(f'invalid matcher {text!r}: expected name="value", name!="value", name=~"regex" or name!~"regex"')
    value = m.group(3) if m.group(3) is not None else m.group(4)
    value = re.sub(r'\\(.)', r'\1', value)
    return Matcher(m.group(1), m.group(2), value)


def matches_all(matchers: list[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)


def compile_regex(pattern: str, where: str = "") -> re.Pattern[str]:
    """Compile a regex a user wrote (Python ``re`` syntax, unanchored unless it anchors itself).

    ``where`` says which pattern it is within its field, e.g. ``item 2`` of a list; the field
    itself is named by whoever reports the error (pydantic's location).
    Raises ValueError: ``[<where>: ]invalid regex '<pattern>': <reason> at position <n>
    (expected a Python regular expression)``.
    """
    try:
        return re.compile(pattern)
    except re.error as exc:
        at = f"{where}: " if where else ""
        raise ValueError(f"{at}invalid regex {pattern!r}: {exc} (expected a Python regular expression)") from exc


def check_regexes(value: _Regexes) -> _Regexes:
    """Validate a field of regexes: one pattern, a list of them, or None. Returns ``value``
    unchanged; raises ValueError from :func:`compile_regex`, naming the list item (from 0)."""
    if isinstance(value, str):
        compile_regex(value)
    elif value is not None:
        for i, pattern in enumerate(value):
            compile_regex(pattern, f"item {i}")
    return value
