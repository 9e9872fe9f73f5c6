"""``heald mcp``: serve the Model Context Protocol (:mod:`heald.mcpserver`) over stdio (for an
MCP client that starts heald itself) or streamable HTTP (``--transport http``, endpoint
``/mcp``). Every call needs an API token: over stdio ``--token`` / ``$HEALD_TOKEN``, over HTTP
each request's ``Authorization: Bearer`` header."""

from __future__ import annotations

from typing import Literal

import typer

from heald.cli._common import app, config, err, fail, open_store


@app.command("mcp")
def mcp_command(
    transport: str = typer.Option("stdio", "--transport", "-t", help="stdio, or http (streamable HTTP at /mcp)."),
    host: str = typer.Option("127.0.0.1", help="With --transport http: the listen address."),
    port: int = typer.Option(8078, min=0, max=65535, help="With --transport http: the listen port."),
    token: str | None = typer.Option(None, "--token", envvar="HEALD_TOKEN",
                                     help="With stdio: the API token every call is made with."),
) -> None:
    """Serve heald's tools (incidents, reports, silences, approvals) to MCP clients."""
    from heald.log import configure
    from heald.mcpserver import McpAuthError, build_server, http_app, principal_for

    chosen: Literal["stdio", "http"]
    if transport not in ("stdio", "http"):
        fail(f"--transport: expected stdio or http, got {transport!r}")
    chosen = transport  # type: ignore[assignment]
    cfg = config()
    configure(cfg.log_level, json_logs=cfg.log_format == "json")
    store = open_store(cfg)
    if chosen == "stdio":
        try:
            principal = principal_for(store, token)
        except McpAuthError as exc:
            fail(f"--token / $HEALD_TOKEN: {exc}", 3)
        err.print(f"heald mcp: serving over stdio as {principal.identity} (role {principal.role.value})",
                  highlight=False)
        build_server(cfg, store, stdio_token=token).run("stdio")
        return
    import uvicorn

    if token:
        err.print("heald mcp: --token / $HEALD_TOKEN is not used over HTTP: every request brings its own bearer token")
    server = build_server(cfg, store, host=host, port=port)
    err.print(f"heald mcp: serving streamable HTTP on http://{host}:{port}/mcp (bearer API tokens)", highlight=False)
    uvicorn.run(http_app(server, store), host=host, port=port, log_config=None, access_log=False)
