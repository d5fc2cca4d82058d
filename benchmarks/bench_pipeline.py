"""LaCTVideoPipeline benchmarks: flat time and memory per chunk, and the speedup over full attention.

docs/design.md, Sec. 3.3: time and memory per chunk do not grow with the video's length. Measured on the
tiny random Wan models of `lact_video.tiny` (built into a temporary folder), on the CPU:

- `chunk_time_growth`: 64-chunk generations (streamed); wall time of chunks 49..64 over the wall
  time of chunks 1..16 (each chunk: its denoising steps, its commit and its VAE decode), with
  chunks 1..16 timed side by side with chunks 49..64 on a second, identical generation, so that
  the machine's drift cancels (see `bench_chunk_time`); the ratio within one generation and the
  same without the VAE decode (`_without_decode`) are reported too. Target <= 1.10.
- `peak_rss_growth`: peak RSS (`VmHWM`) of a fresh process that streams 64 chunks to an mp4,
  over one that streams 16. Target <= 1.10. The peak is set by a transient: the first VAE decodes
  add 100-200 MiB of freed-but-resident conv buffers, and how much of it glibc hands back varies
  from process to process (peaks of identical runs differ by up to 30%). So each length runs in
  `repeats` fresh processes and the smallest peaks are compared; every peak is reported. Most of a
  process's RSS is its imports and weights, so the RSS after every chunk of a 64-chunk run is
  sampled too: `rss_growth_within_run` is the largest RSS after chunks 49..64 over the largest
  after chunks 1..16.
- `ingest_time_growth`: continuing a real clip (`video=` an mp4 of 64 chunks at `--ingest-size`, 256x256 by
  default): the time to ingest chunks 49..64 of the clip over chunks 1..16 (each chunk: read from the file,
  encoded with the VAE's causal cache carried, committed into the memory, decoded to prime the decoder), timed
  in lockstep as `chunk_time_growth` is. Target <= 1.10.
- `ingest_rss_growth`: peak RSS of a fresh process that continues a 64-chunk mp4 clip over one that continues
  a 16-chunk clip (smallest peak of `repeats` processes each, as `peak_rss_growth`). The 64-chunk clip's
  decoded frames alone (765 frames, 150 MB as uint8) would break the target if they were ever held at once.
  Target <= 1.10.
- `speedup_vs_wanpipeline`: diffusers' `WanPipeline` (full attention over the whole clip) on the
  same base weights, same frames, steps (50 by default, Wan's default) and resolution (128x128,
  48 latent frames; `--speedup-latent-frames` for other lengths), wall time over
  `LaCTVideoPipeline`'s, guidance on. On the "small" model
  (4 layers, dim 256): in the "tiny" one (dim 24) attention costs next to nothing. Both pipelines
  spend the same time in the VAE decode, so the speedup without it is reported too. Prompts are
  padded to 16 tokens (`--text-tokens`; WanPipeline's default is 512, which costs both pipelines
  the same cross-attention but Wan also re-projects the prompt in each of its two forwards per step,
  where LaCT projects it once per video). Target >= 1.5.
  `speedup_compiled`: the same with both transformers under `torch.compile(fullgraph=True)`.
- `length` / `length_compiled`: seconds per denoising step of the whole video at 24, 48 and 96
  latent frames for both pipelines (see `bench_step_time_by_length`), plotted to `--plot`.
- `text_context`: a chunk's denoising forward with the prompt projected in the call over the same
  forward reusing the projection of an earlier call (`text_context`), at 16 and 512 prompt tokens.
- `call_cost`: the fixed cost of one transformer call (a forward on one token per latent frame) of
  each pipeline, and what it adds up to over the calls of the speed-up's video (see `bench_call_cost`).

    python benchmarks/bench_pipeline.py --json outputs/bench_pipeline.json [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from common import proc_status_kib

from lact_video.geometry import latent_size, video_num_frames
from pipelines import LaCTVideoPipeline, VideoStreamWriter, WanStreamingDecoder

REPO = pathlib.Path(__file__).resolve().parents[1]

PROMPT = "a cat walks across a sunny kitchen floor"
NEGATIVE = "low quality, blurry, static"
SECTIONS = (
    "chunk_time",
    "rss",
    "speedup",
    "speedup_compiled",
    "length",
    "length_compiled",
    "text_context",
    "call_cost",
    "ingest",
)
TINY_LACT = dict(chunk_frames=3, fw_head_dim=12)
SMALL_LACT = dict(chunk_frames=3, fw_head_dim=128)


def load_lact(base: str, lact_config: dict):
    pipe = LaCTVideoPipeline.from_wan(base, **lact_config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generation_kwargs(num_chunks: int, size: int, steps: int, seed: int = 0, text_tokens: int = 16) -> dict:
    return dict(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        height=size,
        width=size,
        num_frames=video_num_frames(3 * num_chunks),
        num_inference_steps=steps,
        guidance_scale=5.0,
        max_sequence_length=text_tokens,
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
    pipes = lockstep_pipes(base, 2 * runs)
    for _ in pipes[0].stream(**generation_kwargs(2, size, steps), output_type=output_type):
        pass  # warm-up: first-call costs of every shape
    streams = [p.stream(**generation_kwargs(64, size, steps), output_type=output_type) for p in pipes]
    figures = time_in_lockstep(streams[:runs], streams[runs:])
    suffix = "" if output_type == "np" else "_without_decode"
    return {
        f"chunk_time_growth{suffix}": figures["growth"],
        f"chunk_time_growth_same_generation{suffix}": figures["growth_same_stream"],
        f"chunk_ms_1_16{suffix}": figures["ms_1_16"],
        f"chunk_ms_49_64{suffix}": figures["ms_49_64"],
    }


def lockstep_pipes(base: str, count: int) -> list[LaCTVideoPipeline]:
    """`count` pipelines on one tiny model's components, each with its own scheduler: streams run in lockstep must
    not share scheduler state (the rest is read-only)."""
    pipe = load_lact(base, TINY_LACT)
    pipes = [
        LaCTVideoPipeline(**{**pipe.components, "scheduler": copy.deepcopy(pipe.scheduler)}) for _ in range(count)
    ]
    for p in pipes:
        p.set_progress_bar_config(disable=True)
    return pipes


def time_in_lockstep(early: list, late: list, num_chunks: int = 64, window: int = 16) -> dict:
    """Chunks `num_chunks - window + 1 .. num_chunks` of the `early` streams over chunks `1 .. window` of the
    `late` ones, which start when the early ones reach the last window, so that both windows are timed side by
    side (see `bench_chunk_time`). Each chunk index takes its fastest time over the streams of its group.
    """
    runs = len(early)
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
    return {
        "growth": float(last.sum() / first.sum()),
        "growth_same_stream": float(last.sum() / times_early[:, :window].min(axis=0).sum()),
        "ms_1_16": float(first.mean() * 1e3),
        "ms_49_64": float(last.mean() * 1e3),
    }


def write_clip(path: pathlib.Path, num_chunks: int, size: int, fps: int = 16) -> pathlib.Path:
    """An H.264 mp4 of `num_chunks` whole chunks (4 * 3 * num_chunks - 3 frames) at size x size: colour waves
    drifting across the picture, written chunk by chunk (the whole clip is never held)."""
    y, x = np.mgrid[:size, :size] / size
    writer = VideoStreamWriter(path, size, size, fps)
    total = video_num_frames(3 * num_chunks)
    for start in range(0, total, 12):
        t = np.arange(start, min(start + 12, total))[:, None, None, None] / fps
        phase = np.array([0.0, 2.1, 4.2])
        writer.write(0.5 + 0.5 * np.sin(6 * x[None, ..., None] + 4 * y[None, ..., None] * np.cos(t) + 3 * t + phase))
    writer.close()
    return path


def continue_kwargs(clip: pathlib.Path, size: int, steps: int) -> dict:
    """Continue `clip` by one chunk, with the clip's chunks in the stream (one item per ingested chunk)."""
    kwargs = generation_kwargs(1, size, steps)
    return {**kwargs, "num_frames": 12, "video": str(clip), "return_input_video": True}


