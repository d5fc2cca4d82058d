"""Explicit inference state for chunk-by-chunk generation (docs/design.md, Sec. 3.3).

The state is passed into the model and handed back, like `past_key_values`; modules never keep it.
A denoising step reads it; a clean pass over a finished chunk returns a new one.
"""

from dataclasses import dataclass, field
from enum import Enum

import torch

from .ops.fast_weight import FastWeights


@dataclass(frozen=True)
class LayerState:
    """One block's memory of the clean chunks committed so far (batch rows are independent).

    Attributes:
        key, value: (B, W, H, D) rotary-embedded window keys/values: the tail of the last clean chunk.
        fast_weights: (B*Hf, ...) fast weights after the committed chunks; `None` means the layer's
            learnable initial weights (nothing committed yet).
        momentum: the last momentum-accumulated update, when the layer uses momentum.
    """

    key: torch.Tensor | None = None
    value: torch.Tensor | None = None
    fast_weights: FastWeights | None = None
    momentum: FastWeights | None = None


@dataclass(frozen=True)
class LaCTState:
    """The whole model's inference state: one `LayerState` per block and the chunk counter."""

    layers: tuple[LayerState, ...] = field(default_factory=tuple)
    num_chunks: int = 0  # clean chunks committed; the next chunk to denoise has this index

    @classmethod
    def empty(cls, num_layers: int) -> "LaCTState":
        return cls(tuple(LayerState() for _ in range(num_layers)), 0)


@dataclass(frozen=True)
class TextContext:
    """The prompt, projected once per video by `encode_text`: every block's cross-attention keys and
    values. Chunk-by-chunk generation calls the model chunks x steps times with the same prompt, so it
    passes this instead of the embeddings, which the model would otherwise project again in every call.
    Read-only, like the weights.

    Attributes:
        keys_values: per block, `(key, value)`, each (B, L, H, D), as Wan's cross-attention computes them.
        dtype: the prompt embeddings' dtype, to which Wan casts the time embedding.
    """

    keys_values: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    dtype: torch.dtype

    @property
    def batch_size(self) -> int:
        return self.keys_values[0][0].shape[0]


class ForwardMode(str, Enum):
    """What a forward pass computes. Always passed explicitly, never inferred from shapes."""

    TEACHER_FORCING = "teacher_forcing"  # the whole interleaved sequence; no state
    DENOISE = "denoise"  # one noisy chunk against the state; the state is unchanged
    COMMIT = "commit"  # one finished clean chunk at t=0; returns the updated state
