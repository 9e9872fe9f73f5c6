"""heald's own logs: structlog on stderr (stdout stays free for ``--json`` output).

One format for everything heald writes to stderr: its own structlog events and the standard
``logging`` records of the libraries it runs (uvicorn's server and error lines, DBOS, alembic)
go through the same renderer, JSON lines (``log_format: json``, every line one object with
``event``, ``level``, ``timestamp`` and, for library records, ``logger``) or key=value text
(``console``).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from structlog.typing import Processor


def configure(level: str = "info", json_logs: bool = True, stream: TextIO | None = None) -> None:
    """Configure structlog and the standard logging module (DBOS, uvicorn) to write to
    ``stream`` (default: stderr), both through one renderer (JSON lines when ``json_logs``, else
    console text)."""
    out = stream if stream is not None else sys.stderr
    lvl = getattr(logging, level.upper(), logging.INFO)
    renderer: Processor = structlog.processors.JSONRenderer() if json_logs else \
        structlog.dev.ConsoleRenderer(colors=False)
    shared: list[Processor] = [structlog.processors.add_log_level,
                               structlog.processors.TimeStamper(fmt="iso", utc=True)]
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer]))
    logging.basicConfig(level=lvl, handlers=[handler], force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # through the root handler, not their own
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.propagate = True
        lib.disabled = False  # a logging.config call with disable_existing_loggers may have turned it off
        lib.setLevel(logging.NOTSET)  # an earlier uvicorn.Config(log_level=...) may have set one
    for noisy in ("dbos", "httpx", "alembic", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(lvl, logging.WARNING))
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
