"""Layout a reader meets: the cheat sheet on a phone, figures in dark mode, cards."""

from __future__ import annotations

from io import BytesIO

from PIL import Image  # matplotlib's dependency, in the browser group
from playwright.sync_api import Browser

from .test_pages import open_page, switch_theme

PHONE = {"width": 390, "height": 844}

# For each <code> in the cheat sheet's table headers: the words (runs without a
# space) that the browser laid out over more than one line.
BROKEN_WORDS = """
() => {
  const broken = [];
  const codes = document.querySelectorAll(".cell_output table th code");
  for (const code of codes) {
    // docutils puts each word in a <span class="pre">: walk the text nodes.
    const walker = document.createTreeWalker(code, NodeFilter.SHOW_TEXT);
    for (let text = walker.nextNode(); text; text = walker.nextNode())
    for (const match of text.data.matchAll(/\\S+/g)) {
      const range = document.createRange();
      range.setStart(text, match.index);
      range.setEnd(text, match.index + match[0].length);
      const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
      if (lines.size > 1) broken.push(match[0]);
    }
  }
  return broken;
}
"""


def test_cheat_sheet_headers_never_break_inside_a_name(
    browser: Browser, base_url: str
) -> None:
    for viewport in (PHONE, {"width": 1280, "height": 900}):
        page, _ = open_page(browser, base_url + "cheatsheet.html", viewport=viewport)
        assert page.locator(".cell_output table th code").count() >= 4
        assert page.evaluate(BROKEN_WORDS) == [], viewport
        page.context.close()


def test_cheat_sheet_every_column_reachable_on_a_phone(
    browser: Browser, base_url: str
) -> None:
    page, _ = open_page(browser, base_url + "cheatsheet.html", viewport=PHONE)
    headers = page.locator(".cell_output table thead th")
    assert headers.count() >= 5  # the questions, then the four ways to hold a tensor
    # The page itself does not scroll sideways: the table scrolls in its own box.
    assert page.evaluate(
        "document.documentElement.scrollWidth <= window.innerWidth + 1"
    ), "the whole page scrolls sideways on a phone"
    for index in range(headers.count()):
        header = headers.nth(index)
        header.scroll_into_view_if_needed()
        box = header.bounding_box()
        assert box is not None
        assert box["x"] >= -1, f"column {index} starts off screen"
        assert box["x"] + min(box["width"], PHONE["width"]) <= PHONE["width"] + 1, (
            f"column {index} cannot be brought on screen"
        )
    page.context.close()


def test_chapter_figure_is_not_a_white_block_in_dark_mode(
    browser: Browser, base_url: str
) -> None:
    page, _ = open_page(
        browser,
        base_url + "auto_examples/10_mask_cost.html",
        viewport={"width": 1280, "height": 900},
    )
    figure = page.locator("img.sphx-glr-single-img").first
    figure.scroll_into_view_if_needed()
    switch_theme(page, "dark")
    assert figure.evaluate("img => getComputedStyle(img).filter").startswith("invert")
    # The figure's corner, as painted: dark like the page, not white.
    shot = figure.screenshot()
    red, green, blue = Image.open(BytesIO(shot)).convert("RGB").getpixel((3, 3))
    assert max(red, green, blue) < 80, (
        f"a light corner in dark mode: {(red, green, blue)}"
    )
    switch_theme(page, "light")
    assert figure.evaluate("img => getComputedStyle(img).filter") == "none"
    page.context.close()


def test_gallery_cards_carry_chapter_numbers(browser: Browser, base_url: str) -> None:
    page, _ = open_page(browser, base_url + "auto_examples/index.html")
    titles = page.locator(".sphx-glr-thumbnail-title").all_inner_texts()
    assert len(titles) >= 16
    assert [title.split(".", 1)[0] for title in titles] == [
        str(number) for number in range(1, len(titles) + 1)
    ]
    page.context.close()
