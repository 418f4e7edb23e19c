"""Every figure in the README's results table comes from a committed record: the table is what
yoloq.report.docs writes from them; user docs name no issue numbers."""

from __future__ import annotations

import re

from yoloq.paths import REPO_ROOT
from yoloq.report.docs import BLOCK, block_names, results_table


def test_results_tables_in_readme_and_docs_are_written_from_the_records():
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    blocks = [(page, m.group(2), m.group(3)) for page in pages for m in BLOCK.finditer(page.read_text())]
    assert any(page.name == "README.md" for page, _, _ in blocks), "the README has no results table block"
    for page, run_dir, table in blocks:
        expected = results_table(REPO_ROOT / run_dir, block_names(table))
        assert table == expected, f"{page.name}: table differs from {run_dir}'s records (yoloq docs rewrites it):\n" \
            f"{expected}"


def test_user_docs_are_short_and_name_no_issue():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        assert not re.search(r"\bissues? \d+\b", page.read_text(), re.I), page.name
