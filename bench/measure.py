"""Timing helpers shared by the benchmarks: interleaved samples, percentiles, and a quiet stdout."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def interleaved(runs: int, *works: Callable[[], object]) -> list[list[float]]:
    """Seconds of each of ``works`` over ``runs`` rounds, run alternately (after one warm-up each), so that load
    from anything else on the machine weighs on all of them alike. One list of samples per work."""
    for work in works:
        work()
    samples: list[list[float]] = [[] for _ in works]
    for _ in range(runs):
        for work, into in zip(works, samples, strict=True):
            start = time.perf_counter()
            work()
            into.append(time.perf_counter() - start)
    return samples


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def percentile(samples: list[float], share: float) -> float:
    """The ``share`` (0-1) quantile of ``samples``, interpolated as NumPy's default does."""
    ordered = sorted(samples)
    position = (len(ordered) - 1) * share
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def progress(line: str) -> None:
    """A progress line for the person running the bench (stderr: stdout may be silenced)."""
    sys.stderr.write(f"bench: {line}\n")
    sys.stderr.flush()


@contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send this process's file descriptor 1 to /dev/null: handlers run in process log (Powertools' JSON lines
    and metrics) to stdout as they do in Lambda, which is part of their cost but not of the report."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
