"""Tables for the user docs, written from records only, so every figure in README and docs traces to a record."""

from __future__ import annotations

import re
from pathlib import Path

from yoloq.records import Record, RecordStore, reference_of, write_atomic

# <!-- results-table: RUN_DIR (any note) --> ... <!-- /results-table -->: a table this module writes
BLOCK = re.compile(r"(<!-- results-table: (\S+)(?: \(.*?\))? -->\n)(.*?)(<!-- /results-table -->)", re.S)

COLUMNS = ("variant", "ran as", "mAP50-95", "kept", "drop [95% CI]", "p50 ms", "x its FP32", "MB")


def _row(r: Record, ref: Record) -> list[str]:
    ci = r.metrics.get("map_drop_ci") or {}
    drop = f"{ci['drop']:+.4f} [{ci['lo']:+.4f}, {ci['hi']:+.4f}]" if ci and r is not ref else ""
    x = (r.speedup or {}).get("vs_fp32")
    return [r.name + (" (reference)" if r is ref else ""), r.runtime.get("precision_ran", r.precision),
            f"{r.map:.4f}", f"{100 * r.map / ref.map:.1f}%", drop, f"{r.p50:.1f}" if r.p50 else "not timed",
            f"{x:.2f}x" if x else "", f"{r.size_mb:.1f}"]


def results_table(run_dir: Path, names: list[str] | None = None) -> str:
    """A markdown table of ``names`` (default: every ok variant) of the run in ``run_dir``, in config order."""
    records = sorted(RecordStore(run_dir).all(), key=lambda r: r.order)
    ref = reference_of(records)
    if ref is None:
        raise ValueError(f"{run_dir} has no ok reference record")
    keep = [r for r in records if r.ok and (names is None or r.name in names)]
    lines = ["| " + " | ".join(COLUMNS) + " |", "| " + " | ".join("---" for _ in COLUMNS) + " |"]
    lines += ["| " + " | ".join(_row(r, ref)) + " |" for r in keep]
    return "\n".join(lines) + "\n"


def block_names(table: str) -> list[str]:
    """The variant names a written table lists, in its order."""
    return [ln.split("|")[1].strip().replace(" (reference)", "") for ln in table.splitlines()[2:] if ln.strip()]


def refresh(page: Path, root: Path) -> int:
    """Rewrite every results-table block of ``page`` from its run's records (run folders relative to ``root``);
    returns how many blocks were written."""
    text = page.read_text()
    n = 0

    def write(m: re.Match) -> str:
        nonlocal n
        n += 1
        return m.group(1) + results_table(root / m.group(2), block_names(m.group(3)) or None) + m.group(4)

    new = BLOCK.sub(write, text)
    if new != text:
        write_atomic(page, new)
    return n


# A figure on mAP's scale written in prose or a hand-made table: mAP, a drop or an interval end, an agreement.
FIGURE = re.compile(r"(?<![\d.])[+-]?0\.\d{4}(?!\d)")
CITED = re.compile(r"results/[\w.+-]+(?:/[\w.+-]+)*")  # a run folder or a file in one
COMMIT = re.compile(r"\bcommits? ([0-9a-f]{7,40})\b")


def _numbers(obj: object, out: set[str]) -> None:
    """Every number in ``obj`` as written to four decimals (sign dropped), per-class APs left out."""
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        out.add(f"{abs(float(obj)):.4f}")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if k != "per_class":
                _numbers(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _numbers(v, out)


def _record_texts(folder: Path, root: Path, commit: str | None) -> list[str]:
    """The JSON and JSON-lines files under ``folder`` (relative to ``root``), as committed in ``commit`` or
    as they are on disk."""
    import subprocess

    rel = folder.relative_to(root).as_posix()
    if commit is None:
        return [f.read_text() for f in sorted(folder.rglob("*.json*")) if f.is_file()]
    try:
        names = subprocess.run(["git", "-C", str(root), "ls-tree", "-r", "--name-only", commit, rel], check=True,
                               capture_output=True, text=True).stdout.split()
        return [subprocess.run(["git", "-C", str(root), "show", f"{commit}:{n}"], check=True, capture_output=True,
                               text=True).stdout for n in names if n.endswith((".json", ".jsonl"))]
    except (OSError, subprocess.CalledProcessError):
        return []


def _values(folder: Path, root: Path, commit: str | None) -> set[str]:
    import json

    out: set[str] = set()
    for text in _record_texts(folder, root, commit):
        try:
            objs = [json.loads(text)]  # one JSON document
        except ValueError:  # JSON lines (records)
            objs = [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
        for obj in objs:  # a record's metrics, or a whole document (a search's candidates)
            _numbers(obj.get("metrics", obj) if isinstance(obj, dict) and "status" in obj else obj, out)
    return out


def _cited(section: str, root: Path) -> list[Path]:
    folders = []
    for text in CITED.findall(section):
        p = root / text.rstrip(".")
        while p != root / "results" and not p.exists():
            p = p.parent  # a file or folder named in a run folder that is not committed (an export, a log)
        if p.is_file():
            p = p.parent
        if p != root / "results" and p not in folders:
            folders.append(p)
    return folders


def untraced_figures(page: Path, root: Path) -> list[tuple[str, str]]:
    """The figures on mAP's scale (``0.dddd``: mAP, drops and interval ends, agreements) in ``page`` that no record
    its section cites holds: ``(figure, the section's heading)`` for each.

    A section (from one heading to the next) cites run folders (``results/...``); a figure must be a value of their
    records (metrics, intervals, agreement; not per-class APs) or of their other JSON (a search's candidates), to
    four decimals. Where the section names commits (``commit 237e8e2``), those folders' records as committed then
    count too: figures of runs since replaced stay traceable through the history.
    """
    missing = []
    for section in re.split(r"\n(?=#+ )", page.read_text()):
        figures = FIGURE.findall(section)
        if not figures:
            continue
        folders, commits = _cited(section, root), [None, *dict.fromkeys(COMMIT.findall(section))]
        values = set().union(*(_values(f, root, c) for f in folders for c in commits)) if folders else set()
        heading = section.lstrip("\n").splitlines()[0][:80]
        missing += [(f, heading) for f in figures if f.lstrip("+-") not in values]
    return missing
