"""Fast-weight memory ops: `chunk` is the fast path, `naive` the plain reference."""

from .chunk import (
    FastWeights,
    UpdateRule,
    fast_weight_apply,
    fast_weight_gradient,
    fast_weight_teacher_forcing,
    fast_weight_update,
    row_norms,
)
from .naive import fast_weight_naive

__all__ = [
    "FastWeights",
    "UpdateRule",
    "fast_weight_apply",
    "fast_weight_gradient",
    "fast_weight_naive",
    "fast_weight_teacher_forcing",
    "fast_weight_update",
    "row_norms",
]
