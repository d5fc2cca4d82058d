"""Fast-weight memory ops: `chunk` is the fast path, `naive` the plain reference."""

from .chunk import (
    LOCAL_TOKENS,
    FastWeights,
    TokenReduction,
    UpdateRule,
    fast_weight_apply,
    fast_weight_gradient,
    fast_weight_teacher_forcing,
    fast_weight_update,
    row_norms,
)
from .naive import fast_weight_naive

__all__ = [
    "LOCAL_TOKENS",
    "FastWeights",
    "TokenReduction",
    "UpdateRule",
    "fast_weight_apply",
    "fast_weight_gradient",
    "fast_weight_naive",
    "fast_weight_teacher_forcing",
    "fast_weight_update",
    "row_norms",
]
