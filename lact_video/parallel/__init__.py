"""Parallelism attached to the single-device model from outside it (docs/design.md, Sec. 2.5).

- `sequence_parallel`: Ulysses sequence parallelism for teacher-forcing training, exact for the fast-weight memory.
"""

from .sequence_parallel import (
    all_reduce_bytes_per_step,
    all_to_all_bytes_per_step,
    disable_sequence_parallel,
    enable_sequence_parallel,
)

__all__ = [
    "all_reduce_bytes_per_step",
    "all_to_all_bytes_per_step",
    "disable_sequence_parallel",
    "enable_sequence_parallel",
]
