"""The former path of :mod:`llmux.demo.fake_backend`, kept for existing hook scripts.

Usage::

    python -m llmux.fake_backend --port 8001 --model llama   # same as llmux.demo.fake_backend
"""

from .demo.fake_backend import KNOBS, FakeBackend, main

__all__ = ["KNOBS", "FakeBackend", "main"]

if __name__ == "__main__":
    main()
