"""What every ``heald`` command shares: the Typer app and its ``audit`` sub-app, the Rich
consoles, ``--json``, reading the configuration, opening the store, failing with a message.

The area modules of :mod:`heald.cli` import from here (never from the package itself), and the
package imports the area modules so they register their commands: no import cycle.
"""

from __future__ import annotations

import getpass
import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from heald.config import ConfigError, HealdConfig, load_config

app = typer.Typer(name="heald", help="heald: a self-healing control plane for services and CI.",
                  no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False)
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

#: Width of output that goes to a pipe or a file: wide enough that no table is cut or wrapped
#: (Rich assumes 80 columns when it cannot ask a terminal); $COLUMNS still wins.
PIPE_WIDTH = 1000


def _console(stderr: bool = False) -> Console:
    """A Rich console for stdout (or stderr) that does not cut tables to 80 columns when its
    stream is not a terminal."""
    import os

    stream = sys.stderr if stderr else sys.stdout
    tty = hasattr(stream, "isatty") and stream.isatty()
    width = None if tty or os.environ.get("COLUMNS") else PIPE_WIDTH
    return Console(stderr=stderr, width=width)


out = _console()
err = _console(stderr=True)
_state: dict[str, Any] = {"config_path": None}

JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON only.")


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def config() -> HealdConfig:
    """The validated configuration (``--config``, ``$HEALD_CONFIG`` or ``./heald.yaml``); exits
    2 naming file, line and key when it is invalid, and warns on stderr of each deprecated key."""
    try:
        from heald.remedies import CATALOG

        cfg = load_config(_state["config_path"], remedies=CATALOG)
    except ConfigError as exc:
        fail(f"invalid configuration:\n{exc}")
    warn_deprecations(cfg)
    return cfg


def warn_deprecations(cfg: HealdConfig) -> None:
    """Print a warning on stderr for each deprecated key ``cfg``'s file used, naming the new key."""
    for problem in cfg.deprecations:
        err.print(f"[yellow]warning:[/] {escape(str(problem))}", highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def open_store(cfg: HealdConfig, *, write: bool = True):  # type: ignore[no-untyped-def]
    """The store of ``cfg``. A command that writes (``write``) brings the schema to the newest
    migration first; a read-only one only compares the schema's revision with this heald's
    (:meth:`heald.store.Store.schema_revisions`, no migration run) and exits 2 telling the
    user to run ``heald migrate`` when the database is behind. A database without any schema
    yet is created (first use), whichever the command."""
    from heald.store import Store

    store = Store(cfg.database)
    if write:
        store.migrate()
        return store
    current, head = store.schema_revisions()
    if current is None:
        store.migrate()
    elif current != head:
        store.close()
        fail(f"database: its schema is at revision {current}, this heald {_version()} needs {head}; run "
             "`heald migrate` (or any command that writes, such as `heald serve`) to upgrade it, then try again")
    return store


def _version() -> str:
    from heald import __version__

    return __version__


def login_name() -> str:
    """The login of the user running this process, from its real uid (``$USER``/``$LOGNAME``,
    which anyone can set, do not count); ``getpass.getuser()`` when the uid has no passwd entry."""
    import os
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return getpass.getuser()


def approver_identity(cfg: HealdConfig, store: Any, token: str | None, claimed: str | None) -> str:
    """Who gives a verdict from the CLI: the identity of ``token`` (role approver or above);
    else, with ``api.auth`` on, the login name (the operating system authenticated it), and
    ``--as`` may not claim another; with auth off, ``--as`` or the login name."""
    from heald.auth import lookup_token
    from heald.models import Role

    login = login_name()
    if token:
        record = lookup_token(store, token)
        if record is None:
            fail("--token: the API token is unknown, revoked or expired", 3)
        if not record.role.allows(Role.approver):
            fail(f"--token: {record.name} has role {record.role.value}; a verdict needs role approver or above", 3)
        if claimed is not None and claimed != record.name:
            fail(f"--as: the token authenticates {record.name}, not {claimed}", 3)
        return record.name
    if claimed is not None and claimed != login and cfg.api.auth:
        fail(f"--as: with api.auth on you give verdicts as yourself ({login}) or as a token's identity "
             "(--token or $HEALD_TOKEN)", 3)
    return claimed or login
