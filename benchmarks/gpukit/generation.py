"""Section 3, generation with the 1.3B model: `LaCTVideoPipeline` chunk by chunk, `torch.compile` and CUDA
graphs, and diffusers' `WanPipeline` on the same weights.

- `per_chunk`: a video of `gen_chunks` chunks (12 x 3 latent frames = 141 frames at 480x832), `gen_steps`
  steps with classifier-free guidance (both branches as batch rows), streamed: the wall time of each chunk
  (denoising steps, commit, VAE decode), the growth ratio (mean of the last third of the chunks over the first
  third after chunk 1, which has fewer frames and the first calls: 9-12 over 2-5), frames per second, peak memory.
- `wan_pipeline`: `WanPipeline` (full attention over the clip) and `LaCTVideoPipeline` on the same base
  weights, 81 frames, the same steps and guidance: Wan's time over LaCT's.
- `compile` (its own section): one chunk's denoising forward (batch 2, as under guidance) eager, with
  `compile_repeated_blocks(fullgraph=True)`, with `compile(fullgraph=True)` (full mode), and with CUDA graphs
  (`mode="reduce-overhead"`); the warm-up (compilation) time, the best forward time, and the largest
  difference from eager's output.

Prompts are random embeddings of the real length (the UMT5 encoder runs once per video and is not timed);
the VAE is the real Wan VAE (random weights) in float32, the transformer bf16.
"""

from __future__ import annotations

import functools
import time

import torch

from lact_video.geometry import latent_size, video_num_frames
from pipelines import LaCTVideoPipeline

from .build import build_wan, default_dtype, lact_from_wan
from .numerics import rel_err
from .report import PeakMemory, synchronize, timed


def build_pipelines(sizes, device):
    """(LaCTVideoPipeline, WanPipeline) sharing one random base transformer, VAE and scheduler settings."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline

    wan = build_wan(sizes.model, device, torch.bfloat16)
    lact = lact_from_wan(wan, chunk_frames=sizes.chunk_frames, fw_head_dim=sizes.fw_head_dim)
    torch.manual_seed(1)
    with torch.device(device), default_dtype(torch.float32):
        vae = AutoencoderKLWan(**(sizes.vae or {})).eval()

    def scheduler():
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)

    parts = dict(tokenizer=None, text_encoder=None, vae=vae)
    lact_pipe = LaCTVideoPipeline(**parts, scheduler=scheduler(), transformer=lact)
    wan_pipe = WanPipeline(**parts, scheduler=scheduler(), transformer=wan)
    for pipe in (lact_pipe, wan_pipe):
        pipe.set_progress_bar_config(disable=True)
    return lact_pipe, wan_pipe


def prompt_embeds(sizes, device, batch: int = 1):
    g = torch.Generator().manual_seed(3)
    shape = (batch, sizes.text_tokens, sizes.model["text_dim"])
    return [torch.randn(shape, generator=g).to(device, torch.bfloat16) for _ in range(2)]


def call_kwargs(sizes, device, num_chunks: int) -> dict:
    positive, negative = prompt_embeds(sizes, device)
    return dict(
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        height=sizes.height,
        width=sizes.width,
        num_frames=video_num_frames(num_chunks * sizes.chunk_frames),
        num_inference_steps=sizes.gen_steps,
        guidance_scale=sizes.guidance_scale,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )


def per_chunk(section, lact_pipe, sizes, device) -> list[float]:
    kwargs = call_kwargs(sizes, device, sizes.gen_chunks)
    section.shapes(per_chunk={k: v for k, v in kwargs.items() if k in ("height", "width", "num_frames",
                   "num_inference_steps", "guidance_scale")} | {"chunks": sizes.gen_chunks,
                   "text_tokens": sizes.text_tokens})  # fmt: skip
    times, frames = [], 0
    with PeakMemory(device) as peak:
        synchronize(device)
        start = time.perf_counter()
        for chunk in lact_pipe.stream(**kwargs):  # np frames: the chunk is finished when it arrives
            now = time.perf_counter()
            times.append(now - start)
            start, frames = now, frames + chunk.shape[1]
    section.series("chunk_seconds", times)
    third = max(1, (len(times) - 1) // 3)  # 12 chunks: chunks 2-5 against 9-12 (chunk 1 has fewer frames)
    early, late = times[1 : 1 + third], times[-third:]
    section.figures(
        chunk_time_growth=(sum(late) / len(late)) / (sum(early) / len(early)),
        seconds_per_chunk=sum(times[1:]) / len(times[1:]),
        frames_per_s=frames / sum(times),
        video_seconds=sum(times),
    )
    peak.record(section, "peak_memory_gib")
    return times


def wan_ratio(section, wan_pipe, sizes, device, chunk_seconds: list[float]) -> None:
    """WanPipeline's time over LaCTVideoPipeline's for the same 81-frame clip.

    LaCT's time is that of the first `wan_chunks` chunks of the streamed video: its noise is drawn chunk by
    chunk, so they are exactly the 81-frame video (plus one commit, a twentieth of a chunk), and a second
    LaCT run would cost the kit 20 s more.
    """
    kwargs = call_kwargs(sizes, device, sizes.wan_chunks)
    section.shapes(wan_pipeline={"num_frames": kwargs["num_frames"], "steps": sizes.gen_steps})
    lact_s = sum(chunk_seconds[: sizes.wan_chunks])
    with PeakMemory(device) as peak:
        wan_s, _ = timed(lambda: wan_pipe(**kwargs), device)
    section.figures(lact_81_frames_s=lact_s, wan_81_frames_s=wan_s, wan_over_lact_time=wan_s / lact_s)
    peak.record(section, "wan_peak_memory_gib")


def run(section, sizes, device) -> None:
    lact_pipe, wan_pipe = build_pipelines(sizes, device)
    chunk_seconds = per_chunk(section, lact_pipe, sizes, device)
    with section.optional("wan_pipeline"):
        wan_ratio(section, wan_pipe, sizes, device, chunk_seconds)


# What one compiled variant costs at the real size: three graphs of one block (first chunk, commit, later
# chunk), each traced by Dynamo and built by inductor (an estimate; the JSON's warm-up figures measure it).
COMPILE_VARIANT_S = 75.0


@torch.inference_mode()
def _denoise_setup(model, sizes, device):
    """One committed chunk and the inputs of chunk 1's denoising forward (batch 2, as under guidance)."""
    h, w = sizes.latent
    g = torch.Generator().manual_seed(4)
    chunk = torch.randn(2, sizes.model["in_channels"], sizes.chunk_frames, h, w, generator=g).to(device, model.dtype)
    positive, negative = prompt_embeds(sizes, device)
    text_context = model.encode_text(torch.cat([negative, positive]))
    state = model.init_state()
    model(chunk, torch.full((2,), 500.0, device=device), mode="denoise", state=state, text_context=text_context)
    state = model(chunk, torch.zeros(2, device=device), mode="commit", state=state, text_context=text_context).state
    timestep = torch.full((2,), 500.0, device=device)

    def forward():
        return model(chunk, timestep, mode="denoise", state=state, text_context=text_context).sample

    return forward


