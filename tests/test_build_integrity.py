"""The docs build under faults: failed chapters, hangs, Ctrl-C, a new device or torch,
two builds at once, and the reproducibility check (issue 9).

Each scenario drives the real ``conf.py`` and extensions with ``sphinx-build`` on a
tiny scratch site (two short chapters and a small MyST-NB page, see
``benchmarks/scratch_site.tiny_site``), so it takes seconds. They need the docs
dependencies: ``nox -s build_checks`` runs them (``nox -s tests`` skips them).
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

pytest.importorskip(
    "sphinx_gallery", reason="needs the docs dependencies: nox -s build_checks"
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

import build_info
from build_guard import _is_deterministic as is_deterministic
from build_guard import deterministic_zip
from gallery_hooks import imports_library
from reproducible import compare_sites
from scratch_site import build_env, sphinx_command, tiny_site


def chapter(title: str, body: str = "") -> str:
    """A sphinx-gallery chapter that prints its title and ``TINY_STAMP``."""
    return (
        f'r"""\n{title}\n{"=" * len(title)}\n\nA tiny chapter.\n"""\n\n# %%\n'
        f"import os\n\n"
        f'print("{title}: stamp", os.environ.get("TINY_STAMP", "none"))\n'
        'cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "unset")\n'
        'print("inductor cache: ...", *cache.split(os.sep)[-3:], sep="/")\n'
        f"{body}"
    )


SHEET = """---
file_format: mystnb
kernelspec:
  name: python3
  display_name: Python 3
---

# A sheet

```{code-cell} ipython3
import os

print("sheet: stamp", os.environ.get("TINY_STAMP", "none"))
```
"""
PAGES = {"sheet.md": SHEET} | {
    f"page{n}.md": f"# Page {n}\n\nThe word lantern{n} is on this page.\n"
    for n in range(6)
}
# Makes writing slow enough to interrupt at a known moment (SLOW_WRITE=seconds).
SLOW_WRITER = """
import os, time

def slow(app, pagename, *args):
    if os.environ.get("SLOW_WRITE"):
        print("writing page", pagename, flush=True)
        time.sleep(float(os.environ["SLOW_WRITE"]))

def setup(app):
    app.connect("html-page-context", slow)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
"""


def make_site(folder: Path) -> Path:
    site = tiny_site(
        folder,
        {"01_first.py": chapter("First"), "02_second.py": chapter("Second")},
        PAGES,
    )
    (site / "docs" / "_ext" / "slow_writer.py").write_text(SLOW_WRITER)
    conf = site / "docs" / "conf.py"
    conf.write_text(conf.read_text() + '\nextensions.append("slow_writer")\n')
    return site


def run_build(
    site: Path, command: list[str] | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    # As a plain sphinx-build would run in a fresh shell: no inductor cache chosen.
    inherited = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    return subprocess.run(
        command or sphinx_command(site),
        cwd=site,
        env={**inherited, **build_env(), **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def published(site: Path) -> Path:
    return site / "docs" / "_build" / "html"


def page(site: Path, name: str) -> str:
    return (published(site) / f"{name}.html").read_text()


def digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# Another process holding the folder's build lock, as a running build does.
HOLD_LOCK = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from build_guard import hold_build_lock
hold_build_lock(Path(sys.argv[2]))
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny site, built once; each scenario leaves it built and good."""
    folder = make_site(tmp_path_factory.mktemp("tiny") / "repo")
    # Not quiet: test_first_build_says_so reads its log.
    verbose = [arg for arg in sphinx_command(folder) if arg != "-q"]
    result = run_build(folder, verbose, TINY_STAMP="one")
    assert result.returncode == 0, result.stdout + result.stderr
    (folder / "first-build.log").write_text(result.stdout + result.stderr)
    return folder


