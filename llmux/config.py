"""Configuration: one YAML or JSON file loaded into immutable dataclasses.

Usage::

    config = load_config("conf/demo.yaml")          # raises ConfigError
    config.models["llama"].port, config.policy.request_timeout_secs

Every setting and its default is declared once, as a dataclass field whose
metadata holds its validator. Validation is strict and complete: unknown keys,
wrong types, bad model names, clashing ports, empty hooks and out-of-range
numbers are all collected and reported together, each as
``FILE: key.path: what is wrong``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .engine import residency

DAY = 86400.0  # the most a scheduling estimate or bound may say: longer is a typo
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
HOOK_KINDS = ("wake", "sleep", "alive")


class ConfigError(Exception):
    """A config that cannot be used; ``problems`` lists every reason, one line each."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


# --- validators: take the raw value, return the converted one or raise ValueError ---


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def integer(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
            return value
        raise ValueError(f"expected an integer {lo}-{hi}, got {_show(value)}")

    return check


def seconds(*, allow_zero: bool = False, most: float | None = None) -> Callable[[Any], float]:
    bound = ">= 0" if allow_zero else "> 0"
    if most is not None:
        bound += f" and <= {most:g}"

    def check(value: Any) -> float:
        if _is_number(value) and (value > 0 or (allow_zero and value == 0)):
            if value != value or value == float("inf"):
                raise ValueError(f"expected a finite number of seconds, got {_show(value)}")
            if most is None or value <= most:
                return float(value)
        raise ValueError(f"expected a number of seconds {bound}, got {_show(value)}")

    return check


def number(lo: float, hi: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if _is_number(value) and lo <= value <= hi:
            return float(value)
        raise ValueError(f"expected a number {lo:g}-{hi:g}, got {_show(value)}")

    return check


def optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def check_optional(value: Any) -> Any:
        return None if value is None else check(value)

    return check_optional


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"expected true or false, got {_show(value)}")


def text(value: Any) -> str:
    if isinstance(value, str) and value.strip():
        return value
    raise ValueError(f"expected a non-empty string, got {_show(value)}")


def one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value in choices:
            return value
        raise ValueError(f"expected one of {', '.join(choices)}, got {_show(value)}")

    return check


def string_list(item: Callable[[Any], str]) -> Callable[[Any], tuple[str, ...]]:
    def check(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {_show(value)}")
        out, wrong = [], []
        for i, v in enumerate(value):
            try:
                out.append(item(v))
            except ValueError as exc:
                wrong.append(f"{exc} (item {i})")
        if wrong:  # every bad item, not only the first
            raise ValueError("; ".join(wrong))
        return tuple(out)

    return check


def model_name(value: Any) -> str:
    if isinstance(value, str) and MODEL_NAME.fullmatch(value):
        return value
    raise ValueError(
        f"model names must match {MODEL_NAME.pattern} "
        f"(letters, digits and ._:/@+- only), got {_show(value)}"
    )


def origin(value: Any) -> str:
    """A browser origin as RFC 6454 serialises it: ``scheme://host[:port]``, lower case,
    without the scheme's default port (browsers never send ``https://a.com:443``)."""
    if isinstance(value, str) and _ORIGIN.fullmatch(value):
        value = value.lower()
        for scheme, port in (("http://", ":80"), ("https://", ":443")):
            if value.startswith(scheme) and value.endswith(port):
                value = value[: -len(port)]
        return value
    raise ValueError(f"expected an origin like https://app.example.com, got {_show(value)}")


_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[A-Za-z0-9._~%!$&'()*+,;=:\[\]-]+")


def url_path(value: Any) -> str:
    if isinstance(value, str) and value.startswith("/") and ".." not in value and "%" not in value:
        return value.rstrip("/") or "/"
    raise ValueError(f"expected a path starting with '/', got {_show(value)}")


def env_map(value: Any) -> Mapping[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of names to strings, got {_show(value)}")
    out = {}
    for key, val in value.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"expected environment variable names, got {_show(key)}")
        if isinstance(val, str):
            out[key] = val
        elif _is_number(val):
            out[key] = str(val)
        else:
            raise ValueError(f"{key}: expected a string or number, got {_show(val)}")
    return MappingProxyType(out)


def size(value: Any) -> int:
    return residency.parse_size(value)


def positive_size(value: Any) -> int:
    bytes_ = residency.parse_size(value)
    if bytes_ <= 0:
        raise ValueError(f"expected a size above 0, got {_show(value)}")
    return bytes_


def setting(default: Any, check: Callable[[Any], Any], *, required: bool = False) -> Any:
    meta = {"check": check, "required": required}
    if isinstance(default, Mapping):  # an empty read-only mapping, built per instance
        return field(default_factory=lambda: MappingProxyType({}), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type) -> Any:
    return field(default_factory=cls, metadata={"section": cls})


# --- the schema: every key, default and rule in one place ---


@dataclass(frozen=True)
class HookDefaults:
    wake_timeout: float = setting(900.0, seconds())
    sleep_timeout: float = setting(300.0, seconds())
    alive_timeout: float = setting(10.0, seconds())
    ready_timeout: float = setting(900.0, seconds())
    kill_grace: float = setting(5.0, seconds())


@dataclass(frozen=True)
class HookTimeouts:
    """Per-model overrides; ``None`` means 'use the ``hooks:`` default'."""

    wake: float | None = setting(None, optional(seconds()))
    sleep: float | None = setting(None, optional(seconds()))
    alive: float | None = setting(None, optional(seconds()))
    ready: float | None = setting(None, optional(seconds()))
    kill_grace: float | None = setting(None, optional(seconds()))


@dataclass(frozen=True)
class ModelConfig:
    name: str = ""
    port: int = setting(None, integer(1, 65535), required=True)
    wake: str = setting(None, text, required=True)
    sleep: str = setting(None, text, required=True)
    alive: str = setting(None, text, required=True)
    env: Mapping[str, str] = setting({}, env_map)
    timeouts: HookTimeouts = section(HookTimeouts)
    # None: the policy's idle_sleep_secs; 0: never put to sleep for idleness
    idle_sleep_secs: float | None = setting(None, optional(seconds(allow_zero=True)))
    # more names clients may use for this model; unique across models and aliases
    aliases: tuple[str, ...] = setting((), string_list(model_name))
    # the `model` the backend receives, when it answers only its own name
    upstream_model: str | None = setting(None, optional(text))
    # None: the top-level stream_loading
    stream_loading: bool | None = setting(None, optional(boolean))
    # cost_aware: how much this model's waiting work counts against others'
    weight: float = setting(1.0, number(0.01, 100))
    # requests the backend serves at once (vLLM --max-num-seqs, llama.cpp --parallel);
    # cost_aware's estimate of how long a queue takes to clear. llmux does not cap at it.
    concurrency: int | None = setting(None, optional(integer(1, 100_000)))
    # what a wake is expected to take until a switch into this model was measured
    wake_estimate_secs: float | None = setting(None, optional(seconds(most=DAY)))
    # residency (with memory.budget): what it holds awake, what it still holds asleep,
    # never put to sleep to make room, models never awake together with it
    memory: int | None = setting(None, optional(size))
    memory_asleep: int = setting(0, size)
    pin: bool = setting(False, boolean)
    exclusive_with: tuple[str, ...] = setting((), string_list(model_name))

    def hook(self, kind: str) -> str:
        return getattr(self, kind)


@dataclass(frozen=True)
class PolicyConfig:
    # `policy_type` is what the Rust llmux calls the policy (llmux.engine.policies)
    policy_type: str = setting("fifo", one_of("fifo", "cost_aware"))
    request_timeout_secs: float | None = setting(None, optional(seconds()))
    drain_before_switch: bool = setting(True, boolean)
    drain_timeout_secs: float | None = setting(None, optional(seconds()))
    min_active_secs: float = setting(0.0, seconds(allow_zero=True))
    max_queue_depth: int | None = setting(None, optional(integer(1, 10**9)))
    failure_backoff_secs: float = setting(2.0, seconds(allow_zero=True))
    # put the awake model to sleep this long after its last response ended
    idle_sleep_secs: float | None = setting(None, optional(seconds()))
    # cost_aware: the starvation bound; raised to twice a measured round-trip switch
    max_wait_secs: float = setting(120.0, seconds(most=DAY))
    # cost_aware: a woken model serves this many times its switch cost before others
    # that wait (not too long) take the GPU
    quantum_factor: float = setting(1.0, number(0, 100))


@dataclass(frozen=True)
class MemoryConfig:
    # what the models may use together; None: one model awake at a time
    budget: int | None = setting(None, optional(positive_size))
    headroom: int = setting(0, size)  # kept free
    # a shell command that prints the device's used memory in MiB (nvidia-smi ...)
    probe: str | None = setting(None, optional(text))
    probe_timeout_secs: float = setting(10.0, seconds())
    # how to choose the models put to sleep to make room: cost-aware, or least recently used
    eviction: str = setting("cost_aware", one_of("cost_aware", "lru"))


@dataclass(frozen=True)
class ProxyConfig:
    connect_timeout: float = setting(5.0, seconds())
    header_timeout: float = setting(900.0, seconds())
    idle_timeout: float = setting(900.0, seconds())
    max_body_bytes: int = setting(64 * 1024 * 1024, integer(1, 2**40))
    body_timeout: float = setting(60.0, seconds())  # the whole request body, or 408
    # the longest one operation on a client socket may block (a write of up to
    # 64 KiB, a read): a client that stalls is cut like one that left
    # (outcome client_stalled)
    client_timeout: float = setting(60.0, seconds())
    extra_paths: tuple[str, ...] = setting((), string_list(url_path))


@dataclass(frozen=True)
class CorsConfig:
    # origins whose browser pages may call llmux; empty: no CORS headers, preflights 403
    allow_origins: tuple[str, ...] = setting((), string_list(origin))
    max_age: int = setting(600, integer(0, 86400))  # seconds a browser may cache a preflight


@dataclass(frozen=True)
class AdminConfig:
    # without a token (here or in $LLMUX_ADMIN_TOKEN) the admin API answers loopback only
    token: str | None = setting(None, optional(text))


@dataclass(frozen=True)
class StartupConfig:
    preload: str | None = setting(None, optional(text))  # wake this model at start
    adopt: bool = setting(False, boolean)  # probe every model's alive hook at start


@dataclass(frozen=True)
class ShutdownConfig:
    sleep_active: bool = setting(False, boolean)  # run the awake model's sleep hook on exit


@dataclass(frozen=True)
class MetricsConfig:
    # also export the vLLM-named series the Gateway API Inference Extension's endpoint
    # picker scrapes (vllm:num_requests_waiting, ..., vllm:lora_requests_info)
    vllm_names: bool = setting(False, boolean)


@dataclass(frozen=True)
class Config:
    path: str = ""
    port: int = setting(3000, integer(1, 65535))
    host: str = setting("127.0.0.1", text)
    # built by _build_models: its keys are names, not settings
    models: Mapping[str, ModelConfig] = setting({}, None)
    policy: PolicyConfig = section(PolicyConfig)
    hooks: HookDefaults = section(HookDefaults)
    proxy: ProxyConfig = section(ProxyConfig)
    api_keys: tuple[str, ...] = setting((), string_list(text))
    cors: CorsConfig = section(CorsConfig)
    # streaming requests that wait for a switch get SSE comments with their progress
    stream_loading: bool = setting(False, boolean)
    admin: AdminConfig = section(AdminConfig)
    # how this llmux names itself to a router (GET /llmux/state); None: host name:port
    node_name: str | None = setting(None, optional(text))
    startup: StartupConfig = section(StartupConfig)
    shutdown: ShutdownConfig = section(ShutdownConfig)
    metrics: MetricsConfig = section(MetricsConfig)
    memory: MemoryConfig = section(MemoryConfig)

    @property
    def base_dir(self) -> str:
        """Hooks run here: the directory of the config file."""
        return os.path.dirname(os.path.abspath(self.path)) if self.path else os.getcwd()

    def hook_timeout(self, model: str, kind: str) -> float:
        override = getattr(self.models[model].timeouts, kind)
        return override if override is not None else getattr(self.hooks, f"{kind}_timeout")

    def kill_grace(self, model: str) -> float:
        override = self.models[model].timeouts.kill_grace
        return override if override is not None else self.hooks.kill_grace

    def idle_sleep_secs(self, model: str) -> float | None:
        """Idle time before ``model`` is put to sleep; None: never."""
        own = self.models[model].idle_sleep_secs
        secs = own if own is not None else self.policy.idle_sleep_secs
        return secs or None

    def warnings(self) -> list[str]:
        """Settings that are valid but work against each other, one line each."""
        p = self.policy
        timeout = p.request_timeout_secs
        if p.policy_type == "cost_aware" and timeout is not None and timeout < p.max_wait_secs:
            return [
                f"request_timeout_secs ({timeout:g}) is below max_wait_secs "
                f"({p.max_wait_secs:g}): waiting requests time out before the bound serves them"
            ]
        return []

    def budget(self) -> residency.Budget:
        """The memory budget the switcher keeps to; one model at a time without one."""
        mem = self.memory
        if mem.budget is None:
            return residency.Budget.one_at_a_time(self.models)
        return residency.Budget(
            mem.budget,
            mem.headroom,
            {
                n: residency.ModelMemory(
                    m.memory or 0, m.memory_asleep, m.pin, frozenset(m.exclusive_with)
                )
                for n, m in self.models.items()
            },
            eviction=mem.eviction,
        )

    def admin_token(self) -> str | None:
        return self.admin.token or os.environ.get("LLMUX_ADMIN_TOKEN") or None

    @functools.cached_property
    def names(self) -> Mapping[str, str]:
        """Every name a request may use (models and aliases) -> the model it names."""
        names = {alias: name for name, m in self.models.items() for alias in m.aliases}
        names.update((name, name) for name in self.models)
        return MappingProxyType(names)

    def resolve(self, name: str) -> str | None:
        """The configured model a requested name (a model's or an alias) stands for."""
        return self.names.get(name)

    def upstream_name(self, model: str) -> str:
        """The ``model`` value ``model``'s backend receives."""
        return self.models[model].upstream_model or model

    def loading_progress(self, model: str) -> bool:
        """Whether ``model``'s waiting streams get progress comments (``stream_loading``)."""
        own = self.models[model].stream_loading
        return self.stream_loading if own is None else own


# --- building ---


def _build(cls: type, raw: Any, where: str, problems: list[str], **fixed: Any) -> Any:
    """Build dataclass ``cls`` from ``raw``; append a problem for every bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{where or 'top level'}: expected a mapping, got {_show(raw)}")
        return cls(**fixed)
    keys = {f.name: f for f in dataclasses.fields(cls) if f.metadata}
    values = dict(fixed)
    for key in raw:
        if key not in keys:
            problems.append(f"{_join(where, key)}: unknown key")
    for name, fld in keys.items():
        path = _join(where, name)
        if name in fixed:
            continue
        if "section" in fld.metadata:
            values[name] = _build(fld.metadata["section"], raw.get(name), path, problems)
            continue
        if name not in raw:
            if fld.metadata["required"]:
                problems.append(f"{path}: required")
            continue
        check = fld.metadata["check"]
        try:
            values[name] = check(raw[name])
        except ValueError as exc:
            problems.append(f"{path}: {exc}")
    try:
        return cls(**values)
    except TypeError:  # a required value was missing; the problem is already recorded
        return None


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _build_models(raw: Any, problems: list[str]) -> dict[str, ModelConfig]:
    if raw is None:
        problems.append("models: required")
        return {}
    if not isinstance(raw, dict) or not raw:
        problems.append(f"models: expected a mapping with at least one model, got {_show(raw)}")
        return {}
    models = {}
    for name, spec in raw.items():
        where = f"models.{name}"
        try:
            model_name(name)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        model = _build(ModelConfig, spec, where, problems, name=name)
        if model is not None:
            models[name] = model
    return models


def parse_config(raw: Any, path: str, *, port: int | None = None) -> Config:
    """Validate already-decoded data; ``port`` overrides the listen port (``--port``)."""
    problems: list[str] = []
    if raw is None:  # an empty file
        raw = {}
    models = _build_models(raw.get("models"), problems) if isinstance(raw, dict) else {}
    config = _build(Config, raw, "", problems, path=path, models=MappingProxyType(models))
    if config is not None and port is not None:
        config = dataclasses.replace(config, port=port)
    if config is not None:
        _check_ports(config, problems)
        _check_names(config, problems)
        _check_memory(config, problems)
        preload = config.startup.preload
        if preload is not None and preload not in config.models:
            problems.append(f"startup.preload: {_show(preload)} is not a configured model")
    if problems:
        raise ConfigError(path, problems)
    return config


def _check_ports(config: Config, problems: list[str]) -> None:
    owners: dict[int, str] = {config.port: "the listen port"}
    for name, model in config.models.items():
        if model.port in owners:
            problems.append(
                f"models.{name}.port: {model.port} is already used by {owners[model.port]}"
            )
        else:
            owners[model.port] = f"model {name}"


def _check_names(config: Config, problems: list[str]) -> None:
    """A name must stand for one model: no alias equals a model's name or another alias."""
    owners = {name: f"the name of model {name}" for name in config.models}
    for name, model in config.models.items():
        for i, alias in enumerate(model.aliases):
            if alias in owners:
                problems.append(
                    f"models.{name}.aliases[{i}]: {_show(alias)} is already {owners[alias]}"
                )
            else:
                owners[alias] = f"an alias of model {name}"


def _check_memory(config: Config, problems: list[str]) -> None:
    """A budget needs every model's size; sizes, pins and exclusions need a budget;
    every model must fit beside the pinned ones (:func:`residency.never_fits`)."""
    budget = config.memory.budget
    models = config.models
    if budget is None and config.memory.probe:
        problems.append("memory.probe: needs memory.budget (it measures models awake together)")
    if budget is None and config.memory.headroom:
        problems.append("memory.headroom: needs memory.budget (it is kept free of it)")
    if budget is None and config.memory.eviction != MemoryConfig.eviction:
        problems.append("memory.eviction: needs memory.budget (one model is awake without it)")
    if budget is not None and config.memory.headroom >= budget:
        problems.append(
            f"memory.headroom: {residency.format_bytes(config.memory.headroom)} leaves nothing "
            f"of the budget ({residency.format_bytes(budget)})"
        )
        return
    for name, m in models.items():
        where = f"models.{name}"
        if budget is None:
            for key in ("memory", "memory_asleep", "pin", "exclusive_with"):
                if getattr(m, key):
                    problems.append(f"{where}.{key}: needs memory.budget (the memory block)")
            continue
        if m.memory is None:
            if not any(p.startswith(f"{where}.memory:") for p in problems):  # not if invalid
                problems.append(f"{where}.memory: required with memory.budget")
        elif m.memory_asleep > m.memory:
            problems.append(
                f"{where}.memory_asleep: more than its memory ({residency.format_bytes(m.memory)})"
            )
        for i, other in enumerate(m.exclusive_with):
            if other not in models or other == name:
                problems.append(
                    f"{where}.exclusive_with[{i}]: {_show(other)} is not another configured model"
                )
    if budget is None or any(m.memory is None for m in models.values()):
        return
    for name, why in residency.never_fits(config.budget()).items():
        key = "exclusive_with" if "exclusive_with" in why else "memory"
        problems.append(f"models.{name}.{key}: it can never be woken: {why}")


def load_config(path: str, *, port: int | None = None) -> Config:
    """Read and validate a YAML (``.yaml``/``.yml``) or JSON (``.json``) file."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".yaml", ".yml", ".json"):
        problem = f"unsupported extension {ext or '(none)'!r}: use .yaml, .yml or .json"
        raise ConfigError(path, [problem])
    try:
        with open(path, encoding="utf-8") as fh:
            content = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [f"cannot read: {exc}"]) from None
    try:
        if ext == ".json":
            raw = json.loads(content)
        else:
            import yaml

            raw = yaml.safe_load(content)
    except Exception as exc:  # yaml.YAMLError or json.JSONDecodeError: say where, once
        raise ConfigError(path, [f"not valid {ext[1:].upper()}: {_oneline(exc)}"]) from None
    return parse_config(raw, path, port=port)


def _oneline(exc: Exception) -> str:
    return " ".join(str(exc).split())
