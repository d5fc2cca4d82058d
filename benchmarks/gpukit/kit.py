"""The GPU kit's command: its arguments, its sections in order, the budget (benchmarks/bench_gpu.py runs it)."""

from __future__ import annotations

import argparse
import functools
import sys
import time

import torch

from . import big, generation, numerics, training
from .report import GIB, Budget, Report, timed
from .sizes import SIZES

SECTIONS = ("numerics", "train_1.3b", "generation_1.3b", "big_14b", "train_1.3b_zero3", "compile_1.3b")
QUICK_BUDGET_S = 285.0
# Seconds each section takes at the real sizes on an H100/H200 (the estimate in the docstring): under a budget, a
# section starts only with this much left, so that the run ends within it.
ESTIMATE_S = {"numerics": 15, "train_1.3b": 45, "generation_1.3b": 90, "big_14b": 35, "train_1.3b_zero3": 60,
              "compile_1.3b": 90}  # fmt: skip


def matmul_flops(device: torch.device, tiny: bool) -> float:
    """The measured matmul rate (FLOP/s) this run's MFU can also be read against: bf16 8192^3 on CUDA."""
    n, dtype = (512, torch.float32) if tiny or device.type != "cuda" else (8192, torch.bfloat16)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    seconds = min(timed(lambda: a @ b, device)[0] for _ in range(10))
    return 2 * n**3 / seconds


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the report here (rewritten after every section)")
    parser.add_argument(
        "--quick", action="store_true", help="real shapes, fewer timed repeats: under 5 min on an H200"
    )
    parser.add_argument("--tiny", action="store_true", help="toy sizes, every code path (runs on a CPU)")
    parser.add_argument("--only", help=f"comma-separated sections to run, of {','.join(SECTIONS)}")
    parser.add_argument("--skip", help="comma-separated sections to leave out")
    parser.add_argument(
        "--budget_s", type=float, help=f"wall-clock budget (default {QUICK_BUDGET_S:.0f} with --quick)"
    )
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    args = parser.parse_args(argv)
    for flag in ("only", "skip"):
        names = [s for s in (getattr(args, flag) or "").split(",") if s]
        unknown = sorted(set(names) - set(SECTIONS))
        if unknown:
            parser.error(f"--{flag}: unknown sections {unknown}; the sections are {', '.join(SECTIONS)}")
        setattr(args, flag, names)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.device.type != "cuda" and not args.tiny:
        parser.error("the real sizes need a GPU (1.3B and 14B models); on a CPU pass --tiny")
    if args.budget_s is None and args.quick:
        args.budget_s = QUICK_BUDGET_S
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    sizes = SIZES["tiny" if args.tiny else "quick" if args.quick else "full"]
    start = time.perf_counter()
    report = Report(args.json, sizes.name, argv)
    env = report.data["environment"]
    env["device"] = str(args.device)
    env["matmul_tflops_measured"] = matmul_flops(args.device, args.tiny) / 1e12
    budget = Budget(args.budget_s)
    device, gpu, matmul = args.device, env["gpu"], env["matmul_tflops_measured"] * 1e12
    sections = {
        "numerics": functools.partial(numerics.run, sizes=sizes, device=device),
        "train_1.3b": functools.partial(training.run_plain, sizes=sizes, measured_matmul_flops=matmul, gpu=gpu),
        "generation_1.3b": functools.partial(generation.run, sizes=sizes, device=device),
        "big_14b": functools.partial(big.run, sizes=sizes, device=device),
        "train_1.3b_zero3": functools.partial(training.run_zero3, sizes=sizes, device=device,
                                              measured_matmul_flops=matmul, gpu=gpu, budget=budget),
        "compile_1.3b": functools.partial(generation.run_compile, sizes=sizes, device=device, budget=budget),
    }  # fmt: skip
    for name in SECTIONS:
        if (args.only and name not in args.only) or name in args.skip:
            report.skip(name, "not selected (--only / --skip)")
        elif budget.remaining() < ESTIMATE_S[name]:
            report.skip(name, f"under {ESTIMATE_S[name]} s of the {args.budget_s:.0f} s budget left")
        else:
            report.run(name, sections[name])
    report.data["wall_s"] = round(time.perf_counter() - start, 1)
    if device.type == "cuda":
        report.data["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
    report.write()
    ran = [n for n, s in report.data["sections"].items() if s["ran"]]
    print(f"[bench_gpu] {len(ran)}/{len(SECTIONS)} sections ran in {report.data['wall_s']} s; JSON: {args.json}")
    return report.data
