"""The vLLM-named series for the Gateway API Inference Extension's endpoint picker, in the
exposition format the picker parses (prometheus text, as scraped)."""

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llmux.telemetry.vllm_names import VllmNames


def exposition(models, max_awake=1) -> str:
    registry = CollectorRegistry()
    registry.register(VllmNames(lambda: models, max_awake=max_awake, clock=lambda: 1234.5))
    return generate_latest(registry).decode()


def test_the_picker_reads_queue_running_usage_and_the_awake_model():
    text = exposition(
        {
            "qwen": {"state": "awake", "in_flight": 3, "queued": 0},
            "llama": {"state": "asleep", "in_flight": 0, "queued": 2},
            "embed": {"state": "waking", "in_flight": 0, "queued": 1},
        }
    )
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [
        "vllm:num_requests_waiting 3.0",
        "vllm:num_requests_running 3.0",
        "vllm:kv_cache_usage_perc 1.0",
        'vllm:lora_requests_info{max_lora="1",running_lora_adapters="qwen",'
        'waiting_lora_adapters="embed,llama"} 1234.5',
    ]
    # and the standard parser reads them back as gauges, labels intact
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["vllm:lora_requests_info"].type == "gauge"
    (sample,) = families["vllm:lora_requests_info"].samples
    assert sample.labels["running_lora_adapters"] == "qwen"


def test_nothing_awake_and_nothing_waiting():
    text = exposition({"qwen": {"state": "asleep", "in_flight": 0, "queued": 0}})
    assert "vllm:kv_cache_usage_perc 0.0" in text
    assert 'running_lora_adapters="",waiting_lora_adapters=""' in text


def test_off_exports_nothing():
    assert "vllm:" not in exposition(None)
