"""A real browser signs the guestbook: headless Chromium (the distribution's, driven by
chromedriver through Selenium) loads /guestbook of a real server on a real Redis,
fills in the form, submits it, follows the 303 and sees the new entry, escaped.

Skips with the reason where no browser can run (package missing).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.private_redis import private_redis
from tests.servers import running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed")
if not CHROMIUM or not CHROMEDRIVER:
    pytest.skip("no headless browser here: apt-get install chromium chromium-driver "
                "(./zoo setup does)", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[webdriver.Chrome]:
    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium fetch a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--window-size=1000,800"):
        options.add_argument(arg)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses to run as root otherwise
    driver = webdriver.Chrome(options=options,
                              service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_chromium_signs_the_guestbook(browser: webdriver.Chrome) -> None:
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
