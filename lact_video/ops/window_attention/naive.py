"""Dense reference for the teacher-forcing window attention: one `L x L` boolean mask.

Quadratic in the sequence length by construction; only for tests of `block.py`.
"""

import torch
import torch.nn.functional as F


def window_attention_mask(segment_chunks, segment_clean, tokens_per_segment: int, window: int | None) -> torch.Tensor:
    """Boolean `(L, L)` mask, True where a query token may attend to a key token.

    Args:
        segment_chunks: chunk index of each segment, in sequence order.
        segment_clean: whether each segment is a clean chunk.
        window: tokens of `c_{i-1}` a noisy segment of chunk `i` sees; `None` is full block-causal
            attention (every segment sees all earlier clean chunks).
    """
    num_segments, t = len(segment_chunks), tokens_per_segment
    mask = torch.zeros(num_segments * t, num_segments * t, dtype=torch.bool)
    for s in range(num_segments):
        mask[s * t : (s + 1) * t, s * t : (s + 1) * t] = True
        for j in range(num_segments):
            if not segment_clean[j]:
                continue
            if window is None and segment_chunks[j] < segment_chunks[s]:
                mask[s * t : (s + 1) * t, j * t : (j + 1) * t] = True
            elif window is not None and not segment_clean[s] and segment_chunks[j] == segment_chunks[s] - 1:
                mask[s * t : (s + 1) * t, (j + 1) * t - window : (j + 1) * t] = True
    return mask


def window_attention_naive(query, key, value, segment_chunks, segment_clean, window: int | None) -> torch.Tensor:
    """query, key, value: (B, L, H, D) in interleaved sequence order -> (B, L, H, D)."""
    t = query.shape[1] // len(segment_chunks)
    mask = window_attention_mask(segment_chunks, segment_clean, t, window)
    out = F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=mask
    )  # (B, H, L, D)
    return out.transpose(1, 2)
