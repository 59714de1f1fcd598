"""The live page in Debian's chromium (headless, Selenium with chromium-driver).

Opens GET /, sees a curl request appear live, filters it, opens its body,
and pauses/resumes. Skips when chromium or chromedriver is not installed
(make deps installs both)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .capture import Ecapture, capture
from .targets import Server, free_port

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 20


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("needs Debian's chromium and chromium-driver (make deps installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager download anything
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                              options=options)
    try:
        yield driver
    finally:
        driver.quit()


def curl(server: Server, path: str) -> None:
    subprocess.run([shutil.which("curl") or "curl", "-sk", "-o", "/dev/null",
                    server.url(path)], check=True, timeout=20)


def test_the_live_page_shows_filters_and_opens_a_curl_request(
    ecapture: Ecapture, nginx: Server, tmp_path: Path, browser: object,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    driver = browser
    wait = WebDriverWait(driver, WAIT_S)
    port = free_port()

    def row_of(path: str) -> WebElement | None:
        for row in driver.find_elements(By.CSS_SELECTOR, "#rows tr.http"):
            cells = row.find_elements(By.TAG_NAME, "td")
            if len(cells) > 5 and cells[5].get_attribute("textContent") == path \
                    and "curl" in (cells[1].get_attribute("textContent") or ""):
                return row
        return None

    with capture(ecapture, tmp_path, "--listen", str(port)) as running:
        deadline = time.monotonic() + WAIT_S
        while True:  # the API starts right after the ready line
            try:
                driver.get(f"http://127.0.0.1:{port}/")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        wait.until(lambda d: d.find_element(By.ID, "status").text == "live")

        curl(nginx, "/echo/page-first")
        curl(nginx, "/echo/page-second")
        first = wait.until(lambda d: row_of("/echo/page-first"))
        second = wait.until(lambda d: row_of("/echo/page-second"))
        cells = [cell.text for cell in first.find_elements(By.TAG_NAME, "td")]
        assert cells[2:5] == ["http", "GET", f"127.0.0.1:{nginx.port}"]
        assert cells[6] == "200"

        # The filter box hides the rows that do not match.
        box = driver.find_element(By.ID, "filter")
        box.send_keys("page-first")
        wait.until(lambda d: not second.is_displayed())
        assert first.is_displayed()

        # A click opens its headers and decoded body.
        first.click()
        body = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#detail pre.response-body"))
        assert body.text == "echo:/echo/page-first"
        headers = driver.find_element(By.CSS_SELECTOR, "#detail pre.request-headers").text
        assert "user-agent: curl/" in headers.lower()

        # Paused: a new request is held, not shown; resumed: it appears.
        box.clear()
        driver.find_element(By.ID, "pause").click()
        curl(nginx, "/echo/page-paused")
        # Written to the file by the same flush that hands it to the page's socket.
        wait.until(lambda d: b'"path":"/echo/page-paused"' in running.events_path.read_bytes())
        wait.until(lambda d: re.search(r"\b[1-9]\d* held", d.find_element(By.ID, "counts").text))
        time.sleep(0.5)  # the socket's delivery is asynchronous to the file's
        assert row_of("/echo/page-paused") is None
        driver.find_element(By.ID, "pause").click()
        wait.until(lambda d: row_of("/echo/page-paused"))
