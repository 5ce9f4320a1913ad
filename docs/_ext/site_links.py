"""Links from each page back to its source (view, edit, Run in Google Colab), and
the hosted site's metadata: OpenGraph tags and a complete sitemap.

Everything derives from one setting, the repository URL in pyproject.toml. A
chapter page links to its script in ``examples/`` (never to the generated
``auto_examples/`` file), and to Colab, which opens the chapter's notebook from
the published site's ``gh-pages`` branch, where the build copies every notebook
to the stable path ``notebooks/<chapter>.ipynb``.
"""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx

BRANCH = "main"
PAGES_BRANCH = "gh-pages"


def source_path(app: Sphinx, pagename: str) -> str | None:
    """The repository path a page is written in, or None for generated pages."""
    root = Path(app.srcdir).parent
    if pagename.startswith("auto_examples/"):
        name = pagename.removeprefix("auto_examples/")
        if name == "index":
            return "examples/GALLERY_HEADER.rst"
        script = root / "examples" / f"{name}.py"
        return f"examples/{name}.py" if script.exists() else None
    for suffix in (".md", ".rst"):
        if (Path(app.srcdir) / f"{pagename}{suffix}").exists():
            return f"docs/{pagename}{suffix}"
    return None


def colab_url(repository: str, chapter: str) -> str:
    owner_repo = repository.removeprefix("https://github.com/")
    return (
        f"https://colab.research.google.com/github/{owner_repo}/blob/{PAGES_BRANCH}/"
        f"notebooks/{chapter}.ipynb"
    )


def add_links(
    app: Sphinx,
    pagename: str,
    templatename: str,  # noqa: ARG001 (the html-page-context event's signature)
    context: dict[str, Any],
    doctree: Any,  # noqa: ARG001
) -> None:
    repository = app.config.guide_repository
    path = source_path(app, pagename)
    context["guide_view_url"] = f"{repository}/blob/{BRANCH}/{path}" if path else None
    context["guide_edit_url"] = f"{repository}/edit/{BRANCH}/{path}" if path else None
    if path and path.endswith(".py") and "body" in context:
        chapter = Path(path).stem
        links = (
            '<p class="chapter-links">'
            f'<a href="{html.escape(colab_url(repository, chapter))}">Run in Google Colab</a>'
            f' · <a href="{html.escape(context["guide_view_url"])}">View source on GitHub</a>'
            f' · <a href="{html.escape(context["guide_edit_url"])}">Edit this page</a>'
            "</p>"
        )
        context["body"] = links + context["body"]


def _ancestors(node: Any) -> list[Any]:
    found = []
    while node.parent is not None:
        node = node.parent
        found.append(node)
    return found


def add_opengraph(
    app: Sphinx,
    pagename: str,
    templatename: str,  # noqa: ARG001 (the html-page-context event's signature)
    context: dict[str, Any],
    doctree: Any,
) -> None:
    """OpenGraph tags for link previews (sphinxext-opengraph imports matplotlib,
    a second of every rebuild, for social cards this site does not use)."""
    base = app.config.html_baseurl
    if not base or "metatags" not in context:
        return
    title = re.sub(r"<[^>]+>", "", context.get("title", "")) or app.config.project
    description = ""
    if doctree is not None:
        first = next(
            (
                paragraph
                for paragraph in doctree.findall(nodes.paragraph)
                if not any(
                    isinstance(a, nodes.Admonition) for a in _ancestors(paragraph)
                )
            ),
            None,
        )
        if first is not None:
            text = " ".join(first.astext().split())
            description = (
                text if len(text) <= 200 else text[:197].rsplit(" ", 1)[0] + "..."
            )
    tags = {
        "og:title": html.unescape(title),
        "og:type": "website",
        "og:url": f"{base}{pagename}.html",
        "og:site_name": app.config.html_title,
        "og:description": description,
    }
    context["metatags"] += "".join(
        f'\n<meta property="{key}" content="{html.escape(value)}" />'
        for key, value in tags.items()
        if value
    )


def copy_notebooks(app: Sphinx, exception: Exception | None) -> None:
    """Put each chapter's notebook at ``notebooks/<chapter>.ipynb`` in the site."""
    if exception is not None or app.builder.format != "html":
        return
    target = Path(app.outdir) / "notebooks"
    target.mkdir(exist_ok=True)
    for notebook in sorted(
        (Path(app.srcdir) / "auto_examples").glob("[0-9][0-9]_*.ipynb")
    ):
        shutil.copy2(notebook, target / notebook.name)


def write_sitemap(app: Sphinx, exception: Exception | None) -> None:
    """``sitemap.xml`` listing every page, from all documents (not only rebuilt ones)."""
    if (
        exception is not None
        or app.builder.format != "html"
        or not app.config.html_baseurl
    ):
        return
    skipped = {"404", "search", "genindex", "py-modindex"}
    urls = "".join(
        f"<url><loc>{html.escape(app.config.html_baseurl + name)}.html</loc></url>"
        for name in sorted(app.env.found_docs)
        if name not in skipped
    )
    (Path(app.outdir) / "sitemap.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{urls}</urlset>\n'
    )


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_config_value("guide_repository", "", "html", types=[str])
    app.connect("html-page-context", add_links)
    app.connect("html-page-context", add_opengraph)
    app.connect("build-finished", copy_notebooks)
    app.connect("build-finished", write_sitemap)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
