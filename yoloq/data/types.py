"""The samples every dataset reader produces, whatever the layout on disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


@dataclass(frozen=True)
class Sample:
    """One image: its id in the COCO ground truth, its file and its size."""

    image_id: int
    path: Path
    width: int
    height: int


@dataclass(frozen=True)
class DatasetSplit:
    """One split of a dataset, with its ground truth as a COCO dict for pycocotools.

    ``category_ids[i]`` is the COCO category id of the dataset's class ``names[i]``.
    """

    name: str
    split: str
    root: Path
    samples: tuple[Sample, ...]
    names: tuple[str, ...]
    category_ids: tuple[int, ...]
    gt: Mapping[str, Any] = field(repr=False, default_factory=dict)
    unreadable: tuple[str, ...] = ()
    file: Path | None = None  # the dataset YAML it was read from (a user's own anywhere, or one in datasets/)

    def annotations_of(self, image_id: int) -> list[dict[str, Any]]:
        """The ground-truth annotations of one image."""
        index = self.__dict__.get("_by_image")
        if index is None:
            index = {}
            for a in self.gt.get("annotations", []):
                index.setdefault(a["image_id"], []).append(a)
            object.__setattr__(self, "_by_image", index)
        return index.get(image_id, [])

    def category_map(self, model_names: tuple[str, ...]) -> tuple[int, ...]:
        """Map each model class index to this dataset's category id, by class name.

        Raises:
            DataError: When a model class has no category of the same name in the dataset.
        """
        from yoloq.errors import DataError

        by_name = {n: c for n, c in zip(self.names, self.category_ids)}
        missing = [n for n in model_names if n not in by_name]
        if missing:
            raise DataError(
                f"class names of the model and dataset '{self.name}' disagree: {len(missing)} model classes "
                f"(e.g. {missing[:3]}) are not dataset categories; evaluate the model on a dataset with its classes")
        return tuple(by_name[n] for n in model_names)
