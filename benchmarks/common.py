"""Timing helpers shared by the benchmarks: interleaved min-of-N timing, table and JSON output.

These machines are noisy, so every figure is a ratio of two timings taken in the same run, and
the two sides are timed alternately (A, B, A, B, ...) keeping each side's minimum.
"""

import ctypes
import json
import time
from pathlib import Path

# glibc mallopt parameters.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


def tune_malloc() -> bool:
    """Keep freed large buffers in the heap instead of returning them to the OS.

    By default glibc serves tensors over its mmap threshold with fresh pages and unmaps them on free,
    so every step page-faults its large activations again; the cost per byte grows once tensors cross
    the threshold and shows up as a fake growth of cost with video length (measured here: 1.34 vs
    1.12 at 512 tokens per chunk). GPU runs never see this (PyTorch's caching allocator). Returns
    whether glibc accepted the settings.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(
        libc.mallopt(param, value)
        for param, value in ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 256 << 20))
    )


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
