"""Section 1, numerics: bf16 against the fp32 reference at the real width (docs/design.md, Sec. 1.3-1.4).

- teacher forcing equals chunk-by-chunk inference in bf16, within `BF16_PARITY_TOL`, with the fast-weight
  memory opened as the parity tests open it; each bf16 path is also compared with fp32 teacher forcing, for
  every attention backend the device has (SDPA's default choice, diffusers' native flash, flash-attn, ...);
- the fast-weight op (`fast_weight_teacher_forcing`) in bf16 against fp32, at the real head sizes;
- Muon's Newton-Schulz in bf16 against fp32: the outputs and their singular values.

Errors are `max |a - b| / max |b|` (tests/utils.py's `rel_err`).
"""

from __future__ import annotations

import copy

import torch

from lact_video import interleave_teacher_forcing, interleave_timesteps
from lact_video.geometry import latent_size
from lact_video.ops.fast_weight import FastWeights, UpdateRule, fast_weight_teacher_forcing
from lact_video.ops.muon import zeropower_via_newtonschulz5

from .build import build_lact, open_memory_like_tests, to_dtype

# bf16 keeps 8 significant bits (a relative step of 2^-8 = 3.9e-3): two blocks of rounded projections,
# norms and the memory update compound it a few times. Teacher forcing and chunk-by-chunk inference batch
# the same sums differently, so they may differ by about as much as each differs from fp32.
BF16_PARITY_TOL = 5e-2
# The attention backends tried in bf16 (diffusers' names); the default SDPA choice always runs.
CUDA_BACKENDS = ("_native_flash", "_native_cudnn", "_native_efficient", "flash")  # no hub kernels: no network


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def _clip(batch, channels, num_chunks, k, h, w, text_tokens, text_dim, device, seed=0):
    """Clean latents, one noisy copy, timesteps in [0, 1000) and prompt embeddings, drawn on the CPU."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randn(batch, channels, num_chunks * k, h, w, generator=g)
    noise = torch.randn(batch, 1, channels, num_chunks * k, h, w, generator=g)
    t = torch.rand(batch, 1, num_chunks, generator=g)
    level = t.repeat_interleave(k, dim=2)[:, :, None, :, None, None]
    noisy = (1 - level) * clean[:, None] + level * noise
    text = torch.randn(batch, text_tokens, text_dim, generator=g)
    return [x.to(device) for x in (clean, noisy, 1000 * t, text)]


@torch.no_grad()
def _teacher_forcing(model, clean, noisy, t, text, k):
    dtype = model.dtype
    sequence = interleave_teacher_forcing(noisy, clean, k).to(dtype)
    return model(sequence, interleave_timesteps(t), text.to(dtype)).sample[:, 0].float()  # (B, C, F, H, W)


@torch.no_grad()
def _chunk_by_chunk(model, clean, noisy, t, text, k):
    dtype, b = model.dtype, clean.shape[0]
    text_context = model.encode_text(text.to(dtype))
    state, outputs = model.init_state(), []
    for i in range(clean.shape[2] // k):
        frames = slice(i * k, (i + 1) * k)
        step = model(
            noisy[:, 0, :, frames].to(dtype), t[:, 0, i], mode="denoise", state=state, text_context=text_context
        )
        outputs.append(step.sample.float())
        commit = model(clean[:, :, frames].to(dtype), torch.zeros(b, device=clean.device), mode="commit",
                       state=state, text_context=text_context)  # fmt: skip
        state = commit.state
    return torch.cat(outputs, dim=2)


def model_parity(section, sizes, device) -> None:
    config = dict(sizes.model, num_layers=2)
    k, n = sizes.chunk_frames, sizes.numerics_chunks
    h, w = latent_size(sizes.numerics_height, sizes.numerics_width)
    section.shapes(
        model=config, fw_head_dim=sizes.fw_head_dim, latent_frames=n * k, latent_hw=[h, w],
        tokens_per_chunk=sizes.tokens_per_chunk(sizes.numerics_height, sizes.numerics_width),
        text_tokens=sizes.text_tokens, bf16_parity_tolerance=BF16_PARITY_TOL,
    )  # fmt: skip
    reference = build_lact(config, device, torch.float32, chunk_frames=k, fw_head_dim=sizes.fw_head_dim)
    open_memory_like_tests(reference)
    clean, noisy, t, text = _clip(1, config["in_channels"], n, k, h, w, sizes.text_tokens, config["text_dim"], device)
    expected = _teacher_forcing(reference, clean, noisy, t, text, k)
    section.figure("fp32_tf_vs_chunks", rel_err(_chunk_by_chunk(reference, clean, noisy, t, text, k), expected))
    # The memory must matter here, or the parity above proves nothing about it.
    swa = copy.deepcopy(reference)
    for block in swa.blocks:
        block.attn1.memory = None
    section.figure("lact_vs_swa", rel_err(_teacher_forcing(swa, clean, noisy, t, text, k), expected))
    del swa

    model = to_dtype(copy.deepcopy(reference), torch.bfloat16)
    del reference
    backends = ["default"] + (list(CUDA_BACKENDS) if device.type == "cuda" else ["_native_math"])
    for backend in backends:
        with section.optional(f"bf16_{backend}"):
            if backend != "default":
                model.set_attention_backend(backend)
            teacher = _teacher_forcing(model, clean, noisy, t, text, k)
            chunks = _chunk_by_chunk(model, clean, noisy, t, text, k)
            parity = rel_err(chunks, teacher)
            section.figures(**{
                f"bf16_{backend}_tf_vs_chunks": parity,
                f"bf16_{backend}_tf_vs_fp32": rel_err(teacher, expected),
                f"bf16_{backend}_chunks_vs_fp32": rel_err(chunks, expected),
                f"bf16_{backend}_parity_within_tolerance": parity <= BF16_PARITY_TOL,
            })  # fmt: skip
    model.reset_attention_backend()


def fast_weight_op(section, sizes, device) -> None:
    """The chunked fast-weight op over a teacher-forcing sequence, bf16 against fp32, real head sizes."""
    dim = sizes.model["num_attention_heads"] * sizes.model["attention_head_dim"]
    d, heads, n = sizes.fw_head_dim, dim // sizes.fw_head_dim, sizes.train_chunks
    dh, t = 2 * d, sizes.tokens_per_chunk()
    section.shapes(fast_weight={"heads": heads, "d": d, "dh": dh, "tokens_per_chunk": t, "chunks": n})
    g = torch.Generator().manual_seed(1)
    weights = (torch.randn(heads, dh, d, generator=g) * d**-0.5, torch.randn(heads, d, dh, generator=g) * dh**-0.5,
               torch.randn(heads, dh, d, generator=g) * d**-0.5)  # fmt: skip

    def unit(*shape):
        return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)

    noisy_q, clean_q, clean_k = unit(heads, n, t, d), unit(heads, n - 1, t, d), unit(heads, n - 1, t, d)
    clean_v = torch.randn(heads, n - 1, t, d, generator=g)
    lr = torch.nn.functional.softplus(torch.randn(heads, n - 1, t, 3, generator=g) - 1.0)  # as the parity tests
    inputs = [x.to(device) for x in (*weights, noisy_q, clean_q, clean_k, clean_v, lr)]
    outputs = {}
    for dtype in (torch.float32, torch.bfloat16):
        w0, w1, w2, *rest = (x.to(dtype) for x in inputs)
        outputs[dtype] = fast_weight_teacher_forcing(FastWeights(w0, w1, w2), *rest, UpdateRule())
    for i, name in enumerate(("noisy", "clean")):
        section.figure(
            f"fast_weight_bf16_vs_fp32_{name}", rel_err(outputs[torch.bfloat16][i], outputs[torch.float32][i])
        )


def newton_schulz(section, sizes, device) -> None:
    """Newton-Schulz on fast-weight-update-sized matrices (one per head), bf16 against fp32."""
    d = sizes.fw_head_dim
    heads = sizes.model["num_attention_heads"] * sizes.model["attention_head_dim"] // d
    g, rank = torch.Generator().manual_seed(2), min(64, d)
    # A gradient-like update: a sum of few outer products, so most singular values are zero.
    update = (torch.randn(heads, 2 * d, rank, generator=g) @ torch.randn(heads, rank, d, generator=g)).to(device)
    section.shapes(newton_schulz={"matrices": heads, "shape": [2 * d, d], "rank": rank})
    reference = zeropower_via_newtonschulz5(update, torch.float32)
    low = zeropower_via_newtonschulz5(update.bfloat16(), torch.bfloat16)
    section.figure("newton_schulz_bf16_vs_fp32", rel_err(low.float(), reference))
    for name, x in (("fp32", reference), ("bf16", low)):
        s = torch.linalg.svdvals(x.float())[:, :rank]  # the others stay near 0
        section.figures(**{f"newton_schulz_{name}_sv_min": s.min(), f"newton_schulz_{name}_sv_max": s.max()})


def run(section, sizes, device) -> None:
    # A true fp32 reference: cuDNN convolutions (the patch embedding) default to TF32 on the GPU.
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        model_parity(section, sizes, device)
        with section.optional("fast_weight_op"):
            fast_weight_op(section, sizes, device)
        with section.optional("newton_schulz"):
            newton_schulz(section, sizes, device)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
