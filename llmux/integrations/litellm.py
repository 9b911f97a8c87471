"""A routing strategy for the LiteLLM proxy: each request goes to the llmux node where its
model is awake (``llmux.integrations.placement``), from the nodes' ``GET /llmux/state``.

Install (in the LiteLLM proxy's own virtualenv: ``pip install "llmux-proxy[litellm]"``)
and name it in the proxy's ``config.yaml``::

    model_list:
      - model_name: qwen                 # one deployment per llmux node, marked as llmux's
        litellm_params: {model: openai/qwen, api_base: "http://gpu-a:3000/v1", api_key: KEY}
        model_info: {llmux: true}
      - model_name: qwen
        litellm_params: {model: openai/qwen, api_base: "http://gpu-b:3000/v1", api_key: KEY}
        model_info: {llmux: true}
    litellm_settings:
      callbacks: ["llmux.integrations.litellm.proxy_handler_instance"]

LiteLLM 1.108 has no setting that names a custom strategy, so the entry in
``callbacks`` does it: importing this module creates :data:`proxy_handler_instance`, a
``CustomLogger`` that, once the proxy's router exists, installs
:class:`LlmuxRoutingStrategy` with ``Router.set_custom_routing_strategy`` (checked
every second and before each request, in case the router is rebuilt) and polls every
node's ``GET /llmux/state`` in the background (never inside a request). The strategy
picks among what LiteLLM's ``async_get_healthy_deployments`` leaves, so cooldowns,
health checks and LiteLLM's retries still apply; a retry avoids the nodes that already
failed the request. Only deployments marked ``model_info.llmux: true`` (or with an
``llmux_node``) are llmux's: other model groups keep LiteLLM's own selection, and
their endpoints are never polled.

Which node a deployment is: ``model_info.llmux_node`` (a base URL such as
``http://gpu-a:3000``), else its ``api_base`` without a trailing ``/v1``; its model on
that node: ``model_info.llmux_model``, else ``litellm_params.model`` without its
provider prefix. A node is polled with the deployment's ``api_key`` as a Bearer token
(llmux's ``api_keys``); a deployment may name the model by one of the node's
aliases (``GET /llmux/state`` lists them). Settings, from the environment:
``LLMUX_LITELLM_POLL_SECS`` (1), ``LLMUX_LITELLM_MAX_AGE_SECS`` (5: an older answer
counts as none, so a dead node is skipped; above the poll interval),
``LLMUX_LITELLM_SPILL_FACTOR`` (2); positive and finite. Tested with LiteLLM 1.108.7.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import time

import httpx
from litellm.integrations.custom_logger import CustomLogger
from litellm.router import Router
from litellm.types.router import CustomRoutingStrategyBase

from .placement import choose

log = logging.getLogger("llmux.integrations.litellm")


def _setting(name: str, default: float) -> float:
    """A positive, finite number from the environment variable ``name``; ValueError
    naming the variable otherwise (a value such as ``inf`` would switch routing off)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a number of seconds above 0, got {raw!r}")
    return value


def settings() -> tuple[float, float, float]:
    """``(poll_secs, max_age_secs, spill_factor)`` from ``LLMUX_LITELLM_*``; ValueError
    when one is bad or the poll is not more frequent than the answers' age limit
    (else every node's answer would go stale between polls)."""
    poll = _setting("LLMUX_LITELLM_POLL_SECS", 1.0)
    max_age = _setting("LLMUX_LITELLM_MAX_AGE_SECS", 5.0)
    spill = _setting("LLMUX_LITELLM_SPILL_FACTOR", 2.0)
    if poll >= max_age:
        raise ValueError(
            f"LLMUX_LITELLM_POLL_SECS ({poll:g}) must be below LLMUX_LITELLM_MAX_AGE_SECS "
            f"({max_age:g}): answers would go stale between polls"
        )
    return poll, max_age, spill


def is_llmux(deployment: dict) -> bool:
    """Whether a deployment is an llmux node's: ``model_info.llmux: true`` or an
    ``llmux_node``. Other deployments (other providers) keep LiteLLM's own selection."""
    info = deployment.get("model_info") or {}
    return bool(info.get("llmux") or info.get("llmux_node"))


def node_of(deployment: dict) -> str:
    """The llmux node (base URL) a deployment of LiteLLM's ``model_list`` points at."""
    node = (deployment.get("model_info") or {}).get("llmux_node")
    if node:
        return str(node).rstrip("/")
    base = str(deployment["litellm_params"].get("api_base") or "").rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def model_of(deployment: dict) -> str:
    """The model's name on its llmux node."""
    explicit = (deployment.get("model_info") or {}).get("llmux_model")
    if explicit:
        return str(explicit)
    name = str(deployment["litellm_params"]["model"])
    return name.split("/", 1)[1] if "/" in name else name


