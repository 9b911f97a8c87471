"""The Flask application: local routes, the model-routed proxy, and error answers.

Usage::

    gunicorn -c gunicorn.conf.py 'llmux.web.app:create_app("conf/demo.yaml")'

``create_app`` must run in the gunicorn worker, after gevent patched the
standard library (``preload_app`` stays off): the switcher's lock is built here.

A routed request goes through the checks of SPEC §6 in order (path, API key,
content type, size, JSON, ``model``, configured model), then waits for its
model (``Switcher.acquire``), is forwarded, and holds its ticket until the last
byte is sent or the client leaves. Routed requests bypass Flask
(:mod:`llmux.web.routed`); Flask answers llmux's own endpoints. Every
:class:`~llmux.errors.LlmuxError` is turned into the OpenAI error envelope in
:func:`llmux.web.routed.error_answer`, and nowhere else.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import time

from flask import Flask, Response, request
from gunicorn.http.wsgi import Response as GunicornResponse
from prometheus_client import exposition
from werkzeug.exceptions import HTTPException

from .. import __version__
from ..config import Config, load_config
from ..engine.cost_aware import urgency_weight
from ..engine.events import Observers
from ..engine.hooks import HookRunner
from ..engine.ownership import Ownership, StateRecorder, reconcile
from ..engine.policies import make_policy
from ..engine.states import ModelState
from ..engine.switcher import Switcher, SwitchSettings
from ..errors import (
    BackendUnreachable,
    Forbidden,
    LlmuxError,
    ModelNotFound,
    NotFound,
    Unauthorized,
)
from ..netaddr import is_loopback
from ..telemetry import logs
from ..telemetry.history import History
from ..telemetry.log_events import LogObserver
from ..telemetry.metrics import Metrics
from ..telemetry.vllm_names import VllmNames
from . import bodies, cors, inbound, loading
from .admin import admin_blueprint
from .exchange import SERVER_RESPONSE, Exchange
from .reloading import Reloader
from .routed import (
    ALL_METHODS,
    CONFIG,
    EXCHANGE,
    Answer,
    Dispatch,
    begin,
    common_headers,
    failed,
    unexpected,
)
from .upstream import Reply, Upstream, filter_headers

log = logging.getLogger("llmux.app")

# Never forwarded: framing is redone by both ends; Expect is answered by gunicorn;
# the request id is llmux's own (sanitised) one; the body goes out decoded.
REQUEST_DROP = frozenset({"host", "content-length", "expect", "x-request-id", "content-encoding"})
# llmux's own API keys, never forwarded when api_keys checks them
CLIENT_KEYS = frozenset({"authorization", "x-api-key"})


class Gateway:
    """Everything one llmux instance holds: config, switcher, upstream pool."""

    def __init__(self, config: Config, *, port_override: int | None = None):
        self.config = config
        self.port_override = port_override
        self.started_at = time.time()
        self.shutdown_at: float | None = None  # monotonic seconds
        self.ownership = Ownership(config.path)
        recorder = StateRecorder(self.ownership)
        self.hooks = HookRunner(config, tracker=recorder)
        self.metrics = Metrics(config.models)
        self.history = History()
        self.switcher = Switcher(
            list(config.models),
            self.hooks,
            SwitchSettings.from_policy(config.policy),
            policy=make_policy(config.policy, config.models),
            observer=Observers(LogObserver(), self.metrics, recorder, self.history),
            idle_sleep={name: config.idle_sleep_secs(name) for name in config.models},
            budget=config.budget(),
        )
        # the endpoint picker's names, read at scrape time while metrics.vllm_names is on
        self.metrics.registry.register(
            VllmNames(self._vllm_models_state, max_awake=1, clock=time.time)
        )
        self.upstream = Upstream(config.proxy)
        self.reloader = Reloader(self)
        for warning in config.warnings():
            log.warning("config: %s", warning, extra={"event": "config_warning"})
        self.switcher.start(self._take_over, preload=config.startup.preload)

    def _vllm_models_state(self) -> dict | None:
        """The models' state for :class:`VllmNames`; None (no series) unless enabled."""
        return self.switcher.models_state() if self.config.metrics.vllm_names else None

    def _take_over(self) -> str | None:
        """Own the config's hooks, then find what is awake (a previous llmux's, or adopted)."""
        self.ownership.acquire()
        self.ownership.kill_orphaned_hooks()
        startup = self.config.startup
        budget = self.config.budget()
        awake = reconcile(
            self.ownership.recorded(),
            self.config.models,
            self.hooks.run,
            adopt=startup.adopt,
            prefer=startup.preload,
            choose=self.switcher.policy.keep_at_start,
            fits=None if budget.single else budget.fits,
        )
        self.ownership.record({model: ModelState.AWAKE for model in awake})
        return awake

    def authorize(self, header: str | None, x_api_key: str | None, config: Config) -> None:
        """With ``api_keys`` set, one of them must come as ``Authorization: Bearer KEY``
        (OpenAI clients) or as ``x-api-key: KEY`` (Anthropic clients)."""
        keys = config.api_keys
        if keys and not (_bearer_matches(header, keys) or _key_matches(x_api_key, keys)):
            raise Unauthorized("missing or invalid API key")

    def authorize_admin(self, header: str | None, remote_addr: str | None) -> None:
        """The admin token when one is set; otherwise only a loopback client."""
        token = self.config.admin_token()
        if token is not None:
            if not _bearer_matches(header, [token]):
                raise Unauthorized("missing or invalid admin token")
        elif not is_loopback(remote_addr):
            raise Forbidden(
                "the admin API answers only on loopback unless admin.token "
                "(or LLMUX_ADMIN_TOKEN) is set"
            )

    def shutdown(self) -> None:
        """Stop admitting requests; queued ones get 503 ``shutting_down``."""
        self.shutdown_at = time.monotonic()
        log.info("shutting down: queued requests are refused", extra={"event": "shutting_down"})
        self.switcher.close()

    def finish_switch(self, timeout: float) -> None:
        """At exit: let a hook that is running finish rather than cut it off with the worker.

        Waits for the running switch or sleep (none starts any more: the
        switcher is closed) up to ``timeout`` seconds from the shutdown.
        """
        if self.shutdown_at is not None:
            timeout -= time.monotonic() - self.shutdown_at
        if not self.switcher.wait_idle(timeout):
            log.warning(
                "a switch was still running after %gs; its hook is killed with the worker",
                timeout,
                extra={"event": "switch_cut_at_exit"},
            )

    def sleep_on_exit(self) -> None:
        """``shutdown.sleep_active``: after the drain, put every awake model to sleep."""
        if not self.config.shutdown.sleep_active:
            return
        for model in self.switcher.status()["awake"]:
            self.switcher.sleep(model, reason="shutdown", timeout=5.0)

    def model_entries(self, config: Config) -> list[dict]:
        """``/v1/models``: every model, then every alias, sorted by name within each."""
        names = sorted(config.names, key=lambda n: (config.names[n] != n, n))
        states = self.switcher.models_state()
        return [self.model_entry(name, config, states) for name in names]

    def model_entry(self, name: str, config: Config, states: dict | None = None) -> dict:
        """One OpenAI model object for a model or alias name; ``ModelNotFound`` if neither.

        Besides OpenAI's four fields: ``state``, ``aliases`` or ``alias_of``, and
        ``llmux``, the model's :meth:`node_state` entry with the node's name, for routers.
        """
        model = config.resolve(name)
        if model is None:
            raise ModelNotFound(name)
        states = states if states is not None else self.switcher.models_state()
        signals = states.get(model) or {"state": self.switcher.state(model)}
        entry = {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": "llmux",
            "state": signals["state"],
        }
        if model != name:
            entry["alias_of"] = model
        elif config.models[model].aliases:
            entry["aliases"] = list(config.models[model].aliases)
        entry["llmux"] = {**signals, "node": self.node_name(config)}
        return entry

    def node_name(self, config: Config) -> str:
        """``node_name``, else this host's name and the port llmux listens on."""
        return config.node_name or f"{socket.gethostname()}:{config.port}"

    def node_state(self) -> dict:
        """``GET /llmux/state``: what a router needs to place a request on this node.

        ``{"node", "time" (Unix seconds), "models": {name: {state, in_flight, queued,
        oldest_wait_secs, estimated_wait_secs}}, "aliases": {alias: model}}``
        (:meth:`Switcher.models_state`); a router that knows a model by an alias finds
        its entry through ``aliases``.
        """
        config = self.config
        return {
            "node": self.node_name(config),
            "time": round(time.time(), 3),
            "models": self.switcher.models_state(),
            "aliases": {a: n for a, n in config.names.items() if a != n},
        }

    def status(self) -> dict:
        """What the admin API, the page and ``llmux status`` show."""
        switcher = self.switcher.status()
        for name, model in switcher["models"].items():
            model["last_hook_failure"] = self.history.last_hook_failure(name)
            spec = self.config.models.get(name)
            model["port"] = spec.port if spec else None
            model["removed"] = spec is None
        now = time.time()
        return {
            "version": __version__,
            "config": self.config.path,
            "now": now,
            "started_at": self.started_at,
            "uptime_secs": now - self.started_at,
            **switcher,
            "timeline": self.history.timeline(),
            "hook_failures": self.history.hook_failures(),
        }

    def _model_named(self, name: str) -> str:
        model = self.config.resolve(name)
        if model is None:
            raise ModelNotFound(name)
        return model

    def wake(self, name: str, environ: dict) -> dict:
        """Wake a model (by its name or an alias) the way a request for it would,
        and return once it is awake."""
        model = self._model_named(name)
        ticket = self.switcher.acquire(model, cancelled=inbound.client_gone_probe(environ))
        ticket.release()
        return {"model": model, "state": self.switcher.state(model), "waited_secs": ticket.waited}

    def sleep(self, name: str) -> dict:
        """Drain a model (by its name or an alias) and run its sleep hook."""
        model = self._model_named(name)
        timeout = self.config.hook_timeout(model, "sleep") + 60.0
        state = self.switcher.sleep(model, reason="admin", timeout=timeout)
        return {"model": model, "state": state}

    def reload(self) -> dict:
        """Re-read the config file and apply it, or change nothing and say why."""
        return self.reloader.reload()

    def forward(
        self,
        exchange: Exchange,
        environ: dict,
        headers,
        body: bytes,
        config: Config,
        *,
        stream: bool = False,
    ) -> Answer:
        """Wait for the model, send the request, and answer with the backend's reply.

        ``exchange`` holds the ticket and the reply from the moment each exists;
        whatever is raised here, the error answer closes it (see ``create_app``).
        A ``stream`` request for a model with ``stream_loading`` that has to
        wait is answered at once, with its progress (:mod:`llmux.web.loading`).
        """
        model = exchange.model
        exchange.arrived(self.switcher.state(model), environ, self.switcher.cancel)
        weight = urgency_weight(inbound.urgency(environ))

        def send() -> Reply:
            return self._send(exchange, environ, headers, body, config)

        if stream and config.loading_progress(model) and exchange.path in loading.STREAMING_PATHS:
            admission = loading.Admission(self.switcher, model, weight)
            exchange.admission = admission
            if not admission.settle():
                exchange.early = True
                relay = loading.LoadingRelay(exchange, admission, environ, send)
                exchange.body = relay
                return Answer(200, list(loading.HEADERS), relay)
            ticket = admission.take()
        else:
            ticket = self.switcher.acquire(model, queued=exchange.queued, weight=weight)
        exchange.admitted(ticket, environ)
        reply = exchange.reply = send()
        headers = []
        event_stream = False
        for name, value in reply.headers:
            if not cors.is_cors_header(name):
                headers.append((name, value))
                if name.lower() == "content-type":
                    event_stream = inbound.mimetype(value) == "text/event-stream"
        if reply.length is not None:
            headers.append(("Content-Length", str(reply.length)))
        if event_stream:
            headers.append(("X-Accel-Buffering", "no"))
        return Answer(reply.status, headers, exchange.relay(environ.get(SERVER_RESPONSE)))

    def route(self, environ: dict, config: Config) -> Answer:
        """Answer one routed request: the checks of SPEC §6 in order, then
        :meth:`forward`. Raises :class:`~llmux.errors.LlmuxError` to refuse it."""
        method = environ["REQUEST_METHOD"]
        path = inbound.routed_path(environ, config.proxy.extra_paths)
        exchange = environ[EXCHANGE] = Exchange(self.metrics, method=method, path=path)
        self.authorize(environ.get("HTTP_AUTHORIZATION"), environ.get("HTTP_X_API_KEY"), config)
        content_type = environ.get("CONTENT_TYPE", "")
        if method == "POST":
            inbound.body_kind(content_type)
        inbound.refuse_cross_site(environ, lambda origin: cors.allowed(origin, config.cors))
        proxy = config.proxy
        body = inbound.read_body(environ, proxy.max_body_bytes, proxy.body_timeout)
        fields = bodies.read_fields(body, content_type)
        model = config.resolve(fields.model)
        if model is None:
            raise ModelNotFound(fields.model)
        exchange.model, exchange.requested = model, fields.model
        upstream_name = config.upstream_name(model)
        if fields.model != upstream_name:  # an alias, or upstream_model
            body = bodies.with_model(body, content_type, upstream_name)
        headers = inbound.request_headers(environ)
        return self.forward(exchange, environ, headers, body, config, stream=fields.stream)

    def _send(self, exchange: Exchange, environ: dict, headers, body: bytes, config) -> Reply:
        """Send an admitted request to its model's backend; the reply's headers are in."""
        model = exchange.model
        try:
            # the hooks' config: what the backend was woken with, across reloads
            port = self.hooks.port(model)
        except KeyError:
            raise ModelNotFound(model, removed=True) from None
        drop = REQUEST_DROP | (CLIENT_KEYS if config.api_keys else frozenset())
        if exchange.early:  # its headers are out: a compressed body could not say so
            drop |= {"accept-encoding"}
        forwarded = filter_headers(headers, drop=drop)
        forwarded.append(("X-Request-Id", logs.request_id.get() or ""))
        try:
            return self.upstream.send(
                environ["REQUEST_METHOD"],
                port,
                exchange.path,
                environ.get("QUERY_STRING", ""),
                forwarded,
                body,
                model=model,
                cancel=exchange.cancel,
            )
        except BackendUnreachable:
            self.switcher.backend_unreachable(model)  # dead? then the next request re-wakes it
            raise


