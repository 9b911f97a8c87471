"""Applying an edited config file to a running llmux, whole or not at all.

Usage::

    reloader = Reloader(gateway)
    summary = reloader.reload()     # raises InvalidConfig (nothing changed) or Busy

The new file is validated first, and refused if it would change the port of a
model that is not asleep (its backend listens on the old one). Then, in one
step each: hooks and timeouts for the next hook run, the proxy settings and API
keys for the next request, the models known to the switcher. Added models
start asleep. A removed model stops taking requests at once (404), its queued
requests get 404, and, if it is awake, it is drained and put to sleep in the
background with its old hooks. The listen address and the ``startup`` section
only apply at the next start; the summary says so.
"""

from __future__ import annotations

import logging
import threading

from ..config import Config, ConfigError, load_config
from ..engine.policies import make_policy
from ..engine.states import ModelState
from ..engine.switcher import SwitchSettings
from ..errors import Busy, InvalidConfig, LlmuxError

log = logging.getLogger("llmux.reload")

RESTART_ONLY = ("host", "port", "startup")
# top-level settings besides models that a reload applies at once
LIVE_SETTINGS = (
    "policy", "hooks", "proxy", "api_keys", "cors", "stream_loading", "admin", "shutdown",
    "node_name", "metrics", "memory",
)  # fmt: skip


class Reloader:
    def __init__(self, gateway):
        self.gateway = gateway
        self._running = threading.Lock()

    def reload(self) -> dict:
        if not self._running.acquire(blocking=False):
            raise Busy("a reload is already running", retry_after=1)
        try:
            return self._reload()
        finally:
            self._running.release()

    def _reload(self) -> dict:
        gw = self.gateway
        old = gw.config
        try:
            new = load_config(old.path, port=gw.port_override)
        except ConfigError as exc:
            raise InvalidConfig(f"{old.path} is not valid; nothing changed", exc.problems) from None

        def check(states: dict[str, str]) -> None:
            problems = changes_of_live_models(old, new, states)
            if problems:
                raise InvalidConfig(f"{old.path} cannot be applied now; nothing changed", problems)

        def apply() -> None:
            gw.hooks.update(new)
            gw.metrics.add_models(sorted(set(new.models) - set(old.models)))
            gw.upstream.settings = new.proxy
            gw.config = new

        # checked and applied in one critical section: no model wakes in between
        still_awake = gw.switcher.reconfigure(
            {name: new.idle_sleep_secs(name) for name in new.models},
            SwitchSettings.from_policy(new.policy),
            policy=make_policy(new.policy, new.models),
            budget=new.budget(),
            check=check,
            apply=apply,
        )
        for name in still_awake:
            threading.Thread(
                target=self._retire, args=(name,), name="llmux-retire", daemon=True
            ).start()
        summary = {
            "config": new.path,
            "added": sorted(set(new.models) - set(old.models)),
            "removed": sorted(set(old.models) - set(new.models)),
            "changed": sorted(
                n for n in set(new.models) & set(old.models) if new.models[n] != old.models[n]
            ),
            "settings_changed": [k for k in LIVE_SETTINGS if getattr(new, k) != getattr(old, k)],
            "going_to_sleep": still_awake,
            "needs_restart": [k for k in RESTART_ONLY if getattr(new, k) != getattr(old, k)],
        }
        log.info("config reloaded", extra={"event": "config_reloaded", **summary})
        for warning in new.warnings():
            log.warning("config: %s", warning, extra={"event": "config_warning"})
        return summary

    def _retire(self, model: str) -> None:
        try:
            self.gateway.switcher.sleep(model, reason="reload", timeout=24 * 3600.0)
        except LlmuxError as exc:
            log.warning(
                "removed model %s was not put to sleep: %s",
                model,
                exc.message,
                extra={"event": "retire_failed", "model": model},
            )


def changes_of_live_models(old: Config, new: Config, states: dict[str, str]) -> list[str]:
    problems = []
    for name, spec in new.models.items():
        before = old.models.get(name)
        state = states.get(name, ModelState.ASLEEP)
        if before is None or state == ModelState.ASLEEP:
            continue
        # what its backend was started with: it listens there, and answers to that name
        for key in ("port", "upstream_model"):
            was, now = getattr(before, key), getattr(spec, key)
            if was != now:
                problems.append(
                    f"models.{name}.{key}: cannot change from {was} to {now} while "
                    f"{name} is {state}; put it to sleep first"
                )
    return problems
