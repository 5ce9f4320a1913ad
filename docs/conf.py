"""Sphinx configuration for the PyTorch Buffers guide."""

from __future__ import annotations

import logging
import os
import sys
import tomllib
import warnings
from pathlib import Path

DOCS = Path(__file__).parent
sys.path.insert(0, str(DOCS / "_ext"))

from build_guard import hold_build_lock
from build_info import build_line, outputs_made_with
from gallery_hooks import (
    parse_each_chapter_once,
    rerun_chapters_when_library_changes,
    run_time_limit,
)
from offline_inventories import write_inventory
from thumbnails import write_thumbnails

# GUIDE_PREVIEW=1 renders every page without running any code, for proofreading;
# nox -s docs -- --preview builds it into its own folder, never the published one.
PREVIEW = os.environ.get("GUIDE_PREVIEW") == "1"
# Before anything is written: a second build in this clone stops here, at once.
hold_build_lock(DOCS / "_build")

# -- Log: progress and problems, not configuration dumps -----------------------
for _logger, _needle in [
    ("sphinx.myst_parser.sphinx_ext.main", "myst v%s:"),  # its whole MdParserConfig
    ("sphinx.myst_nb.sphinx_ext", "myst-nb v%s:"),  # its whole NbParserConfig
    ("traitlets", "Executing notebook with kernel"),  # myst-nb says it already
]:
    logging.getLogger(_logger).addFilter(
        lambda record, needle=_needle: needle not in str(record.msg)
    )

# -- Project ------------------------------------------------------------------
PYPROJECT = tomllib.loads((DOCS.parent / "pyproject.toml").read_text())
guide_repository = PYPROJECT["project"]["urls"]["Repository"]  # the one setting
_owner, _repo = guide_repository.removeprefix("https://github.com/").split("/")
SITE_URL = f"https://{_owner}.github.io/{_repo}/"  # where GitHub Pages serves it
project = "PyTorch Buffers"
author = "The PyTorch Buffers guide authors"
copyright = "2026, the PyTorch Buffers guide authors"

# -- General ------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
    "sphinx_gallery.gen_gallery",
    "myst_nb",
    "sphinx.ext.githubpages",
    "sphinx_copybutton",
    "notfound.extension",
    "site_links",
    "literal_links",
    "reader_downloads",
    "library_wheel",  # the library's wheel, shipped with the site
    "thumbnails",  # chapter numbers on the gallery's cards, legible plot thumbnails
    "recorded_runs",  # torch versions each chapter ran clean on (tests' recordings)
    "build_guard",  # staging, interrupted builds, device/torch changes (see module)
]
templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "jupyter_execute",
    "**.ipynb_checkpoints",
    # sphinx-gallery writes notebooks next to its pages; myst-nb must not
    # read them as a second source for the same page.
    "auto_examples/*.ipynb",
]
nitpicky = True
myst_enable_extensions = ["colon_fence", "deflist"]
# -- Links into PyTorch's and Python's docs, from inventories shipped here ------
INVENTORIES = DOCS / "_build" / "inventories"
intersphinx_mapping = {
    "torch": (
        "https://docs.pytorch.org/docs/stable/",
        str(
            write_inventory(
                DOCS / "_inventories/torch.txt", INVENTORIES / "torch.inv", "PyTorch"
            )
        ),
    ),
    "python": (
        "https://docs.python.org/3/",
        str(
            write_inventory(
                DOCS / "_inventories/python.txt", INVENTORIES / "python.inv", "Python"
            )
        ),
    ),
}
intersphinx_timeout = 1

# -- API reference --------------------------------------------------------------
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
python_use_unqualified_type_names = True

# -- MyST-NB --------------------------------------------------------------------
nb_execution_mode = "off" if PREVIEW else "cache"
nb_execution_raise_on_error = True
# GUIDE_TIMEOUT bounds a page's run: the kernel raises TimeoutError in the stuck
# cell (kernel_time_limit.py); nbclient's per-cell timeout is only a backstop.
os.environ["PYTHONSTARTUP"] = str(DOCS / "_ext" / "kernel_time_limit.py")
nb_execution_timeout = run_time_limit() + 60
# The kernels get an IPython profile of their own under _build, whose one setting
# silences ipykernel's warning about TCP on loopback (errors still show).
KERNEL_PROFILE = DOCS / "_build" / "ipython" / "profile_default"
KERNEL_PROFILE.mkdir(parents=True, exist_ok=True)
(KERNEL_PROFILE / "ipython_kernel_config.py").write_text(
    'c.IPKernelApp.log_level = "ERROR"\n'
)
os.environ["IPYTHONDIR"] = str(KERNEL_PROFILE.parent)
nb_execution_show_tb = True  # a failing cell's traceback, with its claim, in the log
nb_render_markdown_format = "myst"  # so the cheat sheet's generated table renders

