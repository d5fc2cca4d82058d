"""The GPU validation kit behind benchmarks/bench_gpu.py: one module per section, the FLOP count, the report."""
