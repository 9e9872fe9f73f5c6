"""Learning tests that need a real heald Runtime (the API)."""

from tests.engine.conftest import start_runtime  # noqa: F401
