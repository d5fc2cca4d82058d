"""LaCT attention: the drop-in replacement for a Wan block's self-attention (docs/design.md, Sec. 1.2).

It keeps `WanAttention`'s parameter names (`to_q, to_k, to_v, to_out, norm_q, norm_k`) so that
pretrained weights load unchanged, and adds the fast-weight memory as the `memory` submodule
(`None` for blocks that keep window attention only). Output: `Wo(window_out + gate * memory_out)`.

The softmax attention is a processor chosen once, at construction, as diffusers' attention modules
hold theirs: `WindowAttnProcessor` (LaCT) or `FullCausalAttnProcessor` (the full-attention baseline).
Each carries the diffusers attention backend its calls use (`_attention_backend`), which
`LaCTWanTransformer3DModel.set_attention_backend` sets per model.

Shapes: `B` batch, `S` segments, `T` tokens per chunk, `C` model dim, `H` heads, `D` head dim,
`W` window tokens.
"""

import torch
import torch.nn as nn

from ..ops.window_attention import attend, full_causal_attention_teacher_forcing, window_attention_teacher_forcing
from ..sequence import TeacherForcingLayout
from ..state import ForwardMode, LayerState
from .fast_weight_memory import FastWeightMemory
from .rotary import RotaryTables, apply_rotary_emb


class _SelfAttnProcessor:
    """What both processors share: the backend, and a noisy chunk's pass against the cached context.

    `_attention_backend`: the diffusers `AttentionBackendName` of every call, or None for diffusers'
    active backend; the name and meaning are those of diffusers' attention processors.
    """

    def __init__(self):
        self._attention_backend = None

    def denoise(self, query, key, value, state: LayerState | None) -> torch.Tensor:
        """A noisy chunk sees itself and the keys and values the last commit kept.

        query, key, value: (B, 1, T, H, D) -> (B, 1, T, H, D).
        """
        context = (None, None)
        if state is not None and state.key is not None:
            context = (state.key[:, None], state.value[:, None])  # (B, 1, W, H, D)
        return attend(query, key, value, *context, backend=self._attention_backend)


class WindowAttnProcessor(_SelfAttnProcessor):
    """LaCT's window attention (docs/design.md, Sec. 1.3): a noisy chunk sees itself and the last `window` tokens of
    the previous clean chunk; a clean chunk sees only itself, and its tail is the state's next window.

    Args:
        window_size: trailing tokens of the previous clean chunk a noisy chunk sees (None: all of it).
    """

    def __init__(self, window_size: int | None):
        super().__init__()
        self.window_size = window_size

    def _window(self, tokens_per_chunk: int) -> int:
        window = self.window_size or tokens_per_chunk
        if window > tokens_per_chunk:
            raise ValueError(
                f"window_size={window} tokens is larger than one chunk ({tokens_per_chunk} tokens at this "
                "resolution); the window only reaches into the previous chunk. Lower window_size, or leave it "
                "unset to use the whole previous chunk."
            )
        return window

    def teacher_forcing(self, noisy, clean) -> tuple[torch.Tensor, torch.Tensor]:
        """noisy: (q, k, v), each (B, N, R, T, H, D); clean: (q, k, v), each (B, N-1, T, H, D).

        Returns `(noisy_out (B, N, R, T, H, D), clean_out (B, N-1, T, H, D))`.
        """
        window = self._window(noisy[0].shape[3])
        return window_attention_teacher_forcing(noisy, clean, window, backend=self._attention_backend)

    def denoise(self, query, key, value, state):
        self._window(query.shape[2])  # a window wider than a chunk fails at once, not at the first commit
        return super().denoise(query, key, value, state)

    def commit(self, query, key, value, state) -> tuple[torch.Tensor, LayerState]:
        """A clean chunk (B, 1, T, H, D) sees only itself.

        Returns `(out (B, 1, T, H, D), LayerState)` holding its last `W` keys and values (B, W, H, D).
        """
        window = self._window(query.shape[2])
        out = attend(query, key, value, backend=self._attention_backend)
        return out, LayerState(key=key[:, 0, -window:], value=value[:, 0, -window:])


