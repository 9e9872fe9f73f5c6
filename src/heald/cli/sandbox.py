"""``heald sandbox check``: which sandbox backends work on this machine."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from heald.cli._common import JsonOpt, app, config, out, print_json

sandbox_app = typer.Typer(help="The sandbox untrusted work runs in.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")


@sandbox_app.command("check")
def check(json_out: bool = JsonOpt) -> None:
    """Probe every backend (bubblewrap, Docker) and say which one heald would use, and whether
    the limits on the whole run (cgroup, disk) can be enforced here; exit 1 when no backend
    works (heald then refuses untrusted work)."""
    from heald.sandbox import SandboxUnavailable, backend_status, limits_status, open_sandbox

    cfg = config().sandbox
    statuses = backend_status(cfg)
    run_limits = limits_status(cfg)
    try:
        chosen: str | None = open_sandbox(cfg).name
        problem = None
    except SandboxUnavailable as exc:
        chosen, problem = None, str(exc)
    if json_out:
        print_json({"configured": cfg.backend, "chosen": chosen, "problem": problem,
                    "backends": [{"name": s.name, "ok": s.ok, "detail": s.detail} for s in statuses],
                    "aggregate_limits": cfg.aggregate_limits,
                    "run_limits": [{"name": s.name, "ok": s.ok, "detail": s.detail} for s in run_limits]})
    else:
        table = Table(title=f"sandbox backends (configured: {cfg.backend})")
        for col in ("backend", "works", "detail"):
            table.add_column(col)
        for s in statuses:
            table.add_row(s.name, "[green]yes[/]" if s.ok else "[red]no[/]", escape(s.detail))
        out.print(table)
        limits_table = Table(title=f"limits on the whole run (aggregate_limits: {cfg.aggregate_limits})")
        for col in ("limit", "enforced", "detail"):
            limits_table.add_column(col)
        for s in run_limits:
            limits_table.add_row(s.name, "[green]yes[/]" if s.ok else "[yellow]no[/]", escape(s.detail))
        out.print(limits_table)
        out.print(f"heald uses: [bold]{chosen}[/]" if chosen else f"[red]{escape(problem or '')}[/]")
    if chosen is None:
        raise typer.Exit(1)
