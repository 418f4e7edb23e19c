"""yoloq: export YOLO detectors to every edge runtime in FP32/FP16/INT8, evaluate and record the trade-off.

Importing the package loads no heavy runtime; backends import theirs when used.
"""

__version__ = "0.1.0"
