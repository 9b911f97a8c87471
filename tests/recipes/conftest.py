# the recipes run through a real llmux too
from tests.e2e.conftest import llmux_factory  # noqa: F401
