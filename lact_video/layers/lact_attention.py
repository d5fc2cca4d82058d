"""LaCT attention: the drop-in replacement for a Wan block's self-attention (spec Sec. 3).

It keeps `WanAttention`'s parameter names (`to_q, to_k, to_v, to_out, norm_q, norm_k`) so that
pretrained weights load unchanged, and adds the fast-weight memory as the `memory` submodule
(`None` for blocks that keep window attention only). Output: `Wo(window_out + gate * memory_out)`.

Shapes: `B` batch, `S` segments, `T` tokens per chunk, `C` model dim, `H` heads, `D` head dim,
`W` window tokens.
"""

import torch
import torch.nn as nn

from ..ops.window_attention import attend, full_causal_attention_teacher_forcing, window_attention_teacher_forcing
from ..sequence import TeacherForcingLayout
from ..state import ForwardMode, LayerState
from .fast_weight_memory import FastWeightMemory
from .rotary import apply_rotary_emb


class LaCTAttention(nn.Module):
    """Args:
        window_size: trailing tokens of the previous clean chunk a noisy chunk sees (None: all of it).
        full_causal: the full-attention baseline instead of the window: every segment sees all earlier
            clean chunks, and the inference state keeps every committed chunk's keys and values.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        eps: float,
        window_size: int | None,
        memory: FastWeightMemory | None,
        full_causal: bool = False,
    ):
        super().__init__()
        self.heads = heads
        self.window_size = window_size  # None: the whole previous chunk
        self.full_causal = full_causal
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)
        self.memory = memory

    def _window(self, tokens_per_chunk: int) -> int:
        window = self.window_size or tokens_per_chunk
        if window > tokens_per_chunk:
            raise ValueError(
                f"window_size={window} tokens is larger than one chunk ({tokens_per_chunk} tokens at this "
                "resolution); the window only reaches into the previous chunk. Lower window_size, or leave it "
                "unset to use the whole previous chunk."
            )
        return window

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary_emb: torch.Tensor,
        mode: ForwardMode,
        layout: TeacherForcingLayout | None = None,
        state: LayerState | None = None,
    ) -> tuple[torch.Tensor, LayerState | None]:
        """Self-attention of a patched block.

        Args:
            hidden_states: (B, S, T, C), segments in grouped order (`TEACHER_FORCING`) or one chunk.
            rotary_emb: (S, T, 1, D/2, 2) rotary table (`chunk_rotary_emb`).

        Returns:
            `(out (B, S, T, C), state)`: the input state for `DENOISE`, a new one for `COMMIT`,
            `None` in teacher forcing.
        """
        # 1. Projections, as in Wan.
        q = self.norm_q(self.to_q(hidden_states))
        k = self.norm_k(self.to_k(hidden_states))
        v = self.to_v(hidden_states)
        qh, kh, vh = (x.unflatten(-1, (self.heads, -1)) for x in (q, k, v))  # (B, S, T, H, D)
        qh, kh = apply_rotary_emb(qh, rotary_emb), apply_rotary_emb(kh, rotary_emb)
        window = None if self.full_causal else self._window(hidden_states.shape[2])

        # 2. Window (or full block-causal) attention.
        new_state = state
        context = (None, None)
        if state is not None and state.key is not None:
            context = (state.key[:, None], state.value[:, None])  # (B, 1, W, H, D)
        if mode is ForwardMode.TEACHER_FORCING:
            n, r, noisy = layout.num_chunks, layout.num_repeat, layout.num_noisy
            # split, not slicing: a slice's backward zero-fills a buffer of the whole sequence.
            noisy_qkv, clean_qkv = zip(*(x.split([noisy, x.shape[1] - noisy], dim=1) for x in (qh, kh, vh)))
            noisy_qkv = tuple(x.unflatten(1, (n, r)) for x in noisy_qkv)  # (B, N, R, T, H, D); clean (B, N-1, T, H, D)
            if self.full_causal:
                noisy_out, clean_out = full_causal_attention_teacher_forcing(noisy_qkv, clean_qkv)
            else:
                noisy_out, clean_out = window_attention_teacher_forcing(noisy_qkv, clean_qkv, window)
            out = torch.cat([noisy_out.flatten(1, 2), clean_out], dim=1)  # (B, S, T, H, D)
        elif mode is ForwardMode.DENOISE:
            out = attend(qh, kh, vh, *context)
        elif self.full_causal:  # COMMIT: the clean chunk sees all earlier ones; the cache keeps it too.
            out = attend(qh, kh, vh, *context)
            keep_k, keep_v = kh[:, 0], vh[:, 0]
            if state.key is not None:
                keep_k, keep_v = torch.cat([state.key, keep_k], dim=1), torch.cat([state.value, keep_v], dim=1)
            new_state = LayerState(key=keep_k, value=keep_v)
        else:  # COMMIT: a clean chunk sees only itself, and its tail becomes the next window.
            out = attend(qh, kh, vh)
            new_state = LayerState(key=kh[:, 0, -window:], value=vh[:, 0, -window:])
        out = out.flatten(-2)  # (B, S, T, C)

        # 3. Fast-weight memory.
        if self.memory is not None:
            memory_out, fast_weights, momentum = self.memory(hidden_states, q, k, v, rotary_emb, mode, layout, state)
            out = out + memory_out
            if mode is ForwardMode.COMMIT:
                new_state = LayerState(new_state.key, new_state.value, fast_weights, momentum)

        out = self.to_out[1](self.to_out[0](out))
        return out, new_state
