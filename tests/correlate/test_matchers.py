from __future__ import annotations

import pytest

from heald.matchers import check_regexes, compile_regex, parse_matcher


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
    with pytest.raises(ValueError, match=r"^matcher a=~: invalid regex '\(': missing \)"):
        parse_matcher('a=~"("')


def test_regex_errors_name_the_item_the_pattern_and_what_was_expected() -> None:
    assert compile_regex(r"a\d+").pattern == r"a\d+"
    assert check_regexes(None) is None and check_regexes(["a", "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match=r"^invalid regex '\*x': nothing to repeat at position 0 "
                                         r"\(expected a Python regular expression\)$"):
        check_regexes("*x")
    with pytest.raises(ValueError, match=r"^item 2: invalid regex '\(': "):
        check_regexes(["a", "b", "("])
