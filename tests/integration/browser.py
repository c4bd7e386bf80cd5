"""The browser tests' Chromium: Debian's package, driven by Playwright (``executable_path``;
nothing is downloaded)."""

import contextlib
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def chromium() -> str:
    """The Chromium executable; missing: a loud skip here, a failure in CI (``CI=true``)."""
    path = shutil.which("chromium")
    if path is None:
        message = ("!!! Chromium is not installed: the shop page's browser test cannot run. "
                   "Install it with `apt-get install -y chromium` (.ci/setup.sh does it as root). !!!")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@contextlib.contextmanager
def launched() -> Iterator:
    """A headless Chromium (:func:`chromium`) driven by Playwright, closed afterwards."""
    from playwright.sync_api import sync_playwright

    exe = chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def shown(page) -> dict:
    """The shop page's answer as shown: its request id, the items of the cards, and the pictures
    (``broken``: any image of the page that did not load)."""
    return page.evaluate("""() => ({
        request_id: document.getElementById('cards').dataset.requestId,
        items: [...document.querySelectorAll('#cards .card')].map(c => c.dataset.itemId),
        images: [...document.querySelectorAll('#cards img')].length,
        broken: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
    })""")


def screenshot(page, path: Path) -> None:
    """A PNG of the viewport, reduced to a 256-colour palette (the README's pictures stay small)."""
    from PIL import Image

    with Image.open(io.BytesIO(page.screenshot())) as img:
        img.convert("RGB").quantize(256).save(path, optimize=True)


def watched(browser, errors: list[str], phone: bool = False):
    """A new page whose console errors and uncaught exceptions are appended to ``errors``;
    ``phone``: a 390x844 touch viewport, else 1280x900."""
    page = (browser.new_page(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=1) if phone
            else browser.new_page(viewport=DESKTOP))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page


def screenshots(tmp_path: Path) -> Path:
    """Where screenshots go: ``$RAYCART_SHOP_SCREENSHOTS`` (README's pictures), else ``tmp_path``."""
    shots = Path(os.environ.get("RAYCART_SHOP_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    return shots
