"""The ``yoloq`` command: one subcommand per job (run, tune, report, export, explain, setup and the others)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from yoloq.config import EMULATED_CPUS
from yoloq.errors import YoloqError

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def _config(path: str | Path) -> Any:
    """A config file read, validated and resolved against the backends."""
    from yoloq.backends.registry import resolve_config
    from yoloq.config import load_config

    return resolve_config(load_config(path))


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return n


def _cmd_run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    if args.ray is not None:
        from yoloq.cluster.driver import run_on_ray

        return run_on_ray(_config(args.config), args.ray, out, args.shard_images, args.wait, args.retime)
    from yoloq.api import run

    return run(_config(args.config), out, args.wait, args.retime).exit_code


def run_dir_of(path: str, prefer_other_machine: bool = False) -> Path:
    """The run folder ``path`` names: the folder itself, or its one per-machine sub-folder.

    A config's ``output`` holds one folder per machine; with several, ``prefer_other_machine`` picks
    the one other machine's run when there is exactly one.

    Raises:
        YoloqError: When no run (or more than one) is found there.
    """
    run_dir = Path(path)
    if (run_dir / "records.jsonl").is_file():
        return run_dir
    runs = sorted(p.parent for p in run_dir.glob("*/records.jsonl")) if run_dir.is_dir() else []
    if prefer_other_machine and len(runs) > 1:
        from yoloq.provenance import machine

        others = [r for r in runs if r.name != machine()["id"]]
        runs = others if len(others) == 1 else runs
    if len(runs) == 1:
        return runs[0]
    if runs:
        raise YoloqError(f"{run_dir} holds runs of {len(runs)} machines: {', '.join(r.name for r in runs)}; "
                         f"give one of them")
    raise YoloqError(f"no records.jsonl in {run_dir} (give the folder a 'yoloq run' wrote)")


def _run_settings(run_dir: Path, required: bool = False) -> dict:
    import yaml

    f = run_dir / "config.yaml"
    if not f.is_file():
        if required:
            raise YoloqError(f"{run_dir} has no config.yaml, so its run cannot be repeated (give a folder "
                             f"'yoloq run' wrote)")
        return {}
    try:
        data = yaml.safe_load(f.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise YoloqError(f"{f} cannot be read as YAML ({type(e).__name__}); restore it from the config the run "
                         f"used, or delete it to report without budget/reference settings") from None
    if not isinstance(data, dict):
        raise YoloqError(f"{f} is not a yoloq run config (expected a mapping)")
    return data


def _report(run_dir: Path) -> dict[str, Any]:
    from yoloq.config import BudgetConfig, ReportConfig, from_mapping
    from yoloq.finalize import finalize
    from yoloq.records import RecordStore
    from yoloq.report import write_reports

    settings = _run_settings(run_dir)
    budget = from_mapping(BudgetConfig, settings.get("budget") or {}, "budget")
    report = from_mapping(ReportConfig, settings.get("report") or {}, "report")
    store = RecordStore(run_dir)
    info = finalize(store, budget, report)
    print(write_reports(store))
    return info


def _cmd_report(args: argparse.Namespace) -> int:
    run_dir = run_dir_of(args.run_dir)
    if args.device_timings:
        from yoloq.device_timings import add_device_timings
        from yoloq.records import RecordStore

        for line in add_device_timings(RecordStore(run_dir), [Path(f) for f in args.device_timings]):
            print(line, file=sys.stderr)
    info = _report(run_dir)
    print(f"report: {run_dir / 'report.html'} ({info['intervals']} bootstrap intervals in "
          f"{info['bootstrap_s']:.1f}s)", file=sys.stderr)
    return EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    from yoloq.budget import print_budget, verdict
    from yoloq.config import BudgetConfig, from_mapping
    from yoloq.records import RecordStore, reference_of

    run_dir = run_dir_of(args.run_dir)
    settings = _run_settings(run_dir)
    budget = from_mapping(BudgetConfig, settings.get("budget") or {}, "budget")
    if args.min_retention is not None or args.max_map_drop is not None:
        budget = BudgetConfig(args.min_retention, args.max_map_drop)
    if not budget.active:
        raise YoloqError(f"no accuracy budget for {run_dir}: set 'budget:' in the config or pass --min-retention")
    records = RecordStore(run_dir).all()
    ref = reference_of(records)
    if ref is None:
        raise YoloqError(f"{run_dir} has no ok reference variant to judge against")
    for r in records:
        r.budget = verdict(r, ref, budget)
    return EXIT_OK if print_budget(records) else EXIT_FAILED


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from yoloq.backends.registry import resolve_config
    from yoloq.config import parse_config
    from yoloq.paths import REPO_ROOT
    from yoloq.pipeline import default_out, run
    from yoloq.records import RecordStore
    from yoloq.report.reproduce import reproduce_report

    old = run_dir_of(args.run_dir, prefer_other_machine=True)
    damaged = RecordStore(old).damaged
    if damaged:
        raise YoloqError(f"{old / 'records.jsonl'} line {damaged[0]} is damaged, so that run cannot be compared; "
                         f"restore the file (e.g. from git) or remove the line")
    cfg = resolve_config(parse_config(_run_settings(old, required=True), base_dir=REPO_ROOT / "configs"), stored=True)
    out = Path(args.out) if args.out else default_out(cfg)
    if out.resolve() == old.resolve():
        out = old.with_name(old.name + "-reproduced")
    print(f"yoloq reproduce: the config of {old}, run on this machine into {out}", file=sys.stderr)
    code = run(cfg, out)
    text, mismatch = reproduce_report(old, out)
    print(text)
    print(f"written: {out / 'reproduce.md'}", file=sys.stderr)
    return EXIT_FAILED if mismatch or code else EXIT_OK


def _cmd_qat(args: argparse.Namespace) -> int:
    import torch

    from yoloq.qat import run_qat

    cfg = _config(args.config)
    torch.set_num_threads(cfg.latency.threads)
    return run_qat(cfg, Path(args.out) if args.out else None)


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    from yoloq.backends.base import ExportContext
    from yoloq.backends.registry import get_backend
    from yoloq.pipeline import default_out, prepare_inputs
    from yoloq.progress import set_library_log, step
    from yoloq.report.sensitivity import write_sensitivity

    cfg = _config(args.config)
    variant = next((v for v in cfg.variants if v.label == args.variant), None)
    if variant is None:
        raise YoloqError(f"no variant '{args.variant}' in {args.config}; variants: "
                         f"{', '.join(v.label for v in cfg.variants)}")
    backend = get_backend(variant.format)
    if variant.precision != "int8" or not backend.supports_sensitivity:
        raise YoloqError(f"sensitivity ranks the layers of an int8 variant of a backend that supports it, "
                         f"not {variant.label}")
    out_dir = Path(args.out) if args.out else default_out(cfg)
    inputs = prepare_inputs(cfg, out_dir)
    backend.check(variant, inputs.source)  # its packages and a source model it reads, as a run checks
    ctx = ExportContext(inputs.source, variant, cfg.imgsz, inputs.calibration, out_dir / "artifacts" / variant.label,
                        threads=cfg.latency.threads)
    set_library_log(out_dir / "logs" / "libraries.log")
    with step(f"rank the layer groups of {variant.label}"):
        results = backend.sensitivity(ctx, args.granularity, args.images)
    dest = out_dir / f"sensitivity-{variant.label}-{args.granularity}"
    print(write_sensitivity(results, dest, f"INT8 sensitivity of {inputs.source.name} ({variant.label}, "
                                           f"{args.granularity}s, {args.images} calibration images)"))
    print(f"written: {dest}/sensitivity.md, .csv, .png", file=sys.stderr)
    return EXIT_OK


def _cmd_explain(args: argparse.Namespace) -> int:
    from yoloq.explain import explain
    from yoloq.records import RecordStore
    from yoloq.report import write_reports

    run_dir = run_dir_of(args.run_dir)
    names = args.variant or [r.name for r in _int8_records(run_dir)]
    for name in names:
        print(explain(run_dir, name, args.runs))
    write_reports(RecordStore(run_dir))  # the report shows the summaries the records now hold
    print(f"written: {', '.join(str(run_dir / f'explain-{n}.md') for n in names)}", file=sys.stderr)
    return EXIT_OK


def _int8_records(run_dir: Path) -> list[Any]:
    from yoloq.records import RecordStore

    return [r for r in RecordStore(run_dir).all() if r.ok and r.precision == "int8"]


def _cmd_export(args: argparse.Namespace) -> int:
    from yoloq.bundle import export_bundle

    out = Path(args.out)
    dest = export_bundle(_config(args.config), args.variant, out)
    print(f"written: {dest}, {out / 'export.json'}, {out / 'config.yaml'}, {out / 'README.md'}")
    print((out / "README.md").read_text())
    return EXIT_OK


def _cmd_tune(args: argparse.Namespace) -> int:
    from yoloq.tune import tune

    result = tune(args.config, args.variant, args.out, args.minutes, args.budget, args.candidate)
    print(result.files["md"].read_text())
    for name, t in result.chosen.items():
        print(f"{name}: " + (f"chose {t.candidate} {dict(t.options) or '(defaults)'}" if t else
                             "nothing recommended (no INT8 setting is faster here than its float variant)"))
    print(f"written: {result.files['tuned']}, {result.files['md']} ({result.minutes:.1f} min); evaluate with: "
          f"yoloq run {result.files['tuned']}", file=sys.stderr)
    return EXIT_OK


def _cmd_docs(args: argparse.Namespace) -> int:
    from yoloq.paths import REPO_ROOT
    from yoloq.report.docs import refresh

    pages = [Path(p) for p in args.pages] or [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    missing = [p for p in pages if not p.is_file()]
    if missing:
        raise YoloqError(f"no page {missing[0]}")
    written = {p: refresh(p, REPO_ROOT) for p in pages}
    print(f"{sum(written.values())} results tables written from the records in "
          f"{', '.join(p.name for p, n in written.items() if n) or 'no page'}")
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace) -> int:
    from yoloq.report.compare import compare

    a, b = run_dir_of(args.run_a), run_dir_of(args.run_b)
    out = Path(args.out) if args.out else b / f"compare-{a.name}.md"
    print(compare(a, b, out))
    print(f"written: {out}", file=sys.stderr)
    return EXIT_OK


def _cmd_setup(args: argparse.Namespace) -> int:
    from yoloq.backends.registry import get_backend

    if args.format == "aarch64":  # not a format: the Arm userland that emulated variants run in
        from yoloq.emulate.userland import Userland

        print(f"aarch64: ready ({Userland().setup()})", file=sys.stderr)
        return EXIT_OK
    where = get_backend(args.format).setup()
    print(f"{args.format}: ready ({where})" if where else f"{args.format}: nothing to set up beside yoloq's own "
          f"environment", file=sys.stderr)
    return EXIT_OK


def _cmd_emulate(args: argparse.Namespace) -> int:
    import subprocess

    from yoloq.emulate.userland import Userland

    land = Userland()
    land.check()
    return subprocess.run(land.command(args.cpu, [args.script, *args.args]), env=land.env()).returncode


def build_parser() -> argparse.ArgumentParser:
    """The argument parser and its sub-commands."""
    p = argparse.ArgumentParser(prog="yoloq", description="Export, quantize, evaluate and record YOLO detectors.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="export, evaluate and time every variant of a config")
    r.add_argument("config", help="YAML config, e.g. configs/default.yaml")
    r.add_argument("--out", help="output folder (default: the config's 'output'/<this machine>, or "
                                 "'output'/ray-<this machine> with --ray)")
    r.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                   help="run on a Ray cluster (host:port of its head; default: the one 'ray start' began here); "
                        "needs pip install -e \".[ray]\"")
    r.add_argument("--shard-images", type=_positive, default=250, metavar="N",
                   help="with --ray: evaluation images per accuracy task (default 250)")
    r.add_argument("--wait", action="store_true", help="wait for another run writing the folder (default: refuse)")
    r.add_argument("--retime", action="store_true", help="time every variant again, side by side (a disturbed pass)")
    r.set_defaults(func=_cmd_run)
    rep = sub.add_parser("report", help="rebuild report.md/html, summary.csv and intervals from a run's records")
    rep.add_argument("run_dir")
    rep.add_argument("--device-timings", nargs="+", metavar="FILE", help="timing.py results from devices (a bundle's "
                     "timing script): added to the records as each device's figures, beside this machine's")
    rep.set_defaults(func=_cmd_report)
    chk = sub.add_parser("check", help="exit 1 when any variant breaks the accuracy budget (for CI)")
    chk.add_argument("run_dir")
    chk.add_argument("--min-retention", type=float, help="override: keep at least this share of the reference")
    chk.add_argument("--max-map-drop", type=float, help="override: lose at most this much mAP50-95")
    chk.set_defaults(func=_cmd_check)
    rpr = sub.add_parser("reproduce", help="re-run a run folder's config on this machine and compare, variant by "
                                           "variant (exit 1 where an mAP differs that should be identical)")
    rpr.add_argument("run_dir")
    rpr.add_argument("--out", help="output folder (default: the config's 'output'/<this machine>)")
    rpr.set_defaults(func=_cmd_reproduce)
    qat = sub.add_parser("qat", help="quantization-aware training on train images, then evaluate its INT8 exports")
    qat.add_argument("config")
    qat.add_argument("--out", help="output folder (default: the config's 'output'/<this machine>; PTQ beside QAT)")
    qat.set_defaults(func=_cmd_qat)
    sen = sub.add_parser("sensitivity", help="rank layers by the error INT8 quantization of each alone adds")
    sen.add_argument("config")
    sen.add_argument("--variant", required=True, help="an int8 variant of the config (onnxruntime)")
    sen.add_argument("--granularity", choices=("block", "layer"), default="block")
    sen.add_argument("--images", type=int, default=16, help="calibration images to measure on")
    sen.add_argument("--out", help="output folder (default: the config's 'output'/<this machine>)")
    sen.set_defaults(func=_cmd_sensitivity)
    expl = sub.add_parser("explain", help="what an INT8 variant runs in int8 and in float (and why), where its "
                                          "time goes, against the same backend's FP32")
    expl.add_argument("run_dir")
    expl.add_argument("variant", nargs="*", help="variant names (default: every ok int8 variant of the run)")
    expl.add_argument("--runs", type=int, default=5, help="profiled inferences per variant")
    expl.set_defaults(func=_cmd_explain)
    exp = sub.add_parser("export", help="write one variant as a deploy bundle (TensorRT: the ONNX, a trtexec "
                                        "line and the config that evaluates it on the device)")
    exp.add_argument("config")
    exp.add_argument("--variant", required=True, help="the variant's name, e.g. tensorrt-int8")
    exp.add_argument("--out", required=True, help="the bundle folder")
    exp.set_defaults(func=_cmd_export)
    tun = sub.add_parser("tune", help="choose each INT8 variant's settings on the tuning split (tune.data) for this "
                                      "model, data and machine; writes tuned.yaml and tune.md")
    tun.add_argument("config")
    tun.add_argument("--variant", action="append", help="an int8 variant to tune (repeatable; default: all)")
    tun.add_argument("--candidate", action="append", help="only this candidate besides the baseline (repeatable)")
    tun.add_argument("--budget", type=float, help="retention to keep (default: tune.min_retention, 0.99)")
    tun.add_argument("--minutes", type=float, help="time budget of the search (default: tune.minutes, none)")
    tun.add_argument("--out", help="output folder (default: the config's 'output'-tune/<this machine>)")
    tun.set_defaults(func=_cmd_tune)
    doc = sub.add_parser("docs", help="rewrite the results tables of README.md and docs/*.md from the records")
    doc.add_argument("pages", nargs="*", help="pages to rewrite (default: README.md and docs/*.md)")
    doc.set_defaults(func=_cmd_docs)
    cmp_ = sub.add_parser("compare", help="variant-by-variant change in mAP and latency between two runs")
    cmp_.add_argument("run_a")
    cmp_.add_argument("run_b")
    cmp_.add_argument("--out", help="report file (default: RUN_B/compare-<RUN_A>.md)")
    cmp_.set_defaults(func=_cmd_compare)
    st = sub.add_parser("setup", help="create what a format needs beside yoloq's environment (a toolkit whose "
                                      "pins cannot share it, in its own)")
    st.add_argument("format", help="a format, e.g. the Rockchip NPU one, or 'aarch64': the Arm userland (qemu-user) "
                                   "that variants with 'emulate: aarch64' are scored in")
    st.set_defaults(func=_cmd_setup)
    em = sub.add_parser("emulate", help="run a Python script on an emulated Arm CPU (the userland of 'yoloq setup "
                                        "aarch64'): a bundle's predict.py, or its timing.py with --emulated")
    em.add_argument("--cpu", default="cortex-a76", choices=EMULATED_CPUS, help="the CPU model qemu emulates")
    em.add_argument("script", help="the Python file to run with the aarch64 Python 3.11")
    em.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    em.set_defaults(func=_cmd_emulate)
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
