"""Which torch versions each chapter ran clean on, from recorded runs (issue 19).

The tests (``run_chapter`` in ``tests/conftest.py``) record each chapter's output,
as run on the CPU, in ``docs/_build/recorded-runs/torch-<version>-<device>/<stem>.txt``:
``nox -s tests`` leaves one folder (the pinned torch), ``nox -s tests_newest``
another (the newest torch tested). Nothing here is written by hand:

* each chapter page gets one line, in the note at its top: the torches whose
  recorded runs hold that chapter, and what produced this page's output (this build);
* the ``torch-version-differences`` directive (``docs/torch_versions.md``) lists,
  per chapter, the output lines that differ between the oldest and the newest
  recorded torch, with the lines that print measurements masked.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docutils import nodes
from packaging.version import InvalidVersion, Version
from sphinx import addnodes
from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parents[2]
# Last on the path: benchmarks/build.py must never shadow an installed ``build``.
sys.path.append(str(ROOT / "benchmarks"))
from reproducible import TIMING, UNINITIALISED

RECORDED = ROOT / "docs" / "_build" / "recorded-runs"
FOLDER = re.compile(r"torch-(?P<version>.+)-(?P<device>[a-z]+)")
CHAPTER = re.compile(r"auto_examples/(?P<stem>\d\d_\w+)")
PAGE = "torch_versions"
WIDTH = 100  # no output line on the site is wider


@dataclass(frozen=True)
class Recording:
    """One recorded run of the chapters: a folder of ``<stem>.txt`` files."""

    folder: Path
    torch: str
    device: str

    @property
    def label(self) -> str:
        """``torch 2.14.1 on CPU``."""
        return f"torch {self.torch} on {self.device.upper()}"

    def sort_key(self) -> tuple[Version, str]:
        try:
            return Version(self.torch), self.device
        except InvalidVersion:
            return Version("0"), self.torch + self.device

    def output(self, stem: str) -> list[str] | None:
        """The chapter's recorded output lines, or ``None`` where it was not run,
        or was run from another version of its source (the fingerprint differs)."""
        path = self.folder / f"{stem}.txt"
        fingerprint = path.with_suffix(".sha256")
        if fingerprint.is_file() and fingerprint.read_text() != source_hash(stem):
            return None
        return path.read_text().splitlines() if path.is_file() else None


def source_hash(stem: str) -> str:
    """The chapter's source as ``record_run`` fingerprints it ("" when absent)."""
    source = ROOT / "examples" / f"{stem}.py"
    return hashlib.sha256(source.read_bytes()).hexdigest() if source.is_file() else ""


def recordings(folder: Path = RECORDED) -> list[Recording]:
    """The recorded runs, oldest torch first."""
    found = []
    for path in sorted(folder.glob("torch-*")) if folder.is_dir() else []:
        if path.is_dir() and (match := FOLDER.fullmatch(path.name)):
            found.append(Recording(path, match["version"], match["device"]))
    return sorted(found, key=Recording.sort_key)


def digest(runs: list[Recording], this_build: str) -> str:
    """Changes whenever a recording or this build's producer does."""
    sha = hashlib.sha256(this_build.encode())
    for run in runs:
        for path in sorted(run.folder.glob("*.txt")):
            sha.update(f"{run.folder.name}/{path.name}\0".encode())
            sha.update(path.read_bytes())
            # An edited chapter makes its recordings stale: read the pages again.
            sha.update(f"{run.output(path.stem) is not None}\0".encode())
    return sha.hexdigest()


def ran_clean_line(stem: str, runs: list[Recording], this_build: str) -> str:
    """``Ran clean on: torch 2.13.0 on CPU, torch 2.14.1 on CPU (recorded test runs)
    and cpu with torch 2.13.0 (this build, which produced this page's output).``"""
    tested = ", ".join(run.label for run in runs if run.output(stem) is not None)
    built = f"{this_build} (this build, which produced this page's output)"
    if tested and this_build:
        return f"Ran clean on: {tested} (recorded test runs) and {built}."
    if tested:
        return f"Ran clean on: {tested} (recorded test runs); this preview ran no code."
    if this_build:
        return f"Ran clean on: {built}; no recorded test run."
    return "No recorded test run; this preview ran no code."


def masked(lines: list[str]) -> list[str]:
    """Lines as compared: a line that prints a measurement (a time, uninitialised
    memory) may differ from run to run, and so may the indented lines that continue
    it (a wrapped message, the values listed under it): one ``<a measurement>``."""
    result: list[str] = []
    measuring = False
    for line in lines:
        if TIMING.search(line) or UNINITIALISED.search(line):
            result.append("<a measurement>")
            measuring = True
        elif not (measuring and line[:1].isspace()):
            result.append(line.rstrip())
            measuring = False
    return result


def without_version(lines: list[str], torch: str) -> list[str]:
    """The run's own torch version, where a line prints it, as ``<this torch>``:
    every chapter names its torch, which is no difference in what it shows."""
    return [line.replace(torch, "<this torch>") for line in lines]


