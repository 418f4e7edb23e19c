"""How ``yoloq tune`` chooses among one variant's candidates, noise-aware, from their measured figures only.

1. Only a candidate faster on this machine than its backend's fastest float variant (FP32 or FP16, timed in
   the same side-by-side pass) may be chosen; where none is, nothing is recommended, and the output says so.
2. The *leader* is the best of those: where some keep the retention budget, the one of them with the highest
   agreement with the reference's detections, then retention; where none does, accuracy comes first: the
   highest retention, then agreement.
3. A candidate *ties* the leader only when it is shown no worse than the leader by more than a margin: the
   upper end of the 95% paired interval of leader - candidate is at most ``MAP_MARGIN`` for mAP50-95 against
   ground truth and at most ``AGREEMENT_MARGIN`` for agreement (and it keeps the budget when the leader does).
   An interval that merely includes 0 is not enough: a candidate far behind, measured on too few images to
   exclude 0, is not a tie. (The lower end is free: a simpler candidate that may be better is no less a tie.)
4. Of the ties the simplest wins: fewest settings changed from the baseline, then the faster (by more than
   ``SPEED_TIE`` of p50: closer timings are the machine's noise, e.g. two graphs with the same ops), then the
   smaller file, then the higher agreement. A candidate shown equivalent to a simpler one loses to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SPEED_TIE = 0.05  # p50 timings within 5% of the fastest tie: one side-by-side pass does not tell them apart
MAP_MARGIN = 0.005  # a tie: the leader at most half a point of mAP50-95 better (upper end of the 95% interval)
AGREEMENT_MARGIN = 0.015  # and at most 1.5 points of agreement better


@dataclass
class Trial:
    """One candidate setting of one variant: what it sets, what it measured, and the verdict.

    ``status``: ``pending``, ``ok`` (scored in the final round), ``pruned`` (after a round), ``failed``,
    ``not tried`` (the time budget ran out). Figures are of the last round it was scored in.
    """

    name: str
    variant: str
    format: str
    candidate: str
    options: dict[str, Any]
    why: str
    changed: int
    status: str = "pending"
    reason: str = ""
    images: int = 0
    map50_95: float | None = None
    retention: float | None = None
    drop: dict[str, Any] = field(default_factory=dict)  # paired interval of reference - candidate mAP50-95
    agreement: float | None = None
    vs_leader: dict[str, Any] = field(default_factory=dict)  # {"agreement": interval, "map": interval}
    p50_ms: float | None = None
    float_p50_ms: float | None = None
    float_name: str | None = None
    size_mb: float | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    export_s: float | None = None  # what making its export cost: wall seconds, peak resident MB
    peak_mb: float | None = None
    verdict: str = ""
    chosen: bool = False

    def meets(self, min_retention: float) -> bool:
        """Whether it keeps the retention budget."""
        return self.retention is not None and self.retention >= min_retention

    @property
    def faster(self) -> bool | None:
        """Whether it ran faster than its backend's fastest float variant (None: not timed)."""
        if self.p50_ms is None or self.float_p50_ms is None:
            return None
        return self.p50_ms < self.float_p50_ms


def _fmt(ci: dict[str, Any]) -> str:
    return f"{ci['drop']:+.4f} [{ci['lo']:+.4f}, {ci['hi']:+.4f}]"


def eligible(trials: list[Trial]) -> list[Trial]:
    """The scored candidates that may be chosen: faster than the backend's float (or not timed at all)."""
    return [t for t in trials if t.status == "ok" and t.faster is not False]


def leader_of(trials: list[Trial], min_retention: float) -> Trial | None:
    """The best eligible candidate: among those keeping the budget, agreement then retention; where none keeps
    it, retention (accuracy) then agreement."""
    pool = eligible(trials)
    if not pool:
        return None
    keeping = [t for t in pool if t.meets(min_retention)]
    if keeping:
        return max(keeping, key=lambda t: (t.agreement or 0.0, t.retention or 0.0))
    return max(pool, key=lambda t: (t.retention or 0.0, t.agreement or 0.0))


