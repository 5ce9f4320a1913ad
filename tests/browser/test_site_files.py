"""The built files: links and anchors resolve, no machine paths, metadata, downloads."""

from __future__ import annotations

import json
import re
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from .conftest import PREFIX, REPOSITORY, site_pages

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = sorted(path.stem for path in (ROOT / "examples").glob("[0-9][0-9]_*.py"))


class LinkParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.meta: dict[str, str] = {}
        self.stylesheets: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"] or "")
        for attribute in ("href", "src"):
            if values.get(attribute) and tag in {"a", "link", "script", "img"}:
                self.links.append(values[attribute] or "")
        if tag == "meta" and (values.get("property") or values.get("name")):
            key = values.get("property") or values.get("name") or ""
            self.meta[key] = values.get("content") or ""
        if tag == "link" and values.get("rel") == "stylesheet":
            self.stylesheets.append(Path(urlsplit(values.get("href") or "").path).name)


def parse(path: Path) -> LinkParser:
    parser = LinkParser()
    parser.feed(path.read_text())
    return parser


def test_internal_links_and_anchors_resolve(site: Path) -> None:
    parsed = {page: parse(site / page) for page in site_pages(site)}
    broken = []
    for page, parser in parsed.items():
        for link in parser.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith("mailto:"):
                continue
            path = unquote(parts.path)
            if path.startswith(PREFIX):  # the 404 page's absolute links
                target = site / path.removeprefix(PREFIX)
            else:
                target = (site / page).parent / path if path else site / page
            target = target.resolve()
            if target.is_dir():
                target /= "index.html"
            if not target.exists():
                broken.append(f"{page}: {link}")
                continue
            if parts.fragment and target.suffix == ".html":
                ids = parsed.get(str(target.relative_to(site)), parse(target)).ids
                if parts.fragment not in ids:
                    broken.append(f"{page}: {link} (no anchor)")
    assert broken == []


def test_no_machine_paths_or_addresses_in_pages(site: Path) -> None:
    leaks = re.compile(
        re.escape(str(ROOT))
        + r"|/tmp/|site-packages|/root/|/home/|object at 0x[0-9a-f]+"
    )
    leaking = [
        page for page in site_pages(site) if leaks.search((site / page).read_text())
    ]
    assert leaking == []


def test_publishing_comforts(site: Path) -> None:
    assert (site / "404.html").is_file()
    assert (site / "sitemap.xml").is_file()
    sitemap = (site / "sitemap.xml").read_text()
    for chapter in CHAPTERS:
        assert f"auto_examples/{chapter}.html" in sitemap
    assert (site / "_static" / "favicon.svg").is_file()
    assert not (site / ".doctrees").exists()
    meta = parse(site / "auto_examples" / "02_register_buffer.html").meta
    assert meta["og:title"] == "Registering the mask as a buffer"
    assert meta["og:url"].endswith("/auto_examples/02_register_buffer.html")


def test_every_page_says_what_it_teaches(site: Path) -> None:
    descriptions = {
        page: parse(site / page).meta.get("description", "")
        for page in site_pages(site)
    }
    assert [page for page, text in descriptions.items() if len(text) < 40] == []
    chapter = descriptions["auto_examples/01_mask_left_behind.html"]
    assert chapter.startswith("A causal attention module keeps a mask")


def test_pages_load_only_the_stylesheets_they_use(site: Path) -> None:
    loaded = {page: parse(site / page).stylesheets for page in site_pages(site)}
    notebook_pages = {
        page
        for page, names in loaded.items()
        if 'class="cell' in (site / page).read_text()
    }
    assert {"cheatsheet.html", "api.html"} <= notebook_pages
    for page, names in loaded.items():
        assert any(name.startswith("mystnb.") for name in names) == (
            page in notebook_pages
        ), page
        assert not {"sg_gallery-binder.css", "sg_gallery-dataframe.css"} & set(names), (
            page
        )
    assert "sg_gallery.css" in loaded["auto_examples/01_mask_left_behind.html"]
    assert "sg_gallery.css" not in loaded["index.html"]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_links_and_downloads(site: Path, chapter: str) -> None:
    page = site / "auto_examples" / f"{chapter}.html"
    links = parse(page).links
    colab = [link for link in links if "colab.research.google.com" in link]
    assert colab == [
        (
            f"https://colab.research.google.com/github/pytorch-buffers/pytorch-buffers-guide/"
            f"blob/gh-pages/notebooks/{chapter}.ipynb"
        )
    ]
    assert (site / "notebooks" / f"{chapter}.ipynb").is_file()  # what Colab opens
    github = {link for link in links if link.startswith(REPOSITORY)}
    assert github == {
        f"https://github.com/pytorch-buffers/pytorch-buffers-guide/{kind}/main/examples/{chapter}.py"
        for kind in ("blob", "edit")
    }
    downloads = [link for link in links if "_downloads/" in link]
    script = next(
        site / "auto_examples" / l for l in downloads if l.endswith(f"{chapter}.py")
    )
    notebook = next(
        site / "auto_examples" / l for l in downloads if l.endswith(f"{chapter}.ipynb")
    )
    compile(script.read_text(), str(script.name), "exec")  # a valid Python script
    cells = json.loads(notebook.read_text())["cells"]
    assert "pip install torch" in "".join(cells[0]["source"])  # says how to install


def test_gallery_zips_hold_every_chapter(site: Path) -> None:
    zips = sorted(site.glob("_downloads/*/auto_examples_*.zip"))
    assert {path.name for path in zips} == {
        "auto_examples_python.zip",
        "auto_examples_jupyter.zip",
    }
    for path in zips:
        names = {Path(name).stem for name in zipfile.ZipFile(path).namelist()}
        assert set(CHAPTERS) <= names
