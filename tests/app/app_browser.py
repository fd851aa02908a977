"""Driving the app in Debian's Chromium with Playwright (never `playwright install`).

Install: `pip install playwright` and `bash tests/install_chromium.sh` (apt's chromium).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM = Path(os.environ.get("SEGFPN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
INSTALL_HINT = ("Install them with `pip install playwright` (the Python driver only) and "
                "`bash tests/install_chromium.sh` (Debian's chromium at /usr/bin/chromium). Do not "
                "run `playwright install`: it downloads browser builds and fails offline.")
#: How long the app may take to answer one step (first run includes the model on CPU).
STEP_TIMEOUT_MS = 120_000


def missing_browser() -> str | None:
    """What is missing to drive a browser, or None when everything is there."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"the Python package playwright is not installed. {INSTALL_HINT}"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} does not exist. {INSTALL_HINT}"
    return None


#: Chromium's own test camera (a moving pattern) and microphone, allowed without asking.
FAKE_CAMERA_ARGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


@contextlib.contextmanager
def browser_page(width: int = 1440, height: int = 1000, *, fake_camera: bool = False):
    """A fresh Chromium page (headless) of ``width`` x ``height`` CSS px; ``fake_camera``: with
    Chromium's test camera as the webcam."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        args = CHROMIUM_ARGS + (FAKE_CAMERA_ARGS if fake_camera else [])
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(STEP_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def text_of(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def wait_for_text(page, selector: str, text: str) -> None:
    """Wait until the element's visible text contains ``text``."""
    page.wait_for_function(
        "([selector, text]) => (document.querySelector(selector)?.innerText || '').includes(text)",
        arg=[selector, text], timeout=STEP_TIMEOUT_MS)


def wait_for_image(page, selector: str) -> None:
    """Wait until ``selector`` (an <img>) has loaded a picture."""
    page.wait_for_function(
        "(selector) => { const img = document.querySelector(selector);"
        " return img && img.complete && img.naturalWidth > 0; }",
        arg=selector, timeout=STEP_TIMEOUT_MS)


def segment(page, url: str, photo: Path, *, reload: bool = True) -> None:
    """Open the app (``reload=False``: go on on the page as it is: same session), upload ``photo``,
    press Segment and wait until every view is drawn."""
    if reload:
        page.goto(url)
    page.wait_for_selector("#segment-button")
    page.locator("#input-image input[type=file]").set_input_files(str(photo))
    wait_for_image(page, "#input-image img")
    page.click("#segment-button")
    wait_for_image(page, "#instances-image img")
    wait_for_text(page, "#run-info", "drawing")
    wait_for_text(page, "#run-info", "every view drawn")
    wait_for_text(page, "#instance-info", "detections shown")


def pick_model(page, label: str) -> None:
    """Choose the entry of the model picker whose label contains ``label``."""
    page.locator("#model-picker input").click()
    page.locator("#model-picker [role=option]").filter(has_text=label).first.click()


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def choose(page, group: str, label: str) -> None:
    """Click the option ``label`` of the radio group whose elem_id is ``group``."""
    page.locator(f"#{group} label").filter(has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")).click()


def pixels(page, selector: str | None = None, path: Path | None = None) -> np.ndarray:
    """A screenshot (of the element ``selector``, or the whole page) as RGB uint8; also saved
    to ``path`` when given."""
    if selector is None:
        data = page.screenshot(full_page=True)
    else:
        data = page.locator(selector).screenshot()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    import io

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
