"""Fingerprints and grouping keys.

A fingerprint is a stable hash of a signal's identifying labels (the whole label set plus
source and service, as Alertmanager's label-set fingerprint); a source that has its own
(Alertmanager's ``alerts[].fingerprint``) passes it on the signal instead. A grouping key is
built from the ``correlation.group_by`` label values, as Alertmanager's ``group_by``.
"""

from __future__ import annotations

import hashlib
import json

from heald.models import Signal


def fingerprint(signal: Signal, fields: tuple[str, ...] | None = None) -> str:
    """16 hex digits of sha256 over source, service and the labels named by ``fields`` (all
    labels when None), sorted by name."""
    labels = signal.labels if fields is None else {k: v for k, v in signal.labels.items() if k in fields}
    body = json.dumps({"source": signal.source, "service": signal.service, "labels": labels},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def group_key(signal: Signal, group_by: list[str]) -> str:
    """``name=value,…`` over ``group_by`` (``service`` falls back to the signal's service);
    hashed when longer than 120 characters."""
    values = []
    for name in group_by:
        value = signal.labels.get(name)
        if value is None and name == "service":
            value = signal.service
        values.append(f"{name}={value or ''}")
    key = ",".join(values)
    if len(key) > 120:
        key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:32]
    return key
