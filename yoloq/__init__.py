"""yoloq: export YOLO detectors to every edge runtime in FP32/FP16/INT8, evaluate and record the trade-off.

Importing the package loads no heavy runtime; backends import theirs when used.

    import yoloq
    run = yoloq.run("configs/default.yaml")        # or a dict, or a RunConfig
    best = run.best(budget=0.99, metric="p50")
    dets = yoloq.load(run.out_dir, best.name).predict("image.jpg")
"""

from yoloq.api import Predictor, Run, load, quantize, run

__version__ = "0.1.0"
__all__ = ["Predictor", "Run", "load", "quantize", "run", "__version__"]
