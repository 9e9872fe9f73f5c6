"""``heald tokens create|list|revoke``: API tokens with roles (see :mod:`heald.auth`)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import typer
from rich.table import Table

from heald.cli._common import JsonOpt, app, config, err, fail, login_name, open_store, out, print_json
from heald.models import Role, utcnow

tokens_app = typer.Typer(help="API tokens with roles (viewer < operator < approver < admin).", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")


@tokens_app.command("create")
def create(role: Role = typer.Option(..., "--role", help="viewer, operator, approver or admin."),
           name: str | None = typer.Option(None, "--name", help="The identity it authenticates (default: your user name)."),
           expires_in: str | None = typer.Option(None, "--expires-in", help="Lifetime, e.g. 90d or 12h (default: until revoked)."),
           root: bool = typer.Option(False, "--root", help="Make NAME a root identity: a distinct human you vouch "
                                                           "for. Without it, NAME counts as you (your login) when "
                                                           "approvals are counted."),
           output: Path | None = typer.Option(None, "--output", "-o", help="Write the token to this new file "
                                                                          "(mode 0600) instead of printing it."),
           json_out: bool = JsonOpt) -> None:
    """Create an API token and print it (or write it to a new 0600 file), once: heald stores
    only its hash.

    Approvals count once per human (root identity): a token made here counts as your login,
    unless --root makes NAME a human of its own; your own token (the default name) is one."""
    from heald.auth import issue_token
    from heald.durations import parse_duration

    expires = None
    if expires_in is not None:
        try:
            expires = utcnow() + timedelta(seconds=parse_duration(expires_in))
        except ValueError as exc:
            fail(f"--expires-in: {exc}")
    if output is not None and (output.exists() or output.is_symlink()):
        fail(f"--output: {output} exists; give a new file (heald does not overwrite it)")
    store = open_store(config())
    login = login_name()
    try:
        record, token = issue_token(store, name=name or login, role=role, created_by=f"cli:{login}",
                                    sponsor=None if root else login, expires_at=expires)
    except ValueError as exc:  # a bad name, or a name that counts as another human (IdentityConflict)
        fail(f"--{exc}")
    if output is not None:
        from heald.files import write_private

        try:
            write_private(output, (token + "\n").encode())
        except OSError as exc:
            store.revoke_token(record.id, f"cli:{login}")
            fail(f"--output: cannot write {output} ({exc}); token {record.id} was revoked")
    if json_out:
        print_json({**record.model_dump(mode="json"), **({"file": str(output)} if output else {"token": token})})
        return
    if output is None:
        out.print(token, highlight=False, soft_wrap=True)
    else:
        err.print(f"the token is in {output} (mode 0600)", highlight=False, soft_wrap=True)
    counts = ("a root identity" if record.root_identity == record.name
              else f"counting as {record.root_identity} in approvals")
    err.print(f"token {record.id} for [bold]{record.name}[/] with role [bold]{record.role.value}[/] ({counts})"
              + (f", expires {record.expires_at:%Y-%m-%d %H:%M} UTC" if record.expires_at else "")
              + ". It is shown only this once: heald keeps only its hash.")


@tokens_app.command("list")
def list_tokens(json_out: bool = JsonOpt) -> None:
    """List the tokens (never the tokens themselves), revoked ones included."""
    tokens = open_store(config(), write=False).list_tokens()
    if json_out:
        print_json([t.model_dump(mode="json") for t in tokens])
        return
    table = Table(title="API tokens")
    for col in ("id", "name (counts as)", "role", "prefix", "created", "by", "expires", "state"):
        table.add_column(col)
    now = utcnow()
    for t in tokens:
        state = "revoked" if t.revoked_at else ("expired" if not t.active(now) else "active")
        who = t.name if t.root_identity == t.name else f"{t.name} ({t.root_identity})"
        table.add_row(str(t.id), who, t.role.value, t.prefix + "…", f"{t.created_at:%Y-%m-%d %H:%M}", t.created_by,
                      f"{t.expires_at:%Y-%m-%d %H:%M}" if t.expires_at else "—", state)
    out.print(table)


@tokens_app.command("revoke")
def revoke(token_id: int = typer.Argument(..., help="The token's id (heald tokens list)."), json_out: bool = JsonOpt) -> None:
    """Revoke a token: it stops working at once and stays listed as revoked."""
    from heald.store import NotFound

    try:
        record = open_store(config()).revoke_token(token_id, f"cli:{login_name()}")
    except NotFound:
        fail(f"no token {token_id}", 1)
    if json_out:
        print_json(record.model_dump(mode="json"))
    else:
        out.print(f"token {record.id} of {record.name} is revoked.")