class NodeStates:
    """The latest ``GET /llmux/state`` of every node, polled in the background.

    ``get(node)`` is the body, or None when the node has not answered within
    ``max_age`` seconds.
    """

    def __init__(self, poll_secs: float, max_age: float, clock=time.monotonic):
        self.poll_secs = poll_secs
        self.max_age = max_age
        self.clock = clock
        self.nodes: dict[str, str | None] = {}  # node -> the API key to poll it with
        self._latest: dict[str, tuple[float, dict]] = {}
        # node -> model -> requests sent there since its last answer, which it cannot
        # count yet: a burst spreads over nodes where the model is awake
        self._sent: dict[str, dict[str, int]] = {}

    def get(self, node: str) -> dict | None:
        seen = self._latest.get(node)
        if seen is None or self.clock() - seen[0] > self.max_age:
            return None
        return seen[1]

    def entry(self, node: str, model: str) -> tuple[dict | None, dict | None]:
        """``(state, entry)``: the node's fresh answer and its entry for ``model`` (by
        name or alias), with the requests sent since the answer counted in flight."""
        state = self.get(node)
        if state is None:
            return None, None
        name = (state.get("aliases") or {}).get(model, model)
        entry = state["models"].get(name)
        sent = self._sent.get(node, {}).get(name, 0)
        if entry is not None and sent:
            entry = {**entry, "in_flight": entry["in_flight"] + sent}
        return state, entry

    def sent(self, node: str, model: str) -> None:
        """A request for ``model`` (its name or alias on the node) was sent to ``node``."""
        state = self.get(node)
        name = (state.get("aliases") or {}).get(model, model) if state else model
        counts = self._sent.setdefault(node, {})
        counts[name] = counts.get(name, 0) + 1

    def learn(self, deployments: list[dict]) -> None:
        """Poll the nodes of these deployments from now on."""
        for deployment in deployments:
            key = deployment["litellm_params"].get("api_key")
            self.nodes.setdefault(node_of(deployment), key if isinstance(key, str) else None)

    async def poll_forever(self) -> None:
        # the user agent names this poller in the nodes' access logs
        agent = {"User-Agent": f"llmux-litellm (pid {os.getpid()})"}
        async with httpx.AsyncClient(timeout=2.0, headers=agent) as client:
            while True:
                started = self.clock()
                await asyncio.gather(*(self._poll(client, n) for n in list(self.nodes)))
                await asyncio.sleep(max(self.poll_secs - (self.clock() - started), 0.05))

    async def _poll(self, client: httpx.AsyncClient, node: str) -> None:
        key = self.nodes.get(node)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            response = await client.get(node + "/llmux/state", headers=headers)
            response.raise_for_status()
            body = response.json()
            if not _valid(body):
                raise ValueError("not an llmux /llmux/state answer")
            self._latest[node] = (self.clock(), body)
            self._sent.pop(node, None)
        except Exception as exc:  # noqa: BLE001 - one bad node never stops the poll of others
            log.debug("llmux node %s: %s", node, exc)


def _valid(body) -> bool:
    """Whether ``body`` has the shape of ``GET /llmux/state``'s answer."""
    models = body.get("models") if isinstance(body, dict) else None
    if not isinstance(models, dict):
        return False
    for entry in models.values():
        if not isinstance(entry, dict) or not isinstance(entry.get("state"), str):
            return False
        numbers = [entry.get("in_flight"), entry.get("queued")]
        if not all(isinstance(n, int | float) for n in numbers):
            return False
        wait = entry.get("estimated_wait_secs")
        if wait is not None and not isinstance(wait, int | float):
            return False
    return True


