"""Images decoded once: a second pass reads the stored letterboxed images back, the same inputs bit for bit."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

from yoloq.data.types import DatasetSplit, Sample
from yoloq.decoded import cache_key, decoded_items
from yoloq.preprocess import prepare, read_image

pytestmark = pytest.mark.shared


def _split(tmp_path: Path, n: int = 4) -> DatasetSplit:
    src = sorted((SHARED / "datasets" / "coco-mini" / "val2017").iterdir())[:n]
    samples = []
    for i, f in enumerate(src):
        shutil.copy(f, tmp_path / f.name)
        samples.append(Sample(i + 1, tmp_path / f.name, 0, 0))
    return DatasetSplit("t", "val", tmp_path, tuple(samples), ("a",), (1,), {})


def _pass(split: DatasetSplit, cache: Path) -> tuple[list, list[str]]:
    skipped: list[str] = []
    return list(decoded_items(split, 320, skipped, cache)), skipped


def test_second_pass_reads_the_cache_and_gives_the_same_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    split, cache = _split(tmp_path), tmp_path / "cache"
    victim = split.samples[2].path
    victim.write_bytes(victim.read_bytes()[:300])  # truncated: named and skipped on both passes
    first, skipped1 = _pass(split, cache)
    stored = sorted(p.name for p in cache.iterdir())
    key = cache_key(split, 320)
    assert stored == [f"{key}.json", f"{key}.npy"]  # complete, nothing partial left
    decodes = []
    monkeypatch.setattr("yoloq.decoded.read_image", lambda path: decodes.append(path) or read_image(path))
    second, skipped2 = _pass(split, cache)
    assert decodes == []  # read back from the stored array: no image decoded again
    assert skipped1 == skipped2 == [victim.name]
    assert [i for _, _, i in first] == [i for _, _, i in second] == [1, 2, 4]
    for (x1, lb1, _), (x2, lb2, _), s in zip(first, second, [split.samples[k] for k in (0, 1, 3)]):
        direct, lbd = prepare([read_image(s.path)], 320)
        assert x1.dtype == x2.dtype == np.float32
        assert np.array_equal(x1, direct) and np.array_equal(x2, direct)
        assert lb1 == lb2 == lbd


def test_a_changed_image_is_decoded_afresh_and_a_stopped_pass_leaves_nothing(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch):
    split, cache = _split(tmp_path, 3), tmp_path / "cache"
    items = decoded_items(split, 320, [], cache)
    next(items)
    items.close()  # stopped after one image
    assert not list(cache.glob("*"))
    _pass(split, cache)
    key = cache_key(split, 320)
    other = split.samples[0].path
    other.write_bytes(split.samples[1].path.read_bytes())  # another image under the same name
    assert cache_key(split, 320) != key
    decodes = []
    monkeypatch.setattr("yoloq.decoded.read_image", lambda path: decodes.append(path) or read_image(path))
    (x, _, _), *_ = _pass(split, cache)[0]
    assert decodes == [s.path for s in split.samples]  # a new key: every image decoded afresh
    assert np.array_equal(x, prepare([read_image(split.samples[1].path)], 320)[0])


def test_a_bad_size_limit_is_one_clear_error(monkeypatch):
    from yoloq.decoded import max_bytes
    from yoloq.errors import ConfigError

    monkeypatch.setenv("YOLOQ_DECODED_MAX_GB", "lots")
    with pytest.raises(ConfigError, match="YOLOQ_DECODED_MAX_GB='lots': give a number of gigabytes"):
        max_bytes()
    monkeypatch.setenv("YOLOQ_DECODED_MAX_GB", "0.5")
    assert max_bytes() == 0.5e9
