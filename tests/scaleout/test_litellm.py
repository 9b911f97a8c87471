"""Two llmux nodes behind the real LiteLLM proxy with llmux's routing strategy
(``llmux.integrations.litellm``); the official ``openai`` client talks to LiteLLM only.

LiteLLM runs in a virtualenv of its own, as a deployment would (``litellm[proxy]`` pins
its own gunicorn and runs on asyncio): ``$LLMUX_LITELLM_VENV``, else
``~/.cache/llmux-litellm/<minor version>``, made on first use with ``pip install
"llmux-proxy[litellm]"`` from this checkout, then refreshed with this checkout's llmux.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import openai
import pytest
import requests
import yaml

from tests.support import free_port, wait_for

pytestmark = pytest.mark.scaleout

ROOT = Path(__file__).resolve().parents[2]
LITELLM_RANGE = "1.108"  # setup.cfg's litellm extra: >=1.108.7,<1.109
KEY = "node-key-1"  # the nodes' api_keys, the router's credential
MASTER = "sk-llmux-test-master-key-0123456789abcdef"


@pytest.fixture(scope="session")
def litellm_venv() -> Path:
    default = Path.home() / ".cache" / "llmux-litellm" / LITELLM_RANGE
    venv = Path(os.environ.get("LLMUX_LITELLM_VENV", default))
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    if not (venv / "bin" / "litellm").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run([*pip, f"{ROOT}[litellm]"], check=True, timeout=1800)
    else:  # this checkout's llmux, its dependencies already there
        subprocess.run([*pip, "--no-deps", "--force-reinstall", str(ROOT)], check=True, timeout=600)
    return venv


class LiteLLM:
    """A LiteLLM proxy on loopback routing ``models`` over ``nodes`` with llmux's strategy."""

    def __init__(self, venv: Path, directory: Path, nodes, models):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "model_list": [
                {
                    "model_name": model,
                    "litellm_params": {
                        "model": f"openai/{model}",
                        "api_base": node.url + "/v1",
                        "api_key": KEY,
                    },
                    "model_info": {"llmux": True},
                }
                for node in nodes
                for model in models
            ]
            + [  # a group that is not llmux's: LiteLLM's own selection, never polled
                {
                    "model_name": "direct",
                    "litellm_params": {
                        "model": "openai/a",
                        "api_base": nodes[-1].url + "/v1",
                        "api_key": KEY,
                    },
                }
            ],
            "litellm_settings": {
                "telemetry": False,
                "callbacks": ["llmux.integrations.litellm.proxy_handler_instance"],
            },
            "router_settings": {"num_retries": 1},
        }
        directory.mkdir()
        path = directory / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        env = dict(
            os.environ,
            LITELLM_MASTER_KEY=MASTER,
            LITELLM_LOCAL_MODEL_COST_MAP="True",  # no download at start
            LITELLM_LOG="ERROR",
            NO_PROXY="*",
            LLMUX_LITELLM_POLL_SECS="0.2",
            LLMUX_LITELLM_MAX_AGE_SECS="1.5",
        )
        self.log = directory / "litellm.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(venv / "bin" / "litellm"), "--config", str(path), "--host", "127.0.0.1",
                 "--port", str(self.port), "--num_workers", "1"],
                stdout=log, stderr=log, env=env, cwd=directory,
            )  # fmt: skip
        wait_for(self.ready, 240, every=0.2)
        self.client = openai.OpenAI(base_url=self.url, api_key=MASTER, max_retries=0)

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            return requests.get(self.url + "/health/liveliness", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def chat(self, model: str) -> str:
        answer = self.client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], timeout=60
        )
        return answer.choices[0].message.content

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def litellm(litellm_venv, tmp_path):
    started: list[LiteLLM] = []

    def start(nodes, models) -> LiteLLM:
        proxy = LiteLLM(litellm_venv, tmp_path / f"litellm{len(started)}", nodes, models)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def node(llmux_factory):
    return llmux_factory(models=("a", "b", "c"), api_keys=[KEY])


def served(server, model: str) -> int:
    """How many requests for ``model`` this node answered."""
    return sum(
        r.get("event") == "request_finished" and r.get("model") == model
        for r in server.log_records()
    )


def polled_by(server, proxy: LiteLLM) -> bool:
    """Whether ``proxy``'s poller has read this node's state (its access log says so)."""
    agent = f"llmux-litellm (pid {proxy.proc.pid})"
    return any(
        "/llmux/state" in r.get("message", "") and agent in r.get("message", "")
        for r in server.log_records()
    )


def state(server, model: str) -> str:
    return server.status()["models"][model]["state"]


