"""Running llmux under gunicorn: the settings it needs and the checks that keep them.

Usage::

    LlmuxServer("conf/demo.yaml", host="127.0.0.1", port=3000).run()   # llmux serve

or, with gunicorn's own command line, ``gunicorn -c gunicorn.conf.py``, whose
file takes :func:`gunicorn_settings` from here.

All llmux state lives in one gevent worker, so more than one worker,
``max_requests`` (which recycles the worker) and ``preload_app`` (which would
build the app, and its locks, before gevent patches) are refused at start.

This module runs in gunicorn's master process: it must not import flask,
requests or urllib3 (they would be imported before gevent patches ssl).
"""

from __future__ import annotations

import logging
import os
import sys

from gunicorn.app.base import Application

from ..config import ConfigError, load_config
from ..netaddr import is_loopback
from ..telemetry.logs import logging_config

log = logging.getLogger("llmux.server")

DEFAULT_CONFIG = "config.yaml"


def config_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("LLMUX_CONFIG") or DEFAULT_CONFIG


def gunicorn_settings(log_format: str | None = None, log_file: str | None = None) -> dict:
    """Every gunicorn setting llmux relies on, declared once; logging from the arguments,
    else ``$LLMUX_LOG_FORMAT`` (json) and ``$LLMUX_LOG_FILE`` (unset: stderr)."""
    log_format = log_format or os.environ.get("LLMUX_LOG_FORMAT", "json")
    log_file = log_file or os.environ.get("LLMUX_LOG_FILE") or None
    return {
        "worker_class": "gevent",
        "workers": 1,  # all switcher state lives in one process
        "worker_connections": 2000,  # concurrent clients, streams included
        "timeout": 30,  # a heartbeat for gevent workers, not a request limit
        "graceful_timeout": 120,  # SIGTERM: in-flight streams get this long
        "keepalive": 5,
        "max_requests": 0,  # a recycled worker would forget which model is awake
        "preload_app": False,  # build the app after gevent patched threading
        "control_socket_disable": True,
        "accesslog": "-",
        "errorlog": "-",
        "logconfig_dict": logging_config(log_format, log_file=log_file),
        "wsgi_app": "llmux.web.app:create_app()",
        "on_starting": check_settings,
        "post_worker_init": shut_down_on_sigterm,
        "worker_exit": sleep_active_on_exit,
    }


def default_bind() -> str:
    """``host:port`` from the llmux config, so plain gunicorn listens where it says."""
    try:
        config = load_config(config_path())
    except ConfigError:
        return "127.0.0.1:3000"  # the worker will report the config's problems
    return _bind(config.host, config.port)


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def problems_with(cfg) -> list[str]:
    problems = []
    if cfg.workers != 1:
        problems.append(f"workers must be 1 (got {cfg.workers}): all state lives in one worker")
    if cfg.max_requests:
        problems.append(f"max_requests must be 0 (got {cfg.max_requests}): it restarts the worker")
    if cfg.preload_app:
        problems.append("preload_app must be off: the app must be built after gevent patches")
    if "gevent" not in str(cfg.worker_class_str):
        problems.append(f"worker_class must be gevent (got {cfg.worker_class_str})")
    return problems


def check_settings(arbiter) -> None:
    """gunicorn's ``on_starting`` hook: refuse a shape llmux cannot run in."""
    problems = problems_with(arbiter.cfg)
    if problems:
        for problem in problems:
            print(f"llmux: refusing to start: {problem}", file=sys.stderr)
        sys.exit(1)
    try:
        config = load_config(config_path(os.environ.get("LLMUX_CONFIG")))
    except ConfigError:
        return
    for bind in arbiter.cfg.bind:
        host = bind.rsplit(":", 1)[0].strip("[]")
        if not is_loopback(host) and not config.api_keys:
            arbiter.log.warning(
                "llmux listens on %s without api_keys: anyone who can reach it can make it "
                "run hooks and use the models",
                bind,
            )


def shut_down_on_sigterm(worker) -> None:
    """gunicorn's ``post_worker_init`` hook: on SIGTERM, answer queued requests at once.

    gunicorn lets in-flight requests finish within ``graceful_timeout``; requests
    still waiting for a switch get 503 ``shutting_down`` instead of being cut.
    """
    import signal

    import gevent  # this hook only runs in the gevent worker

    app = getattr(worker, "wsgi", None)
    gateway = getattr(app, "extensions", {}).get("llmux")
    if gateway is None:
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handle_term(sig, frame):
        # gevent runs handlers in the hub, where nothing may block: take the lock elsewhere
        gevent.spawn(gateway.shutdown)
        if callable(previous):
            previous(sig, frame)

    signal.signal(signal.SIGTERM, handle_term)


def sleep_active_on_exit(server, worker) -> None:
    """gunicorn's ``worker_exit`` hook, run in the worker after its requests ended.

    A switch still running is waited for first (its hook finishes rather than
    lose its output pipes with the worker), within ``graceful_timeout`` of the
    shutdown. With ``shutdown.sleep_active`` the awake model's sleep hook runs here, so
    it has what is left of ``graceful_timeout`` after the drain. gunicorn's
    SIGHUP also ends the worker this way, so the model is put to sleep then too.
    """
    gateway = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("llmux")
    if gateway is None:
        return
    try:
        gateway.finish_switch(worker.cfg.graceful_timeout)
        gateway.sleep_on_exit()
    except Exception:
        log.exception("sleep on exit failed", extra={"event": "sleep_on_exit_failed"})


class LlmuxServer(Application):
    """gunicorn run in-process by ``llmux serve``."""

    def __init__(
        self,
        config_file: str,
        *,
        host: str,
        port: int,
        port_override: int | None = None,
        gunicorn_config: str | None = None,
        log_format: str = "json",
        log_file: str | None = None,
        verbose: bool = False,
    ):
        self.config_file = os.path.abspath(config_file)
        self.bind = _bind(host, port)
        self.port_override = port_override
        self.gunicorn_config = gunicorn_config
        self.log_format = log_format
        self.log_file = os.path.abspath(log_file) if log_file else None
        self.verbose = verbose
        super().__init__()

    def load_config(self) -> None:
        """llmux's gunicorn settings, then the gunicorn config file if one is given
        (gunicorn's own loader, so its errors read as gunicorn's), then the bind
        address and logging, which ``llmux serve`` decides."""
        for key, value in gunicorn_settings(self.log_format, self.log_file).items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)
        # what gunicorn shows as its config file (its default names ./gunicorn.conf.py)
        self.cfg.set("config", self.gunicorn_config)
        if self.gunicorn_config:
            self.load_config_from_file(self.gunicorn_config)
        # Application.run would load the app in the master for these, before gevent
        # patched anything, and take the hooks' ownership there: ``llmux check`` checks
        for key in ("check_config", "print_config"):
            self.cfg.set(key, False)
        self.cfg.set("bind", [self.bind])
        level = "DEBUG" if self.verbose else "INFO"
        self.cfg.set("logconfig_dict", logging_config(self.log_format, level, self.log_file))
        # the worker builds the app from these, even with a gunicorn.conf.py
        os.environ["LLMUX_CONFIG"] = self.config_file

    def load(self):
        # in the worker, after gevent patched everything: the one import of llmux.web
        # from llmux.ops, exempted by name in .importlinter
        from ..web.app import create_app

        return create_app(self.config_file, port=self.port_override)
