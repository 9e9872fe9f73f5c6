from __future__ import annotations

import pytest

from heald.matchers import parse_matcher


@pytest.mark.parametrize(("text", "labels", "hit"), [
    ('a="x"', {"a": "x"}, True),
    ('a="x"', {"a": "xy"}, False),
    ('a!="x"', {}, True),
    ('a=~"x|y"', {"a": "y"}, True),
    ('a=~"x"', {"a": "xx"}, False),  # anchored, as in Alertmanager
    ('a!~"5.."', {"a": "503"}, False),
    ('a=""', {}, True),
    ('a="q\\"uote"', {"a": 'q"uote'}, True),
])
def test_matchers(text: str, labels: dict[str, str], hit: bool) -> None:
    assert parse_matcher(text).matches(labels) is hit


def test_bad_matchers() -> None:
    with pytest.raises(ValueError, match="expected name"):
        parse_matcher("just words")
    with pytest.raises(ValueError, match="invalid regex"):
        parse_matcher('a=~"("')
