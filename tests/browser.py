"""Opening a report in a real browser for the tests: Debian's Chromium through Playwright, offline, from file://."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def skip_without_chromium() -> None:
    """Skip the calling test module where there is no Chromium, except in CI, which installs it."""
    if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
        pytest.skip("Chromium is not installed here (CI installs Debian's chromium)", allow_module_level=True)


@contextlib.contextmanager
def offline_tab(report: Path, *, on_dialog: Callable[..., None] | None = None) -> Iterator:
    """A browser tab showing ``report`` with every request beyond file:, data: and blob: refused; on leaving,
    fails if the page tried to reach the network or raised a JavaScript error."""
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1300, "height": 1000}, accept_downloads=True)

        def block_network(route) -> None:
            url = route.request.url
            if url.startswith(("file:", "data:", "blob:")):
                route.continue_()
            else:
                outside.append(url)
                route.abort()

        context.route("**/*", block_network)
        tab = context.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda error: errors.append(str(error)))
        if on_dialog is not None:
            tab.on("dialog", on_dialog)
        tab.goto(report.as_uri())
        tab.wait_for_selector("#map2d .scatterlayer .point")
        yield tab
        assert outside == [], f"the report tried to reach the network: {outside[:3]}"
        assert errors == [], errors
        browser.close()
