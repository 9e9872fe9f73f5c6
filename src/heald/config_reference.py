"""The configuration reference (``docs/config.md``), generated from the pydantic models of
:mod:`heald.config` so that it cannot drift from what heald accepts.

:func:`render_reference` walks :class:`heald.config.HealdConfig` field by field and writes one
Markdown section per configuration section (a model), with a table of its keys: type (with
its bounds), default, unit and description. ``heald config reference`` prints it; a test
compares it with the committed ``docs/config.md``. :func:`missing_descriptions` lists the keys
that have no description (there must be none).
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from heald.config import HealdConfig

#: Units read from a key's suffix.
UNITS = {"_seconds": "seconds", "_bytes": "bytes", "_mb": "MiB", "_kb": "KiB"}


@dataclass(frozen=True)
class Section:
    """One configuration section: its dotted ``path`` (``services.<name>.probes[]``), the
    model that validates it."""

    path: str
    model: type[BaseModel]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True  # noqa: UP007
    return tp, False


def _unannotated(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _children(path: str, tp: Any) -> list[tuple[str, type[BaseModel]]]:
    """The sub-sections a field of type ``tp`` at ``path`` opens: (path, model) pairs."""
    tp, _ = _strip_optional(_unannotated(tp))
    origin = typing.get_origin(tp)
    if _is_model(tp):
        return [(path, tp)]
    if origin is list:
        return _children(path + "[]", typing.get_args(tp)[0])
    if origin is dict:
        return _children(path + ".<name>", typing.get_args(tp)[1])
    if origin in (typing.Union, types.UnionType):
        out = []
        for arg in typing.get_args(tp):
            for p, m in _children(path, arg):
                kind = m.model_fields.get("type")
                tag = typing.get_args(kind.annotation)[0] if kind is not None and typing.get_args(kind.annotation) else m.__name__
                out.append((f"{p} (type: {tag})", m))
        return out
    return []


def sections() -> list[Section]:
    """Every section of ``heald.yaml``, depth first in declaration order; a model met again
    at another path (e.g. ``retry`` of each channel type) gets its first path only."""
    out: list[Section] = []
    seen: set[type[BaseModel]] = set()

    def walk(path: str, model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        out.append(Section(path, model))
        base = re.sub(r" \(type: [^)]*\)$", "", path)
        for name, field in model.model_fields.items():
            if field.exclude:
                continue
            for child_path, child in _children(f"{base}.{name}" if base else name, field.annotation):
                walk(child_path, child)

    walk("", HealdConfig)
    return out


def _first_path(model: type[BaseModel]) -> str:
    return next((s.path for s in sections() if s.model is model), model.__name__)


def type_text(tp: Any) -> str:
    """A field type for people: ``number``, ``list of string``, ``one of http, tcp``…"""
    tp = _unannotated(tp)
    tp, optional = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        text = "one of " + ", ".join(f"`{a}`" for a in typing.get_args(tp))
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        text = "one of " + ", ".join(f"`{m.value}`" for m in tp)
    elif origin is list:
        text = f"list of {type_text(typing.get_args(tp)[0])}"
    elif origin is dict:
        key, value = typing.get_args(tp)
        text = f"map of {type_text(key)} to {type_text(value)}"
    elif origin in (typing.Union, types.UnionType):
        text = " or ".join(type_text(a) for a in typing.get_args(tp))
    elif _is_model(tp):
        text = f"section `{_first_path(tp)}`"
    else:
        text = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "path"}.get(tp, str(tp))
    return f"{text} or null" if optional else text


def _bounds(field: FieldInfo) -> str:
    parts = []
    for m in field.metadata:
        if isinstance(m, Gt):
            parts.append(f"> {m.gt}")
        elif isinstance(m, Ge):
            parts.append(f"≥ {m.ge}")
        elif isinstance(m, Lt):
            parts.append(f"< {m.lt}")
        elif isinstance(m, Le):
            parts.append(f"≤ {m.le}")
        elif isinstance(m, MinLen):
            parts.append(f"at least {m.min_length} long")
        elif isinstance(m, MaxLen):
            parts.append(f"at most {m.max_length} long")
        elif getattr(m, "pattern", None):
            parts.append(f"matches `{m.pattern}`")
    return ", ".join(parts)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def default_text(field: FieldInfo) -> str:
    """A field's default as YAML-like text in a code span, ``required`` when it has none, or
    ``(section)`` for a sub-section made by its own defaults."""
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if _is_model(type(value)) and not field.default_factory.__name__ == "<lambda>":
            return "(section)"
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    value = _plain(value)
    if value is None:
        return "`null`"
    if isinstance(value, list) and len(value) > 12 and all(isinstance(v, int) for v in value) \
            and value == list(range(value[0], value[-1] + 1)):
        return f"`{value[0]}`…`{value[-1]}`"
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def unit_text(name: str) -> str:
    """The unit a key's name declares by its suffix (``_seconds``, ``_bytes``, ``_mb``, ``_kb``), else ``""``."""
    return next((unit for suffix, unit in UNITS.items() if name.endswith(suffix)), "")


