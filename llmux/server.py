"""The former path of :mod:`llmux.ops.server`, kept for existing ``gunicorn.conf.py`` copies.

Such a file does ``from llmux.server import default_bind, gunicorn_settings``;
everything public that module offered is re-exported here. Like the module it
stands for, this one runs in gunicorn's master and imports no Flask.
"""

from .netaddr import is_loopback
from .ops.server import (
    DEFAULT_CONFIG,
    LlmuxServer,
    check_settings,
    config_path,
    default_bind,
    gunicorn_settings,
    problems_with,
    shut_down_on_sigterm,
    sleep_active_on_exit,
)

__all__ = [
    "DEFAULT_CONFIG",
    "LlmuxServer",
    "check_settings",
    "config_path",
    "default_bind",
    "gunicorn_settings",
    "is_loopback",
    "problems_with",
    "shut_down_on_sigterm",
    "sleep_active_on_exit",
]
