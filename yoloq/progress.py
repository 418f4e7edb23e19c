"""Progress for long stages, and the libraries' console noise kept out of the user's way.

On a terminal a stage draws a tqdm bar; without one (CI, a log file) a stage longer than 5 s prints
plain lines with ``n/N``, elapsed time and ETA every ~10% (at least every 30 s, at most every 5 s).
While a library works inside :func:`step` or :func:`quiet`, everything it prints (Python or C
level: exporter banners, absl and TensorFlow ``W...`` lines, calibrator prints) goes to the run's
``logs/libraries.log``; yoloq's own progress still reaches the console.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")

_console: TextIO | None = None  # the real stderr while library output is redirected
_log: Path | None = None  # where library output goes (set per run)


def console() -> TextIO:
    """Where yoloq's own messages go: the terminal (or the caller's stderr), never the library log."""
    return _console or sys.stderr


def say(msg: str) -> None:
    """Print one line of yoloq's own to the console."""
    print(msg, file=console(), flush=True)


def enabled() -> bool:
    """Bars are drawn only on a terminal; elsewhere progress is plain log lines."""
    try:
        return console().isatty()
    except (AttributeError, ValueError):
        return False


def set_library_log(path: Path | None) -> None:
    """Send library console output of later :func:`step`/:func:`quiet` blocks to ``path`` (None: leave it)."""
    global _log
    _log = path


def clock(seconds: float) -> str:
    """A duration as the console shows it: "42s" or "3:07"."""
    s = int(seconds)
    return f"{s // 60}:{s % 60:02d}" if s >= 60 else f"{seconds:.0f}s"


class Progress:
    """A counter for one stage: a bar on a terminal, plain lines elsewhere."""

    def __init__(self, desc: str | None, total: int | None, unit: str = "it") -> None:
        self.desc, self.total, self.unit, self.n = desc, total, unit, 0
        self._t0 = time.perf_counter()
        self._last_line = self._t0
        self._next_pct = 10
        self._bar = None
        if desc and enabled():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, leave=False, file=console(), dynamic_ncols=True,
                             mininterval=0.5, unit=unit)

    def update(self, k: int = 1) -> None:
        """Count ``k`` more done."""
        self.n += k
        if self._bar is not None:
            self._bar.update(k)
            return
        if not self.desc or not self.total:
            return
        now = time.perf_counter()
        pct = 100 * self.n / self.total
        quiet_for = now - self._last_line
        long_stage = now - self._t0 >= 5  # short stages print nothing: their time is in the summary lines
        if long_stage and ((pct >= self._next_pct and quiet_for >= 5) or quiet_for >= 30 or self.n == self.total):
            elapsed = now - self._t0
            eta = elapsed / self.n * (self.total - self.n) if self.n else 0.0
            say(f"  {self.desc.strip()}: {self.n}/{self.total} {self.unit}, {clock(elapsed)} elapsed, "
                f"ETA {clock(eta)}")
            self._last_line = now
            while self._next_pct <= pct:
                self._next_pct += 10

    def close(self) -> None:
        """End the stage."""
        if self._bar is not None:
            self._bar.close()


@contextlib.contextmanager
def counter(desc: str | None, total: int | None, unit: str = "it") -> Iterator[Progress]:
    """A :class:`Progress` for a stage counted by hand."""
    p = Progress(desc, total, unit)
    try:
        yield p
    finally:
        p.close()


def bar(items: Iterable[T], desc: str | None = None, total: int | None = None, disable: bool = False,
        unit: str = "it") -> Iterator[T]:
    """Iterate ``items`` with progress labelled ``desc`` (nothing shown without ``desc`` or when disabled)."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with counter(None if disable else desc, total, unit) as p:
        for x in items:
            yield x
            p.update(1)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Send what libraries print, at the Python and the file-descriptor level, to the library log."""
    global _console
    if _log is None or _console is not None:  # no log set, or already quiet
        yield
        return
    _log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    _console = os.fdopen(os.dup(saved_err), "w", buffering=1)
    try:
        with open(_log, "a", buffering=1) as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved_out, 1)
                os.dup2(saved_err, 2)
    finally:
        os.close(saved_out)
        os.close(saved_err)
        _console.close()
        _console = None


@contextlib.contextmanager
def step(desc: str) -> Iterator[None]:
    """A long library call (an export, a quantization): its output goes to the library log, then one
    line with its time reaches the console."""
    t0 = time.perf_counter()
    if enabled():
        print(f"  {desc} ...", file=console(), end="\r", flush=True)
    else:
        say(f"  {desc} ...")
    with quiet():
        yield
    say(f"  {desc}: done in {time.perf_counter() - t0:.1f}s")


class Counted(list):  # type: ignore[type-arg]
    """A list whose every full iteration is shown as a stage (``desc``, n/N, ETA): a library's calibration
    loop over the images yoloq hands it (NNCF, ai-edge-quantizer) reports progress like yoloq's own loops."""

    def __init__(self, items: Iterable[T], desc: str) -> None:
        super().__init__(items)
        self.desc = desc

    def __iter__(self) -> Iterator[T]:  # type: ignore[override]
        return bar(list.__iter__(self), desc=self.desc, total=len(self), unit="images")
