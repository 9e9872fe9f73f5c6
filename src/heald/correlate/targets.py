"""Targets and routes: what a signal is about, and which grouping rules apply to it.

A signal's *target* is the service, host, unit or container it is about. Sources name it in
different ways — a probe by the configured service, an Alertmanager alert by its ``service``,
``job`` or ``instance`` label, a GitHub CI failure by its repository — so :func:`resolve_service`
maps those labels onto a configured service (``services.<name>``) when one is meant: its name
in ``service`` or ``job`` (or ``app``, ``container``, ``unit``), or the address in ``instance``
that one of its probes checks. Signals about one target join its open incident whatever their
alert names (:func:`heald.correlate.find_incident`). A service heald does not know is one
target per ``instance`` (two hosts of one Prometheus job are two targets). A CI failure is about
one commit of its repository (the ``head_sha`` label): two commits are two targets, and two
incidents.

:func:`route_for` picks the first of ``correlation.routes`` whose matchers match a signal, as
Alertmanager's routing tree does; the route may set its own ``group_by`` and
``group_wait_seconds``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from heald.config import CorrelationRoute, HealdConfig
from heald.matchers import matches_all, parse_matcher
from heald.models import Signal

#: Labels that may name a configured service, in order of preference.
NAME_LABELS = ("service", "job", "app", "app_kubernetes_io_name", "container", "unit")

#: The label naming the commit a CI signal is about (GitHub's ``head_sha``).
COMMIT_LABEL = "head_sha"


def _probe_addresses(config: HealdConfig, service: str) -> set[str]:
    """``host:port`` of every http/tcp/metric probe of ``service`` (both ``localhost`` and
    ``127.0.0.1`` for a loopback one)."""
    out: set[str] = set()
    for probe in config.services[service].probes:
        host, port = None, None
        if probe.type == "tcp" and probe.port:
            host, port = probe.host, probe.port
        elif probe.url:
            parts = urlsplit(probe.url)
            host = parts.hostname
            try:
                port = parts.port or (443 if parts.scheme == "https" else 80)
            except ValueError:
                continue
        if host and port:
            out.add(f"{host}:{port}")
            if host in ("127.0.0.1", "localhost", "::1"):
                out.update({f"127.0.0.1:{port}", f"localhost:{port}"})
    return out


def resolve_service(signal: Signal, config: HealdConfig) -> str | None:
    """The configured service ``signal`` is about, or None when it names none: its own
    ``service`` when that is configured, else the first of :data:`NAME_LABELS` whose value is a
    configured service's name, else the configured service one of whose probes checks the
    address in its ``instance`` label (``host:port``)."""
    services = config.services
    if signal.service and signal.service in services:
        return signal.service
    for name in NAME_LABELS:
        value = signal.labels.get(name)
        if value and value in services:
            return value
    instance = signal.labels.get("instance")
    if instance:
        for name in services:
            if instance in _probe_addresses(config, name):
                return name
    return None


def target_of(service: str | None, labels: dict[str, str], config: HealdConfig) -> str | None:
    """The target of a signal or incident with ``service`` (already resolved) and ``labels``: a
    configured service is the target whatever instance reports it; any other service is one
    per ``instance`` (``node/10.0.0.7:9100``: two hosts of one job are two targets); a CI signal
    adds ``@<commit>``. None when it names neither a service nor an instance."""
    instance = labels.get("instance") or ""
    if service and service in config.services:
        base = service
    else:
        base = "/".join(part for part in (service, instance) if part)
    if not base:
        return None
    commit = labels.get(COMMIT_LABEL)
    return f"{base}@{commit}" if commit else base


def route_labels(signal: Signal) -> dict[str, str]:
    """What route matchers see: the signal's labels plus ``source``, ``kind``, ``service`` and
    ``severity``."""
    return {**signal.labels, "source": signal.source, "kind": signal.kind,
            "service": signal.service or signal.labels.get("service", ""), "severity": signal.severity.value}


def route_for(signal: Signal, config: HealdConfig) -> CorrelationRoute | None:
    """The first of ``correlation.routes`` whose matchers all match ``signal``; None when none
    does (the defaults apply)."""
    labels = route_labels(signal)
    for route in config.correlation.routes:
        if matches_all([parse_matcher(m) for m in route.matchers], labels):
            return route
    return None


def group_by_for(signal: Signal, config: HealdConfig) -> list[str]:
    """The ``group_by`` labels for ``signal``: its route's, else ``correlation.group_by``."""
    route = route_for(signal, config)
    return route.group_by if route is not None and route.group_by is not None else config.correlation.group_by


def group_wait_for(signal: Signal, config: HealdConfig) -> float:
    """Seconds an incident ``signal`` opened waits for more signals before diagnosis: its
    route's ``group_wait_seconds``, else ``healing.group_wait_seconds``."""
    route = route_for(signal, config)
    if route is not None and route.group_wait_seconds is not None:
        return route.group_wait_seconds
    return config.healing.group_wait_seconds
