"""`python -m dalle app` in a real browser: the command serves on a free local port, headless Chromium (Selenium)
types a prompt, generates, downloads the images, classifies an uploaded digit and reads the top class off the page.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them); skipped without them. Screenshots go to
$VIT_DALLE_SCREENSHOTS when set (the README's docs/images/app_*.png come from there), else to a temporary folder.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the web app needs Gradio: pip install 'vit-dalle[app]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (pip install selenium)")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from dalle.app_ui import classify  # noqa: E402
from dalle.pipeline import load_pipeline  # noqa: E402
from vit import load_classifier  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DALLE_PATH, VIT_PATH = None, None  # the shipped models, as `python -m dalle app` serves them by default
PROMPT = "a large red circle in the top left"
NUM_IMAGES = 4  # the page's default
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="no headless browser: install Debian's chromium and chromium-driver (apt-get install chromium "
        "chromium-driver), as .ci/run does",
    ),
    pytest.mark.slow,
    pytest.mark.timeout(900),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_served(url: str, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """Until the app prints the URL to open (after the models load and the server starts), then one request."""
    deadline = time.monotonic() + timeout
    while f"open {url} in a browser" not in log.read_text():
        if process.poll() is not None:
            pytest.fail(f"the app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"the app did not start serving {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(1)
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200


@pytest.fixture(scope="module")
def app_url(tmp_path_factory) -> Iterator[str]:
    """`python -m dalle app` on a free port; it and its children are killed however the tests end."""
    port, log = free_port(), tmp_path_factory.mktemp("app") / "app.log"
    models = [
        *(["--checkpoint", str(DALLE_PATH)] if DALLE_PATH else []),
        *(["--classifier", str(VIT_PATH)] if VIT_PATH else []),
    ]
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dalle", "app", "--port", str(port), *models],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the kill below reaches its children too
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_served(url, process, log)
        yield url
    finally:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
                process.wait(timeout=wait)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = os.environ.get("VIT_DALLE_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def wait(driver, condition, timeout: float = 120):
    return WebDriverWait(driver, timeout).until(lambda d: condition(d) or None)


def download_png(url: str) -> Image.Image:
    with urllib.request.urlopen(url, timeout=30) as response:
        image = Image.open(io.BytesIO(response.read()))
    assert image.format == "PNG", f"{url} is {image.format}"
    return image


def screenshot(driver, path: Path) -> None:
    """The whole page, without the notifications (a small model's text context cuts the prompt: a warning)."""
    for button in driver.find_elements(By.CSS_SELECTOR, ".toast-close"):
        button.click()
    height = driver.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
    driver.set_window_size(1280, min(2400, height + 200))  # + the window's own bars
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(1)  # let the layout settle
    driver.save_screenshot(str(path))


def upload(driver, url: str, path: Path) -> None:
    """A fresh page's classify tab, with `path` uploaded."""
    driver.get(url)
    tab = wait(
        driver, lambda d: [t for t in d.find_elements(By.CSS_SELECTOR, "button[role=tab]") if "Classify" in t.text]
    )
    tab[0].click()
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))[0].send_keys(str(path))


def test_generate_in_the_browser(app_url, browser, screenshots):
    size = load_pipeline(DALLE_PATH)[2].image_size
    browser.get(app_url)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#prompt textarea"))[0].send_keys(PROMPT)
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#status").text.startswith("Seed"), timeout=300)
    images = browser.find_elements(By.CSS_SELECTOR, "#gallery img")
    assert len(images) == NUM_IMAGES
    for image in images:
        assert download_png(image.get_attribute("src")).size == (size, size)
    grid = browser.find_element(By.CSS_SELECTOR, "#grid a[download], #grid a.download-link").get_attribute("href")
    assert download_png(grid).size == (NUM_IMAGES * (size + 2) + 2, size + 4)  # one row, 2 px padding
    screenshot(browser, screenshots / "app_generate.png")


def test_classify_in_the_browser(app_url, browser, screenshots, tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    digit = tmp_path / "digit.png"
    Image.fromarray((digits.images[3] * (255 / 16)).round().astype(np.uint8)).save(digit)  # an 8 x 8 "3"
    expected = max(
        (p, name) for name, p in classify(load_classifier(VIT_PATH), str(digit), out_dir=tmp_path)[0].items()
    )
    upload(browser, app_url, digit)  # classifies on upload
    top = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#label [data-testid=label-output-value]"))[0]
    assert top.text == expected[1]
    overlay = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#overlay img"))[0]
    assert download_png(overlay.get_attribute("src")).size == (256, 256)  # the 8 px digit enlarged to be seen
    screenshot(browser, screenshots / "app_classify.png")

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("shopping list")
    upload(browser, app_url, not_an_image)
    error = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".toast-body.error"))[0]
    assert "notes.png is not a readable image" in error.text
