"""Addresses: which hosts never leave the machine.

Flask-free and import-light: both gunicorn's master (:mod:`llmux.ops.server`,
warning about a public listen address without API keys) and the worker
(:mod:`llmux.web.app`, guarding the admin routes) use it.
"""

from __future__ import annotations

import ipaddress


def is_loopback(host: str | None) -> bool:
    """A listen address or a client's address that never leaves the machine."""
    host = host or ""
    if host == "localhost" or host.startswith("unix:"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:  # a host name or "" (every interface, or no address)
        return False
