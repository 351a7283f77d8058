"""The browser tier: reports opened in Debian's headless Chromium at 1280×900 (tests/browser.py).

On fixture studies (the paper's 8 cells, every kind of run, the default study's shape, task scores) and on
every committed report: no sideways scroll (also with the appendix and every collapsed table
open), the Answer block in the first viewport, a headline of at most three sentences, the Answer's
figure starting on the first screen, every image loaded, every internal link
resolving, no console error. Screenshots are kept under pytest's tmp dir.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from analysis_fixtures import write_default_like_study, write_mixed_study, write_paper_study, write_task_study
from browser import available, inspect_report

from analysis import report
from analysis.present.headline import MAX_SENTENCES, count_sentences

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted(ROOT.glob("results/*/_report/report.html"))
FIXTURES = {"paper": write_paper_study, "mixed": write_mixed_study, "default": write_default_like_study,
            "tasks": write_task_study}


@pytest.fixture(scope="module", autouse=True)
def _browser():
    why = available()
    if why:
        pytest.skip(why)


def _has_runs(study: Path) -> bool:
    return any(study.glob("*/trial-*/summary.json"))


def _check(page: Path, shots: Path) -> None:
    seen = inspect_report(page, shots)
    assert seen.scroll_width <= seen.inner_width, f"sideways scroll: {seen.scroll_width} px, {seen.wide}"
    assert seen.scroll_width_open <= seen.inner_width, f"sideways scroll with everything open: {seen.wide}"
    assert seen.answer_top is not None, "no Answer block (id=answer)"
    assert seen.answer_first_bottom is not None and seen.answer_first_bottom <= seen.inner_height, \
        f"the answer's first lines end at {seen.answer_first_bottom} px, below the first screen"
    assert seen.headline and 1 <= count_sentences(seen.headline) <= MAX_SENTENCES, \
        f"the headline is not 1-{MAX_SENTENCES} sentences: {seen.headline!r}"
    assert seen.figure_top is not None and seen.figure_top < seen.inner_height, \
        f"the Answer's figure starts at {seen.figure_top} px, below the first screen ({seen.inner_height} px)"
    assert seen.images and not seen.broken_images, seen.broken_images
    assert not seen.broken_links, seen.broken_links
    assert not seen.console_errors, seen.console_errors
    assert all(Path(p).stat().st_size > 0 for p in seen.screenshots)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_report_in_a_browser(name, tmp_path):
    study = FIXTURES[name](tmp_path / "results")
    md = report.write_report(study)
    _check(md.with_name("report.html"), tmp_path / "screenshots")


@pytest.mark.parametrize("page", COMMITTED, ids=[p.parent.parent.name for p in COMMITTED])
def test_committed_report_in_a_browser(page, tmp_path):
    if not _has_runs(page.parent.parent):
        pytest.skip(f"{page.parent.parent.name}: a legacy report whose run records are not committed "
                    "(results/README.md says so); it cannot be rebuilt with the current code")
    _check(page, tmp_path / "screenshots")
