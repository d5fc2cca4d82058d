"""The matmul FLOP count of a `LaCTWanTransformer3DModel` call, for MFU (docs/design.md, Sec. 1 and 3).

Counts what the code computes, term by term, with 2 FLOPs per multiply-add: every linear and
convolution, softmax attention as the two products `Q K^T` and `P V` over the keys each query is
given (a masked key is computed too: the full-causal baseline's masked tiles count), the fast-weight
memory's reads (three `(L x d) @ (d x dh)` products per head) and updates (three forward products and
three outer products per chunk, plus Newton-Schulz with Muon). Element-wise work (norms, rotary, silu,
softmax) is not counted, as in `torch.utils.flop_counter.FlopCounterMode`, against which
tests/test_bench_gpu.py checks this count on a small config.

A training step's model FLOPs are 3x the forward's (the backward's two products per forward product),
the usual MFU convention: the forward that gradient checkpointing recomputes is not counted.

Shapes: `B` batch, `N` chunks, `R` noisy copies, `T` tokens per chunk, `D` model dim, `L` tokens.
"""

from __future__ import annotations

import math

from lact_video.ops.muon import NS_STEPS

TRAIN_STEP_MULTIPLIER = 3  # forward + backward (two products per forward product); recompute not counted


def _attention_pairs(mode: str, num_chunks: int, tokens: int, window: int, num_repeat: int, full_causal: bool) -> int:
    """Query-key pairs softmax attention computes for one sample (see lact_video.ops.window_attention)."""
    n, t, r = num_chunks, tokens, num_repeat
    if mode == "teacher_forcing":
        if full_causal and n > 1:
            keys = (n - 1) * t + t  # every segment gets all clean chunks as (masked) context
            return n * r * t * keys + (n - 1) * t * keys
        clean = (n - 1) * t * t
        noisy = r * t * t + (n - 1) * r * t * (t + window)
        return clean + noisy
    # denoise / commit of chunk `num_chunks - 1`: a window commit sees only its own chunk, a full-causal
    # commit sees what a denoising pass of it sees
    index = n - 1
    if index == 0 or (mode == "commit" and not full_causal):
        return t * t
    return t * (t + (index * t if full_causal else window))


def _memory_flops(mode, num_chunks, tokens, num_repeat, dim, fw_head_dim, fw_mlp_ratio, momentum, muon) -> float:
    """The fast-weight memory of one block, one sample (lact_video.layers.fast_weight_memory)."""
    n, t, r, d = num_chunks, tokens, num_repeat, dim
    heads, dh = dim // fw_head_dim, fw_mlp_ratio * fw_head_dim
    read = 6 * d * dh  # per query token: (W0 q, W2 q, W1 h) summed over heads, d * heads = dim
    update = 12 * t * d * dh  # per chunk: gate, hidden, W1^T v, then dW0, dW2, dW1
    if muon:  # Newton-Schulz on the wide (d x dh) orientation of each of the three matrices, per head
        m, k = min(fw_head_dim, dh), max(fw_head_dim, dh)
        update += heads * 3 * NS_STEPS * (4 * m * m * k + 2 * m**3)
    write_proj = 2 * t * d * heads * (3 + (1 if momentum else 0))  # lr_proj (+ momentum_proj) per written token
    if mode == "teacher_forcing":
        queries = n * r * t + (n - 1) * t
        gate = 2 * d * (n * r + n - 1) * t
        return queries * read + (n - 1) * (update + write_proj) + gate
    if mode == "denoise":
        return t * read + 2 * d * t
    return t * read + update + write_proj + 2 * d * t  # commit


def transformer_flops(
    config: dict,
    *,
    mode: str,
    num_chunks: int,
    tokens_per_chunk: int,
    text_tokens: int,
    batch_size: int = 1,
) -> dict[str, float]:
    """Forward matmul FLOPs of one call, by part.

    Args:
        config: the model's config (`model.config`, or a Wan config plus the LaCT keys; missing LaCT
            keys take `LaCTConfig`'s defaults).
        mode: "teacher_forcing" (the whole clip of `num_chunks` chunks), "denoise" or "commit" (chunk
            `num_chunks - 1`, after `num_chunks - 1` commits).
        tokens_per_chunk: `T = k * (h / 2) * (w / 2)` for latent size h x w.
        text_tokens: prompt tokens; the prompt is projected in the call (no `text_context` passed).

    Returns:
        `{"linear", "attention", "memory", "total"}`: FLOPs for the batch. "attention" is softmax
        attention (self and cross), "memory" the fast-weight branch, "linear" everything else.
    """
    from lact_video.models.lact_config import LaCTConfig

    lact = {**vars(LaCTConfig()), **{k: v for k, v in config.items() if k in vars(LaCTConfig())}}
    n, t, lt, b = num_chunks, tokens_per_chunk, text_tokens, batch_size
    r = lact["num_repeat"] if mode == "teacher_forcing" else 1
    d = config["num_attention_heads"] * config["attention_head_dim"]
    layers, patch = config["num_layers"], math.prod(config["patch_size"])
    full_causal = str(getattr(lact["attention_mode"], "value", lact["attention_mode"])) == "full_causal"
    window = t if lact["window_size"] is None else min(lact["window_size"], t)
    memory_blocks = layers if lact["lact_blocks"] is None else len(lact["lact_blocks"])

    segments = n * r + n - 1 if mode == "teacher_forcing" else 1
    tokens = segments * t
    out_tokens = {"teacher_forcing": n * r * t, "denoise": t, "commit": 0}[mode]
    # Patch embedding, time embedding (per segment), text embedding, output projection.
    embed = 2 * tokens * d * config["in_channels"] * patch
    embed += 2 * segments * (config["freq_dim"] * d + d * d + 6 * d * d)
    embed += 2 * lt * (config["text_dim"] * d + d * d)
    embed += 2 * out_tokens * d * config["out_channels"] * patch
    # Per block: self-attention q, k, v, out; cross-attention q, out and the prompt's k, v; the FFN.
    block = (
        2 * tokens * d * d * 4 + 2 * tokens * d * d * 2 + 2 * lt * d * d * 2 + 2 * 2 * tokens * d * config["ffn_dim"]
    )
    attention = 4 * d * _attention_pairs(mode, n, t, window, r, full_causal) + 4 * d * tokens * lt
    memory = _memory_flops(
        mode, n, t, r, d, lact["fw_head_dim"], lact["fw_mlp_ratio"], lact["use_momentum"], lact["use_muon"]
    )
    parts = {
        "linear": b * (embed + layers * block),
        "attention": b * layers * attention,
        "memory": b * memory_blocks * memory,
    }
    parts["total"] = sum(parts.values())
    return {k: float(v) for k, v in parts.items()}


def train_step_flops(config: dict, *, num_chunks: int, tokens_per_chunk: int, text_tokens: int, batch_size=1):
    """Model FLOPs of one teacher-forcing training step (forward and backward; see the module docstring)."""
    forward = transformer_flops(
        config,
        mode="teacher_forcing",
        num_chunks=num_chunks,
        tokens_per_chunk=tokens_per_chunk,
        text_tokens=text_tokens,
        batch_size=batch_size,
    )
    return TRAIN_STEP_MULTIPLIER * forward["total"]
