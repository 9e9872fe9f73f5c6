"""Serving heald's HTTP application with uvicorn: in the foreground (``heald serve``) or in a
background thread (``heald demo --serve``).

Both tell the dashboard's live streams when the server is shutting down (an open
server-sent-events stream would otherwise hold uvicorn's graceful shutdown open until the
browser goes away) and bound the graceful shutdown.
"""

from __future__ import annotations

import gc
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from heald.api.app import create_app
from heald.engine import Runtime

#: Seconds uvicorn waits for open requests at shutdown before cancelling them.
GRACEFUL_SHUTDOWN_SECONDS = 5


def make_server(rt: Runtime, host: str, port: int) -> tuple[FastAPI, uvicorn.Server]:
    """The application over ``rt`` and a uvicorn server for it on ``host:port`` (port 0: any
    free port; read the bound one from :func:`bound_port` once started)."""
    app = create_app(rt)
    # What heald holds once started (modules, DBOS, the application) lives as long as the
    # process: moved out of the cyclic garbage collector's generations (Python's gc.freeze), a
    # full collection — which holds the GIL, so every request waits for it — then walks only
    # what was allocated since, e.g. a big webhook message's alerts, not all of heald (a
    # 20,000-alert message: three collections of 50 ms at most instead of 90-140 ms each).
    gc.collect()
    gc.freeze()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                           timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS))
    app.state.should_exit = lambda: server.should_exit  # ends the dashboard's live streams on shutdown
    return app, server


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` and listening (port 0: any free port), for
    uvicorn's ``Server.run(sockets=[...])``: ``heald serve`` binds its port before anything
    acts, so that a port in use stops it before it starts services or healings. IPv6 for a
    host with a colon. Raises OSError (e.g. EADDRINUSE)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart over TIME_WAIT
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


def bound_port(server: uvicorn.Server) -> int:
    """The TCP port a started server listens on."""
    for s in server.servers:
        for sock in s.sockets:
            return int(sock.getsockname()[1])
    raise RuntimeError("the server is not listening")


class ServerThread:
    """heald's application served by uvicorn in a daemon thread.

    :meth:`start` returns the base URL once the server listens (raises RuntimeError when it
    does not within ``timeout`` seconds, e.g. the port is taken); :meth:`stop` shuts it down.
    """

    def __init__(self, rt: Runtime, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.app, self.server = make_server(rt, host, port)
        self.thread = threading.Thread(target=self.server.run, name="heald-http", daemon=True)
        self.url = ""

    def start(self, timeout: float = 15.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"the HTTP server did not start on {self.host} (is the port in use?)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start within {timeout:g} s")
            time.sleep(0.05)
        self.url = f"http://{self.host}:{bound_port(self.server)}"
        return self.url

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=timeout)
