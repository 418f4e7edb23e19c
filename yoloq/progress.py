"""Progress bars for long steps (tqdm on stderr, quiet when not a terminal or when disabled)."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def enabled() -> bool:
    """Bars are drawn only on a terminal (logs and CI stay readable)."""
    return sys.stderr.isatty()


def bar(items: Iterable[T], desc: str | None = None, total: int | None = None, disable: bool = False) -> Iterable[T]:
    """Wrap ``items`` in a progress bar labelled ``desc``."""
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, disable=disable or not enabled(), leave=False, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5)


@contextlib.contextmanager
def step(desc: str) -> Iterator[None]:
    """Show a one-step bar for a long call (an export), with its time.

    Libraries' own chatter (exporters and quantizers print to stdout) goes to stderr, so stdout
    carries only yoloq's tables.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    hide = not enabled()
    with contextlib.redirect_stdout(sys.stderr), \
            tqdm(total=1, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True, disable=hide,
                 bar_format="{desc}: {elapsed}") as pb:
        yield
        pb.update(1)
    print(f"  {desc}: done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
