"""heald: a self-healing control plane for services and CI.

The pipeline, read top to bottom in :func:`heald.engine.workflow.heal_incident`:
sources → signals → correlate → incidents → diagnose → plan → gate (policy) → act (remedies)
→ verify → learn, with every step in the hash-chained audit log (:mod:`heald.store.audit`).
"""

__version__ = "0.1.0"
