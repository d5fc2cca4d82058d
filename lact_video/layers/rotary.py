"""Wan's 3D rotary embedding, evaluated per chunk so any segment can take any chunk's positions.

`WanRotaryPosEmbed.forward` only yields positions `0 .. F-1` for a whole clip. Teacher forcing gives
the noisy and clean segments of chunk `i` the same frame positions `i*k .. i*k+k-1`, and inference
needs chunk `i` alone, so we index the module's own frequency tables by frame instead.

Wan rotates interleaved channel pairs `(x1, x2)` into `(x1 cos - x2 sin, x1 sin + x2 cos)`: one
complex product. Eager PyTorch on the CPU does it as one vectorised complex op, much faster than
Wan's eight strided real ops (README, Benchmarks); inductor cannot generate code for complex ops, so a compiled graph
spells out the same product in real arithmetic, which it fuses. The tables hold `(cos, sin)` per
pair in a real tensor so that both paths read them without conversion.
"""

import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed


def chunk_rotary_emb(
    rope: WanRotaryPosEmbed,
    chunk_indices: tuple[int, ...],
    chunk_frames: int,
    height: int,
    width: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Rotary tables for segments of whole chunks.

    Args:
        rope: the pretrained model's `WanRotaryPosEmbed` (its buffers hold the frequencies).
        chunk_indices: the chunk index of each of the `S` segments.
        height, width: post-patch token grid.
        dtype: float32, or float64 for equivalence checks.

    Returns:
        (S, T, 1, D/2, 2): `(cos, sin)` of each channel pair, with `T = chunk_frames * height * width`
        and `D` the head dim.
    """
    longest = max((max(chunk_indices) + 1) * chunk_frames, height, width)
    if longest > rope.max_seq_len:
        raise ValueError(
            f"Positions up to {longest} exceed the rotary table of rope_max_seq_len={rope.max_seq_len} "
            f"(latent frames, or post-patch height/width). Generate at most {rope.max_seq_len} latent frames, "
            "or raise `rope_max_seq_len` in the transformer config (it adds no weights)."
        )
    device = rope.freqs_cos.device
    frames = torch.tensor(chunk_indices, device=device)[:, None] * chunk_frames + torch.arange(
        chunk_frames, device=device
    )
    s, k = frames.shape  # (S, k) frame positions
    # Wan's buffers repeat each pair's frequency twice: cos at even channels, sin at odd ones.
    pairs = torch.stack([rope.freqs_cos[:, 0::2], rope.freqs_sin[:, 1::2]], dim=-1).to(dtype)  # (positions, D/2, 2)
    f_t, f_h, f_w = pairs.split([rope.t_dim // 2, rope.h_dim // 2, rope.w_dim // 2], dim=1)
    f_t = f_t[frames].view(s, k, 1, 1, -1, 2).expand(s, k, height, width, -1, 2)
    f_h = f_h[:height].view(1, 1, height, 1, -1, 2).expand(s, k, height, width, -1, 2)
    f_w = f_w[:width].view(1, 1, 1, width, -1, 2).expand(s, k, height, width, -1, 2)
    return torch.cat([f_t, f_h, f_w], dim=-2).view(s, k * height * width, 1, -1, 2)


def apply_rotary_emb(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs as Wan's attention processor does, in at least float32.

    x: (..., T, H, D); freqs: (cos, sin) pairs broadcastable to (..., T, H, D/2, 2), e.g. (S, T, 1, D/2, 2).
    """
    compute = torch.promote_types(x.dtype, torch.float32)
    pairs = x.to(compute).unflatten(-1, (-1, 2))  # (..., T, H, D/2, 2)
    if torch.compiler.is_compiling():
        (x1, x2), (cos, sin) = pairs.unbind(-1), freqs.to(compute).unbind(-1)
        rotated = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    else:
        rotated = torch.view_as_real(
            torch.view_as_complex(pairs.contiguous()) * torch.view_as_complex(freqs.to(compute))
        )
    return rotated.flatten(-2).type_as(x)
