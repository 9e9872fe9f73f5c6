"""heald's HTTP API (FastAPI), served by ``heald serve``. See :func:`heald.api.app.create_app`."""
