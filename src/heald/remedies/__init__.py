"""The remedy catalog: every action heald can take, with validated parameters.

A remedy is a :class:`Remedy` subclass (the contract is in :mod:`heald.remedies.base`) registered
with :func:`register`. Its ``Params`` model
validates the parameters a runbook (or an LLM) proposes; nothing outside the catalog can run
(DESIGN.md invariant 1). Each remedy is safe to repeat or carries a guard: ``snapshot`` records
the target's state before applying and ``already_applied`` tells, after a crash in the middle of
applying, whether the effect already happened, so a replay never applies it twice (invariant 3).
"""

from __future__ import annotations

from importlib.metadata import entry_points

# The built-in remedies register themselves with the catalog when imported.
# isort: off
from heald.remedies import process, http, git, releases, files, command, containers, systemd  # noqa: F401  (catalog order)
# isort: on
from heald.remedies.base import (
    CATALOG,
    HealdSelf,
    Remedy,
    RemedyContext,
    RemedyError,
    RemedyNotApplicable,
    RemedyParams,
    RemedyParamsError,
    RemedyResult,
    Target,
    get,
    register,
    validate_params,
)

__all__ = ["CATALOG", "HealdSelf", "Remedy", "RemedyContext", "RemedyError", "RemedyNotApplicable", "RemedyParams", "RemedyParamsError",
           "RemedyResult", "Target", "get", "register", "validate_params"]


def _load_plugins() -> None:
    """Import every remedy plugin declared under the entry-point group ``heald.remedies``
    (pyproject's ``[project.entry-points."heald.remedies"]``): a plugin registers its remedies
    with :func:`register` when imported, so the catalog never imports a plugin by name (the CI
    remedies live in :mod:`heald.ci.remedies`, above this layer)."""
    for entry in entry_points(group="heald.remedies"):
        entry.load()


_load_plugins()