def equivalent(ci: dict[str, Any] | None, margin: float) -> bool:
    """Whether a paired interval of leader - candidate shows the leader at most ``margin`` better (no interval:
    not shown)."""
    return bool(ci) and ci.get("hi", 1.0) <= margin


def ties(t: Trial, leader: Trial, min_retention: float) -> bool:
    """Whether ``t`` is shown no worse than the leader by more than the margins, on mAP50-95 and agreement
    (rule 3)."""
    if t is leader:
        return True
    if leader.meets(min_retention) and not t.meets(min_retention):
        return False
    return equivalent(t.vs_leader.get("map"), MAP_MARGIN) and \
        equivalent(t.vs_leader.get("agreement"), AGREEMENT_MARGIN)


def simplest(tied: list[Trial], leader: Trial) -> Trial:
    """Of candidates shown equivalent to the leader: the fewest settings changed, then the faster (beyond
    ``SPEED_TIE``), then the smaller file, then the higher agreement (the leader first)."""
    inf = float("inf")
    fewest = min(t.changed for t in tied)
    group = [t for t in tied if t.changed == fewest]
    fastest = min(t.p50_ms if t.p50_ms is not None else inf for t in group)
    group = [t for t in group if (t.p50_ms if t.p50_ms is not None else inf) <= fastest * (1 + SPEED_TIE)]
    smallest = min(t.size_mb if t.size_mb is not None else inf for t in group)
    group = [t for t in group if (t.size_mb if t.size_mb is not None else inf) <= smallest]
    return max(group, key=lambda t: (t is leader, t.agreement or 0.0))


def choose(trials: list[Trial], min_retention: float) -> Trial | None:
    """Choose among one variant's trials (rule in the module docstring); every trial gets its ``verdict``.

    Returns:
        The chosen trial, or None when no candidate is faster than the backend's float variant here.
    """
    for t in trials:
        if t.status == "ok" and t.faster is False:
            t.verdict = (f"slower here than {t.float_name} ({t.p50_ms:.1f} ms against {t.float_p50_ms:.1f} ms "
                         f"p50): never recommended")
        elif t.status != "ok":
            t.verdict = f"{t.status}: {t.reason}"
    leader = leader_of(trials, min_retention)
    if leader is None:
        return None
    tied = [t for t in eligible(trials) if ties(t, leader, min_retention)]
    winner = simplest(tied, leader)
    winner.chosen = True
    why = "the simplest candidate shown equivalent to the best" if winner is not leader else \
        "the best candidate, and no simpler one is shown equivalent to it"
    if not winner.meets(min_retention):
        why += f"; no candidate keeps {100 * min_retention:.0f}% of the reference here"
    winner.verdict = f"chosen: {why}"
    for t in eligible(trials):
        if t is winner:
            continue
        if t is leader:
            t.verdict = f"the best, but the simpler or faster {winner.name} is shown equivalent to it"
            continue
        if t in tied:
            t.verdict = f"equivalent to the best ({leader.name}); " + (
                f"it is as simple, as fast (within {SPEED_TIE:.0%}) and as small, and agrees more" if winner is leader
                else f"{winner.name} is simpler or faster")
            continue
        if leader.meets(min_retention) and not t.meets(min_retention):
            t.verdict = f"keeps {100 * (t.retention or 0):.1f}% < {100 * min_retention:.0f}% of the reference"
            continue
        margins = {"map": MAP_MARGIN, "agreement": AGREEMENT_MARGIN}
        apart = [f"{k} {_fmt(ci)}" for k, ci in sorted(t.vs_leader.items()) if ci and not equivalent(ci, margins[k])]
        t.verdict = f"not shown equivalent to {leader.name} (the best may be better by more than mAP " \
                    f"{MAP_MARGIN} or agreement {AGREEMENT_MARGIN}): " + ("; ".join(apart) or "not compared")
    return winner
