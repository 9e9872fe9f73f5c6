"""``heald eval diagnosis`` and ``heald eval logs``: measure the reasoners on a labelled case set, and the log
source's signals on labelled logs beside a level filter."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from heald.cli._common import JsonOpt, app, config, err, fail, out, print_json

eval_app = typer.Typer(help="Evaluations of heald's reasoning.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("diagnosis")
def eval_diagnosis(
    reasoner: str = typer.Option("deterministic", "--reasoner", "-r",
                                 help="deterministic (runbook + kb), runbook, kb, llm, or all (with the llm)."),
    cases: list[Path] = typer.Option([], "--cases", help="Case files or directories (default: the shipped set)."),
    min_accuracy: float | None = typer.Option(None, min=0, max=1, help="Exit 1 when the category accuracy is lower."),
    json_out: bool = JsonOpt,
) -> None:
    """Diagnose every labelled case as the healing workflow would; print the accuracy per
    category, the Brier score and calibration error, the remedy accuracy, and for an LLM the
    latency and cost per case."""
    from heald.diagnose.runbooks import load_runbooks
    from heald.evaluate import default_case_files, evaluate, load_cases, reasoners_for
    from heald.yamlfile import YamlFileError

    cfg = config()
    try:
        runbooks = load_runbooks(cfg.runbooks, cfg.default_runbooks)
        loaded = load_cases(cases or default_case_files())
    except YamlFileError as exc:
        fail(f"invalid case or runbook file:\n{exc}")
    try:
        reasoners = reasoners_for(reasoner, runbooks, cfg)
    except ValueError as exc:
        fail(f"--reasoner: {exc}")
    if json_out:
        results, summary = evaluate(loaded, reasoners, runbooks)
    else:
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task(f"diagnosing {len(loaded)} cases ({reasoner})", total=len(loaded))
            results, summary = evaluate(loaded, reasoners, runbooks, lambda r: progress.advance(task))
    summary["reasoner"] = reasoner
    if json_out:
        print_json({"summary": summary, "cases": [r.__dict__ for r in results]})
    else:
        _print(summary, results, llm=reasoner in ("llm", "all"))
    if min_accuracy is not None and summary["accuracy"] < min_accuracy:
        raise typer.Exit(1)


def _print(summary: dict, results: list, llm: bool) -> None:  # type: ignore[type-arg]
    t = Table(title=f"diagnosis eval — reasoner: {summary['reasoner']}")
    for col in ("category", "cases", "correct", "accuracy", "mean confidence"):
        t.add_column(col, justify="left" if col == "category" else "right")
    for cat, v in summary["categories"].items():
        colour = "green" if v["accuracy"] >= 0.95 else "yellow" if v["accuracy"] >= 0.8 else "red"
        t.add_row(cat, str(v["cases"]), str(v["correct"]), f"[{colour}]{v['accuracy']:.0%}[/]",
                  f"{v['mean_confidence']:.2f}")
    t.add_section()
    t.add_row("[bold]all[/]", str(summary["cases"]), str(sum(v["correct"] for v in summary["categories"].values())),
              f"[bold]{summary['accuracy']:.1%}[/]", "")
    out.print(t)
    areas = ", ".join(f"{a} {v['accuracy']:.1%} of {v['cases']}" for a, v in summary["areas"].items())
    out.print(f"category accuracy {summary['accuracy']:.1%} ({areas})")
    out.print(f"Brier score {summary['brier']:.4f} (lower is better; 0.25 = a coin flip), "
              f"expected calibration error {summary['ece']:.4f}")
    rem = summary["remedy"]
    if rem["cases"]:
        out.print(f"first remedy of the plan as expected: {rem['correct']}/{rem['cases']} ({rem['accuracy']:.1%}); "
                  f"{rem['not_in_catalog']} cases expect a remedy the catalog does not have yet")
    lat = summary["latency_s"]
    out.print(f"latency per case: mean {lat['mean'] * 1000:.1f} ms, p50 {lat['p50'] * 1000:.1f} ms, "
              f"p95 {lat['p95'] * 1000:.1f} ms")
    if llm:
        out.print(f"cost per case ${summary['cost_usd']['per_case']:.6f} (total ${summary['cost_usd']['total']:.4f}), "
                  f"{summary['tokens_per_case']:.0f} tokens per case")
    misses = [r for r in results if not r.correct]
    if misses:
        m = Table(title="misdiagnosed cases")
        for col in ("case", "expected", "diagnosed", "confidence", "by"):
            m.add_column(col)
        for r in misses:
            m.add_row(escape(r.id), r.expected, r.predicted, f"{r.confidence:.2f}", r.reasoner)
        out.print(m)


@eval_app.command("logs")
def eval_logs(
    dataset: list[Path] = typer.Option([], "--dataset", help="Labelled logs ('LABEL LINE' per line, '-' = normal) "
                                                             "or directories of *.log (default: heald's own sets)."),
    loghub: str | None = typer.Option(None, "--loghub", help="Also loghub's BGL and Thunderbird 2k samples, from a "
                                                             "checkout of github.com/logpai/loghub or a raw URL "
                                                             "(research use only, so heald does not ship them)."),
    log_name: str | None = typer.Option(None, "--log", help="Use the settings of this entry of heald.yaml's logs: "
                                                            "(its name or path; default: the log source's defaults)."),
    json_out: bool = JsonOpt,
) -> None:
    """Feed each labelled log to the log source line by line at the lines' own times and print,
    per log, the precision and recall of the lines heald's signals raise beside a level filter
    (lines whose own level is error or higher) run on the same lines."""
    from heald.config import LogSourceConfig
    from heald.evaluate import default_log_sets, evaluate_logs, load_log_sets, load_loghub

    cfg: LogSourceConfig | None = None
    if log_name is not None:
        entries = [lg for lg in config().logs if log_name in (lg.label, lg.path)]
        if not entries:
            fail(f"--log: no entry of logs: in the configuration is named {log_name!r}")
        cfg = entries[0]
    try:
        sets = load_log_sets(dataset or default_log_sets())
        if loghub:
            sets += load_loghub(loghub)
    except ValueError as exc:
        fail(f"{'--loghub' if loghub and 'loghub' in str(exc) else '--dataset'}: {exc}")
    results = evaluate_logs(sets, cfg)
    if json_out:
        print_json({"datasets": results, "baseline": "level filter: a line's own level is error or higher"})
        return
    t = Table(title="log signals: heald vs a level filter (lines raised)")
    for col in ("dataset", "lines", "anomalous", "method", "raised", "precision", "recall", "F1", "categories",
                "signals (on anomalies)"):
        t.add_column(col, justify="left" if col in ("dataset", "method") else "right")
    for r in results:
        for method, key in (("heald", "heald"), ("level filter", "level_filter")):
            m = r[key]
            t.add_row(escape(r["name"]) if key == "heald" else "", str(r["lines"]) if key == "heald" else "",
                      str(r["anomalous"]) if key == "heald" else "", method, str(m["raised"]),
                      _pct(m["precision"]), _pct(m["recall"]), _pct(m["f1"]),
                      f"{len(m['categories_caught'])}/{len(r['categories'])}",
                      f"{m['signals']} ({m['signals_on_anomalies']})" if key == "heald" else "")
        t.add_section()
    out.print(t)
    out.print("raised: lines heald put into a firing signal (the record that fired and later records of its template "
              "while it fires); level filter: lines whose own level is error or higher; categories: anomaly "
              "labels with at least one raised line; '—': undefined (nothing raised, or no anomalies)")


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.1%}"
