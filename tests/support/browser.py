"""A headless Chromium driven by Selenium, for tests that click through a page.

Usage::

    with chromium_driver(tmp_path) as driver:
        driver.get(url)

Debian's ``chromium`` and ``chromium-driver`` are used, by path: Selenium
Manager (which would download a driver) is never asked. A missing browser or
driver fails the test with the package to install. On the way out the driver
quits, and the test fails if chromedriver or any browser process it started
is still alive.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import warnings

import psutil
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("this test needs Chromium: apt-get install chromium")


def chromedriver_path() -> str:
    path = shutil.which("chromedriver")
    if path is None:
        pytest.fail("this test needs chromedriver: apt-get install chromium-driver")
    return path


@contextlib.contextmanager
def chromium_driver(directory, width=1200, height=900):
    """A Selenium ``WebDriver`` for a headless Chromium with its profile and logs in
    ``directory``; quit, and its processes checked gone, when the block ends."""
    browser, driver_binary = chromium_path(), chromedriver_path()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests may run as root
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",  # only the page's own traffic, to loopback
        "--disable-component-update",
        f"--user-data-dir={directory / 'chromium-profile'}",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    # the driver is on loopback: never route its commands through a proxy from the
    # environment (webdriver.Chrome takes no ClientConfig, the non-deprecated way)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        options.ignore_local_proxy_environment_variables()
    service = Service(executable_path=driver_binary, log_output=str(directory / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        browser_processes = []
        with contextlib.suppress(psutil.Error):  # every browser process, renderers included
            browser_processes = psutil.Process(service.process.pid).children(recursive=True)
        driver.quit()
        try:
            service.process.wait(10)  # reaped, even when Selenium had to SIGKILL it
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait()
        _, alive = psutil.wait_procs(browser_processes, timeout=10)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        assert not alive, f"browser processes outlived the driver: {alive}"
