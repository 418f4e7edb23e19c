"""``yoloq export``: one variant as a deploy bundle for the device it runs on.

The bundle holds the model the device needs (for TensorRT the ONNX its builder reads, FP16 or
calibrated Q/DQ INT8, because an engine is specific to its GPU and TensorRT version and a Jetson's
cannot be built on the host), ``export.json`` (the variant, its resolved options, the calibration
list and its hash, what was kept in float and why, versions, this machine), a ``config.yaml`` that
evaluates and times that exact model on the device, and a README with the commands.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from yoloq import __version__
from yoloq.artifacts import variant_key, workdir_of
from yoloq.backends.base import ExportContext
from yoloq.backends.deploy import loader
from yoloq.backends.registry import get_backend
from yoloq.config import RunConfig
from yoloq.errors import YoloqError
from yoloq.paths import display_path
from yoloq.pipeline import make_validator, prepare_inputs
from yoloq.preprocess import PAD_VALUE
from yoloq.progress import set_library_log
from yoloq.provenance import describe, machine, versions
from yoloq.records import write_atomic


def _device_config(cfg: RunConfig, label: str, options: dict[str, Any]) -> dict[str, Any]:
    """The config that evaluates and times the bundled model on the device (run inside the bundle)."""
    d = cfg.to_dict()
    v = d["variants"][[x.label for x in cfg.variants].index(label)]
    d["variants"] = [{**v, "name": label, "options": {**(v.get("options") or {}), **options}}]
    d["output"] = "results"
    return d


def _readme(label: str, notes: list[str]) -> str:
    lines = [f"# {label}: deploy bundle", "", f"Made by `yoloq export` on {describe(machine())}.", "",
             "`export.json` records the variant, its calibration (images, hash) and what stayed in float.", "",
             *notes, "", "Evaluate and time it on the device with yoloq (the dataset in `$YOLOQ_SHARED`, as on the "
                         "host):", "", "```bash", "pip install -e <yoloq repository>",
             "cd <this bundle> && yoloq run config.yaml", "```", ""]
    return "\n".join(lines)


def export_bundle(cfg: RunConfig, label: str, out: Path) -> Path:
    """Write the deploy bundle of variant ``label`` into ``out``; returns the bundled model's path.

    Raises:
        YoloqError: For an unknown variant, or an export that fails.
    """
    variant = next((v for v in cfg.variants if v.label == label), None)
    if variant is None:
        raise YoloqError(f"no variant '{label}' in the config; variants: {', '.join(v.label for v in cfg.variants)}")
    work = out / "work"
    inputs = prepare_inputs(cfg, work)
    set_library_log(out / "logs" / "libraries.log")
    ctx = ExportContext(inputs.source, variant, cfg.imgsz, inputs.calibration, workdir_of(work, variant),
                        validator=make_validator(inputs), threads=cfg.latency.threads, max_det=cfg.eval.max_det)
    try:
        art = get_backend(variant.format).deployable(ctx)
    except YoloqError:
        raise
    except Exception as e:  # noqa: BLE001 - any library failure is one line
        raise YoloqError(f"export of {label} failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
    src = Path(art.path)
    dest = out / (f"{label}{src.suffix}" if src.is_file() else label)
    if dest.exists():
        shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
    (shutil.copy2 if src.is_file() else shutil.copytree)(src, dest)
    key = variant_key(cfg, inputs.source, inputs.calibration, variant)
    record = {"key": key, "variant": {"name": label, "format": variant.format, "precision": str(variant.precision),
                          "device": variant.device, "options": dict(variant.options)}, "imgsz": cfg.imgsz,
              "model": {"name": inputs.source.name, "file": display_path(inputs.source.path),
                        "sha256": inputs.source.sha256}, "head": inputs.source.head.describe(),
              "calibration": inputs.calibration.describe(), "artifact": dest.name, "artifact_info": dict(art.info),
              "versions": versions(), "machine": machine()}
    write_atomic(out / "export.json", json.dumps(record, indent=1, default=str))
    options, notes = get_backend(variant.format).deploy_notes(dest.name)
    write_atomic(out / "config.yaml", yaml.safe_dump(_device_config(cfg, label, options), sort_keys=False))
    standalone = loader(variant.format)
    if standalone is not None:
        head = dict(art.info.get("head") or inputs.source.head.describe())
        meta = _meta(cfg, label, str(variant.precision), dest.name, head, inputs.source.names,
                     inputs.calibration.describe())
        write_atomic(out / "meta.json", json.dumps(meta | {"key": key}, indent=1))
        write_atomic(out / "predict.py", predict_source(standalone[0]))
        write_atomic(out / "timing.py", (Path(__file__).parent / "deploy_time.py").read_text())
        write_atomic(out / "requirements.txt", f"{standalone[1]}\nnumpy\nopencv-python-headless\n")
        notes = [*notes, "", "Run it without yoloq (the runtime, numpy and OpenCV only: `requirements.txt`):", "",
                 "```bash", "pip install -r requirements.txt",
                 "python predict.py image.jpg --draw out/ --json dets.json", "```", "",
                 "Time it on the device (yoloq's harness rules: warm-up, >= 100 runs and 10 s, p50/p90/p99, the "
                 "load of other processes), then add the result to the run's report on the host:", "", "```bash",
                 "python timing.py images/ --threads 4 --out timing.json",
                 "yoloq report RUN_DIR --device-timings timing.json    # on the host", "```", "",
                 "`meta.json` holds what `predict.py` follows: input size and layout, the letterbox, the output "
                 "layout, the head (NMS or end-to-end), class names, thresholds, the calibration hash."]
    write_atomic(out / "README.md", _readme(label, notes))
    shutil.rmtree(work, ignore_errors=True)
    return dest


def predict_source(loader_source: str) -> str:
    """The bundle's ``predict.py``: yoloq's standalone template with the runtime's loader in place of its stub."""
    template = (Path(__file__).parent / "deploy_predict.py").read_text()
    start = template.index("def load_model(")
    end = template.index("\n\n\ndef letterbox(")
    return template[:start] + loader_source.strip() + template[end:]


