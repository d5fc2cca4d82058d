"""Timing helpers shared by the benchmarks: interleaved min-of-N timing, table and JSON output.

These machines are noisy, so every figure is a ratio of two timings taken in the same run, and
the two sides are timed alternately (A, B, A, B, ...) keeping each side's minimum.
"""

import json
import time
from pathlib import Path


def time_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_min(fns: dict, repeats: int = 5) -> dict:
    """Min wall time of each callable, timed in alternation after one warm-up call each."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], time_once(fn))
    return best


def report(figures: dict, json_path: str | None) -> None:
    """Print a two-column table and write the figures as JSON."""
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(figures, indent=2) + "\n")
