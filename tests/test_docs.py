"""Every figure in the README's results table comes from a committed record: the table is what
yoloq.report.docs writes from them; user docs name no issue numbers."""

from __future__ import annotations

import re

from yoloq.paths import REPO_ROOT
from yoloq.report.docs import results_table

BLOCK = re.compile(r"<!-- results-table: (\S+)(?: \(.*?\))? -->\n(.*?)<!-- /results-table -->", re.S)


def test_readme_results_table_is_written_from_the_records():
    text = (REPO_ROOT / "README.md").read_text()
    blocks = BLOCK.findall(text)
    assert blocks, "the README has no results table block"
    for run_dir, table in blocks:
        names = [ln.split("|")[1].strip().replace(" (reference)", "") for ln in table.splitlines()[2:]]
        expected = results_table(REPO_ROOT / run_dir, names)
        assert table == expected, f"README table differs from {run_dir}'s records; it should read:\n{expected}"


def test_user_docs_are_short_and_name_no_issue():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        assert not re.search(r"\bissues? \d+\b", page.read_text(), re.I), page.name
