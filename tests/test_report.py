"""Reports from records: intervals, budget gate, comparison, and the HTML page as a browser renders it."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, unavailable

from yoloq.bootstrap import PerImageEval, weighted_map
from yoloq.report.plots import pareto_front

pytestmark = pytest.mark.shared


def test_pareto_front():
    # (cost, mAP): b dominates a; c is cheapest; d is best
    pts = [(10.0, 0.40), (8.0, 0.42), (3.0, 0.30), (20.0, 0.45), (25.0, 0.44)]
    assert pareto_front(pts) == [1, 2, 3]


def test_intervals_are_paired_and_exact_on_real_runs(smoke_run):
    d = smoke_run["dir"]
    records = smoke_run["records"]
    for name, r in records.items():
        pe = PerImageEval.load(d / "evaldata" / f"{name}.npz")
        # the bootstrap's weighted AP with every image once is pycocotools' own mAP50-95
        assert weighted_map(pe, np.ones(len(pe.image_ids)))[0] == pytest.approx(r["metrics"]["map50_95"], abs=1e-9)
        if name == "torch-fp32":
            assert "map_drop_ci" not in r["metrics"]
            continue
        ci = r["metrics"]["map_drop_ci"]
        assert ci["resamples"] == 1000 and ci["lo"] <= ci["hi"] and ci["reference"] == "torch-fp32"
        assert ci["drop"] == pytest.approx(records["torch-fp32"]["metrics"]["map50_95"] - r["metrics"]["map50_95"])
        assert ci["significant"] == (ci["lo"] > 0 or ci["hi"] < 0)
    assert records["onnxruntime-fp32"]["metrics"]["map_drop_ci"]["significant"] is False  # same network


def test_budget_gate(smoke_run):
    d = str(smoke_run["dir"])
    assert "budget PASS  onnxruntime-fp32" in smoke_run["proc"].stdout  # printed by yoloq run (min_retention 0.80)
    loose = run_cli("check", d)
    assert loose.returncode == 0, loose.stdout + loose.stderr
    strict = run_cli("check", d, "--min-retention", "0.99999")
    assert strict.returncode == 1
    assert re.search(r"budget FAIL  \S+int8", strict.stdout)
    assert "budget PASS  onnxruntime-fp32" in strict.stdout


def test_compare_runs(smoke_run, tmp_path: Path):
    out = tmp_path / "cmp.md"
    proc = run_cli("compare", str(smoke_run["dir"]), str(smoke_run["dir"]), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert text.count("+0.0000") == len(smoke_run["records"])  # a run against itself changes nothing
    assert "d p50 %" in text


def test_report_command_rebuilds_from_records(smoke_run, tmp_path: Path):
    copy = tmp_path / "run"
    shutil.copytree(smoke_run["dir"], copy, ignore=shutil.ignore_patterns("artifacts"))
    for f in ("report.md", "report.html", "summary.csv"):
        (copy / f).unlink()
    proc = run_cli("report", str(copy))
    assert proc.returncode == 0, proc.stderr
    md = (copy / "report.md").read_text()
    assert "## Classes that lose most" in md and "## AP by object size" in md and "config hash" in md
    assert "pareto_latency.png" in md


FIT_SCRIPT = ("<script>var t = document.getElementById('variants').getBoundingClientRect();"
              "document.body.setAttribute('data-fit', JSON.stringify({right: Math.round(t.right), "
              "page: document.documentElement.scrollWidth, view: window.innerWidth}))</script>")


def _browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def test_report_html_renders_in_a_browser(smoke_run, tmp_path: Path):
    browser = _browser()
    if browser is None:
        unavailable("a headless browser", "none installed (apt-get install chromium; .ci/run installs it)")
    page = (smoke_run["dir"] / "report.html").resolve()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'ud'}"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    table = re.search(r'<table id="variants">(.*?)</table>', dom, re.S).group(1)
    assert table.count("<tr") - 1 == len(smoke_run["records"])  # one row per variant under the header
    # the variants table fits a 1,400-pixel window: the browser's own layout, measured by a script in a copy
    probe = tmp_path / "fit.html"
    probe.write_text(page.read_text().replace("</body>", FIT_SCRIPT + "</body>"))
    fit_dom = subprocess.run([*flags, "--window-size=1400,900", "--dump-dom", probe.as_uri()], capture_output=True,
                             text=True, timeout=120).stdout
    fit = json.loads(html.unescape(re.search(r'data-fit="([^"]*)"', fit_dom).group(1)))
    assert fit["view"] == 1400 and fit["right"] <= 1400 and fit["page"] <= 1400, fit
    # the plots: decode what the browser rendered and check they are real, non-blank images
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1400,2400", page.as_uri()],
                   capture_output=True, timeout=120)
    import cv2

    img = cv2.imread(str(shot))
    assert img is not None and img.shape[0] >= 2000
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 200  # text, tables and coloured plots, not a blank page
    srcs = re.findall(r'<img class="plot" alt="[^"]+" src="data:image/png;base64,([^"]+)"', dom)
    assert len(srcs) == 3  # accuracy against latency and size, throughput against streams
    import base64

    for s in srcs:
        plot = cv2.imdecode(np.frombuffer(base64.b64decode(s), np.uint8), cv2.IMREAD_COLOR)
        assert plot.shape[0] > 300 and plot.std() > 10


def test_int8_differences_are_matched_and_drawn_from_the_kept_detections(smoke_run, tmp_path: Path):
    """Hand-made boxes: a moved box is matched, a relabelled one is lost and added, a weak one is ignored; on the
    smoke run, each INT8 variant's most different images are drawn side by side from its kept detections."""
    import shutil as sh

    import cv2

    from yoloq.agreement import StoredDetections
    from yoloq.records import RecordStore
    from yoloq.report.differences import match, most_different, write_differences

    ids = np.array([1, 2])
    ref = StoredDetections(ids, np.array([1, 1, 2]), np.array([1, 3, 1]),
                           np.array([[0, 0, 10, 10], [50, 50, 10, 10], [0, 0, 5, 5]], float), np.array([.9, .8, .1]))
    var = StoredDetections(ids, np.array([1, 1]), np.array([1, 4]),
                           np.array([[1, 0, 10, 10], [50, 50, 10, 10]], float), np.array([.7, .6]))
    _, _, lost, added = match(ref, var, 1)
    assert lost.tolist() == [False, True] and added.tolist() == [False, True]
    assert most_different(ref, var) == [{"image_id": 1, "lost": 1, "added": 1}]  # image 2: only a 0.1 box
    run = tmp_path / "run"
    sh.copytree(smoke_run["dir"], run)
    store = RecordStore(run)
    ref_rec = next(r for r in store.all() if r.reference)
    rows = write_differences(run, store.all(), ref_rec)
    int8 = {r.name for r in store.all() if r.ok and r.precision == "int8"}
    assert {d["variant"] for d in rows} == int8
    for d in rows:
        if d["image"]:
            pic = cv2.imread(str(run / d["file"]))
            assert pic is not None and pic.shape[1] > pic.shape[0] and int(d["lost"]) + int(d["added"]) > 0
    run_cli("report", str(run))
    assert "## Where INT8 differs most from the reference" in (run / "report.md").read_text()
