"""The status page's buttons, clicked in a real headless Chromium (Selenium and
Debian's chromedriver): wake, sleep and reload through the admin API, the
confirmation before cutting into work, the queue, and a failed hook's output.

What the page shows is checked against what ``/llmux/status`` and the hook log
say. Every wait is for an observable state, with a deadline.
"""

from __future__ import annotations

import re
import threading

import pytest
import requests
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tests.support import free_port, wait_for
from tests.support.browser import chromium_driver

from .conftest import assert_one_awake, model_entry
from .test_admin import TOKEN

pytestmark = pytest.mark.e2e

# a stream this slow is in flight for 6 s: long enough to click and confirm twice
SLOW = {"FAKE_ARGS": "--tokens-per-sec 10 --tokens 60"}
# a wake hook that waits until the test lets it go (hooks.wake_timeout bounds it)
HELD = 'while [ ! -e "$dir/release" ]; do sleep 0.02; done'
HOOKS = {"wake_timeout": 30}


@pytest.fixture
def driver(tmp_path):
    with chromium_driver(tmp_path) as driver:
        yield driver


# --- the page, as a person sees it ---


class Page:
    def __init__(self, driver, server, timeout=20.0):
        self.driver, self.server, self.timeout = driver, server, timeout
        driver.get(f"{server.url}/llmux/ui#token={TOKEN}")
        self.until(lambda: driver.execute_script("return document.body.dataset.loaded") == "1")

    def until(self, predicate, timeout=None, message=""):
        """Wait until ``predicate()`` is true, or fail with ``message`` and the log."""
        try:
            return WebDriverWait(self.driver, timeout or self.timeout, 0.05).until(
                lambda _: predicate()
            )
        except TimeoutException:
            pytest.fail(f"{message or 'the page did not get there'}; log: {self.log()}")

    def row(self, model):
        return self.driver.find_element(By.CSS_SELECTOR, f'#models tr[data-model="{model}"]')

    def state(self, model) -> str:
        return self.row(model).get_attribute("data-state")

    def cell(self, model, column: int) -> str:
        return self.row(model).find_elements(By.TAG_NAME, "td")[column].text

    def button(self, model, action):
        if model is None:
            return self.driver.find_element(By.ID, action)
        return self.row(model).find_element(By.CSS_SELECTOR, f'button[data-action="{action}"]')

    def click(self, model, action):
        button = self.button(model, action)
        self.until(button.is_enabled, message=f"the {action} button stayed disabled")
        button.click()

    def confirmation(self):
        """The confirm() dialog the last click opened."""
        try:
            return WebDriverWait(self.driver, 10).until(expected_conditions.alert_is_present())
        except TimeoutException:
            pytest.fail(f"no confirmation was asked; log: {self.log()}")

    def log(self) -> list[dict]:
        """The action results below the table, newest first."""
        return self.driver.execute_script(
            """return [...document.querySelectorAll('#action-log > li')].map((li) => ({
                 action: li.dataset.action, model: li.dataset.model, outcome: li.dataset.outcome,
                 text: li.querySelector('.msg').textContent,
                 details: [...li.querySelectorAll('ul li')].map((d) => d.textContent)}))"""
        )

    def answer(self, action, model="", outcome=None) -> dict:
        """The newest result of ``action`` (on ``model``), once it has one (or ``outcome``)."""

        wanted = (outcome,) if outcome else ("ok", "error")

        def done():
            for entry in self.log():
                if (entry["action"], entry["model"]) == (action, model):
                    return entry if entry["outcome"] in wanted else None
            return None

        return self.until(done, message=f"no {outcome or 'answer'} for {action} {model} shown")

    def queue(self) -> list[list[str]]:
        return self.driver.execute_script(
            """return [...document.querySelectorAll('#queue tbody tr[data-queued-for]')]
                 .map((tr) => [...tr.cells].map((td) => td.textContent))"""
        )


def states(server) -> dict[str, str]:
    return {n: m["state"] for n, m in server.status(TOKEN)["models"].items()}


def seconds(shown: str) -> float:
    """The page's duration text ('250 ms', '1.5 s', '2.1 min') in seconds."""
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?) (ms|s|min)", shown).groups()
    return float(number) * {"ms": 0.001, "s": 1.0, "min": 60.0}[unit]


def stream(server, model):
    """A streamed chat completion, left open; ``Connection: close``, so that no idle
    keep-alive connection holds llmux's graceful shutdown at teardown."""
    return requests.post(
        server.url + "/v1/chat/completions",
        json={"model": model, "stream": True},
        headers={"Connection": "close"},
        stream=True,
        timeout=30,
    )


def in_background(call):
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(r=call()))
    thread.start()
    return thread, box


# --- the tests ---


