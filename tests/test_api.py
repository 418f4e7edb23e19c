"""The Python front door, as the docs show it: the example in docs/python-api.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from yoloq.paths import REPO_ROOT, shared_root


@pytest.mark.shared
def test_the_docs_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture):
    text = (REPO_ROOT / "docs" / "python-api.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    image = sorted((shared_root() / "datasets" / "coco-mini" / "val2017").glob("*.jpg"))[0]
    scope: dict = {"OUT": str(tmp_path / "run"), "IMAGE": str(image)}
    exec(compile(code, "docs/python-api.md", "exec"), scope)  # noqa: S102 - the documented example, verbatim
    run, best, dets, detector = scope["run"], scope["best"], scope["dets"], scope["detector"]
    assert run.exit_code == 0 and len(run.records) == 3
    ref = run.reference
    assert ref.name == "torch-fp32" and best.map >= 0.95 * ref.map
    assert best.p50 == min(r.p50 for r in run.records if r.map >= 0.95 * ref.map)
    assert len(dets) > 0 and detector.names[0] == "person"
    # the same detections the evaluation made: the predictor's raw output is the runtime's, letterboxed alike
    raw, _ = detector.raw(str(image))
    assert raw.shape[1] == 84 and np.isfinite(raw).all()
    assert list(Path(scope["OUT"]).glob("*/report.html"))
    assert "fastest within budget" in capsys.readouterr().out
    with pytest.raises(ValueError, match="metric"):
        run.best(metric="fps")
    with pytest.raises(KeyError, match="variants"):
        run["nope"]
