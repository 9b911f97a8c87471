"""llmux: an OpenAI-compatible proxy that lets several local LLM servers share one GPU.

This module stays import-light on purpose: gunicorn's master imports it (through
``setup.cfg``'s ``version = attr:`` and the CLI) before gevent patches anything.
"""

__version__ = "0.1.0"
