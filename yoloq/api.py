"""yoloq's Python front door: ``yoloq.run`` a config, ``yoloq.quantize`` one model, ``yoloq.load`` an exported
model to predict with. The CLI is a thin layer over these; importing them loads no runtime.

    run = yoloq.run("configs/default.yaml")
    best = run.best(budget=0.99, metric="p50")          # the fastest variant keeping 99% of the reference
    detector = yoloq.load(run.out_dir, best.name)        # the same pre- and postprocessing as the evaluation
    dets = detector.predict("street.jpg")                # Detections: boxes (xyxy, original pixels), scores, classes
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from yoloq.config import EvalConfig, RunConfig, load_config, parse_config
from yoloq.errors import YoloqError
from yoloq.records import Record, RecordStore, reference_of

ConfigLike = RunConfig | Mapping[str, Any] | str | Path
METRICS = ("p50", "p90", "size", "map")


def as_config(config: ConfigLike, base_dir: str | Path | None = None) -> RunConfig:
    """A validated, resolved run config from a :class:`RunConfig`, a mapping (as YAML would give) or a YAML path.

    Raises:
        ConfigError: Naming the key, the value and what is allowed.
    """
    from yoloq.backends.registry import resolve_config

    if isinstance(config, RunConfig):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = parse_config(config, Path(base_dir) if base_dir else Path.cwd())
    else:
        cfg = load_config(config)
    return cfg if all(v.resolved for v in cfg.variants) else resolve_config(cfg)


@dataclass(frozen=True)
class Run:
    """A run folder and what its records hold (read afresh on each call: records are the one source)."""

    out_dir: Path
    exit_code: int = 0

    @property
    def records(self) -> list[Record]:
        """Every variant's record, in config order."""
        return sorted(RecordStore(self.out_dir).all(), key=lambda r: r.order)

    def __getitem__(self, name: str) -> Record:
        rec = RecordStore(self.out_dir).get(name)
        if rec is None:
            known = ", ".join(r.name for r in self.records)
            raise KeyError(f"no variant '{name}' in {self.out_dir}; variants: {known}")
        return rec

    @property
    def reference(self) -> Record | None:
        """The variant every other is compared to."""
        return reference_of(self.records)

    def table(self) -> list[dict[str, str]]:
        """The report's variant table, one dict of strings per variant."""
        from yoloq.report.table import rows

        return rows(self.records)

    def best(self, budget: float = 0.99, metric: str = "p50") -> Record | None:
        """Among variants (the reference included) that keep ``budget`` of the reference's mAP50-95, the best by
        ``metric``: ``p50``/``p90`` latency or ``size`` (smallest), or ``map`` (highest). None when none keeps it.

        Raises:
            ValueError: For an unknown metric or a budget outside (0, 1].
        """
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if not 0 < budget <= 1:
            raise ValueError(f"budget is a share of the reference's mAP50-95 in (0, 1], got {budget!r}")
        ref = self.reference
        if ref is None or not ref.map:
            return None
        value = {"p50": lambda r: r.p50, "p90": lambda r: r.latency.get("p90_ms"), "size": lambda r: r.size_mb,
                 "map": lambda r: -(r.map or 0.0)}[metric]
        keep = [r for r in self.records if r.ok and r.map is not None and r.map >= budget * ref.map
                and value(r) is not None]
        return min(keep, key=value, default=None)

    def report(self) -> Path:
        """Rebuild the report files from the records; returns ``report.html``."""
        from yoloq.report import write_reports

        write_reports(RecordStore(self.out_dir))
        return self.out_dir / "report.html"


def run(config: ConfigLike, out: str | Path | None = None, wait: bool = False, retime: bool = False) -> Run:
    """Export, evaluate and time every variant of ``config`` (what ``yoloq run`` does).

    Args:
        config: A :class:`RunConfig`, a mapping as the YAML would give, or a YAML path.
        out: The run folder (default: the config's ``output``/<this machine>).
        wait: When another run writes that folder, wait for it (default: raise).
        retime: Time every variant again side by side, though its latency is recorded.

    Raises:
        YoloqError: When the run cannot start (config, model, data, output folder).
    """
    from yoloq.pipeline import default_out
    from yoloq.pipeline import run as run_pipeline

    cfg = as_config(config)
    out_dir = Path(out) if out else default_out(cfg)
    return Run(out_dir, run_pipeline(cfg, out_dir, wait, retime))


