"""heald's command line (Typer + Rich).

Commands of one area live in a module of their own under ``heald.cli`` that registers them on
:data:`app` (or a sub-app) and is imported at the end of this file. Every command that reports results takes ``--json`` and
then prints JSON only on stdout.
The configuration comes from ``--config``, ``$HEALD_CONFIG`` or ``./heald.yaml`` (see
:mod:`heald.config`); errors name the file, line and key and exit with status 2.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from heald import __version__
from heald.cli._common import (
    PIPE_WIDTH,
    JsonOpt,
    _state,
    app,
    approver_identity,
    audit_app,
    config,
    err,
    fail,
    login_name,
    open_store,
    out,
    print_json,
    warn_deprecations,
)

__all__ = ["PIPE_WIDTH", "JsonOpt", "_state", "app", "approver_identity", "audit_app", "config", "err", "fail", "login_name", "main",
           "open_store", "out", "print_json", "warn_deprecations"]


def _print_version(value: bool) -> None:
    if value:
        out.print(f"heald {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main_callback(
    config_path: Path | None = typer.Option(None, "--config", "-c", envvar="HEALD_CONFIG",
                                            help="heald.yaml to use (default ./heald.yaml, else built-in defaults)."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print heald's version and exit."),
) -> None:
    _state["config_path"] = config_path


@app.command()
def version() -> None:
    """Print heald's version."""
    out.print(__version__)


@app.command()
def migrate() -> None:
    """Bring the database's schema to this heald's newest migration (what every command that
    writes does first; the read-only commands ask for it when the database is behind)."""
    store = open_store(config())
    current, head = store.schema_revisions()
    out.print(f"database schema at revision {current} (newest: {head})")


