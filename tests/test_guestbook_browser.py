"""A real browser signs the guestbook: headless Chromium (the distribution's, driven by
chromedriver through Selenium) loads /guestbook of a real server on a real Redis,
fills in the form, submits it, follows the 303 and sees the new entry, escaped.

Skips with the reason where no browser can run (package missing).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser import headless_chromium, why_no_browser
from tests.private_redis import private_redis
from tests.servers import running_server

if why_no_browser():
    pytest.skip(why_no_browser(), allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser() -> Iterator[Any]:
    with headless_chromium() as driver:
        yield driver


def test_chromium_signs_the_guestbook(browser: Any) -> None:
    with private_redis() as instance, \
            running_server("threaded", "http", "--redis", str(instance.addr)) as srv:
        url = f"http://127.0.0.1:{srv.port}/guestbook"
        browser.get(url)
        assert browser.find_element(By.TAG_NAME, "h1").text == "Guestbook"
        assert browser.find_element(By.ID, "visits").text == "Visits: 1"
        browser.find_element(By.NAME, "name").send_keys("Ada")
        browser.find_element(By.NAME, "message").send_keys("<b>bold?</b> & signed by Chromium")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(browser, 20).until(
            lambda d: "signed by Chromium" in d.find_element(By.ID, "entries").text)
        assert browser.current_url == url  # the 303 was followed back to the page
        entry = browser.find_element(By.CSS_SELECTOR, "#entries li")
        assert entry.text == "Ada: <b>bold?</b> & signed by Chromium"  # shown, not rendered
        assert len(entry.find_elements(By.TAG_NAME, "b")) == 1  # only the name's own <b>
        assert browser.find_element(By.ID, "visits").text == "Visits: 2"
