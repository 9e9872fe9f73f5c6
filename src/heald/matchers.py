"""Label matchers in Alertmanager's syntax: ``name="value"``, ``name!="value"``,
``name=~"regex"``, ``name!~"regex"`` (regexes are anchored, as in Alertmanager).

Used by runbooks to match signals, and by silences and inhibition rules. Source of the syntax:
prometheus/alertmanager ``pkg/labels/parse.go``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_MATCHER = re.compile(r'^\s*([a-zA-Z_][a-zA-Z0-9_.]*)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|(\S*))\s*$')


@dataclass(frozen=True)
class Matcher:
    """One label matcher. A label that is absent matches as the empty string."""

    name: str
    op: str
    value: str

    def __post_init__(self) -> None:
        if self.op in ("=~", "!~"):
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ValueError(f"matcher {self.name}{self.op}{self.value!r}: invalid regex: {exc}") from exc

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
