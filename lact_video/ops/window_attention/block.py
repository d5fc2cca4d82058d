"""Block-sparse attention for the interleaved teacher-forcing sequence (docs/design.md, Sec. 1.3).

The mask is never materialised. Segments are grouped by what they may see, and each group is one
batched attention call over chunk-sized pieces, so the cost is linear in the number of chunks:

- clean segments and the noisy copies of chunk 0 see only themselves;
- a noisy copy of chunk `i > 0` sees itself plus the last `window` tokens of clean chunk `c_{i-1}`.

Noisy copies of one chunk never see each other because each copy is its own batch row. Inference
calls `attend` with the cached tail of the previous clean chunk, which is the same computation.

`full_causal_attention_teacher_forcing` is the full-attention baseline (CausVid-style teacher
forcing): every segment also sees all earlier clean chunks. Its cost is quadratic in the number of
chunks by nature; it exists to compare LaCT against.

Every op takes the diffusers attention `backend` to call (`AttentionBackendName`; None: diffusers'
process-wide active backend), so that a model can pass its own.

Shapes: `T` tokens per chunk, `H` heads, `D` head dim, `W` window tokens, `R` noisy copies.
"""

import torch
from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context_key: torch.Tensor | None = None,
    context_value: torch.Tensor | None = None,
    context_mask: torch.Tensor | None = None,
    *,
    backend: AttentionBackendName | None = None,
) -> torch.Tensor:
    """Softmax attention of each piece over itself and an optional context prefix.

    Args:
        query, key, value: (..., T, H, D); the leading dims are independent pieces.
        context_key, context_value: (..., W, H, D) extra keys and values each piece also sees.
        context_mask: boolean, broadcastable to (..., W): which context keys are visible.
        backend: the diffusers attention backend; None follows diffusers' active backend.

    Returns:
        (..., T, H, D).
    """
    mask = None
    if context_key is not None:
        key = torch.cat([context_key, key], dim=-3)  # (..., W + T, H, D)
        value = torch.cat([context_value, value], dim=-3)
        if context_mask is not None:
            lead_shape = key.shape[:-3]
            own = context_mask.new_ones(context_mask.shape[:-1] + (query.shape[-3],))
            mask = torch.cat([context_mask, own], dim=-1).expand(*lead_shape, -1)  # (..., W + T)
            mask = mask.flatten(0, -2)[:, None, None, :]  # (pieces, 1, 1, W + T)
    lead = query.shape[:-3]
    # diffusers' dispatcher runs the backend (native SDPA by default, flash/sage when the user
    # selects one), so the flash-attention path stays optional.
    out = dispatch_attention_fn(
        query.flatten(0, -4), key.flatten(0, -4), value.flatten(0, -4), attn_mask=mask, backend=backend
    )
    return out.view(*lead, *out.shape[1:])


def window_attention_teacher_forcing(
    noisy: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    clean: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    window: int,
    *,
    backend: AttentionBackendName | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Window attention over a whole teacher-forcing sequence.

    Args:
        noisy: (q, k, v), each (B, N, R, T, H, D): every noisy copy of every chunk.
        clean: (q, k, v), each (B, N-1, T, H, D): clean chunks `c_0 .. c_{N-2}`.
        window: how many trailing tokens of `c_{i-1}` a noisy copy of chunk `i` sees (1 .. T).
        backend: as in `attend`.

    Returns:
        `(noisy_out (B, N, R, T, H, D), clean_out (B, N-1, T, H, D))`.
    """
    (nq, nk, nv), (cq, ck, cv) = noisy, clean
    num_repeat = nq.shape[2]
    clean_out = attend(cq, ck, cv, backend=backend)
    if nq.shape[1] == 1:
        return attend(nq, nk, nv, backend=backend), clean_out
    # split, not slicing: a slice's backward zero-fills a buffer of the whole sequence.
    (q0, q1), (k0, k1), (v0, v1) = (x.split([1, x.shape[1] - 1], dim=1) for x in (nq, nk, nv))
    first = attend(q0, k0, v0, backend=backend)  # (B, 1, R, T, H, D)
    # Tail of c_{i-1}, shared by the R copies of chunk i: (B, N-1, R, W, H, D), a view, no copy.
    context_k = ck[:, :, -window:].unsqueeze(2).expand(-1, -1, num_repeat, -1, -1, -1)
    context_v = cv[:, :, -window:].unsqueeze(2).expand(-1, -1, num_repeat, -1, -1, -1)
    rest = attend(q1, k1, v1, context_k, context_v, backend=backend)
    return torch.cat([first, rest], dim=1), clean_out


def full_causal_attention_teacher_forcing(
    noisy: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    clean: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    backend: AttentionBackendName | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full block-causal attention: a segment of chunk `i` sees `c_0 .. c_{i-1}` and itself.

    Args and returns as `window_attention_teacher_forcing`.
    """
    (nq, nk, nv), (cq, ck, cv) = noisy, clean
    b, n, r = nq.shape[:3]
    t = nq.shape[3]
    # All clean tokens as one context, (B, (N-1)*T, H, D); token j belongs to clean chunk j // T.
    context_k, context_v = ck.flatten(1, 2), cv.flatten(1, 2)
    key_chunk = torch.arange(n - 1, device=nq.device).repeat_interleave(t)  # ((N-1)*T,)
    visible = key_chunk[None, :] < torch.arange(n, device=nq.device)[:, None]  # (N, (N-1)*T): chunk i sees j < i
    noisy_out = attend(
        nq,
        nk,
        nv,
        context_k[:, None, None].expand(b, n, r, -1, -1, -1),
        context_v[:, None, None].expand(b, n, r, -1, -1, -1),
        visible[None, :, None],  # (1, N, 1, (N-1)*T)
        backend=backend,
    )
    clean_out = attend(
        cq,
        ck,
        cv,
        context_k[:, None].expand(b, n - 1, -1, -1, -1),
        context_v[:, None].expand(b, n - 1, -1, -1, -1),
        visible[None, : n - 1],  # (1, N-1, (N-1)*T)
        backend=backend,
    )
    return noisy_out, clean_out
