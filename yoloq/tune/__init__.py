"""``yoloq tune``: INT8 settings chosen for the user's own model, data and machine, on a tuning split."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from yoloq.config import RunConfig, load_config
from yoloq.provenance import machine
from yoloq.tune.rule import Trial
from yoloq.tune.search import TuneSearch
from yoloq.tune.write import write_all

__all__ = ["TuneResult", "Trial", "TuneSearch", "tune"]


@dataclass(frozen=True)
class TuneResult:
    """What a search chose (per tuned variant: its trial, or None), every trial it ran, and its files."""

    chosen: dict[str, Trial | None]
    trials: list[Trial]
    out_dir: Path
    files: dict[str, Path]
    minutes: float


def tune(config: str | Path, variants: list[str] | None = None, out: str | Path | None = None,
         minutes: float | None = None, budget: float | None = None, candidates: list[str] | None = None
         ) -> TuneResult:
    """Choose each INT8 variant's settings of the config at ``config`` on its ``tune.data`` split.

    Args:
        config: A run config with a ``tune:`` section naming the tuning split.
        variants: INT8 variant names to tune (default: all).
        out: The search's folder (default: the config's ``output`` + ``-tune``, per machine).
        minutes: Overrides ``tune.minutes``; ``budget`` overrides ``tune.min_retention``.
        candidates: Only these of each backend's candidates besides its baseline (default: all).

    Raises:
        YoloqError: Bad config, tuning split overlapping the evaluation or calibration images, missing data.
    """
    cfg: RunConfig = load_config(config)
    changes = {k: v for k, v in (("minutes", minutes), ("min_retention", budget)) if v is not None}
    if changes:
        cfg = dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, **changes))
    out_dir = Path(out) if out else Path(f"{cfg.output}-tune") / machine()["id"]
    search = TuneSearch(cfg, out_dir, variants, candidates)
    chosen = search.optimize()
    ref = search.records[search.ref]
    first = min(cfg.tune.first_images, max((t.images for t in search.trials), default=0))
    facts = {"model": ref.model.get("name"), "tuning": f"{ref.dataset.get('name')}/{ref.dataset.get('split')}",
             "machine": machine(), "minutes": search.seconds / 60, "first": first,
             "images": max((t.images for t in search.trials), default=0), "reference": search.ref,
             "ref_map": ref.metrics.get("map50_95", 0.0), "min_retention": cfg.tune.min_retention,
             "config": Path(config).name}
    files = write_all(out_dir, Path(config), search.trials, chosen, facts, f"{cfg.output}-tuned")
    return TuneResult(chosen, search.trials, out_dir, files, search.seconds / 60)
