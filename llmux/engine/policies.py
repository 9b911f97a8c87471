"""The policies ``policy.policy_type`` may name, built from a config.

Usage::

    policy = make_policy(config.policy, config.models)   # KeyError: unknown policy_type
"""

from __future__ import annotations

from collections.abc import Mapping

from .cost_aware import CostAwarePolicy, make_cost_aware, wake_estimates
from .policy import FifoPolicy, Policy

POLICIES = (FifoPolicy.name, CostAwarePolicy.name)


def make_policy(settings, models: Mapping) -> Policy:
    """The policy ``settings.policy_type`` names (``fifo`` or ``cost_aware``), with the
    per-model settings of ``models`` (name -> model config: ``weight``,
    ``concurrency``, ``wake_estimate_secs``). KeyError for an unknown name; the
    config's validator allows only :data:`POLICIES`."""
    if settings.policy_type == FifoPolicy.name:
        return FifoPolicy(wake_estimates=wake_estimates(models))
    if settings.policy_type == CostAwarePolicy.name:
        return make_cost_aware(settings, models)
    raise KeyError(settings.policy_type)
