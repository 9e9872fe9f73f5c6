"""The report tests run real heald Runtimes, as the engine tests do."""

from tests.engine.conftest import start_runtime  # noqa: F401
