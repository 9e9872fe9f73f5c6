"""The service dependency map: ``services.<name>.depends_on`` in ``heald.yaml``.

When a service's dependency is down, the service fails too (the shop's checkouts fail when
payments is down); healing the dependent would be wrong. So, as an Alertmanager inhibition
rule with the dependency's alert as source, a dependency's open incident absorbs its
dependents' signals (:func:`heald.correlate.ingest` joins them to it), and a dependency's
first signal takes over a dependent's incident that is still gathering signals (in
``observing``, during ``group_wait``), so that one incident is healed and its remedy targets
the dependency. The configuration refuses cycles. Label-based inhibition rules
(``correlation.inhibit_rules``) and silences are applied before this, in
:mod:`heald.correlate.inhibit`: a signal they mute joins nothing.
"""

from __future__ import annotations

from heald.config import HealdConfig


def dependencies_of(config: HealdConfig, service: str) -> list[str]:
    """Every service ``service`` depends on, directly or through others, nearest first."""
    out: list[str] = []
    todo = list(config.services[service].depends_on) if service in config.services else []
    while todo:
        dep = todo.pop(0)
        if dep not in out and dep != service:
            out.append(dep)
            todo.extend(config.services[dep].depends_on)
    return out


def dependents_of(config: HealdConfig, service: str) -> list[str]:
    """Every service that depends on ``service``, directly or through others."""
    return [name for name in config.services if name != service and service in dependencies_of(config, name)]


def has_dependencies(config: HealdConfig, service: str | None) -> bool:
    """Does ``service`` take part in the dependency map at all (either side)?"""
    if not service or service not in config.services:
        return False
    return bool(config.services[service].depends_on) or any(service in s.depends_on for s in config.services.values())
