from tests.e2e.conftest import llmux_factory  # noqa: F401  (the same real-process fixture)
