"""A report opened as a researcher opens it: Debian's Chromium, headless, driven by Selenium
through Debian's chromedriver (no browser or driver is downloaded), at 1280×900.

:func:`inspect_report` returns what the browser tier asserts: horizontal overflow (with the
appendix and every collapsed table open too), where the Answer block lies, images that did not
load, internal links that do not resolve and the console's errors; it saves screenshots.
``python tests/browser.py REPORT.html [OUT_DIR]`` prints the same for any report.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

WIDTH, HEIGHT = 1280, 900
CHROMIUM = ("chromium", "chromium-browser")
DRIVER = "chromedriver"

_MEASURE = """
const doc = document.documentElement;
const answer = document.getElementById('answer');
const first = answer ? answer.querySelector('p, ul') : null;
return {scroll_width: doc.scrollWidth, inner_width: window.innerWidth,
        inner_height: window.innerHeight,
        answer_top: answer ? answer.getBoundingClientRect().top + window.scrollY : null,
        answer_first_bottom: first ? first.getBoundingClientRect().bottom + window.scrollY : null,
        headline: answer && answer.querySelector('p') ? answer.querySelector('p').textContent : null,
        figure_top: answer && answer.querySelector('img') ?
                    answer.querySelector('img').getBoundingClientRect().top + window.scrollY : null,
        images: document.images.length,
        broken_images: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))
                           .map(i => i.alt),
        links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
        wide: [...document.querySelectorAll('table, pre, figure, p')]
                  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
                  .map(e => e.tagName + ': ' + e.textContent.slice(0, 60))};
"""


@dataclass
class Inspection:
    """What the browser saw (positions in CSS pixels from the top of the page)."""

    scroll_width: int
    inner_width: int
    inner_height: int
    scroll_width_open: int  # with every <details> open
    answer_top: float | None
    answer_first_bottom: float | None
    headline: str | None  # the Answer's first paragraph
    figure_top: float | None  # top of the Answer's first image
    images: int
    broken_images: list[str]
    broken_links: list[str]
    wide: list[str]
    console_errors: list[str]
    screenshots: list[str] = field(default_factory=list)


def available() -> str | None:
    """None when the tier can run, else why not (for ``pytest.skip``)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (make setup installs the dev extra)"
    if not any(shutil.which(name) for name in CHROMIUM) or not shutil.which(DRIVER):
        return "Debian's chromium and chromium-driver are not installed (make browser-packages, as root)"
    return None


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = next(shutil.which(n) for n in CHROMIUM if shutil.which(n))
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={WIDTH},{HEIGHT}", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(shutil.which(DRIVER)))


def _broken_links(page: Path, links: list[str], ids: set[str]) -> list[str]:
    broken = []
    for href in links:
        url = urlparse(href)
        if url.scheme in ("http", "https", "mailto"):
            continue  # external: not this report's to resolve offline
        if href.startswith("#"):
            if unquote(href[1:]) not in ids:
                broken.append(href)
        elif not (page.parent / unquote(url.path)).exists():
            broken.append(href)
    return broken


def inspect_report(page: Path, out_dir: Path) -> Inspection:
    """Open ``page`` at 1280×900, measure, open every ``<details>``, measure again, and save a
    screenshot of the first screen and of the whole opened page under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    driver = _driver()
    try:
        driver.set_window_size(WIDTH, HEIGHT)
        driver.get(page.resolve().as_uri())
        # the window's outer size includes no chrome in headless mode; make the viewport exact
        inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        driver.set_window_size(WIDTH + WIDTH - inner[0], HEIGHT + HEIGHT - inner[1])
        seen = driver.execute_script(_MEASURE)
        ids = set(driver.execute_script("return [...document.querySelectorAll('[id]')].map(e => e.id)"))
        first = out_dir / f"{page.parent.parent.name}_first_screen.png"
        driver.save_screenshot(str(first))
        driver.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
        opened = driver.execute_script(_MEASURE)
        full = out_dir / f"{page.parent.parent.name}_opened.png"
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(WIDTH, min(int(height) + 200, 16000))
        driver.save_screenshot(str(full))
        errors = [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    finally:
        driver.quit()
    return Inspection(
        scroll_width=seen["scroll_width"], inner_width=seen["inner_width"],
        inner_height=seen["inner_height"], scroll_width_open=opened["scroll_width"],
        answer_top=seen["answer_top"], answer_first_bottom=seen["answer_first_bottom"],
        headline=seen["headline"], figure_top=seen["figure_top"],
        images=seen["images"], broken_images=seen["broken_images"],
        broken_links=_broken_links(page, seen["links"], ids), wide=opened["wide"],
        console_errors=errors, screenshots=[str(first), str(full)])


if __name__ == "__main__":
    why = available()
    if why:
        sys.exit(f"cannot open a browser: {why}")
    found = inspect_report(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/report-shots"))
    print(json.dumps(asdict(found), indent=1))
