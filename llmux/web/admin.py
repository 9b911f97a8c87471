"""The admin API under ``/llmux/``: status, wake, sleep, reload, and the status page.

Usage::

    app.register_blueprint(admin_blueprint(gateway))

    curl -H "Authorization: Bearer $LLMUX_ADMIN_TOKEN" http://127.0.0.1:3000/llmux/status
    curl -X POST ... /llmux/models/qwen/wake     # returns once qwen is awake (or failed)
    curl -X POST ... /llmux/models/qwen/sleep    # drains qwen, runs its sleep hook
    curl -X POST ... /llmux/reload               # re-reads the config file

Every endpoint needs the admin token (``admin.token`` or ``LLMUX_ADMIN_TOKEN``);
without one configured, only loopback clients are answered. Actions (POST)
from a browser page of another site are refused (403), token or not. The page at
``/llmux/ui`` holds no data itself, so it is served to anyone: it asks for the
token and sends it with each refresh.
"""

from __future__ import annotations

import json
from importlib import resources

from flask import Blueprint, Response, request

from . import inbound

MODEL = "<path:model>"


def admin_blueprint(gateway) -> Blueprint:
    admin = Blueprint("llmux_admin", __name__, url_prefix="/llmux")
    page = resources.files("llmux.web").joinpath("status_page.html").read_bytes()

    @admin.before_request
    def authorize():
        if request.endpoint != "llmux_admin.ui":
            gateway.authorize_admin(
                request.headers.get("Authorization"), request.environ.get("REMOTE_ADDR")
            )
        if request.method != "GET":
            # a page on another site must not wake, sleep or reload through the
            # user's browser, which is a loopback client; cors.allow_origins does
            # not open the admin API
            inbound.refuse_cross_site(request.environ)

    @admin.get("/status")
    def status():
        return _json(gateway.status())

    @admin.post(f"/models/{MODEL}/wake")
    def wake(model):
        return _json(gateway.wake(model, request.environ))

    @admin.post(f"/models/{MODEL}/sleep")
    def sleep(model):
        return _json(gateway.sleep(model))

    @admin.post("/reload")
    def reload():
        return _json(gateway.reload())

    @admin.get("/ui")
    def ui():
        response = Response(page, content_type="text/html; charset=utf-8")
        # the page may only talk to this origin, and no other site may frame it
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
            "connect-src 'self'; img-src data:; frame-ancestors 'none'"
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    return admin


def _json(data) -> Response:
    return Response(json.dumps(data, separators=(",", ":")), content_type="application/json")
