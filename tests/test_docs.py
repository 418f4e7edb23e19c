"""Every figure in the README and docs comes from a committed record: the results tables are what
yoloq.report.docs writes from them, the README's table lists every variant that ran, and each figure on mAP's
scale written by hand (mAP, a drop or an interval end, an agreement) is a value of the records its section cites;
user docs name no issue numbers."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from yoloq.paths import REPO_ROOT
from yoloq.records import RecordStore
from yoloq.report.docs import BLOCK, block_names, results_table, untraced_figures

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def _blocks() -> list[tuple[Path, str, str]]:
    return [(page, m.group(2), m.group(3)) for page in PAGES for m in BLOCK.finditer(page.read_text())]


def test_results_tables_in_readme_and_docs_are_written_from_the_records():
    blocks = _blocks()
    assert any(page.name == "README.md" for page, _, _ in blocks), "the README has no results table block"
    for page, run_dir, table in blocks:
        expected = results_table(REPO_ROOT / run_dir, block_names(table))
        assert table == expected, f"{page.name}: table differs from {run_dir}'s records (yoloq docs rewrites it):\n" \
            f"{expected}"


def test_the_readme_table_lists_every_variant_that_ran():
    for page, run_dir, table in _blocks():
        if page.name == "README.md":
            ok = [r.name for r in sorted(RecordStore(REPO_ROOT / run_dir).all(), key=lambda r: r.order) if r.ok]
            left_out = sorted(set(ok) - set(block_names(table)))
            assert block_names(table) == ok, f"the README's table leaves out {left_out}"


def _history() -> bool:
    return subprocess.run(["git", "-C", str(REPO_ROOT), "cat-file", "-e", "09155e3^{commit}"],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_figure_written_by_hand_is_a_value_of_a_record_its_section_cites(page: Path):
    if not _history() and re.search(r"\bcommits? [0-9a-f]{7}", page.read_text()):
        pytest.skip("figures of replaced runs are read from the git history, and this checkout has none")
    assert untraced_figures(page, REPO_ROOT) == []


def test_a_figure_that_no_cited_record_holds_is_found(tmp_path: Path):
    """The negative control: one digit changed, or the run folder not cited, and the figure is reported."""
    text = (REPO_ROOT / "README.md").read_text()
    assert "| 0.3190 | 99.4% |" in text
    (tmp_path / "results").symlink_to(REPO_ROOT / "results")
    page = tmp_path / "page.md"
    page.write_text(text.replace("| 0.3190 | 99.4% |", "| 0.3191 | 99.4% |"))
    assert ("0.3191", "## What you get") in untraced_figures(page, tmp_path)
    page.write_text("# A page\n\nONNX Runtime INT8 scored 0.3190 on coco1k val.\n")
    assert untraced_figures(page, tmp_path) == [("0.3190", "# A page")]
    page.write_text("# A page\n\n`results/default-coco1k/amd-epyc-2c-792874/`: ONNX Runtime INT8 scored 0.3190.\n")
    assert untraced_figures(page, tmp_path) == []


def test_user_docs_are_short_and_name_no_issue():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in PAGES:
        assert not re.search(r"\bissues? \d+\b", page.read_text(), re.I), page.name
