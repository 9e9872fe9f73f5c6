"""``heald runbooks``: check runbook files and list the runbooks heald would load."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from heald.cli._common import JsonOpt, app, config, err, out, print_json

runbooks_app = typer.Typer(help="Runbooks: check files, list what heald loads.", no_args_is_help=True)
app.add_typer(runbooks_app, name="runbooks")


def _warnings(rbs: list) -> list[dict[str, str]]:  # type: ignore[type-arg]
    from heald.diagnose.categories import is_known

    defined = {rb.diagnosis.category for rb in rbs if rb.diagnosis is not None}
    found = []
    for rb in rbs:
        where = rb.source_file or ""
        if rb.specificity == 0:
            found.append({"file": where, "runbook": rb.name, "message": "has no match conditions: it matches every signal"})
        if rb.diagnosis is not None and not is_known(rb.diagnosis.category) and not rb.diagnosis.explains:
            found.append({"file": where, "runbook": rb.name,
                          "message": f"category {rb.diagnosis.category!r} is not in heald's vocabulary and lists no "
                                     f"'explains': any other reasoner's hypothesis will count as disagreement"})
        for cat in rb.match.categories:
            if not is_known(cat) and cat not in defined:
                found.append({"file": where, "runbook": rb.name,
                              "message": f"match.category {cat!r} is neither in heald's vocabulary nor concluded by any "
                                         f"runbook: no reasoner will name it"})
        if not rb.remedies:
            found.append({"file": where, "runbook": rb.name, "message": "lists no remedies: its incidents escalate"})
    return found


@runbooks_app.command("check")
def check(paths: list[Path] = typer.Argument(None, help="Runbook files or directories (default: the configured ones)."),
          defaults: bool = typer.Option(False, "--defaults/--no-defaults",
                                        help="Also load heald's shipped library (as heald serve does)."),
          strict: bool = typer.Option(False, help="Exit 1 on warnings too."),
          json_out: bool = JsonOpt) -> None:
    """Validate runbook files: every problem with file, line and key (exit 1), then warnings.

    Without PATHS, checks what ``heald serve`` would load (the configured runbooks and, unless
    ``default_runbooks: false``, the shipped library)."""
    from heald.diagnose.runbooks import load_runbooks
    from heald.yamlfile import YamlFileError

    if paths:
        for p in paths:
            if not p.exists():
                _report(False, [{"file": str(p), "line": 0, "key": "", "message": "no such file or directory"}], [], [],
                        json_out)
        include_defaults = defaults
    else:
        cfg = config()
        paths = list(cfg.runbooks)
        include_defaults = cfg.default_runbooks
    try:
        rbs = load_runbooks(list(paths), include_defaults=include_defaults)
    except YamlFileError as exc:
        _report(False, [{"file": p.file, "line": p.line, "key": p.key, "message": p.message} for p in exc.problems],
                [], [], json_out)
        return
    warnings = _warnings(rbs)
    _report(not (strict and warnings), [], warnings, rbs, json_out)


def _report(ok: bool, problems: list[dict], warnings: list[dict], rbs: list, json_out: bool) -> None:  # type: ignore[type-arg]
    if json_out:
        print_json({"ok": ok, "problems": problems, "warnings": warnings,
                    "runbooks": [{"name": rb.name, "file": rb.source_file, "category": rb.category,
                                  "match": rb.match.model_dump(exclude_none=True, exclude_defaults=True),
                                  "remedies": [r.remedy for r in rb.remedies]} for rb in rbs]})
    else:
        for p in problems:
            where = f"{p['file']}:{p['line']}" if p["line"] else p["file"]
            err.print(f"[red]error:[/] {escape(where)}: {escape(p['key'] or '(top level)')}: {escape(p['message'])}",
                      highlight=False, soft_wrap=True)
        for w in warnings:
            err.print(f"[yellow]warning:[/] {escape(w['file'])}: runbook {escape(w['runbook'])}: {escape(w['message'])}",
                      highlight=False, soft_wrap=True)
        if rbs:
            table = Table(title=f"{len(rbs)} runbooks")
            for col in ("name", "matches", "category", "remedies", "file"):
                table.add_column(col)
            for rb in rbs:
                m = rb.match
                conds = [*m.labels, *(f"{k}: {v}" for k, v in (("source", m.source), ("fingerprint", m.fingerprint),
                                                               ("log", m.log), ("category", m.category)) if v)]
                table.add_row(rb.name, escape("; ".join(map(str, conds))), rb.category,
                              ", ".join(f"{r.remedy} ({r.risk.value})" for r in rb.remedies) or "—",
                              escape(Path(rb.source_file or "").name))
            out.print(table)
        if not problems:
            out.print(f"[green]ok[/]: {len(rbs)} runbooks, {len(warnings)} warnings")
    if not ok or problems:
        raise typer.Exit(1)
