"""Window attention ops: `block` is the fast path, `naive` the dense-mask reference."""

from .block import attend, full_causal_attention_teacher_forcing, window_attention_teacher_forcing
from .naive import window_attention_naive

__all__ = [
    "attend",
    "full_causal_attention_teacher_forcing",
    "window_attention_naive",
    "window_attention_teacher_forcing",
]
