"""heald's own logs: structlog, JSON lines on stderr (stdout stays free for ``--json`` output)."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "info", json_logs: bool = True) -> None:
    """Configure structlog and the standard logging module (DBOS, uvicorn) to write to stderr."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=lvl, stream=sys.stderr, format="%(message)s", force=True)
    for noisy in ("dbos", "httpx", "alembic", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(lvl, logging.WARNING))
    renderer = structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