def quantize(model: str | Path, format: str, precision: str = "int8", data: str | Mapping[str, Any] = "coco-mini",
             calibration: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None,
             imgsz: int = 640, out: str | Path | None = None) -> Record:
    """Export ``model`` to one format and precision, calibrated on train images, evaluated on ``data``.

    Args:
        model: A .pt/.onnx path or a model name (looked up as a run config's ``model``).
        format: A registered format (``onnxruntime``, ``openvino``, ``litert``, ...).
        precision: ``fp32``, ``fp16`` or ``int8``.
        data: The evaluation split: a dataset name (its ``val2017`` split) or ``{dataset, split, max_images}``.
        calibration: The config's ``calibration`` section (default: coco-mini + coco128 train2017, 200 images).
        options: The backend's options for this variant.
        imgsz: Input size.
        out: The run folder (default: ``results/quantize/<model>-<format>-<precision>``).

    Returns:
        The variant's record: ``artifact`` (the exported file, relative to the run folder), metrics, size, latency.

    Raises:
        YoloqError: Bad model, format, option or data, or a failed export (its reason).
    """
    variant = {"format": format, "precision": precision, "options": dict(options or {})}
    stem = Path(str(model)).stem
    cfg: dict[str, Any] = {"model": str(model), "imgsz": imgsz, "data": data, "variants": [variant],
                           "latency": {"warmup": 2, "min_runs": 20, "min_seconds": 0, "images": 4},
                           "output": str(out or f"results/quantize/{stem}-{format}-{precision}")}
    if calibration is not None:
        cfg["calibration"] = dict(calibration)
    result = run(cfg, out=out)
    rec = result.records[0]
    if not rec.ok:
        raise YoloqError(f"{rec.name}: {rec.status}: {rec.reason}")
    return rec


class Predictor:
    """An exported model with yoloq's one letterbox and postprocess: ``predict(image) -> Detections``.

    Attributes:
        names: Class names, by class index.
        record: The variant's record, when loaded from a run folder.
    """

    def __init__(self, runtime: Any, imgsz: int, names: tuple[str, ...], end2end: bool,
                 record: Record | None = None, conf: float = 0.25, iou: float = 0.7, max_det: int = 300,
                 multi_label: bool = False) -> None:
        self.runtime, self.imgsz, self.names, self.end2end, self.record = runtime, imgsz, names, end2end, record
        self.eval = EvalConfig(conf=conf, iou=iou, max_det=max_det, multi_label=multi_label)

    def raw(self, image: np.ndarray | str | Path) -> tuple[np.ndarray, Any]:
        """The model's raw head output on one image, and its letterbox."""
        from yoloq.preprocess import prepare, read_image

        img = read_image(Path(image)) if isinstance(image, (str, Path)) else image
        x, lbs = prepare([img], self.imgsz)
        return self.runtime.predict(x), lbs

    def predict(self, image: np.ndarray | str | Path, conf: float | None = None) -> Any:
        """Detections (xyxy in the image's pixels, scores, class indices) on a BGR image or an image file."""
        from dataclasses import replace

        from yoloq.postprocess import postprocess

        raw, lbs = self.raw(image)
        cfg = self.eval if conf is None else replace(self.eval, conf=conf)
        return postprocess(raw, lbs, cfg, self.end2end)[0]


def load(path: str | Path, variant: str | None = None, threads: int = 2, thresholds: str = "deploy") -> Predictor:
    """Load an exported model for prediction: a run folder and one of its variants (``variant``; default: its
    reference), with the imgsz, head branch and class names the record knows.

    ``thresholds``: ``"deploy"`` (confidence 0.25, one class a box, IoU 0.7) or ``"evaluation"`` (the settings the
    run scored mAP with, from the record: Ultralytics' validation defaults unless the config set others), under
    which ``predict`` gives the run's own detections.

    Raises:
        YoloqError: When the folder, variant or its export is missing, or the variant did not run.
    """
    from yoloq.backends.base import Artifact
    from yoloq.backends.registry import get_backend
    from yoloq.models import load_source
    from yoloq.paths import from_display

    if thresholds not in ("deploy", "evaluation"):
        raise ValueError(f"thresholds={thresholds!r}: give 'deploy' or 'evaluation'")
    run_dir = Path(path)
    if not (run_dir / "records.jsonl").is_file():
        raise YoloqError(f"{run_dir} is not a run folder (no records.jsonl): give the folder 'yoloq run' wrote")
    result = Run(run_dir)
    rec = result.reference if variant is None else RecordStore(run_dir).get(variant)
    if rec is None or not rec.ok or not rec.artifact:
        names = ", ".join(r.name for r in result.records if r.ok)
        raise YoloqError(f"no ok variant '{variant}' with an export in {run_dir}; ok variants: {names or 'none'}")
    file = from_display(rec.artifact, run_dir)
    if not file.exists():
        raise YoloqError(f"{rec.name}: its export {file} is gone; run the config again to rebuild it")
    runtime = get_backend(rec.format).load(Artifact(file, rec.format, rec.precision, rec.artifact_info), threads,
                                           rec.device)
    source = load_source(str(from_display(rec.model["file"], run_dir)))
    settings = {k: rec.eval_settings[k] for k in ("conf", "iou", "max_det", "multi_label")} \
        if thresholds == "evaluation" else {}
    return Predictor(runtime, rec.imgsz, source.names, rec.end2end, rec, **settings)