def test_wake_then_sleep_with_nothing_in_flight_asks_nothing(llmux_factory, driver):
    server = llmux_factory(admin={"token": TOKEN})
    page = Page(driver, server)
    assert page.state("a") == "asleep"
    assert not page.button("a", "sleep").is_enabled()  # asleep already
    # nothing would be cut: no confirmation (an open alert would fail the next step)
    page.click("a", "wake")
    assert page.answer("wake", "a")["text"].startswith("wake a: a is awake (waited ")
    page.until(lambda: page.state("a") == "awake")
    assert states(server) == {"a": "awake", "b": "asleep", "c": "asleep"}
    assert not page.button("a", "wake").is_enabled()
    page.click("a", "sleep")
    assert page.answer("sleep", "a")["text"] == "sleep a: a is asleep"
    page.until(lambda: page.state("a") == "asleep")
    assert states(server)["a"] == "asleep"
    assert server.hook_runs() == [("wake", "a"), ("sleep", "a")]


def test_sleep_with_a_request_in_flight_asks_then_waits_for_it(llmux_factory, driver):
    server = llmux_factory(admin={"token": TOKEN}, model_env=SLOW)
    page = Page(driver, server)
    answer = stream(server, "a")  # its headers are in: admitted, in flight for 6 s
    assert answer.status_code == 200
    question = "a has 1 request in flight; putting it to sleep waits for it, then stops it."

    page.click("a", "sleep")
    alert = page.confirmation()
    assert alert.text == question + "\n\nPut a to sleep?"
    alert.dismiss()
    assert page.answer("sleep", "a", "cancelled")["text"] == "sleep a: not sent (not confirmed)"
    assert server.hook_runs() == [("wake", "a")]

    page.click("a", "sleep")
    alert = page.confirmation()
    assert alert.text.startswith(question)
    alert.accept()
    # the drain waits for the stream: the button stays busy meanwhile
    assert page.button("a", "sleep").get_attribute("aria-busy") == "true"
    assert page.answer("sleep", "a", "pending")
    assert server.hook_runs() == [("wake", "a")]  # the stream still runs: no sleep hook yet
    assert page.answer("sleep", "a")["text"] == "sleep a: a is asleep"
    assert answer.text.rstrip().endswith("data: [DONE]")  # finished, not cut
    page.until(lambda: page.state("a") == "asleep")
    assert states(server)["a"] == "asleep"
    assert page.button("a", "sleep").get_attribute("aria-busy") == "false"
    assert server.hook_runs() == [("wake", "a"), ("sleep", "a")]
    [record] = [r for r in server.log_records() if r.get("event") == "model_put_to_sleep"]
    assert record["reason"] == "admin"


def test_wake_while_another_model_serves_asks_then_switches(llmux_factory, driver):
    server = llmux_factory(admin={"token": TOKEN}, model_env=SLOW)
    page = Page(driver, server)
    answer = stream(server, "a")
    assert answer.status_code == 200
    page.click("b", "wake")
    alert = page.confirmation()
    assert alert.text == (
        "a is awake with 1 request in flight; waking b waits for it, then puts a to sleep "
        "(requests for a then wait until it is woken again).\n\nWake b?"
    )
    alert.accept()
    assert page.answer("wake", "b")["text"].startswith("wake b: b is awake (waited ")
    page.until(lambda: page.state("b") == "awake" and page.state("a") == "asleep")
    assert states(server) == {"a": "asleep", "b": "awake", "c": "asleep"}
    assert answer.text.rstrip().endswith("data: [DONE]")
    assert server.hook_runs() == [("wake", "a"), ("sleep", "a"), ("wake", "b")]
    assert_one_awake(server.events())


def test_reload_shows_the_refusal_then_what_changed(llmux_factory, driver):
    server = llmux_factory(admin={"token": TOKEN})
    page = Page(driver, server)
    port_a = server.port_of("a")
    server.rewrite_config(lambda c: c["models"]["a"].update(port="not-a-port"))
    page.click(None, "reload")
    refused = page.answer("reload", "")
    assert refused["outcome"] == "error"
    assert refused["text"].startswith("reload failed: ")
    assert "is not valid; nothing changed (HTTP 400, invalid_config)" in refused["text"]
    assert refused["details"] and any("models.a.port" in d for d in refused["details"])

    def fixed_and_one_more(config):
        config["models"]["a"]["port"] = port_a
        config["models"]["d"] = model_entry(free_port())

    server.rewrite_config(fixed_and_one_more)
    page.click(None, "reload")
    page.until(lambda: len(page.log()) == 2)  # a second entry, above the first
    reloaded = page.answer("reload", "")
    assert reloaded["outcome"] == "ok", reloaded
    assert reloaded["text"].startswith("config reloaded; added: d")
    page.until(lambda: driver.find_elements(By.CSS_SELECTOR, '#models tr[data-model="d"]'))
    assert page.state("d") == "asleep"
    assert "d" in server.status(TOKEN)["models"]