def _bearer_matches(header: str | None, secrets) -> bool:
    scheme, _, token = (header or "").partition(" ")
    return _key_matches(token if scheme.lower() == "bearer" else None, secrets)


def _key_matches(presented: str | None, secrets) -> bool:
    if presented is None:
        return False
    value = presented.strip().encode()
    # compare with every secret, always, so timing says nothing about which matched
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(value, secret.encode())
    return matched


def _response(answer: Answer) -> Response:
    """An :class:`~llmux.web.routed.Answer` as a Flask response, headers as they are."""
    response = Response(answer.body, status=answer.status_line, direct_passthrough=True)
    response.headers.clear()
    for name, value in answer.headers:
        response.headers.add(name, value)
    return response


def _empty(status: int, headers: list[tuple[str, str]]) -> Response:
    response = Response(status=status, headers=headers)
    del response.headers["Content-Type"]  # no body, no type
    return response


def _json(data) -> str:
    return json.dumps(data, separators=(",", ":"))


def create_app(config_path: str | None = None, *, port: int | None = None) -> Flask:
    """Build the app for one config file (default: ``$LLMUX_CONFIG``, then ``config.yaml``)."""
    path = config_path or os.environ.get("LLMUX_CONFIG") or "config.yaml"
    gateway = Gateway(load_config(path, port=port), port_override=port)
    app = Flask("llmux")
    app.extensions["llmux"] = gateway
    app.register_blueprint(admin_blueprint(gateway))
    app.url_map.merge_slashes = False  # never redirect: an odd path is simply not routed
    app.url_map.strict_slashes = False

    @app.get("/health")
    def health():
        return Response('{"status":"ok"}', content_type="application/json")

    @app.get("/v1/models")
    def list_models():
        data = gateway.model_entries(request.environ[CONFIG])
        return Response(_json({"object": "list", "data": data}), content_type="application/json")

    @app.get("/v1/models/<path:model_id>")
    def get_model(model_id):
        entry = gateway.model_entry(model_id, request.environ[CONFIG])
        return Response(_json(entry), content_type="application/json")

    @app.get("/llmux/state")
    def node_state():
        # open, like /v1/models, whose entries carry the same (no admin token, no key)
        return Response(_json(gateway.node_state()), content_type="application/json")

    @app.get("/metrics")
    def metrics():
        # text format, or OpenMetrics when the scraper asks for it
        encoder, content_type = exposition.choose_encoder(request.headers.get("Accept"))
        gateway.metrics.set_wait_bounds(gateway.switcher.bounds())
        gateway.metrics.set_node_state(gateway.switcher.models_state())
        gateway.metrics.set_memory(gateway.switcher.memory())
        return Response(encoder(gateway.metrics.registry), content_type=content_type)

    @app.before_request
    def tag_request():
        environ = request.environ
        config = gateway.config
        begin(environ, config)
        if request.method == "OPTIONS":  # answered here, on every path, never forwarded
            if cors.is_preflight(environ) and request.path.startswith("/llmux/"):
                raise Forbidden("the admin API is not open to other origins")
            if cors.is_preflight(environ):
                return _empty(*cors.preflight(environ, config.cors))
            return _empty(204, [("Allow", ", ".join(ALL_METHODS))])
        return None

    @app.after_request
    def add_headers(response):
        admin = request.path.startswith("/llmux/")
        for name, value in common_headers(request.environ, response.status_code, admin):
            if name == "Vary":  # keep the backend's (Accept-Encoding, say)
                response.vary.add(value)
            else:
                response.headers[name] = value
        return response

    @app.route("/", methods=ALL_METHODS)
    @app.route("/<path:_any>", methods=ALL_METHODS)
    def routed(_any=""):
        # reached only for a path of Flask's own that none of its routes takes
        # with this method: Dispatch answers every other routed request
        return _response(gateway.route(request.environ, request.environ[CONFIG]))

    @app.errorhandler(LlmuxError)
    def llmux_error(error: LlmuxError):
        return _response(failed(request.environ, error))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        if error.code == 404:
            path = request.path[:128]
            extra = gateway.config.proxy.extra_paths
            return llmux_error(NotFound(f"no route for {path}{inbound.hint(path, extra)}"))
        answer = failed(request.environ, _http_error(error))
        allowed = getattr(error, "valid_methods", None)
        if error.code == 405 and allowed:  # RFC 9110 §15.5.6
            answer.headers.append(("Allow", ", ".join(allowed)))
        return _response(answer)

    @app.errorhandler(Exception)
    def internal_error(error: Exception):
        return _response(unexpected(request.environ))

    app.wsgi_app = _ReleaseGuard(Dispatch(gateway.route, lambda: gateway.config, app.wsgi_app))
    return app


