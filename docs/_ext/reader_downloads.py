"""What a reader downloads is what the page shows, and runs where the reader is.

sphinx-gallery renders each chapter without its hidden build-time checks (the
lines between ``# sphinx_gallery_start_ignore`` and ``# sphinx_gallery_end_ignore``)
and writes notebooks without them, but offers the chapter's source file, checks
and all, as the ``.py`` download and inside the zips. After each build this
rewrites the published copies (``_downloads/`` and ``notebooks/``): scripts lose
their hidden blocks, and the notebooks of chapters that import the guide's
library get a first cell that installs it (the wheel shipped with the site,
built from the same commit, until the package is published), and the Sphinx roles left in their
Markdown (``:func:`pytorch_buffers.inventory` ``) become Markdown links to the
page that documents the name. Zips get the same treatment, and fixed timestamps.

Sphinx copies every download again on each build, so a rebuild would redo all of
this; instead ``reader-downloads.json`` (beside the build's doctrees) records, per
file, the hash of what Sphinx copied, the hash of what was published, and each
link it resolved. When what Sphinx copied and the links are as recorded, and the
install cell, the chapters that import the library and the cleaning code are
unchanged, the published copy from the last good site is reused as it is.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx_gallery.py_source_parser import remove_ignore_blocks

LIBRARY = "pytorch_buffers"
MEMO = "reader-downloads.json"
logger = logging.getLogger(__name__)


def reader_script(source: str, name: str) -> str:
    """The chapter as a reader gets it: no hidden blocks, still valid Python."""
    script = remove_ignore_blocks(source)
    compile(script, name, "exec")  # a marker pair that cut a statement fails here
    return script


def install_cell(wheel: str) -> dict[str, Any]:
    """A notebook cell that installs the library (the site's wheel) when missing."""
    return {
        "cell_type": "code",
        "execution_count": None,
        "metadata": {},
        "outputs": [],
        "source": (
            "# This chapter uses the guide's library, pytorch_buffers.\n"
            "try:\n"
            f"    import {LIBRARY}\n"
            "except ModuleNotFoundError:\n"
            f"    %pip install {wheel}"
        ),
    }


def reader_notebook(text: str, install: dict[str, Any]) -> str:
    """The notebook with the install cell second (once)."""
    notebook = json.loads(text)
    if install in notebook["cells"]:
        return text
    notebook["cells"].insert(1, install)
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


# :func:`name`, :py:class:`~a.b`, :doc:`text <page>`: a role as sphinx-gallery
# leaves it in a notebook's Markdown.
ROLE = re.compile(r":(?:py:)?(?P<role>[a-z]+):`(?P<body>[^`]+)`")
CALLABLE_ROLES = {"func", "meth"}
Resolve = Callable[[str, str], str | None]


def markdown_role(role: str, body: str, resolve: Resolve) -> str:
    """One role as Markdown: a code span (a link where ``resolve`` finds the page),
    shown as Sphinx shows it (``~`` keeps the last name, ``()`` after callables)."""
    explicit = re.fullmatch(r"(?P<text>.+?)\s*<(?P<target>[^>]+)>", body)
    target = (explicit["target"] if explicit else body).lstrip("~!")
    if explicit:
        text = explicit["text"]
    else:
        text = target.rsplit(".", 1)[-1] if body.startswith("~") else target
        if role in CALLABLE_ROLES:
            text += "()"
    label = text if role in {"doc", "ref"} else f"`{text}`"
    url = resolve(role, target)
    return f"[{label}]({url})" if url else label


def notebook_links(text: str, resolve: Resolve) -> str:
    """The notebook with the roles in its Markdown cells turned into Markdown."""
    notebook = json.loads(text)
    changed = False
    for cell in notebook["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        source = "".join(cell["source"])
        markdown = ROLE.sub(
            lambda match: markdown_role(match["role"], match["body"], resolve), source
        )
        if markdown != source:
            cell["source"] = markdown
            changed = True
    if not changed:
        return text
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def site_resolver(app: Sphinx) -> Resolve:
    """Absolute URLs on the published site (``html_baseurl``) for roles' targets:
    this site's own objects and pages, else the linked docs (intersphinx)."""
    base = app.config.html_baseurl.rstrip("/") + "/"
    objects = app.env.get_domain("py").objects  # type: ignore[attr-defined]
    from sphinx.ext.intersphinx import InventoryAdapter  # noqa: PLC0415

    inventory = InventoryAdapter(app.env).main_inventory

    def resolve(role: str, target: str) -> str | None:
        if role == "doc":
            return f"{base}{target.lstrip('/')}.html"
        if target in objects:
            entry = objects[target]
            return f"{base}{entry.docname}.html#{entry.node_id}"
        for kind, entries in inventory.items():
            if kind.startswith("py:") and target in entries:
                return str(entries[target].uri)
        return None

    return resolve


def _clean(
    name: str,
    data: bytes,
    install: dict[str, Any],
    users: set[str],
    resolve: Resolve | None = None,
) -> bytes:
    stem, _, suffix = name.rpartition(".")
    if suffix == "py":
        return reader_script(data.decode(), name).encode()
    if suffix == "ipynb":
        text = data.decode()
        if resolve is not None:
            text = notebook_links(text, resolve)
        if Path(stem).name in users:
            text = reader_notebook(text, install)
        return text.encode()
    return data


def _clean_zip(
    data: bytes, install: dict[str, Any], users: set[str], resolve: Resolve
) -> bytes:
    """Each member cleaned; written with build_guard's fixed order and timestamps."""
    from build_guard import deterministic_zip_bytes, zip_epoch  # noqa: PLC0415

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = [
            (
                info.filename,
                _clean(info.filename, archive.read(info), install, users, resolve),
            )
            for info in archive.infolist()
        ]
    return deterministic_zip_bytes(members, zip_epoch())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _reader_copy(
    name: str,
    data: bytes,
    install: dict[str, Any],
    users: set[str],
    resolve: Resolve,
) -> tuple[bytes, dict[str, str | None]]:
    """What a reader downloads for this file, and the links resolved on the way
    (``{"func pytorch_buffers.inventory": url}``)."""
    lookups: dict[str, str | None] = {}

    def recorded(role: str, target: str) -> str | None:
        lookups[f"{role} {target}"] = url = resolve(role, target)
        return url

    if name.endswith(".zip"):
        return _clean_zip(data, install, users, recorded), lookups
    return _clean(name, data, install, users, recorded), lookups


def _reusable(
    entry: dict[str, Any] | None, copied: bytes, previous: Path, resolve: Resolve
) -> bytes | None:
    """The last good site's copy, when it was made from these bytes, with links
    that still resolve as they did; else ``None``."""
    try:
        if entry["copied"] != _sha256(copied) or not previous.is_file():
            return None
        data = previous.read_bytes()
        if _sha256(data) != entry["published"]:
            return None
        for lookup, url in entry["lookups"].items():
            if resolve(*lookup.split(" ", 1)) != url:
                return None
    except (TypeError, KeyError, AttributeError, ValueError):  # not a memo entry
        return None
    return data


def _cleaning_context(install: dict[str, Any], users: set[str]) -> str:
    """What a cleaned file depends on besides its own bytes and links: the install
    cell, the chapters that import the library, and the code that cleans (this
    module, build_guard's zip writer, sphinx-gallery's hidden-block remover)."""
    import sphinx_gallery  # noqa: PLC0415

    code = [Path(__file__), Path(__file__).with_name("build_guard.py")]
    digest = hashlib.sha256(json.dumps([install, sorted(users)]).encode())
    digest.update(sphinx_gallery.__version__.encode())
    for path in code:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def clean_downloads(app: Sphinx, exception: Exception | None) -> None:
    """Rewrite the published scripts, notebooks and zips for readers."""
    if exception is not None or app.builder.format != "html":
        return
    from gallery_hooks import imports_library  # noqa: PLC0415
    from library_wheel import wheel_url  # noqa: PLC0415

    install = install_cell(wheel_url())
    examples = Path(app.srcdir).parent / "examples"
    users = {path.stem for path in examples.glob("*.py") if imports_library(path)}
    out = Path(app.outdir)
    # build_guard's last good site: its copies are already clean.
    previous_site = Path(getattr(app, "guide_published", out))
    resolve = site_resolver(app)
    memo_path = Path(app.doctreedir) / MEMO
    context = _cleaning_context(install, users)
    try:
        memo = json.loads(memo_path.read_text())
        recorded = memo["files"] if memo["context"] == context else {}
    except (OSError, ValueError, TypeError, KeyError):
        recorded = {}  # none yet, or not one this module wrote: clean every file
    if not isinstance(recorded, dict):
        recorded = {}
    files = {}
    reused = 0
    for path in sorted(
        [*out.glob("_downloads/*/*.py"), *out.glob("_downloads/*/*.ipynb"),
         *out.glob("notebooks/*.ipynb"), *out.glob("_downloads/*/*.zip")]
    ):  # fmt: skip
        name = path.relative_to(out).as_posix()
        copied = path.read_bytes()
        data = _reusable(recorded.get(name), copied, previous_site / name, resolve)
        if data is not None:
            lookups = recorded[name]["lookups"]
            reused += 1
        else:
            data, lookups = _reader_copy(path.name, copied, install, users, resolve)
        if data != copied:
            path.write_bytes(data)
        files[name] = {
            "copied": _sha256(copied), "published": _sha256(data), "lookups": lookups
        }  # fmt: skip
    memo_path.write_text(json.dumps({"context": context, "files": files}, indent=1))
    logger.info(
        "reader downloads: %d cleaned, %d as the last good site had them",
        len(files) - reused,
        reused,
    )


def setup(app: Sphinx) -> dict[str, Any]:
    # After site_links copies the notebooks into notebooks/ (default priority 500),
    # before build_guard publishes the staging folder (1000).
    app.connect("build-finished", clean_downloads, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
