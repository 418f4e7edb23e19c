"""The ``yoloq`` command: ``run`` (the main job) and ``report``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from yoloq.errors import YoloqError

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def _cmd_run(args: argparse.Namespace) -> int:
    from yoloq.config import load_config
    from yoloq.pipeline import run

    cfg = load_config(args.config)
    return run(cfg, Path(args.out) if args.out else None)


def _run_dir(path: str) -> Path:
    run_dir = Path(path)
    if not (run_dir / "records.jsonl").is_file():
        raise YoloqError(f"no records.jsonl in {run_dir} (give the folder a 'yoloq run' wrote)")
    return run_dir


def _run_settings(run_dir: Path) -> dict:
    import yaml

    f = run_dir / "config.yaml"
    if not f.is_file():
        return {}
    try:
        data = yaml.safe_load(f.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise YoloqError(f"{f} cannot be read as YAML ({type(e).__name__}); restore it from the config the run "
                         f"used, or delete it to report without budget/reference settings") from None
    if not isinstance(data, dict):
        raise YoloqError(f"{f} is not a yoloq run config (expected a mapping)")
    return data


def _cmd_report(args: argparse.Namespace) -> int:
    from yoloq.config import BudgetConfig, ReportConfig, from_mapping
    from yoloq.finalize import finalize
    from yoloq.report import write_reports

    run_dir = _run_dir(args.run_dir)
    settings = _run_settings(run_dir)
    budget = from_mapping(BudgetConfig, settings.get("budget") or {}, "budget")
    report = from_mapping(ReportConfig, settings.get("report") or {}, "report")
    info = finalize(run_dir, settings.get("reference"), budget, report)
    print(write_reports(run_dir, settings.get("reference")))
    print(f"report: {run_dir / 'report.html'} ({info['intervals']} bootstrap intervals in "
          f"{info['bootstrap_s']:.1f}s)", file=sys.stderr)
    return EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    from yoloq.budget import verdict
    from yoloq.config import BudgetConfig, from_mapping
    from yoloq.pipeline import print_budget
    from yoloq.records import load_records
    from yoloq.report import reference_of

    run_dir = _run_dir(args.run_dir)
    settings = _run_settings(run_dir)
    budget = from_mapping(BudgetConfig, settings.get("budget") or {}, "budget")
    if args.min_retention is not None or args.max_map_drop is not None:
        budget = BudgetConfig(args.min_retention, args.max_map_drop)
    if not budget.active:
        raise YoloqError(f"no accuracy budget for {run_dir}: set 'budget:' in the config or pass --min-retention")
    records = load_records(run_dir / "records.jsonl")
    ref = reference_of(records, settings.get("reference"))
    if ref is None:
        raise YoloqError(f"{run_dir} has no ok reference variant to judge against")
    for r in records:
        r["budget"] = verdict(r, ref, budget)
    return EXIT_OK if print_budget(records) else EXIT_FAILED


def _cmd_qat(args: argparse.Namespace) -> int:
    import torch

    from yoloq.config import load_config
    from yoloq.qat import run_qat

    cfg = load_config(args.config)
    torch.set_num_threads(cfg.latency.threads)
    return run_qat(cfg, Path(args.out) if args.out else None)


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    from yoloq.backends._export import base_onnx
    from yoloq.config import load_config
    from yoloq.pipeline import prepare_inputs
    from yoloq.sensitivity import analyse, write_sensitivity

    cfg = load_config(args.config)
    variant = next((v for v in cfg.variants if v.label == args.variant), None)
    if variant is None:
        raise YoloqError(f"no variant '{args.variant}' in {args.config}; variants: "
                         f"{', '.join(v.label for v in cfg.variants)}")
    if variant.format not in ("onnxruntime", "openvino") or variant.precision != "int8":
        raise YoloqError(f"sensitivity ranks the layers of an onnxruntime or openvino int8 variant, "
                         f"not {variant.label}")
    out_dir = Path(args.out or cfg.output)
    inputs = prepare_inputs(cfg, out_dir)
    fp32 = base_onnx(inputs.source, cfg.imgsz, out_dir / "artifacts")
    results = analyse(cfg, variant, fp32, inputs.calibration, args.granularity, args.images)
    dest = out_dir / f"sensitivity-{variant.label}-{args.granularity}"
    print(write_sensitivity(results, dest, f"INT8 sensitivity of {inputs.source.name} ({variant.label}, "
                                           f"{args.granularity}s, {args.images} calibration images)"))
    print(f"written: {dest}/sensitivity.md, .csv, .png", file=sys.stderr)
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace) -> int:
    from yoloq.compare import compare

    a, b = _run_dir(args.run_a), _run_dir(args.run_b)
    out = Path(args.out) if args.out else b / f"compare-{a.name}.md"
    print(compare(a, b, out))
    print(f"written: {out}", file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (sub-commands run and report)."""
    p = argparse.ArgumentParser(prog="yoloq", description="Export, quantize, evaluate and record YOLO detectors.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="export, evaluate and time every variant of a config")
    r.add_argument("config", help="YAML config, e.g. configs/default.yaml")
    r.add_argument("--out", help="output folder (default: the config's 'output')")
    r.set_defaults(func=_cmd_run)
    rep = sub.add_parser("report", help="rebuild report.md/html, summary.csv and intervals from a run's records")
    rep.add_argument("run_dir")
    rep.set_defaults(func=_cmd_report)
    chk = sub.add_parser("check", help="exit 1 when any variant breaks the accuracy budget (for CI)")
    chk.add_argument("run_dir")
    chk.add_argument("--min-retention", type=float, help="override: keep at least this share of the reference")
    chk.add_argument("--max-map-drop", type=float, help="override: lose at most this much mAP50-95")
    chk.set_defaults(func=_cmd_check)
    qat = sub.add_parser("qat", help="quantization-aware training on train images, then evaluate its INT8 exports")
    qat.add_argument("config")
    qat.add_argument("--out", help="output folder (default: the config's 'output'; PTQ and QAT side by side)")
    qat.set_defaults(func=_cmd_qat)
    sen = sub.add_parser("sensitivity", help="rank layers by the error INT8 quantization of each alone adds")
    sen.add_argument("config")
    sen.add_argument("--variant", required=True, help="an onnxruntime/openvino int8 variant of the config")
    sen.add_argument("--granularity", choices=("block", "layer"), default="block")
    sen.add_argument("--images", type=int, default=16, help="calibration images to measure on")
    sen.add_argument("--out", help="output folder (default: the config's 'output')")
    sen.set_defaults(func=_cmd_sensitivity)
    cmp_ = sub.add_parser("compare", help="variant-by-variant change in mAP and latency between two runs")
    cmp_.add_argument("run_a")
    cmp_.add_argument("run_b")
    cmp_.add_argument("--out", help="report file (default: RUN_B/compare-<RUN_A>.md)")
    cmp_.set_defaults(func=_cmd_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns 0 (all ok/skipped), 1 (a variant failed) or 2 (invalid config, data or model)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except YoloqError as e:
        if args.debug:
            raise
        print(f"yoloq: error: {e}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("yoloq: interrupted; finished variants are kept in records.jsonl, run again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
