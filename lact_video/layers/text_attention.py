"""Wan's text cross-attention, split so that a video projects its prompt once.

`WanAttnProcessor` projects the prompt into keys and values in every call. Chunk-by-chunk generation
calls the model chunks x steps times with the same prompt, so `text_keys_values` runs once per video
and `text_cross_attention` reuses its result. Together they compute what `WanAttention(x, text)` does
for Wan2.1 text-to-video (no image branch), with the same attention backend.

Shapes: `B` batch, `N` query tokens, `L` text tokens, `C` model dim, `H` heads, `D` head dim.
"""

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanAttention


def text_keys_values(attn: WanAttention, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The projected prompt (B, L, C) -> key, value (B, L, H, D)."""
    key = attn.norm_k(attn.to_k(text)).unflatten(2, (attn.heads, -1))
    value = attn.to_v(text).unflatten(2, (attn.heads, -1))
    return key, value


def text_cross_attention(
    attn: WanAttention, hidden_states: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> torch.Tensor:
    """Every token (B, N, C) attends to the prompt's keys and values (B, L, H, D); returns (B, N, C)."""
    query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
    out = dispatch_attention_fn(
        query, key, value, dropout_p=0.0, is_causal=False, backend=attn.processor._attention_backend
    )
    out = out.flatten(2, 3).type_as(query)
    return attn.to_out[1](attn.to_out[0](out))
