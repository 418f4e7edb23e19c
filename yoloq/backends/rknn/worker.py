"""The RKNN worker: runs inside the side environment (``yoloq setup rknn``), never inside yoloq's process.

It imports only the standard library, numpy and rknn-toolkit2, and speaks one JSON object per line: requests
on stdin, replies on the pipe whose file descriptor is its first argument (the toolkit prints freely to
stdout and stderr, which yoloq sends to its library log). Arrays travel as ``.npy``/``.npz`` files.

Requests (``op``):
- ``version``: the toolkit's version.
- ``build``: ``onnx`` (a static-shape ONNX), ``rknn`` (where the model goes), ``config`` (``RKNN.config`` keyword
  arguments: target_platform, mean/std, quantized_algorithm, quantized_method, ...), ``quantize`` (INT8 or
  float16), ``dataset`` (a text file of calibration ``.npy`` paths, NCHW uint8), ``auto_hybrid`` (the toolkit
  keeps in float16 the layers whose INT8 output strays from float), ``hybrid`` ([input, output] tensor pairs of
  subgraphs kept float: the toolkit's two hybrid quantization steps), ``simulate`` (then keep the built model in
  the simulator for ``infer``). Reply: ``outputs`` (the model's output names), ``seconds``.
- ``infer``: ``input`` (an ``.npy``, NCHW uint8), ``output`` (an ``.npz`` written with the outputs in order).
- ``analyze``: ``inputs`` (``.npy`` paths), ``dir``: the toolkit's own accuracy analysis (per-layer error of
  the simulated INT8 model against float) into ``dir``.

Every reply has ``ok``; a failure is ``{"ok": false, "error": "<one line>"}`` and the worker keeps serving.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback


def _last_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:500]


class Worker:
    def __init__(self) -> None:
        self.rknn = None

    def version(self, req: dict) -> dict:
        from importlib.metadata import version

        return {"version": version("rknn-toolkit2"), "numpy": version("numpy")}

    def build(self, req: dict) -> dict:
        from rknn.api import RKNN

        if self.rknn is not None:
            self.rknn.release()
            self.rknn = None
        t0 = time.perf_counter()
        rknn = RKNN(verbose=False)
        if rknn.config(**req["config"]) != 0:
            raise RuntimeError(f"RKNN.config rejected {req['config']}")
        if rknn.load_onnx(model=req["onnx"]) != 0:
            raise RuntimeError(f"RKNN could not load {os.path.basename(req['onnx'])}")
        if req.get("hybrid"):  # the toolkit's manual hybrid quantization: these subgraphs stay float
            rknn = self._hybrid(rknn, req)
        elif rknn.build(do_quantization=bool(req["quantize"]), dataset=req.get("dataset"),
                        auto_hybrid=bool(req.get("auto_hybrid"))) != 0:
            raise RuntimeError("RKNN build failed (see the library log)")
        if rknn.export_rknn(req["rknn"]) != 0:
            raise RuntimeError(f"RKNN could not write {req['rknn']}")
        if req.get("simulate"):
            if rknn.init_runtime() != 0:
                raise RuntimeError("the RKNN simulator could not start")
            self.rknn = rknn
        else:
            rknn.release()
        return {"seconds": round(time.perf_counter() - t0, 2)}

    @staticmethod
    def _hybrid(rknn, req: dict):  # noqa: ANN001, ANN205 - the toolkit's object
        """Step 1 writes ``<model>.model/.data/.quantization.cfg`` into the working folder with the named
        [input, output] subgraphs in float; step 2 builds from them."""
        from rknn.api import RKNN

        here = os.getcwd()
        os.chdir(os.path.dirname(os.path.abspath(req["rknn"])))
        try:
            if rknn.hybrid_quantization_step1(dataset=req["dataset"], custom_hybrid=req["hybrid"]) != 0:
                raise RuntimeError("RKNN hybrid quantization step 1 failed (see the library log)")
            rknn.release()
            stem = os.path.splitext(os.path.basename(req["onnx"]))[0]
            rknn = RKNN(verbose=False)
            rknn.config(**req["config"])
            if rknn.hybrid_quantization_step2(model_input=f"{stem}.model", data_input=f"{stem}.data",
                                              model_quantization_cfg=f"{stem}.quantization.cfg") != 0:
                raise RuntimeError("RKNN hybrid quantization step 2 failed (see the library log)")
            for ext in ("model", "data", "quantization.cfg"):
                os.remove(f"{stem}.{ext}")
        finally:
            os.chdir(here)
        return rknn

    def infer(self, req: dict) -> dict:
        import numpy as np

        if self.rknn is None:
            raise RuntimeError("no model in the simulator: send a build with simulate first")
        x = np.load(req["input"])
        outs = self.rknn.inference(inputs=[x], data_format=["nchw"])
        if outs is None:
            raise RuntimeError("the RKNN simulator returned no outputs")
        np.savez(req["output"], *[np.asarray(o, dtype=np.float32) for o in outs])
        return {"count": len(outs)}

    def analyze(self, req: dict) -> dict:
        if self.rknn is None:
            raise RuntimeError("no model in the simulator: send a build with simulate first")
        if self.rknn.accuracy_analysis(inputs=req["inputs"], output_dir=req["dir"]) != 0:
            raise RuntimeError("RKNN accuracy analysis failed (see the library log)")
        return {"dir": req["dir"]}


def main() -> int:
    reply = os.fdopen(int(sys.argv[1]), "w", buffering=1)
    worker = Worker()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            out = {"ok": True, **getattr(worker, req["op"])(req)}
        except Exception as e:  # noqa: BLE001 - every failure becomes one reply line; the worker keeps serving
            traceback.print_exc()
            out = {"ok": False, "error": _last_line(e)}
        reply.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
