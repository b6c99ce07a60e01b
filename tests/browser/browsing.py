"""What the browser tests need around Playwright: Debian's chromium (no browser downloads here), a
context that keeps every request on loopback, and the few things a user would look at on a page.

Nothing leaves 127.0.0.1: a request to anywhere else is aborted and recorded, so a page that needs the
internet (Swagger UI from a CDN) fails the test instead of hanging on a closed network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, Dialog, Page, Route
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags chromium phones home at start (component updates, sync),
# and the closed network refuses those connections; --no-sandbox because CI runs as root.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
WAIT_MS = 30_000  # one bound for every wait on a page: a busy 2-core CI machine renders slowly


def require_chromium() -> str:
    """Without chromium: skip on a laptop, fail in CI (where .ci/run installs it)."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    message = f"{CHROMIUM} is missing (apt-get install -y chromium); .ci/run installs it"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Browsing:
    """One browser context for one test: its pages, what left loopback, and the dialogs that opened."""

    context: BrowserContext
    shots: Path
    left_loopback: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, browser: Browser, shots: Path) -> Browsing:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(WAIT_MS)
        browsing = cls(context=context, shots=shots)
        context.route("**/*", browsing._keep_on_loopback)
        context.on("page", browsing._watch)
        return browsing

    def new_page(self) -> Page:
        return self.context.new_page()

    def screenshot(self, page: Page, name: str) -> Path:
        """A PNG of the page in the test's tmp dir, to look at when an assertion is in doubt (the Prefect UI
        scrolls inside itself: scroll what matters into view first)."""
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        page.screenshot(path=path, full_page=True)
        return path

    def assert_nothing_ran(self, page: Page) -> None:
        """No script from the question ran on ``page`` (it sets ``window.__pwned``), no dialog opened
        anywhere, and no request left loopback."""
        assert page.evaluate("typeof window.__pwned") == "undefined", f"a script from the question ran on {page.url}"
        assert self.dialogs == [], f"dialogs opened: {self.dialogs}"
        assert self.left_loopback == [], f"requests left loopback: {self.left_loopback}"

    def close(self) -> None:
        self.context.close()

    def _keep_on_loopback(self, route: Route) -> None:
        url = route.request.url
        if urlsplit(url).scheme in ("http", "https") and urlsplit(url).hostname not in LOOPBACK:
            self.left_loopback.append(url)
            route.abort("internetdisconnected")
        else:
            route.continue_()

    def _watch(self, page: Page) -> None:
        def record(dialog: Dialog) -> None:
            self.dialogs.append(f"{dialog.type}: {dialog.message} on {page.url}")
            dialog.dismiss()

        page.on("dialog", record)


def log_in(page: Page, ui_url: str, auth_string: str) -> None:
    """Open the Prefect UI's runs list and log in with the auth string where it asks, as a user would.

    Starts at the runs list because Prefect 3.8's UI sends a logged-out deep link to a flow run to its
    not-found page (and ``/`` to the V2 UI's own login), not to this login. Fails if the UI never asks:
    its server would be an open door.
    """
    page.goto(f"{ui_url}/runs")
    login = page.get_by_role("heading", name="Login", exact=True)
    try:
        login.wait_for()
    except PlaywrightTimeoutError:
        pytest.fail(f"the Prefect UI at {ui_url} never asked for a login (now on {page.url})")
    page.locator("input").fill(auth_string)
    page.get_by_role("button", name="Login", exact=True).click()
    page.wait_for_url(lambda u: urlsplit(u).path != "/login")


def heading_texts(page: Page, within: str = "body") -> list[str]:
    """The text of every h1-h6 inside ``within``, in page order: a forged heading shows up here."""
    return [t.strip() for t in page.locator(within).locator("h1, h2, h3, h4, h5, h6").all_inner_texts()]


def images(page: Page, selector: str = "img") -> list[dict]:
    """Every image matching ``selector`` once each has finished loading (or failing): its source and
    natural size. A broken image has a natural width of 0."""
    page.wait_for_function("s => [...document.querySelectorAll(s)].every(i => i.complete)", arg=selector)
    return page.evaluate(
        "s => [...document.querySelectorAll(s)].map(i => ({src: i.src, width: i.naturalWidth, height: i.naturalHeight}))",
        selector,
    )


def visible_text(page: Page) -> str:
    return page.locator("body").inner_text()


def markup_that_could_run(page: Page) -> list[str]:
    """Script elements and inline event handlers (``onerror=...``) in the page's DOM, as outerHTML."""
    return page.evaluate(
        """() => [...document.querySelectorAll('*')]
            .filter(e => e.tagName === 'SCRIPT' || [...e.attributes].some(a => a.name.startsWith('on')))
            .map(e => e.outerHTML.slice(0, 200))"""
    )
