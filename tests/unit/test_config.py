import json
import textwrap

import pytest

from llmux.config import ConfigError, load_config


def write(tmp_path, text, name="llmux.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


MINIMAL = """
models:
  llama:
    port: 8001
    wake: ./wake.sh
    sleep: ./sleep.sh
    alive: ./alive.sh
"""


def problems(tmp_path, text, name="llmux.yaml", **kw):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text, name), **kw)
    return err.value.problems


def test_defaults(tmp_path):
    c = load_config(write(tmp_path, MINIMAL))
    assert (c.host, c.port, c.api_keys) == ("127.0.0.1", 3000, ())
    p = c.policy
    assert p.request_timeout_secs is None and p.drain_before_switch is True
    assert p.drain_timeout_secs is None and p.min_active_secs == 0
    assert p.max_queue_depth is None and p.failure_backoff_secs == 2
    assert (c.hooks.wake_timeout, c.hooks.sleep_timeout) == (900, 300)
    assert (c.hooks.alive_timeout, c.hooks.ready_timeout, c.hooks.kill_grace) == (10, 900, 5)
    assert (c.proxy.connect_timeout, c.proxy.header_timeout, c.proxy.idle_timeout) == (5, 900, 900)
    assert c.proxy.max_body_bytes == 67108864 and c.proxy.extra_paths == ()
    m = c.models["llama"]
    assert (m.name, m.port, m.wake, dict(m.env)) == ("llama", 8001, "./wake.sh", {})
    assert c.hook_timeout("llama", "wake") == 900
    assert c.base_dir == str(tmp_path)


def test_per_model_timeouts_and_env(tmp_path):
    c = load_config(
        write(
            tmp_path,
            MINIMAL
            + """
    env: {CUDA_VISIBLE_DEVICES: 0, NAME: x}
    timeouts: {wake: 1.5, ready: 20, kill_grace: 1}
hooks: {alive_timeout: 3}
""",
        )
    )
    assert dict(c.models["llama"].env) == {"CUDA_VISIBLE_DEVICES": "0", "NAME": "x"}
    assert c.hook_timeout("llama", "wake") == 1.5
    assert c.hook_timeout("llama", "ready") == 20
    assert c.hook_timeout("llama", "alive") == 3
    assert c.kill_grace("llama") == 1


def test_immutable(tmp_path):
    c = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(AttributeError):
        c.port = 1
    with pytest.raises(TypeError):
        c.models["x"] = None


def test_every_problem_is_reported_with_its_key_path(tmp_path):
    found = problems(
        tmp_path,
        """
        port: 3000
        colour: blue
        models:
          llama:
            port: "80a"
            wake: ""
            sleep: x
            alive: y
            bogus: 1
          "bad name!":
            port: 8002
            wake: a
            sleep: b
            alive: c
          qwen:
            port: 3000
            wake: a
            sleep: b
            alive: c
            env: {A: [1]}
            timeouts: {wake: 0}
          mistral:
            port: 8003
            wake: a
        policy: {request_timeout_secs: -1, drain_before_switch: "yes", extra: 1}
        hooks: {kill_grace: 0}
        proxy: {max_body_bytes: 1.5, extra_paths: ["v1/x"]}
        api_keys: "secret"
        """,
    )
    expected = [
        "colour: unknown key",
        'models.llama.port: expected an integer 1-65535, got "80a"',
        'models.llama.wake: expected a non-empty string, got ""',
        "models.llama.bogus: unknown key",
        "models.bad name!: model names must match",
        "models.qwen.env: A: expected a string or number",
        "models.qwen.timeouts.wake: expected a number of seconds > 0, got 0",
        "models.qwen.port: 3000 is already used by the listen port",
        "models.mistral.sleep: required",
        "models.mistral.alive: required",
        "policy.extra: unknown key",
        "policy.request_timeout_secs: expected a number of seconds > 0, got -1",
        'policy.drain_before_switch: expected true or false, got "yes"',
        "hooks.kill_grace: expected a number of seconds > 0",
        "proxy.max_body_bytes: expected an integer",
        "proxy.extra_paths: expected a path starting with '/'",
        "api_keys: expected a list",
    ]
    for prefix in expected:
        assert any(p.startswith(prefix) for p in found), (prefix, found)
    assert len(found) == len(expected), found


