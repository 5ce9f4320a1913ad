"""Every page in a real browser: loads cleanly, stays on this host, is accessible, has themes."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page

from .conftest import PAGE_WEIGHTS

AXE = Axe()


def open_page(
    browser: Browser, url: str, **context: object
) -> tuple[Page, dict[str, list[str]]]:
    """Open ``url``, recording console errors, failed and off-host requests, and bytes."""
    page = browser.new_context(**context).new_page()
    seen: dict[str, list[str]] = {
        "console": [],
        "failed": [],
        "external": [],
        "bytes": [],
    }
    host = urlsplit(url).netloc

    def route(request_route) -> None:  # type: ignore[no-untyped-def]
        if urlsplit(request_route.request.url).netloc == host:
            request_route.continue_()
        else:
            seen["external"].append(request_route.request.url)
            request_route.abort()

    page.route("**/*", route)
    page.on(
        "console",
        lambda m: seen["console"].append(m.text) if m.type == "error" else None,
    )
    page.on("pageerror", lambda error: seen["console"].append(str(error)))
    page.on(
        "requestfailed",
        lambda r: (
            seen["failed"].append(r.url) if urlsplit(r.url).netloc == host else None
        ),
    )
    page.on(
        "requestfinished",
        lambda r: seen["bytes"].append(str(r.sizes()["responseBodySize"])),
    )
    response = page.goto(url, wait_until="networkidle")
    assert response is not None
    assert response.status == 200, f"{url}: HTTP {response.status}"
    return page, seen


def test_page_loads_cleanly_and_offline(
    browser: Browser, base_url: str, page_path: str
) -> None:
    page, seen = open_page(browser, base_url + page_path)
    PAGE_WEIGHTS[page_path] = sum(map(int, seen["bytes"]))
    assert seen["console"] == [], f"console errors: {seen['console']}"
    assert seen["failed"] == [], f"failed requests: {seen['failed']}"
    assert seen["external"] == [], f"requests to other hosts: {seen['external']}"
    page.context.close()


def test_page_is_accessible(browser: Browser, base_url: str, page_path: str) -> None:
    page, _ = open_page(browser, base_url + page_path)
    violations = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in AXE.run(page).response["violations"]
        if v["impact"] in {"serious", "critical"}
    ]
    assert violations == [], "\n".join(violations)
    page.context.close()


def switch_theme(page: Page, theme: str) -> None:
    """Click furo's theme toggle until the page is in ``theme``."""
    toggle = page.locator("button.theme-toggle").locator("visible=true").first
    for _ in range(3):
        if page.evaluate("document.body.dataset.theme") == theme:
            return
        toggle.click()
    assert page.evaluate("document.body.dataset.theme") == theme


@pytest.mark.parametrize("width", [1280, 390], ids=["desktop", "phone"])
def test_page_renders_in_light_and_dark(
    browser: Browser, base_url: str, page_path: str, width: int
) -> None:
    page, _ = open_page(
        browser, base_url + page_path, viewport={"width": width, "height": 900}
    )
    switch_theme(page, "light")
    light_background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    light = page.screenshot()
    switch_theme(page, "dark")
    dark_background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    dark = page.screenshot()
    assert light_background != dark_background
    assert light != dark
    page.context.close()


@pytest.mark.parametrize("query", ["register_buffer", "state_dict"])
def test_search_finds_the_chapters(browser: Browser, base_url: str, query: str) -> None:
    page, _ = open_page(browser, f"{base_url}search.html?q={query}")
    results = page.locator("#search-results ul.search li a")
    results.first.wait_for(timeout=15_000)
    titles = results.all_inner_texts()
    expected = {
        "register_buffer": "Registering the mask as a buffer",
        "state_dict": "Buffers in state_dict",
    }
    assert any(expected[query] in title for title in titles), titles
    page.context.close()


def test_copy_buttons_skip_outputs(browser: Browser, base_url: str) -> None:
    page, _ = open_page(browser, base_url + "auto_examples/03_state_dict.html")
    code_blocks = page.locator("div.highlight-Python div.highlight pre").count()
    outputs = page.locator(".sphx-glr-script-out pre").count()
    buttons_on_code = page.locator("div.highlight-Python button.copybtn").count()
    buttons_on_outputs = page.locator(".sphx-glr-script-out button.copybtn").count()
    assert code_blocks > 0
    assert outputs > 0
    assert buttons_on_code == code_blocks
    assert buttons_on_outputs == 0
    page.context.close()
