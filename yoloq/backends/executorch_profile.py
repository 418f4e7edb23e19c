"""What an ExecuTorch program runs, from ExecuTorch's own event tracer (ETDump): XNNPACK's operators inside each
delegate call and the portable kernels between the calls, each with its time and the precision it computes in.

XNNPACK names an operator with its data type (``Convolution (NHWC, QC8) IGEMM``: int8; ``Fully Connected (NC, F32)
GEMM``: fp32; ``Transpose (ND, X8)``: moves int8 data). Elementwise operators carry no type (``Sigmoid (NC)``,
``Multiply (ND)``); they compute in the type of what flows into them, which changes at each ``Convert (NC)`` (a
quantize or a dequantize): the type is followed along the delegate's operator order. XNNPACK's int8 table operator
(an int8 sigmoid) is named ``Invalid Unary Op`` by the XNNPACK ExecuTorch ships: it is shown as what it is.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from yoloq.backends.base import LayerRun

_INT8 = re.compile(r"\b(QC8|QS8|QU8|QD8|QP8|X8|QC8W|QC4W)\b")
_FLOAT = re.compile(r"\b(F32|X32|F16|X16|BF16)\b")
_SKIP = ("OPERATOR_CALL", "DELEGATE_CALL", "Method::execute")  # wrappers: their time is their contents'
_TABLE = ("Invalid Unary Op", "Lookup Table (NC, X8)")  # XNNPACK's name for its int8 table op, and what it is


def precisions(names: Iterable[str]) -> list[str]:
    """Each delegated operator's precision, in order: its own type where its name has one, ``convert`` for a
    Convert, else the type flowing in (int8 after an int8 operator, flipped by each Convert)."""
    out, flowing = [], "fp32"
    for name in names:
        name = name.replace(*_TABLE)
        types = name[name.find("(") + 1:name.find(")")] if "(" in name else ""
        if name.startswith("Convert"):
            out.append("convert")
            flowing = "fp32" if flowing == "int8" else "int8"
        elif _INT8.search(types):
            flowing = "int8"
            out.append("int8")
        elif _FLOAT.search(types):
            flowing = "fp32"
            out.append("fp32")
        else:
            out.append(flowing)
    return out


def etdump_layers(path: Path, batch: np.ndarray, threads: int, runs: int) -> list[LayerRun]:
    """Run the program at ``path`` ``runs`` times after one warm-up with ExecuTorch's event tracer on; each
    operator's median time (ms) over the timed runs. No MACs: the tracer does not give shapes."""
    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)
    module = portable_lib._load_for_executorch(str(path), enable_etdump=True, debug_buffer_size=0)
    x = torch.from_numpy(np.ascontiguousarray(batch, np.float32))
    for _ in range(runs + 1):
        module.forward([x])
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "run.etdp"
        module.write_etdump_result_to_file(str(dump))
        inspector = Inspector(etdump_path=str(dump))
    events: list[Any] = [e for b in inspector.event_blocks if b.name == "Execute" for e in b.events
                         if e.name not in _SKIP and e.perf_data is not None]
    delegated = [e for e in events if e.is_delegated_op]
    prec = dict(zip((id(e) for e in delegated), precisions(e.name for e in delegated)))
    out = []
    for e in events:
        name = e.name.replace(*_TABLE)
        op = re.sub(r" #\d+$", "", name)
        kind, _, rest = op.partition(" (")  # "Fully Connected (NC, F32) GEMM" -> "FullyConnected (NC, F32) GEMM"
        op = kind.replace(" ", "") + (f" ({rest}" if rest else "")
        raw = list(e.perf_data.raw)[1:] or list(e.perf_data.raw)  # the warm-up run left out
        if e.is_delegated_op:
            out.append(LayerRun(name, f"{op} (XNNPACK)", prec[id(e)], float(np.median(raw))))
        else:  # a portable kernel between delegate calls: ExecuTorch's float reference ops
            out.append(LayerRun(e.name, op.replace("native_call_", "") + " (portable)", "fp32",
                                float(np.median(raw))))
    return out