class _ReleaseGuard:
    """The outermost WSGI layer: no routed request leaves anything held.

    ``routed.failed`` closes the exchange of a request answered with an error
    (for ``Dispatch`` and Flask's error handlers alike), and a relayed body
    closes it when the WSGI server closes the body. Only when the application
    raises past both (gunicorn refusing what ``start_response`` was given,
    say), or returns without a relay and without an error answer, is it left
    open: this closes it then, as a 500.
    """

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        server_response = getattr(start_response, "__self__", None)
        if isinstance(server_response, GunicornResponse):
            environ[SERVER_RESPONSE] = server_response  # for Relay's pass-through
        try:
            body = self.app(environ, start_response)
        except BaseException:
            _close_exchange(environ, "internal_error")
            raise
        exchange = environ.get(EXCHANGE)
        if exchange is not None and exchange.body is None:
            _close_exchange(environ, "not_closed")
        return body


def _close_exchange(environ: dict, code: str) -> None:
    exchange = environ.get(EXCHANGE)
    if exchange is not None and not exchange.closed:
        log.error(
            "request ended without closing its exchange (%s)",
            code,
            extra={"event": "internal_error", "code": code},
        )
        exchange.close(500, "error", code)


def _http_error(error: HTTPException) -> LlmuxError:
    """Werkzeug's own errors (405 on a local route, say) in llmux's envelope."""
    translated = LlmuxError(error.description or error.name)
    translated.status = error.code or 500
    translated.code = (error.name or "error").lower().replace(" ", "_")
    return translated
