"""Highlight the code cells of MyST-NB pages that a preview build does not run.

MyST-NB takes a code cell's lexer from the notebook's ``language_info``, which the
kernel writes when it runs the page; the pages' front matter names only the kernel
(``kernelspec: name: python3``). A preview (``nb_execution_mode = "off"``) runs no
kernel, so every code cell warned "No source code lexer found" and ``-W`` failed the
build. This falls back to the language that the named kernel declares in its
kernelspec (read from disk; no kernel starts), as the executed page would have had.
"""

from __future__ import annotations

import functools
from typing import Any

from sphinx.application import Sphinx


@functools.cache
def kernel_language(name: str) -> str | None:
    """The language a kernelspec declares (``python3`` -> ``python``), or ``None``."""
    from jupyter_client.kernelspec import (  # noqa: PLC0415
        KernelSpecManager,
        NoSuchKernel,
    )

    try:
        return str(KernelSpecManager().get_kernel_spec(name).language) or None
    except NoSuchKernel:
        return None


def install_fallback() -> None:
    """Make MyST-NB's lexer lookup fall back to the kernelspec's language."""
    from myst_nb.core.execute.base import NotebookClientBase  # noqa: PLC0415

    original = NotebookClientBase.nb_source_code_lexer
    if getattr(original, "guide_fallback", False):
        return

    def nb_source_code_lexer(self: NotebookClientBase) -> str | None:
        lexer = original(self)
        if lexer is None:
            kernelspec = self.notebook.get("metadata", {}).get("kernelspec") or {}
            lexer = kernel_language(kernelspec.get("name", ""))
        return lexer

    nb_source_code_lexer.guide_fallback = True  # type: ignore[attr-defined]
    NotebookClientBase.nb_source_code_lexer = nb_source_code_lexer  # type: ignore[method-assign]


def setup(app: Sphinx) -> dict[str, Any]:  # noqa: ARG001
    install_fallback()
    return {"parallel_read_safe": True, "parallel_write_safe": True}
