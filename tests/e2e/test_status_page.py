"""The status page in a real headless Chromium, checked against what /llmux/status says."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from html.parser import HTMLParser

import pytest

from tests.support import wait_for

from .test_admin import TOKEN

pytestmark = pytest.mark.e2e

# the badge colours of llmux/status_page.html, by state
STATE_RGB = {
    "awake": (0x1F, 0x9D, 0x55),
    "asleep": (0x8A, 0x94, 0xA6),
    "waking": (0xE0, 0xA1, 0x00),
    "failed": (0xD0, 0x34, 0x2C),
}


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("the status page test needs Chromium: apt-get install chromium")


def run_chromium(tmp_path, url: str, *args: str) -> subprocess.CompletedProcess:
    """One headless run; virtual time lets the page's fetch and render finish first."""
    return subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",  # tests may run as root
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--window-size=1200,900",
            "--virtual-time-budget=5000",
            *args,
            url,
        ],
        capture_output=True,
        timeout=90,
        check=True,
    )


class Rows(HTMLParser):
    """The models table as the page rendered it: model -> state, and all visible text."""

    def __init__(self):
        super().__init__()
        self.states: dict[str, str] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-model" in a:
            self.states[a["data-model"]] = a["data-state"]

    def handle_data(self, data):
        self.text.append(data)


def rendered(tmp_path, url: str) -> Rows:
    dom = run_chromium(tmp_path, url, "--dump-dom").stdout.decode()
    rows = Rows()
    rows.feed(dom)
    return rows


@pytest.fixture
def busy_llmux(llmux_factory):
    """a awake, b failed to wake (with a telling stderr), c asleep."""
    server = llmux_factory(admin={"token": TOKEN})
    assert server.chat("a").status_code == 200
    server.fault("wake", "b", 'echo "CUDA error: out of memory on device 0" >&2; exit 9')
    assert server.chat("b").status_code == 503
    server.fault("wake", "b", None)
    wait_for(lambda: server.status(TOKEN)["switching"] is False)
    return server


def test_the_page_shows_what_the_api_reports(busy_llmux, tmp_path):
    server = busy_llmux
    status = server.status(TOKEN)
    page = rendered(tmp_path, f"{server.url}/llmux/ui#token={TOKEN}")
    assert page.states == {n: m["state"] for n, m in status["models"].items()}
    assert page.states == {"a": "asleep", "b": "failed", "c": "asleep"}
    text = " ".join(page.text)
    assert "CUDA error: out of memory on device 0" in text  # the hook's stderr tail
    assert re.search(r"a\s*→\s*b", text)  # the failed switch in the timeline table
    assert f"v{status['version']}" in text


def test_the_screenshot_shows_the_state_colours_llmux_reports(busy_llmux, tmp_path):
    from PIL import Image

    server = busy_llmux
    assert server.chat("a").status_code == 200  # a awake again, b still failed
    status = server.status(TOKEN)
    reported = {m["state"] for m in status["models"].values()}
    assert reported == {"awake", "asleep", "failed"}
    shot = tmp_path / "status.png"
    run_chromium(tmp_path, f"{server.url}/llmux/ui#token={TOKEN}", f"--screenshot={shot}")
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 900)
    pixels = {rgb: n for n, rgb in image.getcolors(maxcolors=1 << 24)}
    counts = {state: pixels.get(rgb, 0) for state, rgb in STATE_RGB.items()}
    # a badge is a few hundred pixels of solid colour; the legend square is 100
    for state in reported:
        assert counts[state] > 300, counts
    assert counts["waking"] == 0, counts  # no model is waking, so no such badge


def test_without_the_token_the_page_asks_for_it(llmux_factory, tmp_path):
    server = llmux_factory(admin={"token": TOKEN})
    page = rendered(tmp_path, f"{server.url}/llmux/ui")
    assert page.states == {}
    assert "admin token needed" in " ".join(page.text)


def test_the_page_follows_a_switch_as_it_refreshes(llmux_factory, tmp_path):
    server = llmux_factory(model_env={"HOOK_WAKE_SECS": "3"})
    box = {}
    waiting = threading.Thread(target=lambda: box.update(r=server.chat("c")))
    waiting.start()
    wait_for(lambda: server.status()["models"]["c"]["state"] == "waking", timeout=5)
    page = rendered(tmp_path, f"{server.url}/llmux/ui")  # no token needed on loopback
    assert page.states["c"] == "waking"
    assert re.search(r"c\s*waking", " ".join(page.text))
    waiting.join(15)
    assert box["r"].status_code == 200


def test_under_a_memory_budget_the_page_shows_every_awake_model_and_the_memory(
    llmux_factory, tmp_path
):
    from .test_residency import PROBE, gpu_models

    server = llmux_factory(
        gpu_models("24GiB", a=10, b=12, c=6), memory={"budget": "24GiB", "probe": PROBE}
    )
    for model in ("a", "b", "c"):  # c makes room: one of a and b sleeps
        assert server.chat(model).status_code == 200
    status = server.status()
    evicted = status["memory"]["evictions"][0]["model"]
    page = rendered(tmp_path, f"{server.url}/llmux/ui")
    assert page.states == {n: m["state"] for n, m in status["models"].items()}
    text = " ".join(" ".join(page.text).split())
    assert f"awake: {', '.join(status['awake'])}" in text
    used = status["memory"]["used_declared"] / 1024**3
    assert used in (16, 18) and f"{used:.1f} GiB of 24.0 GiB by model sizes" in text
    assert "6.0 GiB" in text and "12.0 GiB" in text  # declared and measured sizes
    assert f"{evicted} c room" in text  # the eviction table: model, for, why