class LlmuxRoutingStrategy(CustomRoutingStrategyBase):
    """LiteLLM's selection for a model group, replaced by :func:`placement.choose`."""

    def __init__(self, router: Router, states: NodeStates, spill_factor: float):
        self.router = router
        self.states = states
        self.spill_factor = spill_factor

    async def async_get_available_deployment(
        self, model, messages=None, input=None, specific_deployment=False, request_kwargs=None
    ):
        kwargs = request_kwargs if request_kwargs is not None else {}
        asked = {
            "model": model,
            "messages": messages,
            "input": input,
            "specific_deployment": specific_deployment,
            "request_kwargs": kwargs,
        }
        if any(is_llmux(d) for d in self.router.get_model_list(model_name=model) or []):
            healthy = await self.router.async_get_healthy_deployments(**asked)
            if isinstance(healthy, dict):  # a deployment asked for by id
                return healthy
            ours = [d for d in healthy if is_llmux(d)]
            if ours:
                return self._pick(model, ours, kwargs)
        # not an llmux group, or no llmux node of it is healthy: LiteLLM's own selection
        return await Router.async_get_available_deployment(self.router, **asked)

    def get_available_deployment(
        self, model, messages=None, input=None, specific_deployment=False, request_kwargs=None
    ):
        # the proxy routes through the async method; the SDK's sync calls get the same
        # choice among the group's llmux deployments (LiteLLM has no public sync health
        # filter), anything else LiteLLM's own
        kwargs = request_kwargs if request_kwargs is not None else {}
        ours = [d for d in self.router.get_model_list(model_name=model) or [] if is_llmux(d)]
        if ours:
            return self._pick(model, ours, kwargs)
        return Router.get_available_deployment(
            self.router,
            model=model,
            messages=messages,
            input=input,
            specific_deployment=specific_deployment,
            request_kwargs=kwargs,
        )

    def _pick(self, model: str, deployments: list[dict], kwargs: dict) -> dict:
        self.states.learn(deployments)
        tried = _tried(self.router, kwargs)
        left = [d for d in deployments if (d.get("model_info") or {}).get("id") not in tried]
        by_node = {node_of(d): d for d in left or deployments}
        # each node's state under the group's name, whatever the model is called there
        views = {}
        for node, deployment in by_node.items():
            state, entry = self.states.entry(node, model_of(deployment))
            if entry is not None:  # the node's other models tell whether it is busy
                views[node] = {**state, "models": {**state["models"], model: entry}}
            else:
                views[node] = None
        node = choose(model, list(by_node), views, self.spill_factor)
        self.states.sent(node, model_of(by_node[node]))
        return by_node[node]


def _say(message: str, level: int = logging.INFO) -> None:
    """Log to ``llmux.integrations.litellm``, on standard error when nothing else
    handles it (the proxy configures only its own loggers), so an operator sees it."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s llmux: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    log.log(level, "%s", message)


def _tried(router: Router, kwargs: dict) -> set:
    """Ids of the deployments this request already failed on (LiteLLM's retries)."""
    key = router._get_metadata_variable_name_from_kwargs(kwargs)  # noqa: SLF001 - no public way
    previous = (kwargs.get(key) or {}).get("previous_models") or []
    return {p.get("deployment_id") for p in previous if isinstance(p, dict)}


class LlmuxProxyHandler(CustomLogger):
    """Installs :class:`LlmuxRoutingStrategy` on the LiteLLM proxy's router and runs the
    poller; named in the proxy's ``litellm_settings.callbacks``."""

    def __init__(self):
        super().__init__()
        poll, max_age, self.spill_factor = settings()
        self.states = NodeStates(poll, max_age)
        self._tasks: list[asyncio.Task] = []
        try:  # the proxy imports callbacks inside its async start-up
            self._start(asyncio.get_running_loop())
        except RuntimeError:  # no loop yet: started with the first request
            pass

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if any(task.done() for task in self._tasks):  # one ended (it should not): afresh
            for task in self._tasks:
                task.cancel()
            self._tasks = []
        if not self._tasks:
            self._tasks = [
                loop.create_task(self.states.poll_forever()),
                loop.create_task(self._keep_installed()),
            ]

    def ensure_installed(self) -> None:
        """Install the strategy on the proxy's router, if it exists and lacks it."""
        proxy = sys.modules.get("litellm.proxy.proxy_server")
        router = getattr(proxy, "llm_router", None)
        if router is None:
            return
        current = router.__dict__.get("async_get_available_deployment")
        if isinstance(getattr(current, "__self__", None), LlmuxRoutingStrategy):
            return
        router.set_custom_routing_strategy(
            LlmuxRoutingStrategy(router, self.states, self.spill_factor)
        )
        ours = [d for d in router.model_list if is_llmux(d)]
        self.states.learn(ours)
        _say(f"llmux routing installed for {len(ours)} llmux deployments")
        checked = [
            d["model_name"]
            for d in ours
            if not (d.get("model_info") or {}).get("disable_background_health_check")
        ]
        if getattr(proxy, "use_background_health_checks", False) and checked:
            _say(
                "background health checks send real requests, which wake models on every "
                "llmux node: set model_info.disable_background_health_check: true on the "
                f"llmux deployments of {', '.join(sorted(set(checked)))}",
                logging.WARNING,
            )

    async def _keep_installed(self) -> None:
        while True:  # a router rebuilt from the database drops a custom strategy
            try:
                self.ensure_installed()
            except Exception:  # noqa: BLE001 - tried again in a second, and per request
                log.exception("installing llmux routing failed")
            await asyncio.sleep(1.0)

    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
        self._start(asyncio.get_running_loop())
        self.ensure_installed()
        return data


proxy_handler_instance = LlmuxProxyHandler()
