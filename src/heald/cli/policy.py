"""``heald breakers list|reset`` (circuit breakers per target, :mod:`heald.budgets`)."""

from __future__ import annotations

import getpass

import typer
from rich.table import Table

from heald.cli import JsonOpt, app, config, fail, open_store, out, print_json

breakers_app = typer.Typer(help="Circuit breakers: auto-remediation off for a target after repeated failed "
                                "verifications, until a human resets it.", no_args_is_help=True)
app.add_typer(breakers_app, name="breakers")


@breakers_app.command("list")
def list_breakers(json_out: bool = JsonOpt) -> None:
    """List every target's breaker (open ones first)."""
    from heald.budgets import breakers

    rows = sorted(breakers(open_store(config())), key=lambda b: (b["state"] != "open", b["target"]))
    if json_out:
        print_json(rows)
        return
    if not rows:
        out.print("no circuit breakers yet: no remedy has been verified.")
        return
    table = Table(title="circuit breakers")
    for col in ("target", "state", "failures", "opened", "why", "last reset"):
        table.add_column(col)
    for b in rows:
        table.add_row(b["target"], "[red]open[/]" if b["state"] == "open" else "closed", str(b["failures"]),
                      (b["opened_at"] or "—")[:19], b["opened_reason"] or "—",
                      f"{b['reset_at'][:19]} by {b['reset_by']}" if b["reset_at"] else "—")
    out.print(table)


@breakers_app.command("reset")
def reset(target: str = typer.Argument(..., help="The target, as listed (e.g. service:shop)."),
          comment: str = typer.Option("", help="Why it is safe to heal it automatically again."),
          json_out: bool = JsonOpt) -> None:
    """Close a target's breaker: auto-remediation is on again for it."""
    from heald.budgets import reset_breaker
    from heald.store import NotFound

    try:
        row = reset_breaker(open_store(config()), target, f"cli:{getpass.getuser()}", comment)
    except NotFound as exc:
        fail(str(exc), 1)
    if json_out:
        print_json(row)
    else:
        out.print(f"breaker of {target} is closed: auto-remediation is on again.")
