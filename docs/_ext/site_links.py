"""Links from each page back to its source (view, edit, Run in Google Colab), and
the hosted site's metadata: OpenGraph tags and a complete sitemap.

Everything derives from one setting, the repository URL in pyproject.toml. A
chapter page links to its script in ``examples/`` (never to the generated
``auto_examples/`` file), and to Colab, which opens the chapter's notebook from
the published site's ``gh-pages`` branch, where the build copies every notebook
to the stable path ``notebooks/<chapter>.ipynb``.
"""

from __future__ import annotations

import copy
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


# Pages Sphinx generates without a source to take a description from.
GENERATED_PAGES = {
    "genindex": "Index of every function, class and term in {project}.",
    "py-modindex": "The Python modules documented in {project}: the pytorch_buffers library.",
    "search": "Search {project}: buffers, register_buffer, state_dict and devices.",
    "404": "This page is not part of {project}; its chapters start from the front page.",
}
DESCRIPTION_LENGTH = 200  # search engines show about 160 characters


def describe(app: Sphinx, pagename: str, doctree: Any) -> str:
    """What the page teaches, in a sentence or two: the ``description`` in its front
    matter if it has one, else the opening of its first paragraph (a chapter's intro)."""
    if description := app.env.metadata.get(pagename, {}).get("description"):
        return " ".join(str(description).split())
    if pagename in GENERATED_PAGES or doctree is None:
        return GENERATED_PAGES.get(pagename, "").format(project=app.config.project)
    first = next(
        (
            paragraph
            for paragraph in doctree.findall(nodes.paragraph)
            if not any(isinstance(a, nodes.Admonition) for a in _ancestors(paragraph))
        ),
        None,
    )
    if first is None:
        return ""
    text = " ".join(first.astext().split())
    # Whole sentences until it says enough; one that runs long is cut at a word.
    sentences = re.split(r"(?<=[.!?])\s+", text)
    description = sentences.pop(0)
    while sentences and len(description) < 120:
        description += " " + sentences.pop(0)
    if len(description) > DESCRIPTION_LENGTH:
        description = description[: DESCRIPTION_LENGTH - 1].rsplit(" ", 1)[0] + "…"
    return description


def add_metadata(
    app: Sphinx,
    pagename: str,
    templatename: str,  # noqa: ARG001 (the html-page-context event's signature)
    context: dict[str, Any],
    doctree: Any,
) -> None:
    """The page's description for search engines, and OpenGraph tags for link
    previews (sphinxext-opengraph imports matplotlib, a second of every rebuild,
    for social cards this site does not use)."""
    context.setdefault("metatags", "")  # generated pages (index, search) have none
    description = describe(app, pagename, doctree)
    if description:
        context["metatags"] += (
            f'\n<meta name="description" content="{html.escape(description)}" />'
        )
    base = app.config.html_baseurl
    if not base:
        return
    title = re.sub(r"<[^>]+>", "", context.get("title", "")) or app.config.project
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


# Stylesheets that extensions add to every page, each kept only on the pages
# whose body uses it (a render-blocking request saved on every other page).
STYLESHEET_USED_WHERE = {
    "mystnb.": 'class="cell',  # myst-nb: notebook cells (the cheat sheet)
    "sg_gallery.css": "sphx-glr-",  # sphinx-gallery: chapters, thumbnails
    "sg_gallery-rendered-html.css": "rendered_html",  # HTML outputs (_repr_html_)
    "sg_gallery-dataframe.css": 'class="dataframe',  # pandas tables: none here
    "sg_gallery-binder.css": "binder-badge",  # Binder links: not configured
}


def drop_unused_stylesheets(
    app: Sphinx,  # noqa: ARG001
    pagename: str,  # noqa: ARG001
    templatename: str,  # noqa: ARG001
    context: dict[str, Any],
    doctree: Any,  # noqa: ARG001
) -> None:
    body = context.get("body", "")

    def used(stylesheet: Any) -> bool:
        name = Path(str(getattr(stylesheet, "filename", stylesheet))).name
        return all(
            marker in body
            for prefix, marker in STYLESHEET_USED_WHERE.items()
            if name.startswith(prefix)
        )

    if "css_files" in context:
        context["css_files"] = [css for css in context["css_files"] if used(css)]


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
    """``sitemap.xml`` listing every page, from all documents (not only rebuilt ones).

    Not sphinx-sitemap: it collects pages as they are written, so an incremental
    build (a no-op, one edited chapter, every sphinx-autobuild rebuild) writes a
    sitemap of only the pages rebuilt that time (its open issue #13); it would
    also need a dependency and two settings (``sitemap_url_scheme``,
    ``sitemap_excludes``) to give the output these lines give.
    """
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


# Options that Sphinx and extensions add to after Sphinx has compared the loaded
# configuration with the previous build's: Sphinx gives the CSS and JS files a
# priority, sphinx-copybutton appends its static folder, sphinx-gallery keeps its
# run state (titles, stale examples, source folder) in its conf dict. Sphinx then
# pickled the grown values, so every no-op build reported "The configuration has
# changed (5 options ...)". Nothing was re-read because of it (none is an option
# that invalidates pages), but a configuration should compare equal to itself:
# Sphinx now pickles these as they were loaded, and the build goes on with them
# grown. (Swapped only around the pickling: sphinx-gallery's parallel workers
# receive its conf by pickle too, and need the run state.)
GROWN_LATER = (
    "html_css_files",
    "html_js_files",
    "html_static_path",
    "sphinx_gallery_conf",
)
_LOADED: dict[str, Any] = {}
_GROWN: dict[str, Any] = {}


def remember_loaded(app: Sphinx, config: Any) -> None:  # noqa: ARG001
    _LOADED.update({name: copy.deepcopy(config[name]) for name in GROWN_LATER})


def pickle_as_loaded(app: Sphinx, env: Any) -> None:  # noqa: ARG001
    """Just before Sphinx pickles the environment: the options as loaded."""
    for name in GROWN_LATER:
        _GROWN[name] = app.config[name]
        setattr(app.config, name, _LOADED[name])


def restore_grown(app: Sphinx, builder: Any) -> None:  # noqa: ARG001
    """Once it has (writing starts after): the options as the extensions grew them."""
    for name, value in _GROWN.items():
        setattr(app.config, name, value)


def setup(app: Sphinx) -> dict[str, Any]:
    # Last, after Sphinx and sphinx-gallery have normalised these options.
    app.connect("config-inited", remember_loaded, priority=999)
    app.connect("env-updated", pickle_as_loaded, priority=999)
    app.connect("write-started", restore_grown, priority=1)
    # The theme's own extension, loaded now instead of when the builder starts, so
    # that its option (pygments_dark_style) exists when the configuration is compared.
    app.setup_extension("furo")
    app.add_config_value("guide_repository", "", "html", types=[str])
    app.connect("html-page-context", add_links)
    app.connect("html-page-context", add_metadata)
    app.connect("html-page-context", drop_unused_stylesheets)
    app.connect("build-finished", copy_notebooks)
    app.connect("build-finished", write_sitemap)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