def html_pages(site: Path) -> dict[str, int]:
    """The published pages made from a source (not Sphinx's index and search
    pages, which it writes on every build), with their modification times."""
    always = {"genindex.html", "search.html", "py-modindex.html", "404.html"}
    return {
        str(path.relative_to(published(site))): path.stat().st_mtime_ns
        for path in published(site).rglob("*.html")
        if str(path.relative_to(published(site))) not in always
    }


def test_first_build_says_so_and_leaves_no_staging_folder(site: Path) -> None:
    log = (site / "first-build.log").read_text()
    assert "first build: running every chapter" in log
    assert "unrecorded" not in log
    build = site / "docs" / "_build"
    assert (build / "html" / "index.html").is_file()
    assert not (build / "html.staging").exists(), "the staging folder stayed behind"
    assert not (build / "html.unfinished").exists()


def test_no_op_rebuild_writes_no_page(site: Path) -> None:
    before = html_pages(site)
    assert len(before) >= 8
    result = run_build(site)
    assert result.returncode == 0, result.stdout + result.stderr
    after = html_pages(site)
    rewritten = sorted(name for name in before if after.get(name) != before[name])
    assert rewritten == [], f"a no-op rebuild wrote {len(rewritten)} pages"
    assert not (site / "docs" / "_build" / "html.staging").exists()


def reader_files(site: Path) -> dict[str, bytes]:
    """What a reader downloads: the chapter scripts, notebooks, zips and the wheel."""
    return {
        str(path.relative_to(published(site))): path.read_bytes()
        for pattern in ("_downloads/*/*", "notebooks/*", "wheels/*")
        for path in sorted(published(site).glob(pattern))
    }


def zipped_script(files: dict[str, bytes], name: str) -> str:
    (archive,) = (data for path, data in files.items() if path.endswith("python.zip"))
    with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
        return zipped.read(name).decode()


def test_rebuilds_reuse_downloads_wheel_parses_and_404_only_while_sources_stand(
    site: Path,
) -> None:
    # The no-op skips (reader_downloads, library_wheel, gallery_hooks'
    # parse_each_chapter_once, build_guard's 404 page) must not serve what an edit
    # made stale. The fixture's stamp, so that the chapter's output reads as the
    # fixture left it.
    chapter_file = site / "examples" / "01_first.py"
    library_file = site / "src" / "pytorch_buffers" / "__init__.py"
    page_file = site / "docs" / "page0.md"
    sources = {
        path: path.read_text() for path in (chapter_file, library_file, page_file)
    }
    chapter_file.write_text(
        sources[chapter_file].replace("A tiny chapter.", "A tiny chapter, edited.")
        + "\n# sphinx_gallery_start_ignore\nassert True  # hidden check\n"
        "# sphinx_gallery_end_ignore\nprint('shown')\n"
    )
    library_file.write_text(sources[library_file] + "# a library edit\n")
    page_file.write_text(sources[page_file].replace("# Page 0", "# Page zero"))
    not_found = published(site) / "404.html"
    wheel_memo = site / "docs" / "_build" / "doctrees-html" / "library-wheel.json"
    verbose = [arg for arg in sphinx_command(site) if arg != "-q"] + ["-v"]
    try:
        edited = run_build(site, verbose, TINY_STAMP="one")
        assert edited.returncode == 0, edited.stdout + edited.stderr
        assert "01_first.py: settings and text as last parsed" not in edited.stdout
        assert "02_second.py: settings and text as last parsed" in edited.stdout
        assert re.search(r"reader downloads: [1-9]\d* cleaned", edited.stdout)
        files = reader_files(site)
        assert "A tiny chapter, edited." in page(site, "auto_examples/01_first")
        (script,) = (v for k, v in files.items() if k.endswith("/01_first.py"))
        for text in (script.decode(), zipped_script(files, "01_first.py")):
            assert "print('shown')" in text
            assert "hidden check" not in text, "a download kept a hidden check"
        (wheel,) = (v for k, v in files.items() if k.endswith(".whl"))
        with zipfile.ZipFile(io.BytesIO(wheel)) as zipped:
            assert b"# a library edit" in zipped.read("pytorch_buffers/__init__.py")
        assert "Page zero" in not_found.read_text(), "the 404 page's navigation"

        made = not_found.stat().st_mtime_ns, wheel_memo.stat().st_mtime_ns
        no_op = run_build(site, verbose, TINY_STAMP="one")
        assert no_op.returncode == 0, no_op.stdout + no_op.stderr
        assert reader_files(site) == files, "a no-op changed what readers download"
        # ... and it reused them all, rather than making them again.
        assert "reader downloads: 0 cleaned" in no_op.stdout, no_op.stdout
        for name in ("01_first.py", "02_second.py"):
            assert f"{name}: settings and text as last parsed" in no_op.stdout
        made_now = not_found.stat().st_mtime_ns, wheel_memo.stat().st_mtime_ns
        assert made_now == made, "a no-op wrote the 404 page or built the wheel"
    finally:
        for path, text in sources.items():
            path.write_text(text)
    reverted = run_build(site, TINY_STAMP="one")
    assert reverted.returncode == 0, reverted.stdout + reverted.stderr
    files = reader_files(site)
    assert "A tiny chapter, edited." not in page(site, "auto_examples/01_first")
    assert "print('shown')" not in zipped_script(files, "01_first.py")
    (wheel,) = (v for k, v in files.items() if k.endswith(".whl"))
    with zipfile.ZipFile(io.BytesIO(wheel)) as zipped:
        assert b"# a library edit" not in zipped.read("pytorch_buffers/__init__.py")
    assert "Page zero" not in not_found.read_text()


