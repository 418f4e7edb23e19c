"""Diagnosis: where an IMX500 model's INT8 loss is. MCT's quantized model (as exported for the camera) scored on
tuning images beside torch FP32, then again with groups of its quantizers given more bits than the sensor allows:

    python tests/bench_imx500_bits.py CONFIG TUNE_DIR [--variant imx500-int8@default] [--images 150]

Not a test (pytest does not collect it): it prints figures and writes them, with the machine, to
``TUNE_DIR/imx500-bits.json``. The rewrites edit the quantizers' attributes in a copy of the quantized ONNX (bits
16; ranges x4 where it says so: the power-of-two threshold widened two steps, so nothing clips) and run it with the
same simulation as the scoring loop; they are not models the camera can run, only a measure of what each group of
quantizers costs. The images are the config's tuning split (``tune.data``), never its evaluation images.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import onnx

from yoloq.accuracy import score
from yoloq.artifacts import cached_artifact
from yoloq.backends.imx500.backend import Imx500Runtime, onnx_file, simulated_as_standard
from yoloq.backends.torch_backend import TorchRuntime
from yoloq.config import load_config
from yoloq.data import load_split
from yoloq.models import resolve_model
from yoloq.provenance import describe, machine
from yoloq.records import write_atomic

# name: (quantizer kind, pattern over its layer's name, widen the range); the head's outputs are what the IMX500 can
# take at 16 bits (not the scores: its NMS takes 8-bit scores only)
REWRITES = {
    "activations 16-bit": [("Activation", ".", False)],
    "activations 16-bit, ranges x4": [("Activation", ".", True)],
    "weights 16-bit": [("Weights", ".", False)],
    "the box decode's constants 16-bit (anchors, strides)": [("WeightsPOT", ".", False)],
    "activations and weights 16-bit, ranges x4": [("Activation", ".", True), ("Weights", ".", False)],
    "head outputs 16-bit, ranges x4 (what the sensor allows)": [
        ("Activation", r"^model_\d+_(cv[23]_\d+_2|dfl_conv)_|^cat_18_", True)],
}


def rewritten(src: Path, rules: list[tuple[str, str, bool]], dest: Path) -> int:
    """A copy of ``src`` with the quantizers ``rules`` match at 16 bits (ranges x4 where a rule says so); how many
    quantizers changed."""
    model, changed = onnx.load(str(src)), 0
    for node in model.graph.node:
        layer = node.name.split("/")[2] if node.name.count("/") >= 2 else node.name
        for kind, pattern, widen in rules:
            if not (node.op_type.startswith(kind) and "Quantizer" in node.op_type and re.search(pattern, layer)):
                continue
            for a in node.attribute:
                if a.name == "num_bits" and a.i < 16:
                    a.i, changed = 16, changed + 1
                if a.name == "threshold" and widen:
                    a.f *= 4
    onnx.save(model, str(dest))
    return changed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("tune_dir", type=Path)
    ap.add_argument("--variant", default="imx500-int8@default")
    ap.add_argument("--images", type=int, default=150)
    args = ap.parse_args()
    cfg = load_config(args.config)
    if cfg.tune is None or cfg.tune.data is None:
        sys.exit(f"{args.config} has no tune.data: the diagnosis runs on tuning images only")
    folder = args.tune_dir / "artifacts" / args.variant
    manifest = folder / "artifact.json"
    art = cached_artifact(folder, json.loads(manifest.read_text())["key"]) if manifest.is_file() else None
    if art is None:
        sys.exit(f"no export of {args.variant} under {args.tune_dir / 'artifacts'}: run yoloq tune first")
    split = load_split(cfg.tune.data)
    split = type(split)(split.name, split.split, split.root, split.samples[:args.images], split.names,
                        split.category_ids, split.gt, split.unreadable)
    rows = []

    def run(name: str, runtime: object, changed: int | None = None) -> None:
        ev, _ = score(runtime.predict, split, split.category_ids, cfg.imgsz, cfg.eval, False, label=f"  {name}")
        m = ev.evaluate()
        rows.append({"name": name, "quantizers_changed": changed, "map50_95": m.map50_95, "map_small": m.map_small})
        ref = rows[0]["map50_95"]
        print(f"{name:58s} mAP50-95 {m.map50_95:.4f} ({m.map50_95 / ref:.1%})  small {m.map_small:.4f}", flush=True)

    run("torch FP32", TorchRuntime(resolve_model(cfg.model), 2, "cpu", half=False, end2end=False,
                                   max_det=cfg.eval.max_det))
    src, standard = onnx_file(art), simulated_as_standard(art)  # as the scoring loop runs it
    run("IMX500 INT8 as exported", Imx500Runtime(src, 2, standard), 0)
    with tempfile.TemporaryDirectory() as tmp:
        for name, rules in REWRITES.items():
            dest = Path(tmp) / f"{len(rows)}.onnx"
            changed = rewritten(src, rules, dest)
            run(name, Imx500Runtime(dest, 2, standard), changed)
    out = args.tune_dir / "imx500-bits.json"
    write_atomic(out, json.dumps({"machine": machine(), "described": describe(machine()), "variant": args.variant,
                                  "images": len(split.samples), "split": f"{split.name}/{split.split}",
                                  "rows": rows}, indent=1))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
