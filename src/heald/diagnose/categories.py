"""The closed vocabulary of root-cause categories heald's reasoners speak.

Every classifier of the signature knowledge base, the LLM reasoner and the eval cases use these
names; runbooks may add categories of their own (a runbook's ``diagnosis.category`` extends the
set the LLM may choose from, and ``heald runbooks check`` warns about a category outside this
vocabulary that no runbook defines).

Categories are related: a *cause* explains *symptoms* (a process that is down explains
``connection_refused`` on its port, and ``database_unavailable`` and ``http_5xx`` for the
services that use it; a missing module explains a pytest collection error). The relations are
the ``explains`` column of :data:`CATEGORIES`, listed in docs/diagnosis.md (a test keeps the two
equal). Two hypotheses *agree* when they name the same category or one explains the other
(directly or through a chain); then the gate keeps the winner's confidence. Otherwise the
reasoners disagree and the gate sees the lower confidence (:func:`agree`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    """One root-cause category: ``name``, a one-line ``description``, the ``area`` it belongs
    to (``service``, ``ci`` or ``any``) and the categories it ``explains`` (its symptoms)."""

    name: str
    description: str
    area: str
    explains: tuple[str, ...] = ()


_NET = ("connection_refused", "network_timeout", "http_5xx", "unhandled_exception")

CATEGORIES: dict[str, Category] = {c.name: c for c in [
    # -- services ----------------------------------------------------------------------------
    # a process that is down explains, for the services that use it, refused connections, an
    # unavailable database or cache (when it is one: redis, postgres), 5xx and upstream errors
    Category("process_down", "the service's process is not running (crashed, killed, exited)", "service",
             ("connection_refused", "http_5xx", "network_timeout", "dependency_down", "database_unavailable")),
    Category("dependency_down", "a service this one depends on is down or unreachable (upstream errors)", "service",
             _NET),
    Category("database_unavailable", "the service cannot reach or use its database or cache", "service", _NET),
    Category("connection_refused", "a connection was refused: nothing listens on the target address", "any",
             ("http_5xx", "unhandled_exception")),
    Category("network_timeout", "a connection or request timed out", "any",
             ("http_5xx", "unhandled_exception", "high_latency")),
    Category("dns_failure", "a host name could not be resolved", "any",
             ("connection_refused", "http_5xx", "unhandled_exception")),
    Category("tls_error", "a TLS handshake or certificate verification failed", "any",
             ("http_5xx", "unhandled_exception")),
    Category("http_5xx", "a burst of HTTP 5xx server errors", "service", ()),
    Category("high_latency", "responses are slower than the latency objective", "service", ()),
    Category("out_of_memory", "memory exhausted: killed by the OOM killer, MemoryError, resident memory over its limit",
             "any", ("process_down", "http_5xx", "unhandled_exception", "connection_refused")),
    Category("disk_full", "a filesystem is full or over quota (ENOSPC, EDQUOT)", "any",
             ("http_5xx", "unhandled_exception", "process_down")),
    Category("permission_denied", "the process lacks permission for a file or resource (EACCES, EPERM)", "any",
             ("unhandled_exception", "http_5xx", "process_down")),
    Category("bad_config", "the service's configuration is invalid or a config change broke it", "service",
             ("http_5xx", "unhandled_exception", "process_down")),
    Category("bad_release", "a newly deployed release of the service is faulty", "service",
             ("http_5xx", "unhandled_exception", "process_down", "high_latency")),
    Category("unhandled_exception", "the program raised an exception no more specific category explains", "any", ()),
    # -- CI ----------------------------------------------------------------------------------
    Category("missing_module", "an import failed: a module or distribution is not installed (ModuleNotFoundError)",
             "ci", ("test_collection_error", "test_failure", "unhandled_exception", "process_down")),
    Category("test_failure", "tests ran and some failed (assertion or error in a test)", "ci", ("unhandled_exception",)),
    Category("test_collection_error", "the test runner could not collect or import tests (syntax or import errors)",
             "ci", ("test_failure", "unhandled_exception")),
    Category("lint_error", "a linter or formatter check failed (ruff, flake8, black, isort)", "ci", ()),
    Category("dependency_resolution", "the package installer could not resolve or find a requirement", "ci",
             ("missing_module",)),
    Category("dependency_install", "a requirement was found but failed to build or install", "ci",
             ("missing_module",)),
    Category("ci_timeout", "the job or a test exceeded its time limit", "ci", ("test_failure",)),
    Category("flaky_test", "a test that fails intermittently and passes on re-run", "ci", ("test_failure",)),
    Category("not_reproduced", "the CI failure does not reproduce in heald's sandbox (specific to the CI machine, "
             "or intermittent: no test was seen both failing and passing)", "ci", ()),
    Category("environment_drift", "the CI environment changed (tool, interpreter, runner) and fails on every commit",
             "ci", ("test_failure", "test_collection_error", "dependency_install")),
    # -- none --------------------------------------------------------------------------------
    Category("unknown", "no reasoner recognised the failure", "any", ()),
]}


def is_known(name: str) -> bool:
    """Is ``name`` in heald's built-in vocabulary?"""
    return name in CATEGORIES


def explains(cause: str, symptom: str) -> bool:
    """Does ``cause`` explain ``symptom`` (directly or through a chain of explanations)?"""
    seen: set[str] = set()
    todo = [cause]
    while todo:
        c = todo.pop()
        if c in seen:
            continue
        seen.add(c)
        cat = CATEGORIES.get(c)
        if cat is None:
            continue
        if symptom in cat.explains:
            return True
        todo.extend(cat.explains)
    return False


def agree(a: str, b: str) -> bool:
    """Do two hypotheses agree: the same category, or one explains the other? ``unknown``
    agrees with nothing but itself."""
    return a == b or explains(a, b) or explains(b, a)
