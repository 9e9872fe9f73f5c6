"""Load a YAML file into a pydantic model, with errors that name the file, line and key.

Used for ``heald.yaml`` (:mod:`heald.config`) and runbook files (:mod:`heald.diagnose.runbooks`).
YAML is parsed with PyYAML's safe loader; line numbers come from the composed node tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class YamlProblem:
    """One problem in a YAML file: 1-based ``line`` (0 when unknown), dotted ``key``, ``message``."""

    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key or '(top level)'}: {self.message}"


class YamlFileError(ValueError):
    """A YAML file could not be read, parsed or validated; ``problems`` lists every finding."""

    def __init__(self, problems: Sequence[YamlProblem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def _node_for(root: yaml.Node | None, loc: Sequence[str | int]) -> tuple[yaml.Node | None, bool]:
    """Walk ``loc`` through a composed YAML tree; return the deepest node found and whether
    the whole path was found."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if str(key_node.value) == str(part):
                    node = value_node
                    break
            else:
                return node, False
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return node, False
    return node, True


def _key_line(root: yaml.Node | None, loc: Sequence[str | int]) -> int:
    """Line of the key ``loc`` names (the key itself for a mapping entry), else of its parent."""
    if not loc:
        return 1
    parent, found = _node_for(root, loc[:-1])
    if found and isinstance(parent, yaml.MappingNode):
        for key_node, _ in parent.value:
            if str(key_node.value) == str(loc[-1]):
                return key_node.start_mark.line + 1
    node, _ = _node_for(root, loc)
    return node.start_mark.line + 1 if node is not None else 0


def key_line(text: str, loc: Sequence[str | int]) -> int:
    """The 1-based line of the key at ``loc`` (a path of keys and list indexes) in the YAML
    document ``text``; 0 when the text does not parse."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return 0
    return _key_line(root, loc)


def describe_validation_error(file: str, text: str, err: ValidationError, prefix: Sequence[str | int] = ()) -> list[YamlProblem]:
    """Turn a pydantic ValidationError on data loaded from ``text`` into YamlProblems.

    ``prefix`` is the location, inside the YAML document, of the data that was validated.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        root = None
    problems = []
    for e in err.errors():
        loc = [*prefix, *[p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-"))]]
        key = ".".join(str(p) for p in loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not expected here)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], (dict, list)):
            msg = f"{msg} (got {e['input']!r})"
        problems.append(YamlProblem(file, _key_line(root, loc), key, msg))
    return problems


def read_yaml(path: Path) -> tuple[str, Any]:
    """Read and parse ``path``; return (text, data). Raises YamlFileError naming file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise YamlFileError([YamlProblem(str(path), 0, "", f"cannot read file: {exc.strerror or exc}")]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlFileError([YamlProblem(str(path), line, "", f"invalid YAML: {problem}")]) from exc
    return text, data


def load_model(path: Path, model: type[M], *, context: dict[str, Any] | None = None, default: Any = None) -> M:
    """Read ``path`` and validate it as ``model``.

    An empty file validates ``default`` (or ``{}``). Raises YamlFileError whose problems give
    file, line, dotted key and what was expected.
    """
    text, data = read_yaml(path)
    if data is None:
        data = {} if default is None else default
    try:
        return model.model_validate(data, context=context)
    except ValidationError as err:
        raise YamlFileError(describe_validation_error(str(path), text, err)) from err
