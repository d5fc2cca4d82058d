"""Section 4, 14B: one chunk's denoising forward and one commit at 480x832 in bf16 (40 blocks, dim 5120).

The model is built on the device in bf16 (random weights, the 14B recipe's `fw_head_dim=1280`). Chunk 0 is
denoised and committed once (the warm-up), then chunk 1's denoising forward and commit are timed, batch 1
(guidance would double the batch), with the prompt projected once (`text_context`), as the pipeline does.
"""

from __future__ import annotations

import time

import torch

from .build import build_lact
from .report import PeakMemory, timed


@torch.inference_mode()
def run(section, sizes, device) -> None:
    start = time.perf_counter()
    with PeakMemory(device) as build_peak:
        model = build_lact(sizes.big_model, device, torch.bfloat16, chunk_frames=sizes.chunk_frames,
                           fw_head_dim=sizes.big_fw_head_dim)  # fmt: skip
    section.figure("build_s", time.perf_counter() - start)
    build_peak.record(section, "weights_gib")
    h, w = sizes.latent
    section.shapes(
        model=sizes.big_model, fw_head_dim=sizes.big_fw_head_dim, batch=1, latent=[sizes.chunk_frames, h, w],
        tokens_per_chunk=sizes.tokens_per_chunk(), text_tokens=sizes.text_tokens,
        parameters=sum(p.numel() for p in model.parameters()),
    )  # fmt: skip
    g = torch.Generator().manual_seed(5)
    chunk = torch.randn(1, sizes.big_model["in_channels"], sizes.chunk_frames, h, w, generator=g)
    chunk = chunk.to(device, torch.bfloat16)
    text = torch.randn(1, sizes.text_tokens, sizes.big_model["text_dim"], generator=g).to(device, torch.bfloat16)
    noisy, clean = torch.full((1,), 500.0, device=device), torch.zeros(1, device=device)
    text_context = model.encode_text(text)

    def denoise(state):
        return model(chunk, noisy, mode="denoise", state=state, text_context=text_context).sample

    def commit(state):
        return model(chunk, clean, mode="commit", state=state, text_context=text_context).state

    state = model.init_state()
    first_s, _ = timed(lambda: denoise(state), device)
    state = commit(state)
    with PeakMemory(device) as peak:
        denoise_s, out = timed(lambda: denoise(state), device)
        commit_s, _ = timed(lambda: commit(state), device)
    section.figures(first_denoise_s=first_s, denoise_s=denoise_s, commit_s=commit_s)
    section.figure("output_finite", bool(torch.isfinite(out).all()))
    peak.record(section, "peak_memory_gib")
