"""Wan's 3D rotary embedding, evaluated per chunk so any segment can take any chunk's positions.

`WanRotaryPosEmbed.forward` only yields positions `0 .. F-1` for a whole clip. Teacher forcing gives
the noisy and clean segments of chunk `i` the same frame positions `i*k .. i*k+k-1`, and inference
needs chunk `i` alone, so we index the module's own frequency tables by frame instead.
"""

import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed


def chunk_rotary_emb(
    rope: WanRotaryPosEmbed, chunk_indices: tuple[int, ...], chunk_frames: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for segments of whole chunks.

    Args:
        rope: the pretrained model's `WanRotaryPosEmbed` (its buffers hold the frequencies).
        chunk_indices: the chunk index of each of the `S` segments.
        height, width: post-patch token grid.

    Returns:
        `(cos, sin)`, each (S, T, 1, D) with `T = chunk_frames * height * width`, `D` the head dim.
    """
    longest = max((max(chunk_indices) + 1) * chunk_frames, height, width)
    if longest > rope.max_seq_len:
        raise ValueError(
            f"Positions up to {longest} exceed the rotary table of rope_max_seq_len={rope.max_seq_len} "
            f"(latent frames, or post-patch height/width). Generate at most {rope.max_seq_len} latent frames, "
            "or raise `rope_max_seq_len` in the transformer config (it adds no weights)."
        )
    device = rope.freqs_cos.device
    frames = torch.tensor(chunk_indices, device=device)[:, None] * chunk_frames + torch.arange(chunk_frames, device=device)
    s, k = frames.shape  # (S, k) frame positions
    tables = []
    for freqs in (rope.freqs_cos, rope.freqs_sin):
        f_t, f_h, f_w = freqs.split([rope.t_dim, rope.h_dim, rope.w_dim], dim=1)
        f_t = f_t[frames].view(s, k, 1, 1, -1).expand(s, k, height, width, -1)
        f_h = f_h[:height].view(1, 1, height, 1, -1).expand(s, k, height, width, -1)
        f_w = f_w[:width].view(1, 1, 1, width, -1).expand(s, k, height, width, -1)
        tables.append(torch.cat([f_t, f_h, f_w], dim=-1).view(s, k * height * width, 1, -1))
    return tables[0], tables[1]


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs, exactly as Wan's attention processor does.

    x: (..., T, H, D); cos, sin broadcastable to it (e.g. (S, T, 1, D)).
    """
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)
