"""``heald config``: check a configuration file, print its JSON Schema or its reference.

* ``heald config check [FILE]`` validates ``FILE`` (default: ``--config``, ``$HEALD_CONFIG``
  or ``./heald.yaml``) without starting anything: exit 0 when valid (deprecated keys are
  listed as warnings), 2 with one line per problem (file, line, key, what was expected).
* ``heald config schema`` prints the JSON Schema of ``heald.yaml`` for editors.
* ``heald config reference`` prints the Markdown reference of every key (``docs/config.md``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.markup import escape

from heald.cli._common import JsonOpt, _state, app, err, out, print_json, warn_deprecations
from heald.config import ConfigError, config_path, load_config

config_app = typer.Typer(help="Check heald.yaml, print its JSON Schema or its reference.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("check")
def check(file: Path | None = typer.Argument(None, help="The file to check (default: --config, $HEALD_CONFIG or "
                                                       "./heald.yaml)."),
          json_out: bool = JsonOpt) -> None:
    """Validate a configuration file without starting anything (exit 0: valid, 2: not)."""
    path = config_path(file if file is not None else _state["config_path"])
    if path is None:
        if json_out:
            print_json({"file": None, "valid": True, "problems": [], "deprecations": []})
        else:
            out.print("no configuration file (no --config, $HEALD_CONFIG or ./heald.yaml): the built-in defaults "
                      "apply, and they are valid.")
        return
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        problems = str(exc).splitlines()
        if json_out:
            print_json({"file": str(path), "valid": False, "problems": problems, "deprecations": []})
        else:
            err.print(f"[red]invalid:[/] {escape(str(path))}", highlight=False, soft_wrap=True)
            for line in problems:
                err.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    deprecations = [str(d) for d in cfg.deprecations]
    warn_deprecations(cfg)
    if json_out:
        print_json({"file": str(path), "valid": True, "problems": [], "deprecations": deprecations})
        return
    out.print(f"[green]valid:[/] {escape(str(path))}", highlight=False, soft_wrap=True)


@config_app.command("schema")
def schema() -> None:
    """Print the JSON Schema of heald.yaml (for editors: yaml-language-server, VS Code, JetBrains)."""
    from heald.config_reference import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


@config_app.command("reference")
def reference() -> None:
    """Print the reference of every configuration key (Markdown; docs/config.md is this output)."""
    from heald.config_reference import render_reference

    sys.stdout.write(render_reference())
