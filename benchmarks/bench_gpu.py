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

from gpukit.kit import main

if __name__ == "__main__":
    main()
