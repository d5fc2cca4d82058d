"""Timing helpers shared by the benchmarks: interleaved min-of-N timing, table and JSON output.

These machines are noisy, so every figure is a ratio of two timings taken in the same run, and
the two sides are timed alternately (A, B, A, B, ...) keeping each side's minimum.
"""

import json
import os
import sys
import time
from pathlib import Path

# glibc's malloc settings, read from the environment at process start: serve large tensors from the
# heap and keep freed memory there (mallopt alone caps the mmap threshold at 32 MiB).
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(4 << 30),
    "MALLOC_TRIM_THRESHOLD_": str(64 << 30),
    "MALLOC_TOP_PAD_": str(1 << 30),
}


def run_with_tuned_malloc() -> None:
    """Re-run this script once with `MALLOC_ENV` set (no-op when it already is).

    By default glibc serves large tensors with fresh pages and unmaps them on free, so every step
    page-faults its activations again; the cost per byte grows with the tensors and shows up as a
    fake growth of cost with video length (measured here: 1.34 vs 1.12 at 512 tokens per chunk).
    GPU runs never see this (PyTorch's caching allocator keeps its blocks).
    """
    if any(os.environ.get(key) != value for key, value in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})


def malloc_tuned() -> bool:
    return all(os.environ.get(key) == value for key, value in MALLOC_ENV.items())


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


def proc_status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB (Linux): VmRSS, VmHWM (its peak), ..."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:"))
