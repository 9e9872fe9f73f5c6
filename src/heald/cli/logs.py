"""``heald logs scan``: mine a log file (or stdin) the way the log source does and show the
error templates and the signals they would raise, with the knowledge base's reading of each."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from heald.cli._common import JsonOpt, app, fail, out, print_json

logs_app = typer.Typer(help="Logs as a source: drain3 template mining.", no_args_is_help=True)
app.add_typer(logs_app, name="logs")


@logs_app.command("scan")
def scan(path: str = typer.Argument(..., help="A log file, or '-' for standard input."),
         service: str | None = typer.Option(None, help="The service whose log it is (a label on the signals)."),
         rate_window: float = typer.Option(60.0, help="Seconds of the rate-jump window."),
         max_lines: int = typer.Option(1_000_000, min=1, help="Stop after this many lines."),
         warmup_records: int = typer.Option(0, min=0, help="Records learned as normal before anything fires "
                                                            "(the log source's warm-up; 0: none)."),
         min_level: str = typer.Option("warning", help="Records whose own level is lower are never signals."),
         json_out: bool = JsonOpt) -> None:
    """Read a whole log once, from its start; print the error templates mined and the signals
    the log source would raise (new template, rate jump), each with its diagnosis by the
    signature knowledge base. Line times are the read times, so rate jumps need a live tail."""
    from heald.config import LogSourceConfig
    from heald.diagnose.kb import KnowledgeBaseReasoner
    from heald.models import Incident, IncidentState, Severity, utcnow
    from heald.sources.logs import LogMiner

    if path != "-" and not Path(path).is_file():
        fail(f"{path}: no such file")
    from heald.sources.logs import LEVELS

    if min_level not in LEVELS:
        fail(f"--min-level: {min_level!r}: expected one of {', '.join(LEVELS)}")
    cfg = LogSourceConfig.model_validate({
        "path": path, "service": service, "rate_window_seconds": rate_window, "from_start": True,
        "warmup_seconds": 0 if warmup_records == 0 else 1e9, "warmup_records": warmup_records, "min_level": min_level})
    miner = LogMiner(cfg)
    signals = []
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
    try:
        for n, line in enumerate(stream, 1):
            signals.extend(miner.feed([line]))
            if n >= max_lines:
                break
    finally:
        if stream is not sys.stdin:
            stream.close()
    signals.extend(miner.flush())
    now = utcnow()
    inc = Incident(id=0, title="scan", service=service, state=IncidentState.diagnosing, severity=Severity.error,
                   fingerprint="", group_key="", started_at=now, detected_at=now, updated_at=now)
    kb = KnowledgeBaseReasoner()
    rows: list[dict[str, Any]] = []
    for sig in signals:
        f = kb.diagnose(inc, [sig])
        rows.append({"trigger": sig.annotations.get("trigger"), "template_id": sig.labels.get("template_id"),
                     "template": sig.annotations.get("template", ""), "summary": sig.summary,
                     "category": f.diagnosis.category if f else "unknown",
                     "confidence": f.diagnosis.confidence if f else 0.0,
                     "evidence": f.diagnosis.evidence[:5] if f else []})
    templates = [{"id": c.cluster_id, "count": c.size, "template": c.get_template()}
                 for c in sorted(miner.miner.drain.clusters, key=lambda c: -c.size)]
    if json_out:
        print_json({"records": miner.records, "error_records": miner.errors, "templates": templates, "signals": rows})
        return
    out.print(f"{miner.records} records, {miner.errors} errors, {len(templates)} error templates")
    t = Table(title="error templates")
    for col in ("id", "count", "template"):
        t.add_column(col)
    for tp in templates[:50]:
        t.add_row(str(tp["id"]), str(tp["count"]), escape(tp["template"][:160]))
    out.print(t)
    s = Table(title="signals")
    for col in ("trigger", "template", "diagnosis"):
        s.add_column(col)
    for r in rows:
        s.add_row(r["trigger"], escape(r["template"][:100]), f"{r['category']} ({r['confidence']:.2f})")
    out.print(s)
