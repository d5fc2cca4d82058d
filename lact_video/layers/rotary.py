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

from typing import NamedTuple

import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

# The cycle of `cyclic`, in chunks: even, so that a chunk keeps its position's parity (docs/design.md Sec. 1.7).
CYCLE_CHUNKS = 2


class RotaryTables(NamedTuple):
    """The rotary tables of one forward, each (S, T, 1, D/2, 2) (`chunk_rotary_emb`): the softmax attention's
    and the fast-weight memory's. The same tensor unless a bounded position policy maps a chunk past the
    training length (`segment_positions`)."""

    attention: torch.Tensor
    memory: torch.Tensor


def chunk_position(policy: str, index: int, trained_chunks: int | None) -> int:
    """The rotary position, in chunks, at which chunk `index` writes and reads the memory (docs/design.md Sec. 1.7).

    Args:
        policy: a `PositionPolicy` value: "absolute" (`index` itself), "clamp" (past `trained_chunks`, the last
            trained position) or "cyclic" (past `trained_chunks`, the last `CYCLE_CHUNKS` trained positions in turn).
        trained_chunks: chunk positions training covered (`LaCTConfig.trained_chunks`); None (not known, e.g. a
            model fresh from `from_wan`): absolute positions under every policy.
    """
    if policy == "absolute" or trained_chunks is None or index < trained_chunks:
        return index
    if policy == "clamp":
        return trained_chunks - 1
    cycle = min(CYCLE_CHUNKS, trained_chunks)
    return trained_chunks - cycle + (index - trained_chunks) % cycle


def segment_positions(
    policy: str, trained_chunks: int | None, chunk_indices: tuple[int, ...], noisy: tuple[bool, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Rotary positions, in chunks, of segments: `(attention, memory)`.

    The memory writes and reads chunk `i` at `chunk_position(i)`. Softmax attention sees only position
    differences (Wan's rotary is a rotation of q and k), so a noisy chunk `i` takes `a(i)` and a clean chunk `j`,
    whose keys the noisy chunk `j + 1` reads (stored rotated in `LayerState`), takes `a(j + 1) - 1`: the offset
    between a noisy chunk and its window is one chunk under every policy. `a(i) = i` within the training length
    (and always under "absolute"), `chunk_position(i) + 1` past it, so no clean chunk's position is negative.
    Positions are a function of the chunk index alone, so teacher forcing equals chunk-by-chunk inference.
    Under "absolute", or with `trained_chunks` unknown, both tuples are `chunk_indices`.
    """
    memory = tuple(chunk_position(policy, i, trained_chunks) for i in chunk_indices)
    if policy == "absolute" or trained_chunks is None:
        return memory, memory

    def noisy_position(i: int) -> int:
        return i if i < trained_chunks else chunk_position(policy, i, trained_chunks) + 1

    attention = tuple(
        noisy_position(i) if is_noisy else noisy_position(i + 1) - 1 for i, is_noisy in zip(chunk_indices, noisy)
    )
    return attention, memory


def chunk_rotary_emb(
    rope: WanRotaryPosEmbed,
    chunk_positions: tuple[int, ...],
    chunk_frames: int,
    height: int,
    width: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Rotary tables for segments of whole chunks.

    Args:
        rope: the pretrained model's `WanRotaryPosEmbed` (its buffers hold the frequencies).
        chunk_positions: the rotary position, in chunks, of each of the `S` segments (`segment_positions`).
        height, width: post-patch token grid.
        dtype: float32, or float64 for equivalence checks.

    Returns:
        (S, T, 1, D/2, 2): `(cos, sin)` of each channel pair, with `T = chunk_frames * height * width`
        and `D` the head dim.
    """
    if min(chunk_positions) < 0:  # indexing would wrap around silently
        raise ValueError(f"Rotary positions must be >= 0; got chunk positions {chunk_positions}.")
    longest = max((max(chunk_positions) + 1) * chunk_frames, height, width)
    if longest > rope.max_seq_len:
        raise ValueError(
            f"Positions up to {longest} exceed the rotary table of rope_max_seq_len={rope.max_seq_len} "
            f"(latent frames, or post-patch height/width). Generate at most {rope.max_seq_len} latent frames, "
            "raise `rope_max_seq_len` in the transformer config (it adds no weights), or load the transformer "
            "with a bounded `position_policy` ('clamp' or 'cyclic'), whose positions stop at `trained_chunks`."
        )
    device = rope.freqs_cos.device
    frames = torch.tensor(chunk_positions, device=device)[:, None] * chunk_frames + torch.arange(
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