def test_error_message_names_file_and_key(tmp_path):
    path = write(tmp_path, MINIMAL.replace("8001", '"80a"'))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f'{path}: models.llama.port: expected an integer 1-65535, got "80a"'


def test_duplicate_model_ports(tmp_path):
    found = problems(
        tmp_path,
        MINIMAL + "  qwen: {port: 8001, wake: a, sleep: b, alive: c}\n",
    )
    assert found == ["models.qwen.port: 8001 is already used by model llama"]


def test_port_override_is_checked_against_model_ports(tmp_path):
    assert load_config(write(tmp_path, MINIMAL), port=4000).port == 4000
    assert problems(tmp_path, MINIMAL, port=8001) == [
        "models.llama.port: 8001 is already used by the listen port"
    ]


@pytest.mark.parametrize(
    "name", ["Qwen/Qwen3-14B", "llama3.1:8b", "a", "gpt-4o@2024+x", "org/model_v2"]
)
def test_valid_model_names(tmp_path, name):
    load_config(write(tmp_path, MINIMAL.replace("llama:", f'"{name}":')))


@pytest.mark.parametrize("name", ["-x", "a b", "x;rm", "$(id)", "é", "a" * 129, "", "a\nb"])
def test_invalid_model_names(tmp_path, name):
    found = problems(tmp_path, MINIMAL.replace("llama:", f"{json.dumps(name)}:"))
    assert len(found) == 1 and "model names must match" in found[0]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "models: required"),
        ("models: {}", "models: expected a mapping with at least one model"),
        ("[1, 2]", "top level: expected a mapping"),
        ("models: [a]", "models: expected a mapping"),
        ("models: {a: 1}", "models.a: expected a mapping"),
        ("models:\n  a: {port: 1\n", "not valid YAML"),
    ],
)
def test_structural_problems(tmp_path, text, message):
    assert any(message in p for p in problems(tmp_path, text))


def test_extension_and_unreadable(tmp_path):
    assert "unsupported extension '.toml'" in problems(tmp_path, MINIMAL, name="x.toml")[0]
    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path / "missing.yaml"))
    assert "cannot read" in err.value.problems[0]


def test_json_file(tmp_path):
    raw = {"models": {"m": {"port": 9001, "wake": "w", "sleep": "s", "alive": "a"}}, "port": 4}
    c = load_config(write(tmp_path, json.dumps(raw), name="c.json"))
    assert c.models["m"].port == 9001 and c.port == 4
    assert "not valid JSON" in problems(tmp_path, "{", name="bad.json")[0]


RUST_JSON = {
    "models": {
        "qwen-14b": {
            "port": 8001,
            "wake": "curl -sf -X POST http://localhost:8001/wake_up",
            "sleep": "curl -sf -X POST 'http://localhost:8001/sleep?level=1'",
            "alive": "curl -sf http://localhost:8001/health",
        },
        "gemma-12b": {
            "port": 8002,
            "wake": "./scripts/wake-gemma.sh",
            "sleep": "./scripts/sleep-gemma.sh",
            "alive": "./scripts/alive-gemma.sh",
        },
    },
    "policy": {"request_timeout_secs": 60, "drain_before_switch": True, "min_active_secs": 5},
    "port": 3000,
}

RUST_YAML = """
port: 3000
policy:
  policy_type: fifo
  request_timeout_secs: 300
  drain_before_switch: true
  min_active_secs: 0
models:
  llama:
    port: 8001
    wake: |
      docker start llama
      until curl -sf http://localhost:8001/health; do sleep 1; done
    sleep: docker stop llama
    alive: curl -sf http://localhost:8001/health
  mistral:
    port: 8002
    wake: ./hooks/wake-mistral.sh
    sleep: ./hooks/sleep-mistral.sh
    alive: ./hooks/alive-mistral.sh
"""


def test_rust_llmux_configs_load_unchanged(tmp_path):
    c = load_config(write(tmp_path, json.dumps(RUST_JSON), name="config.json"))
    assert sorted(c.models) == ["gemma-12b", "qwen-14b"]
    assert c.policy.request_timeout_secs == 60 and c.policy.min_active_secs == 5
    c = load_config(write(tmp_path, RUST_YAML))
    assert c.models["llama"].wake.startswith("docker start llama\n")
    assert c.policy.request_timeout_secs == 300 and c.policy.policy_type == "fifo"