def bench_ingest_time(base: str, clip: pathlib.Path, warm_clip: pathlib.Path, size: int, steps: int, runs: int = 2):
    """Chunks 49..64 of a 64-chunk clip over chunks 1..16, ingested from an mp4 in lockstep (`time_in_lockstep`)."""
    pipes = lockstep_pipes(base, 2 * runs)
    for _ in pipes[0].stream(**continue_kwargs(warm_clip, size, steps)):
        pass  # warm-up: first-call costs of every shape
    streams = [p.stream(**continue_kwargs(clip, size, steps)) for p in pipes]
    figures = time_in_lockstep(streams[:runs], streams[runs:])
    for stream in streams:
        stream.close()
    return {
        "ingest_time_growth": figures["growth"],
        "ingest_time_growth_same_clip": figures["growth_same_stream"],
        "ingest_ms_1_16": figures["ms_1_16"],
        "ingest_ms_49_64": figures["ms_49_64"],
    }


def rss_child(base: str, num_chunks: int, size: int, steps: int, threads: int, clip: str | None = None) -> None:
    """Runs in a fresh process: stream `num_chunks` chunks to an mp4, or continue the mp4 `clip` by one chunk; print
    the RSS figures as JSON."""
    torch.set_num_threads(threads)
    pipe = load_lact(base, TINY_LACT)
    with tempfile.TemporaryDirectory() as tmp:
        if clip is None:
            stream = pipe.stream(**generation_kwargs(num_chunks, size, steps), output_path=os.path.join(tmp, "v.mp4"))
        else:
            stream = pipe.stream(**continue_kwargs(pathlib.Path(clip), size, steps))
        rss = [proc_status_kib("VmRSS") for _ in stream]  # after every chunk
    # The peak of this process's own memory map. Not `ru_maxrss`: Linux carries it across execve, so a
    # child spawned by a big parent reports the parent's peak.
    peak = proc_status_kib("VmHWM")
    print(json.dumps({"peak_kib": peak, "rss_kib": rss}))