class FullCausalAttnProcessor(_SelfAttnProcessor):
    """The full-attention baseline: every segment sees all earlier clean chunks, and the inference state
    keeps every committed chunk's keys and values (its cost grows with the video)."""

    def teacher_forcing(self, noisy, clean) -> tuple[torch.Tensor, torch.Tensor]:
        """As `WindowAttnProcessor.teacher_forcing`."""
        return full_causal_attention_teacher_forcing(noisy, clean, backend=self._attention_backend)

    def commit(self, query, key, value, state) -> tuple[torch.Tensor, LayerState]:
        """A clean chunk (B, 1, T, H, D) sees all earlier ones and itself.

        Returns `(out (B, 1, T, H, D), LayerState)` holding the keys and values of every committed chunk,
        this one included, (B, W, H, D) with `W` all their tokens.
        """
        out = self.denoise(query, key, value, state)  # it sees what a noisy copy of it sees
        keep_k, keep_v = key[:, 0], value[:, 0]
        if state.key is not None:
            keep_k, keep_v = torch.cat([state.key, keep_k], dim=1), torch.cat([state.value, keep_v], dim=1)
        return out, LayerState(key=keep_k, value=keep_v)


class LaCTAttention(nn.Module):
    """Args:
        window_size: trailing tokens of the previous clean chunk a noisy chunk sees (None: all of it).
        full_causal: the full-attention baseline instead of the window: every segment sees all earlier
            clean chunks, and the inference state keeps every committed chunk's keys and values.

    Attributes:
        processor: the softmax attention, `FullCausalAttnProcessor` or `WindowAttnProcessor`, chosen here
            once; it holds the diffusers attention backend of this layer (`_attention_backend`).
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
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)
        self.memory = memory
        self.processor = FullCausalAttnProcessor() if full_causal else WindowAttnProcessor(window_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary_emb: RotaryTables,
        mode: ForwardMode,
        layout: TeacherForcingLayout | None = None,
        state: LayerState | None = None,
    ) -> tuple[torch.Tensor, LayerState | None]:
        """Self-attention of a patched block.

        Args:
            hidden_states: (B, S, T, C), segments in grouped order (`TEACHER_FORCING`) or one chunk.
            rotary_emb: the softmax attention's and the memory's (S, T, 1, D/2, 2) rotary tables (`RotaryTables`).

        Returns:
            `(out (B, S, T, C), state)`: the input state for `DENOISE`, a new one for `COMMIT`,
            `None` in teacher forcing.
        """
        # 1. Projections, as in Wan.
        q = self.norm_q(self.to_q(hidden_states))
        k = self.norm_k(self.to_k(hidden_states))
        v = self.to_v(hidden_states)
        qh, kh, vh = (x.unflatten(-1, (self.heads, -1)) for x in (q, k, v))  # (B, S, T, H, D)
        qh, kh = apply_rotary_emb(qh, rotary_emb.attention), apply_rotary_emb(kh, rotary_emb.attention)

        # 2. Window (or full block-causal) attention, as the processor chosen at construction does it.
        new_state = state
        if mode is ForwardMode.TEACHER_FORCING:
            n, r, noisy = layout.num_chunks, layout.num_repeat, layout.num_noisy
            # split, not slicing: a slice's backward zero-fills a buffer of the whole sequence.
            noisy_qkv, clean_qkv = zip(*(x.split([noisy, x.shape[1] - noisy], dim=1) for x in (qh, kh, vh)))
            noisy_qkv = tuple(x.unflatten(1, (n, r)) for x in noisy_qkv)  # (B, N, R, T, H, D); clean (B, N-1, T, H, D)
            noisy_out, clean_out = self.processor.teacher_forcing(noisy_qkv, clean_qkv)
            out = torch.cat([noisy_out.flatten(1, 2), clean_out], dim=1)  # (B, S, T, H, D)
        elif mode is ForwardMode.DENOISE:
            out = self.processor.denoise(qh, kh, vh, state)
        else:  # COMMIT
            out, new_state = self.processor.commit(qh, kh, vh, state)
        out = out.flatten(-2)  # (B, S, T, C)

        # 3. Fast-weight memory.
        if self.memory is not None:
            memory_out, fast_weights, momentum = self.memory(
                hidden_states, q, k, v, rotary_emb.memory, mode, layout, state
            )
            out = out + memory_out
            if mode is ForwardMode.COMMIT:
                new_state = LayerState(new_state.key, new_state.value, fast_weights, momentum)

        out = self.to_out[1](self.to_out[0](out))
        return out, new_state
