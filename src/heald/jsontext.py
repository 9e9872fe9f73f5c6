"""Untrusted JSON and text: parse with bounds, find text that is not Unicode, show short excerpts.

Every JSON body heald receives (the API's request bodies, every webhook source) is parsed by
:func:`loads`, which turns each way a body can break a parser into one error naming where and
what was expected:

* nesting deeper than :data:`MAX_DEPTH` (the C decoder raises RecursionError near 1,000; a
  recursive walk over a deep value fails the same way);
* an integer of more digits than Python converts (``sys.get_int_max_str_digits()``, 4,300 by
  default; ``json`` raises a bare ValueError for it);
* a lone UTF-16 surrogate written as an escape (``"\\ud83d"``): JSON's grammar allows it, but it
  is not a Unicode character, so it cannot be stored or encoded as UTF-8. It is refused with
  the JSON path of the string (or key) that holds it;
* a NUL character (``"\\u0000"``): valid Unicode, but PostgreSQL cannot store it in text.

:func:`clean` replaces both with U+FFFD, for display (text stored before these checks can
still be read) and for text heald reads from elsewhere (log lines, probe output);
:func:`excerpt` keeps error messages short whatever the input.
"""

from __future__ import annotations

import json
import re
import reprlib
import sys
from typing import Any

#: The deepest nesting of arrays and objects accepted in a JSON body.
MAX_DEPTH = 64

_SURROGATE = re.compile("[\ud800-\udfff]")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 4, 4, 60, 60, 60


class JSONInputError(ValueError):
    """A JSON body heald refuses. ``field`` is the dotted path of the offending value
    (``(body)`` for the whole body), ``expected`` what was expected there."""

    def __init__(self, field: str, expected: str):
        self.field = field
        self.expected = expected
        super().__init__(f"{field}: expected {expected}")


def has_lone_surrogate(text: str) -> bool:
    """Does ``text`` hold a UTF-16 surrogate code point (U+D800–U+DFFF), which no valid UTF-8
    can encode?"""
    return _SURROGATE.search(text) is not None


def clean(text: str) -> str:
    """``text`` with every lone surrogate and NUL replaced by U+FFFD (a surrogate pair written
    as two code points becomes the character it encodes)."""
    if _UNSTORABLE.search(text) is None:
        return text
    if has_lone_surrogate(text):
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text.replace("\x00", "\ufffd")


def clean_value(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings, numbers) with :func:`clean` applied to every
    string and key; other values are returned as they are. Iterative, so any depth is safe."""
    if isinstance(value, str):
        return clean(value)
    if not isinstance(value, (dict, list, tuple)):
        return value
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(root, 0, value)]
    while stack:
        parent, key, item = stack.pop()
        if isinstance(item, str):
            parent[key] = clean(item)
        elif isinstance(item, dict):
            out: dict[Any, Any] = {}
            parent[key] = out
            for k, v in item.items():
                ck = clean(k) if isinstance(k, str) else k
                out[ck] = None
                stack.append((out, ck, v))
        elif isinstance(item, (list, tuple)):
            lst: list[Any] = [None] * len(item)
            parent[key] = lst
            for i, v in enumerate(item):
                stack.append((lst, i, v))
        else:
            parent[key] = item
    return root[0]


def _path(parts: list[str | int]) -> str:
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else p)
    return excerpt(text, 200) if text else "(body)"


def check(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`JSONInputError` if ``value`` (parsed JSON) nests deeper than ``max_depth``
    or holds a lone surrogate in a string or key. Iterative: never raises RecursionError."""
    stack: list[tuple[Any, list[str | int], int]] = [(value, [], 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item) is not None:
                raise JSONInputError(_path(path), _unstorable(item))
        elif isinstance(item, (dict, list)):
            if depth >= max_depth:
                raise JSONInputError(_path(path), f"JSON nested at most {max_depth} levels deep")
            if isinstance(item, dict):
                for k, v in item.items():
                    if _UNSTORABLE.search(k) is not None:
                        raise JSONInputError(_path([*path, clean(k)]), "a key of " + _unstorable(k))
                    stack.append((v, [*path, k], depth + 1))
            else:
                stack.extend((v, [*path, i], depth + 1) for i, v in enumerate(item))


def _unstorable(text: str) -> str:
    if has_lone_surrogate(text):
        return "Unicode text (this string holds a lone UTF-16 surrogate such as \\ud83d, which is not a character)"
    return "text without NUL characters (\\u0000), which cannot be stored"


def loads(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse a JSON document (RFC 8259; bytes must be UTF-8) and :func:`check` it. Raises
    :class:`JSONInputError` (field ``(body)`` unless a value is at fault) and nothing else."""
    try:
        value = json.loads(data)
    except UnicodeDecodeError as exc:
        raise JSONInputError("(body)", f"JSON in UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise JSONInputError("(body)", f"valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
    except RecursionError as exc:
        raise JSONInputError("(body)", f"JSON nested at most {max_depth} levels deep") from exc
    except ValueError as exc:  # an integer with more digits than Python converts
        raise JSONInputError("(body)", f"numbers of at most {sys.get_int_max_str_digits()} digits") from exc
    check(value, max_depth)
    return value


#: A model's answer wrapped in one Markdown code fence (```json … ```), as chat models often write it.
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def model_json(content: str | None) -> Any:
    """A language model's answer as JSON: its text, or the inside of one ```json fence around
    it, parsed by :func:`loads` (bounded like any body heald receives). Raises ValueError:
    ``empty answer`` or ``not JSON: <why>``."""
    if not content:
        raise ValueError("empty answer")
    m = _FENCE.match(content)
    try:
        return loads(m.group(1) if m else content)
    except JSONInputError as exc:
        raise ValueError(f"not JSON: {exc.expected}") from exc


def quote(value: object) -> str:
    """``repr(value)`` kept short (strings of at most 60 characters shown, containers' first
    items), for naming a value in a message."""
    return clean(_REPR.repr(value))


def excerpt(value: object, limit: int = 100) -> str:
    """A short, printable excerpt of ``value`` for an error message: its text (``repr`` for
    non-strings) cut to ``limit`` characters, saying how long it was; lone surrogates replaced."""
    text = value if isinstance(value, str) else _REPR.repr(value)
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(text)} characters)"
    return clean(text)