def wrapped(line: str) -> list[str]:
    """A diff line in pieces of at most ``WIDTH`` columns; each continuation keeps
    the line's ``+``/``-`` mark, so it stays coloured as the line it continues."""
    if len(line) <= WIDTH:
        return [line]
    return textwrap.wrap(
        line,
        WIDTH,
        subsequent_indent=f"{line[0]}    ",
        replace_whitespace=False,
        drop_whitespace=False,
        break_on_hyphens=False,
    )


def differences(
    old: list[str], new: list[str], old_label: str, new_label: str
) -> list[str]:
    """The unified diff (no context) of two outputs, wrapped to ``WIDTH``."""
    diff = difflib.unified_diff(
        masked(old), masked(new), old_label, new_label, n=0, lineterm=""
    )
    return [piece for line in diff for piece in wrapped(line)]


def chapter_stem(docname: str) -> str | None:
    match = CHAPTER.fullmatch(docname)
    return match["stem"] if match else None


def this_build(app: Any) -> str:
    return str(app.config.guide_outputs_made_with or "")


def mark_outdated(app: Any, env: Any, *_: Any) -> list[str]:
    """Re-read the chapter pages and the differences page when a recording changed
    (only then: a no-op rebuild writes no page)."""
    key = digest(recordings(), this_build(app))
    if getattr(env, "guide_recorded_runs", None) == key:
        return []
    env.guide_recorded_runs = key
    return sorted(
        docname
        for docname in env.found_docs
        if chapter_stem(docname) or docname == PAGE
    )


def add_ran_clean_line(app: Any, doctree: nodes.document) -> None:
    """One line in the note at the top of a chapter page (beside sphinx-gallery's
    download note, so the page's description stays its intro)."""
    docname = app.env.docname
    stem = chapter_stem(docname)
    if stem is None:
        return
    paragraph = nodes.paragraph(classes=["guide-ran-clean"])
    paragraph += nodes.Text(ran_clean_line(stem, recordings(), this_build(app)) + " ")
    if PAGE in app.env.found_docs:
        paragraph += _doc_link(docname, PAGE, "What changes between torch versions")
    note = next(
        (
            node
            for node in doctree.findall(nodes.note)
            if "sphx-glr-download-link-note" in node["classes"]
        ),
        None,
    )
    if note is not None:
        note += paragraph
        return
    section = next(doctree.findall(nodes.section), None)
    if section is None:
        return
    box = nodes.note("", paragraph)
    section.insert(1 if section.children else 0, box)


def _doc_link(fromdoc: str, target: str, text: str | None = None) -> nodes.Node:
    return addnodes.pending_xref(
        "",
        nodes.inline("", text or target),
        refdomain="std",
        reftype="doc",
        reftarget="/" + target,
        refexplicit=text is not None,
        refdoc=fromdoc,
        refwarn=True,
    )


class TorchVersionDifferences(SphinxDirective):
    """Per chapter: the output lines that differ between the oldest and the newest
    recorded torch (``docs/torch_versions.md``)."""

    def run(self) -> list[nodes.Node]:
        runs = recordings()
        result: list[nodes.Node] = []
        intro = nodes.paragraph()
        if runs:
            names = ", ".join(f"{run.label} in {run.folder.name}" for run in runs)
            intro += nodes.Text(f"Recorded runs found by this build: {names}.")
        else:
            intro += nodes.Text(
                "This build found no recorded runs: run nox -s tests and "
                "nox -s tests_newest before nox -s docs."
            )
        result.append(intro)
        stems = sorted(
            stem for docname in self.env.found_docs if (stem := chapter_stem(docname))
        )
        for stem in stems:
            present = [run for run in runs if run.output(stem) is not None]
            torches = {run.torch for run in present}
            paragraph = nodes.paragraph()
            paragraph += _doc_link(self.env.docname, f"auto_examples/{stem}")
            paragraph += nodes.Text(": ")
            if len(torches) < 2:
                paragraph += nodes.Text(
                    f"only one torch recorded ({present[0].label})."
                    if present
                    else "no torch recorded."
                )
                result.append(paragraph)
                continue
            old, new = present[0], present[-1]
            lines = differences(
                without_version(old.output(stem) or [], old.torch),
                without_version(new.output(stem) or [], new.torch),
                old.label,
                new.label,
            )
            if not lines:
                paragraph += nodes.Text(
                    f"no difference between {old.label} and {new.label}."
                )
                result.append(paragraph)
                continue
            paragraph += nodes.Text(
                f"lines that differ between {old.label} (-) and {new.label} (+):"
            )
            text = "\n".join(lines)
            block = nodes.literal_block(text, text, classes=["guide-torch-diff"])
            block["language"] = "diff"
            result += [paragraph, block]
        return result


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("torch-version-differences", TorchVersionDifferences)
    app.connect("env-get-outdated", mark_outdated)
    app.connect("doctree-read", add_ran_clean_line)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
