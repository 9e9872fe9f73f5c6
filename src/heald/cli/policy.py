"""``heald breakers list|reset`` (circuit breakers per target, :mod:`heald.budgets`),
``heald silences add|list|expire`` (:mod:`heald.correlate.silences`) and ``heald pause`` /
``heald resume`` (the kill switch, :mod:`heald.pause`)."""

from __future__ import annotations

import getpass
from datetime import datetime, timedelta

import typer
from rich.table import Table

from heald.cli._common import JsonOpt, app, config, fail, open_store, out, print_json

breakers_app = typer.Typer(help="Circuit breakers: auto-remediation off for a target after repeated failed "
                                "verifications, until a human resets it.", no_args_is_help=True)
app.add_typer(breakers_app, name="breakers")


@breakers_app.command("list")
def list_breakers(json_out: bool = JsonOpt) -> None:
    """List every target's breaker (open ones first)."""
    from heald.budgets import breakers

    rows = sorted(breakers(open_store(config(), write=False)), key=lambda b: (b["state"] != "open", b["target"]))
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


silences_app = typer.Typer(help="Silences and maintenance windows: matching signals are recorded but start nothing.",
                           no_args_is_help=True)
app.add_typer(silences_app, name="silences")


@silences_app.command("add")
def add_silence(
    matchers: list[str] = typer.Argument(..., help='Label matchers, all must match: service="shop" alertname=~"High.*"'),
    duration: str | None = typer.Option(None, "--duration", "-d",
                                        help="How long: 30m, 2h, 1d … (default 1h; with --every: how long the "
                                             "schedule holds, required)"),
    start: str | None = typer.Option(None, "--start", help="When it begins (ISO 8601 with a time zone; default now)."),
    comment: str = typer.Option(..., "--comment", "-m", help="Why (a maintenance, a known issue)."),
    every: str | None = typer.Option(None, "--every", help="A recurring maintenance window: a cron schedule "
                                                           "('0 2 * * 0' = Sundays 02:00, @daily …)."),
    window: str = typer.Option("1h", "--window", help="With --every: how long each window lasts (1m to 7d)."),
    timezone: str = typer.Option("UTC", "--timezone", help="With --every: the IANA time zone the schedule is read in."),
    json_out: bool = JsonOpt,
) -> None:
    """Silence signals matching MATCHERS for --duration from --start (default now); with
    --every, only inside the schedule's windows during that time."""
    from heald.correlate.silences import SilenceError, create_silence, parse_recurrence
    from heald.durations import format_duration, parse_duration
    from heald.models import utcnow

    if every is not None and duration is None:
        fail("--duration: say how long the schedule holds (e.g. --duration 90d) when --every is given")
    try:
        seconds = parse_duration(duration or "1h")
    except ValueError as exc:
        fail(f"--duration: {exc}")
    recurrence = None
    if every is not None:
        try:
            recurrence = parse_recurrence(every, parse_duration(window), timezone)
        except ValueError as exc:
            name = exc.field.split(".")[-1] if isinstance(exc, SilenceError) else "window"
            fail(f"--{'every' if name == 'schedule' else name}: {getattr(exc, 'message', exc)}")
    starts_at = None
    if start is not None:
        try:
            starts_at = datetime.fromisoformat(start.replace("Z", "+00:00"))
        except ValueError:
            fail(f"--start: expected an ISO 8601 time such as 2025-01-01T10:00:00+00:00, got {start!r}")
        if starts_at.tzinfo is None:
            fail(f"--start: give a time zone (e.g. {start}+00:00 or {start}Z)")
    try:
        row = create_silence(open_store(config()), matchers, (starts_at or utcnow()) + timedelta(seconds=seconds),
                             starts_at=starts_at, created_by=f"cli:{getpass.getuser()}", comment=comment,
                             recurrence=recurrence)
    except SilenceError as exc:
        fail(str(exc).replace("matchers", "MATCHERS", 1))
    if json_out:
        print_json(row)
    else:
        windows = ""
        if recurrence is not None:
            nxt = row["next_window"]
            windows = (f" Windows of {format_duration(recurrence['window_seconds'])} at '{recurrence['schedule']}' "
                       f"({recurrence['timezone']})" + (f", next from {nxt['starts_at'][:19]} UTC." if nxt else "."))
        out.print(f"silence {row['id']} ({', '.join(row['matchers'])}) is {row['state']} for "
                  f"{format_duration(seconds)}, until {row['ends_at'][:19]} UTC.{windows}")


@silences_app.command("list")
def list_silences_cmd(all_: bool = typer.Option(False, "--all", help="Expired silences too."),
                      json_out: bool = JsonOpt) -> None:
    """List pending and active silences (--all: expired ones too)."""
    from heald.correlate.silences import list_silences

    rows = list_silences(open_store(config(), write=False), unexpired=not all_)
    if json_out:
        print_json(rows)
        return
    table = Table(title="silences")
    for col in ("id", "state", "matchers", "starts (UTC)", "ends (UTC)", "windows", "by", "comment"):
        table.add_column(col)
    for r in rows:
        rec = r["recurrence"]
        windows = (f"{rec['window_seconds'] // 60}m at '{rec['schedule']}' {rec['timezone']}" if rec else "—")
        table.add_row(str(r["id"]), r["state"], ", ".join(r["matchers"]), r["starts_at"][:19], r["ends_at"][:19], windows,
                      r["expired_by"] and f"{r['created_by']} (expired by {r['expired_by']})" or r["created_by"],
                      r["comment"])
    out.print(table)


@silences_app.command("expire")
def expire_silence_cmd(silence_id: int = typer.Argument(..., help="The silence's id (heald silences list)."),
                       json_out: bool = JsonOpt) -> None:
    """End a silence now; it stays in the history, expired."""
    from heald.correlate.silences import expire_silence
    from heald.store import NotFound

    try:
        row = expire_silence(open_store(config()), silence_id, f"cli:{getpass.getuser()}")
    except NotFound as exc:
        fail(str(exc), 1)
    if json_out:
        print_json(row)
    else:
        out.print(f"silence {silence_id} is expired.")


@app.command("pause")
def pause_cmd(reason: str = typer.Option(..., "--reason", "-m", help="Why every automatic action stops (required)."),
              json_out: bool = JsonOpt) -> None:
    """Stop every automatic action of every heald worker on the database, at once. Incidents are
    still opened and diagnosed; their remedies wait for ``heald resume``."""
    from heald import pause

    try:
        state = pause.pause(open_store(config()), f"cli:{getpass.getuser()}", reason)
    except ValueError as exc:
        fail(str(exc).replace("reason:", "--reason:", 1))
    if json_out:
        print_json(state.to_json())
    else:
        out.print(f"{state.describe()}. heald resume to act again.", highlight=False)


@app.command("resume")
def resume_cmd(reason: str = typer.Option("", "--reason", "-m", help="Why it is safe to act again."),
               json_out: bool = JsonOpt) -> None:
    """Resume automatic actions after ``heald pause``."""
    from heald import pause
    from heald.engine import attention, client_send

    cfg = config()
    store = open_store(cfg)
    try:
        state = pause.resume(store, f"cli:{getpass.getuser()}", reason)
    except ValueError as exc:
        fail(str(exc).replace("reason:", "--reason:", 1), 1)
    attention.wake_after_resume(store, client_send(cfg))  # the waiting healings ask the gate again now
    if json_out:
        print_json(state.to_json())
    else:
        out.print("heald is resumed: it acts by its policy again.", highlight=False)
