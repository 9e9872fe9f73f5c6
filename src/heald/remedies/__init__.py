"""The remedy catalog: every action heald can take, with validated parameters.

A remedy is a :class:`Remedy` subclass registered with :func:`register`. Its ``Params`` model
validates the parameters a runbook (or an LLM) proposes; nothing outside the catalog can run
(DESIGN.md invariant 1). Each remedy is safe to repeat or carries a guard: ``snapshot`` records
the target's state before applying and ``already_applied`` tells, after a crash in the middle of
applying, whether the effect already happened, so a replay never applies it twice (invariant 3).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from heald.models import Risk

if TYPE_CHECKING:
    from heald.config import HealdConfig
    from heald.models import Incident
    from heald.store import Store
    from heald.supervise import Supervisor


class RemedyError(RuntimeError):
    """Applying a remedy failed; the message says what happened."""


class RemedyParamsError(ValueError):
    """A remedy's parameters are invalid; the message names the remedy, the field and what was
    expected."""


class RemedyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class RemedyContext:
    """What a remedy may use: configuration, the supervisor of managed services, the incident,
    heald's store (to read the incident's evidence and record what it proposes)."""

    config: HealdConfig
    supervisor: Supervisor
    incident: Incident | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    store: Store | None = None


@dataclass
class RemedyResult:
    """What applying did (human-readable ``output``) and, if it can be undone, the data the
    undo needs."""

    output: str
    undo: dict[str, Any] | None = None


class Remedy(ABC):
    """One action type of the catalog."""

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[RemedyParams]]
    default_risk: ClassVar[Risk] = Risk.low
    has_undo: ClassVar[bool] = False

    def target(self, params: RemedyParams) -> str:
        """What the remedy acts on (for per-target limits and cooldowns)."""
        return self.name

    def snapshot(self, params: RemedyParams, ctx: RemedyContext) -> dict[str, Any] | None:
        """The target's state before applying (stored with the action)."""
        return None

    def already_applied(self, params: RemedyParams, ctx: RemedyContext, snapshot: dict[str, Any] | None) -> bool:
        """After a crash while applying: did the effect already happen? Default False, which is
        right only for remedies that are safe to repeat."""
        return False

    @abstractmethod
    def apply(self, params: RemedyParams, ctx: RemedyContext) -> RemedyResult:
        """Apply the remedy. Raises RemedyError when it fails."""

    def undo(self, params: RemedyParams, ctx: RemedyContext, undo: dict[str, Any]) -> RemedyResult:
        """Undo an earlier apply; only called when ``has_undo``. Raises RemedyError."""
        raise RemedyError(f"remedy {self.name} has no undo")


CATALOG: dict[str, Remedy] = {}


def register(cls: type[Remedy]) -> type[Remedy]:
    """Class decorator: add a remedy to the catalog under ``cls.name``."""
    CATALOG[cls.name] = cls()
    return cls


def get(name: str) -> Remedy:
    """Raises RemedyParamsError for a name outside the catalog."""
    try:
        return CATALOG[name]
    except KeyError:
        raise RemedyParamsError(f"unknown remedy {name!r}; the catalog has: {', '.join(sorted(CATALOG))}") from None


def validate_params(name: str, params: dict[str, Any]) -> RemedyParams:
    """Validate ``params`` for remedy ``name``. Raises RemedyParamsError naming the field."""
    remedy = get(name)
    try:
        return remedy.Params.model_validate(params)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(params)'}: {e['msg']}" for e in err.errors())
        raise RemedyParamsError(f"remedy {name}: invalid parameters: {problems}") from err


# Register the built-in remedies.
from heald.remedies import process as _process  # noqa: E402,F401
from heald.remedies import http as _http  # noqa: E402,F401
from heald.remedies import git as _git  # noqa: E402,F401
from heald.remedies import releases as _releases  # noqa: E402,F401
from heald.remedies import files as _files  # noqa: E402,F401
from heald.remedies import command as _command  # noqa: E402,F401


def _load_plugins() -> None:
    """Import every remedy plugin declared under the entry-point group ``heald.remedies``
    (pyproject's ``[project.entry-points."heald.remedies"]``): a plugin registers its remedies
    with :func:`register` when imported, so the catalog never imports a plugin by name (the CI
    remedies live in :mod:`heald.ci.remedies`, above this layer)."""
    for entry in entry_points(group="heald.remedies"):
        entry.load()


_load_plugins()
