"""``heald incidents`` (list; ``--open`` for the open ones), ``heald incidents retry|ack|resolve
ID`` (a human's action on an open incident, :mod:`heald.engine.attention`) and ``heald status``
(open incidents by state, and those that need a human)."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from heald.cli._common import JsonOpt, app, approver_identity, config, fail, open_store, out, print_json
from heald.models import OPEN_STATES, IncidentState

incidents_app = typer.Typer(help="Incidents: list them (default), or retry, acknowledge or resolve one that is open.",
                            invoke_without_command=True, no_args_is_help=False)
app.add_typer(incidents_app, name="incidents")

AsOpt = typer.Option(None, "--as", help="Identity; only with api.auth false (default: your user name).")
TokenOpt = typer.Option(None, "--token", envvar="HEALD_TOKEN", help="An API token of role approver: its identity acts.")


def _secs(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f} s"


@incidents_app.callback()
def incidents(ctx: typer.Context,
              state: IncidentState | None = typer.Option(None, help="Only incidents in this state."),
              open_: bool = typer.Option(False, "--open", help="Only open incidents (those that need attention "
                                                                "included)."),
              limit: int = typer.Option(50, min=1, max=1000), json_out: bool = JsonOpt) -> None:
    """List incidents, newest first (incidents that need a human are marked)."""
    if ctx.invoked_subcommand is not None:
        return
    store = open_store(config(), write=False)
    rows = store.list_incidents(state=state, limit=limit, states=OPEN_STATES if open_ else None)
    if json_out:
        print_json([{**i.model_dump(mode="json"), "time_to_detect_s": i.time_to_detect_s,
                     "time_to_recover_s": i.time_to_recover_s} for i in rows])
        return
    table = Table(title="incidents")
    for col in ("id", "state", "service", "title", "category", "attempts", "detected", "TTR"):
        table.add_column(col)
    for i in rows:
        st = f"[bold red]{i.state.value}[/]" if i.state == IncidentState.needs_attention else i.state.value
        table.add_row(str(i.id), st, escape(i.service or "—"), escape(i.title), escape(i.category or "—"),
                      str(i.attempts), i.detected_at.strftime("%Y-%m-%d %H:%M:%S"), _secs(i.time_to_recover_s))
    out.print(table)


def _act(action: str, incident_id: int, comment: str, claimed: str | None, token: str | None, json_out: bool) -> None:
    from heald.engine import attention, client_send
    from heald.store import InvalidTransition, NotFound

    if len(comment) > attention.MAX_COMMENT:
        fail(f"--comment: at most {attention.MAX_COMMENT} characters, got {len(comment)}")
    cfg = config()
    store = open_store(cfg)
    actor = f"user:{approver_identity(cfg, store, token, claimed)}"
    try:
        if action == "retry":
            result = attention.retry(store, incident_id, actor, comment, client_send(cfg))
        elif action == "ack":
            result = attention.acknowledge(store, incident_id, actor, comment)
        else:
            result = attention.resolve(store, incident_id, actor, comment, client_send(cfg))
    except NotFound:
        fail(f"no incident {incident_id}", 1)
    except InvalidTransition as exc:
        fail(str(exc), 1)
    except ValueError as exc:
        fail(f"--{exc}")
    if json_out:
        print_json(result)
        return
    done = {"retry": "heald heals it again with a new attempt budget",
            "ack": "acknowledged: reminders about it stop",
            "resolve": "resolved by you (not counted as a heal by heald)"}[action]
    out.print(f"incident {incident_id}: {done} ({actor}; now {result['state']}).")


CommentOpt = typer.Option("", "--comment", "-m", help="Why; goes into the audit log.")


@incidents_app.command("retry")
def retry(incident_id: int = typer.Argument(..., help="The incident's id."), comment: str = CommentOpt,
          claimed: str | None = AsOpt, token: str | None = TokenOpt, json_out: bool = JsonOpt) -> None:
    """Heal an incident that needs attention again, with a new attempt budget."""
    _act("retry", incident_id, comment, claimed, token, json_out)


@incidents_app.command("ack")
def ack(incident_id: int = typer.Argument(..., help="The incident's id."), comment: str = CommentOpt,
        claimed: str | None = AsOpt, token: str | None = TokenOpt, json_out: bool = JsonOpt) -> None:
    """Acknowledge an open incident: you are on it, heald stops reminding about it."""
    _act("ack", incident_id, comment, claimed, token, json_out)


@incidents_app.command("resolve")
def resolve(incident_id: int = typer.Argument(..., help="The incident's id."),
            comment: str = typer.Option(..., "--comment", "-m", help="What fixed it (required; in the audit log)."),
            claimed: str | None = AsOpt, token: str | None = TokenOpt, json_out: bool = JsonOpt) -> None:
    """Close an open incident as resolved by you (not counted as a heal by heald)."""
    _act("resolve", incident_id, comment, claimed, token, json_out)


@app.command()
def status(json_out: bool = JsonOpt) -> None:
    """Open incidents by state, and the ones that need a human now."""
    store = open_store(config(), write=False)
    counts = store.count_incidents_by_state()
    by_state = {s.value: counts.get(s.value, 0) for s in OPEN_STATES}
    attention = store.list_incidents(state=IncidentState.needs_attention, limit=100)
    from heald import pause

    switch = pause.state(store)
    if json_out:
        print_json({"open": sum(by_state.values()), "needs_attention": by_state[IncidentState.needs_attention.value],
                    "by_state": by_state, "pause": switch.to_json(),
                    "needing_attention": [{"id": i.id, "title": i.title, "service": i.service,
                                           "reason": i.closed_reason} for i in attention]})
        return
    if switch.paused:
        out.print(f"[bold red]PAUSED[/]: {escape(switch.describe())} (heald resume to act again)")
    out.print(f"open incidents: [bold]{sum(by_state.values())}[/]  "
              + "  ".join(f"{s}: {n}" for s, n in by_state.items() if n))
    if not attention:
        out.print("no incident needs a human.")
        return
    table = Table(title="needs attention (the target still fails; retry, ack or resolve it)")
    for col in ("id", "service", "title", "why heald handed it over"):
        table.add_column(col)
    for i in attention:
        table.add_row(str(i.id), escape(i.service or "—"), escape(i.title), escape(i.closed_reason or "—"))
    out.print(table)