def test_requests_go_where_their_model_is_awake_and_a_cold_model_wakes_on_one_node(
    llmux_factory, litellm
):
    node_a, node_b = node(llmux_factory), node(llmux_factory)
    warm = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "b", "messages": [{"role": "user", "content": "hi"}]}
    assert node_b.post(body=body, headers=warm).status_code == 200  # b awake on B only
    proxies = [litellm([node_a, node_b], "abc") for _ in range(2)]
    for proxy in proxies:  # each has read both nodes' state
        wait_for(lambda p=proxy: polled_by(node_a, p) and polled_by(node_b, p), 30)

    # b is awake on B: every request for it, from either router, goes to B
    for proxy in proxies:
        for _ in range(3):
            assert proxy.chat("b")
    assert served(node_b, "b") == 1 + 6 and served(node_a, "b") == 0
    assert state(node_a, "b") == "asleep" and ("wake", "b") not in node_a.hook_runs()

    # streaming through both layers
    stream = proxies[0].client.chat.completions.create(
        model="b", messages=[{"role": "user", "content": "hi"}], stream=True, timeout=60
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 1 and "".join(pieces)
    assert served(node_b, "b") == 8 and served(node_a, "b") == 0

    # c is asleep everywhere: both routers at once wake it on the same node, its home
    answers: list[str] = []
    threads = [
        threading.Thread(target=lambda p=p: answers.append(p.chat("c")), daemon=True)
        for p in proxies
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(answers) == 2
    woke = [n for n in (node_a, node_b) if ("wake", "c") in n.hook_runs()]
    assert len(woke) == 1, [n.hook_runs() for n in (node_a, node_b)]
    assert served(woke[0], "c") == 2


def test_a_dead_node_is_routed_around(llmux_factory, litellm):
    node_a, node_b = node(llmux_factory), node(llmux_factory)
    warm = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "a", "messages": [{"role": "user", "content": "hi"}]}
    assert node_a.post(body=body, headers=warm).status_code == 200  # a awake on A
    proxy = litellm([node_a, node_b], "abc")
    wait_for(lambda: polled_by(node_a, proxy) and polled_by(node_b, proxy), 30)
    assert proxy.chat("a")
    assert served(node_a, "a") == 2 and served(node_b, "a") == 0
    assert proxy.chat("direct")  # the group LiteLLM routes itself: to node B, waking a there
    assert served(node_b, "a") == 1
    assert node_a.terminate() == 0  # node A goes away
    # its state goes stale within LLMUX_LITELLM_MAX_AGE_SECS: a goes to B instead
    for _ in range(3):
        assert proxy.chat("a")
    assert served(node_b, "a") == 1 + 3
    assert state(node_b, "a") == "awake"


STRATEGY_CHECKS = r"""
import json, os
from llmux.integrations import litellm as lx

out = {}
for env in ({"LLMUX_LITELLM_POLL_SECS": "inf"}, {"LLMUX_LITELLM_MAX_AGE_SECS": "abc"},
            {"LLMUX_LITELLM_SPILL_FACTOR": "-1"},
            {"LLMUX_LITELLM_POLL_SECS": "5", "LLMUX_LITELLM_MAX_AGE_SECS": "5"}):
    os.environ.update(env)
    try:
        lx.settings()
        out[json.dumps(env)] = "accepted"
    except ValueError as exc:
        out[json.dumps(env)] = str(exc)
    for name in env:
        del os.environ[name]
out["defaults"] = lx.settings()

now = [100.0]
states = lx.NodeStates(1.0, 5.0, clock=lambda: now[0])
body = {"node": "a", "models": {"qwen": {"state": "awake", "in_flight": 1, "queued": 0,
        "estimated_wait_secs": 0.0}}, "aliases": {"gpt-4o-mini": "qwen"}}
states._latest["http://a"] = (now[0], body)
out["by_alias"] = states.entry("http://a", "gpt-4o-mini")[1]
states.sent("http://a", "gpt-4o-mini")
states.sent("http://a", "qwen")
out["after_two_sent"] = states.entry("http://a", "qwen")[1]["in_flight"]
now[0] += 6.0
out["stale"] = states.entry("http://a", "qwen")
print(json.dumps(out))
"""


def test_the_strategy_refuses_bad_settings_by_name_and_knows_aliases(litellm_venv):
    """Run in LiteLLM's virtualenv: settings that would switch routing off are refused,
    naming the variable; a deployment may name a model by a node's alias; requests sent
    since a node's last answer count as in flight there."""
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", NO_PROXY="*")
    for name in list(env):
        if name.startswith("LLMUX_LITELLM_"):
            del env[name]
    done = subprocess.run(
        [str(litellm_venv / "bin" / "python"), "-c", STRATEGY_CHECKS],
        capture_output=True, text=True, timeout=120, env=env, cwd=litellm_venv,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    assert (
        "LLMUX_LITELLM_POLL_SECS must be a number of seconds above 0, got 'inf'"
        in out['{"LLMUX_LITELLM_POLL_SECS": "inf"}']
    )
    assert "LLMUX_LITELLM_MAX_AGE_SECS" in out['{"LLMUX_LITELLM_MAX_AGE_SECS": "abc"}']
    assert "LLMUX_LITELLM_SPILL_FACTOR" in out['{"LLMUX_LITELLM_SPILL_FACTOR": "-1"}']
    both = '{"LLMUX_LITELLM_POLL_SECS": "5", "LLMUX_LITELLM_MAX_AGE_SECS": "5"}'
    assert "must be below LLMUX_LITELLM_MAX_AGE_SECS" in out[both]
    assert out["defaults"] == [1.0, 5.0, 2.0]
    assert out["by_alias"]["state"] == "awake"
    assert out["after_two_sent"] == 3
    assert out["stale"] == [None, None]
