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
    for name in (best.name, ref.name):
        _same_detections_as_the_evaluation(Path(run.out_dir), name)
    assert list(Path(scope["OUT"]).glob("*/report.html"))
    assert "fastest within budget" in capsys.readouterr().out
    with pytest.raises(ValueError, match="metric"):
        run.best(metric="fps")
    with pytest.raises(KeyError, match="variants"):
        run["nope"]


def _same_detections_as_the_evaluation(run_dir: Path, name: str) -> None:
    """``yoloq.load(...).predict`` under the evaluation's thresholds gives, image by image, the detections the run
    stored when it scored the variant (boxes, scores, COCO categories)."""
    import yoloq
    from yoloq.agreement import StoredDetections
    from yoloq.config import DataRef
    from yoloq.data import load_split
    from yoloq.passes import detections_path

    stored = StoredDetections.load(detections_path(run_dir, name))
    detector = yoloq.load(run_dir, name, thresholds="evaluation")
    split = load_split(DataRef("coco-mini", "val2017", max_images=12))
    categories = np.asarray(split.category_map(detector.names))
    assert [s.image_id for s in split.samples] == stored.image_ids.tolist()
    total = 0
    for s in split.samples:
        d = detector.predict(s.path)
        mine = stored.det_image == s.image_id
        xywh = np.c_[d.boxes[:, :2], d.boxes[:, 2:] - d.boxes[:, :2]]
        have, want = (np.lexsort((*np.round(b.T[::-1], 1), np.round(-sc, 5)))  # INT8 scores tie: boxes break them
                      for b, sc in ((xywh, d.scores), (stored.bbox[mine], stored.score[mine])))
        assert len(have) == len(want), (name, s.path.name)
        np.testing.assert_allclose(d.scores[have], stored.score[mine][want], atol=1e-5, err_msg=name)
        np.testing.assert_allclose(xywh[have], stored.bbox[mine][want], atol=1e-2, err_msg=name)
        assert (categories[d.classes[have].astype(int)] == stored.category[mine][want]).all(), name
        total += len(have)
    assert total > 100  # conf 0.001: many detections an image