@app.command()
def serve(host: str | None = typer.Option(None, help="Listen address (default: api.host)."),
          port: int | None = typer.Option(None, help="Listen port (default: api.port).")) -> None:
    """Run heald: the API, the probes, the managed services and the healing engine.

    Before anything acts, heald takes its lock on the state directory and database (a second
    heald on them exits with status 1 naming the first one's pid) and binds its port (a port in
    use: status 1); only then do the managed services, DBOS and the probes start."""
    from heald.api.server import bind_socket, make_server
    from heald.engine import Runtime
    from heald.engine.cluster import ExecutorIdInUse
    from heald.engine.lock import AlreadyRunning
    from heald.engine.lock import acquire as acquire_instance_lock
    from heald.log import configure

    cfg = config()
    configure(cfg.log_level, json_logs=cfg.log_format == "json")
    from heald.store.checkpoints import CheckpointError

    bind_host, bind_port = host or cfg.api.host, port if port is not None else cfg.api.port
    try:
        instance_lock = acquire_instance_lock(cfg)
    except AlreadyRunning as exc:
        err.print(f"[red]error:[/] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from None
    try:
        sock = bind_socket(bind_host, bind_port)
    except OSError as exc:
        instance_lock.release()
        err.print(f"[red]error:[/] cannot listen on {bind_host}:{bind_port}: {exc.strerror or exc}", soft_wrap=True,
                  highlight=False)
        raise typer.Exit(1) from None
    bind_port = sock.getsockname()[1]
    # heald's own address is one of its identities (invariant 7): the one it really listens on
    cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"host": bind_host, "port": bind_port})})
    rt = Runtime(cfg, instance_lock=instance_lock)
    try:
        rt.start()
    except CheckpointError as exc:
        rt.stop()
        sock.close()
        fail(f"audit: {exc}")
    except ExecutorIdInUse as exc:
        rt.stop()
        sock.close()
        err.print(f"[red]error:[/] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(1) from None
    if not cfg.api.auth:
        err.print("[yellow]warning:[/] api.auth is false: anyone who reaches the API can send signals and approve "
                  "remedies. Use it only for local development.")
    elif rt.store.count_active_tokens() == 0:
        err.print("[yellow]warning:[/] no API tokens exist, so every /v1 request gets 401. Create one with "
                  "[bold]heald tokens create --role admin[/].")
    err.print(f"heald serves its API and dashboard on http://{bind_host}:{bind_port}/")
    # uvicorn re-raises the SIGTERM it caught once it has shut down; the default action would
    # end the process before rt.stop() (DBOS, the last audit checkpoint) runs.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        make_server(rt, bind_host, bind_port)[1].run(sockets=[sock])
    finally:
        rt.stop()
        sock.close()


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(0)


@app.command()
def demo(
    fault: list[str] = typer.Option([], "--fault", "-f", help="Fault to inject (repeatable); default: all."),
    json_out: bool = JsonOpt,
    keep: bool = typer.Option(False, help="Keep the demo's work directory (state, logs) afterwards."),
    workdir: Path | None = typer.Option(None, help="Work directory (default: a new temporary one)."),
    timeout: float = typer.Option(60.0, help="Seconds to wait for each incident to end."),
    with_prometheus: bool = typer.Option(False, "--with-prometheus",
                                         help="Watch the shop with a real Prometheus and Alertmanager (Debian's "
                                              "prometheus and prometheus-alertmanager) that alert heald."),
    serve: bool = typer.Option(False, "--serve",
                               help="Serve the API and dashboard on a loopback port while the demo runs, print "
                                    "its URL and a one-time admin token, and keep serving after the last fault "
                                    "until Ctrl-C."),
    port: int = typer.Option(0, "--port", min=0, max=65535, help="With --serve: the port (default: any free one)."),
) -> None:
    """Start a small real system, break it, and watch heald heal it; prints a table of faults,
    times to detect and recover, diagnoses, remedies and outcomes. With --serve, watch it in
    the dashboard."""
    from heald.demo.runner import FAULTS, results_json, run_demo, serve_dashboard, wait_for_interrupt
    from heald.log import configure

    configure("warning")
    if port and not serve:
        fail("--port: only with --serve")
    for name in fault:
        if name not in FAULTS:
            fail(f"--fault: unknown fault {name!r}; expected one of: {', '.join(FAULTS)}")
    if with_prometheus:
        from heald.demo.monitoring import installed

        if (problem := installed()) is not None:
            fail(f"--with-prometheus: {problem}")
    def report(results: list[Any]) -> None:
        if json_out:
            print_json(results_json(results))
            sys.stdout.flush()
            return
        table = Table(title="heald demo")
        for col in ("fault", "time to detect", "diagnosis", "remedy", "time to recover", "outcome"):
            table.add_column(col)
        for r in results:
            table.add_row(r.fault, _secs(r.time_to_detect_s),
                          f"{r.diagnosis} ({r.confidence:.2f})" if r.diagnosis else "—",
                          f"{r.remedy} ({r.target})" if r.remedy else "—", _secs(r.time_to_recover_s),
                          f"[green]{r.outcome}[/]" if r.expected else f"[red]{r.outcome}[/]")
        out.print(table)

    def start_serving(env: Any) -> None:
        try:
            url, token = serve_dashboard(env, port=port)
        except RuntimeError as exc:
            fail(f"--port: {exc}")
        err.print(f"[bold]dashboard:[/] {url}/  (sign in with this one-time admin token: [bold]{token}[/])",
                  soft_wrap=True, highlight=False)

    def keep_serving(env: Any, results: list[Any]) -> None:
        report(results)
        err.print(f"The faults are done; heald keeps serving the dashboard on {env.server.url}/ — press Ctrl-C to stop.",
                  soft_wrap=True, highlight=False)
        wait_for_interrupt()

    results = run_demo(fault, console=None if json_out else err, workdir=workdir, keep=keep, timeout=timeout,
                       with_prometheus=with_prometheus, on_start=start_serving if serve else None,
                       before_stop=keep_serving if serve else None)
    if not serve:
        report(results)
    if not all(r.expected for r in results):
        raise typer.Exit(1)


def _secs(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f} s"


@app.command()
def incident(incident_id: int = typer.Argument(..., help="The incident's id."), json_out: bool = JsonOpt,
             report: bool = typer.Option(False, "--report", help="Print the incident's report (Markdown): what was "
                                                               "seen, hypothesis, decision, actions, verification, timings.")) -> None:
    """Show one incident with its diagnosis, decisions, actions, verification and timeline."""
    from heald.store import NotFound

    if report and json_out:
        fail("--report and --json: choose one (the report is Markdown; --json gives the data)")
    store = open_store(config(), write=False)
    if report:
        from heald.explain import incident_report

        try:
            sys.stdout.write(incident_report(store, incident_id))
        except NotFound:
            fail(f"no incident {incident_id}", 1)
        return
    try:
        detail = store.incident_detail(incident_id)
    except NotFound:
        fail(f"no incident {incident_id}", 1)
    if json_out:
        print_json(detail)
        return
    inc = detail["incident"]
    out.print(f"[bold]#{inc['id']} {inc['title']}[/]  state: [bold]{inc['state']}[/]  service: {inc['service']}")
    out.print(f"detected {inc['detected_at']}; time to detect {_secs(inc['time_to_detect_s'])}; "
              f"time to recover {_secs(inc['time_to_recover_s'])}")
    if inc["closed_reason"]:
        out.print(f"closed: {inc['closed_reason']}")
    for d in detail["diagnoses"]:
        out.print(f"diagnosis: [bold]{d['category']}[/] (confidence {d['confidence']:.2f}, {d['reasoner']}): {d['explanation']}")
    timeline = Table(title="timeline")
    for col in ("time", "actor", "event", "reason"):
        timeline.add_column(col)
    for e in detail["timeline"]:
        timeline.add_row(e["ts"][11:23], e["actor"], e["event"], e["reason"])
    out.print(timeline)


def _verdict(incident_id: int, verdict: str, approver: str | None, token: str | None, comment: str,
             json_out: bool) -> None:
    from heald.engine import client_send, submit_approval
    from heald.store import InvalidTransition, NotFound

    cfg = config()
    store = open_store(cfg)
    who = approver_identity(cfg, store, token, approver)
    try:
        result = submit_approval(store, incident_id, who, verdict, comment, client_send(cfg))
    except NotFound:
        fail(f"no incident {incident_id}", 1)
    except InvalidTransition as exc:
        fail(str(exc), 1)
    if json_out:
        print_json(result)
    elif not result["counted"]:
        out.print(f"{who} had already given a verdict on incident {incident_id}; it counts once.")
    else:
        same = f", counting as {result['counts_as']}" if result["counts_as"] != who else ""
        out.print(f"{verdict}d incident {incident_id} as {who}{same} "
                  f"({result['approvals']}/{result['required']} approvals).")


AsOpt = typer.Option(None, "--as", help="Identity; only with api.auth false (default: your user name).")
TokenOpt = typer.Option(None, "--token", envvar="HEALD_TOKEN", help="An API token of role approver: its identity gives the verdict.")


@app.command()
def approve(incident_id: int, approver: str | None = AsOpt, token: str | None = TokenOpt,
            comment: str = typer.Option("", help="Why."), json_out: bool = JsonOpt) -> None:
    """Approve the remedy an incident is waiting on (an identity counts once)."""
    _verdict(incident_id, "approve", approver, token, comment, json_out)


@app.command()
def reject(incident_id: int, approver: str | None = AsOpt, token: str | None = TokenOpt,
           comment: str = typer.Option("", help="Why."), json_out: bool = JsonOpt) -> None:
    """Reject the remedy an incident is waiting on; the healing ends, escalated."""
    _verdict(incident_id, "reject", approver, token, comment, json_out)


def main() -> None:
    """The ``heald`` command (also ``python -m heald.cli``)."""
    app(prog_name="heald")



# Commands of each area (registered on ``app`` when imported).
from heald.cli import audit as _audit  # noqa: E402,F401
from heald.cli import ci as _ci  # noqa: E402,F401
from heald.cli import configcmd as _configcmd  # noqa: E402,F401
from heald.cli import evaluate as _evaluate  # noqa: E402,F401
from heald.cli import incidents as _incidents  # noqa: E402,F401
from heald.cli import learn as _learn  # noqa: E402,F401
from heald.cli import logs as _logs  # noqa: E402,F401
from heald.cli import mcpcmd as _mcpcmd  # noqa: E402,F401
from heald.cli import policy as _policy  # noqa: E402,F401
from heald.cli import runbooks as _runbooks  # noqa: E402,F401
from heald.cli import sandbox as _sandbox  # noqa: E402,F401
from heald.cli import tokens as _tokens  # noqa: E402,F401
from heald.cli import workers as _workers  # noqa: E402,F401
