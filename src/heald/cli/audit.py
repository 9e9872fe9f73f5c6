"""``heald audit verify|checkpoint|public-key|list|export``: the tamper-evident audit log
(:mod:`heald.store.audit`) and its signed checkpoints (:mod:`heald.store.checkpoints`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.table import Table

from heald.cli._common import JsonOpt, audit_app, config, fail, open_store, out, print_json


@audit_app.command("verify")
def verify(checkpoints: Path | None = typer.Option(
               None, "--checkpoints", help="Signed checkpoint file to compare the chain with (default: audit.checkpoint_file "
                                           "when it exists); catches a rewrite by someone with the whole database."),
           key: Path | None = typer.Option(None, "--key", help="Public key (heald audit public-key) or the signing key "
                                                               "file that checks the checkpoints (default: audit.key_file)."),
           no_checkpoints: bool = typer.Option(False, "--no-checkpoints", help="Check the chain alone."),
           json_out: bool = JsonOpt) -> None:
    """Check the audit log's hash chain (and its signed checkpoints); exit 1 and name the
    first entry altered or removed."""
    from heald.store.checkpoints import CheckpointError, load_verify_key, verify_with_checkpoints

    cfg = config()
    if no_checkpoints and (checkpoints or key):
        fail("--no-checkpoints: not with --checkpoints or --key")
    store = open_store(cfg, write=False)
    file = None if no_checkpoints else checkpoints or (cfg.audit_checkpoint_file if cfg.audit_checkpoint_file.exists() else None)
    if file is None:
        report = store.verify_audit()
    else:
        if not file.is_file():
            fail(f"--checkpoints: {file} does not exist or is not a file")
        try:
            report = verify_with_checkpoints(store, file, load_verify_key(key or cfg.audit_key_file))
        except CheckpointError as exc:
            fail(str(exc))
    if json_out:
        print_json(report.as_dict())
    elif report.intact:
        anchored = f", {report.checkpoints} signed checkpoints match" if report.checkpoints else ""
        out.print(f"[green]audit chain intact[/]: {report.entries} entries{anchored}")
    elif report.first_bad_seq is None:
        out.print(f"[red]audit chain broken[/]: {report.problem}", soft_wrap=True)
    else:
        out.print(f"[red]audit chain broken[/] at entry {report.first_bad_seq}: {report.problem}", soft_wrap=True)
    if not report.intact:
        raise typer.Exit(1)


@audit_app.command("checkpoint")
def checkpoint(json_out: bool = JsonOpt) -> None:
    """Verify the chain and append a signed checkpoint of its newest entry to
    audit.checkpoint_file now (heald serve also writes them periodically and at shutdown);
    also sent to audit.notify_channels. Exit 1 when the chain is broken (it is not signed)."""
    from heald.log import configure
    from heald.notify import Notifier
    from heald.store.checkpoints import CheckpointError, load_signing_key, write_checkpoint

    cfg = config()
    configure("warning")  # logs go to stderr; stdout is for the result
    store = open_store(cfg)
    try:
        cp = write_checkpoint(store, cfg.audit_checkpoint_file, load_signing_key(cfg.audit_key_file))
    except CheckpointError as exc:
        fail(str(exc), 1)
    sent = []
    if cp is not None and cfg.audit.notify_channels:
        sent = Notifier(cfg.notifications, store).send_audit_checkpoint(list(cfg.audit.notify_channels), cp.as_json())
    if json_out:
        print_json({"checkpoint": cp.as_json() if cp else None, "file": str(cfg.audit_checkpoint_file), "sent": sent})
    elif cp is None:
        out.print(f"nothing new to sign: the audit log is empty or its newest entry is already in "
                  f"{cfg.audit_checkpoint_file}", soft_wrap=True)
    else:
        out.print(f"checkpoint {cp.n}: entry {cp.seq} ({cp.hash[:16]}…) signed by key {cp.key_id} → "
                  f"{cfg.audit_checkpoint_file}", soft_wrap=True, highlight=False)
        for r in sent:
            out.print(f"  sent to {r['channel']}: " + ("ok" if r["sent"] else f"[red]failed[/]: {r['detail']}"))


@audit_app.command("public-key")
def public_key() -> None:
    """Print the public key that checks the checkpoints (PEM), to keep apart from heald and
    give to ``heald audit verify --key``."""
    from heald.store.checkpoints import CheckpointError, load_signing_key, public_key_pem

    cfg = config()
    try:
        key = load_signing_key(cfg.audit_key_file, create=False)
    except CheckpointError as exc:
        fail(str(exc))
    sys.stdout.write(public_key_pem(key))


@audit_app.command("list")
def list_entries(incident: int | None = typer.Option(None, "--incident", min=1, max=2**62, help="Only this incident's entries."),
                 actor: str | None = typer.Option(None, "--actor", help="Only this actor (exactly, e.g. user:alice)."),
                 event: str | None = typer.Option(None, "--event", help="Only this event or its dotted prefix "
                                                                       "(approval matches approval.approve)."),
                 before: int | None = typer.Option(None, "--before", min=1, max=2**62,
                                                   help="Only entries older than this sequence number."),
                 limit: int = typer.Option(50, "--limit", min=1, max=10_000),
                 json_out: bool = JsonOpt) -> None:
    """List audit entries, newest first, filtered like the dashboard's audit page."""
    entries = open_store(config(), write=False).search_audit(incident_id=incident, actor=actor or None, event=event or None,
                                                before_seq=before, limit=limit)
    if json_out:
        print_json([e.model_dump(mode="json") for e in entries])
        return
    table = Table(title="audit log")
    for col in ("seq", "time (UTC)", "actor", "event", "incident", "reason"):
        table.add_column(col)
    for e in entries:
        table.add_row(str(e.seq), e.ts.strftime("%Y-%m-%d %H:%M:%S"), e.actor, e.event,
                      "—" if e.incident_id is None else str(e.incident_id), e.reason)
    out.print(table)


@audit_app.command("export")
def export(json_out: bool = typer.Option(True, "--json", help="JSON (the only format; the flag is accepted for "
                                                                 "symmetry with the other commands)."),
           batch: int = typer.Option(1000, "--batch", min=1, max=100_000, help="Entries read per query.")) -> None:
    """Print the whole audit log as a JSON array in chain order (every field, hashes
    included, so that it can be verified elsewhere); memory stays bounded."""
    store = open_store(config(), write=False)
    write = sys.stdout.write
    write("[")
    after, first = 0, True
    while entries := store.audit_entries(after_seq=after, limit=batch):
        for e in entries:
            write(("\n" if first else ",\n") + json.dumps(e.model_dump(mode="json"), sort_keys=True, ensure_ascii=False))
            first = False
        after = entries[-1].seq
    write("\n]\n" if not first else "]\n")
