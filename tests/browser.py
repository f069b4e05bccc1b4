"""A real headless Chromium for the dashboard's tests: Debian's `chromium` driven by Debian's
`chromedriver` through selenium (so selenium-manager never downloads anything).

Every page a test visits is saved as a screenshot under `test-output/screenshots/<run>/` in
the checkout (gitignored); the directory is printed so a person can look at them.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-output" / "screenshots"
# Flags known to work in this container: no sandbox (root), no GPU, nothing phoning home.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
WIDTH, MIN_HEIGHT, MAX_HEIGHT = 1280, 900, 8000


class Browser:
    """One browser profile (its own cookies) with a screenshot after every visit."""

    def __init__(self, shots_dir: Path, name: str) -> None:
        self.name = name
        self.shots_dir = shots_dir
        self.downloads = Path(tempfile.mkdtemp(prefix=f"cvmfs-dashboard-{name}-downloads-"))
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        profile = tempfile.mkdtemp(prefix=f"cvmfs-dashboard-{name}-profile-")
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={WIDTH},{MIN_HEIGHT}")
        options.add_experimental_option(
            "prefs",
            {
                "download.default_directory": str(self.downloads),
                "download.prompt_for_download": False,
                "safebrowsing.enabled": False,
            },
        )
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self._shots = 0

    def close(self) -> None:
        self.driver.quit()

    # -- pages -----------------------------------------------------------------------------

    def shot(self, label: str) -> Path:
        self._shots += 1
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")
        path = self.shots_dir / f"{self.name}-{self._shots:02d}-{safe}.png"
        # The whole page, not only the window: size the window to the document's own height
        # plus the browser's frame (the window's outer height includes it; scrollHeight is
        # never less than the viewport, so it would only ever grow the window).
        height, frame = self.driver.execute_script(
            "return [Math.ceil(document.documentElement.getBoundingClientRect().height),"
            " window.outerHeight - window.innerHeight]"
        )
        wanted = int(height or 0) + max(int(frame or 0), 0)
        self.driver.set_window_size(WIDTH, max(MIN_HEIGHT, min(wanted, MAX_HEIGHT)))
        self.driver.save_screenshot(str(path))
        return path

    def visit(self, url: str, label: str) -> None:
        self.driver.get(url)
        self.shot(label)

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def finds(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def click(self, css: str, label: str) -> None:
        self.find(css).click()
        self.wait_loaded()
        self.shot(label)

    def text(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def wait_loaded(self, timeout_s: float = 30.0) -> None:
        self.wait(
            lambda: self.driver.execute_script("return document.readyState") == "complete",
            "the page to load",
            timeout_s,
        )

    def wait(self, condition: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except Exception:  # a page reloaded under us (stale element): look again
                pass
            time.sleep(0.5)
        self.shot(f"timeout-{what}")
        raise TimeoutError(f"{self.name}: {what} within {timeout_s:.0f} s; page: {self.text()}")

    def reload_until(
        self, condition: Callable[[], bool], what: str, label: str, timeout_s: float = 120.0
    ) -> None:
        """Reload the page until `condition` holds (for changes no script announces)."""

        def reloaded() -> bool:
            self.driver.refresh()
            self.wait_loaded()
            return condition()

        self.wait(reloaded, what, timeout_s)
        self.shot(label)

    def downloaded(self, filename: str, timeout_s: float = 30.0) -> str:
        path = self.downloads / filename
        self.wait(path.exists, f"download of {filename}", timeout_s)
        return path.read_text()


def screenshots_dir() -> Path:
    run = time.strftime("%Y%m%d-%H%M%S")
    path = SCREENSHOTS / run
    path.mkdir(parents=True, exist_ok=True)
    return path