def _meta(cfg: RunConfig, label: str, precision: str, model_file: str, head: dict[str, Any], names: tuple[str, ...],
          calibration: dict[str, Any]) -> dict[str, Any]:
    """``meta.json``: every rule ``predict.py`` follows, so a device team can re-implement it anywhere."""
    in_model = bool(head.get("nms_in_model"))  # the model ends in its own NMS (Sony's layer on the IMX500)
    end2end = head.get("branch") == "one2one" or in_model
    return {"variant": label, "precision": precision, "model_file": model_file, "yoloq": __version__,
            "input": {"size": cfg.imgsz, "dtype": "float32", "layout": "NCHW (NHWC where a LiteRT model wants it)",
                      "color": "RGB", "scale": "pixel / 255"},
            "letterbox": {"pad": PAD_VALUE, "resize": "long side to size, bilinear", "placement": "centred"},
            "head": "end2end" if end2end else "nms",
            "output": ("[1, K, 6]: x1, y1, x2, y2, score, class (after the NMS inside the model)" if in_model else
                       "[1, K, 6]: x1, y1, x2, y2, score, class (the model's top-k)") if end2end else
                      f"[1, {4 + len(names)}, N]: cx, cy, w, h in input pixels, then one score per class",
            "postprocess": "boxes with score > conf; best class per box; class-offset greedy NMS at iou; max_det; "
                           "boxes mapped back by the letterbox and clipped to the image",
            "names": list(names), "thresholds": {"conf": cfg.latency.conf, "iou": cfg.eval.iou,
                                                 "max_det": cfg.eval.max_det},
            "calibration": {k: calibration.get(k) for k in ("sha256", "images", "sources", "seed")}}
