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


def _cmd_report(args: argparse.Namespace) -> int:
    from yoloq.report import write_summary

    run_dir = Path(args.run_dir)
    if not (run_dir / "records.jsonl").is_file():
        raise YoloqError(f"no records.jsonl in {run_dir} (give the folder a 'yoloq run' wrote)")
    print(write_summary(run_dir))
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
    rep = sub.add_parser("report", help="rebuild summary.csv and report.md from a run's records")
    rep.add_argument("run_dir")
    rep.set_defaults(func=_cmd_report)
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
