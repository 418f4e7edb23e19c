"""What travels between cluster nodes, and how it lands: no filesystem is shared.

The driver packs what every export needs (the config, the model's bytes, the calibration pool's
images by content hash) into one :class:`Shipment`, the evaluation images into :class:`Shard` s,
and exported models into ``Files``; a node writes them under its own scratch folder and rebuilds
the same objects with local paths, so the export and scoring code that runs there is the code a
local run uses.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from yoloq.config import RunConfig
from yoloq.data.calibration import CalibrationSet
from yoloq.data.pool import ImagePool, PoolImage
from yoloq.data.types import DatasetSplit, Sample
from yoloq.models import SourceModel

Files = dict[str, bytes]  # relative path -> bytes


def pack(path: Path) -> Files:
    """A file, or a folder and everything in it, as relative paths (the top name first) and bytes."""
    path = Path(path)
    if path.is_dir():
        return {f"{path.name}/{f.relative_to(path).as_posix()}": f.read_bytes()
                for f in sorted(path.rglob("*")) if f.is_file()}
    return {path.name: path.read_bytes()}


def unpack(files: Files, dest: Path) -> Path:
    """Write ``files`` under ``dest`` (each file atomically; an existing identical tree is reused).

    Returns:
        The top-level path the files describe (the file, or the folder).
    """
    for rel, data in files.items():
        target = dest / rel
        if target.is_file() and target.stat().st_size == len(data):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    top = {rel.split("/", 1)[0] for rel in files}
    if len(top) != 1:
        raise ValueError(f"a packed artifact has one top-level name, got {sorted(top)}")
    return dest / top.pop()


def scratch(run: str) -> Path:
    """This node's folder for one run's landed inputs and exports (the system temp folder)."""
    return Path(tempfile.gettempdir()) / "yoloq-ray" / run


@dataclass(frozen=True)
class Shipment:
    """Everything an export needs, with the bytes of every file it reads.

    ``run`` names the run on every node: the config's hash with the model's and calibration's.
    """

    run: str
    cfg: RunConfig
    source: SourceModel
    model: bytes
    pool: ImagePool
    calibration: CalibrationSet
    images: Files  # pool image content hash -> bytes

    @classmethod
    def of(cls, cfg: RunConfig, source: SourceModel, pool: ImagePool, calibration: CalibrationSet) -> Shipment:
        """Pack the driver's model and pool images."""
        run = f"{cfg.hash()}-{source.sha256[:8]}-{calibration.sha256[:8]}"
        images = {p.hash: Path(p.sample.path).read_bytes() for p in pool.images}
        return cls(run, cfg, source, Path(source.path).read_bytes(), pool, calibration, images)

    def land(self) -> tuple[SourceModel, ImagePool, CalibrationSet, Path]:
        """Write the files under this node's scratch folder and return the objects with local paths.

        Returns:
            The source model, pool and calibration set as on the driver, and the scratch folder.
        """
        root = scratch(self.run)
        model = unpack({self.source.path.name: self.model}, root / "model")
        local = {p.hash: root / "images" / f"{p.hash}{Path(p.sample.path).suffix}" for p in self.pool.images}
        for h, path in local.items():
            unpack({path.name: self.images[h]}, path.parent)
        pool = dataclasses.replace(self.pool, images=tuple(
            PoolImage(p.hash, p.split, dataclasses.replace(p.sample, path=local[p.hash])) for p in self.pool.images))
        calibration = dataclasses.replace(self.calibration, images=tuple(local[h] for h in self.calibration.hashes))
        return dataclasses.replace(self.source, path=model), pool, calibration, root


@dataclass(frozen=True)
class Shard:
    """A run of consecutive evaluation images with their bytes (None: the file could not be read)."""

    index: int
    split: DatasetSplit  # the evaluation split's name and classes; its samples are this shard's only
    files: tuple[bytes | None, ...]

    @classmethod
    def cut(cls, evalset: DatasetSplit, size: int) -> list[Shard]:
        """The evaluation split in order, ``size`` images a shard (the ground truth stays with the driver)."""
        shards = []
        for k, start in enumerate(range(0, len(evalset.samples), size)):
            samples = evalset.samples[start:start + size]
            meta = dataclasses.replace(evalset, samples=samples, unreadable=(),
                                       gt={"images": [], "annotations": [],
                                           "categories": list(evalset.gt.get("categories", []))})
            shards.append(cls(k, meta, tuple(_read(s.path) for s in samples)))
        return shards

    def land(self, root: Path) -> DatasetSplit:
        """Write the images under ``root`` and return the shard as a split with local paths."""
        folder = root / f"shard-{self.index}"
        samples = []
        for s, data in zip(self.split.samples, self.files):
            path = folder / Path(s.path).name
            if data is not None:
                unpack({path.name: data}, folder)
            samples.append(Sample(s.image_id, path, s.width, s.height))  # unwritten: unreadable, as on the driver
        return dataclasses.replace(self.split, root=folder, samples=tuple(samples))


def _read(path: Path) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None