def test_rerunning_stale_chapters_parses_them_in_full(site: Path) -> None:
    # With run_stale_examples, sphinx-gallery runs up-to-date chapters too, and
    # needs each one's syntax tree to link its code to the API (.codeobj.json).
    codeobj = site / "docs" / "auto_examples" / "01_first.codeobj.json"
    before = codeobj.read_text()
    assert "environ" in before, before
    verbose = [arg for arg in sphinx_command(site) if arg != "-q"]
    rerun = run_build(
        site,
        [*verbose, "-D", "sphinx_gallery_conf.run_stale_examples=1"],
        TINY_STAMP="one",
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "successfully executed 2 out of 2 files" in rerun.stdout, rerun.stdout
    assert codeobj.read_text() == before


def test_inductor_cache_stays_under_the_build_folder(site: Path) -> None:
    # conf.py chooses it when the caller did not (nox -s docs sets the same).
    expected = "inductor cache: .../docs/_build/torchinductor"
    assert expected in page(site, "auto_examples/01_first")


def ran_clean(site: Path, name: str) -> str:
    """The line a chapter page says which torches it ran clean on (recorded_runs)."""
    (line,) = re.findall(
        r'<p class="guide-ran-clean">(.*?)</p>', page(site, name), re.DOTALL
    )
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", line)).split())


def test_without_recordings_a_chapter_names_only_this_build(site: Path) -> None:
    # A fresh clone's nox -s docs: no test run recorded anything yet.
    line = ran_clean(site, "auto_examples/01_first")
    assert line.startswith("Ran clean on: "), line
    assert line.endswith(
        " with torch " + build_info.version("torch")
        + " (this build, which produced this page's output); no recorded test run."
    ), line  # fmt: skip


def test_second_build_in_same_folder_stops_at_once(site: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLD_LOCK,
            str(site / "docs" / "_ext"),
            str(site / "docs" / "_build"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        before = digest(published(site))
        start = time.perf_counter()
        second = run_build(site)
        took = time.perf_counter() - start
    finally:
        holder.kill()
        holder.communicate()
    assert second.returncode != 0
    assert "another build is running in this folder" in second.stderr
    assert took < 30, f"the second build took {took:.0f} s to give up"
    assert digest(published(site)) == before


def test_failed_chapter_runs_again_after_revert_and_site_stays_good(
    site: Path,
) -> None:
    source = site / "examples" / "02_second.py"
    good = source.read_text()
    before = digest(published(site))
    # An authoring mistake in a text block, and an error in the code below it.
    broken_source = good + (
        "\n# %%\n# A sentence with a :fnc:`misspelt role` in it.\n\n"
        "print(undefined_name)\n"
    )
    lines = broken_source.splitlines()
    role_line = next(n for n, text in enumerate(lines, 1) if ":fnc:" in text)
    error_line = lines.index("print(undefined_name)") + 1
    source.write_text(broken_source)
    broken = run_build(site, TINY_STAMP="two")
    assert broken.returncode != 0
    assert "NameError" in broken.stderr
    # The role is reported at the chapter's line, not the generated .rst's.
    assert (
        f"examples/02_second.py:{role_line}: ERROR: Unknown interpreted text role"
        in (broken.stderr)
    ), broken.stderr
    # One closing line: the chapter's file and line, and the site left alone.
    assert broken.stderr.rstrip().splitlines()[-1] == (
        f"build failed: examples/02_second.py:{error_line}: NameError: name "
        "'undefined_name' is not defined; docs/_build/html was left as it was"
    ), broken.stderr
    output = broken.stdout + broken.stderr
    assert "please open an issue" not in output
    assert "Extension error" not in output
    # Item 6: the failed build left the previous good site as it was.
    assert digest(published(site)) == before

    source.write_text(good)
    reverted = run_build(site, TINY_STAMP="two")
    assert reverted.returncode == 0, reverted.stdout + reverted.stderr
    second = page(site, "auto_examples/02_second")
    assert "NameError" not in second
    assert "Second: stamp two" in second, "the reverted chapter did not run again"
    # The chapter that never failed did not run again.
    assert "First: stamp one" in page(site, "auto_examples/01_first")


def test_device_or_torch_change_reruns_chapters_and_sheet(site: Path) -> None:
    key = site / "docs" / "_build" / "outputs-made-with.txt"
    assert key.read_text().startswith("cpu with torch ")
    # As if the outputs on disk came from another device and torch.
    key.write_text("cuda (Fake GPU) with torch 0.0")
    result = run_build(site, TINY_STAMP="three")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "First: stamp three" in page(site, "auto_examples/01_first")
    assert "Second: stamp three" in page(site, "auto_examples/02_second")
    assert "sheet: stamp three" in page(site, "sheet")
    assert key.read_text().startswith("cpu with torch ")


def test_time_limit_names_chapter_and_line_then_recovers(site: Path) -> None:
    stuck = chapter("Stuck", "import time\n\ntime.sleep(10**6)\n")
    line = stuck.splitlines().index("time.sleep(10**6)") + 1
    path = site / "examples" / "03_stuck.py"
    path.write_text(stuck)
    sheet = site / "docs" / "sheet.md"
    sheet.write_text(
        SHEET.replace("import os\n", "import os\nimport time\n\ntime.sleep(10**6)\n")
    )
    start = time.perf_counter()
    result = run_build(site, GUIDE_TIMEOUT="3", TINY_STAMP="three")
    took = time.perf_counter() - start
    assert result.returncode != 0
    assert took < 120
    assert f"03_stuck.py ran past its 3 s limit and was stopped at line {line}" in (
        result.stderr
    ), result.stderr
    # The cheat-sheet-like page: the page, and the line in its cell.
    assert "sheet.md: WARNING: Executing notebook failed" in result.stderr
    assert "this page ran past its 3 s limit and was stopped here" in result.stderr
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stderr)  # IPython colours
    assert "Cell In[1], line 4" in plain, plain
    path.unlink()  # the hung chapter is dropped
    sheet.write_text(SHEET)
    recovered = run_build(site, TINY_STAMP="three")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert not list(published(site).rglob("*03_stuck*")), "a page of a removed chapter"


def test_removed_chapter_and_page_leave_nothing_behind(site: Path) -> None:
    assert (published(site) / "auto_examples" / "02_second.html").exists()
    (site / "examples" / "02_second.py").unlink()
    (site / "docs" / "page5.md").unlink()
    index = site / "docs" / "index.md"
    index.write_text(index.read_text().replace("page5\n", ""))
    result = run_build(site)
    assert result.returncode == 0, result.stdout + result.stderr
    left = [
        str(path.relative_to(published(site)))
        for path in published(site).rglob("*")
        if "02_second" in path.name or "page5" in path.name
    ]
    assert left == []


def test_interrupted_build_is_followed_by_the_same_site_as_a_clean_one(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path / "interrupted")
    first = run_build(site)
    assert first.returncode == 0, first.stdout + first.stderr
    for name in PAGES:
        if name.startswith("page"):
            path = site / "docs" / name
            path.write_text(path.read_text() + "\nAn edited sentence.\n")
    interrupted = subprocess.Popen(
        sphinx_command(site),
        cwd=site,
        env={**os.environ, **build_env(), "SLOW_WRITE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert interrupted.stdout is not None
    for line in interrupted.stdout:
        if line.startswith("writing page"):
            break
    interrupted.send_signal(signal.SIGINT)
    output, _ = interrupted.communicate(timeout=60)
    assert interrupted.returncode != 0, output

    # The previous good site is still published, untouched by the stopped build.
    assert "An edited sentence" not in page(site, "page0")
    recovered = run_build(site)
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr

    clean = make_site(tmp_path / "clean")
    sources = [*site.glob("examples/*.py"), *site.glob("docs/*.md")]
    for source in sources:
        (clean / source.relative_to(site)).write_text(source.read_text())
    reference = run_build(clean)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    wrong, tolerated = compare_sites(published(site), published(clean))
    assert (wrong, tolerated) == ([], [])
    assert "lantern5" in (published(site) / "searchindex.js").read_text()


def preview_command(site: Path) -> list[str]:
    """What ``nox -s docs -- --preview`` runs (with GUIDE_PREVIEW=1)."""
    build = site / "docs" / "_build"
    return [
        sys.executable, "-m", "sphinx", "-b", "html", "-n", "-W", "--keep-going", "-q",
        "-d", str(build / "doctrees-preview"), str(site / "docs"), str(build / "preview"),
    ]  # fmt: skip


def test_preview_builds_and_a_failed_one_leaves_no_empty_folder(tmp_path: Path) -> None:
    site = make_site(tmp_path / "preview")
    build = site / "docs" / "_build"
    page0 = site / "docs" / "page0.md"
    good = page0.read_text()
    page0.write_text(good + "\nSee {doc}`no-such-page`.\n")
    failed = run_build(site, preview_command(site), GUIDE_PREVIEW="1")
    assert failed.returncode != 0
    assert "no-such-page" in failed.stderr
    assert failed.stderr.rstrip().splitlines()[-1].startswith("build failed: ")
    assert not (build / "preview").exists(), "a failed preview left an empty folder"

    page0.write_text(good)
    result = run_build(site, preview_command(site), GUIDE_PREVIEW="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lexer" not in result.stderr
    sheet = (build / "preview" / "sheet.html").read_text()
    assert "PREVIEW" in sheet
    assert 'class="highlight-python' in sheet, "the sheet's code is not highlighted"
    assert "cell_output" not in sheet, "a preview ran code"
    assert not (build / "preview.staging").exists()


def test_banner_date_is_labelled_as_the_commits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(build_info, "outputs_made_with", lambda _: "cpu with torch X")
    monkeypatch.setattr(build_info, "build_commit", lambda: "0123456789ab")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    assert build_info.build_line(tmp_path / "cache.json") == (
        "Outputs produced on cpu with torch X · commit 0123456789ab, "
        "committed 2026-01-01"
    )
    # A bare sphinx-build (no SOURCE_DATE_EPOCH) in a clone dates the banner as
    # nox -s docs does, by the last commit: same pages, none rewritten.
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    monkeypatch.chdir(ROOT)
    epoch = subprocess.run(
        ["git", "log", "-1", "--format=%ct"], capture_output=True, text=True, check=True
    ).stdout.strip()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
    by_nox = build_info.build_date()
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert build_info.build_date() == by_nox
    # Outside git, without SOURCE_DATE_EPOCH: the day of the build, said so.
    monkeypatch.setattr(build_info, "build_commit", lambda: None)
    monkeypatch.setattr(build_info, "commit_epoch", lambda: None)
    assert " · built 20" in build_info.build_line(tmp_path / "cache.json")


def test_zips_are_rewritten_the_same_whatever_their_timestamps(tmp_path: Path) -> None:
    archives = []
    for when in (1_000_000_000, 1_700_000_000):
        source = tmp_path / f"chapter-{when}.py"
        source.write_text("print(1)\n")
        os.utime(source, (when, when))
        archive = tmp_path / f"all-{when}.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            zipped.write(source, "chapter.py")
        deterministic_zip(archive, epoch=1_767_225_601)  # an odd second
        archives.append(archive.read_bytes())
    assert archives[0] == archives[1]
    # Told from its directory alone, so that a no-op rebuild re-zips nothing.
    with zipfile.ZipFile(archive) as zipped:
        assert is_deterministic(zipped, epoch=1_767_225_601)
        assert not is_deterministic(zipped, epoch=1_767_225_603)


def test_reproducibility_check_compares_every_file(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for site in (first, second):
        (site / "_static").mkdir(parents=True)
        (site / "index.html").write_text("<p>same</p>\n<p>0.12 seconds</p>\n")
        (site / "_images").mkdir()
    (first / "index.html").write_text("<p>same</p>\n<p>3.45 seconds</p>\n")
    (first / "_static" / "guide.js").write_text("one")
    (second / "_static" / "guide.js").write_text("two")
    (first / "_images" / "sphx_glr_10_mask_cost_001.png").write_bytes(b"a")
    (second / "_images" / "sphx_glr_10_mask_cost_001.png").write_bytes(b"b")
    (first / "only-here.txt").write_text("x")
    wrong, tolerated = compare_sites(first, second)
    assert wrong == ["_static/guide.js", "only-here.txt"]
    assert tolerated == ["_images/sphx_glr_10_mask_cost_001.png"]


def test_search_index_words_may_differ_on_measured_pages_only(tmp_path: Path) -> None:
    # Chapter 12's forward pass on leftover memory fails on one build and not on
    # the next, so words such as "largest" join its page or leave it.
    docnames = ["auto_examples/12_meta_init", "index", "census"]

    def site_with(name: str, terms: dict[str, object]) -> Path:
        root = tmp_path / name
        root.mkdir()
        index = {"docnames": docnames, "terms": terms, "titles": ["12", "i", "c"]}
        (root / "searchindex.js").write_text(f"Search.setIndex({json.dumps(index)})")
        return root

    first = site_with("first", {"buffer": [0, 1], "index": 1, "largest": 2})
    measured = site_with(
        "measured", {"buffer": 1, "index": 1, "largest": [0, 2], "indexerror": 0}
    )
    unmeasured = site_with(
        "unmeasured", {"buffer": [0, 1], "index": 1, "largest": [1, 2]}
    )
    assert compare_sites(first, measured) == ([], [])
    assert compare_sites(first, unmeasured) == (["searchindex.js"], [])


@pytest.mark.parametrize(
    ("code", "uses"),
    [
        ("import pytorch_buffers\n", True),
        ("from pytorch_buffers import find_strays\n", True),
        ("import pytorch_buffers.inventory as inv\n", True),
        ("from pytorch_buffers.checkpoint import explain_state_dict\n", True),
        ("import torch, pytorch_buffers\n", True),
        ("def f():\n    from pytorch_buffers import inventory\n", True),
        (
            '"""Unlike import pytorch_buffers, this needs torch alone."""\nimport torch\n',
            False,
        ),
        ("# import pytorch_buffers\nimport torch\n", False),
        ("import pytorch_buffers_extra\n", False),
        ("from . import pytorch_buffers\n", False),
    ],
)
def test_library_users_found_from_their_imports(
    tmp_path: Path, code: str, uses: bool
) -> None:
    script = tmp_path / "01_chapter.py"
    script.write_text(textwrap.dedent(code))
    assert imports_library(script) is uses


def test_chapter_pages_name_the_recorded_torches_and_a_page_lists_differences(
    tmp_path: Path,
) -> None:
    versions_page = (ROOT / "docs" / "torch_versions.md").read_text()
    site = tiny_site(
        tmp_path / "repo",
        {"01_first.py": chapter("First"), "02_second.py": chapter("Second")},
        {"torch_versions.md": versions_page},
    )
    # What nox -s tests and nox -s tests_newest leave (tests/conftest.py record_run).
    runs = site / "docs" / "_build" / "recorded-runs"
    old, new = runs / "torch-2.13.0+cpu-cpu", runs / "torch-2.14.1-cpu"
    old.mkdir(parents=True)
    new.mkdir()
    (old / "01_first.txt").write_text(
        "same\nold value 1\nstep took 1.25 ms\n  detail a\n"
    )
    long_line = "wide " * 50
    (new / "01_first.txt").write_text(
        f"same\nnew value 2\nstep took 9.5 ms\n  detail b\n  detail c\n{long_line}\n"
    )
    (old / "02_second.txt").write_text("only recorded on the oldest torch\n")
    result = run_build(site)
    assert result.returncode == 0, result.stdout + result.stderr

    both = "Ran clean on: torch 2.13.0+cpu on CPU, torch 2.14.1 on CPU (recorded test runs)"
    assert ran_clean(site, "auto_examples/01_first").startswith(both + " and ")
    second = ran_clean(site, "auto_examples/02_second")
    assert second.startswith(
        "Ran clean on: torch 2.13.0+cpu on CPU (recorded test runs) and "
    )
    assert "(this build, which produced this page's output)." in second
    assert "2.14.1" not in second, "a torch that did not run the chapter is named"

    versions = page(site, "torch_versions")
    (diff,) = re.findall(
        r'class="guide-torch-diff[^"]*"><div class="highlight"><pre>(.*?)</pre>',
        versions,
        re.DOTALL,
    )
    lines = html.unescape(re.sub(r"<[^>]+>", "", diff)).splitlines()
    assert lines[:2] == ["--- torch 2.13.0+cpu on CPU", "+++ torch 2.14.1 on CPU"]
    assert [line for line in lines if "value" in line] == [
        "-old value 1",
        "+new value 2",
    ]
    assert not [line for line in lines if " ms" in line or "detail" in line], (
        "a measurement is a difference"
    )
    assert max(map(len, lines)) <= 100, "a line wider than 100 columns"
    wide = [line for line in lines if "wide" in line]
    assert len(wide) == 3, "not wrapped"
    assert all(line.startswith("+") for line in wide), "a continuation lost its mark"
    assert "".join(wide).count("wide") == 50
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", versions)).split())
    assert "Second: only one torch recorded (torch 2.13.0+cpu on CPU)." in text

    # Unchanged recordings: a no-op rebuild writes no page.
    before = html_pages(site)
    assert run_build(site).returncode == 0
    assert [name for name in before if html_pages(site)[name] != before[name]] == []
    # The newest torch's run gone: the pages follow the recordings at once.
    shutil.rmtree(new)
    result = run_build(site)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2.14.1" not in ran_clean(site, "auto_examples/01_first")
    text = " ".join(
        html.unescape(re.sub(r"<[^>]+>", "", page(site, "torch_versions"))).split()
    )
    assert "First: only one torch recorded (torch 2.13.0+cpu on CPU)." in text
