"""The web page in a real headless Chromium: upload a real photo, read the shown top-1, and check
it is what the API says; a refused format shows the service's message.

Chromium comes from Debian (``chromium``, ``chromium-driver``). When it is missing and we are root
with apt-get, the session fixture installs it (one time, about a minute); otherwise the test
fails with the command to run, rather than silently skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from test_serve_helpers import ServerProcess, image_bytes, photo_paths, tiny_bundle

CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)

pytestmark = pytest.mark.slow


def ensure_chromium() -> None:
    """Install Debian's chromium and chromium-driver if they are missing (root only)."""
    if CHROMIUM.exists() and DRIVER.exists():
        return
    apt = shutil.which("apt-get")
    if os.geteuid() != 0 or apt is None:
        pytest.fail(
            "headless Chromium is missing: run `apt-get install -y chromium chromium-driver` "
            "as root (the tests install it themselves only when run as root)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]
    if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
        subprocess.run([apt, "update"], env=env, capture_output=True, timeout=600, check=True)
        subprocess.run(install, env=env, capture_output=True, timeout=900, check=True)
    assert CHROMIUM.exists() and DRIVER.exists(), "apt-get did not install chromium"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    ensure_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager go online
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = ServerProcess(tiny_bundle(tmp_path_factory))
    yield proc
    proc.stop()


def _wait(driver, css: str, timeout: float = 30):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, css))
    )


def _upload(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "[data-testid=file-input]").send_keys(str(path))


def test_page_shows_the_api_top1_for_a_real_photo(browser, server, tmp_path):
    from selenium.webdriver.common.by import By

    photo = photo_paths()[0]
    api = httpx.post(f"{server.url}/predict", files={"file": (photo.name, photo.read_bytes())})
    assert api.status_code == 200
    expected = api.json()["top"]

    browser.get(server.url + "/")
    _wait(browser, "#model.ready")
    assert "tiny-sfdl" in browser.find_element(By.ID, "model-text").text
    _upload(browser, photo)
    shown = _wait(browser, "[data-testid=top1-name]").text
    assert shown == expected[0]["name"]
    items = browser.find_elements(By.CSS_SELECTOR, "[data-testid=result-item]")
    assert len(items) == 5
    assert f"{expected[0]['probability'] * 100:.1f}%" in items[0].text
    assert expected[0]["name_local"] in items[0].text
    assert "ms" in browser.find_element(By.ID, "latency").text
    assert browser.find_element(By.ID, "preview").get_attribute("naturalWidth") != "0"
    assert browser.save_screenshot(str(tmp_path / "page.png"))


def test_page_shows_the_service_error_for_a_gif(browser, server, tmp_path):
    gif = tmp_path / "animated.gif"
    gif.write_bytes(image_bytes("GIF", frames=3))
    browser.get(server.url + "/")
    _wait(browser, "#model.ready")
    _upload(browser, gif)
    error = _wait(browser, "[data-testid=error]").text
    assert "GIF images are not accepted" in error


def test_explain_shows_the_heat_map_with_a_toggle(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    _wait(browser, "#model.ready")
    _upload(browser, photo_paths()[1])
    _wait(browser, "[data-testid=top1-name]")
    _wait(browser, "[data-testid=explain]").click()
    heat = _wait(browser, "[data-testid=heatmap]")
    assert heat.get_attribute("src").startswith("data:image/png;base64,")
    assert int(heat.get_attribute("naturalWidth")) > 0
    assert "Grad-CAM for" in browser.find_element(By.ID, "explain-note").text
    preview = browser.find_element(By.ID, "preview")
    assert not preview.is_displayed()  # the map is shown in the photo's place
    browser.find_element(By.ID, "heatmap-toggle").click()  # off: the photo again
    assert preview.is_displayed() and not heat.is_displayed()