def rss_children(base: str, size: int, steps: int, threads: int, repeats: int, clips: dict | None = None) -> dict:
    """RSS figures of `repeats` fresh `rss_child` processes per length (16 and 64 chunks), interleaved so that a
    slow drift of the machine hits both lengths; `clips[n]`, if given, is the mp4 the child continues."""
    runs = {16: [], 64: []}
    for _ in range(repeats):
        for n in runs:
            cmd = [sys.executable, __file__, "--rss-child", str(n), "--base", base, "--size", str(size)]
            cmd += ["--steps", str(steps), "--threads", str(threads)]
            cmd += ["--clip", str(clips[n])] if clips else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO).stdout
            runs[n].append(json.loads(out.strip().splitlines()[-1]))
    return runs


def bench_ingest_rss(base: str, clips: dict, size: int, steps: int, threads: int, repeats: int = 3) -> dict:
    """Peak RSS continuing the 64-chunk mp4 over the 16-chunk one, smallest of `repeats` fresh processes each."""
    runs = rss_children(base, size, steps, threads, repeats, clips)
    peaks = {n: [r["peak_kib"] / 1024 for r in rs] for n, rs in runs.items()}
    rss = np.array(runs[64][0]["rss_kib"]) / 1024  # after every ingested chunk (and the one generated)
    return {
        "ingest_rss_growth": min(peaks[64]) / min(peaks[16]),
        "ingest_peak_rss_mib_16_chunks": peaks[16],
        "ingest_peak_rss_mib_64_chunks": peaks[64],
        "ingest_rss_growth_within_run": float(rss[48:64].max() / rss[:16].max()),
    }


