"""Draw the gallery thumbnails: the chapters that print text still get a picture.

Each shows a causal mask and the chapter's key API on a mid-dark background
that reads on both the light and the dark theme. Files are only rewritten when
their bytes change, so a live-reload server does not see new files on each run.

As a Sphinx extension it also gives the gallery's cards their chapter numbers,
and the chapters that plot (6, 10) a drawn thumbnail: their figure, scaled down
to a card, had text too small to read.
"""

from __future__ import annotations

import hashlib
import html
import io
import re
from pathlib import Path
from typing import Any

BACKGROUND = "#24324a"
CELL_OFF = "#3b4d6b"
TEXT = "#f4f6fa"

# chapter file stem -> (label, accent colour)
THUMBNAILS = {
    "01_mask_left_behind": ("self.mask = ...", "#f28e2b"),
    "02_register_buffer": ("register_buffer", "#59a14f"),
    "03_state_dict": ("state_dict()", "#4e9ee6"),
    "04_find_the_stray": ("find_strays()", "#b07aa1"),
    "05_non_persistent_buffers": ("persistent=False", "#76b7b2"),
    "06_dtypes_and_memory": ("float32 vs bool", "#ff9d4d"),
    "07_batchnorm_and_optimizer": ("running_mean", "#edc948"),
    "08_llm_caches": ("k_cache, v_cache", "#ff9da7"),
    "09_ddp_buffers": ("forward_sync_buffers", "#9c755f"),
    "10_mask_cost": ("is_causal=True", "#79c7e3"),
    "11_evolving_buffers": ("_version", "#e15759"),
    "12_meta_init": ("to_empty()", "#8cd17d"),
    "13_compile_and_export": ("torch.compile", "#f1ce63"),
    "14_averaged_models": ("update_bn()", "#86bcb6"),
    "15_fsdp2_buffers": ("fully_shard", "#d37295"),
    "16_functional_buffers": ("functional_call", "#a0cbe8"),
    "17_checkpointing_and_batchnorm": ("checkpoint()", "#ff9d9a"),
    "18_accumulation_and_batchnorm": ("micro-batches", "#79706e"),
    "19_buffers_with_history": ("buffer.grad_fn", "#bab0ac"),
    "20_ensembles_with_torch_func": ("stack_module_state", "#d4a6c8"),
    "21_distributed_checkpoints": ("dcp.load", "#4e79a7"),
    "22_accelerate_big_models": ("init_empty_weights", "#f28e2b"),
}


def _draw(label: str, accent: str) -> bytes:
    # Imported only when a thumbnail is drawn: most rebuilds never need matplotlib.
    import matplotlib as mpl  # noqa: PLC0415

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.patches import Rectangle  # noqa: PLC0415

    fig = plt.figure(figsize=(4, 2.8), dpi=100, facecolor=BACKGROUND)
    grid = fig.add_axes((0.3, 0.34, 0.4, 0.6))
    size = 6
    for row in range(size):
        for col in range(size):
            colour = accent if col > row else CELL_OFF
            grid.add_patch(Rectangle((col, size - 1 - row), 0.88, 0.88, color=colour))
    grid.set_xlim(-0.1, size)
    grid.set_ylim(-0.1, size)
    grid.set_aspect("equal")
    grid.axis("off")
    fig.text(
        0.5, 0.13, label, color=TEXT, fontsize=24, family="monospace",
        weight="bold", ha="center", va="center",
    )  # fmt: skip
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor=BACKGROUND, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def write_thumbnails(folder: Path) -> None:
    """Write ``<chapter stem>.png`` for every chapter into ``folder``.

    Skipped when the thumbnails were drawn by this very file already, so an
    unchanged rebuild does not import matplotlib.
    """
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / "drawn-by.md5"
    source = hashlib.md5(Path(__file__).read_bytes(), usedforsecurity=False).hexdigest()
    pngs = [folder / f"{stem}.png" for stem in THUMBNAILS]
    if stamp.exists() and stamp.read_text() == source and all(p.exists() for p in pngs):
        return
    for stem, (label, accent) in THUMBNAILS.items():
        png = _draw(label, accent)
        path = folder / f"{stem}.png"
        if not path.exists() or path.read_bytes() != png:
            path.write_bytes(png)
    stamp.write_text(source)


# Chapters whose thumbnail sphinx-gallery makes from a plot: the drawn one replaces it.
PLOT_CHAPTERS = ("06_dtypes_and_memory", "10_mask_cost")


def replace_plot_thumbnails(app: Any) -> None:
    """Put the drawn thumbnail where sphinx-gallery wrote the plot's (after it ran).

    Written only when the bytes differ, so an unchanged rebuild touches nothing.
    """
    drawn = Path(app.srcdir) / "_thumbnails"
    thumbs = Path(app.srcdir) / "auto_examples" / "images" / "thumb"
    for stem in PLOT_CHAPTERS:
        source = drawn / f"{stem}.png"
        target = thumbs / f"sphx_glr_{stem}_thumb.png"
        if source.is_file() and target.is_file():
            data = source.read_bytes()
            if target.read_bytes() != data:
                target.write_bytes(data)


CARD = re.compile(
    r"(:doc:`/auto_examples/(\d\d)_\w+`\s*\n\s*\n\.\. raw:: html\s*\n\s*\n"
    r"\s*<div class=\"sphx-glr-thumbnail-title\">)"
)


def number_cards(app: Any, docname: str, source: list[str]) -> None:  # noqa: ARG001
    """Each card of the chapters' index starts its title with the chapter's number.

    Done on the text Sphinx reads, not the file sphinx-gallery wrote, so the file
    (and its time) stays as sphinx-gallery left it.
    """
    if docname != "auto_examples/index":
        return
    source[0] = CARD.sub(
        lambda match: (
            f'{match[1]}<span class="guide-card-number">'
            f"{html.escape(str(int(match[2])))}.</span> "
        ),
        source[0],
    )


def setup(app: Any) -> dict[str, Any]:
    # After sphinx-gallery's own builder-inited handler has run the chapters.
    app.connect("builder-inited", replace_plot_thumbnails, priority=900)
    app.connect("source-read", number_cards)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