def _deprecated_names(field: FieldInfo) -> list[str]:
    alias = field.validation_alias
    choices = getattr(alias, "choices", None) or []
    return [c for c in choices[1:] if isinstance(c, str)]


def _docstring(model: type[BaseModel]) -> str:
    doc = inspect.cleandoc(model.__doc__ or "")
    doc = re.sub(r":(?:mod|class|func|data|attr):`~?([^`]+)`", r"`\1`", doc)
    return doc.replace("``", "`")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def missing_descriptions() -> list[str]:
    """Dotted keys whose field has no description (the reference needs one for each)."""
    return [f"{s.path}.{name}" if s.path else name for s in sections()
            for name, f in s.model.model_fields.items() if not f.exclude and not (f.description or "").strip()]


def render_reference() -> str:
    """The Markdown text of ``docs/config.md``. Raises ValueError naming the keys without a
    description."""
    if missing := missing_descriptions():
        raise ValueError(f"these configuration keys have no description: {', '.join(missing)}")
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `heald config reference` from src/heald/config.py; do not edit by hand. -->",
        "",
        "heald reads one YAML file, `heald.yaml` (found by `--config`, else `$HEALD_CONFIG`, else",
        "`./heald.yaml`; with none the defaults below apply). `heald config check [FILE]` validates a",
        "file without starting anything; `heald config schema` prints its JSON Schema for editors",
        "(e.g. `# yaml-language-server: $schema=heald.schema.json` at the top of the file).",
        "Relative paths are relative to the file's directory. `<name>` stands for a key you choose,",
        "`[]` for an item of a list.",
        "",
    ]
    for s in sections():
        title = s.path or "top level"
        lines += [f"## `{title}`" if s.path else f"## {title}", ""]
        doc = _docstring(s.model)
        if doc:
            lines += [doc, ""]
        lines += ["| key | type | default | unit | description |", "|---|---|---|---|---|"]
        for name, f in s.model.model_fields.items():
            if f.exclude:
                continue
            typ = type_text(f.annotation)
            if bounds := _bounds(f):
                typ += f" ({bounds})"
            desc = (f.description or "").strip()
            if old := _deprecated_names(f):
                desc += " " + "; ".join(f"deprecated alias: `{o}`" for o in old)
            lines.append(f"| `{name}` | {_cell(typ)} | {_cell(default_text(f))} | {unit_text(name)} | {_cell(desc)} |")
        lines.append("")
    return "\n".join(lines)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``heald.yaml``, for editors, without the keys the
    loader sets itself."""
    schema = HealdConfig.model_json_schema(mode="validation")
    schema["properties"].pop("source_file", None)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "heald.schema.json", **schema}
