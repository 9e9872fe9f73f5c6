"""``heald workers``: the heald workers sharing the configured database, their heartbeats and
what each runs (:mod:`heald.engine.cluster`); read from the database, so it works while no
worker runs on this machine."""

from __future__ import annotations

import time

from rich.table import Table

from heald.cli._common import JsonOpt, app, config, open_store, out, print_json


@app.command("workers")
def workers(json_out: bool = JsonOpt) -> None:
    """List the workers on the database: state, heartbeat age, leader, leases held (probes,
    log tailers), and who recovered the healings of one that stopped or died."""
    from heald.engine.cluster import list_workers

    cfg = config()
    store = open_store(cfg)
    try:
        found = list_workers(store.engine, cfg.cluster.heartbeat_timeout_seconds)
    finally:
        store.close()
    if json_out:
        print_json([w.as_json() for w in found])
        return
    if not found:
        out.print("no worker has run on this database yet")
        return
    table = Table("executor id", "state", "heartbeat", "leader", "host / pid", "version", "runs", "recovered by")
    for w in found:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(w.started_at))
        recovered = f"{w.recovered_by} ({w.recovered_workflows} workflows)" if w.recovered_by else ""
        table.add_row(w.executor_id, w.state, f"{w.heartbeat_age:.1f} s ago", "yes" if w.leader else "",
                      f"{w.host} / {w.pid}\nsince {since} UTC", w.version, "\n".join(w.leases) or "-", recovered)
    out.print(table)