def run_compile(section, sizes, device, budget) -> None:
    """Eager against torch.compile (regional, whole model) and CUDA graphs, on one chunk's denoising forward."""
    wan = build_wan(sizes.model, device, torch.bfloat16)
    h, w = latent_size(sizes.height, sizes.width)
    section.shapes(batch=2, latent=[sizes.chunk_frames, h, w], tokens=sizes.tokens_per_chunk(),
                   backend=sizes.compile_backend, repeats=sizes.compile_repeats)  # fmt: skip
    variants = {"eager": None, "regional": ("compile_repeated_blocks", {})}
    if sizes.compile_whole_model:
        variants["whole_model"] = ("compile", {})
    variants["cuda_graphs"] = ("compile_repeated_blocks", {"mode": "reduce-overhead"})
    reference = None
    for name, how in variants.items():
        if name != "eager" and budget.remaining() < COMPILE_VARIANT_S:
            section.record["errors"][name] = f"not measured: under {COMPILE_VARIANT_S:.0f} s of the time budget left"
            continue
        with section.optional(name):
            if name == "cuda_graphs" and device.type != "cuda":
                raise RuntimeError("not measured: CUDA graphs need a CUDA device")
            torch._dynamo.reset()
            torch.manual_seed(0)  # the same new LaCT weights in every variant
            model = lact_from_wan(wan, chunk_frames=sizes.chunk_frames, fw_head_dim=sizes.fw_head_dim)
            if how is not None:
                method, options = how
                getattr(model, method)(fullgraph=True, backend=sizes.compile_backend, **options)
            with torch.inference_mode():
                warmup_s, forward = timed(functools.partial(_denoise_setup, model, sizes, device), device)
                first_s, out = timed(forward, device)
                out = out.float().clone()
                best = min(timed(forward, device)[0] for _ in range(sizes.compile_repeats))
            section.figures(**{f"{name}_warmup_s": warmup_s + first_s, f"{name}_forward_s": best})
            if reference is None:
                reference = (out, best)
            else:
                section.figures(
                    **{f"{name}_speedup": reference[1] / best, f"{name}_vs_eager": rel_err(out, reference[0])}
                )
            del model, forward
