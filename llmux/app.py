"""The public path of the app factory: ``llmux.app:create_app`` (SPEC §2).

Usage::

    gunicorn -c gunicorn.conf.py 'llmux.app:create_app("conf/demo.yaml")'

The code lives in :mod:`llmux.web.app`; this module only re-exports it.
"""

from .web.app import create_app

__all__ = ["create_app"]