def bench_peak_rss(base: str, size: int, steps: int, threads: int, repeats: int = 3) -> dict:
    runs = rss_children(base, size, steps, threads, repeats)
    peaks = {n: [r["peak_kib"] / 1024 for r in rs] for n, rs in runs.items()}
    rss = np.array(runs[64][0]["rss_kib"]) / 1024
    return {
        "peak_rss_growth": min(peaks[64]) / min(peaks[16]),
        "peak_rss_mib_16_chunks": peaks[16],
        "peak_rss_mib_64_chunks": peaks[64],
        # Within a 64-chunk run: the largest RSS after any of chunks 49..64 over chunks 1..16.
        "rss_growth_within_run": float(rss[-16:].max() / rss[:16].max()),
        "rss_mib_after_chunk_16": float(rss[15]),
        "rss_mib_after_chunk_64": float(rss[63]),
    }


def load_pair(base: str, compile: bool = False):
    """`WanPipeline` and `LaCTVideoPipeline` on the same base weights, optionally both compiled alike."""
    from diffusers import WanPipeline

    wan = WanPipeline.from_pretrained(base)
    wan.set_progress_bar_config(disable=True)
    lact = load_lact(base, SMALL_LACT)
    if compile:
        for pipe in (wan, lact):
            pipe.transformer.compile(fullgraph=True)
    return wan, lact


