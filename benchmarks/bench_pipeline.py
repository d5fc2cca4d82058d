"""LaCTVideoPipeline benchmarks: flat time and memory per chunk, and the speedup over full attention.

Spec Sec. 5: "Time and memory per chunk do not grow with the video's length." Measured on the
tiny random Wan models of `lact_video.tiny` (built into a temporary folder), on the CPU:

- `chunk_time_growth`: 64-chunk generations (streamed); wall time of chunks 49..64 over the wall
  time of chunks 1..16 (each chunk: its denoising steps, its commit and its VAE decode), with
  chunks 1..16 timed side by side with chunks 49..64 on a second, identical generation, so that
  the machine's drift cancels (see `bench_chunk_time`); the ratio within one generation and the
  same without the VAE decode (`_without_decode`) are reported too. Target <= 1.10.
- `peak_rss_growth`: peak RSS (`VmHWM`) of a fresh process that streams 64 chunks to an mp4,
  over one that streams 16. Target <= 1.10. Most of a process's RSS is its imports and weights,
  so the RSS after every chunk of the 64-chunk run is sampled too: `rss_growth_within_run` is the
  largest RSS after chunks 49..64 over the largest after chunks 1..16.
- `speedup_vs_wanpipeline`: diffusers' `WanPipeline` (full attention over the whole clip) on the
  same base weights, same frames, steps (50 by default, Wan's default) and resolution (128x128,
  48 latent frames), wall time over `LaCTVideoPipeline`'s, guidance on. On the "small" model
  (4 layers, dim 256): in the "tiny" one (dim 24) attention costs next to nothing. Both pipelines
  spend the same time in the VAE decode, so the speedup without it is reported too. Target >= 1.5.

    python benchmarks/bench_pipeline.py --json outputs/bench_pipeline.json [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `pipelines` lives at the repository root
from pipelines import LaCTVideoPipeline, WanStreamingDecoder  # noqa: E402

PROMPT = "a cat walks across a sunny kitchen floor"
NEGATIVE = "low quality, blurry, static"
TINY_LACT = dict(chunk_frames=3, fw_head_dim=12)
SMALL_LACT = dict(chunk_frames=3, fw_head_dim=128)


def load_lact(base: str, lact_config: dict):
    pipe = LaCTVideoPipeline.from_wan(base, **lact_config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generation_kwargs(num_chunks: int, size: int, steps: int, seed: int = 0) -> dict:
    return dict(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        height=size,
        width=size,
        num_frames=4 * 3 * num_chunks - 3,
        num_inference_steps=steps,
        guidance_scale=5.0,
        max_sequence_length=16,
        generator=torch.Generator().manual_seed(seed),
    )


def bench_chunk_time(base: str, size: int, steps: int, runs: int = 3, output_type: str = "np") -> dict:
    """Chunks 49..64 of a 64-chunk generation over chunks 1..16.

    On a shared VM the speed of the machine drifts by 10-20% over a minute (other processes, the
    VAE decode's large buffers), which a ratio of two time windows reads as growth. So `runs` pairs
    of identical generations run in lockstep: the late ones start when the early ones reach chunk 49,
    and chunks 49..64 of an early generation are timed side by side with chunks 1..16 of a late one.
    Each chunk index takes its fastest time over the `runs` pairs. The plain ratio within the early
    generations (chunks 49..64 over their own chunks 1..16, minutes apart) is reported as well.
    """
    num_chunks, window = 64, 16
    pipe = load_lact(base, TINY_LACT)
    # Own schedulers: the lockstep streams must not share scheduler state (the rest is read-only).
    components = pipe.components
    pipes = [LaCTVideoPipeline(**{**components, "scheduler": copy.deepcopy(pipe.scheduler)}) for _ in range(2 * runs)]
    for p in pipes:
        p.set_progress_bar_config(disable=True)
    for _ in pipes[0].stream(**generation_kwargs(2, size, steps), output_type=output_type):
        pass  # warm-up: first-call costs of every shape

    streams = [p.stream(**generation_kwargs(num_chunks, size, steps), output_type=output_type) for p in pipes]
    early, late = streams[:runs], streams[runs:]
    times_early, times_late = np.zeros((runs, num_chunks)), np.zeros((runs, window))
    for i in range(num_chunks):
        for group, times, j in ((early, times_early, i), (late, times_late, i - (num_chunks - window))):
            if j < 0:
                continue
            for r, stream in enumerate(group):
                start = time.perf_counter()
                next(stream)
                times[r, j] = time.perf_counter() - start
    last, first = times_early[:, -window:].min(axis=0), times_late.min(axis=0)
    suffix = "" if output_type == "np" else "_without_decode"
    return {
        f"chunk_time_growth{suffix}": float(last.sum() / first.sum()),
        f"chunk_time_growth_same_generation{suffix}": float(last.sum() / times_early[:, :window].min(axis=0).sum()),
        f"chunk_ms_1_16{suffix}": float(first.mean() * 1e3),
        f"chunk_ms_49_64{suffix}": float(last.mean() * 1e3),
    }


def rss_child(base: str, num_chunks: int, size: int, steps: int, threads: int) -> None:
    """Runs in a fresh process: stream `num_chunks` chunks to an mp4, print the RSS figures as JSON."""
    torch.set_num_threads(threads)
    pipe = load_lact(base, TINY_LACT)
    with tempfile.TemporaryDirectory() as tmp:
        stream = pipe.stream(**generation_kwargs(num_chunks, size, steps), output_path=os.path.join(tmp, "v.mp4"))
        rss = [_proc_status_kib("VmRSS") for _ in stream]  # after every chunk
    # The peak of this process's own memory map. Not `ru_maxrss`: Linux carries it across execve, so a
    # child spawned by a big parent reports the parent's peak.
    peak = _proc_status_kib("VmHWM")
    print(json.dumps({"peak_kib": peak, "rss_kib": rss}))


def _proc_status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:"))


def bench_peak_rss(base: str, size: int, steps: int, threads: int) -> dict:
    runs = {}
    for n in (16, 64):
        cmd = [sys.executable, __file__, "--rss-child", str(n), "--base", base, "--size", str(size)]
        cmd += ["--steps", str(steps), "--threads", str(threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO).stdout
        runs[n] = json.loads(out.strip().splitlines()[-1])
    rss = np.array(runs[64]["rss_kib"]) / 1024
    return {
        "peak_rss_growth": runs[64]["peak_kib"] / runs[16]["peak_kib"],
        "peak_rss_mib_16_chunks": runs[16]["peak_kib"] / 1024,
        "peak_rss_mib_64_chunks": runs[64]["peak_kib"] / 1024,
        # Within the 64-chunk run: the largest RSS after any of chunks 49..64 over chunks 1..16.
        "rss_growth_within_run": float(rss[-16:].max() / rss[:16].max()),
        "rss_mib_after_chunk_16": float(rss[15]),
        "rss_mib_after_chunk_64": float(rss[63]),
    }


def bench_speedup(base: str, size: int, steps: int, repeats: int = 2, latent_frames: int = 48) -> dict:
    """End-to-end wall time of both pipelines, side by side, on the same weights and arguments.

    Both decode with the same VAE (LaCT chunk by chunk, Wan in one call), which costs the same and
    dilutes the speedup; the decode is timed on its own as well, to report the denoising speedup.
    """
    from diffusers import WanPipeline

    wan = WanPipeline.from_pretrained(base)
    wan.set_progress_bar_config(disable=True)
    lact = load_lact(base, SMALL_LACT)
    kwargs = generation_kwargs(latent_frames // 3, size, steps)
    total = {}
    for _ in range(repeats):  # alternating, best of `repeats`: a shared CPU is noisy
        for name, pipe in (("wan", wan), ("lact", lact)):
            kwargs["generator"] = torch.Generator().manual_seed(0)
            start = time.perf_counter()
            pipe(**kwargs, output_type="np")
            total[name] = min(total.get(name, float("inf")), time.perf_counter() - start)

    latents = torch.randn(1, 16, latent_frames, size // 8, size // 8)
    decode = {}
    with torch.no_grad():
        start = time.perf_counter()
        wan.vae.decode(latents)
        decode["wan"] = time.perf_counter() - start
        start, decoder = time.perf_counter(), WanStreamingDecoder(lact.vae)
        for chunk in latents.split(3, dim=2):
            decoder.decode(chunk)
        decode["lact"] = time.perf_counter() - start
    return {
        "speedup_vs_wanpipeline": total["wan"] / total["lact"],
        "speedup_without_vae_decode": (total["wan"] - decode["wan"]) / (total["lact"] - decode["lact"]),
        "wanpipeline_s": total["wan"],
        "lact_s": total["lact"],
        "vae_decode_s_wan": decode["wan"],
        "vae_decode_s_lact_streamed": decode["lact"],
        "speedup_frames": 4 * latent_frames - 3,
        "speedup_steps": steps,
        "speedup_repeats": repeats,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=pathlib.Path, help="write the results here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier timings)")
    parser.add_argument("--size", type=int, default=128, help="video height and width")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per chunk (chunk time, RSS)")
    parser.add_argument(
        "--speedup-steps", type=int, default=50, help="denoising steps for the speedup (default 50, as Wan's default)"
    )
    parser.add_argument("--speedup-repeats", type=int, default=2, help="timed runs of each pipeline (best is kept)")
    parser.add_argument(
        "--only", default="chunk_time,rss,speedup", help="comma-separated subset of chunk_time,rss,speedup"
    )
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        return rss_child(args.base, args.rss_child, args.size, args.steps, args.threads)

    from lact_video.tiny import build_tiny_wan

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tiny = str(build_tiny_wan(pathlib.Path(tmp) / "tiny", seed=0, size="tiny"))
        small = str(build_tiny_wan(pathlib.Path(tmp) / "small", seed=0, size="small"))
        results = {"threads": torch.get_num_threads(), "size": args.size, "steps": args.steps, "guidance_scale": 5.0}
        if "chunk_time" in args.only:
            results.update(bench_chunk_time(tiny, args.size, args.steps))
            results.update(bench_chunk_time(tiny, args.size, args.steps, output_type="latent"))
        if "rss" in args.only:
            results.update(bench_peak_rss(tiny, args.size, args.steps, args.threads))
        if "speedup" in args.only:
            results.update(bench_speedup(small, args.size, args.speedup_steps, args.speedup_repeats))

    targets = {
        "chunk_time_growth": ("<=", 1.10),
        "peak_rss_growth": ("<=", 1.10),
        "speedup_vs_wanpipeline": (">=", 1.5),
    }
    print(f"{'metric':<34}{'value':>12}  target")
    for key, value in results.items():
        op, bound = targets.get(key, ("", None))
        ok = "" if bound is None else ("ok" if (value <= bound if op == "<=" else value >= bound) else "MISSED")
        if isinstance(value, list):
            shown = " ".join(f"{v:.3f}" for v in value)
        else:
            shown = f"{value:12.3f}" if isinstance(value, float) else f"{value!s:>12}"
        print(f"{key:<34}{shown}  {op} {bound if bound is not None else ''} {ok}".rstrip())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
