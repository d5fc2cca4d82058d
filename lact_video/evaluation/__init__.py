"""Validation loss per frame chunk (the LaCT paper's figure for AR video models), its reports, and the fast-weight
state's drift from its initial value per chunk."""

from .per_chunk_loss import DEFAULT_NOISE_LEVELS, PerChunkLoss, check_noise_levels, per_chunk_loss
from .report import plot_per_chunk, write_report
from .state_drift import fast_weight_drift

__all__ = [
    "DEFAULT_NOISE_LEVELS",
    "PerChunkLoss",
    "check_noise_levels",
    "fast_weight_drift",
    "per_chunk_loss",
    "plot_per_chunk",
    "write_report",
]