def bench_speedup(
    base: str,
    size: int,
    steps: int,
    repeats: int = 2,
    latent_frames: int = 48,
    compile: bool = False,
    text_tokens: int = 16,
) -> dict:
    """End-to-end wall time of both pipelines, side by side, on the same weights and arguments.

    Both decode with the same VAE (LaCT chunk by chunk, Wan in one call), which costs the same and
    dilutes the speedup; the decode is timed on its own as well, to report the denoising speedup.
    With `compile`, both transformers go through `torch.compile(fullgraph=True)` and one untimed
    warm-up run each (two steps) compiles every graph first; the figures then carry a `_compiled` suffix.
    """
    wan, lact = load_pair(base, compile)
    kwargs = generation_kwargs(latent_frames // 3, size, steps, text_tokens=text_tokens)
    compile_s = {}
    if compile:
        for name, pipe in (("wan", wan), ("lact", lact)):
            start = time.perf_counter()
            pipe(**{**kwargs, "num_inference_steps": 2}, output_type="latent")
            compile_s[name] = time.perf_counter() - start
    total = {}
    for _ in range(repeats):  # alternating, best of `repeats`: a shared CPU is noisy
        for name, pipe in (("wan", wan), ("lact", lact)):
            kwargs["generator"] = torch.Generator().manual_seed(0)
            start = time.perf_counter()
            pipe(**kwargs, output_type="np")
            total[name] = min(total.get(name, float("inf")), time.perf_counter() - start)

    latents = torch.randn(1, 16, latent_frames, *latent_size(size, size))
    decode = {}
    with torch.no_grad():
        start = time.perf_counter()
        wan.vae.decode(latents)
        decode["wan"] = time.perf_counter() - start
        start, decoder = time.perf_counter(), WanStreamingDecoder(lact.vae)
        for chunk in latents.split(3, dim=2):
            decoder.decode(chunk)
        decode["lact"] = time.perf_counter() - start
    suffix = "_compiled" if compile else ""
    figures = {
        "speedup_vs_wanpipeline": total["wan"] / total["lact"],
        "speedup_without_vae_decode": (total["wan"] - decode["wan"]) / (total["lact"] - decode["lact"]),
        "wanpipeline_s": total["wan"],
        "lact_s": total["lact"],
        "vae_decode_s_wan": decode["wan"],
        "vae_decode_s_lact_streamed": decode["lact"],
    }
    if compile:
        figures.update({"compile_warmup_s_wan": compile_s["wan"], "compile_warmup_s_lact": compile_s["lact"]})
    return {
        **{f"{key}{suffix}": value for key, value in figures.items()},
        "speedup_frames": video_num_frames(latent_frames),
        "speedup_steps": steps,
        "speedup_repeats": repeats,
        "speedup_text_tokens": text_tokens,
    }


def bench_step_time_by_length(base: str, size: int, lengths=(24, 48, 96), steps=(2, 6), compile: bool = False) -> dict:
    """Seconds per denoising step of the whole video, for both pipelines, against the video's length.

    Each pipeline runs twice per length, with `steps[0]` and `steps[1]` steps (latents out); the
    difference over the extra steps is the cost of one step over the whole video (LaCT: every chunk's
    batched-guidance forward; Wan: its two full-attention forwards), free of the costs paid once
    per video or per chunk (text encoding, commits). Wan's full attention grows with the square of
    the length; LaCT's chunks cost the same however many came before.
    """
    wan, lact = load_pair(base, compile)
    per_step = {"wan": [], "lact": []}
    for frames in lengths:
        for name, pipe in (("wan", wan), ("lact", lact)):
            if compile:  # compile this length's graphs outside the timing (two steps reach every graph)
                pipe(**generation_kwargs(frames // 3, size, 2), output_type="latent")
            times = []
            for num_steps in steps:
                start = time.perf_counter()
                pipe(**generation_kwargs(frames // 3, size, num_steps), output_type="latent")
                times.append(time.perf_counter() - start)
            per_step[name].append((times[1] - times[0]) / (steps[1] - steps[0]))
    suffix = "_compiled" if compile else ""
    return {
        f"step_latent_frames{suffix}": list(lengths),
        f"step_s_wan{suffix}": per_step["wan"],
        f"step_s_lact{suffix}": per_step["lact"],
        f"step_speedup{suffix}": [t_wan / t_lact for t_wan, t_lact in zip(per_step["wan"], per_step["lact"])],
    }


def bench_text_context(base: str, size: int, text_tokens=(16, 512), calls: int = 16, repeats: int = 5) -> dict:
    """What projecting the prompt once per video saves: one chunk's batched-guidance denoising forward
    with the prompt embeddings (projected again in the call) over the same forward with the
    `text_context` an earlier call handed back. The pipeline's chunk loop is the second; before it
    cached the prompt, it was the first. Alternating blocks of `calls` forwards, best of `repeats`.
    """
    from lact_video.state import ForwardMode

    transformer = load_lact(base, SMALL_LACT).transformer
    chunk = torch.randn(2, transformer.config.in_channels, SMALL_LACT["chunk_frames"], *latent_size(size, size))
    text_dim = transformer.config.text_dim
    figures = {}
    with torch.no_grad():
        state = transformer.init_state()
        for _ in range(2):  # a window and updated fast weights, as every chunk after the first has
            state = transformer(chunk, torch.zeros(2), torch.randn(2, 16, text_dim), ForwardMode.COMMIT, state).state
        for tokens in text_tokens:
            embeds = torch.randn(2, tokens, text_dim)
            context = transformer.encode_text(embeds)
            timestep = torch.full((2,), 500.0)
            ways = {
                "projected_per_call": lambda: transformer(chunk, timestep, embeds, ForwardMode.DENOISE, state),
                "projected_once": lambda: transformer(
                    chunk, timestep, None, ForwardMode.DENOISE, state, text_context=context
                ),
            }
            best = best_seconds_per_call(ways, calls, repeats)
            figures[f"denoise_ms_prompt_projected_per_call_{tokens}_tokens"] = best["projected_per_call"] * 1e3
            figures[f"denoise_ms_prompt_projected_once_{tokens}_tokens"] = best["projected_once"] * 1e3
            figures[f"text_context_speedup_{tokens}_tokens"] = best["projected_per_call"] / best["projected_once"]
    return figures


def best_seconds_per_call(ways: dict, calls: int, repeats: int) -> dict:
    """Seconds per call of each `ways[name]()`: blocks of `calls` calls, the ways alternating, best of `repeats`."""
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(repeats):
        for name, call in ways.items():
            start = time.perf_counter()
            for _ in range(calls):
                call()
            best[name] = min(best[name], (time.perf_counter() - start) / calls)
    return best


def bench_call_cost(base: str, size: int, steps: int, latent_frames: int = 48, repeats: int = 5) -> dict:
    """The fixed cost of a transformer call, which chunk-by-chunk sampling pays once per chunk and step.

    Each transformer is called as its pipeline calls it (LaCT: a chunk's batched-guidance denoising
    forward under `inference_mode`; Wan: one guidance branch of the whole clip under `no_grad`), at
    the benchmark's size and on a 16x16 video, one token per latent frame, where the tokens cost next
    to nothing. A video of `latent_frames` makes `chunks x steps` LaCT denoising calls plus `chunks - 1`
    commits, and `2 x steps` Wan calls; times the fixed cost, that is time no token is computed in.
    """
    from diffusers import WanTransformer3DModel

    from lact_video.state import ForwardMode

    lact = load_lact(base, SMALL_LACT).transformer
    wan = WanTransformer3DModel.from_pretrained(base, subfolder="transformer").eval()
    k = SMALL_LACT["chunk_frames"]
    text = torch.randn(2, 16, lact.config.text_dim)
    figures = {}
    for label, pixels in (("", size), ("_fixed", 16)):
        chunk = torch.randn(2, lact.config.in_channels, k, *latent_size(pixels, pixels))
        clip = torch.randn(1, wan.config.in_channels, latent_frames, *latent_size(pixels, pixels))
        with torch.inference_mode():
            state = lact.init_state()
            for _ in range(2):  # a window and updated fast weights, as every chunk after the first has
                state = lact(chunk, torch.zeros(2), text, ForwardMode.COMMIT, state).state
            context = lact.encode_text(text)
            denoise = (chunk, torch.full((2,), 500.0), None, ForwardMode.DENOISE, state)
            lact_call = functools.partial(lact, *denoise, text_context=context)
            lact_s = best_seconds_per_call({"lact": lact_call}, 16, repeats)["lact"]
        with torch.no_grad():
            wan_call = functools.partial(wan, clip, torch.full((1,), 500.0), text[:1])
            wan_s = best_seconds_per_call({"wan": wan_call}, 2 if label == "" else 16, repeats)["wan"]
        figures[f"call_ms{label}_lact"], figures[f"call_ms{label}_wan"] = lact_s * 1e3, wan_s * 1e3
    chunks = latent_frames // k
    calls = {"lact": chunks * steps + chunks - 1, "wan": 2 * steps}
    for name, count in calls.items():
        figures[f"calls_per_video_{name}"] = count
        figures[f"fixed_call_cost_s_per_video_{name}"] = count * figures[f"call_ms_fixed_{name}"] / 1e3
    return figures


def plot_step_time(results: dict, path: pathlib.Path) -> None:
    """Left: seconds per denoising step against latent frames; right: the speedup, Wan over LaCT."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), dpi=120)
    times, speedups = fig.subplots(1, 2)
    for suffix, style, label in (("", "-", "eager"), ("_compiled", "--", "torch.compile")):
        if f"step_s_wan{suffix}" not in results:
            continue
        frames = results[f"step_latent_frames{suffix}"]
        times.plot(
            frames, results[f"step_s_wan{suffix}"], style, marker="o", color="tab:red", label=f"WanPipeline, {label}"
        )
        times.plot(
            frames,
            results[f"step_s_lact{suffix}"],
            style,
            marker="o",
            color="tab:blue",
            label=f"LaCTVideoPipeline, {label}",
        )
        speedups.plot(frames, results[f"step_speedup{suffix}"], style, marker="o", color="black", label=label)
        for x, r in zip(frames, results[f"step_speedup{suffix}"]):
            speedups.annotate(f"{r:.2f}", (x, r), textcoords="offset points", xytext=(5, -10), fontsize=8)
    times.set_ylabel("seconds per denoising step (whole video)")
    speedups.set_ylabel("Wan time / LaCT time")
    speedups.axhline(1.0, color="gray", linewidth=0.8)
    for ax in (times, speedups):
        ax.set_xlabel("latent frames (x4 - 3 video frames)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"One denoising step over the whole video, guidance on, {results['size']}x{results['size']}: "
        f"small random Wan (4 blocks, dim 256), CPU, {results['threads']} thread(s)",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=pathlib.Path, help="write the results here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier timings)")
    parser.add_argument("--size", type=int, default=128, help="video height and width")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per chunk (chunk time, RSS)")
    parser.add_argument(
        "--speedup-steps", type=int, default=50, help="denoising steps for the speedup (default 50, as Wan's default)"
    )
    parser.add_argument(
        "--text-tokens", type=int, default=16, help="prompt length of the speed-up runs (WanPipeline's default is 512)"
    )
    parser.add_argument("--speedup-repeats", type=int, default=2, help="timed runs of each pipeline (best is kept)")
    parser.add_argument(
        "--speedup-latent-frames",
        type=int,
        default=48,
        help="video length of the speed-up, in latent frames (default 48)",
    )
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument(
        "--plot",
        type=pathlib.Path,
        default=REPO / "docs" / "pipeline_step_time.png",
        help="where the step-time-by-length figure goes",
    )
    parser.add_argument(
        "--ingest-size", type=int, default=256, help="video height and width of the clip-ingest figures (default 256)"
    )
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--clip", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        return rss_child(args.base, args.rss_child, args.size, args.steps, args.threads, args.clip)

    from lact_video.tiny import build_tiny_wan

    sections = args.only.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    if args.speedup_latent_frames % SMALL_LACT["chunk_frames"]:
        parser.error(f"--speedup-latent-frames must be a multiple of chunk_frames={SMALL_LACT['chunk_frames']}")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tiny = str(build_tiny_wan(pathlib.Path(tmp) / "tiny", seed=0, size="tiny"))
        small = str(build_tiny_wan(pathlib.Path(tmp) / "small", seed=0, size="small"))
        results = {"threads": torch.get_num_threads(), "size": args.size, "steps": args.steps, "guidance_scale": 5.0}
        if "chunk_time" in sections:
            results.update(bench_chunk_time(tiny, args.size, args.steps))
            results.update(bench_chunk_time(tiny, args.size, args.steps, output_type="latent"))
        if "rss" in sections:
            results.update(bench_peak_rss(tiny, args.size, args.steps, args.threads))
        speedup_args = dict(
            steps=args.speedup_steps,
            repeats=args.speedup_repeats,
            text_tokens=args.text_tokens,
            latent_frames=args.speedup_latent_frames,
        )
        if "speedup" in sections:
            results.update(bench_speedup(small, args.size, **speedup_args))
        if "speedup_compiled" in sections:
            results.update(bench_speedup(small, args.size, compile=True, **speedup_args))
        if "length" in sections:
            results.update(bench_step_time_by_length(small, args.size))
        if "length_compiled" in sections:
            results.update(bench_step_time_by_length(small, args.size, compile=True))
        if "text_context" in sections:
            results.update(bench_text_context(small, args.size))
        if "call_cost" in sections:
            results.update(bench_call_cost(small, args.size, args.speedup_steps, args.speedup_latent_frames))
        if "ingest" in sections:
            clips = {n: write_clip(pathlib.Path(tmp) / f"clip_{n}.mp4", n, args.ingest_size) for n in (2, 16, 64)}
            results["ingest_size"] = args.ingest_size
            results.update(bench_ingest_time(tiny, clips[64], clips[2], args.ingest_size, args.steps))
            results.update(bench_ingest_rss(tiny, clips, args.ingest_size, args.steps, args.threads))
    if args.plot and ("step_s_wan" in results or "step_s_wan_compiled" in results):
        plot_step_time(results, args.plot)

    targets = {
        "chunk_time_growth": ("<=", 1.10),
        "peak_rss_growth": ("<=", 1.10),
        "ingest_time_growth": ("<=", 1.10),
        "ingest_rss_growth": ("<=", 1.10),
        "speedup_vs_wanpipeline": (">=", 1.5),
        "speedup_vs_wanpipeline_compiled": (">=", 1.5),
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
