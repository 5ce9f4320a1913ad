"""Lighthouse on every page, served with gzip as the hosts serve it: each category >= 0.98.

Runs the ``lighthouse`` npm package (pinned in package.json, installed by
``nox -s browser`` with ``npm ci``) in Debian's Chromium, one page after another;
a page under the bar on performance alone is measured once more (timings on a
busy machine vary). Sphinx's search page says ``noindex``, as a search page
should, so it is not judged on being indexable.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .conftest import CHROMIUM, LIGHTHOUSE_SCORES, site_pages

HERE = Path(__file__).parent
MINIMUM = 0.98
CATEGORIES = ("performance", "accessibility", "best-practices", "seo")


@pytest.fixture(scope="session")
def lighthouse_scores(
    site: Path, base_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, object]]:
    if not (HERE / "node_modules" / "lighthouse").is_dir():
        pytest.fail(
            "Lighthouse is not installed: npm ci in tests/browser (nox -s browser)"
        )
    results = tmp_path_factory.mktemp("lighthouse") / "scores.json"
    pages = site_pages(site)
    subprocess.run(
        ["node", str(HERE / "lighthouse.mjs"), base_url, str(results), *pages],
        check=True,
        env={**os.environ, "CHROME_PATH": CHROMIUM, "LIGHTHOUSE_MINIMUM": str(MINIMUM)},
        timeout=60 * len(pages),
    )
    LIGHTHOUSE_SCORES.update(json.loads(results.read_text()))
    return LIGHTHOUSE_SCORES


def test_lighthouse_scores(
    lighthouse_scores: dict[str, dict[str, object]], page_path: str
) -> None:
    scores = lighthouse_scores[page_path]
    low = {
        category: score
        for category, score in scores.items()
        if category in CATEGORIES
        and not (isinstance(score, float | int) and score >= MINIMUM)
    }
    assert low == {}, f"{page_path}: {low}; audits that lost points: {scores['failed']}"


def test_only_the_search_page_opts_out_of_indexing(
    lighthouse_scores: dict[str, dict[str, object]],
) -> None:
    assert [
        page for page, scores in lighthouse_scores.items() if scores["skipped"]
    ] == ["search.html"]
