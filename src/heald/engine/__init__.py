"""The engine: one durable DBOS workflow heals one incident.

- :mod:`heald.engine.workflow` — :func:`heal_incident`, the pipeline read top to bottom;
- :mod:`heald.engine.steps` — each stage as a plain function of explicit dependencies
  (:class:`~heald.engine.steps.Deps`) returning a small typed result;
- :mod:`heald.engine.dbos_steps` — the thin DBOS steps that record those results as JSON, and
  the durable waits (lease, approval);
- :mod:`heald.engine.runtime` — :class:`Runtime` (a running heald: store, supervisor, probes,
  DBOS) and the approval intake.

The act step is guarded by the action's idempotency key and the remedy's snapshot, so a crash
*inside* it does not apply the remedy twice either (DESIGN.md invariants 3 and 4).
"""

from heald.engine.runtime import (
    APPROVAL_TOPIC,
    Runtime,
    approval_tally,
    audit_checkpointer,
    client_send,
    dbos_config,
    prepare_state_dir,
    runtime,
    submit_approval,
)
from heald.engine.steps import Deps, still_firing, workflow_id
from heald.engine.workflow import heal_incident

__all__ = ["APPROVAL_TOPIC", "Deps", "Runtime", "approval_tally", "audit_checkpointer", "client_send", "dbos_config",
           "heal_incident", "prepare_state_dir", "runtime", "still_firing", "submit_approval", "workflow_id"]
