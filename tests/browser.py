"""Headless Chromium for the tests that need a real browser (the guestbook's form, the
benchmark's index.html): the distribution's chromium driven by chromedriver through
Selenium, never a downloaded driver. :func:`why_no_browser` says why none can run."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from collections.abc import Iterator
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def why_no_browser() -> str:
    """The reason no headless browser can run here; "" when one can."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium not installed"
    if not CHROMIUM or not CHROMEDRIVER:
        return ("no headless browser here: apt-get install chromium chromium-driver "
                "(./zoo setup does)")
    return ""


@contextlib.contextmanager
def headless_chromium() -> Iterator[Any]:
    """A headless Chromium WebDriver, quit on exit."""
    from selenium import webdriver

    saved = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium fetch a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--window-size=1000,800"):
        options.add_argument(arg)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses to run as root otherwise
    try:
        driver = webdriver.Chrome(options=options,
                                  service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
        driver.set_page_load_timeout(30)
        try:
            yield driver
        finally:
            driver.quit()
    finally:
        if saved is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = saved
