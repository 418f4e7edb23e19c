"""Datasets: COCO json and YOLO-layout readers, evaluation splits and calibration sets."""

from yoloq.data.datasets import find_dataset_file, load_split
from yoloq.data.types import DatasetSplit, Sample

__all__ = ["DatasetSplit", "Sample", "find_dataset_file", "load_split"]