if PREVIEW:
    # Code cells that no kernel ran: their lexer from the kernelspec's language.
    extensions.append("preview_lexer")

# -- Gallery ------------------------------------------------------------------
# torch.compile's inductor caches its kernels under the build folder (chapter 13),
# not in a /tmp/torchinductor_<user> shared by every checkout; nox -s docs sets it
# too, and a value set by the caller wins.
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR", str((DOCS / "_build" / "torchinductor").resolve())
)
if PREVIEW:
    # The preview's pages replace the executed ones in auto_examples/; forget the
    # executed state so the next real build runs every chapter again.
    for stamp in (DOCS / "auto_examples").glob("*.md5"):
        stamp.unlink()
write_thumbnails(DOCS / "_thumbnails")
rerun_chapters_when_library_changes(
    examples=DOCS.parent / "examples",
    gallery=DOCS / "auto_examples",
    library=DOCS.parent / "src" / "pytorch_buffers",
    stamp=DOCS / "_build" / "library.md5",
    notebook_cache=DOCS / "_build" / ".jupyter_cache",
)
# sphinx-gallery links ``x.grad`` by reading it from a chapter's globals; torch
# warns at that read when ``x`` is a non-leaf tensor, as chapter 7 shows one.
warnings.filterwarnings(
    "ignore",
    message="The .grad attribute of a Tensor that is not a leaf Tensor",
    category=UserWarning,
    module="sphinx_gallery.backreferences",
)
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/\d\d_",
    "within_subsection_order": "FileNameSortKey",
    "image_scrapers": ("gallery_hooks.matplotlib_scraper",),
    # Dotted names: a function object in the config would fail -W (unpicklable).
    "reset_modules": (
        "matplotlib",
        "gallery_hooks.reset_torch",
        "gallery_hooks.chapter_guard",  # GUIDE_TIMEOUT; re-run after a failed run
    ),
    "reset_modules_order": "both",
    "remove_config_comments": True,
    "download_all_examples": True,
    "capture_repr": ("_repr_html_", "__repr__"),
    # torch.manual_seed returns a Generator; its repr (an address) is noise.
    "ignore_repr_types": r"Generator",
    "thumbnail_size": (400, 280),
    "first_notebook_cell": (
        "# Needs PyTorch: `pip install torch` (see the guide's README for CPU or "
        "CUDA builds)."
    ),
    "min_reported_time": 0,
    # A failed chapter is a warning (failing -W) and build_guard closes the log with
    # its file and line, instead of an "Extension error!" crash report.
    "only_warn_on_example_error": True,
    # Its summary pages load DataTables from a CDN; each chapter shows its own time.
    "write_computation_times": False,
    "plot_gallery": not PREVIEW,
    "doc_module": ("pytorch_buffers",),
    "backreferences_dir": "gen_modules/backreferences",
    "prefer_full_module": {"pytorch_buffers"},
}
parse_each_chapter_once(
    examples=DOCS.parent / "examples",
    gallery=DOCS / "auto_examples",
    store=DOCS / "_build" / "gallery-parses.pickle",
    gallery_conf=sphinx_gallery_conf,
)

# What the banner names as the producer of the outputs; when it changes, every
# chapter and the cheat sheet run again (build_guard).
guide_outputs_made_with = (
    "" if PREVIEW else outputs_made_with(DOCS / "_build" / "build-info.json")
)

# -- HTML ---------------------------------------------------------------------
html_theme = "furo"
html_title = "PyTorch Buffers"
html_static_path = ["_static"]
html_css_files = ["guide.css"]
html_js_files = ["guide.js"]
html_theme_options = {
    "announcement": (
        "PREVIEW: no code on these pages was executed and outputs are missing; "
        "never publish this build."
        if PREVIEW
        else build_line(DOCS / "_build" / "build-info.json")
    ),
}
html_show_sourcelink = False
html_favicon = "_static/favicon.svg"
html_baseurl = SITE_URL
notfound_urls_prefix = "/" + _repo + "/"

# -- Copy buttons: code only, never prompts or printed output -------------------
copybutton_selector = (
    "div.highlight pre:not(.sphx-glr-script-out pre):not(.cell_output pre)"
)
copybutton_prompt_text = r"\$ |>>> |\.\.\. "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = False
