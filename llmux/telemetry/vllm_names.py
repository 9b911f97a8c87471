"""The vLLM-named series that the Gateway API Inference Extension's endpoint picker scrapes,
so that it routes a request to the node where its model is awake (``metrics.vllm_names``).

Usage::

    registry.register(VllmNames(switcher.models_state, max_awake=1, clock=time.time))

The protocol is the extension's model server protocol
(``docs/proposals/003-model-server-protocol`` in kubernetes-sigs/gateway-api-inference-extension):
the picker reads queue depth, running requests and cache usage to weigh a pod, and
LoRA affinity from ``vllm:lora_requests_info``, a gauge whose value is its last update
time (the picker keeps the newest sample) and whose labels list the adapters loaded
(``running_lora_adapters``), queued for (``waiting_lora_adapters``) and the most that
fit at once (``max_lora``). llmux's models play the adapters: a request for a model
awake here scores as a loaded adapter. The series are computed at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class VllmNames(Collector):
    """``models_state()`` is :meth:`Switcher.models_state` (model -> state, in_flight,
    queued, ...), or None to export nothing (the setting is off); ``max_awake`` how many
    models may be awake at once (1 today); ``clock`` Unix seconds."""

    def __init__(self, models_state: Callable[[], dict], max_awake: int, clock: Callable):
        self.models_state = models_state
        self.max_awake = max_awake
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        models = self.models_state()
        if models is None:
            return
        awake = sorted(m for m, s in models.items() if s["state"] == "awake")
        waiting = sorted(m for m, s in models.items() if s["queued"] > 0)
        yield GaugeMetricFamily(
            "vllm:num_requests_waiting",
            "Requests queued for any model (llmux_request_queue_depth, summed)",
            value=sum(s["queued"] for s in models.values()),
        )
        yield GaugeMetricFamily(
            "vllm:num_requests_running",
            "Requests being served by any model (llmux_model_in_flight, summed)",
            value=sum(s["in_flight"] for s in models.values()),
        )
        yield GaugeMetricFamily(
            "vllm:kv_cache_usage_perc",
            "Share of the models that may be awake at once that are awake, 0-1",
            value=min(len(awake) / self.max_awake, 1.0),
        )
        info = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "Models awake (running_lora_adapters) and with queued requests "
            "(waiting_lora_adapters); the value is when this was read, Unix seconds",
            labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
        )
        info.add_metric([str(self.max_awake), ",".join(awake), ",".join(waiting)], self.clock())
        yield info
