"""Live config reload under traffic: added, removed, changed models, and invalid files."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import requests

from tests.support import process_alive, wait_for

from .conftest import assert_one_awake
from .test_admin import Traffic, records, states

pytestmark = pytest.mark.e2e


def reload(server) -> requests.Response:
    return server.admin("POST", "/reload")


def test_added_removed_and_changed_models_under_traffic(llmux_factory):
    server = llmux_factory(model_env={"FAKE_ARGS": "--tokens-per-sec 200 --tokens 5"})
    traffic = Traffic(server, "a")
    wait_for(lambda: len(traffic.statuses) >= 3)
    new_port = server.port_of("c") + 1000

    def change(config):
        config["models"]["d"] = dict(config["models"]["c"], port=new_port)
        del config["models"]["c"]
        config["models"]["a"]["timeouts"] = {"sleep": 7}  # a changed hook timeout
        config["models"]["a"]["env"]["HOOK_SLEEP_SECS"] = "0.2"

    server.rewrite_config(change)
    r = reload(server)
    assert r.status_code == 200, r.text
    summary = r.json()
    assert summary["added"] == ["d"] and summary["removed"] == ["c"]
    assert summary["changed"] == ["a"] and summary["going_to_sleep"] == []
    assert summary["needs_restart"] == []
    # the new model serves at once; the removed one is gone for clients
    r = server.chat("d")
    assert r.status_code == 200 and r.json()["x_served_by"] == "d"
    r = server.chat("c")
    assert r.status_code == 404 and "removed" not in r.json()["error"]["message"]
    models = requests.get(server.url + "/v1/models", timeout=5).json()["data"]
    assert sorted(m["id"] for m in models) == ["a", "b", "d"]
    statuses = traffic.stop()
    assert set(statuses) == {200}, statuses  # no request for a was lost
    # a's changed env applied to its next sleep hook: the switch to d took its 0.2 s
    sleeps = [e for e in server.events() if e[2] == "sleep" and e[3] == "a"]
    assert len(sleeps) >= 2 and sleeps[1][0] - sleeps[0][0] >= 0.2
    assert_one_awake(server.events())
    [rec] = records(server, "config_reloaded")
    assert rec["added"] == ["d"]


def test_a_removed_awake_model_is_drained_then_put_to_sleep(llmux_factory):
    server = llmux_factory(model_env={"FAKE_ARGS": "--tokens-per-sec 10 --tokens 10"})
    stream = server.stream("b")
    assert stream.status_code == 200
    [backend] = server.backend_pids()
    server.rewrite_config(lambda c: c["models"].pop("b"))
    r = reload(server)
    assert r.status_code == 200 and r.json()["going_to_sleep"] == ["b"]
    assert server.chat("b").status_code == 404  # no new request, while it drains
    assert stream.text.rstrip().endswith("[DONE]")  # the one in flight finished
    wait_for(lambda: "b" not in states(server), timeout=10)
    assert not process_alive(backend)
    assert server.hook_runs() == [("wake", "b"), ("sleep", "b")]
    [rec] = records(server, "model_put_to_sleep")
    assert rec["reason"] == "reload"
    assert server.chat("a").status_code == 200


def test_queued_requests_of_a_removed_model_get_404(llmux_factory):
    server = llmux_factory(model_env={"FAKE_ARGS": "--tokens-per-sec 10 --tokens 10"})
    stream = server.stream("a")  # holds a awake, so a request for c must queue
    box = {}
    waiting = threading.Thread(target=lambda: box.update(r=server.chat("c")))
    waiting.start()
    wait_for(lambda: server.status()["models"]["c"]["queued"] == 1)
    server.rewrite_config(lambda c: c["models"].pop("c"))
    assert reload(server).status_code == 200
    waiting.join(10)
    assert box["r"].status_code == 404
    assert "removed from the config by a reload" in box["r"].json()["error"]["message"]
    assert stream.text.rstrip().endswith("[DONE]")
    assert ("wake", "c") not in server.hook_runs()


def test_an_invalid_file_changes_nothing_and_says_why(llmux_factory):
    server = llmux_factory()
    assert server.chat("a").status_code == 200
    good = server.config_path.read_text()
    server.config_path.write_text(good + "bogus: 1\npolicy: {request_timeout_secs: -1}\n")
    r = reload(server)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "invalid_config" and "nothing changed" in error["message"]
    assert any("bogus: unknown key" in p for p in error["problems"])
    server.config_path.write_text("models: [")
    r = reload(server)
    assert r.status_code == 400 and "not valid YAML" in r.json()["error"]["problems"][0]
    assert states(server) == {"a": "awake", "b": "asleep", "c": "asleep"}
    assert server.chat("b").status_code == 200


def test_a_port_change_of_an_awake_model_is_refused(llmux_factory):
    server = llmux_factory()
    assert server.chat("a").status_code == 200
    server.rewrite_config(lambda c: c["models"]["a"].update(port=c["models"]["a"]["port"] + 1000))
    r = reload(server)
    assert r.status_code == 400
    [problem] = r.json()["error"]["problems"]
    assert "models.a.port: cannot change" in problem and "put it to sleep first" in problem
    assert server.chat("a").status_code == 200  # still served on the old port
    assert server.admin("POST", "/models/a/sleep").json()["state"] == "asleep"
    assert reload(server).status_code == 200  # asleep now: the new port is taken
    r = server.chat("a")
    assert r.status_code == 200 and r.json()["x_served_by"] == "a"


def test_llmux_reload_command_and_restart_only_keys(llmux_factory):
    server = llmux_factory()
    server.rewrite_config(lambda c: c.update(host="127.0.0.2"))
    result = subprocess.run(
        [sys.executable, "-m", "llmux", "reload", "--url", server.url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "needs a restart to apply: host" in result.stdout
    server.config_path.write_text("port: x\n")
    result = subprocess.run(
        [sys.executable, "-m", "llmux", "reload", "--url", server.url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "invalid_config" in result.stderr and "port: expected an integer" in result.stderr


def test_a_reload_while_switching_is_safe(llmux_factory):
    server = llmux_factory(model_env={"HOOK_WAKE_SECS": "0.5"})
    box = {}
    t = threading.Thread(target=lambda: box.update(r=server.chat("b")))
    t.start()
    wait_for(lambda: states(server)["b"] == "waking")
    server.rewrite_config(lambda c: c["models"]["b"].update(idle_sleep_secs=30))
    assert reload(server).status_code == 200
    t.join(10)
    assert box["r"].status_code == 200
    assert server.status()["models"]["b"]["idle_sleep_secs"] == 30


def test_upstream_model_of_an_awake_model_cannot_change(llmux_factory):
    server = llmux_factory()
    assert server.chat("a").status_code == 200
    server.rewrite_config(lambda c: c["models"]["a"].update(upstream_model="Org/A"))
    r = server.admin("POST", "/reload")
    assert r.status_code == 400, r.text
    assert any("models.a.upstream_model" in p for p in r.json()["error"]["problems"])
    server.rewrite_config(lambda c: c["models"]["b"].update(upstream_model="Org/B"))
    server.rewrite_config(lambda c: c["models"]["a"].pop("upstream_model"))
    assert server.admin("POST", "/reload").status_code == 200  # b is asleep: fine
    assert server.chat("b").json()["x_served_by"] == "b"
    assert [h["model"] for h in server.backend_hits("b")] == ["Org/B"]


def test_a_reload_that_changes_only_settings_says_which(llmux_factory):
    server = llmux_factory()

    def change(config):
        config["policy"]["max_queue_depth"] = 1
        config["cors"] = {"allow_origins": ["https://x.example"]}

    server.rewrite_config(change)
    r = server.admin("POST", "/reload")
    assert r.status_code == 200, r.text
    summary = r.json()
    assert summary["settings_changed"] == ["policy", "cors"]
    assert summary["added"] == summary["removed"] == summary["changed"] == []
    out = subprocess.run(
        [sys.executable, "-m", "llmux", "reload", "-c", str(server.config_path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0 and "no change" in out.stdout, out.stdout + out.stderr
