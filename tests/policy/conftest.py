"""The policy tests reuse the engine tests' runtime fixture."""

from tests.engine.conftest import start_runtime  # noqa: F401