def test_a_failing_wake_shows_the_hooks_output_as_text(llmux_factory, driver):
    server = llmux_factory(admin={"token": TOKEN})
    page = Page(driver, server)
    hostile = '<img src=x onerror="document.title=42"> boom & <b>bold</b>'  # no single quote
    server.fault("wake", "b", f"echo '{hostile}' >&2; echo 'CUDA error: out of memory' >&2; exit 3")
    page.click("b", "wake")
    failed = page.answer("wake", "b")
    assert failed["outcome"] == "error"
    assert failed["text"].startswith("wake b failed: ")
    assert "(HTTP 503" in failed["text"]
    page.until(lambda: page.state("b") == "failed")
    failure = server.status(TOKEN)["models"]["b"]["last_hook_failure"]
    assert failure["exit_code"] == 3
    output = driver.find_element(By.CSS_SELECTOR, 'tr[data-hook-output-of="b"]')
    page.until(output.is_displayed)
    shown = output.find_element(By.TAG_NAME, "pre").get_attribute("textContent")
    assert shown == failure["stderr_tail"]
    assert hostile in output.text and "CUDA error: out of memory" in output.text
    assert "b: wake hook failed with exit code 3 at" in output.text
    # shown as text: the hook's markup made no element and ran nothing
    assert driver.find_elements(By.CSS_SELECTOR, "#models img, #models b") == []
    assert driver.title == "llmux status"

    # once a wake succeeds, the output is no longer the model's last word
    server.fault("wake", "b", None)
    page.click("b", "wake")
    page.until(lambda: page.state("b") == "awake")
    page.until(lambda: not output.is_displayed(), message="the old hook output stayed shown")
    assert page.cell("b", 8).startswith("wake at ")  # still listed as the last failure


def test_the_queue_shows_positions_waits_and_the_estimate(llmux_factory, driver):
    server = llmux_factory(admin={"token": TOKEN}, hooks=HOOKS)
    server.fault("wake", "b", HELD)
    page = Page(driver, server)
    waiting = []
    for model, queued in (("b", 1), ("b", 2), ("c", 1)):  # one at a time: positions by arrival
        waiting.append(in_background(lambda m=model: server.chat(m)))
        wait_for(lambda m=model, n=queued: server.status(TOKEN)["models"][m]["queued"] == n)
    page.until(lambda: len(page.queue()) == 3)
    rows = page.queue()
    status = server.status(TOKEN)["models"]
    assert [(r[0], r[1]) for r in rows] == [("1", "b"), ("2", "b"), ("3", "c")]
    assert [q["position"] for q in status["b"]["queue"] + status["c"]["queue"]] == [1, 2, 3]
    waited = [seconds(r[2]) for r in rows]
    assert waited == sorted(waited, reverse=True)  # the first in has waited longest
    for row in rows:
        eta = status[row[1]]["estimated_wait_secs"]
        assert row[3] == "unknown" if eta is None else seconds(row[3]) >= 0, (row, eta)
    assert page.cell("b", 4) == "2" and page.cell("c", 4) == "1"
    # sleep of a model with requests queued for it asks first; not confirmed, nothing sent
    page.click("b", "sleep")
    alert = page.confirmation()
    assert alert.text == (
        "b has 2 requests queued for it; putting it to sleep stops it, and they will wake it "
        "again.\n\nPut b to sleep?"
    )
    alert.dismiss()
    assert page.answer("sleep", "b", "cancelled")
    assert states(server)["b"] == "waking" and server.hook_runs() == [("wake", "b")]

    (server.dir / "release").touch()
    for thread, box in waiting:
        thread.join(30)
        assert box["r"].status_code == 200
    page.until(lambda: page.queue() == [])
    assert driver.find_element(By.CSS_SELECTOR, "#queue tbody").text == "no request waits"


def test_a_slow_action_frees_its_button_at_the_deadline_and_shows_the_late_answer(
    llmux_factory, driver
):
    server = llmux_factory(admin={"token": TOKEN}, hooks=HOOKS)
    server.fault("wake", "b", HELD)
    page = Page(driver, server)
    driver.execute_script("LIMITS.actionSecs = 0.5")
    page.click("b", "wake")
    button = page.button("b", "wake")
    assert not button.is_enabled()
    late = page.answer("wake", "b", "late")
    assert late["text"].startswith("wake b: no answer after 0.5 s; llmux goes on with it")
    page.until(button.is_enabled, message="the button stayed busy past its deadline")
    assert button.text == "Wake"
    # the wake goes on: the page gave up waiting, not llmux
    assert states(server)["b"] == "waking"
    assert server.hook_runs() == [("wake", "b")]
    (server.dir / "release").touch()
    assert page.answer("wake", "b")["text"].startswith("wake b: b is awake")
    assert len([e for e in page.log() if e["action"] == "wake"]) == 1  # the same entry, answered
    page.until(lambda: page.state("b") == "awake")