def test_operations_sections(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMUX_ADMIN_TOKEN", raising=False)
    c = load_config(write(tmp_path, MINIMAL))
    assert c.admin_token() is None and c.idle_sleep_secs("llama") is None
    assert (c.startup.preload, c.startup.adopt, c.shutdown.sleep_active) == (None, False, False)
    c = load_config(
        write(
            tmp_path,
            MINIMAL
            + """
  qwen: {port: 8002, wake: w, sleep: s, alive: a, idle_sleep_secs: 0}
policy: {idle_sleep_secs: 600}
admin: {token: t0k}
startup: {preload: qwen, adopt: true}
shutdown: {sleep_active: true}
""",
        )
    )
    assert c.idle_sleep_secs("llama") == 600 and c.idle_sleep_secs("qwen") is None
    assert c.admin_token() == "t0k"
    assert (c.startup.preload, c.startup.adopt, c.shutdown.sleep_active) == ("qwen", True, True)
    monkeypatch.setenv("LLMUX_ADMIN_TOKEN", "from-env")
    assert load_config(write(tmp_path, MINIMAL)).admin_token() == "from-env"


def test_operations_problems(tmp_path):
    found = problems(
        tmp_path,
        MINIMAL
        + """
policy: {idle_sleep_secs: 0}
admin: {token: ""}
startup: {preload: ghost, adopt: "yes"}
shutdown: {sleep_active: 1}
""",
    )
    assert sorted(found) == [
        'admin.token: expected a non-empty string, got ""',
        "policy.idle_sleep_secs: expected a number of seconds > 0, got 0",
        "shutdown.sleep_active: expected true or false, got 1",
        'startup.adopt: expected true or false, got "yes"',
        'startup.preload: "ghost" is not a configured model',
    ]


def test_scheduling_settings(tmp_path):
    c = load_config(write(tmp_path, MINIMAL))
    assert (c.policy.policy_type, c.policy.max_wait_secs, c.policy.quantum_factor) == (
        "fifo",
        120.0,
        1.0,
    )
    m = c.models["llama"]
    assert (m.weight, m.concurrency, m.wake_estimate_secs) == (1.0, None, None)
    text = (
        MINIMAL
        + """
    weight: 2.5
    concurrency: 16
    wake_estimate_secs: 30
policy: {policy_type: cost_aware, max_wait_secs: 300, quantum_factor: 0}
"""
    )
    c = load_config(write(tmp_path, text.replace("\n    weight", "\n    weight")))
    assert c.policy.policy_type == "cost_aware" and c.policy.max_wait_secs == 300
    assert c.policy.quantum_factor == 0
    m = c.models["llama"]
    assert (m.weight, m.concurrency, m.wake_estimate_secs) == (2.5, 16, 30.0)


def test_scheduling_problems(tmp_path):
    text = (
        MINIMAL
        + """
    weight: 0
    concurrency: 0
    wake_estimate_secs: -1
policy: {policy_type: lru, max_wait_secs: 0, quantum_factor: -1}
"""
    )
    found = problems(tmp_path, text)
    expected = [
        "models.llama.weight: expected a number 0.01-100, got 0",
        "models.llama.concurrency: expected an integer 1-100000, got 0",
        "models.llama.wake_estimate_secs: expected a number of seconds > 0 and <= 86400, got -1",
        'policy.policy_type: expected one of fifo, cost_aware, got "lru"',
        "policy.max_wait_secs: expected a number of seconds > 0 and <= 86400, got 0",
        "policy.quantum_factor: expected a number 0-100, got -1",
    ]
    assert sorted(found) == sorted(expected), found


def test_scheduling_estimates_are_capped_at_a_day(tmp_path):
    text = MINIMAL + "    wake_estimate_secs: 1.0e+12\npolicy: {max_wait_secs: 90000}\n"
    assert sorted(problems(tmp_path, text)) == [
        "models.llama.wake_estimate_secs: expected a number of seconds > 0 and <= 86400, "
        "got 1000000000000.0",
        "policy.max_wait_secs: expected a number of seconds > 0 and <= 86400, got 90000",
    ]
