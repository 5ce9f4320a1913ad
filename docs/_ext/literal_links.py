"""Link inline code that names a torch or Python API to its official documentation.

Prose writes ``register_buffer`` or ``torch.load`` as inline code; this turns
each such literal into a cross-reference when its text names an entry of the
intersphinx inventories shipped in ``docs/_inventories``. Only exact names
count: the text up to its first parenthesis, without a leading dot or a
``self.``/``module.``/``model.`` receiver, must be an inventory name, that name
without ``torch.`` (for ``torch.nn``), or the bare name of an ``nn.Module``,
``Tensor`` or functional method; nothing is linked by guess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.transforms.post_transforms import SphinxPostTransform

INVENTORIES = Path(__file__).resolve().parent.parent / "_inventories"
# Bare method names are linked only for these owners. Where two share a name
# (``to``), the first listed wins: in this guide's prose it means nn.Module's.
METHOD_OWNERS = ("torch.nn.Module.", "torch.Tensor.", "torch.nn.functional.")
# Receivers prose writes before a method: ``self.register_buffer(...)``.
RECEIVERS = ("self.", "module.", "model.")


def aliases() -> dict[str, str]:
    """Inline-code spellings -> full names from the shipped inventories."""
    table: dict[str, str] = {}
    for source in sorted(INVENTORIES.glob("*.txt")):
        for line in source.read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            name = line.split()[0]
            if name.startswith("torch.nn.modules."):
                continue
            table.setdefault(name, name)
            if name.startswith("torch.nn."):
                table.setdefault(name.removeprefix("torch."), name)
            if name.startswith("torch.nn.functional."):
                table.setdefault("F." + name.removeprefix("torch.nn.functional."), name)
            for owner in METHOD_OWNERS:
                if name.startswith(owner):
                    table.setdefault(name.removeprefix(owner), name)
    return table


class LinkLiterals(SphinxPostTransform):
    default_priority = 5  # before the references are resolved (priority 10)

    def run(self, **kwargs: Any) -> None:  # noqa: ARG002 (Sphinx's signature)
        table = self.env.app.guide_literal_aliases  # type: ignore[attr-defined]
        for literal in list(self.document.findall(nodes.literal)):
            if isinstance(literal.parent, (nodes.reference, addnodes.pending_xref)):
                continue
            key = literal.astext().strip().split("(", 1)[0].removeprefix(".")
            for receiver in RECEIVERS:
                key = key.removeprefix(receiver)
            target = table.get(key)
            if target is None:
                continue
            xref = addnodes.pending_xref(
                "", refdomain="py", reftype="obj", reftarget=target,
                refexplicit=True, refwarn=True,
            )  # fmt: skip
            literal.replace_self(xref)
            xref += literal


def setup(app: Sphinx) -> dict[str, Any]:
    app.guide_literal_aliases = aliases()  # type: ignore[attr-defined]
    app.add_post_transform(LinkLiterals)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
