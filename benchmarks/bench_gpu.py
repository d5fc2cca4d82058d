"""The GPU validation kit: real-size Wan2.1 + LaCT with random weights, bf16, measured speed and memory.

    python benchmarks/bench_gpu.py --json OUT.json [--quick] [--tiny] [--only a,b] [--skip a,b] [--budget_s S]
    bash scripts/gpu_check.sh --quick --json OUT.json   # the same on a bare GPU machine, after its wheels

Sections (benchmarks/gpukit/, one module each; the JSON layout is in gpukit/report.py):
1. `numerics`: a real-width 2-block model in bf16 (every attention backend the device has) against fp32:
   teacher forcing vs chunk-by-chunk inference, the fast-weight op, Newton-Schulz.
2. `train_1.3b`: one teacher-forcing step at 480x832, 81 frames (61K tokens), bf16, gradient checkpointing,
   through the trainer's functions; LaCT and the `full_causal` baseline (a ratio); MFU from gpukit/flops.py.
3. `generation_1.3b`: 12 chunks x 10 steps with guidance, per-chunk time and its growth, frames/s, memory;
   diffusers' `WanPipeline` on the same weights at 81 frames (a time ratio).
4. `big_14b`: one chunk's denoising forward and one commit of the 14B model in bf16.
5. `train_1.3b_zero3`: the training step under DeepSpeed ZeRO-3 (`accelerate launch`, one process).
6. `compile_1.3b`: a chunk's denoising forward eager, `torch.compile`d (regional, whole model) and with CUDA
   graphs.
Each section catches its own failure (out of memory, a missing package or kernel), records it and the next one
runs; the JSON is rewritten after every section.

`--tiny` runs every section at toy sizes through the same code paths (the CPU test does, tests/test_bench_gpu.py).
`--quick` keeps every real shape but times fewer steps and repeats and compiles regionally only, to finish within
5 minutes on one H100/H200. The estimate (`ESTIMATE_S`), from FLOP counts at a sustained 400 TFLOP/s (40% of the
bf16 peak) and start-up costs measured on the CPU machine: imports and the matmul probe 20 s; numerics 15 s;
training 2 x (build 5 s + 3 steps of 0.85 PFLOP, 7 s) = 45 s with set-up; generation 90 s: 12 chunks x 10 steps x
4e13 FLOP (12 s) plus 12 streamed VAE decodes of 12 frames at 480x832 (~30 s), and `WanPipeline` at 81 frames
(10 steps x 5.7e14 FLOP = 14 s, + its decode ~10 s; LaCT's side is the stream's first 7 chunks); 14B: build 15 s +
3 chunk passes of 1.7e14 FLOP 5 s, 35 s; ZeRO-3: launch and imports 30 s + build and steps 30 s; compile: eager
10 s + regional compilation (3 graphs of one block, Dynamo and inductor) ~75 s, CUDA graphs as much again.
That is about 4.5 minutes before the compile section, so with `--quick` (a 285 s budget) a section starts only
if its estimate fits in what is left, and the compile variants only with 75 s left each: a run ends within the
budget and records what it skipped. `--only compile_1.3b` measures them in a second run. The JSON's `wall_s` per
section shows the real split; its figures fill the README's "GPU figures" table.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import torch
from gpukit import big, generation, numerics, training
from gpukit.report import GIB, Budget, Report, timed
from gpukit.sizes import SIZES

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


if __name__ == "__main__":
    main()
